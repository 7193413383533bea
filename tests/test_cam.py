import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM, HiResCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from vislab.views import cam, base as views
from vislab.models import factory as models, weights


class TinyGapNet(nn.Module):
    """conv -> relu -> conv -> GAP -> linear: the architecture classic CAM is exact for."""

    def __init__(self, k=4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 6, 3, stride=2, padding=1)
        self.fc = nn.Linear(6, k)

    def forward(self, x):
        a = self.conv2(F.relu(self.conv1(x)))  # (B, 6, h, w)
        return self.fc(a.mean(dim=(2, 3)))


def _no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
               for m in model.modules())


def test_classic_cam_equals_the_formula():
    torch.manual_seed(0)
    model, x = TinyGapNet(), torch.randn(2, 3, 32, 32)
    classes = [1, 3]
    result = cam.classic(model, x, classes)
    assert result.layer == "conv2"
    a = model.conv2(F.relu(model.conv1(x))).detach()  # (B, C, h, w), written out by hand
    expected = []
    for b, k in enumerate(classes):
        m = sum(model.fc.weight[k, c].item() * a[b, c] for c in range(a.shape[1]))  # sum_c w_kc A_c
        m = F.interpolate(m[None, None], size=(32, 32), mode="bilinear", align_corners=False)[0, 0].clamp(min=0)
        expected.append(((m - m.min()) / (m.max() - m.min())).numpy())
    np.testing.assert_allclose(result.maps, np.stack(expected), atol=1e-5)
    assert _no_hooks(model)


def test_classic_cam_refuses_a_head_that_is_not_gap_linear():
    model, _ = models.create_model("test_resnet", 3, head="mlp", weights_choice="random")
    with pytest.raises(cam.CamNotApplicable, match="not one linear layer"):
        cam.classic(model, torch.randn(1, 3, 64, 64), [0])
    convnext, _ = models.create_model("test_convnext", 3, weights_choice="random")  # GAP -> LayerNorm -> fc
    with pytest.raises(cam.CamNotApplicable, match="not global average pooling"):
        cam.classic(convnext, torch.randn(2, 3, 64, 64), [0, 1])


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "test_convnext", "test_vit"])
def test_gradient_methods_shape_range_and_no_hooks_left(name):
    model, _ = models.create_model(name, 3, weights_choice="random")
    model.train()
    x = torch.randn(3, 3, 64, 64)
    layer = cam.default_layer(model, name)
    results = cam.run(model, x, ["GradCAM", "GradCAM++", "XGradCAM", "HiResCAM", "LayerCAM", "EigenCAM"], layer,
                      [0, 1, 2])
    for r in results:
        assert r.maps.shape == (3, 64, 64)
        assert r.maps.min() >= 0 and r.maps.max() <= 1
    assert _no_hooks(model) and model.training and torch.is_grad_enabled()
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("method, cls", [("GradCAM", GradCAM), ("HiResCAM", HiResCAM)])
def test_fast_path_matches_grad_cam_called_the_usual_way(method, cls):
    torch.manual_seed(0)
    model, _ = models.create_model("test_efficientnet", 4, weights_choice="random")
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    layer = cam.default_layer(model, "test_efficientnet")
    with cls(model=model, target_layers=[model.get_submodule(layer)]) as reference:
        expected = reference(x, targets=[ClassifierOutputTarget(1), ClassifierOutputTarget(2)])
    fast = cam.run(model, x, ["GradCAM", method], layer, [1, 2])[-1]  # second method reuses the first's pass
    np.testing.assert_allclose(fast.maps, views.normalise_maps(expected), atol=1e-4)


def test_vit_reshape_uses_the_models_grid():
    model, _ = models.create_model("test_vit", 2, weights_choice="random")
    x = torch.randn(2, 3, 160, 160)
    tokens = model.forward_features(x)  # (B, prefix + gh*gw, C)
    grid = cam.vit_reshape(model)(tokens)
    gh, gw = model.patch_embed.grid_size
    assert grid.shape == (2, tokens.shape[-1], gh, gw)
    r = cam.run(model, x, ["GradCAM"], cam.default_layer(model), [0, 1])[0]
    assert r.maps.shape == (2, 160, 160)


def test_slow_method_progress_and_stop():
    model, _ = models.create_model("test_resnet", 3, weights_choice="random")  # 96 channels: 96 forwards per image
    seen = []
    out = cam.run(model, torch.randn(3, 3, 64, 64), ["ScoreCAM"], cam.default_layer(model), [0, 1, 2],
                  on_progress=lambda m, i, n: seen.append(i), should_stop=lambda: len(seen) >= 2)[0]
    assert seen == [0, 1] and out.maps.shape[0] == 2  # stopped before the third image
    assert _no_hooks(model)


