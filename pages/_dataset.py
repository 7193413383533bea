"""The session's dataset: what the Data page produced (a validated report and its split), kept in the lab
and restored from it, and the lab's folders for uploads and runs.

A class dataset (vislab.serving.class_data, published by the instructor) is used in place: the lab keeps its
digest and the report's paths into the shared folder, never a copy. Every page checks, with one stat, that it
is still published; when the instructor has unpublished it, the lab drops it and the Data page says so."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from pages import _state
from pages._state import AUGMENT, DATASET, PENDING_DATASET, WORKING, current_lab
from vislab.data import folders as data
from vislab.serving import class_data, labs

CLASS_GONE = "_class_dataset_gone"  # the title of the class dataset this lab used until it was unpublished


@dataclass
class Dataset:
    """What the Data page produced: the validated report and its split."""

    report: data.DataReport
    label: str  # where it came from, plain text (a zip's file name, a class dataset's title): show `markdown`
    per_class: int | None = None
    val_frac: float = 0.2
    seed: int = 0
    published: str | None = None  # a class dataset's digest (used in place, read-only)
    title: str = ""  # a class dataset's title, plain text

    @property
    def source(self) -> str:
        """Where it came from, as the Data page offers it: "sample", "zip", "uploads" or "class"."""
        if self.published:
            return "class"
        if self.per_class is not None or self.label.startswith("textile sample"):
            return "sample"
        return "uploads" if self.label.startswith("uploads") else "zip"

    @property
    def markdown(self) -> str:
        """The label as Markdown that shows exactly its text (a file name or a title is text, never markup)."""
        return labs.name_markdown(self.label)

    @property
    def used(self) -> data.DataReport:
        return data.subset(self.report, self.per_class, self.seed)

    def split(self):
        used = self.used
        return data.split(used.items, self.val_frac, self.seed, used.fixed_val)

    def to_state(self, lab) -> dict:
        """What the lab keeps (small); the report itself goes to the lab's dataset.json once per report."""
        key = f"{self.report.root}|{len(self.report.items)}|{id(self.report)}"
        if getattr(self, "_saved_key", None) != key:
            lab.write_dataset(data.report_to_dict(self.report))
            self._saved_key = key
        out = {"label": self.label, "per_class": self.per_class, "val_frac": self.val_frac, "seed": self.seed,
               "root": self.report.root, "images": len(self.report.items)}
        if self.published:
            out.update(published=self.published, title=self.title)
        return out


def class_dataset(report: data.DataReport, entry: class_data.Published, **split) -> Dataset:
    """A published class dataset as the lab's dataset (its label plain text, as every label: shown through
    `Dataset.markdown`)."""
    return Dataset(report, f"class dataset {entry.title}", published=entry.digest,
                   title=entry.title, **split)


def class_report(digest: str) -> data.DataReport:
    """A published dataset scanned once per server process: its folder never changes (read-only, named by
    its content), so the scan is valid for as long as it is published. ClassDataError when it is not."""
    return _class_report(digest, str(class_data.folder_of(digest)))


@st.cache_data(show_spinner="Checking the class dataset…", max_entries=8)
def _class_report(digest: str, folder: str) -> data.DataReport:  # the folder too: another lab home, another scan
    return class_data.open_published(digest)


def open_page(warn: bool = True) -> None:
    """Session defaults, and what the lab saved that needs the heavy libraries (dataset, augmentations).
    A class dataset unpublished since the last run is dropped (with a warning here unless `warn` is False:
    the Data page says it its own way)."""
    _state.init_state()
    restore(warn)
    ds = st.session_state.get(DATASET)
    if ds is not None and ds.published and not class_data.is_published(ds.published):
        _class_gone(ds.title, warn)


def _class_gone(title: str, warn: bool) -> None:
    ss = st.session_state
    ss.pop(DATASET, None)
    ss.pop(WORKING, None)
    ss[CLASS_GONE] = title or "class dataset"
    if warn:
        st.warning(f"The class dataset **{labs.name_markdown(ss[CLASS_GONE])}** is no longer published (the "
                   "instructor unpublished it): pick another dataset on the Data page.")


def restore(warn: bool = True) -> None:
    ss = st.session_state
    aug = ss.get(AUGMENT)
    if isinstance(aug, tuple):
        from vislab.data.transforms import Augment

        try:
            ss[AUGMENT] = Augment(**aug[1])
        except TypeError:
            ss.pop(AUGMENT, None)
    pending = ss.pop(PENDING_DATASET, None)
    if not pending:
        return
    digest = pending.get("published")
    if digest and not class_data.is_published(digest):  # also a malformed digest: never a path
        _class_gone(labs.clean_name(pending.get("title")), warn)
        return
    saved = current_lab().read_dataset()
    try:
        report = data.report_from_dict(saved) if saved else None
    except (KeyError, TypeError, ValueError):
        report = None
    if digest and (report is None or Path(report.root).resolve() != class_data.folder_of(digest).resolve()):
        try:
            report = class_report(digest)  # the lab's copy of the report is gone or names another folder
        except class_data.ClassDataError:
            report = None
    if report is None or not Path(report.root).is_dir() or not all(Path(p).is_file() for p, _ in report.items[:5]):
        st.warning(f"The dataset this lab used ({labs.name_markdown(str(pending.get('label', 'saved')))}) is no longer on this server: "
                   "pick it again on the Data page.")
        ss.pop(DATASET, None)
        return
    split = {"val_frac": float(pending.get("val_frac", 0.2)), "seed": int(pending.get("seed", 0))}
    entry = class_data.get(digest) if digest else None
    ss[DATASET] = (class_dataset(report, entry, **split) if entry is not None else
                   Dataset(report, pending.get("label", "saved dataset"), pending.get("per_class"), **split))
    ss[DATASET]._saved_key = f"{report.root}|{len(report.items)}|{id(report)}"
    ss.pop(WORKING, None)


def runs_folder() -> Path:
    """This lab's runs: other labs' runs on a shared server are never listed or opened."""
    return current_lab().runs_dir


def uploads_folder() -> Path:
    """This lab's own folder for uploads and extracted zips (kept across reloads and restarts)."""
    folder = current_lab().data_dir
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@st.cache_data(show_spinner="Checking the dataset…", max_entries=8)
def scan(path: str, mtime: float) -> data.DataReport:
    return data.scan_folder(path)


if __name__ == "__main__":  # opened as a page of its own (Streamlit's old pages-folder mode)
    from pages import _route

    _route.through_app()
