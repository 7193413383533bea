"""A class dataset: a dataset the instructor publishes from their own lab to every lab on the server.

    <home>/class/datasets/<digest>/manifest.json    title, classes, counts, digest, published time, val split
    <home>/class/datasets/<digest>/<class>/<file>   the images, read-only
    <home>/class/datasets/<digest>/train|val/<class>/<file>   instead, when the dataset has its own val split

Published once and read in place: a participant's lab keeps the digest and the report's paths into this
folder, never a copy, so a class of thirty on a 500 MB dataset holds it once on disk. The folder is named by
its content (the sorted (class, split, file sha1) triples), so publishing the same images twice, from one lab
or two, is one folder. It is written into a temporary folder and renamed into place when complete, so a lab
never sees half a dataset, and its files and folders are made read-only: no page, job or person writes there.
A train/ val/ split is kept as the folders `scan_folder` recognises, so opening a published dataset is
exactly the validation every folder dataset gets.

A digest is 64 lowercase hex digits; anything else (`../x`, an absolute path) is refused before a path is
built from it. Unpublishing removes the folder at once (renamed away, then deleted): a lab that used it is
told so on its next page and asked for another dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from vislab import _fileio as fileio, _paths as paths
from vislab.data import folders
from vislab.serving import jobs, labs

MAX_IMAGES = 2000  # a class dataset is for a workshop: the whole textile sample (3 x 1000 is a subset) fits
MAX_BYTES = 500 * 2**20  # on one server's disk, once; a larger dataset is better given as a folder to the CLI
TITLE_LIMIT = 60  # characters of a title: one option line of the Data page
DIGEST_PATTERN = re.compile(r"[0-9a-f]{64}")
MANIFEST = "manifest.json"


class ClassDataError(ValueError):
    """A dataset that cannot be published, or a published one that cannot be opened: the message says why."""


@dataclass(frozen=True)
class Published:
    """One published class dataset, as its manifest describes it (cheap: no image is read)."""

    digest: str
    title: str  # plain text (labs.clean_name): whoever shows it escapes it
    classes: tuple[str, ...]
    counts: dict  # {class: images}
    images: int
    bytes: int
    published: float  # time.time() when it was published
    val: tuple[str, ...] | None = None  # the validation images (paths relative to the folder), if it has a split
    fresh: bool = False  # True when this publish() call wrote it; False: it was already published

    @property
    def folder(self) -> Path:
        return datasets_dir() / self.digest

    @property
    def label(self) -> str:
        """The Data page's line for it: `<title> (N classes, M images)`, plain text."""
        return f"{self.title} ({len(self.classes)} classes, {self.images} images)"


def datasets_dir() -> Path:
    return paths.home() / "class" / "datasets"


def valid_digest(digest: object) -> bool:
    return isinstance(digest, str) and DIGEST_PATTERN.fullmatch(digest) is not None


def folder_of(digest: object) -> Path:
    """The folder of a published digest; ClassDataError for anything that is not one (before a path is built)."""
    if not valid_digest(digest):
        raise ClassDataError("not a class dataset id (64 hex digits)")
    return datasets_dir() / digest


def _manifest(folder: Path, fresh: bool = False) -> Published | None:
    try:
        m = fileio.read_json(folder / MANIFEST)
        if not isinstance(m, dict) or m.get("digest") != folder.name:
            return None
        val = m.get("val")
        return Published(m["digest"], labs.clean_name(m["title"], TITLE_LIMIT), tuple(map(str, m["classes"])),
                         {str(k): int(v) for k, v in m["counts"].items()}, int(m["images"]), int(m["bytes"]),
                         float(m["published"]), tuple(map(str, val)) if val is not None else None, fresh)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # unreadable or damaged: not offered


def get(digest: object) -> Published | None:
    """The published dataset of `digest`, or None (never published, unpublished, malformed id)."""
    return _manifest(folder_of(digest)) if valid_digest(digest) else None


def is_published(digest: object) -> bool:
    """One stat: cheap enough for every page run of a lab that uses a class dataset."""
    return valid_digest(digest) and (datasets_dir() / digest / MANIFEST).is_file()


