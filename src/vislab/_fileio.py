"""Small file helpers every module shares: atomic writes (a reader or a kill never sees half a file), a
file lock (two servers sharing one lab home never read-modify-write one file at once), file digests, and the
undo of what a failed command wrote (OutGuard)."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path


def write_bytes(path: str | Path, blob: bytes) -> Path:
    """Write `blob` to `path` atomically: a temporary file in the same folder, fsynced, then renamed over."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj, indent: int | None = 2) -> Path:
    """`obj` as JSON at `path`, atomically."""
    return write_bytes(path, json.dumps(obj, indent=indent).encode())


def read_json(path: str | Path, default=None):
    """The JSON at `path`; `default` when the file is missing. A damaged file raises ValueError."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return default
    return json.loads(text)  # json.JSONDecodeError is a ValueError


@contextlib.contextmanager
def lock(path: str | Path):
    """Hold an exclusive lock for `path` (on the hidden file `.<name>.lock` next to it) while the block runs.

    `fcntl.flock`, so it holds between processes and between machines on NFS (Linux maps flock to NFS locks);
    the lock goes with the process, so a killed server never leaves a file locked. Atomic writes already keep
    readers from a torn file; take this lock around a read-modify-write (status, a lab's state) or a claim.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        os.close(fd)  # closing releases the lock


def digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class OutGuard:
    """What a command writes at `--out`, undone when it fails: a command that fails leaves nothing behind.

    Taken before the command runs. If `out` does not exist yet, the topmost folder the command will create for
    it (`out` itself, or the first missing parent) is removed on failure; if `out` is a folder the user already
    had, it stays, and only the entries the command added to it are removed."""

    def __init__(self, out: str | os.PathLike | None):
        self.new: Path | None = None  # the topmost path that did not exist before
        self.folder: Path | None = None  # an existing folder at out ...
        self.before: set[str] = set()  # ... and its entries before
        self.keep = False  # set by a command whose failure still leaves something worth keeping
        if out is None or not str(out).strip():
            return
        path = Path(out)
        for p in (path, *path.parents):
            if os.path.lexists(p):
                break
            self.new = p
        if self.new is None and path.is_dir():
            self.folder = path
            try:
                self.before = set(os.listdir(path))
            except OSError:
                self.folder = None

    def undo(self) -> None:
        if self.keep:
            return
        if self.new is not None:
            _remove(self.new)
        elif self.folder is not None:
            try:
                added = set(os.listdir(self.folder)) - self.before
            except OSError:
                return
            for name in added:
                _remove(self.folder / name)


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            path.unlink()
    except OSError:
        pass


def csv_text(rows, columns) -> str:
    """Rows (dicts) as CSV text with a header of `columns`, in that order: what every CSV file vislab writes is."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
