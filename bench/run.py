"""vislab's benchmark suite: ratios measured side by side in one run (absolute seconds on shared machines are noise).

    .venv/bin/python bench/run.py                 # the full suite (about 5 minutes on 2 CPU cores)
    .venv/bin/python bench/run.py --tiny          # a smoke run on synthetic data (the test suite runs this)

(a) head only, 10 epochs, MobileNetV2 (real weights), ~300 textile images: the naive loop (the course's way:
    a full forward of every image every epoch; otherwise the same loop, recipe and seed) vs vislab (frozen
    prefix cached), and one inference pass over the same images.
(b) the last stage thawed, BN eval, 5 epochs: naive vs vislab.
(c) Grad-CAM at the catalog layer on a batch of 16 vs one plain forward pass; all gradient methods together;
    and the grad-cam package called the usual way.
(d) the app: seconds from `streamlit run` to the first page drawn in headless Chromium, and a page switch.
(e) head only, 10 epochs, MobileNetV2 (real weights), the same images: vislab with the frozen prefix in each
    engine (torch; onnxruntime with a fresh export; auto with the export reused; auto on the first run after
    set-up, which exported the prefix but measured nothing) against one PyTorch
    channels_last inference pass over the same images at the run's batch (32; decoding included in both,
    the faster of two passes), the same pass at batch 4 (faster per image on a small CPU: the activations
    stay in cache), the decode cost per image, and accuracy against the full loop of (a).
(f) each catalog convnet with real weights on this machine, head only, 3 epochs: auto engine vs torch.
Writes bench/results.json and bench/results.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.browser (part d)

from vislab.data import folders as data, datasets, synthetic  # noqa: E402
from vislab import _paths as paths  # noqa: E402
from vislab.training import engines, experiment, loop as training  # noqa: E402
from vislab.models import factory as models
from vislab.training.loop import TrainConfig  # noqa: E402
from vislab.data.transforms import eval_transform  # noqa: E402


@torch.no_grad()
def inference_pass(model: nn.Module, loaders, fmt=torch.contiguous_format) -> float:
    model.to(memory_format=fmt)
    start = time.perf_counter()
    model.eval()
    for loader in loaders:
        for x, _ in loader:
            model(x.contiguous(memory_format=fmt))
    return time.perf_counter() - start


def training_case(name: str, report, model_name: str, strategy: str, epochs: int, thaw_last: int, img_size,
                  batch: int, with_inference: bool) -> dict:
    """vislab (frozen prefix cached) against the naive loop: the same loop, recipe, split and seed, but the
    whole network runs on every image every epoch, as in the course's code. Model building is not timed."""
    def spec(cache: bool) -> experiment.Spec:
        return experiment.Spec(model=model_name, strategy=strategy, thaw_last=thaw_last, bn="eval",
                               weights="auto", img_size=img_size,
                               train=TrainConfig(epochs=epochs, lr=1e-3, batch_size=batch, device="cpu", seed=0,
                                                 cache=cache))

    timings, results = {}, {}
    for mode in ("vislab", "naive"):
        prepared = experiment.prepare(spec(mode == "vislab"), len(report.classes))
        warm_up(prepared[0], prepared[1].data_config.input_size, batch)
        start = time.perf_counter()
        results[mode] = experiment.train(spec(mode == "vislab"), report, None, prepared=prepared)
        timings[mode] = time.perf_counter() - start
    row = {"case": name, "model": model_name, "images": len(report.items), "epochs": epochs,
           "vislab_s": timings["vislab"], "naive_s": timings["naive"],
           "speedup": timings["naive"] / timings["vislab"],
           "vislab_val_acc": results["vislab"].history.epochs[-1]["val_acc"],
           "naive_val_acc": results["naive"].history.epochs[-1]["val_acc"],
           "cache": results["vislab"].history.cache}
    if with_inference:
        model, info, _ = experiment.prepare(spec(False), len(report.classes))
        train_items, val_items = data.split(report.items, 0.2, 0)
        tf = eval_transform(info.data_config)
        loaders = training.make_loaders(datasets.ImageDataset(train_items, tf), datasets.ImageDataset(val_items, tf),
                                        spec(False).train, torch.device("cpu"))
        warm_up(model, info.data_config.input_size, batch)
        row["inference_s"] = inference_pass(model, loaders)  # the plain forward, as most code runs it
        row["vislab_over_inference"] = timings["vislab"] / row["inference_s"]
        # and in channels_last, the format vislab runs convolutions in: the ratio then is pure overhead
        row["inference_channels_last_s"] = inference_pass(model, loaders, torch.channels_last)
        row["vislab_over_inference_channels_last"] = timings["vislab"] / row["inference_channels_last_s"]
    return row