def test_gradcam_lands_on_the_cat_in_a_two_object_picture():
    """Cat photo on the left, espresso on the right: each class's Grad-CAM must light up its own half."""
    import skimage.data
    from PIL import Image

    found = weights.status("mobilenet_v2", "torchvision")
    if not found.available:  # the maps below are the pretrained model's: random weights mean nothing here
        pytest.skip(f"no seeded mobilenet_v2 weights here ({found.describe()}): run bash scripts/setup.sh")
    model, info = models.create_model("mobilenet_v2", None, weights_choice="pretrained")
    cat = Image.fromarray(skimage.data.chelsea()).resize((224, 224))
    cup = Image.fromarray(skimage.data.coffee()).resize((224, 224))
    canvas = Image.new("RGB", (448, 224))
    canvas.paste(cat, (0, 0))
    canvas.paste(cup, (224, 0))
    cfg = info.data_config
    full = _to_tensor(canvas, cfg)  # (1, 3, 224, 448): no center crop, it would cut one object off
    probs, idx = cam.predict_topk(model, full, 10)
    cat_class, cup_class = 285, 967  # Egyptian cat, espresso
    assert {cat_class, cup_class} <= set(idx[0].tolist())  # the model sees both objects
    maps = cam.run(model, torch.cat([full, full]), ["GradCAM"], "features.18", [cat_class, cup_class])[0].maps
    left, right = maps[:, :, :224].mean(axis=(1, 2)), maps[:, :, 224:].mean(axis=(1, 2))
    assert left[0] > 2 * right[0], "the cat's map should sit on the cat (left half)"
    assert right[1] > 2 * left[1], "the espresso's map should sit on the cup (right half)"


def _to_tensor(img, cfg):
    from torchvision.transforms import functional as TF

    t = TF.to_tensor(img)
    return TF.normalize(t, cfg.mean, cfg.std)[None]  # (1, 3, H, W)


def test_explain_runs_classic_cam_once_and_lists_what_does_not_apply(monkeypatch):
    scored = []  # grad-cam's ROAD takes seconds per image: a stand-in records what explain hands it

    def road(model, x, maps, classes):
        scored.append((x.shape[0], maps.shape, list(classes)))
        return np.full(len(maps), 0.5, np.float32)

    monkeypatch.setattr(cam, "road_score", road)
    model, _ = models.create_model("test_resnet", 3, weights_choice="random")
    x, names = torch.randn(2, 3, 64, 64), ["ant", "bee", "cat"]
    layers = ["layer4", "layer3"]  # the target layer and one to compare with
    found = cam.explain(model, x, names, [cam.CLASSIC, "GradCAM"], layers, target="bee", classic_layer="layer4")
    assert [(r.method, r.layer) for r in found.results] == [("CAM", "layer4"), ("GradCAM", "layer4"),
                                                            ("GradCAM", "layer3")]  # classic once, not per layer
    assert found.classes == [1, 1] and not found.errors and found.road == [None, None, None]
    assert [len(t) for t in found.topk] == [3, 3] and {n for n, _ in found.topk[0]} == set(names)
    own = cam.explain(model, x, names, ["GradCAM"], layers[:1], target="not a class").classes
    assert own == [names.index(t[0][0]) for t in found.topk]  # an unknown target: each image's own top class
    mlp, _ = models.create_model("test_resnet", 3, head="mlp", weights_choice="random")
    refused = cam.explain(mlp, x, names, [cam.CLASSIC, "GradCAM"], layers, road=True)
    assert [tag for tag, _ in refused.errors] == ["CAM (classic) · layer4"]  # one error, and Grad-CAM still runs
    assert "not one linear layer" in refused.errors[0][1] and len(refused.results) == 2
    assert [s.tolist() for s in refused.road] == [[0.5, 0.5]] * 2
    assert scored == [(2, (2, 64, 64), refused.classes)] * 2  # each result's maps, with its images and classes
    assert _no_hooks(model) and _no_hooks(mlp)


def test_cam_refusals_are_view_refusals():
    assert issubclass(cam.CamNotApplicable, views.ViewNotApplicable)
    assert str(cam.CamNotApplicable("no maps here")) == "no maps here"


def test_the_default_cam_layer_of_an_attention_head_model_is_a_feature_map_not_the_heads_tokens():
    """An attention head's query/key norms output (B, heads, N, d): 4-D, but tokens. Grad-CAM on them gave a
    speckled map (a run of another model on the CAM page, issue 22); the default is the backbone's last map."""
    import timm

    from vislab.models import heads

    model = heads.attach_head(timm.create_model("test_resnet"), 3, "attention")
    head = heads.attention_head_names(model)[0]
    layer = cam.default_layer(model, None)
    assert not layer.startswith(head + "."), layer
    assert layer.startswith("layer4"), layer  # the last stage of the backbone
