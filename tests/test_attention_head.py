"""The attention head (heads.AttentionHead): self-attention over a frozen CNN's last feature map.

timm's test_resnet stands for timm CNNs (the head replaces `fc` in place), mobilenet_v2 for torchvision
ones (a traced GraphModule that keeps the backbone's module names).
"""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vislab.views import attention, base as views, cam
from vislab.data import folders as data
from vislab.training import experiment, prefix as frozen, runs
from vislab.export import formats as export
from vislab.models import freezing, heads, factory as models, stages, weights
from vislab.training.loop import TrainConfig
from vislab.data.transforms import Augment, load_image
from vislab.data.config import resize_for


def _model(name, n=3, weights="random"):
    torch.manual_seed(0)
    return models.create_model(name, n, head="attention", weights_choice=weights)


@pytest.fixture(scope="module")
def hybrids():
    return {name: _model(name)[0].eval() for name in ("test_resnet", "mobilenet_v2")}


@pytest.mark.parametrize("name, stride", [("test_resnet", 32), ("mobilenet_v2", 32)])
@pytest.mark.parametrize("size", [64, 96, 128, (96, 160)])
def test_tokens_follow_the_feature_grid_and_rows_sum_to_one(hybrids, name, stride, size):
    model = hybrids[name]
    h, w = (size, size) if isinstance(size, int) else size
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        assert model(x).shape == (2, 3)
    found = attention.view(model, x)
    grid = (-(-h // stride), -(-w // stride))  # the backbone's stride, rounded up by its padding
    assert found.hybrid and found.grid == grid and found.num_prefix_tokens == 1
    assert found.cell == (h / grid[0], w / grid[1])
    assert len(found.maps) == heads.ATTENTION_DEPTH
    t = 1 + grid[0] * grid[1]
    for m in found.maps:
        assert m.shape == (2, heads.ATTENTION_HEADS, t, t)
        assert (m >= 0).all()
        assert torch.allclose(m.sum(-1), torch.ones(2, heads.ATTENTION_HEADS, t), atol=1e-5)
    assert found.cls(1).shape == (heads.ATTENTION_DEPTH, heads.ATTENTION_HEADS, *grid)
    roll = found.rollout()
    assert roll.shape == grid and roll.max() == pytest.approx(1.0)
    maps = np.stack([views.fit_map(found.cls(b)[-1].mean(0), (h, w)) for b in range(2)])  # as the page lays
    assert maps.shape == (2, h, w) and maps.min() >= 0 and maps.max() == pytest.approx(1.0)  # them on the input
    assert all(not m._forward_hooks for m in model.modules())  # hooks gone
    assert all(m.fused_attn for _, m in attention.attention_modules(model))  # flags back


def test_unfused_maps_give_the_same_logits(hybrids):
    model = hybrids["mobilenet_v2"]
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        fused = model(x)
        with attention.unfused_attention(model):
            plain = model(x)
    assert torch.allclose(fused, plain, atol=1e-5)


def test_backbone_names_stay_and_the_head_is_one_stage(hybrids):
    tv = hybrids["mobilenet_v2"]
    assert type(tv).__name__ == "MobileNetV2WithAttention"
    assert heads.head_names(tv) == ["classifier"] and isinstance(tv.classifier, heads.AttentionHead)
    tv.get_submodule("features.18")  # the catalog's CAM layer, by its own name
    assert not [n for n, _ in tv.state_dict().items() if not n.startswith(("features.", "classifier."))]
    names = [s.name for s in stages.stages(tv)]
    assert names[-1] == stages.HEAD and "features.18" in names
    timm_cnn = hybrids["test_resnet"]
    assert heads.head_names(timm_cnn) == ["fc"] and isinstance(timm_cnn.fc, heads.AttentionHead)
    assert heads.num_outputs(tv) == heads.num_outputs(timm_cnn) == 3
    clone = copy.deepcopy(tv)  # a deep copy of a GraphModule loses the mark: found by type
    assert heads.head_names(clone) == ["classifier"]


@pytest.mark.parametrize("name", ["test_vit", "vit_tiny_patch16_224"])
def test_a_vit_gets_a_clear_refusal(name):
    with pytest.raises(heads.AttentionHeadError, match="own self-attention"):
        _model(name)


@pytest.mark.parametrize("name", ["test_resnet", "mobilenet_v2"])
def test_presets_freeze_the_backbone_and_train_the_head(name):
    model, _ = _model(name)
    head = model.get_submodule(heads.head_name(model))
    freezing.apply(model, freezing.preset(model, "head")[0])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{heads.head_name(model)}.{n}" for n, _ in head.named_parameters()}
    assert any(n.endswith("pos_embed") for n in trainable) and any(n.endswith("cls_token") for n in trainable)
    assert not freezing.report(model).moving_bn_buffers  # the backbone's BN is frozen too
    freezing.apply(model, freezing.preset(model, "partial", thaw_last=1)[0])
    last = [s for s in stages.stages(model) if s.name != stages.HEAD][-1]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith(last.modules[0] + ".") for n in trainable)
    assert all(p.requires_grad for p in head.parameters())


def _train(folder, name, cache, epochs=2, out=None, size=64, strategy="head"):
    spec = experiment.Spec(model=name, strategy=strategy, head="attention", weights="auto", img_size=size,
                           engine="torch",  # onnxruntime's prefix differs from torch's by float noise
                           train=TrainConfig(epochs=epochs, batch_size=8, device="cpu", seed=1, cache=cache),
                           augment=Augment())
    return experiment.train(spec, data.scan_folder(folder), out)


@pytest.mark.parametrize("name", ["test_resnet", "mobilenet_v2"])
def test_cached_training_matches_the_full_loop(synthetic, name):
    cached = _train(synthetic, name, True)
    full = _train(synthetic, name, False)
    assert cached.history.cache[0].startswith("features cached")
    assert "up to" in cached.history.cache[0] and full.history.cache[0].startswith("no feature cache")
    for a, b in zip(cached.history.epochs, full.history.epochs, strict=True):
        for key in ("train_loss", "val_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
        assert a["val_acc"] == b["val_acc"]
    full_state = full.model.state_dict()
    for k, v in cached.model.state_dict().items():
        assert torch.allclose(v.float(), full_state[k].float(), atol=1e-4), k


def test_the_cache_holds_the_spatial_map(synthetic):
    """The head is the first trainable module, so the frozen prefix ends at the map before pooling."""
    model, _ = _model("mobilenet_v2")
    freezing.apply(model, freezing.preset(model, "head")[0])
    x = torch.randn(2, 3, 64, 64)
    prefix = frozen.find_prefix(model, x)
    assert prefix.stubs == ["features"] and prefix.boundary == "classifier"
    assert frozen.reproduces(model, prefix, x)
    assert frozen.prefix_outputs(model, prefix, x).shape == (2, 1280, 2, 2)  # (B, C, H, W), not pooled


@pytest.mark.parametrize("name", ["test_resnet", "mobilenet_v2"])
def test_a_saved_run_reloads_with_the_same_outputs(synthetic, tmp_path, name):
    result = _train(synthetic, name, True, epochs=1, out=tmp_path / "run")
    model, run = runs.load(result.run_dir)
    assert run.config["head_kind"] == "attention" and isinstance(model.get_submodule(run.config["head"]),
                                                                   heads.AttentionHead)
    x = torch.randn(3, 3, 64, 64)
    result.model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), result.model(x), atol=1e-5)
    assert [s.name for s in stages.stages(model)] == [s.name for s in stages.stages(result.model)]