@torch.no_grad()
def warm_up(model: nn.Module, input_size, batch: int) -> None:
    """One untimed forward at the benchmark's shape: the first call pays one-off kernel setup."""
    was = model.training
    model.eval()
    model(torch.randn(batch, *input_size))
    model.train(was)


def cam_case(model_name: str, img: int, batch: int) -> dict:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from vislab.views import cam

    model, _ = models.create_model(model_name, None, weights_choice="auto")
    model.eval()
    x = torch.randn(batch, 3, img, img)
    layer = cam.default_layer(model, model_name)
    classes = [1] * batch

    def best(f, n=3):
        f()  # warm-up
        times = []
        for _ in range(n):
            s = time.perf_counter()
            f()
            times.append(time.perf_counter() - s)
        return min(times)

    with torch.no_grad():
        fwd = best(lambda: model(x))
    one = best(lambda: cam.run(model, x, ["GradCAM"], layer, classes))
    grads = ["GradCAM", "GradCAM++", "XGradCAM", "HiResCAM", "LayerCAM"]
    every = best(lambda: cam.run(model, x, grads, layer, classes))

    def usual():
        with GradCAM(model=model, target_layers=[model.get_submodule(layer)]) as c:
            c(x, targets=[ClassifierOutputTarget(1)] * batch)
    plain = best(usual)
    return {"case": "c: Grad-CAM", "model": model_name, "batch": batch, "forward_s": fwd, "gradcam_s": one,
            "gradcam_over_forward": one / fwd, "all_gradient_methods_s": every,
            "all_over_forward": every / fwd, "usual_gradcam_s": plain, "usual_over_forward": plain / fwd}


def _fresh_exports() -> Path:
    """An empty folder (under the lab's work folder, removed at exit) for engines' exported prefixes; main
    gives the lab its own folder back when the suite ends."""
    import atexit
    import shutil

    paths.work_dir().mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-engines-", dir=paths.work_dir()))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    engines.exports_dir = lambda: folder
    return folder


def _head_only(report, model_name: str, epochs: int, engine: str, img_size=None, batch: int = 32):
    spec = experiment.Spec(model=model_name, strategy="head", weights="auto", engine=engine, img_size=img_size,
                           train=TrainConfig(epochs=epochs, lr=1e-3, batch_size=batch, device="cpu", seed=0))
    prepared = experiment.prepare(spec, len(report.classes))
    warm_up(prepared[0], prepared[1].data_config.input_size, batch)
    start = time.perf_counter()
    result = experiment.train(spec, report, None, prepared=prepared)
    return time.perf_counter() - start, result


