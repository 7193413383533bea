"""Datasets in class-folder layout, scanned into a DataReport: from a folder, a `.zip` (opened by
`vislab.data.archives`), uploaded files, or the bundled textile sample; subsets and the train / val split.
The torch Datasets over a report's items are `vislab.data.datasets`.

Every file is checked before training: unreadable ones are skipped and listed with the reason, never
dropped silently, and problems that make a dataset unusable (one class, a class too small to split)
are reported as errors.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from vislab.data import archives
from vislab._fileio import digest
from vislab.data.transforms import load_image

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
MIN_PER_CLASS = 2  # one for training, one for validation
FEW_PER_CLASS = 10  # below this, a warning


class DataError(ValueError):
    """A dataset that cannot be used; the message says why and what to do."""


@dataclass
class DataReport:
    root: str
    classes: list[str]
    items: list[tuple[str, int]]  # (file path, class index) of every usable image
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # a train/ val/ layout gives its own split: the validation images' paths (None: split() draws one)
    fixed_val: frozenset[str] | None = None

    @property
    def counts(self) -> dict[str, int]:
        c = Counter(label for _, label in self.items)
        return {name: c.get(i, 0) for i, name in enumerate(self.classes)}

    @property
    def usable(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        lines = [f"{len(self.items)} images in {len(self.classes)} classes at {self.root}"]
        lines += [f"  {name}: {n}" for name, n in self.counts.items()]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} files:")
            lines += [f"  {path}: {why}" for path, why in self.skipped]
        lines += [f"warning: {w}" for w in self.warnings]
        lines += [f"error: {e}" for e in self.errors]
        return "\n".join(lines)


def report_to_dict(report: DataReport) -> dict:
    """A DataReport as plain JSON data (a lab keeps it; a job's worker gets it without scanning again)."""
    return {"root": report.root, "classes": list(report.classes), "items": [[p, y] for p, y in report.items],
            "skipped": [list(s) for s in report.skipped], "warnings": list(report.warnings),
            "errors": list(report.errors),
            "fixed_val": sorted(report.fixed_val) if report.fixed_val is not None else None}


def report_from_dict(d: dict) -> DataReport:
    fixed = d.get("fixed_val")
    return DataReport(str(d["root"]), [str(c) for c in d["classes"]], [(str(p), int(y)) for p, y in d["items"]],
                      [tuple(s) for s in d.get("skipped", [])], list(d.get("warnings", [])),
                      list(d.get("errors", [])), frozenset(fixed) if fixed is not None else None)


def _hidden(path: Path) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in path.parts)


def check_image(path: Path) -> str | None:
    """None if the file decodes as an image, else the reason it cannot be used."""
    if path.stat().st_size == 0:
        return "empty file (0 bytes)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = load_image(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return "image too large (Pillow's decompression-bomb limit)"
    except Image.UnidentifiedImageError:
        return "not an image (cannot identify the format)"
    except OSError as exc:  # truncated, corrupt
        return f"unreadable image ({str(exc).splitlines()[0]})"
    except Exception as exc:  # any other decoder failure: report, do not crash
        return f"unreadable image ({type(exc).__name__}: {exc})"
    if min(img.size) < 8:
        return f"too small ({img.size[0]}x{img.size[1]} px)"
    if max(img.size) > MAX_ASPECT * min(img.size):
        return (f"extreme aspect ratio ({img.size[0]}x{img.size[1]} px, over {MAX_ASPECT}:1): a square crop "
                "would see a sliver of it")
    return None


def natural_key(name: str) -> tuple:
    """Sort key: '2' before '10', case-insensitive first, then exact (class names that are numbers)."""
    parts = re.split(r"(\d+)", name)
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t.casefold()) for t in parts if t), name


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except PermissionError:
        raise DataError(f"cannot read the folder {folder} (permission denied)") from None
    except OSError as exc:
        raise DataError(f"cannot read the folder {folder} ({exc.strerror or exc})") from None


