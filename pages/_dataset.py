"""The session's dataset: what the Data page produced (a validated report and its split), kept in the lab
and restored from it, and the lab's folders for uploads and runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from pages import _state
from pages._state import AUGMENT, DATASET, PENDING_DATASET, WORKING, current_lab
from vislab.data import folders as data


@dataclass
class Dataset:
    """What the Data page produced: the validated report and its split."""

    report: data.DataReport
    label: str  # where it came from, for the sidebar
    per_class: int | None = None
    val_frac: float = 0.2
    seed: int = 0

    @property
    def source(self) -> str:
        """Where it came from, as the Data page offers it: "sample", "zip" or "uploads"."""
        if self.per_class is not None or self.label.startswith("textile sample"):
            return "sample"
        return "uploads" if self.label.startswith("uploads") else "zip"

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
        return {"label": self.label, "per_class": self.per_class, "val_frac": self.val_frac, "seed": self.seed,
                "root": self.report.root, "images": len(self.report.items)}


def open_page() -> None:
    """Session defaults, and what the lab saved that needs the heavy libraries (dataset, augmentations)."""
    _state.init_state()
    restore()


def restore() -> None:
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
    saved = current_lab().read_dataset()
    try:
        report = data.report_from_dict(saved) if saved else None
    except (KeyError, TypeError, ValueError):
        report = None
    if report is None or not Path(report.root).is_dir() or not all(Path(p).is_file() for p, _ in report.items[:5]):
        st.warning(f"The dataset this lab used ({pending.get('label', 'saved')}) is no longer on this server: "
                   "pick it again on the Data page.")
        ss.pop(DATASET, None)
        return
    ss[DATASET] = Dataset(report, pending.get("label", "saved dataset"), pending.get("per_class"),
                          float(pending.get("val_frac", 0.2)), int(pending.get("seed", 0)))
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