def engine_case(report, model_name: str, epochs: int, full_loop: dict | None, img_size=None, batch: int = 32
                ) -> dict:
    """(e): vislab's head-only run with the prefix in each engine vs one torch channels_last inference pass."""
    _fresh_exports()  # the onnxruntime run pays its export
    model, info, _ = experiment.prepare(experiment.Spec(model=model_name, weights="auto", img_size=img_size),
                                        len(report.classes))
    train_items, val_items = data.split(report.items, 0.2, 0)
    tf = eval_transform(info.data_config)
    loaders = training.make_loaders(datasets.ImageDataset(train_items, tf), datasets.ImageDataset(val_items, tf),
                                    TrainConfig(batch_size=batch), torch.device("cpu"))
    start = time.perf_counter()
    for loader in loaders:
        for _ in loader:  # decoding and resizing alone, one process
            pass
    decode_s = time.perf_counter() - start
    warm_up(model.to(memory_format=torch.channels_last), info.data_config.input_size, batch)
    inference_s = min(inference_pass(model, loaders, torch.channels_last) for _ in range(2))  # the faster of two
    small = training.make_loaders(datasets.ImageDataset(train_items, tf), datasets.ImageDataset(val_items, tf),
                                  TrainConfig(batch_size=4), torch.device("cpu"))
    small_s = min(inference_pass(model, small, torch.channels_last) for _ in range(2))
    row = {"case": "e: head only, prefix engines", "model": model_name, "images": len(report.items),
           "epochs": epochs, "batch": batch, "decode_s": decode_s,
           "decode_ms_per_image": 1000 * decode_s / len(report.items),
           "inference_channels_last_s": inference_s, "inference_channels_last_batch4_s": small_s, "runs": []}
    for label, engine in (("torch", "torch"), ("onnxruntime, fresh export", "onnxruntime"),
                          ("auto, export reused", "auto"), ("auto, first run after set-up", "auto")):
        if label.startswith("auto, first run"):  # set-up exported the prefix (vislab engines prepare), no
            folder = _fresh_exports()  # run measured it yet: the run measures the engines on its first batch
            experiment.export_prefix(model_name, img_size)
            assert list(folder.glob("*.onnx")) and not list(folder.glob("*.json")), "set-up export missing"
        seconds, result = _head_only(report, model_name, epochs, engine, img_size, batch)
        row["runs"].append({"engine": label, "vislab_s": seconds, "over_inference": seconds / inference_s,
                            "over_inference_batch4": seconds / small_s,
                            "val_acc": result.history.epochs[-1]["val_acc"], "cache": result.history.cache[0]})
    if full_loop:
        row["full_loop_val_acc"], row["full_loop_s"] = full_loop["naive_val_acc"], full_loop["naive_s"]
    return row


def convnet_engines_case(report, epochs: int, names: list[str] | None = None, img_size=None) -> dict:
    """(f): each catalog convnet with real weights here, head only: auto (fresh export) vs torch."""
    from vislab.models import weights

    if names is None:
        names = weights.convnets_with_weights()
    _fresh_exports()
    rows = []
    for name in names:
        torch_s, torch_run = _head_only(report, name, epochs, "torch", img_size)
        auto_s, auto_run = _head_only(report, name, epochs, "auto", img_size)
        again_s, _ = _head_only(report, name, epochs, "auto", img_size)
        import re

        chosen = re.search(r"choosing the engine on the first batch cost ([\d.]+) s", auto_run.history.cache[0])
        rows.append({"model": name, "torch_s": torch_s, "auto_s": auto_s, "auto_again_s": again_s,
                     "auto_choose_s": float(chosen.group(1)) if chosen else None,
                     "speedup": torch_s / auto_s, "speedup_again": torch_s / again_s,
                     "torch_val_acc": torch_run.history.epochs[-1]["val_acc"],
                     "auto_val_acc": auto_run.history.epochs[-1]["val_acc"], "cache": auto_run.history.cache[0]})
        print(json.dumps(rows[-1]), flush=True)
    return {"case": "f: catalog convnets, auto vs torch engine", "images": len(report.items), "epochs": epochs,
            "models": rows}


