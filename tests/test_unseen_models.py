"""Models outside the catalog: heads, stages, CAM layers, attention refusals and input sizes behave."""

import numpy as np
import pytest
import torch
import torch.nn as nn
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from vislab.views import attention, cam, features, base as views
from vislab.training import experiment, prefix as frozen, runs
from vislab.data import folders as data
from vislab.models import freezing, heads, factory as models, stages
from vislab.training.loop import TrainConfig


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_torchvision_mlp_head_is_all_trained_by_the_head_strategy():
    model, info = models.create_model("resnet18", 3, "mlp", "random")
    assert info.head == "fc" and heads.head_names(model) == ["fc"]
    freezing.apply(model, freezing.preset(model, "head")[0])
    assert _trainable(model) == {n for n, _ in model.named_parameters() if n.startswith("fc.")}
    assert len(_trainable(model)) == 8  # BN1d, Linear, BN1d, Linear: weight and bias each
    reloaded = runs.rebuild({"model": "resnet18", "head_kind": "mlp", "plans": []}, ["a", "b", "c"])
    assert heads.head_names(reloaded) == ["fc"]


def test_distilled_models_train_and_replace_both_heads():
    model, _ = models.create_model("deit_tiny_distilled_patch16_224", 3, "mlp", "random")
    assert heads.head_names(model) == ["head", "head_dist"]
    assert all(isinstance(model.get_submodule(h), nn.Sequential) for h in ("head", "head_dist"))
    freezing.apply(model, freezing.preset(model, "head")[0])
    assert {n.split(".")[0] for n in _trainable(model)} == {"head", "head_dist"}
    assert stages.stages(model)[-1].modules == ["head", "head_dist"]


def test_a_model_built_without_a_classifier_gets_one():
    model, info = models.create_model("eva02_tiny_patch14_224", 4, "linear", "random")
    assert heads.num_outputs(model) == 4 and info.head == "head"


@pytest.mark.parametrize("name, most", [("densenet121", 0.4), ("vit_b_16", 0.15), ("regnet_y_400mf", 0.85)])
def test_the_last_stage_is_never_nearly_the_whole_network(name, most):
    try:
        with torch.device("meta"):  # structure only: no memory, no init time
            model = models.build_architecture(name)
    except NotImplementedError:  # RegNet computes its widths from real tensors
        model = models.build_architecture(name)
    model = heads.attach_head(model, 3)
    freezing.apply(model, freezing.preset(model, "partial", thaw_last=1)[0])
    total = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) / total < most


def test_norm_only_stages_join_their_neighbour():
    with torch.device("meta"):
        eff = models.build_architecture("efficientnet_b0")
        rn = models.build_architecture("resnet18")
    assert [s.name for s in stages.stages(eff)][-2:] == ["conv_head+bn2", "head"]
    assert stages.stages(eff)[0].name == "conv_stem+bn1"
    assert stages.stages(rn)[0].modules == ["conv1", "bn1"]


def test_googlenet_trains_without_auxiliary_outputs(tmp_path):
    model, _ = models.create_model("googlenet", 3, "linear", "random")
    model.train()
    assert isinstance(model(torch.randn(2, 3, 64, 64)), torch.Tensor)
    assert not any(n.startswith("aux") for n in features.conv_layers(model))


def test_stochastic_depth_counts_as_random():
    from torchvision.ops import StochasticDepth

    assert frozen._stochastic(StochasticDepth(0.2, "row")) and not frozen._stochastic(StochasticDepth(0.0, "row"))
    model = nn.Sequential(nn.Conv2d(3, 4, 3), StochasticDepth(0.2, "row"), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 8, 8))
    model[0].requires_grad_(False)
    model[1].requires_grad_(False)
    assert frozen.find_prefix(model, torch.randn(2, 3, 8, 8)).boundary == "1"


def test_swin_cam_uses_channels_last_maps_and_attention_says_why_not():
    import timm

    # timm's own Swin class (NHWC stages, WindowAttention), shrunk: one block per stage, 64 px, 2x2 windows;
    # seeded: with some random inits every channel's Grad-CAM weight is negative and the map is all zero
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", embed_dim=16, depths=(1, 1, 1, 1),
                              num_heads=(1, 1, 1, 1), img_size=64, window_size=2)
    model = heads.attach_head(model, 3)
    assert cam.is_nhwc(model) and not attention.has_attention(model)
    layer = cam.default_layer(model)
    assert layer == "norm" and layer in cam.layer_choices(model)
    x = torch.randn(1, 3, 64, 64)
    out = cam.run(model, x, ["GradCAM"], layer, [0])[0]
    assert out.maps.shape == (1, 64, 64) and out.maps.std() > 0
    # grad-cam called the usual way, with the (B, H, W, C) -> (B, C, H, W) reshape its docs give for Swin
    with GradCAM(model=model, target_layers=[model.get_submodule(layer)],
                 reshape_transform=lambda t: t.permute(0, 3, 1, 2)) as reference:
        expected = reference(x, targets=[ClassifierOutputTarget(0)])
    np.testing.assert_allclose(out.maps, views.normalise_maps(expected), atol=1e-4)
    with pytest.raises(views.ViewNotApplicable, match="local windows"):
        attention.attention_maps(model, torch.randn(1, 3, 64, 64))


def test_a_vit_trains_at_another_size_and_reloads(synthetic, tmp_path):
    spec = experiment.Spec(model="test_vit", strategy="head", weights="random", img_size=64,
                           train=TrainConfig(epochs=1, batch_size=8, device="cpu"))
    result = experiment.train(spec, data.scan_folder(synthetic), tmp_path / "run")
    model, run = runs.load(result.run_dir)
    x = torch.randn(2, 3, 64, 64)
    result.model.eval()
    assert torch.allclose(model(x), result.model(x), atol=1e-5) and run.data_config.size == 64


def test_a_fixed_size_model_refuses_another_size_with_a_message():
    model, _ = models.create_model("levit_128s", 3, "linear", "random")
    with pytest.raises(ValueError, match="cannot take 96x96 input"):
        models.fit_input_size(model, "levit_128s", 96)


def test_squeezenet_keeps_a_convolutional_classifier():
    model, info = models.create_model("squeezenet1_0", 3, "linear", "random")
    assert info.head == "classifier.1" and isinstance(model.classifier[1], nn.Conv2d)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)
    freezing.apply(model, freezing.preset(model, "head")[0])
    assert _trainable(model) == {"classifier.1.weight", "classifier.1.bias"}
    with pytest.raises(ValueError, match="1x1 convolution"):
        models.create_model("squeezenet1_0", 3, "mlp", "random")


def test_resmlp_affine_norm_is_not_a_stage_of_its_own():
    with torch.device("meta"):
        model = models.build_architecture("resmlp_12_224")
    assert stages.stages(model)[-2].name == "blocks.11+norm"


def test_export_of_a_vit_at_another_size(tmp_path, capsys):
    from vislab import cli

    rc = cli.main(["export", "--model", "test_vit", "--weights", "random", "--format", "torchscript",
                   "--img-size", "64", "--out", str(tmp_path / "vit.pt")])
    assert rc == 0 and "at 64x64" in capsys.readouterr().out
