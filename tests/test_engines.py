"""The frozen prefix through ONNX Runtime computes what PyTorch computes, trains the same, is refused (and
says why) when it cannot, and its exports are reused exactly when nothing that shapes the graph changed."""

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from vislab.training import engines, evaluation, experiment, feature_cache, prefix as frozen
from vislab import cli
from vislab.data import folders as data
from vislab.training.loop import TrainConfig


def _prepared(name, strategy, size=64):
    spec = experiment.Spec(model=name, strategy=strategy, weights="random", img_size=size)
    model, _, _ = experiment.prepare(spec, 3)
    model.eval()
    x = torch.randn(6, 3, size, size)
    return model, frozen.find_prefix(model, x[:2]), x


@pytest.mark.parametrize("name, strategy", [
    ("test_resnet", "partial"),  # a spatial (B, C, H, W) map: the prefix ends inside the network
    ("test_efficientnet", "partial"),  # (the pooled (B, C) output of a head-only prefix: the test below)
])
def test_onnx_prefix_equals_torch_prefix_outputs(name, strategy):
    model, prefix, x = _prepared(name, strategy)
    engine = engines.choose(model, prefix.stubs, x, "onnxruntime")
    assert engine.name == "onnxruntime", engine.describe()
    assert engine.speedup is not None and engine.speedup > 0  # both were timed on the probe
    for batch in (x[:1], x[:5]):  # other batch sizes than the export's 2 and the probe's 6
        ref = frozen.prefix_outputs(model, prefix, batch)
        out = engine.run(batch)
        assert out.shape == ref.shape
        assert engines.relative_difference(out, ref) <= engines.TOLERANCE


def _train(synthetic, engine, cache=True, strategy="head"):
    spec = experiment.Spec(model="test_resnet", strategy=strategy, weights="random", img_size=64, engine=engine,
                           train=TrainConfig(epochs=2, batch_size=8, device="cpu", seed=1, cache=cache))
    return experiment.train(spec, data.scan_folder(synthetic), None)


def test_cached_training_through_each_engine_matches_the_full_loop(synthetic):
    full = _train(synthetic, "torch", cache=False)
    for engine in ("torch", "onnxruntime"):
        cached = _train(synthetic, engine)
        line = cached.history.cache[0]
        assert line.startswith("features cached") and f"run once by {engine}" in line, line
        for a, b in zip(cached.history.epochs, full.history.epochs, strict=True):
            for key in ("train_loss", "val_loss"):
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (engine, key)
            assert a["val_acc"] == b["val_acc"]
        full_state = full.model.state_dict()
        for k, v in cached.model.state_dict().items():
            assert torch.allclose(v.float(), full_state[k].float(), atol=1e-4), (engine, k)


class _Unexportable(nn.Module):
    """An op the ONNX exporter has no symbol for (a stand-in for a custom op)."""

    def forward(self, x):
        return torch.cummax(x, dim=1).values


class _DataDependent(nn.Module):
    """A Python number read from the data: the trace freezes the export batch's value as a constant."""

    def forward(self, x):
        return x * float(x.abs().mean())


def _toy_build(middle: nn.Module, engine: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), middle, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 3))
    for p in model[0].parameters():
        p.requires_grad_(False)
    scale = torch.arange(1, 13, dtype=torch.float32).view(12, 1, 1, 1)  # images of very different contrast
    ds = TensorDataset(torch.randn(12, 3, 16, 16) * scale, torch.arange(12) % 3)
    loader = DataLoader(ds, batch_size=4)
    return feature_cache.build(model, loader, loader, torch.device("cpu"), 0, engine=engine)


@pytest.mark.parametrize("middle, why", [
    (_Unexportable(), "the exporter cannot take this prefix"),
    (_DataDependent(), "outputs differ from torch's"),
])
def test_a_prefix_onnx_cannot_run_falls_back_to_torch_with_the_reason(middle, why, monkeypatch):
    cache, reason = _toy_build(middle, "onnxruntime")
    assert cache is not None, reason
    line = cache.describe()
    assert "run once by torch" in line and "(onnxruntime refused: " in line and why in line, line
    calls = []
    real = engines.export
    monkeypatch.setattr(engines, "export", lambda *a: calls.append(1) or real(*a))
    again, _ = _toy_build(middle, "onnxruntime")  # the next run remembers: no second export
    assert calls == [] and why in again.describe() and again.engine.startswith("torch")


def test_the_toy_prefix_without_its_odd_module_runs_in_onnxruntime():
    cache, reason = _toy_build(nn.Identity(), "onnxruntime")  # the refusal test's control
    assert cache.engine.startswith("onnxruntime"), cache.describe()


