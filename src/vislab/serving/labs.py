"""Labs: one person's work on disk, found again by an unguessable id carried in the page's URL.

    <home>/labs/<id>/state.json   what the person chose: model, head, strategy, freeze plan, BN modes, ...
    <home>/labs/<id>/dataset.json the validated dataset report in use (its image paths, classes, split)
    <home>/labs/<id>/data/        uploads and extracted zips of this lab
    <home>/labs/<id>/runs/        its training runs and comparisons (each a run folder, see runs.py / jobs.py)

A lab id is 32 lowercase hex digits (128 bits from `secrets`); anything else is refused before a path is
built from it. Every file is written atomically, so a reload, a second tab or a server restart reads back a
whole file, never half of one, and under a file lock (`fileio.lock`), so several servers sharing one lab
home (`VISLAB_HOME`) never write one file at once and serve the same labs. Old labs are removed by age (`VISLAB_LAB_DAYS`, default 30 days since last use).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from vislab import _fileio as fileio, _paths as paths

ID_PATTERN = re.compile(r"[0-9a-f]{32}")
DEFAULT_MAX_AGE_DAYS = 30.0
NAME_LIMIT = 40  # characters of a lab's display name: a line of the sidebar, a cell of the Class page's table


class LabError(ValueError):
    """A lab id that is malformed or unknown, or a lab whose files are damaged: the message says which."""


def labs_dir() -> Path:
    return paths.home() / "labs"


def valid_id(lab_id: object) -> bool:
    return isinstance(lab_id, str) and ID_PATTERN.fullmatch(lab_id) is not None


def clean_name(text: object, limit: int | None = NAME_LIMIT) -> str:
    """A lab's display name as it is kept: plain text on one line. Whitespace of any kind (tabs, newlines)
    becomes one space, other control and format characters (escapes, zero-width and direction marks that
    would disguise the name) are dropped, the ends are stripped and the rest cut to `limit` characters.
    Markdown and HTML characters are kept as typed: whoever shows the name escapes it (a name is text, never
    markup). Not text at all: an empty name."""
    if not isinstance(text, str):
        return ""
    kept = "".join(ch for ch in text if ch.isspace() or not unicodedata.category(ch).startswith("C"))
    name = " ".join(kept.split())  # str.split() splits on every Unicode space, tab and line break
    return name if limit is None else name[:limit].rstrip()


_MARKUP = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character: CommonMark escapes each one


def name_markdown(name: str) -> str:
    """A name as Markdown that shows exactly its text: every punctuation character backslash-escaped, so
    `**x**`, `<b>`, `[link](url)`, `$math$` or `:red[x]` in a name are shown as typed, never rendered."""
    return _MARKUP.sub(r"\\\1", name)


@dataclass(frozen=True)
class Lab:
    id: str

    def __post_init__(self):
        if not valid_id(self.id):  # the only way to a folder: checked text, never a raw URL value
            raise LabError("this lab link is malformed (a lab id is 32 hex digits)")

    @property
    def folder(self) -> Path:
        return labs_dir() / self.id

    @property
    def data_dir(self) -> Path:
        """Uploads and extracted zips of this lab."""
        return self.folder / "data"

    @property
    def runs_dir(self) -> Path:
        return self.folder / "runs"

    def exists(self) -> bool:
        return (self.folder / "state.json").is_file()

    def read_state(self) -> dict:
        """The saved choices; LabError if the file is damaged (the page then offers a fresh lab)."""
        try:
            state = fileio.read_json(self.folder / "state.json", {})
        except (ValueError, UnicodeDecodeError) as exc:
            raise LabError(f"this lab's saved settings are damaged ({exc}); start a new lab") from None
        except OSError as exc:
            raise LabError(f"this lab's saved settings cannot be read ({exc.strerror or exc})") from None
        if not isinstance(state, dict):
            raise LabError("this lab's saved settings are damaged (not a JSON object); start a new lab")
        return state

    def write_state(self, state: dict) -> None:
        with fileio.lock(self.folder / "state.json"):  # two servers sharing the home: one writer at a time
            fileio.write_json(self.folder / "state.json", {**state, "updated": time.time()})

    def read_dataset(self) -> dict | None:
        try:
            d = fileio.read_json(self.folder / "dataset.json")
        except (ValueError, UnicodeDecodeError, OSError):
            return None  # the state says a dataset was chosen; the page asks for it again
        return d if isinstance(d, dict) else None

    def write_dataset(self, d: dict | None) -> None:
        with fileio.lock(self.folder / "dataset.json"):
            if d is None:
                (self.folder / "dataset.json").unlink(missing_ok=True)
            else:
                fileio.write_json(self.folder / "dataset.json", d, indent=None)

    def state_mtime(self) -> int:
        try:
            return (self.folder / "state.json").stat().st_mtime_ns
        except OSError:
            return 0

    def inside(self, path: str | Path) -> bool:
        """True when `path` lies in this lab's folder (uploads, runs): what a page may open or serve."""
        try:
            return Path(path).resolve().is_relative_to(self.folder.resolve())
        except (OSError, ValueError):
            return False


def create() -> Lab:
    """A new, empty lab with a fresh unguessable id."""
    while True:
        lab = Lab(secrets.token_hex(16))
        try:
            lab.folder.mkdir(parents=True, exist_ok=False)
            break
        except FileExistsError:  # 2^-128: never, but never overwrite someone else's lab either
            continue
    lab.write_state({"created": time.time()})
    return lab


def open_lab(lab_id: object) -> Lab:
    """The lab of a link; LabError (with the reason) for a malformed, unknown or damaged one."""
    if not isinstance(lab_id, str) or len(lab_id) > 64 or not valid_id(lab_id):
        raise LabError("this lab link is malformed (a lab id is 32 hex digits): start a new lab")
    lab = Lab(lab_id)
    if not lab.exists():
        raise LabError("no lab with this link on this server (it may have been cleaned up by age): "
                       "start a new lab")
    lab.read_state()  # damaged settings fail here, with the message
    return lab


def max_age_days() -> float:
    try:
        return float(os.environ.get("VISLAB_LAB_DAYS", DEFAULT_MAX_AGE_DAYS))
    except ValueError:
        return DEFAULT_MAX_AGE_DAYS


def clean_old(max_age: float | None = None, now: float | None = None, keep: set[str] = frozenset()) -> list[str]:
    """Remove labs unused (state.json untouched) for more than `max_age` days; returns their ids.
    A lab with a queued or running job is kept (`keep`), and so is anything that is not a lab folder."""
    days = max_age_days() if max_age is None else max_age
    if days <= 0:
        return []
    now = time.time() if now is None else now
    removed = []
    root = labs_dir()
    for folder in root.iterdir() if root.is_dir() else []:
        if not valid_id(folder.name) or folder.name in keep or folder.is_symlink():
            continue
        state = folder / "state.json"
        try:
            age = (now - state.stat().st_mtime) / 86400
        except OSError:
            continue
        if age > days:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed
