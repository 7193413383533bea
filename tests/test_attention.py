import numpy as np
import pytest
import timm
import torch

from vislab._hooks import forward_with_hooks
from vislab.views import attention, base as views
from vislab.models import factory as models
from vislab.views.base import ViewNotApplicable


def _no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def _fused_flags(model):
    return [m.fused_attn for _, m in attention.attention_modules(model)]


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    model = timm.create_model("test_vit", num_classes=3)  # patch 16, dynamic image size, 6 blocks, 2 heads
    return model.eval()


@pytest.mark.parametrize("size", [64, 96])
def test_maps_are_softmax_rows_and_grid_fits(vit, size):
    x = torch.randn(2, 3, size, size)
    maps = attention.attention_maps(vit, x)
    grid = attention.patch_grid(vit, x)
    assert grid == (size // 16, size // 16)
    n = vit.num_prefix_tokens + grid[0] * grid[1]
    assert len(maps) == len(vit.blocks)
    for m in maps:
        assert m.shape == (2, 2, n, n)
        assert (m >= 0).all()
        assert torch.allclose(m.sum(-1), torch.ones(2, 2, n), atol=1e-5)
    assert _no_hooks(vit)
    cls = attention.cls_attention(maps, vit.num_prefix_tokens, grid, image=1)
    assert cls.shape == (len(maps), 2, *grid)
    np.testing.assert_allclose(cls[3, 1].ravel(), maps[3][1, 1, 0, 1:].numpy())  # class row, patch columns


def test_maps_match_a_hand_computed_softmax(vit):
    x = torch.randn(1, 3, 64, 64)
    maps = attention.attention_maps(vit, x)
    seen = {}
    forward_with_hooks(vit, [(vit.blocks[2].norm1, lambda mod, a, out: seen.__setitem__("t", out.detach()))], x)
    attn = vit.blocks[2].attn
    q, k, _ = attn.qkv(seen["t"]).reshape(1, -1, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    ref = (q @ k.transpose(-2, -1) * attn.head_dim ** -0.5).softmax(-1)  # (1, heads, N, N)
    assert torch.allclose(maps[2], ref, atol=1e-6)


def test_fused_and_unfused_logits_agree_and_flags_restored(vit):
    x = torch.randn(2, 3, 64, 64)
    assert all(_fused_flags(vit))  # timm's default: scaled_dot_product_attention, no maps to hook
    with torch.no_grad():
        fused = vit(x)
        with attention.unfused_attention(vit):
            assert not any(_fused_flags(vit))
            unfused = vit(x)
    assert all(_fused_flags(vit))
    assert torch.allclose(fused, unfused, atol=1e-5)
    vit.train()
    attention.attention_maps(vit, x)
    assert all(_fused_flags(vit)) and vit.training and _no_hooks(vit)
    vit.eval()


def test_patch_grid_other_patch_and_image_sizes():
    model = timm.create_model("test_vit", img_size=96, patch_size=8, num_classes=3)  # not its own 16 px patches
    x = torch.randn(1, 3, 96, 96)
    grid = attention.patch_grid(model, x)
    assert grid == (12, 12)
    maps = attention.attention_maps(model, x)
    assert maps[0].shape[-1] == model.num_prefix_tokens + 144
    assert attention.rollout(maps, grid, model.num_prefix_tokens).shape == grid
    wide = timm.create_model("test_vit", num_classes=3)  # dynamic image size: a non-square input
    x = torch.randn(1, 3, 64, 112)
    grid = attention.patch_grid(wide, x)
    assert grid == (4, 7)
    assert attention.cls_attention(attention.attention_maps(wide, x), 1, grid).shape == (6, 2, 4, 7)


def _rows(*rows):
    a = np.array(rows, dtype=float)
    return a / a.sum(-1, keepdims=True)


# two layers, two heads, class token + 2x2 patches (N = 5); rows are attention distributions
LAYER1 = np.stack([_rows([4, 1, 2, 1, 2], [1, 5, 1, 1, 2], [2, 1, 4, 2, 1], [1, 1, 1, 6, 1], [3, 1, 1, 1, 4]),
                   _rows([2, 3, 1, 1, 3], [2, 2, 2, 2, 2], [1, 4, 1, 3, 1], [5, 1, 1, 1, 2], [1, 2, 3, 1, 3])])
LAYER2 = np.stack([_rows([1, 6, 1, 1, 1], [2, 2, 3, 1, 2], [1, 1, 1, 6, 1], [3, 2, 1, 2, 2], [2, 1, 1, 1, 5]),
                   _rows([3, 1, 2, 3, 1], [1, 1, 6, 1, 1], [2, 3, 2, 2, 1], [1, 2, 1, 2, 4], [4, 1, 1, 1, 3])])


def test_rollout_single_layer_by_hand():
    a = np.array([[[0.2, 0.5, 0.3], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4]]])  # one head, cls + 1x2 patches
    # (A + I) row 0 = [1.2, 0.5, 0.3], / 2 = [0.6, 0.25, 0.15]; patches [0.25, 0.15] / 0.25
    np.testing.assert_allclose(attention.rollout([a], (1, 2)), [[1.0, 0.6]])


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_rollout_two_layer_toy_matches_hand_computation(fusion):
    maps = [torch.tensor(LAYER1[None]), torch.tensor(LAYER2[None])]  # (B=1, heads, N, N)
    result = np.eye(5)
    for layer in (LAYER1, LAYER2):
        fused = {"mean": layer.mean(0), "max": layer.max(0), "min": layer.min(0)}[fusion]
        a = fused + np.eye(5)
        a = a / a.sum(1, keepdims=True)
        result = a @ result
    expected = result[0, 1:].reshape(2, 2)
    expected = expected / expected.max()
    got = attention.rollout(maps, (2, 2), 1, head_fusion=fusion)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert got.max() == 1.0 and got.min() > 0


def test_rollout_discard_zeroes_weakest_attention_to_patches_only():
    maps = [LAYER1, LAYER2]  # per-layer (heads, N, N) arrays for one image work too
    result = np.eye(5)
    for layer in (LAYER1, LAYER2):
        fused = layer.mean(0)
        patch_part = fused[:, 1:]  # (5, 4) attention to patches: 20 values, drop the lowest 10
        cut = np.sort(patch_part.ravel())[9]
        fused = np.concatenate([fused[:, :1], np.where(patch_part <= cut, 0.0, patch_part)], axis=1)
        a = fused + np.eye(5)
        a = a / a.sum(1, keepdims=True)
        result = a @ result
    expected = result[0, 1:].reshape(2, 2) / result[0, 1:].max()
    np.testing.assert_allclose(attention.rollout(maps, (2, 2), 1, discard_ratio=0.5), expected, rtol=1e-12)
    assert not np.allclose(expected, attention.rollout(maps, (2, 2), 1))  # discarding changed the map


def test_rollout_on_a_real_vit(vit):
    x = torch.randn(1, 3, 64, 64)
    mask = attention.rollout(attention.attention_maps(vit, x), attention.patch_grid(vit, x), vit.num_prefix_tokens,
                             head_fusion="max", discard_ratio=0.9)
    assert mask.shape == (4, 4) and mask.max() == 1.0 and (mask >= 0).all()


def test_cnn_is_not_applicable():
    model, _ = models.create_model("test_resnet", 3, weights_choice="random")
    assert not attention.has_attention(model)
    with pytest.raises(ViewNotApplicable, match="vit_tiny_patch16_224"):
        attention.attention_maps(model, torch.randn(1, 3, 64, 64))


def test_fit_map_is_bilinear_then_min_max_like_the_page_had_it():
    m = np.random.default_rng(0).random((4, 5))  # a (gh, gw) patch grid
    t = torch.nn.functional.interpolate(torch.as_tensor(m, dtype=torch.float32)[None, None], size=(32, 40),
                                        mode="bilinear", align_corners=False)[0, 0].numpy()
    want = (t - t.min()) / (t.max() - t.min())  # written out here, as pages/attention.py computed it
    got = views.fit_map(m, (32, 40))
    assert got.shape == (32, 40) and got.min() == 0 and got.max() == 1
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert not views.fit_map(np.ones((3, 3)), (8, 8)).any()  # a flat map shows nothing, not NaN
