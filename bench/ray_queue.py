"""The Ray backend against the local queue: the same queued jobs, total time and every job's result.

    .venv/bin/python bench/ray_queue.py              # 4 jobs, a local Ray instance with 2 CPUs (~3 min on 2 cores)
    .venv/bin/python bench/ray_queue.py --jobs 2     # quicker

Each job is small but real: pretrained MobileNetV3-small, the last stage thawed with its head (so every
epoch runs the network, no cached features), 96 px, on the bundled textile photos (`--per-class` a class),
its own seed; workers at nice 0 on both sides (the machine may be busy with other work). The baseline is `localqueue.LocalQueue` as one lab server runs it (one job at a time with every core:
VISLAB_THREADS = cores), the same job folders' specs. The Ray side is a local instance with 2 CPUs; each
job asks for one CPU (`VISLAB_RAY_CPUS`, default 1), so Ray runs two side by side, one thread each.
Timed: the first submit to the last job's end, per backend; Ray's start (`ray.init`) is reported apart
(a class's cluster is started once, before the class). Target (issue 16): Ray total <= 1.2 x local, every job
done on both. Writes bench/ray_queue.json and bench/ray_queue.md (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_jobs(home: Path, n: int, per_class: int, epochs: int) -> list:
    from vislab.data import folders as data
    from vislab.training import experiment
    from vislab.serving import jobs, labs
    from vislab.training.loop import TrainConfig

    os.environ["VISLAB_HOME"] = str(home)
    report = data.subset(data.scan_folder(data.sample_root()), per_class, 0)
    out = []
    for i in range(n):
        spec = experiment.Spec(model="mobilenet_v3_small", strategy="partial", thaw_last=1, weights="auto",
                               img_size=96, train=TrainConfig(epochs=epochs, batch_size=16, seed=i, cache=False))
        lab = labs.create()
        out.append(jobs.create(lab.runs_dir / f"job{i}", "train", {"spec": spec.to_dict(),
                                                                  "report": data.report_to_dict(report)}, lab=lab.id))
    return out


def seed_home(home: Path) -> None:
    """A private lab home whose weights are the seeded ones (links, read only)."""
    from vislab import _paths as paths

    seeded = paths.home() if not os.environ.get("VISLAB_HOME") else Path(os.environ["VISLAB_HOME"])
    (home / "weights").mkdir(parents=True)
    for f in (seeded / "weights").iterdir():
        (home / "weights" / f.name).symlink_to(f.resolve())
    if (seeded / "hub").exists():
        (home / "hub").symlink_to((seeded / "hub").resolve())


def run_all(queue, todo: list, timeout: float) -> dict:
    start = time.perf_counter()
    for j in todo:
        queue.submit(j)
    ends = {}
    deadline = time.time() + timeout
    while len(ends) < len(todo) and time.time() < deadline:
        for j in todo:
            if j.id not in ends and j.state in ("done", "stopped", "error", "cancelled", "interrupted"):
                ends[j.id] = time.perf_counter() - start
        time.sleep(0.1)
    total = time.perf_counter() - start
    rows = []
    for j in todo:
        metrics = j.metrics()
        rows.append({"job": j.id, "state": j.state, "finished_s": round(ends.get(j.id, total), 2),
                     "val_acc": metrics[-1]["val_acc"] if metrics else None,
                     "epoch_s": round(sum(m["seconds"] for m in metrics) / max(len(metrics), 1), 2)})
    return {"total_s": round(total, 2), "jobs": rows}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--per-class", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--ray-cpus", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "ray_queue"))
    args = ap.parse_args()

    from vislab.serving.localqueue import LocalQueue

    os.environ["VISLAB_WORKER_NICE"] = "0"  # both sides at the priority of the rest of the machine
    seeded = Path(tempfile.mkdtemp(prefix="vislab-bench-ray-"))
    cores = os.cpu_count() or 1
    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {cores} cores",
              "jobs": args.jobs, "per_class": args.per_class, "epochs": args.epochs, "ray_cpus": args.ray_cpus}

    local_home, ray_home = seeded / "local", seeded / "ray"
    seed_home(local_home)
    seed_home(ray_home)

    todo = make_jobs(local_home, args.jobs, args.per_class, args.epochs)
    q = LocalQueue(pools={"cpu": 1}, poll_s=0.05)
    try:
        result["local"] = run_all(q, todo, 1800)
    finally:
        q.close()
    print("local", json.dumps(result["local"]), flush=True)

    import ray

    from vislab.serving import rayqueue

    t = time.perf_counter()
    ray.init(address="local", num_cpus=args.ray_cpus, include_dashboard=False, namespace=rayqueue.NAMESPACE,
             log_to_driver=False)
    result["ray_init_s"] = round(time.perf_counter() - t, 2)
    try:
        todo = make_jobs(ray_home, args.jobs, args.per_class, args.epochs)
        rq = rayqueue.RayQueue()
        try:
            result["ray"] = run_all(rq, todo, 1800)
        finally:
            rq.close()
    finally:
        ray.shutdown()
    print("ray", json.dumps(result["ray"]), flush=True)

    ratio = result["ray"]["total_s"] / result["local"]["total_s"]
    all_done = all(r["state"] == "done" for side in ("local", "ray") for r in result[side]["jobs"])
    same = [a["val_acc"] == b["val_acc"] for a, b in zip(result["local"]["jobs"], result["ray"]["jobs"])]
    result.update(ratio=round(ratio, 3), target="ray total <= 1.2 x local, every job done",
                  met=bool(ratio <= 1.2 and all_done), same_val_acc=same)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"Run {result['date']} on {result['machine']}: {args.jobs} queued jobs (mobilenet_v3_small, last "
             f"stage + head, 96 px, {args.per_class} images a class, {args.epochs} epochs, no cached features).",
             "", "| backend | slots | total | per job finished at | val acc | all done |", "|---|---|---:|---|---|---|"]
    for side, slots in (("local", "LocalQueue: 1 job at a time, all cores"),
                        ("ray", f"Ray, {args.ray_cpus} CPUs, 1 CPU a job")):
        r = result[side]
        ends = ", ".join(f"{j['finished_s']:.0f}" for j in r["jobs"])
        accs = ", ".join("-" if j["val_acc"] is None else f"{j['val_acc']:.3f}" for j in r["jobs"])
        done = all(j["state"] == "done" for j in r["jobs"])
        lines.append(f"| {side} | {slots} | {r['total_s']:.1f} s | {ends} s | {accs} | {done} |")
    lines += ["", f"Ray / local: {ratio:.2f}x (target <= 1.2x): {'met' if result['met'] else 'missed'}; "
              f"ray.init {result['ray_init_s']:.1f} s, not counted. Same val acc per job: {same}.",
              "", "Command: `.venv/bin/python bench/ray_queue.py" + (f" --jobs {args.jobs}" if args.jobs != 4 else "")
              + "`"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
