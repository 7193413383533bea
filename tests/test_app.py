"""Every page through Streamlit's AppTest: no exception, and the widgets drive the library."""

import io
import json
import time
import zipfile
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parents[1] / "app.py"
PAGES = ["pages/home.py", "pages/model.py", "pages/data.py", "pages/freeze.py", "pages/train.py"]


def _app() -> AppTest:
    return AppTest.from_file(str(APP), default_timeout=120).run()


def _zip_of(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(folder.rglob("*.png")):
            zf.write(p, f"shapes/{p.relative_to(folder)}")
    return buf.getvalue()


def _upload_zip(at, blob: bytes, name: str = "shapes.zip") -> None:
    at.switch_page("pages/data.py").run()
    at.radio(key="data_source").set_value("A .zip of class folders").run()
    at.get("file_uploader")[0].set_value((name, blob, "application/zip")).run()
    at.button(key="zip_read").click().run()


def _page_button(at):
    """The page's first button (the sidebar's "New lab" comes before every page's own)."""
    return next(b for b in at.button if b.key != "new_lab")


def _pick_model(at, name: str) -> None:
    at.switch_page("pages/model.py").run()
    at.selectbox[0].set_value("other timm / torchvision name…").run()
    at.text_input[0].set_value(name).run()


def _metric(at, label):
    return next(m.value for m in at.metric if m.label == label)


def _chart_titles(at) -> list[str]:
    titles = []
    for el in at.get("plotly_chart"):
        spec = json.loads(el.proto.spec)
        titles.append(spec.get("layout", {}).get("title", {}).get("text", ""))
    return titles


def _job(at, key: str = "last_run"):
    """The lab's job the session last started (vislab.serving.jobs.Job, read from its folder)."""
    from vislab.serving import jobs, labs

    return jobs.Job(labs.Lab(at.session_state["lab_id"]).runs_dir / at.session_state[key])


def _wait(job, timeout: float = 120):
    deadline = time.time() + timeout
    while job.active and time.time() < deadline:
        time.sleep(0.3)
    assert not job.active, f"job still {job.state} after {timeout} s"
    return job


def _train_on_page(at, size: int, epochs: int = 1):
    """Start training on the Train page and wait for the background job; returns it."""
    at.switch_page("pages/train.py").run()
    at.number_input[0].set_value(epochs).run()
    at.select_slider[1].set_value(size).run()  # image size
    next(b for b in at.button if b.label == "Start training").click().run()
    job = _wait(_job(at))
    at.run()
    return job


def test_every_page_renders_without_exception():
    at = _app()
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception, f"{page}: {at.exception}"


def _skip_without_seeded(name: str = "mobilenet_v2") -> None:
    """Tests that read real predictions need the weights scripts/setup.sh seeds; without them, say so."""
    from vislab.models import catalog, weights

    found = weights.status(name, catalog.source_of(name))
    if not found.available:
        pytest.skip(f"no seeded {name} weights here ({found.describe()}): run bash scripts/setup.sh")


def test_home_shows_catalog_and_weights_status():
    _skip_without_seeded()
    at = _app()
    frame = at.dataframe[0].value
    assert "mobilenet_v2" in set(frame["model"])
    assert set(frame["weights"]) - {"none: random init"}  # the seeded weights are found


def test_home_preset_changes_freeze_page():
    at = _app()
    at.switch_page("pages/freeze.py").run()
    head_only = _metric(at, "Trainable parameters")
    at.switch_page("pages/home.py").run()
    at.radio(key="adv_size").set_value("large").run()
    _page_button(at).click().run()  # "Apply the two-phase preset"
    assert at.session_state["strategy"] == "two-phase"
    at.switch_page("pages/freeze.py").run()
    assert not at.exception
    assert _metric(at, "Trainable parameters") != head_only
    assert _metric(at, "Frozen parameters") == "0"


def test_toggling_a_stage_changes_trainable_count():
    from vislab.models import factory as models, stages

    at = _app()
    at.switch_page("pages/freeze.py").run()
    model = models.build_architecture(at.session_state["model_name"])  # the default model, whichever it is
    stage = [s for s in stages.stages(model) if s.name != stages.HEAD][-1]  # the last stage before the head
    parts = [m for root in stage.modules for m in model.get_submodule(root).modules()]
    bn = [m for m in parts if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    bn_params = sum(p.numel() for m in bn for p in m.parameters())
    weights_only = sum(p.numel() for root in stage.modules for p in model.get_submodule(root).parameters()) - bn_params
    assert bn and weights_only  # the check below needs a stage with BatchNorm and other weights
    before = _metric(at, "Trainable parameters")
    next(t for t in at.toggle if t.key.startswith(f"train_{stage.name}_")).set_value(True).run()
    count = lambda: int(_metric(at, "Trainable parameters").replace(",", ""))  # noqa: E731
    after = count()
    assert after - int(before.replace(",", "")) == weights_only  # its BN is still `frozen`
    assert at.session_state["strategy"] == "custom"
    next(c for c in at.segmented_control if c.key.startswith(f"bn_{stage.name}_")).set_value("train").run()
    assert count() - after == bn_params  # BN gamma and beta now train too
    assert _metric(at, "BN layers updating stats") == str(len(bn))


def test_zip_upload_shows_class_counts(synthetic):
    at = _app()
    _upload_zip(at, _zip_of(synthetic))
    assert not at.exception
    assert not at.error, [e.value for e in at.error]
    assert any("24 images, 3 classes" in m.value for m in at.markdown)
    assert "Images per class" in _chart_titles(at)


def test_bad_zip_gives_a_message_not_a_traceback():
    at = _app()
    _upload_zip(at, b"not a zip at all", "oops.zip")
    assert not at.exception
    assert "not a zip archive" in at.error[0].value


def test_one_epoch_on_a_tiny_model_gives_curves_and_confusion(synthetic):
    at = _app()
    _pick_model(at, "test_resnet")
    assert at.session_state["model_name"] == "test_resnet"
    assert any("No pretrained weights" in w.value for w in at.warning)
    _upload_zip(at, _zip_of(synthetic))
    job = _train_on_page(at, 64)
    assert not at.exception
    assert job.state == "done", job.status()
    titles = _chart_titles(at)
    assert "Training curves" in titles and "Confusion matrix (validation)" in titles
    assert (job.folder / "model.safetensors").is_file() and (job.folder / "predictions.json").is_file()
    assert any("best val acc" in s.value for s in at.success)
    assert any("s in all" in s.value and " 0.0 s per epoch" not in s.value for s in at.success)


def test_stop_ends_a_run_mid_epoch_and_keeps_best(synthetic):
    at = _app()
    _pick_model(at, "test_resnet")
    _upload_zip(at, _zip_of(synthetic))
    at.switch_page("pages/train.py").run()
    at.number_input[0].set_value(200).run()  # far more epochs than the test will wait for
    at.select_slider[0].set_value(4).run()  # batch size 4: many batches per epoch
    at.select_slider[1].set_value(64).run()
    next(b for b in at.button if b.label == "Start training").click().run()
    job = _job(at)
    assert next(b for b in at.button if b.label == "Start training").disabled  # one job per lab
    deadline = time.time() + 90
    while not job.metrics() and time.time() < deadline:  # let one epoch finish, so there is a best
        time.sleep(0.2)
    at.run()
    assert (job.folder / "checkpoint" / "model.safetensors").is_file()  # the best epoch so far, kept as it goes
    next(b for b in at.button if b.key == "train_stop").click().run()
    _wait(job, 60)
    at.run()
    assert job.state == "stopped" and 1 <= len(job.metrics()) < 200
    assert at.number_input(key="train_epochs").value == 200  # the box kept the run's value, not the default
    assert (job.folder / "model.safetensors").is_file()
    assert any("Stopped" in s.value for s in list(at.warning) + list(at.success))


def test_cam_page_computes_methods_side_by_side():
    _skip_without_seeded()  # "Egyptian cat" below is the pretrained model's answer
    at = _app()
    at.switch_page("pages/cam.py").run()
    at.multiselect(key="cam_methods").set_value(["CAM (classic)", "GradCAM", "EigenCAM"]).run()
    next(b for b in at.button if b.label == "Compute").click().run()
    assert not at.exception and not at.error
    spec = json.loads(at.get("plotly_chart")[-1].proto.spec)
    titles = [a["text"] for a in spec["layout"]["annotations"]]
    assert any(t.startswith("CAM ·") for t in titles) and any(t.startswith("EigenCAM") for t in titles)
    assert "Egyptian cat" in " ".join(titles)  # the default photo is the cat, explained for its top class


def test_cam_page_says_why_classic_cam_does_not_apply():
    at = _app()
    at.switch_page("pages/freeze.py").run()
    at.radio(key="head_choice").set_value("mlp").run()
    at.switch_page("pages/cam.py").run()
    at.radio(key="cam_models").set_value("pretrained").run()
    _pick_model(at, "test_convnext")  # GAP -> LayerNorm -> linear: not exact for classic CAM
    at.switch_page("pages/cam.py").run()
    at.multiselect(key="cam_methods").set_value(["CAM (classic)", "GradCAM"]).run()
    next(b for b in at.button if b.label == "Compute").click().run()
    assert not at.exception
    assert any("not global average pooling" in e.value for e in at.error)
    assert len(at.get("plotly_chart")) >= 1  # Grad-CAM still drawn


def test_se_page_not_applicable_then_real_se_model():
    at = _app()
    at.switch_page("pages/se.py").run()
    assert not at.exception and "no Squeeze-and-Excitation blocks" in at.error[0].value
    _page_button(at).click().run()  # switch to mobilenet_v3_small
    assert not at.exception and at.session_state["model_name"] == "mobilenet_v3_small"
    titles = _chart_titles(at)
    assert "Gates · cat" in titles and "Gates · coffee" in titles


def test_attention_page_not_applicable_then_vit():
    at = _app()
    at.switch_page("pages/attention.py").run()
    assert not at.exception and "no self-attention" in at.error[0].value
    _pick_model(at, "test_vit")
    at.switch_page("pages/attention.py").run()
    assert not at.exception and not at.error
    assert any("random weights" in w.value for w in at.warning)
    assert "Class-token attention, layer" in " ".join(_chart_titles(at))


def test_features_page_shows_filters_and_maps():
    at = _app()
    at.switch_page("pages/features.py").run()
    assert not at.exception
    assert len(at.image) >= 2  # the filter grid and the crop
    assert any("most active channels" in t for t in _chart_titles(at))


def test_export_page_verifies_serves_netron_and_lists_layers():
    """The exported file is verified and shown in Netron through the lab's own origin: the iframe is a path on
    the page's origin (no host named), Streamlit serves the viewer and that one file, and the lab's other files,
    or the viewer after "New lab" in the same tab, answer 404."""
    from pages import _netron
    from tests.test_export import _registered, streamlit_get

    from vislab.serving import labs

    at = _app()
    at.switch_page("pages/export.py").run()
    assert not at.exception
    earlier = labs.Lab(at.session_state["lab_id"]).data_dir / "export"
    earlier.mkdir(parents=True)
    (earlier / "notes.txt").write_text("another file of the lab")
    (earlier / "earlier.onnx").write_bytes(b"an earlier export")
    next(b for b in at.button if b.label == "Export and verify").click().run()
    assert not at.exception and not at.error
    result = at.session_state["export_result"]
    assert result.ok and result.verified and result.max_abs_diff <= result.tol and result.path.is_file()
    # torch.jit.trace's deprecations are shown, not hidden, folded into one box instead of a yellow box each
    folded = [e for e in at.expander if "from torch while exporting" in e.label]
    assert len(folded) == 1 and "deprecated" in folded[0].markdown[0].value and not at.warning, [w.value for w in at.warning]
    shown = list(_netron._netron_servers().values())[-1]
    assert shown.lab == at.session_state["lab_id"] and shown.component.name == f"pages._netron.{shown.viewer.token}"
    url = f"/component/pages._netron.{shown.viewer.token}/index.html?url={result.path.name}"
    assert shown.url == url and at.get("iframe")[0].proto.src == url
    assert at.get("link_button")[0].proto.url == url  # "Open Netron in a new tab": the same path
    sent = [str(p) for p in _protos(at._tree)]
    assert any(url in p for p in sent) and not [p for p in sent if "127.0.0.1" in p]  # nothing names loopback
    assert any("netron.app" in c.value for c in at.caption)  # the hosted fallback is still offered
    assert result.path.parent == earlier
    registry = _registered(shown.viewer)
    folder = url.rsplit("/", 1)[0]
    status, page = streamlit_get(registry, url)
    assert status == 200 and b"<title>Netron</title>" in page
    assert streamlit_get(registry, f"{folder}/{result.path.name}") == (200, result.path.read_bytes())
    for other in ("notes.txt", "earlier.onnx", "state.json"):  # beside the export, and in the lab's folder
        assert streamlit_get(registry, f"{folder}/{other}")[0] == 404
    frame = at.dataframe[-1].value
    assert {"run #", "print # ", "layer", "order differs", "state"} <= set(frame.columns)

    at.button(key="new_lab").click().run()  # a fresh lab in the same tab (the same browser session)
    at.switch_page("pages/export.py").run()
    assert not at.exception and not at.get("iframe") and at.session_state["lab_id"] != shown.lab
    assert streamlit_get(registry, f"{folder}/{result.path.name}")[0] == 404  # the old lab's viewer is gone


def _protos(node):
    """Every element proto of an AppTest tree."""
    if getattr(node, "proto", None) is not None:
        yield node.proto
    for child in getattr(node, "children", {}).values():
        yield from _protos(child)


def test_lr_finder_on_the_train_page_sets_the_rate(synthetic):
    at = _app()
    _pick_model(at, "test_resnet")
    _upload_zip(at, _zip_of(synthetic))
    at.switch_page("pages/train.py").run()
    at.select_slider[1].set_value(64).run()  # image size
    next(b for b in at.button if b.label == "Find a learning rate").click().run()
    assert not at.exception
    sweep = at.session_state["lr_sweep"]
    assert "Learning-rate finder" in _chart_titles(at)
    next(b for b in at.button if b.label.startswith("Use ")).click().run()
    assert at.session_state["train_lr"] == pytest.approx(sweep.suggestion)


def test_a_crash_inside_a_view_is_one_message_and_the_app_survives(monkeypatch):
    from vislab.views import features

    def boom(*a, **k):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(features, "filter_grid", boom)
    at = _app()
    at.switch_page("pages/data.py").run()
    _page_button(at).click().run()  # use the sample: session state to keep
    at.switch_page("pages/features.py").run()
    assert len(at.exception) == 1  # an error box on that page only
    at.switch_page("pages/home.py").run()
    assert not at.exception and not at.error
    assert at.session_state["dataset"].label.startswith("textile sample")  # the session survived


def test_two_sessions_never_see_each_others_state_or_files(synthetic):
    """Two browsers, two labs: different freeze plans, separate models, data folders and runs."""
    a, b = _app(), _app()
    blob = _zip_of(synthetic)
    for at, strategy in ((a, "head"), (b, "partial")):
        _pick_model(at, "test_resnet")
        _upload_zip(at, blob)
        at.switch_page("pages/freeze.py").run()
        at.selectbox(key="preset_choice").set_value(strategy).run()
        next(x for x in at.button if x.label == "Apply preset").click().run()
        at.switch_page("pages/train.py").run()
        at.number_input[0].set_value(1).run()
        at.select_slider[1].set_value(64).run()
        next(x for x in at.button if x.label == "Start training").click().run()
    ja, jb = _wait(_job(a)), _wait(_job(b))
    for at in (a, b):
        at.run()
    assert ja.state == jb.state == "done"
    assert a.session_state["plan"].trainable != b.session_state["plan"].trainable
    assert a.session_state["working"][1] is not b.session_state["working"][1]
    assert ja.folder.parent != jb.folder.parent  # each lab's own runs folder
    assert a.session_state["dataset"].report.root != b.session_state["dataset"].report.root  # own uploads
    for at, mine, theirs in ((a, ja, jb), (b, jb, ja)):
        listed = set(at.dataframe[-1].value["run"])
        assert mine.id in listed and theirs.id not in listed
    assert a.session_state["lab_id"] != b.session_state["lab_id"]


def test_out_of_memory_in_a_worker_gives_advice_and_the_app_keeps_working(synthetic, monkeypatch):
    """The worker's error (here an OOM raised inside training, run in-process) reaches the page as advice."""
    from vislab.training import experiment
    from vislab.serving import worker

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    at = _app()
    _pick_model(at, "test_resnet")
    _upload_zip(at, _zip_of(synthetic))
    at.switch_page("pages/train.py").run()
    from pages import _jobs

    monkeypatch.setattr(_jobs.queue(), "submit", lambda job, device="cpu": job)  # keep it out of the queue
    next(b for b in at.button if b.label == "Start training").click().run()
    job = _job(at)
    monkeypatch.setattr(experiment, "train", oom)
    monkeypatch.setattr(worker, "be_nice", lambda: None)  # in this process: the rest of the suite keeps its priority
    assert worker.run_worker(job.folder) == 1
    at.run()
    assert job.state == "error" and "smaller batch size or image size" in job.status()["message"]
    assert any("smaller batch size" in e.value for e in at.error) and not at.exception
    at.switch_page("pages/freeze.py").run()
    assert not at.exception


def test_compare_page_runs_four_strategies_and_shows_them_together(synthetic):
    at = _app()
    _pick_model(at, "test_resnet")
    _upload_zip(at, _zip_of(synthetic))
    at.switch_page("pages/compare.py").run()
    at.number_input(key="compare_epochs").set_value(1).run()
    at.select_slider(key="compare_size").set_value(64).run()
    at.select_slider(key="compare_batch").set_value(8).run()
    next(b for b in at.button if b.label == "Run comparison").click().run()
    from vislab.serving import jobs, labs

    job = jobs.list_jobs(labs.Lab(at.session_state["lab_id"]).runs_dir)[0]
    _wait(job, 180)
    at.run()
    at.run()
    assert job.state == "done" and not at.exception and not at.error, job.status()
    rows = json.loads((job.folder / "comparison.json").read_text())["rows"]
    assert [r["config"]["name"] for r in rows] == ["head", "partial", "full", "scratch"]
    titles = _chart_titles(at)
    assert "Strategies compared" in titles and "head: confusion" in titles
    assert any(t.startswith("Grad-CAM at") for t in titles)
    assert (job.folder / "comparison.csv").is_file()


def test_concepts_page_computes_every_demo():
    at = _app()
    at.switch_page("pages/concepts.py").run()
    assert not at.exception and not at.error
    text = " ".join(m.value for m in at.markdown)
    assert "25,089,000" in text and "513,000" in text  # resnet18: 512x7x7x1000 (+1000) vs 512x1000 (+1000)
    assert "110,592" in text and "200,704" in text  # C=64: 27C^2 vs 49C^2
    titles = _chart_titles(at)
    assert "Gradient norm per layer at initialisation" in titles and "softmax rows (each sums to 1)" in titles
    table = at.table[0].value
    assert list(table["flatten head"])[1] == "works" and list(table["flatten head"])[0].startswith("fails")


def test_cam_explains_any_of_the_top5_classes():
    at = _app()
    at.switch_page("pages/cam.py").run()
    at.radio(key="cam_target_mode").set_value("one of the top 5").run()
    options = at.selectbox(key="cam_topk_class").options
    assert len(options) == 5 and "Egyptian cat" in options[0]
    at.selectbox(key="cam_topk_class").set_value("tabby").run()
    at.multiselect(key="cam_methods").set_value(["GradCAM"]).run()
    next(b for b in at.button if b.label == "Compute").click().run()
    assert not at.exception and not at.error
    titles = [a["text"] for a in json.loads(at.get("plotly_chart")[-1].proto.spec)["layout"]["annotations"]]
    assert any("tabby" in t for t in titles)


def test_augmented_views_set_on_the_data_page_are_cached_by_training(synthetic):
    at = _app()
    _pick_model(at, "test_resnet")
    _upload_zip(at, _zip_of(synthetic))
    next(t for t in at.toggle if t.label == "h-flip").set_value(True).run()
    assert any("New random views every epoch" in c.value for c in at.caption)
    views = next(n for n in at.number_input if n.label == "Augmented views to cache per image")
    views.set_value(2).run()
    assert not at.exception
    assert at.session_state["augment"].views == 2 and at.session_state["augment"].hflip
    assert any("2 fixed random view(s)" in c.value for c in at.caption)
    job = _train_on_page(at, 64, epochs=2)
    assert job.state == "done", job.status()
    assert job.cache_lines() and job.cache_lines()[0].startswith("features cached"), job.cache_lines()
    assert json.loads((job.folder / "config.json").read_text())["augment"]["views"] == 2


def test_an_unusable_zip_keeps_the_dataset_in_use(synthetic):
    at = _app()
    _upload_zip(at, _zip_of(synthetic))
    kept = at.session_state["dataset"].report.items[0][0]
    first = sorted(p for p in synthetic.iterdir() if p.is_dir())[0]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:  # one class only: it extracts fine, but cannot train
        for p in sorted(first.glob("*.png")):
            zf.write(p, f"only/{first.name}/{p.name}")
    at.get("file_uploader")[0].set_value(("one_class.zip", buf.getvalue(), "application/zip")).run()
    at.button(key="zip_read").click().run()
    assert not at.exception
    assert any("current dataset is kept" in e.value for e in at.error)
    assert any("24 images, 3 classes" in m.value for m in at.markdown)
    assert at.session_state["dataset"].report.items[0][0] == kept and Path(kept).is_file()


def test_two_upload_classes_with_one_name_are_refused():
    at = _app()
    at.switch_page("pages/data.py").run()
    at.radio(key="data_source").set_value("Images per class").run()
    at.text_input(key="cls_name_1").set_value("Class_1").run()  # the same as class_1, but for case
    next(b for b in at.button if b.label == "Build the dataset").click().run()
    assert not at.exception
    assert any("its own, non-empty name" in e.value for e in at.error)


def test_side_by_side_feature_maps_after_training_at_another_size(synthetic):
    at = _app()
    _pick_model(at, "test_resnet")
    _upload_zip(at, _zip_of(synthetic))
    job = _train_on_page(at, 64)
    assert job.state == "done", job.status()
    at.switch_page("pages/features.py").run()
    assert at.radio(key="feat_models").value == "fine-tuned"  # once a run exists, it is the default
    at.radio(key="feat_models").set_value("side by side").run()
    assert not at.exception, at.exception
    assert any("Relative change" in m.label for m in at.metric)
    _pick_model(at, "test_efficientnet")  # another model picked: its pretrained self comes first, not the run
    at.switch_page("pages/features.py").run()  # (also where the radio was set to "side by side" before)
    assert at.radio(key="feat_models").value == "pretrained"


def test_a_vit_trains_on_the_train_page_at_another_size(synthetic):
    at = _app()
    _pick_model(at, "test_vit")
    _upload_zip(at, _zip_of(synthetic))
    job = _train_on_page(at, 64)
    assert job.state == "done", job.status()
    assert json.loads((job.folder / "config.json").read_text())["data_config"]["input_size"][-1] == 64


def test_attention_page_says_why_swin_has_no_maps(monkeypatch):
    from timm.models import _registry

    # timm's own Swin class (WindowAttention) shrunk to one block per stage at 64 px, reached by name like any
    # timm model (0.4 M parameters, not swin_tiny's 28 M at 224 px)
    swin_tiny = _registry.model_entrypoint("swin_tiny_patch4_window7_224")

    def test_swin(pretrained=False, **kwargs):
        kwargs["pretrained_cfg_overlay"] = {**(kwargs.get("pretrained_cfg_overlay") or {}), "input_size": (3, 64, 64)}
        return swin_tiny(pretrained=pretrained, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1),
                         img_size=64, window_size=2, **kwargs)

    monkeypatch.setitem(_registry._model_entrypoints, "test_swin", test_swin)
    at = _app()
    _pick_model(at, "test_swin")
    at.switch_page("pages/attention.py").run()
    assert not at.exception
    assert any("local windows" in e.value for e in at.error)


def test_typing_no_model_name_keeps_the_current_model():
    at = _app()
    before = at.session_state["model_name"]
    at.switch_page("pages/model.py").run()
    at.selectbox[0].set_value("other timm / torchvision name…").run()
    assert not at.exception and at.session_state["model_name"] == before
    at.text_input[0].set_value("not_a_model_xyz").run()
    assert any("unknown model" in e.value for e in at.error) and at.session_state["model_name"] == before


def test_many_classes_preview_a_chosen_few(tmp_path):
    from vislab.data.synthetic import make_synthetic

    many = make_synthetic(tmp_path / "many", classes=30, per_class=3, size=32)
    at = _app()
    _upload_zip(at, _zip_of(many))
    assert not at.exception
    assert any("90 images, 30 classes" in m.value for m in at.markdown)
    picker = at.multiselect(key="preview_classes")
    assert len(picker.value) == 12


def test_freeze_page_lists_the_drops_a_frozen_stage_switches_off(monkeypatch):
    from timm.models import _registry

    # timm's test_convnext with stochastic depth in its blocks, reached by name like any timm model
    # (0.3 M parameters, not efficientnet_v2_s's 21 M)
    convnext = _registry.model_entrypoint("test_convnext")

    def test_convnext_droppath(pretrained=False, **kwargs):
        return convnext(pretrained=pretrained, drop_path_rate=0.2, **kwargs)

    monkeypatch.setitem(_registry._model_entrypoints, "test_convnext_droppath", test_convnext_droppath)
    at = _app()
    _pick_model(at, "test_convnext_droppath")
    at.switch_page("pages/freeze.py").run()
    assert not at.exception and at.session_state["model_name"] == "test_convnext_droppath"
    assert any("stochastic-depth layers" in m.value for m in at.markdown)
    listed = [line for c in at.code for line in c.value.splitlines()]
    assert any(line.endswith(".drop_path") for line in listed)  # the stochastic depth itself is named


def test_a_png_download_builds_its_image_only_when_clicked(monkeypatch):
    """Pages pass a function, not a grid: composing and encoding a PNG on every rerun of every user's page
    cost the server's one interpreter tens of ms for a file almost nobody downloads."""
    from PIL import Image

    from pages import _images

    made, sent = [], {}
    monkeypatch.setattr(_images.st, "download_button", lambda label, data, **kw: sent.update(data=data, **kw))

    def grid():
        made.append(1)
        return Image.new("RGB", (8, 6), "red")

    _images.download_png(grid, "grid.png")
    assert made == [] and callable(sent["data"]) and sent["file_name"] == "grid.png"
    png = sent["data"]()  # what Streamlit calls when the button is clicked
    assert made == [1] and Image.open(io.BytesIO(png)).size == (8, 6)


def test_start_queues_the_boxes_values_and_a_second_tab_is_refused(synthetic, monkeypatch):
    """Start queues the job in its callback, before the page reruns (one rerun per click, already showing Start
    disabled), with what the boxes say; a second tab of the lab whose Start still looked enabled is told why
    nothing was queued."""
    from pages import _jobs

    monkeypatch.setattr(_jobs.queue(), "submit", lambda job, device="cpu": job)  # stays queued: nothing trains
    a = _app()
    _pick_model(a, "test_resnet")
    _upload_zip(a, _zip_of(synthetic))
    b = AppTest.from_file(str(APP), default_timeout=120)
    b.query_params["lab"] = a.session_state["lab_id"]
    b.run()
    for at in (a, b):
        at.switch_page("pages/train.py").run()
    a.number_input[0].set_value(7).run()
    a.select_slider[0].set_value(16).run()  # batch size
    a.select_slider[1].set_value(96).run()  # image size
    next(x for x in a.button if x.label == "Start training").click().run()
    job = _job(a)
    train = job.experiment_spec()["train"]
    assert (train["epochs"], train["batch_size"], job.experiment_spec()["img_size"]) == (7, 16, 96)
    assert next(x for x in a.button if x.label == "Start training").disabled and not a.warning
    next(x for x in b.button if x.label == "Start training").click().run()
    assert any("already has a job" in w.value for w in b.warning) and not b.exception
    assert next(x for x in b.button if x.label == "Start training").disabled
    assert [j.id for j in _jobs.jobs.list_jobs(job.folder.parent)] == [job.id]  # the refused click made nothing
    _jobs.stop(job)


def test_the_session_model_is_walked_again_only_when_its_plan_changes(monkeypatch):
    """Every page asks for the session's model on every rerun; applying its plan walks the whole model (~30 ms
    of the server's one interpreter), so it happens only when the plan differs from what the model carries,
    also when a page changed the plan in place."""
    from pages import _state
    from vislab.models import freezing

    at = _app()
    at.switch_page("pages/freeze.py").run()
    walks = []
    real = freezing.apply
    monkeypatch.setattr(freezing, "apply", lambda *a, **k: (walks.append(1), real(*a, **k))[1])
    at.run()
    at.run()
    assert walks == []  # nothing changed: the model is not walked again
    model = at.session_state[_state.WORKING][1]
    plan = at.session_state[_state.PLAN]
    frozen = next(n for n, m in model.named_modules() if n and list(m.parameters(recurse=False))
                  and not any(p.requires_grad for p in m.parameters()))
    plan.modules[frozen] = True  # changed in place, not applied
    at.run()
    assert walks and all(p.requires_grad for p in model.get_submodule(frozen).parameters())
    assert not at.exception


def test_a_pages_kept_settings_outlive_a_session_that_never_drew_that_page():
    """Each page marks its own settings kept (_state.kept, no central list): a setting read back from a lab
    is kept by the session that read it, also when that session never opens the page: its own change on
    another page saves the lab without losing it."""
    at = _app()
    at.switch_page("pages/concepts.py").run()
    at.slider(key="concept_depth").set_value(42).run()
    lab = at.session_state["lab_id"]

    reload = AppTest.from_file(str(APP), default_timeout=120)
    reload.query_params["lab"] = lab
    reload.run()  # Home only
    sim = reload.radio(key="adv_sim")
    sim.set_value(next(o for o in sim.options if o != sim.value)).run()  # a change here saves the lab
    assert not reload.exception
    from vislab.serving import labs

    settings = labs.Lab(lab).read_state()["settings"]
    assert settings["concept_depth"] == 42 and settings["adv_sim"] == reload.radio(key="adv_sim").value
    again = AppTest.from_file(str(APP), default_timeout=120)
    again.query_params["lab"] = lab
    again.run()
    again.switch_page("pages/concepts.py").run()
    assert again.slider(key="concept_depth").value == 42
