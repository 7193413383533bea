"""A study against the single runs it stands for: `vislab study` (one process, one feature-cache pool) timed
beside each of its rows run as its own `vislab train` process (its `command` column), one after another, and
the rows compared (best validation accuracy, in validation images).

    .venv/bin/python bench/study.py [--data sample] [--per-class 30] [--model mobilenet_v2] [--img-size 128]
                                    [--depths 0,1,2,3] [--seeds 2] [--epochs 2]

Writes bench/study.json and bench/study.md. Each process runs on a fresh lab home so neither side finds
the other's exports on disk."""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VISLAB = str(Path(sys.executable).with_name("vislab"))


def _run(argv: list[str], home: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True,
                          env={**os.environ, "VISLAB_HOME": str(home), "PYTHONUNBUFFERED": "1"})
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="sample")
    ap.add_argument("--per-class", default="30")
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--img-size", default="128")
    ap.add_argument("--depths", default="0,1,2,3")
    ap.add_argument("--seeds", default="2")
    ap.add_argument("--epochs", default="2")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vislab-bench-study-"))
    common = ["--data", args.data, "--model", args.model, "--epochs", args.epochs, "--img-size", args.img_size,
              "--per-class", args.per_class, "--engine", "torch"]
    study_s = _run([VISLAB, "study", *common, "--depths", args.depths, "--seeds", args.seeds,
                    "--strategies", "finetune", "--out", str(work / "study")], work / "home-study")
    rows = list(csv.DictReader((work / "study" / "study.csv").open()))
    singles = []
    for row in rows:
        argv = shlex.split(row["command"])
        argv[0] = VISLAB
        argv[argv.index("--out") + 1] = str(work / "single" / row["name"])
        seconds = _run(argv, work / f"home-{row['name']}")
        metrics = json.loads((work / "single" / row["name"] / "metrics.json").read_text())
        best = max(m["val_acc"] for m in metrics)
        images = int(row["val_images"])
        singles.append({"name": row["name"], "seconds": round(seconds, 1), "study_best": float(row["best_val_acc"]),
                        "single_best": best, "val_images": images,
                        "differ_images": round(abs(best - float(row["best_val_acc"])) * images)})
    serial = sum(s["seconds"] for s in singles)
    result = {"when": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "load_before": os.getloadavg(), "args": vars(args), "study_s": round(study_s, 1),
              "singles_s": round(serial, 1), "ratio": round(study_s / serial, 3), "rows": singles}
    (ROOT / "bench" / "study.json").write_text(json.dumps(result, indent=2))
    lines = [f"Run {result['when']} on {result['machine']}.", "",
             f"Command: `.venv/bin/python bench/study.py {' '.join(sys.argv[1:])}`".rstrip(), "",
             f"`vislab study` ({len(rows)} rows, one process): **{study_s:.1f} s**; the same rows as "
             f"{len(rows)} `vislab train` processes one after another: **{serial:.1f} s** "
             f"(study / singles = {study_s / serial:.2f}).", "",
             "| row | single run (s) | study best val acc | single best val acc | differ (val images) |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {s['name']} | {s['seconds']} | {s['study_best']:.3f} | {s['single_best']:.3f} | "
              f"{s['differ_images']} of {s['val_images']} |" for s in singles]
    (ROOT / "bench" / "study.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(s["differ_images"] <= 2 for s in singles) else 1


if __name__ == "__main__":
    sys.exit(main())
