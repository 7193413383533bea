"""Shared runs: a read-only link to one finished run of a lab, by a token that is not the lab's id.

    <home>/shares/<sha256(token)>.json   {lab, run, created}: where a token leads (revoked: also "revoked")
    <lab folder>/shares.json             {run: token}: the owner's live links, shown again after a reload

A token is 32 URL-safe characters (`secrets.token_urlsafe(24)`, 192 bits), drawn fresh: it says nothing of
the lab, and knowing one run's link gives no way to another run or to the lab. The home's records are named
by the token's SHA-256, so a listing of `shares/` (a backup, a shared disk) reveals no link. Both files live
in the lab home, so a link survives a restart and works on every server sharing `VISLAB_HOME`.

A token is live only while *both* files agree: its record names a lab and run, and that lab's `shares.json`
still maps the run to this very token. The lab's own file is the authority: revoking removes the run from it
first, and a lab removed by age (`labs.clean_old`) takes its `shares.json` with it, so no token of it stays
live, even if a session later writes the lab's folder again under the same id. Every read-modify-write holds
the lab's `shares.json` lock (`fileio.lock`), and every file is written atomically (`fileio.write_json`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from pathlib import Path

from vislab import _fileio as fileio, _paths as paths
from vislab.serving import labs

TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{32}")  # what token_urlsafe(24) makes: 24 bytes in base64url
RUN_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")  # a run folder's own name: never a path
LAB_FILE = "shares.json"
MALFORMED = ("This share link is malformed (a share token is 32 letters, digits, '-' or '_'): check that the "
             "whole link was copied.")
UNKNOWN = "This share link is not known on this server: it may have been mistyped or never existed."
REVOKED = "This share link was revoked by the owner of the run: it no longer opens anything."
LAB_GONE = ("The lab that held this shared run no longer exists on this server (labs unused for a long time "
            "are removed), so the link opens nothing.")
NOT_LIVE = ("This share link no longer opens anything: its owner revoked it, or the lab that held the run was "
            "removed.")
RUN_GONE = "The shared run no longer exists in its lab, so the link opens nothing."


class ShareError(ValueError):
    """A share token that opens nothing (malformed, unknown, revoked, or its run or lab gone), or a run that
    cannot be shared; the message says which, in words for the person holding the link."""


def shares_dir() -> Path:
    return paths.home() / "shares"


def valid_token(token: object) -> bool:
    return isinstance(token, str) and len(token) == 32 and TOKEN_PATTERN.fullmatch(token) is not None


def _record_path(token: str) -> Path:
    return shares_dir() / f"{hashlib.sha256(token.encode()).hexdigest()}.json"


def _run_folder(lab: labs.Lab, run_name: object) -> Path:
    """The folder of `run_name` in `lab`; ShareError for a name that is not a plain folder name."""
    if not isinstance(run_name, str) or RUN_PATTERN.fullmatch(run_name) is None or ".." in run_name:
        raise ShareError("that is not a run name of this lab")
    return lab.runs_dir / run_name


def _finished(lab: labs.Lab, folder: Path) -> bool:
    """A complete run folder inside the lab (its model written last, see training/runs.py), not a link out."""
    from vislab.training import runs  # imports torch: only when a run is shared or opened

    return folder.is_dir() and not folder.is_symlink() and lab.inside(folder) and runs.complete(folder)


def _links(lab: labs.Lab) -> dict[str, str]:
    """The lab's shares.json (run -> token); a damaged or missing file is no links."""
    try:
        links = fileio.read_json(lab.folder / LAB_FILE, {})
    except (ValueError, UnicodeDecodeError, OSError):
        return {}
    return {r: t for r, t in links.items() if isinstance(r, str) and valid_token(t)} \
        if isinstance(links, dict) else {}


def token_of(lab: labs.Lab, run_name: str) -> str | None:
    """The live link token of a run of `lab`, or None when it is not shared (what the owner's page shows)."""
    token = _links(lab).get(run_name)
    return token if token is not None and _record_path(token).is_file() else None