def app_case() -> dict:
    from tests import browser

    if browser.why_unavailable():
        return {"case": "d: app", "skipped": browser.why_unavailable()}
    start = time.perf_counter()
    with browser.streamlit_server() as (url, healthy_s), browser.browser_page() as page:
        page.goto(url)
        page.get_by_text("Strategy advisor").wait_for(timeout=60_000)
        first = time.perf_counter() - start
        page.get_by_text("Real pretrained weights on this machine").wait_for(timeout=60_000)
        complete = time.perf_counter() - start  # the catalog with its weight status drawn too
        nav = page.locator('[data-testid="stSidebarNav"]')
        nav.get_by_text("Model", exact=True).click()  # loads and caches the pretrained model
        page.get_by_text("Parameters by stage").wait_for(timeout=60_000)
        browser.wait_idle(page)
        nav.get_by_text("Home", exact=True).click()
        page.get_by_text("Strategy advisor").wait_for(timeout=60_000)
        s = time.perf_counter()
        nav.get_by_text("Model", exact=True).click()  # again, the model now cached
        page.get_by_role("heading", name="Model").wait_for(timeout=60_000)
        page.get_by_text("Parameters by stage").wait_for(timeout=60_000)
        switch = time.perf_counter() - s
    return {"case": "d: app", "start_to_first_page_s": first, "start_to_complete_page_s": complete,
            "server_healthy_s": healthy_s, "page_switch_cached_s": switch}


def markdown(results: list[dict], meta: dict) -> str:
    lines = [f"Run {meta['date']} on {meta['machine']}, torch {meta['torch']}.", "",
             "| case | vislab | naive / reference | ratio | target | val acc vislab / naive |",
             "|---|---:|---:|---:|---|---|"]
    for r in results:
        if r["case"].startswith("a") or r["case"].startswith("b"):
            target = "≥ 8× faster, ≤ 1.25 × inference" if r["case"].startswith("a") else "≥ 2× faster"
            extra = (f"; {r['vislab_over_inference']:.2f} × one inference pass ({r['inference_s']:.1f} s), "
                     f"{r['vislab_over_inference_channels_last']:.2f} × one in channels_last "
                     f"({r['inference_channels_last_s']:.1f} s)" if "inference_s" in r else "")
            lines.append(f"| {r['case']} ({r['images']} images, {r['epochs']} epochs) | {r['vislab_s']:.1f} s | "
                         f"{r['naive_s']:.1f} s | {r['speedup']:.1f}× faster{extra} | {target} | "
                         f"{r['vislab_val_acc']:.3f} / {r['naive_val_acc']:.3f} |")
        elif r["case"].startswith("c"):
            lines.append(f"| c: Grad-CAM, batch {r['batch']} | {r['gradcam_s']:.2f} s | forward {r['forward_s']:.2f} s"
                         f" | {r['gradcam_over_forward']:.2f}× forward | ≤ 1.2× | |")
            lines.append(f"| c: 5 gradient methods together | {r['all_gradient_methods_s']:.2f} s | | "
                         f"{r['all_over_forward']:.2f}× forward | ≤ 2× | |")
            lines.append(f"| c: grad-cam called the usual way | {r['usual_gradcam_s']:.2f} s | | "
                         f"{r['usual_over_forward']:.2f}× forward | (reference) | |")
        elif r["case"].startswith("e"):
            for run in r["runs"]:
                acc = (f"{run['val_acc']:.3f} / {r['full_loop_val_acc']:.3f}" if "full_loop_val_acc" in r
                       else f"{run['val_acc']:.3f}")
                target = "≤ 1 × inference" if run["engine"] == "torch" else "≤ 0.5 × inference"
                lines.append(f"| e: head only, prefix in {run['engine']} ({r['images']} images, {r['epochs']} "
                             f"epochs) | {run['vislab_s']:.2f} s | one channels_last inference pass at batch "
                             f"{r.get('batch', 32)} {r['inference_channels_last_s']:.2f} s | "
                             f"{run['over_inference']:.2f} × inference ({run['over_inference_batch4']:.2f} × "
                             f"the pass at batch 4) | {target} | {acc} |")
            lines.append(f"| e: reference, the same pass at batch 4 (faster per image on this CPU) | "
                         f"{r['inference_channels_last_batch4_s']:.2f} s | | | | |")
            lines.append(f"| e: decoding alone (JPEG decode + resize, one process) | {r['decode_s']:.1f} s | | "
                         f"{r['decode_ms_per_image']:.1f} ms per image | | |")
        elif r["case"].startswith("f"):
            for m in r["models"]:
                chose = f", of which choosing the engine {m['auto_choose_s']:.1f} s" if m.get("auto_choose_s") \
                    is not None else ""
                lines.append(f"| f: {m['model']}, head only, auto engine ({r['images']} images, {r['epochs']} "
                             f"epochs) | {m['auto_s']:.2f} s{chose} (export reused: {m['auto_again_s']:.2f} s) | "
                             f"torch {m['torch_s']:.2f} s | {m['speedup']:.2f}× ({m['speedup_again']:.2f}× reused) "
                             f"| ≥ 1× reused; first run loses ≤ its choosing | "
                             f"{m['auto_val_acc']:.3f} / {m['torch_val_acc']:.3f} |")
        elif "skipped" in r:
            lines.append(f"| d: app | skipped: {r['skipped']} | | | | |")
        else:
            lines.append(f"| d: app, `streamlit run` → first page in Chromium | {r['start_to_first_page_s']:.1f} s"
                         " | | | < 5 s | |")
            lines.append(f"| d: … and its catalog with weight status | {r['start_to_complete_page_s']:.1f} s"
                         " | | | | |")
            lines.append(f"| d: page switch, model cached | {r['page_switch_cached_s']:.2f} s | | | < 1 s | |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="synthetic data and a tiny model: checks the code runs")
    p.add_argument("--out", default=str(ROOT / "bench"), help="folder for results.json and results.md")
    p.add_argument("--skip-app", action="store_true")
    args = p.parse_args(argv)
    lab_exports = engines.exports_dir
    try:
        results = _suite(args)
    finally:  # the lab's own exports folder again, for whatever runs next in this process (the tests)
        engines.exports_dir = lab_exports
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {torch.get_num_threads()} "
            f"threads", "torch": torch.__version__, "threads": torch.get_num_threads(), "tiny": args.tiny}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2, default=str))
    (out / "results.md").write_text(markdown(results, meta))
    print(markdown(results, meta))
    return 0


