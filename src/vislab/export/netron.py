"""Netron's own browser viewer in a private folder with one exported file, for any static file server.

The `netron` package from PyPI ships its web viewer (index.html, ~170 JavaScript and metadata files). The page
needs no server logic of its own: netron's `browser.js` (`Host.start`) opens the model named by the page's
`?url=` parameter, relative to the page, with a plain GET. So a folder holding netron's web files and the one
model file, served by the lab's own web server (pages/_netron.py registers it with Streamlit), shows the graph
to a browser on any machine that can open the lab: no second port, no loopback address.

    staging = Staging()                      # once per process: a private (0700) temp folder
    viewer = staging.viewer(exported_file)   # <root>/<token>/: netron's web files + that file only
    viewer.page                              # "index.html?url=<file name>", relative to the folder
    viewer.close()                           # the folder goes; its address answers 404 from then on

What this module adds to netron's files:
  * only that file: the folder holds netron's web files (no Python sources) and the exported file, nothing
    else of the lab; each export gets a new folder named by an unguessable token.
  * offline: netron's page locks itself behind "Please update to the newest version" (a link to GitHub) once
    its `<meta name="date">` is 180 days old. The staged index.html leaves that line out (the page then takes
    today's date), so a pinned netron in an offline room keeps working.
  * no telemetry: netron's `browser.js` (`Host.view`) asks ipinfo.io where the browser is, then covers the
    graph with "This app uses cookies to report errors and anonymous usage information." until it is
    accepted, then starts Google Analytics (`base.Telemetry`: page views, errors, events). The viewer the lab
    serves has nothing to report to: the staged browser.js leaves out the two calls (`await consent();`,
    `await telemetry();`), so no notice, no cookie, no request to another host; the telemetry object is
    never started, and an unstarted one sends nothing. Nothing else is changed.
  * cheap: netron's web files (~28 MB) are copied once per process into the staging folder; every viewer
    folder hard-links them (same file system).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

HOSTED = "https://netron.app"
# what netron's own server (netron/server.py) serves to a browser: no .py, no __pycache__
WEB_SUFFIXES = frozenset({".html", ".js", ".css", ".json", ".png", ".gif", ".jpg", ".ico", ".svg",
                          ".ttf", ".otf", ".eot", ".woff", ".woff2"})
_DATE_META = re.compile(r'^\s*<meta name="date" content="[^"]*">\s*\n', re.MULTILINE)
# browser.js, Host.view(): the cookie notice (after a look-up at ipinfo.io) and Google Analytics
_TELEMETRY_CALLS = re.compile(r"^[ \t]*await (?:consent|telemetry)\(\);[ \t]*\n", re.MULTILINE)
# what the staged copy changes, file by file (see the module docstring): name -> (pattern, how many to remove)
_PATCHES = {"index.html": (_DATE_META, 1), "browser.js": (_TELEMETRY_CALLS, 2)}


def hosted_url() -> str:
    """Netron's hosted viewer, for people with internet: open it and drop the downloaded file on it."""
    return HOSTED


def package_dir() -> Path:
    """Where the installed `netron` package keeps its web files."""
    import netron

    return Path(netron.__file__).resolve().parent


def web_files(source: Path | None = None) -> list[Path]:
    """Netron's web files (index.html first), as paths inside `source` (the installed package)."""
    source = source or package_dir()
    files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix in WEB_SUFFIXES)
    if not any(p.name == "index.html" for p in files):
        raise FileNotFoundError(f"{source}: no index.html, not netron's web viewer")
    return sorted(files, key=lambda p: p.name != "index.html")


def served_text(name: str, text: str) -> str:
    """The text of netron's web file `name` as the lab serves it: index.html without its date, browser.js
    without the cookie notice and the telemetry (see the module docstring); any other file unchanged."""
    if name not in _PATCHES:
        return text
    pattern, count = _PATCHES[name]
    return pattern.sub("", text, count=count)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


@dataclass(eq=False)
class Viewer:
    folder: Path  # private folder: netron's web files and `file`, nothing else
    file: Path  # the served copy, named like the exported file
    token: str  # 32 hex digits from `secrets`: the unguessable part of the viewer's address

    @property
    def page(self) -> str:
        """The viewer page, relative to the folder's address: netron opens `?url=` relative to itself."""
        return f"index.html?url={urllib.parse.quote(self.file.name)}"

    @property
    def open(self) -> bool:
        return self.file.is_file()

    def close(self) -> None:
        """Delete the folder (its address answers 404 from then on). Idempotent."""
        shutil.rmtree(self.folder, ignore_errors=True)


class Staging:
    """A private temporary folder: `web/` holds netron's web files once, each viewer a folder of its own."""

    def __init__(self, root: Path | None = None, source: Path | None = None):
        self.root = Path(tempfile.mkdtemp(prefix="vislab-netron-", dir=root))  # 0700
        self.web = self.root / "web"
        self.web.mkdir()
        for src in web_files(source):
            if src.name in _PATCHES:  # without the 180-day lock-out, the cookie notice, the telemetry
                (self.web / src.name).write_text(served_text(src.name, src.read_text(encoding="utf-8")),
                                                 encoding="utf-8")
            else:
                shutil.copy2(src, self.web / src.name)

    def viewer(self, file: str | Path) -> Viewer:
        """A new folder with netron's web files and a link to (or copy of) `file`, and nothing else."""
        file = Path(file)
        if not file.is_file():
            raise FileNotFoundError(f"{file}: no such model file")
        token = secrets.token_hex(16)
        folder = self.root / token
        folder.mkdir(mode=0o700)
        try:
            web = {p.name for p in self.web.iterdir()}
            if file.name in web:
                raise ValueError(f"{file.name}: the name of one of netron's own files; rename the model file")
            for name in web:
                os.link(self.web / name, folder / name)  # same file system: the staging folder
            _link_or_copy(file, folder / file.name)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return Viewer(folder, folder / file.name, token)

    def close(self) -> None:
        """Delete every viewer and the staged web files (at exit, or in tests)."""
        shutil.rmtree(self.root, ignore_errors=True)
