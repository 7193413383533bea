"""What a background job runs, as typed payloads: a `TrainTask` (one experiment, or the resume of a run), a
`CompareTask` (several configurations of one model on one dataset) and a `StudyTask` (a transfer study: thaw
depth x training fraction x seeds, vislab.training.study).

The pages and the CLI build a task; a job's job.json holds `to_payload()` beside its kind; the worker (local
process or Ray task) reads it back with `from_payload` and calls `run`. So a job is described in one place and
assembled in one place, whoever starts it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, ClassVar

from vislab.data import folders as data
from vislab.training import compare, experiment, study
from vislab.training.loop import Event


@dataclass
class TrainTask:
    """One training run: `spec` on `report`'s images; with `resume`, the continuation of that run folder for
    `spec.train.epochs` more epochs. `plan` is a freeze plan (FreezePlan.to_dict()) the Freeze page edited by
    hand, which then wins over the spec's strategy."""

    kind: ClassVar[str] = "train"
    spec: experiment.Spec
    report: data.DataReport
    plan: dict | None = None
    resume: str | None = None

    def to_payload(self) -> dict:
        return {"spec": self.spec.to_dict(), "report": data.report_to_dict(self.report), "plan": self.plan,
                "resume": self.resume}

    @classmethod
    def from_payload(cls, payload: dict) -> TrainTask:
        return cls(experiment.Spec.from_dict(payload["spec"]), data.report_from_dict(payload["report"]),
                   payload.get("plan"), payload.get("resume"))

    def run(self, out: str | Path, on_event: Callable[[Event], None], stop=None) -> experiment.Result:
        """Train (or resume) into `out`, keeping the best epoch as it goes and the validation predictions."""
        if self.resume:
            return experiment.resume(self.resume, self.report, self.spec.train.epochs, out, on_event, stop)
        prepared = experiment.prepare(self.spec, len(self.report.classes), plan=self.plan)
        return experiment.train(self.spec, self.report, out, on_event, stop, prepared=prepared,
                                checkpoints=True, predictions=True)


@dataclass
class CompareTask:
    """`configs` of `model` trained one after another on `report`'s images, each `epochs` epochs, on one split."""

    kind: ClassVar[str] = "compare"
    model: str
    report: data.DataReport
    configs: list[compare.Config]
    epochs: int
    img_size: int | None = None
    batch_size: int = 32
    seed: int = 0
    per_class: int | None = None
    engine: str = "auto"

    def to_payload(self) -> dict:
        return {"model": self.model, "report": data.report_to_dict(self.report),
                "configs": [asdict(c) for c in self.configs], "epochs": int(self.epochs),
                "img_size": self.img_size, "batch_size": self.batch_size, "seed": self.seed,
                "per_class": self.per_class, "engine": self.engine}

    @classmethod
    def from_payload(cls, payload: dict) -> CompareTask:
        return cls(payload["model"], data.report_from_dict(payload["report"]),
                   [compare.Config(**c) for c in payload["configs"]], payload["epochs"], payload.get("img_size"),
                   payload.get("batch_size", 32), payload.get("seed", 0), payload.get("per_class"),
                   payload.get("engine", "auto"))

    def run(self, out: str | Path, on_event: Callable[[str, Event], None], stop=None) -> list[dict]:
        """Train every configuration into `out`/<config>; `on_event(config name, event)`; the comparison rows."""
        return compare.run(self.model, self.report, self.configs, self.epochs, out, img_size=self.img_size,
                           batch_size=self.batch_size, seed=self.seed, on_event=on_event, stop=stop,
                           per_class=self.per_class, engine=self.engine)


@dataclass
class StudyTask:
    """A transfer study of `plan` on `report`'s images. `data_label` is what the rows' commands pass as `--data`
    (the dataset's name or path); `folder` is where the study lives: None, the job's own folder; a Resume
    names the interrupted study's folder, so only its missing rows train."""

    kind: ClassVar[str] = "study"
    plan: study.Plan
    report: data.DataReport
    data_label: str
    folder: str | None = None

    def to_payload(self) -> dict:
        return {"plan": self.plan.to_dict(), "report": data.report_to_dict(self.report),
                "data_label": self.data_label, "folder": self.folder}

    @classmethod
    def from_payload(cls, payload: dict) -> StudyTask:
        return cls(study.Plan.from_dict(payload["plan"]), data.report_from_dict(payload["report"]),
                   payload["data_label"], payload.get("folder"))

    def where(self, out: str | Path) -> Path:
        """The study's folder when the job runs in `out`."""
        return Path(self.folder or out)

    def rows(self) -> int:
        """How many rows the whole study has (finished or not)."""
        return len(self.plan.points(study.body_stages(self.plan.model)))

    def run(self, out: str | Path, on_event: Callable[[str, Event], None], stop=None,
            on_row: Callable[[study.Study], None] | None = None, spread: study.Spread | None = None) -> study.Study:
        """Train the rows not yet in the study's folder; `on_event(row name, event)`, `on_row(study)` after
        each finished row; `spread`: where the groups of rows train (study.run), None: here."""
        return study.run(self.plan, self.report, self.where(out), data_arg=self.data_label, on_event=on_event,
                         stop=stop, on_row=on_row, spread=spread)


TASKS = {task.kind: task for task in (TrainTask, CompareTask, StudyTask)}


def from_payload(kind: str, payload: dict) -> TrainTask | CompareTask | StudyTask:
    """The task a job.json of `kind` describes."""
    if kind not in TASKS:
        raise ValueError(f"unknown job kind '{kind}': one of {', '.join(TASKS)}")
    return TASKS[kind].from_payload(payload)