def _suite(args) -> list[dict]:
    """Every case, in order, each printed as it ends; the engines' exports go to folders of the suite's own."""
    torch.manual_seed(0)
    _fresh_exports()  # the suite's exports stay out of the lab's own cache
    if args.tiny:
        folder = synthetic.make_synthetic(Path(tempfile.mkdtemp()) / "syn", classes=3, per_class=6, size=64)
        report, model_name, img = data.scan_folder(folder), "test_resnet", 64
        cases = [("a: head only", "head", 2, 1), ("b: last stage thawed", "partial", 2, 1)]
    else:
        report = data.subset(data.scan_folder(data.sample_root()), 100, 0)
        model_name, img = "mobilenet_v2", None
        cases = [("a: head only", "head", 10, 1), ("b: last stage thawed", "partial", 5, 1)]
    results = []
    for name, strategy, epochs, thaw in cases:
        results.append(training_case(name, report, model_name, strategy, epochs, thaw, img, 32,
                                     with_inference=name.startswith("a")))
        print(json.dumps(results[-1], default=str), flush=True)
    results.append(engine_case(report, model_name, 2 if args.tiny else 10, results[0], img))
    print(json.dumps(results[-1]), flush=True)
    results.append(convnet_engines_case(report, 1 if args.tiny else 3, [model_name] if args.tiny else None, img))
    print(json.dumps(results[-1]), flush=True)
    results.append(cam_case(model_name, img or 224, 4 if args.tiny else 16))
    print(json.dumps(results[-1]), flush=True)
    if not args.skip_app:
        results.append(app_case())
        print(json.dumps(results[-1]), flush=True)
    return results


if __name__ == "__main__":
    raise SystemExit(main())