def test_exports_are_reused_unless_weights_size_or_cut_change(monkeypatch):
    calls = []
    real = engines.export
    monkeypatch.setattr(engines, "export", lambda *a: calls.append(1) or real(*a))
    model, head_prefix, x = _prepared("test_resnet", "head")

    def run(stubs, probe):
        before = len(calls)
        engine = engines.choose(model, stubs, probe, "onnxruntime", name="test_resnet")
        assert engine.name == "onnxruntime"
        return len(calls) - before, engine

    assert run(head_prefix.stubs, x)[0] == 1
    exported, again = run(head_prefix.stubs, x)
    assert exported == 0 and again.reused and "export reused" in again.describe()
    assert run(head_prefix.stubs, torch.randn(6, 3, 48, 48))[0] == 1  # another image size
    assert run(head_prefix.stubs[:-1], x)[0] == 1  # a shorter prefix: another cut
    with torch.no_grad():
        model.get_submodule("conv1.0").weight.add_(0.01)  # new prefix weights
    assert run(head_prefix.stubs, x)[0] == 1
    assert run(head_prefix.stubs, x)[0] == 0
    assert len(list(engines.exports_dir().glob("*.onnx"))) == 4


def test_auto_keeps_the_faster_engine_and_skips_an_export_that_cannot_pay(monkeypatch):
    model, prefix, x = _prepared("test_resnet", "head")
    tiny = engines.choose(model, prefix.stubs, x, "auto", pass_images=24)
    assert tiny.name == "torch" and "would not pay" in tiny.describe()
    assert not list(engines.exports_dir().glob("*.onnx"))  # nothing exported for it
    slow = engines._ort_runner

    def slowed(session, device):
        run = slow(session, device)
        return lambda images: (torch.ones(20_000_000).sum(), run(images))[1]  # onnxruntime made slow

    monkeypatch.setattr(engines, "_ort_runner", slowed)
    monkeypatch.setattr(engines, "MIN_PASS_SECONDS", 0.0)
    chosen = engines.choose(model, prefix.stubs, x, "auto", pass_images=24)
    assert chosen.name == "torch" and chosen.speedup < 1 and "as fast here" in chosen.describe()
    monkeypatch.setattr(engines, "_ort_runner", slow)
    forced = engines.choose(model, prefix.stubs, x, "onnxruntime")  # forced, it runs whatever the speed
    assert forced.name == "onnxruntime"


def test_engine_choice_is_checked_and_old_run_configs_load():
    old = experiment.Spec().to_dict()
    del old["engine"]  # a run config written before engines
    assert experiment.Spec.from_dict(old).engine == "auto"
    assert experiment.Spec.from_dict(experiment.Spec(engine="torch").to_dict()).engine == "torch"
    with pytest.raises(engines.EngineError, match="use auto, torch, onnxruntime"):
        engines.choose(nn.Identity(), ["x"], torch.zeros(2, 3, 8, 8), "tensorrt")
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(["train", "--data", "sample", "--epochs", "1", "--out", "x",
                                       "--engine", "tensorrt"])
    assert exit_.value.code == 2
    args = cli.build_parser().parse_args(["train", "--data", "sample", "--epochs", "1", "--out", "x",
                                          "--engine", "onnxruntime"])
    assert args.engine == "onnxruntime"


def test_predictions_of_a_model_frozen_up_to_its_head_run_its_prefix_in_the_engine(synthetic, monkeypatch):
    spec = experiment.Spec(model="test_resnet", strategy="head", weights="random", img_size=64)
    model, info, _ = experiment.prepare(spec, 3)
    items = data.scan_folder(synthetic).items[:10]
    used, batches = [], []
    choose = engines.choose

    def spy(*a, **k):  # the engine chosen, its runs counted
        engine = choose(*a, **k)
        run = engine.run
        engine.run = lambda x: batches.append(len(x)) or run(x)
        used.append(engine)
        return engine

    monkeypatch.setattr(engines, "choose", spy)
    onnx = evaluation.predict(model, items, info.data_config, batch_size=4, engine="onnxruntime")
    assert [e.name for e in used] == ["onnxruntime"]
    assert batches == [4, 4, 2]  # every batch went through it (the last one partial)
    plain = evaluation.predict(model, items, info.data_config, batch_size=4, engine="torch")
    assert len(used) == 1  # torch asked for: the plain model, no prefix search
    assert onnx.probs.shape == plain.probs.shape == (10, 3)
    assert abs(onnx.probs - plain.probs).max() < 1e-5 and abs(onnx.losses - plain.losses).max() < 1e-4
    assert all(p.requires_grad == n.startswith(info.head) for n, p in model.named_parameters())  # untouched
    assert type(model.get_submodule("conv1.0")) is torch.nn.Conv2d  # the stubs are back in place