@pytest.mark.parametrize("name", ["test_resnet", "mobilenet_v2"])
def test_torchscript_export_reproduces_the_model(hybrids, tmp_path, name):
    model = hybrids[name]
    res = export.export_model(model, (3, 96, 96), tmp_path / "m.pt", "torchscript")
    assert res.ok and res.verified, res.reason
    loaded = torch.jit.load(str(res.path))
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-4)


def test_grad_cam_runs_on_the_backbone_of_a_hybrid(hybrids):
    model = hybrids["mobilenet_v2"]
    layer = cam.default_layer(model, "mobilenet_v2")
    assert layer == "features.18"
    maps = cam.run(model, torch.randn(2, 3, 96, 96), ["GradCAM"], layer, [0, 1])[0].maps
    assert maps.shape == (2, 96, 96)


# ---- the class token finds a small object ------------------------------------------------------------
SIZE, OBJECT, STRIDE = 128, 20, 32  # crop, object and grid cell in pixels: mobilenet_v2 gives a 4x4 grid


def _object_images(root, n_per_class, seed, full, offset):
    """Two classes told apart only by a small object (a red or a blue square) at a random place inside one
    cell of the feature grid, on a background of tinted grey patches. Images are `full` pixels square, so
    the eval transform's resize keeps them and its centre crop cuts the SIZE crop at `offset`; returns the
    folder and each image's object box (top, left) in crop pixels, by file."""
    rng = np.random.default_rng(seed)
    boxes = {}
    for c, colour in enumerate([(230, 30, 30), (30, 60, 230)]):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            coarse = rng.uniform(60, 190, (8, 8, 1)) + rng.uniform(-30, 30, (8, 8, 3))  # tinted grey patches
            texture = np.kron(coarse, np.ones((-(-full // 8), -(-full // 8), 1)))[:full, :full]
            img = np.clip(texture + rng.normal(0, 25, (full, full, 3)), 0, 255).astype(np.uint8)
            cell = rng.integers(0, SIZE // STRIDE, 2) * STRIDE  # a random cell of the grid, a random place in it
            top, left = (int(v) for v in cell + rng.integers(0, STRIDE - OBJECT + 1, 2))
            img[offset + top:offset + top + OBJECT, offset + left:offset + left + OBJECT] = colour
            path = folder / f"{i:03d}.png"
            Image.fromarray(img).save(path)
            boxes[str(path)] = (top, left)
    return root, boxes


def _object_share(model, items, boxes, cfg):
    """Mean over images of (class-token attention on the object's cells) / (their uniform share): last
    block, heads averaged, attention to grid cells only."""
    x = views.batch([load_image(p) for p, _ in items], cfg)  # (B, 3, SIZE, SIZE)
    found = attention.view(model, x)
    gh, gw = found.grid
    assert found.grid == (SIZE // STRIDE, SIZE // STRIDE)
    ratios = []
    for b, (path, _) in enumerate(items):
        mass = found.cls(b)[-1].mean(0)  # (gh, gw)
        mass = mass / mass.sum()
        top, left = boxes[path]
        rows = range(top * gh // SIZE, (top + OBJECT - 1) * gh // SIZE + 1)
        cols = range(left * gw // SIZE, (left + OBJECT - 1) * gw // SIZE + 1)
        cells = [(r, c) for r in rows for c in cols]
        ratios.append(sum(mass[r, c] for r, c in cells) / (len(cells) / (gh * gw)))
    return float(np.mean(ratios))


@pytest.mark.slow
def test_the_class_token_attends_to_the_object(tmp_path):
    if not weights.status("mobilenet_v2", "torchvision").available:
        pytest.skip("no pretrained mobilenet_v2 weights on this machine (vislab weights pull mobilenet_v2)")
    untrained, info = _model("mobilenet_v2", 2, "pretrained")
    cfg = info.data_config.with_size(SIZE)
    full = resize_for(cfg)  # the eval transform resizes to this, then centre-crops SIZE
    offset = int(round((full - SIZE) / 2))
    train_root, _ = _object_images(tmp_path / "train", 50, 0, full, offset)
    test_root, boxes = _object_images(tmp_path / "test", 12, 1, full, offset)
    spec = experiment.Spec(model="mobilenet_v2", strategy="head", head="attention", weights="pretrained",
                           img_size=SIZE, val_frac=0.1, engine="torch",
                           train=TrainConfig(epochs=20, batch_size=16, lr=2e-3, device="cpu", seed=0, cache=True))
    result = experiment.train(spec, data.scan_folder(train_root), None)
    assert result.history.cache[0].startswith("features cached")
    held_out = data.scan_folder(test_root).items
    trained = _object_share(result.model.eval(), held_out, boxes, cfg)
    before = _object_share(untrained.eval(), held_out, boxes, cfg)
    print(f"object share / uniform: trained {trained:.2f}, untrained {before:.2f}")
    assert trained >= 3.0 > before


# ---- the Attention page on a fine-tuned attention head ------------------------------------------------
@pytest.mark.slow
def test_attention_page_offers_the_head_then_shows_the_trained_one(synthetic):
    import json

    from tests.test_app import _app, _train_on_page, _upload_zip, _zip_of

    at = _app()  # the default model: mobilenet_v2, a CNN without self-attention
    _upload_zip(at, _zip_of(synthetic))
    at.switch_page("pages/attention.py").run()
    assert not at.exception and "no self-attention" in at.error[0].value
    next(b for b in at.button if b.label == "Use the attention head").click().run()
    assert not at.exception and at.session_state["head_kind"] == "attention"
    assert any("has the attention head" in i.value for i in at.info)
    job = _train_on_page(at, 64)
    assert job.state == "done", job.status()
    at.switch_page("pages/attention.py").run()
    assert not at.exception and not at.error
    assert at.radio(key="attn_models").value == "fine-tuned"  # the run's model, not the pretrained one
    captions = " ".join(c.value for c in at.caption)
    assert "grid of feature-map cells" in captions and "one cell is 32×32 pixels of the 64×64 input" in captions
    layouts = [json.loads(el.proto.spec).get("layout", {}) for el in at.get("plotly_chart")]
    panels = " ".join(a.get("text", "") for lay in layouts for a in lay.get("annotations", []))
    assert "Grad-CAM · features.18" in panels and "rollout" in panels and "last layer, heads averaged" in panels
    assert "Class-token attention, layer 1, per head" in [lay.get("title", {}).get("text") for lay in layouts]


def test_a_vit_picked_while_the_head_is_attention_falls_back_to_linear_with_a_message():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=240).run()
    at.switch_page("pages/model.py").run()
    at.selectbox[0].set_value("other timm / torchvision name…").run()
    at.text_input[0].set_value("test_resnet").run()
    at.switch_page("pages/freeze.py").run()
    at.radio(key="head_choice").set_value("attention").run()
    assert at.session_state["head_kind"] == "attention" and not at.exception
    at.switch_page("pages/model.py").run()
    at.text_input[0].set_value("test_vit").run()  # the Model page builds the working model: the head falls back
    assert any("back to linear" in t.value for t in at.toast), [t.value for t in at.toast]
    at.switch_page("pages/freeze.py").run()
    assert not at.exception, at.exception
    assert at.session_state["head_kind"] == "linear"
