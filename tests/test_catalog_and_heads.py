import pytest
import torch
import torch.nn as nn

from vislab.models import catalog, heads, factory as models

# timm's tiny test models stand in for each family at 64 px; torchvision small ones run for real
TINY = ["test_resnet", "test_vit", "test_efficientnet", "test_convnext", "mobilenet_v2", "mobilenet_v3_small",
        "resnet18"]


@pytest.mark.parametrize("entry", catalog.CATALOG, ids=lambda e: e.name)
def test_catalog_entry_matches_the_real_model(entry):
    with torch.device("meta"):  # build without allocating: exact parameter counts for the big ones too
        model = models.build_architecture(entry.name)
    assert catalog.source_of(entry.name) == entry.source
    assert sum(p.numel() for p in model.parameters()) == entry.params
    model.get_submodule(entry.cam_layer)  # the CAM layer exists under that name
    has_se = any("SqueezeExcit" in type(m).__name__ for m in model.modules())
    assert has_se == entry.has_se
    has_attn = any(type(m).__name__ == "Attention" for m in model.modules())
    assert has_attn == entry.has_attention


@pytest.mark.parametrize("entry", catalog.CATALOG, ids=lambda e: e.name)
@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_head_swap_for_every_catalog_family(entry, kind):
    with torch.device("meta"):
        model = models.build_architecture(entry.name)
        model = heads.attach_head(model, 7, kind)
    name = heads.head_name(model)
    assert heads.num_outputs(model) == 7
    head = model.get_submodule(name)
    if kind == "mlp":
        assert [type(m) for m in head] == [nn.BatchNorm1d, nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.Dropout, nn.Linear]


@pytest.mark.parametrize("entry", catalog.CATALOG, ids=lambda e: e.name)
def test_attention_head_for_every_catalog_family(entry):
    """Every CNN of the catalog takes the attention head on its last feature map, module names unchanged;
    a model with self-attention of its own is refused with the reason."""
    with torch.device("meta"):
        model = models.build_architecture(entry.name)
        before = {n for n, _ in model.named_modules()}
        if entry.has_attention:
            with pytest.raises(heads.AttentionHeadError, match="own self-attention"):
                heads.attach_head(model, 7, "attention")
            return
        model = heads.attach_head(model, 7, "attention")
    assert heads.num_outputs(model) == 7
    name = heads.head_name(model)
    assert isinstance(model.get_submodule(name), heads.AttentionHead)
    kept = {n for n, _ in model.named_modules() if n and not n.startswith(name)}
    assert kept <= before and entry.cam_layer in kept


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("kind", heads.HEAD_KINDS)
def test_head_swap_gives_n_outputs(name, kind):
    if kind == "attention" and name == "test_vit":
        with pytest.raises(heads.AttentionHeadError):
            models.create_model(name, num_classes=5, head=kind, weights_choice="random")
        return
    model, info = models.create_model(name, num_classes=5, head=kind, weights_choice="random")
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 5)
    assert info.num_classes == 5 and info.head_kind == kind


def test_unknown_model_names_close_matches():
    with pytest.raises(ValueError, match="unknown model"):
        catalog.source_of("resnet_does_not_exist")


def test_any_timm_or_torchvision_name_works():
    assert catalog.source_of("resnet34") == "torchvision"
    assert catalog.source_of("seresnext26d_32x4d") == "timm"


def test_data_config_comes_from_the_model():
    _, vit = models.create_model("test_vit", 3, weights_choice="random")
    assert vit.data_config.input_size == (3, 160, 160)  # timm's config for the test model, not 224
    assert vit.data_config.interpolation == "bicubic"
    _, tv = models.create_model("resnet50", 3, weights_choice="random")
    assert tv.data_config.crop_pct == pytest.approx(224 / 232)  # torchvision's V2 weights resize to 232