def test_each_engine_gets_the_images_in_its_own_layout(monkeypatch):
    """torch runs a channels_last model on channels_last images; onnxruntime takes the loader's NCHW batch
    as it is (converting to channels_last and back cost ~0.2 s per 300 images)."""
    model, prefix, x = _prepared("test_resnet", "head")
    model.to(memory_format=torch.channels_last)
    seen = {"torch": [], "onnxruntime": []}
    real_prefix, real_runner = frozen.PrefixModule.forward, engines._ort_runner

    def watched_prefix(self, images):
        seen["torch"].append(images.is_contiguous(memory_format=torch.channels_last))
        return real_prefix(self, images)

    def watched_runner(session, device):
        run = real_runner(session, device)
        return lambda images: (seen["onnxruntime"].append(images.is_contiguous()), run(images))[1]

    monkeypatch.setattr(frozen.PrefixModule, "forward", watched_prefix)
    monkeypatch.setattr(engines, "_ort_runner", watched_runner)
    fmt = frozen.memory_format_of(model)
    assert fmt is torch.channels_last
    for choice in ("torch", "onnxruntime"):
        engine = engines.choose(model, prefix.stubs, x, choice, memory_format=fmt)
        assert engine.name == choice
        seen = {"torch": [], "onnxruntime": []}  # what the choice itself ran (the export traces NCHW) aside
        engine.run(x)
        assert seen[choice] == [True], (choice, seen)
    seen = {"torch": [], "onnxruntime": []}
    loader = DataLoader(TensorDataset(x, torch.arange(6) % 3), batch_size=3)
    cache, why = feature_cache.build(model, loader, loader, torch.device("cpu"), 0, engine="onnxruntime")
    assert cache is not None and cache.engine.startswith("onnxruntime"), why
    assert seen["onnxruntime"] and all(seen["onnxruntime"])  # the caching pass hands the batches over as NCHW