def shareable(lab: labs.Lab, run_name: str) -> bool:
    """Whether `create` would share this run: a finished run folder of `lab` (an interrupted run, which has
    only its checkpoint, is not: it may still be resumed into another run)."""
    try:
        return lab.exists() and _finished(lab, _run_folder(lab, run_name))
    except ShareError:
        return False


def create(lab: labs.Lab, run_name: str) -> str:
    """Share a finished run of `lab`: its token (the same one on every call until it is revoked).
    ShareError for a lab that does not exist or a run that is missing or unfinished."""
    folder = _run_folder(lab, run_name)
    if not lab.exists():  # checked before any lock: the lock would make the lab's folder
        raise ShareError("this lab does not exist on this server")
    if not _finished(lab, folder):
        raise ShareError(f"{run_name} is not a finished run of this lab (only a run that saved its final "
                         "weights can be shared)")
    with fileio.lock(lab.folder / LAB_FILE):
        links = _links(lab)
        token = links.get(run_name)
        if token is not None and _record_path(token).is_file():
            return token
        token = secrets.token_urlsafe(24)
        # the record first, then the lab's map: a crash between leaves a record no lab confirms (dead)
        fileio.write_json(_record_path(token), {"lab": lab.id, "run": run_name, "created": time.time()})
        fileio.write_json(lab.folder / LAB_FILE, {**links, run_name: token})
    return token


def revoke(lab: labs.Lab, run_name: str) -> bool:
    """Stop the run's link: the lab's map first (the token is dead from then on), then the record is marked
    revoked so the link says so. False when the run was not shared."""
    _run_folder(lab, run_name)
    if not lab.folder.is_dir():
        return False
    with fileio.lock(lab.folder / LAB_FILE):
        links = _links(lab)
        token = links.pop(run_name, None)
        if token is None:
            return False
        fileio.write_json(lab.folder / LAB_FILE, links)
        record = _record_path(token)
        if record.is_file():
            fileio.write_json(record, {"lab": lab.id, "run": run_name, "revoked": time.time()})
    return True


def _read_record(token: str) -> dict:
    try:
        record = fileio.read_json(_record_path(token))
    except (ValueError, UnicodeDecodeError, OSError):
        record = None
    if not isinstance(record, dict):
        raise ShareError(UNKNOWN)
    return record


def resolve(token: object) -> tuple[labs.Lab, Path]:
    """The lab and the run folder a token opens; ShareError (MALFORMED, UNKNOWN, REVOKED, LAB_GONE, NOT_LIVE or
    RUN_GONE) when it opens nothing. The token's text is checked before any path is built from it."""
    if not valid_token(token):
        raise ShareError(MALFORMED)
    record = _read_record(token)
    if "revoked" in record:
        raise ShareError(REVOKED)
    try:
        lab = labs.Lab(record.get("lab"))
        folder = _run_folder(lab, record.get("run"))
    except (labs.LabError, ShareError):
        raise ShareError(UNKNOWN) from None  # a record damaged or written by hand
    if not lab.exists():
        raise ShareError(LAB_GONE)
    live = _links(lab).get(folder.name)
    if live is None or not hmac.compare_digest(live, token):  # the lab no longer lists this token
        raise ShareError(NOT_LIVE)
    if not _finished(lab, folder):
        raise ShareError(RUN_GONE)
    return lab, folder


def sweep() -> list[str]:
    """Remove the records of labs that no longer exist (removed by age): they open nothing already; this only
    keeps `shares/` small. Returns the removed records' names."""
    removed = []
    root = shares_dir()
    for record in root.glob("*.json") if root.is_dir() else []:
        try:
            lab_id = (fileio.read_json(record) or {}).get("lab")
        except (ValueError, UnicodeDecodeError, OSError, AttributeError):
            continue
        if labs.valid_id(lab_id) and not labs.Lab(lab_id).folder.is_dir():
            record.unlink(missing_ok=True)
            removed.append(record.name)
    return removed