def published() -> list[Published]:
    """Every class dataset on this server (all servers sharing the lab home), oldest first; manifests only."""
    root = datasets_dir()
    found = []
    for folder in root.iterdir() if root.is_dir() else []:
        if valid_digest(folder.name) and not folder.is_symlink():
            p = _manifest(folder)
            if p is not None:
                found.append(p)
    return sorted(found, key=lambda p: (p.published, p.digest))


def open_published(digest: object) -> folders.DataReport:
    """The published dataset as a validated DataReport: its folder scanned like any folder dataset."""
    folder = folder_of(digest)
    if not (folder / MANIFEST).is_file():
        raise ClassDataError("this class dataset is no longer published (the instructor unpublished it): "
                             "pick another dataset")
    try:
        return folders.scan_folder(folder)
    except folders.DataError as exc:
        raise ClassDataError(f"this class dataset cannot be read ({exc})") from None


def readable(lab: labs.Lab, path: str | Path) -> bool:
    """What a lab's pages may read: its own folder (Lab.inside) or a published class dataset."""
    return lab.inside(path) or readable_only(path)


def writable(lab: labs.Lab, path: str | Path) -> bool:
    """What a lab's pages may write: its own folder only, never a class dataset (even one it uses)."""
    return lab.inside(path) and not readable_only(path)


def readable_only(path: str | Path) -> bool:
    """True for a path inside the published class datasets: read by every lab, written by none."""
    try:
        return Path(path).resolve().is_relative_to(datasets_dir().resolve())
    except (OSError, ValueError):
        return False


# ---- publishing ---------------------------------------------------------------------------------------------

def _as_report(dataset) -> folders.DataReport:
    if isinstance(dataset, folders.DataReport):
        return dataset
    try:
        return folders.report_from_dict(dataset)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ClassDataError("this lab's dataset is damaged: choose it again on the Data page") from None


def _may_read(lab: labs.Lab, path: Path) -> bool:
    """A file the instructor's lab uses: in the lab, in the bundled sample, or in a class dataset."""
    if readable(lab, path):
        return True
    try:
        return path.resolve().is_relative_to(folders.sample_root().resolve())
    except (folders.DataError, OSError, ValueError):
        return False


def _entries(lab: labs.Lab, report: folders.DataReport) -> list[tuple[str, str | None, str, Path]]:
    """(class, split, sha1, file) of every image, each checked and read once; limits enforced."""
    if not report.items:
        raise ClassDataError("this dataset has no images: nothing to publish")
    if not report.usable:
        raise ClassDataError("this dataset cannot be trained on (" + "; ".join(report.errors) + ")")
    if len(report.items) > MAX_IMAGES:
        raise ClassDataError(f"this dataset has {len(report.items)} images; a class dataset holds at most "
                             f"{MAX_IMAGES} (use fewer images per class)")
    for name in report.classes:
        if folders.safe_name(name) != name or not name or name.startswith("."):
            raise ClassDataError(f"the class name '{name}' is not a plain folder name")
    root = Path(report.root).resolve()
    total, out, seen = 0, [], set()
    for path, label in report.items:
        p = Path(path)
        if p.is_symlink() or not p.is_file() or not p.resolve().is_relative_to(root) or not _may_read(lab, p):
            raise ClassDataError(f"the image {p.name} is not a file of this lab's dataset any more: choose the "
                                 "dataset again on the Data page")
        total += p.stat().st_size
        if total > MAX_BYTES:
            raise ClassDataError(f"this dataset is larger than {MAX_BYTES >> 20} MB: a class dataset must fit once "
                                 "on the server's disk (use fewer images per class)")
        split = None if report.fixed_val is None else "val" if path in report.fixed_val else "train"
        sha1 = fileio.digest(p, "sha1")
        if (report.classes[label], split, sha1) not in seen:  # same bytes twice in one class: kept once
            seen.add((report.classes[label], split, sha1))
            out.append((report.classes[label], split, sha1, p))
    if report.fixed_val is not None and not ({s for _, s, _, _ in out} >= {"train", "val"}):
        out = [(c, None, h, p) for c, _, h, p in out]  # a split with an empty side: published without it
    return out


def content_digest(entries) -> str:
    """The folder's name: sha256 of the sorted (class, split, sha1) triples (file names and order do not count)."""
    triples = sorted({(c, s or "", h) for c, s, h, *_ in entries})
    return hashlib.sha256(json.dumps(triples).encode()).hexdigest()