def _class_root(root: Path) -> Path:
    """Step into a lone top folder (a zip of `data/` holding the class folders)."""
    while True:
        entries = [p for p in _entries(root) if not _hidden(p.relative_to(root))]
        dirs = [p for p in entries if p.is_dir()]
        if len(dirs) == 1 and not [p for p in entries if p.is_file()] and any(q.is_dir() for q in dirs[0].iterdir()):
            root = dirs[0]
        else:
            return root


SPLIT_DIRS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
              "test": "test", "testing": "test"}
MAX_ASPECT = 50  # longer strips are skipped: resizing the short side would need huge images, the crop sees 2%


def _subdirs(folder: Path, root: Path) -> list[Path]:
    return [p for p in _entries(folder) if p.is_dir() and not p.is_symlink() and not _hidden(p.relative_to(root))]


def _split_layout(root: Path, top: list[Path]) -> dict[str, Path] | None:
    """{'train': dir, 'val': dir, ...} when the top folders are a train/ val/ (test/) layout of class folders."""
    roles = {SPLIT_DIRS.get(p.name.casefold()): p for p in top}
    if "train" not in roles or not ({"val", "test"} & roles.keys()) or len(top) != len(roles.keys() - {None}):
        return None
    if not all(_subdirs(d, root) for r, d in roles.items() if r):
        return None
    return {r: d for r, d in roles.items() if r}


def scan_folder(root: str | Path, check: bool = True) -> DataReport:
    """Read a class-folder dataset (`root/<class>/<image>`), validating every file.

    A `train/<class>/…` + `val/<class>/…` (or `test/`) layout is recognised: its classes are the folders
    inside, and its own split is kept (report.fixed_val)."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise DataError(f"not a folder: {root}")
    root = _class_root(root)
    top = _subdirs(root, root)
    layout = _split_layout(root, top)
    report = DataReport(str(root), [], [])
    if layout:
        val_dir = layout.get("val", layout.get("test"))
        names = sorted({d.name for r in ("train", "val", "test") if r in layout
                        for d in _subdirs(layout[r], root)}, key=natural_key)
        report.classes = names
        sources = [(layout["train"], False), (val_dir, True)]
        note = (f"found a {layout['train'].name}/ {val_dir.name}/ layout: training on {layout['train'].name}/ "
                f"and validating on {val_dir.name}/, as given (the validation fraction is not used)")
        if "val" in layout and "test" in layout:
            note += f"; {layout['test'].name}/ is left out, for your own final test"
        report.warnings.append(note)
    else:
        report.classes = sorted((p.name for p in top), key=natural_key)
        sources = [(root, False)]
    for p in _entries(root):
        if p.is_file() and not _hidden(p.relative_to(root)) and p.suffix.lower() in IMAGE_EXTS:
            report.skipped.append((p.name, "image outside any class folder"))
    for p in _entries(root):
        if p.is_symlink() and p.is_dir() and not _hidden(p.relative_to(root)):
            report.skipped.append((p.name, "symbolic link to a folder (not followed)"))
    digests: dict[str, dict[str, str]] = {}  # file digest -> {class folder: its first file with it}
    val_paths: set[str] = set()
    for base, is_val in sources:
        for label, name in enumerate(report.classes):
            cdir = base / name
            if cdir.is_dir() and not cdir.is_symlink():
                _scan_class(cdir, root, label, report, digests, val_paths if is_val else None, check)
    if layout:
        report.fixed_val = frozenset(val_paths)
    _validate(report)
    return report


def _scan_class(cdir: Path, root: Path, label: int, report: DataReport, digests: dict[str, dict[str, str]],
                val_paths: set[str] | None, check: bool) -> None:
    if not os.access(cdir, os.R_OK | os.X_OK):
        report.skipped.append((str(cdir.relative_to(root)), "folder not readable (permission denied)"))
        return
    nested = sorted({p.relative_to(cdir).parts[0] for p in cdir.rglob("*")
                     if p.is_dir() and not p.is_symlink() and not _hidden(p.relative_to(root))})
    if nested:
        shown = ", ".join(nested[:4]) + (", …" if len(nested) > 4 else "")
        report.warnings.append(f"class '{cdir.name}' has sub-folders ({shown}): their images count as "
                               f"'{cdir.name}'. If they are classes, make them top-level folders")
    for path in sorted(cdir.rglob("*")):
        rel = path.relative_to(root)
        if _hidden(rel) or (path.is_dir() and not path.is_symlink()):
            continue
        if path.is_symlink():
            report.skipped.append((str(rel), "symbolic link (not followed)"))
            continue
        if path.suffix.lower() not in IMAGE_EXTS:
            report.skipped.append((str(rel), f"not an image extension ({path.suffix or 'none'})"))
            continue
        reason = check_image(path) if check else None
        if reason:
            report.skipped.append((str(rel), reason))
            continue
        try:
            sha1 = digest(path, "sha1")
        except OSError as exc:
            report.skipped.append((str(rel), f"unreadable ({exc.strerror or exc})"))
            continue
        seen = digests.setdefault(sha1, {})  # insertion order: the first folder's file comes first
        folder = str(cdir.relative_to(root))
        if folder in seen:
            report.skipped.append((str(rel), f"same bytes as {seen[folder]}: kept once, so a copy cannot land in "
                                             "both training and validation"))
            continue
        if seen:
            report.warnings.append(f"{rel} is the same file as {next(iter(seen.values()))} (in another folder)")
        seen[folder] = str(rel)
        report.items.append((str(path), label))
        if val_paths is not None:
            val_paths.add(str(path))


def _validate(report: DataReport) -> None:
    counts = report.counts
    if not report.classes:
        report.errors.append("no class folders found: expected <root>/<class name>/<images>")
    elif len(report.classes) == 1:
        report.errors.append(f"only one class ('{report.classes[0]}'): a classifier needs at least two")
    if report.fixed_val is not None:
        in_train = Counter(label for path, label in report.items if path not in report.fixed_val)
        for i, name in enumerate(report.classes):
            if counts[name] and not in_train.get(i):
                report.errors.append(f"class '{name}' has no training images (only in the validation folder)")
            elif counts[name] and in_train.get(i) == counts[name]:
                report.warnings.append(f"class '{name}' has no validation images")
    few = []
    for name, n in counts.items():
        if n == 0:
            report.errors.append(f"class '{name}' has no usable images")
        elif n < MIN_PER_CLASS and report.fixed_val is None:
            report.errors.append(f"class '{name}' has {n} image: at least {MIN_PER_CLASS} are needed to split")
        elif n < FEW_PER_CLASS:
            few.append(f"'{name}' ({n})")
    if few:
        shown = ", ".join(few[:8]) + (f" and {len(few) - 8} more" if len(few) > 8 else "")
        report.warnings.append(f"few images (under {FEW_PER_CLASS}) in class{'es' if len(few) > 1 else ''} "
                               f"{shown}: results will be noisy")


def load_dataset(path: str | Path, work: str | Path | None = None) -> DataReport:
    """A folder or a `.zip` (extracted into `work`) -> validated DataReport."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"no such file or folder: {path}")
    if path.is_dir():
        return scan_folder(path)
    if work is None:
        raise DataError("a zip needs a work folder to extract into")
    try:
        folder, left_out = archives.extract_once(path, Path(work))
    except archives.ArchiveError as exc:
        raise DataError(str(exc)) from None
    report = scan_folder(folder)
    report.skipped = left_out + report.skipped
    return report


def from_uploads(files: dict[str, list[tuple[str, bytes]]], dest: str | Path) -> DataReport:
    """Per-class uploads ({class name: [(file name, bytes)]}) written under `dest`, then validated."""
    dest = Path(dest)
    folders: dict[str, str] = {}
    for cls in files:
        name = safe_name(cls)
        if not name:
            raise DataError(f"the class name '{cls}' is empty once cleaned: give it letters or digits")
        if name.casefold() in folders:
            raise DataError(f"the class names '{folders[name.casefold()]}' and '{cls}' both become the folder "
                            f"'{name}': rename one")
        folders[name.casefold()] = cls
    if dest.exists():
        shutil.rmtree(dest)
    try:
        for cls, uploads in files.items():
            folder = dest / safe_name(cls)
            folder.mkdir(parents=True, exist_ok=True)
            for i, (fname, blob) in enumerate(uploads):
                base = Path(fname.replace("\\", "/")).name
                ext = Path(base).suffix if Path(base).suffix.lower() in IMAGE_EXTS else ""
                if not ext and base.lower() in IMAGE_EXTS:
                    ext = base  # a file called ".png"
                stem = safe_name(base[: len(base) - len(ext)] if ext else base)[:80] or "upload"
                (folder / f"{i:04d}_{stem}{ext}").write_bytes(blob)
    except OSError as exc:
        raise DataError(f"cannot store the uploads ({exc.strerror or exc})") from None
    return scan_folder(dest)