def test_a_reused_export_does_not_import_onnx(tmp_path):
    """Only an export needs the onnx package (~0.6 s to import); a run whose export is on disk skips it."""
    import subprocess
    import sys

    script = f"""
import sys, torch
from pathlib import Path
from vislab.training import engines, experiment, prefix as frozen
engines.exports_dir = lambda: Path({str(tmp_path)!r})
model, _, _ = experiment.prepare(experiment.Spec(model="test_resnet", weights="random", img_size=64), 3)
model.eval()
x = torch.randn(6, 3, 64, 64)
stubs = frozen.find_prefix(model, x[:2]).stubs
if sys.argv[1] == "export":
    assert engines.choose(model, stubs, x, "onnxruntime", name="t").name == "onnxruntime"
else:
    engine = engines.choose(model, stubs, x, "onnxruntime", name="t")
    assert engine.name == "onnxruntime" and engine.reused, engine.describe()
    print("onnx imported:", "onnx" in sys.modules)
"""
    torch.manual_seed(0)
    for step in ("export", "reuse"):
        out = subprocess.run([sys.executable, "-c", script, step], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
    assert "onnx imported: False" in out.stdout


def test_a_batch_runs_in_chunks_only_where_that_is_faster():
    import time

    x = torch.randn(16, 3, 4, 4)  # CHUNK untimed, then 4 in chunks and 8 at once
    sizes = []

    def cache_bound(images):  # per image cost grows with the batch: activations spill out of the cache
        sizes.append(len(images))
        time.sleep(0.002 * len(images) ** 2)
        return images * 2

    def per_call(images):  # a fixed cost per call: one big batch is best
        time.sleep(0.02)
        return images * 2

    chunk, per_image, out = engines._fastest(cache_bound, x)
    assert chunk == engines.CHUNK and torch.equal(out, x * 2) and per_image > 0
    assert sizes == [4, 4, 8]  # the probe ran once, in three parts: no image twice
    assert engines._fastest(per_call, x)[0] is None
    assert engines._fastest(cache_bound, x[:2 * engines.CHUNK])[0] is None  # too few to compare
    sizes.clear()
    y = torch.randn(10, 1)
    assert torch.equal(engines._chunked(cache_bound, 4)(y), y * 2) and sizes == [4, 4, 2]


@pytest.mark.parametrize("choice", ["torch", "onnxruntime"])
def test_a_chunked_engine_gives_the_whole_batch_outputs(choice, monkeypatch):
    model, prefix, x = _prepared("test_resnet", "head")
    real = engines._fastest
    monkeypatch.setattr(engines, "_fastest", lambda run, images, warm=True: (2, *real(run, images, warm)[1:]))
    engine = engines.choose(model, prefix.stubs, x, choice)
    assert engine.name == choice and engine.chunk == 2 and "2 images a call" in engine.describe()
    with torch.no_grad():
        want = frozen.prefix_outputs(model, prefix, x)
    assert engines.relative_difference(engine.run(x[:5]), want[:5]) < engines.TOLERANCE  # 2 + 2 + 1


def test_the_engines_are_measured_on_the_first_batch_itself(monkeypatch):
    """Choosing costs (almost) no extra runs: the first batch is the probe; torch times its first half,
    onnxruntime its second, and those outputs are the batch's features, whichever engine wins."""
    model, prefix, _ = _prepared("test_resnet", "head")
    x = torch.randn(48, 3, 64, 64)
    ran = {"torch": 0, "onnxruntime": 0}
    real_prefix, real_runner = frozen.PrefixModule.forward, engines._ort_runner
    slow = []

    def counted_prefix(self, images):
        ran["torch"] += len(images)
        return real_prefix(self, images)

    def counted_runner(session, device):
        run = real_runner(session, device)

        def counted(images):
            ran["onnxruntime"] += len(images)
            if slow:
                torch.ones(20_000_000).sum()  # onnxruntime made slow: auto keeps torch
            return run(images)

        return counted

    monkeypatch.setattr(frozen.PrefixModule, "forward", counted_prefix)
    monkeypatch.setattr(engines, "_ort_runner", counted_runner)
    monkeypatch.setattr(engines, "MIN_PASS_SECONDS", 0.0)
    loader = DataLoader(TensorDataset(x, torch.arange(48) % 3), batch_size=24)
    with torch.no_grad():
        want = frozen.prefix_outputs(model, prefix, x)
    for choice in ("onnxruntime", "auto"):
        ran.update(torch=0, onnxruntime=0)
        cache, why = feature_cache.build(model, loader, loader, torch.device("cpu"), 0, engine=choice)
        assert cache is not None and cache.engine.startswith("onnxruntime" if not slow else "torch"), why
        # torch: 12 probe images, the export's 2-image trace (the first time), caching's own 4 + 1 (find
        # the prefix, check it reproduces the model, one image for the feature shape), and then, when it
        # won, the 3 other batches
        assert ran["torch"] == 12 + (2 if not slow else 0) + 4 + 1 + (72 if slow else 0), ran
        # onnxruntime: the check, its 12 probe images, and when it won the 3 other batches
        assert ran["onnxruntime"] == engines.CHUNK + 12 + (0 if slow else 72), ran
        got = torch.cat([cache.train.dataset.tensors[0], cache.val.dataset.tensors[0]])
        assert engines.relative_difference(got, torch.cat([want, want])) < engines.TOLERANCE  # in order
        assert "choosing the engine on the first batch cost" in cache.describe()
        for record in engines.exports_dir().glob("*.json"):
            record.unlink()  # measure again, now with onnxruntime slowed
        slow.append(1)


def test_a_prefix_exported_at_set_up_is_reused_by_the_first_run(synthetic, monkeypatch):
    """`vislab engines prepare` (set-up) exports the head-only prefix a run will cache, with the key the run
    computes: the run then reuses it, pays no export, and measures the engines on its own first batch."""
    calls = []
    real = engines.export
    monkeypatch.setattr(engines, "export", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(engines, "MIN_PASS_SECONDS", 0.0)
    said = experiment.export_prefix("test_resnet", 64)
    assert said.startswith("exported in") and calls == [1], said
    assert experiment.export_prefix("test_resnet", 64).startswith("already exported") and calls == [1]
    spec = experiment.Spec(model="test_resnet", strategy="head", weights="auto", img_size=64, engine="onnxruntime",
                           train=TrainConfig(epochs=1, batch_size=8, device="cpu", seed=0))
    # (test models have random weights, drawn from the run's seed: set-up's default 0 here, so the same)
    result = experiment.train(spec, data.scan_folder(synthetic), None)
    line = result.history.cache[0]
    assert "run once by onnxruntime" in line and "export reused" in line and calls == [1], line
    assert cli.main(["engines", "prepare", "no_such_model"]) == cli.EXIT_BAD_INPUT