def publish(lab: labs.Lab, dataset, title: str) -> Published:
    """Publish the lab's dataset (a DataReport, or its dict as a lab keeps it) to every lab on the server.

    The same content already published: that one is returned (`fresh` False, its title kept)."""
    title = labs.clean_name(title, TITLE_LIMIT)
    if not title:
        raise ClassDataError("give the dataset a title: participants pick it by that name")
    report = _as_report(dataset)
    entries = _entries(lab, report)
    digest = content_digest(entries)
    target = datasets_dir() / digest
    target.parent.mkdir(parents=True, exist_ok=True)
    with fileio.lock(target):  # two servers publishing one dataset at once: one writes, the other reuses
        done = _manifest(target)
        if done is not None:
            return done
        tmp = Path(tempfile.mkdtemp(prefix=".publishing-", dir=target.parent))
        try:
            _write(tmp, entries, title, digest)
            if os.path.lexists(target):  # a folder left by a publish that never finished
                _remove(target)
            tmp.rename(target)
        finally:
            if tmp.exists():
                _remove(tmp)
    return _manifest(target, fresh=True)


def _write(tmp: Path, entries, title: str, digest: str) -> None:
    """The images, the manifest, checked by scanning, then made read-only."""
    counts: dict[str, int] = {}
    size = 0
    for cls, split, sha1, src in entries:
        folder = tmp / split / cls if split else tmp / cls
        folder.mkdir(parents=True, exist_ok=True)
        stem = folders.safe_name(src.stem)[:60] or "image"
        shutil.copyfile(src, folder / f"{sha1[:12]}_{stem}{src.suffix.lower()}")
        counts[cls] = counts.get(cls, 0) + 1
        size += src.stat().st_size
    manifest = {"title": title, "digest": digest, "published": time.time(), "images": len(entries),
                "bytes": size, "classes": [], "counts": {}, "val": None}
    fileio.write_json(tmp / MANIFEST, manifest)
    try:
        seen = folders.scan_folder(tmp, check=False)  # what every lab will see when it opens it
    except folders.DataError as exc:
        raise ClassDataError(f"the published copy cannot be read back ({exc})") from None
    if seen.counts != counts or seen.errors:
        raise ClassDataError("the published copy does not read back as the lab's dataset (class folders named "
                             "train/ val/ test? rename them): " + "; ".join(seen.errors))
    root = Path(seen.root)
    manifest.update(classes=seen.classes, counts=seen.counts,
                    val=sorted(str(Path(p).relative_to(root)) for p in seen.fixed_val)
                    if seen.fixed_val is not None else None)
    fileio.write_json(tmp / MANIFEST, manifest)
    for dirpath, dirnames, filenames in os.walk(tmp, topdown=False):
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o444)
        os.chmod(dirpath, 0o555)


def _remove(folder: Path) -> None:
    """Delete a read-only tree: its folders made writable again first (files need only their folder's)."""
    for dirpath, _, _ in os.walk(folder):
        try:
            os.chmod(dirpath, stat.S_IRWXU)
        except OSError:
            pass
    shutil.rmtree(folder, ignore_errors=True)


def training_on(digest: object) -> int:
    """How many queued or running jobs of the lab home (every server's) read this dataset's images."""
    target = folder_of(digest).resolve()
    count = 0
    for job, status in jobs.home_jobs():
        if status.get("state") not in ("queued", "running"):
            continue
        root = (job.payload().get("report") or {}).get("root")
        try:
            count += bool(root) and Path(root).resolve().is_relative_to(target)
        except (OSError, ValueError):
            continue
    return count


def unpublish(digest: object) -> Published:
    """Remove a published dataset from the server: gone from every Data page at once. Returns what it was.
    Refused while a job trains on it (its images would vanish under it): the message says how many."""
    target = folder_of(digest)
    with fileio.lock(target):
        was = _manifest(target)
        if was is None:
            raise ClassDataError("no class dataset with this id on this server (already unpublished?)")
        if busy := training_on(digest):
            raise ClassDataError(f"{busy} job(s) are queued or training on this dataset: unpublish it when they "
                                 "have finished (the Class page shows them)")
        gone = target.with_name(f".removing-{digest}-{secrets.token_hex(4)}")
        target.rename(gone)  # one step: no lab sees the folder half deleted
        _remove(gone)
    return was