def safe_name(name: str, max_bytes: int = 120) -> str:
    """A class or file name as a safe folder name: no separators or control characters, no leading dots,
    short enough for any file system (cut on a character boundary)."""
    name = "".join("_" if ch in "/\\" or ord(ch) < 32 or ch == "\x7f" else ch for ch in name).strip().lstrip(".")
    encoded = name.encode("utf-8")[:max_bytes]
    return encoded.decode("utf-8", errors="ignore").strip()


def subset(report: DataReport, per_class: int | None, seed: int = 0) -> DataReport:
    """At most `per_class` images of each class (a seeded random pick), for quick CPU demos."""
    if not per_class:
        return report
    rng = random.Random(seed)
    by_class: dict[int, list[str]] = {}
    for path, label in report.items:
        by_class.setdefault(label, []).append(path)
    items = []
    for label in sorted(by_class):
        paths = by_class[label]
        rng.shuffle(paths)
        items += [(p, label) for p in sorted(paths[:per_class])]
    fixed = report.fixed_val & {p for p, _ in items} if report.fixed_val is not None else None
    out = DataReport(report.root, report.classes, items, report.skipped, list(report.warnings), [], fixed)
    _validate(out)
    return out


def split(items: list[tuple[str, int]], val_frac: float = 0.2, seed: int = 0,
          fixed_val: frozenset[str] | None = None):
    """Stratified train / val split: every class keeps at least one image on each side. With `fixed_val`
    (a train/ val/ layout's own split, DataReport.fixed_val) those images are the validation set."""
    if fixed_val is not None:
        return [i for i in items if i[0] not in fixed_val], [i for i in items if i[0] in fixed_val]
    rng = random.Random(seed)
    by_class: dict[int, list[tuple[str, int]]] = {}
    for item in items:
        by_class.setdefault(item[1], []).append(item)
    train, val = [], []
    for label in sorted(by_class):
        group = sorted(by_class[label])
        rng.shuffle(group)
        n_val = min(max(1, round(len(group) * val_frac)), len(group) - 1)
        val += group[:n_val]
        train += group[n_val:]
    return train, val


def fraction_of(items: list[tuple[str, int]], fraction: float, seed: int = 0) -> list[tuple[str, int]]:
    """A stratified `fraction` of `items` (training images), nested: each class is shuffled once by `seed`
    and the first round(fraction x its count) kept (at least one), so with one seed the 10 % set lies inside
    the 25 % set, which lies inside the 50 % set. Order as given."""
    if not 0 < fraction <= 1:
        raise DataError(f"a training fraction lies in (0, 1], not {fraction}")
    if fraction == 1:
        return list(items)
    by_class: dict[int, list[tuple[str, int]]] = {}
    for item in items:
        by_class.setdefault(item[1], []).append(item)
    keep = set()
    for label in sorted(by_class):
        group = sorted(by_class[label])
        random.Random(f"{seed}-{label}").shuffle(group)  # one order per class and seed, whatever the fraction
        keep.update(group[:max(1, round(len(group) * fraction))])
    return [item for item in items if item in keep]


# -- the bundled sample ---------------------------------------------------------------------------------

SAMPLE_NAME = "textile"


def sample_root() -> Path:
    """The textile defect images of the installed `conformal-clip-data` package (3 classes)."""
    try:
        import conformal_clip_data
    except ImportError:
        raise DataError("the sample data package is missing: pip install conformal-clip-data") from None
    return Path(conformal_clip_data.__file__).parent / "data" / "textile_images" / "simulated"


def resolve(path: str) -> Path:
    """`sample` / `textile` name the bundled sample; anything else is a path."""
    return sample_root() if path in ("sample", SAMPLE_NAME) else Path(path)
