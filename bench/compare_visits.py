"""Seconds of a visit to the Compare page showing a saved comparison of three runs (issue 22), through AppTest.

    .venv/bin/python bench/compare_visits.py [--model mobilenet_v2] [--size 224] [--per-class 20]
                                                   [--profile]

Trains head / partial / full (1 epoch) on the bundled sample as a compare job of a fresh lab (in this
process), then times the Compare page showing it: the first visit (cold: models loaded, Grad-CAM and feature
maps computed), revisits of the same session after another page (warm), revisits after the server's model
caches were emptied (other users' runs pushed them out), after the shared view cache was emptied (other
pages' views), and a new session opening the lab's link (a reload, a second tab); the Home page for scale.
--profile samples where warm revisits spend their time. Not collected by pytest (no test_ prefix).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--revisits", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="print where one warm revisit spends its time")
    args = ap.parse_args()
    seeded = Path(os.environ.get("VISLAB_HOME", ROOT / ".vislab"))
    home = Path(tempfile.mkdtemp(prefix="vislab_timing_"))
    (home / "weights").mkdir()
    if (seeded / "hub").exists():
        (home / "hub").symlink_to(seeded / "hub")
    for f in (seeded / "weights").glob("*.safetensors"):
        (home / "weights" / f.name).symlink_to(f)
    os.environ["VISLAB_HOME"] = str(home)

    import json

    import torch
    from streamlit.testing.v1 import AppTest

    torch.set_num_threads(2)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600).run()
    if args.model != at.session_state["model_name"]:
        at.switch_page("pages/model.py").run()
        at.selectbox[0].set_value("other timm / torchvision name…").run()
        at.text_input[0].set_value(args.model).run()
    at.switch_page("pages/data.py").run()
    at.select_slider(key="sample_per_class").set_value(args.per_class).run()
    next(b for b in at.button if b.label == "Use the sample").click().run()
    at.switch_page("pages/freeze.py").run()  # the session's working model (the page's image config)
    at.switch_page("pages/compare.py").run()
    at.select_slider(key="compare_size").set_value(args.size).run()
    from dataclasses import asdict

    from vislab.training import compare
    from vislab.data import folders as data
    from vislab.serving import jobs, labs, worker

    ss_configs = [{"name": s, "strategy": s, "thaw_last": 2 if s == "partial" else 1, "bn": "default",
                   "head": "linear", "lr": 1e-3} for s in ("head", "partial", "full")]
    ds = at.session_state["dataset"]
    lab = labs.Lab(at.session_state["lab_id"])
    t = time.perf_counter()
    job = jobs.create(lab.runs_dir / f"compare-{args.model}", "compare", {
        "model": args.model, "report": data.report_to_dict(ds.used),
        "configs": [asdict(compare.Config(**c | {"bn": None})) for c in ss_configs], "epochs": 1,
        "img_size": args.size, "batch_size": 16, "seed": ds.seed}, lab=lab.id)
    worker.be_nice = lambda: None  # trained here, in this process, at normal priority
    worker.run_worker(job.folder)
    print(f"comparison trained in {time.perf_counter() - t:.1f} s: {job.state}", flush=True)
    assert job.state == "done", job.status()
    at.session_state["compare_shown"] = job.folder.name

    def visit(page_first: str | None = "pages/home.py") -> float:
        if page_first:
            at.switch_page(page_first).run()
        t0 = time.perf_counter()
        at.switch_page("pages/compare.py").run()
        dt = time.perf_counter() - t0
        assert not at.exception, at.exception
        return dt

    cold = visit()
    titles = [json.loads(e.proto.spec).get("layout", {}).get("title", {}).get("text", "")
              for e in at.get("plotly_chart")]
    print("charts on the page:", titles, [e.value for e in at.error], [e.value for e in at.info], flush=True)
    warm = [visit() for _ in range(args.revisits)]
    if args.profile:
        at.switch_page("pages/home.py").run()
        import collections
        import threading

        samples: collections.Counter = collections.Counter()  # the script runs in its own thread: sample it
        done = threading.Event()

        def sample():
            me = threading.get_ident()
            while not done.is_set():
                for tid, frame in sys._current_frames().items():
                    if tid == me:
                        continue
                    ours = []
                    f = frame
                    while f is not None:
                        if "/pages/" in f.f_code.co_filename or "/src/vislab/" in f.f_code.co_filename:
                            ours.append(f"{Path(f.f_code.co_filename).name}:{f.f_lineno}")
                        f = f.f_back
                    if ours:
                        samples[" < ".join(ours[:3])] += 1
                time.sleep(0.002)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        for _ in range(5):
            at.switch_page("pages/home.py").run()
            at.switch_page("pages/compare.py").run()
        done.set()
        th.join()
        total = sum(samples.values())
        for where, n in samples.most_common(25):
            print(f"{n / total:6.1%}  {where}")
    from pages import _cached, _jobs

    evicted = []
    for _ in range(3):  # other users' runs and comparisons pushed the loaded models out of the server's small
        _jobs._load_comparison.clear()  # resource caches (4 comparisons, 8 runs for every user)
        _jobs._load_run.clear()
        evicted.append(visit())
    flooded = []
    for _ in range(2):  # other pages' cached views (one shared 32-entry cache) pushed the comparison's out
        if hasattr(_cached, "_view_result"):
            _cached._view_result.clear()
        flooded.append(visit())
    home = []
    for _ in range(3):  # for scale: a visit to the Home page (app.py, sidebar, a light page)
        at.switch_page("pages/data.py").run()
        t0 = time.perf_counter()
        at.switch_page("pages/home.py").run()
        home.append(time.perf_counter() - t0)
    lab_id = at.session_state["lab_id"]
    fresh = []
    for _ in range(2):  # a new session of the same lab link (reload, second tab): the server's caches still hold
        other = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
        other.query_params["lab"] = lab_id
        other.run()
        t0 = time.perf_counter()
        other.switch_page("pages/compare.py").run()
        fresh.append(time.perf_counter() - t0)
        assert not other.exception, other.exception
    print(f"cold first visit {cold:.2f} s; warm revisits {', '.join(f'{w:.2f}' for w in warm)} s "
          f"(median {statistics.median(warm):.2f}); after the loaded models left the server's caches "
          f"{', '.join(f'{w:.2f}' for w in evicted)} s; after other views filled the shared view cache "
          f"{', '.join(f'{w:.2f}' for w in flooded)} s; new session of the lab "
          f"{', '.join(f'{f:.2f}' for f in fresh)} s "
          f"(charts: {len(other.get('plotly_chart'))}); Home page for scale {', '.join(f'{h:.2f}' for h in home)} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
