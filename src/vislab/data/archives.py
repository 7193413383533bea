"""Zip archives, opened safely: limits checked before anything is written (file count, total size,
compression ratio per member), no path outside the destination (absolute names, `..`, drive letters),
symbolic links and encrypted members refused or left out, and each archive extracted once, into a folder
named by its content.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

from vislab._fileio import digest

# Archive limits, checked before anything is extracted.
MAX_ZIP_FILES = 20_000
MAX_ZIP_BYTES = 2 << 30  # 2 GiB uncompressed in all
MAX_ZIP_RATIO = 200  # uncompressed / compressed, per member


class ArchiveError(ValueError):
    """An archive that is refused or cannot be read; the message says why and what to do."""


def extract_zip(archive: str | Path, dest: str | Path) -> tuple[Path, list[tuple[str, str]]]:
    """Extract a class-folder zip into `dest`, refusing unsafe or oversized archives before writing.

    Returns the folder and the entries left out on purpose (symbolic links), with the reason."""
    archive, dest = Path(archive), Path(dest)
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise ArchiveError(f"{archive.name} is not a zip archive (or it is damaged)") from None
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        if len(members) > MAX_ZIP_FILES:
            raise ArchiveError(f"{archive.name} holds {len(members)} files; the limit is {MAX_ZIP_FILES}")
        total = sum(m.file_size for m in members)
        if total > MAX_ZIP_BYTES:
            raise ArchiveError(f"{archive.name} unpacks to {total / 2**20:.0f} MiB; the limit is {MAX_ZIP_BYTES >> 20} MiB")
        dest.mkdir(parents=True, exist_ok=True)
        base = dest.resolve()
        skipped: list[tuple[str, str]] = []
        for m in members:
            name = m.filename.replace("\\", "/")
            if m.flag_bits & 0x1:
                raise ArchiveError(f"{archive.name} is encrypted: zip it again without a password")
            if name.startswith("/") or ".." in name.split("/") or (len(name) > 1 and name[1] == ":"):
                raise ArchiveError(f"{archive.name} has an unsafe path '{m.filename}': refused")
            if (m.external_attr >> 16) & 0o170000 == 0o120000:
                skipped.append((name, "symbolic link in the archive (not extracted)"))
                continue
            if m.compress_size and m.file_size / m.compress_size > MAX_ZIP_RATIO:
                raise ArchiveError(f"{archive.name}: '{m.filename}' is compressed {m.file_size // m.compress_size}:1, "
                                "which looks like a zip bomb: refused")
            target = (base / name).resolve()
            if not target.is_relative_to(base):
                raise ArchiveError(f"{archive.name} has an unsafe path '{m.filename}': refused")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ArchiveError(f"{archive.name}: cannot extract '{m.filename}' here "
                                f"({exc.strerror or exc}; a name too long, or a file and a folder of one name?)") from None
            try:
                with zf.open(m) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
            except (zipfile.BadZipFile, EOFError) as exc:
                raise ArchiveError(f"{archive.name} is damaged at '{m.filename}' ({exc})") from None
            except OSError as exc:
                raise ArchiveError(f"{archive.name}: cannot extract '{m.filename}' ({exc.strerror or exc})") from None
    return dest, skipped


def extract_once(archive: Path, work: Path) -> tuple[Path, list[tuple[str, str]]]:
    """The zip extracted under `work`, in a folder named by its content: the same zip is extracted once and
    reused, and no call ever deletes a folder another one may be reading. A new zip goes into a temporary
    folder first and takes its place only when complete."""
    try:
        sha1 = digest(archive, "sha1")
    except OSError as exc:
        raise ArchiveError(f"cannot read {archive.name} ({exc.strerror or exc})") from None
    stem = re.sub(r"[^\w-]+", "_", archive.stem).strip("_")[:40] or "archive"
    target = work / f"{stem}-{sha1[:12]}"
    done = target / ".vislab-extracted.json"
    if done.is_file():
        return target, [tuple(s) for s in json.loads(done.read_text())]
    work.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extracting-", dir=work))
    try:
        _, left_out = extract_zip(archive, tmp)
        (tmp / ".vislab-extracted.json").write_text(json.dumps(left_out))
        if target.exists():  # an earlier extraction that never finished
            shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:  # another process finished the same zip first: use theirs
            if not done.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target, left_out
