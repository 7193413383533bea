"""Each concept demo against an independent computation written out here (closed forms, numpy, autograd)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from vislab.teaching import concepts

# ----------------------------------------------------------------------------------------------- GAP vs flatten

@pytest.fixture(scope="module")
def gap_demo():
    return concepts.gap_vs_flatten("resnet18", sizes=(160, 224, 288))


def test_gap_vs_flatten_parameter_counts(gap_demo):
    assert gap_demo.feature_shape == (512, 7, 7) and gap_demo.num_classes == 1000
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    with torch.device("meta"):  # shapes only: the 25M-weight layer is never allocated
        flatten = nn.Linear(512 * 7 * 7, 1000)  # our own flatten head for resnet18's 7x7 maps at 224 px
        gap = torchvision.models.resnet18().fc  # torchvision's own GAP head
    assert gap_demo.flatten_params == count(flatten) == 25_088_000 + 1000  # weights + one bias per class
    assert gap_demo.gap_params == count(gap) == 512_000 + 1000


def test_gap_works_at_every_size_flatten_only_at_224(gap_demo):
    trunk = nn.Sequential(*list(torchvision.models.resnet18().children())[:-2]).eval()  # up to layer4
    for run in gap_demo.runs:
        s = run["size"]
        with torch.no_grad():
            want = trunk(torch.zeros(1, 3, s, s)).shape[1:]  # (C, H, W), our own forward
        assert run["feature_shape"] == tuple(want) == (512, s // 32, s // 32)
        assert run["gap_output_shape"] == (1, 1000)
        if s == 224:
            assert run["flatten_ok"] and run["flatten_output_shape"] == (1, 1000) and run["flatten_error"] == ""
        else:
            assert not run["flatten_ok"] and run["flatten_output_shape"] is None
            got = 512 * (s // 32) ** 2
            assert "the flatten head expects 25088 inputs" in run["flatten_error"]
            assert f"got {got} " in run["flatten_error"]


# ----------------------------------------------------------------------------------------------- 3x3 vs 7x7

def _rf_by_hand(kernels, strides):
    r, jump = 1, 1
    for k, s in zip(kernels, strides):
        r += (k - 1) * jump
        jump *= s
    return r


def _window_by_hand(convs, size=13):
    x = torch.randn(1, convs[0].in_channels, size, size, requires_grad=True)
    out = x
    for conv in convs:
        out = conv(out)  # linear only: the window is the support of the composed kernel
    out[0, 0, size // 2, size // 2].backward()
    nz = torch.nonzero(x.grad[0].abs().sum(0))
    return int(nz[:, 0].max() - nz[:, 0].min() + 1), len(nz)


@pytest.mark.parametrize("channels, bias", [(64, False), (8, True)])
def test_stacked_3x3_vs_7x7(channels, bias):
    demo = concepts.stacked_3x3_vs_7x7(channels, bias=bias)
    c = channels
    assert demo.stacked_params == 3 * 9 * c * c + (3 * c if bias else 0)
    assert demo.single_params == 49 * c * c + (c if bias else 0)
    assert (demo.stacked_relus, demo.single_relus) == (3, 1)
    assert _rf_by_hand([3, 3, 3], [1, 1, 1]) == _rf_by_hand([7], [1]) == 7
    assert demo.stacked_rf_steps == [3, 5, 7] and demo.single_rf_steps == [7]
    assert demo.stacked_window == demo.single_window == 7
    for grad in (demo.stacked_grad, demo.single_grad):
        assert (grad != 0).sum() == 49
    torch.manual_seed(0)
    three = [nn.Conv2d(c, c, 3, padding=1) for _ in range(3)]
    assert _window_by_hand(three) == _window_by_hand([nn.Conv2d(c, c, 7, padding=3)]) == (7, 49)


def test_receptive_field_with_stride_and_dilation():
    layers = nn.Sequential(nn.Conv2d(3, 4, 7, stride=2), nn.MaxPool2d(3, 2), nn.Conv2d(4, 4, 3, dilation=2))
    # 1 + 6*1 = 7; + 2*2 = 11; + 2*2*4 = 27
    assert concepts.receptive_field(layers) == [7, 11, 27]


# ----------------------------------------------------------------------------------------------- residuals

def _norms_by_hand(depth, width, seed, batch, residual):
    torch.manual_seed(seed)
    layers = [nn.Linear(width, width) for _ in range(depth)]  # the documented recipe: default init after seeding
    g = torch.Generator().manual_seed(seed)
    x, target = torch.randn(batch, width, generator=g), torch.randn(batch, width, generator=g)
    ws = [layer.weight.detach().clone().requires_grad_() for layer in layers]
    h = x
    for w, layer in zip(ws, layers):
        f = (h @ w.T + layer.bias.detach()).clamp(min=0)
        h = h + f if residual else f
    (h * target).mean().backward()
    return np.array([w.grad.norm().item() for w in ws])


def test_residual_gradient_norms():
    demo = concepts.residual_gradient_norms(depth=30, width=32, seed=0)
    for residual, got in ((False, demo.plain), (True, demo.residual)):
        want = _norms_by_hand(30, 32, 0, 64, residual)
        np.testing.assert_allclose(got, want, rtol=1e-4)
    assert demo.plain.shape == demo.residual.shape == (30,)
    # observed: plain first layer ~9e-14 vs residual ~18 (ratio ~5e-15); plain spans 11 orders of magnitude
    assert demo.first_layer_ratio == pytest.approx(demo.plain[0] / demo.residual[0])
    assert demo.first_layer_ratio < 1e-8
    assert demo.plain[0] / demo.plain[-1] < 1e-6  # vanishes toward the input
    assert demo.residual[0] / demo.residual[-1] > 0.05  # does not


def test_same_seed_same_weights_and_rng_untouched():
    a, b = concepts.make_stack(3, 4, seed=1), concepts.make_stack(3, 4, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    state = torch.get_rng_state()
    concepts.se_toy()
    concepts.attention_toy()
    concepts.residual_gradient_norms(depth=4)
    assert torch.equal(state, torch.get_rng_state())


# ----------------------------------------------------------------------------------------------- SE, attention

def test_se_toy_matches_numpy():
    d = concepts.se_toy(seed=0, channels=6, reduction=2, h=4, w=4)
    x = d["x"].astype(np.float64)  # (C, H, W)
    squeeze = x.mean(axis=(1, 2))
    z1 = d["w1"] @ squeeze + d["b1"]
    a1 = np.maximum(0, z1)
    z2 = d["w2"] @ a1 + d["b2"]
    gate = 1 / (1 + np.exp(-z2))
    out = x * gate[:, None, None]
    assert d["w1"].shape == (3, 6) and d["w2"].shape == (6, 3)
    for key, want in (("squeeze", squeeze), ("fc1", z1), ("relu", a1), ("fc2", z2), ("gate", gate), ("out", out)):
        np.testing.assert_allclose(d[key], want, rtol=1e-5, atol=1e-6, err_msg=key)
    assert ((gate > 0) & (gate < 1)).all()


def test_attention_toy_matches_numpy():
    d = concepts.attention_toy(seed=0, tokens=5, dim=8)
    x = d["x"].astype(np.float64)
    q, k, v = x @ d["wq"].T, x @ d["wk"].T, x @ d["wv"].T
    scores = q @ k.T / np.sqrt(8)
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    attn = e / e.sum(axis=1, keepdims=True)
    for key, want in (("q", q), ("k", k), ("v", v), ("scores", scores), ("attn", attn), ("out", attn @ v)):
        np.testing.assert_allclose(d[key], want, rtol=1e-5, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(d["attn"].sum(axis=1), np.ones(5), atol=1e-6)
    fused = F.scaled_dot_product_attention(*(torch.from_numpy(d[n])[None] for n in "qkv"))[0]
    np.testing.assert_allclose(d["out"], fused.numpy(), atol=1e-5)


# ----------------------------------------------------------------------------------------------- layer order

def test_print_vs_execution_order_reordered_toy():
    model = concepts.ReorderedToy()
    assert [n for n, _ in model.named_children()] == ["head", "b", "a"]
    d = concepts.print_vs_execution_order(model)
    assert d["definition"] == ["head", "b", "a"]
    assert d["execution"] == ["a", "b", "head"]
    assert d["differs"] == ["a", "head"]  # b stays in the middle
    assert d["positions"] == {"a": (2, 0), "head": (0, 2)}


def test_print_vs_execution_order_sequential_agrees():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    d = concepts.print_vs_execution_order(model, (4,))
    assert d["definition"] == d["execution"] == ["0", "1", "2"] and d["differs"] == []


# ----------------------------------------------------------------------------------------------- the page (issue 22)

DEMOS = ("gap_vs_flatten", "stacked_3x3_vs_7x7", "residual_gradient_norms", "se_toy", "attention_toy",
         "print_vs_execution_order")


def test_a_second_visit_of_the_concepts_page_computes_no_demo(monkeypatch):
    """Each demo the page shows runs once per input, not on every visit: spies on the library's demo functions
    count their calls over two visits (before: every visit ran five of them again). A new input (another
    channel count) runs that one demo once."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    calls = {name: 0 for name in DEMOS}

    def spy(name):
        real = getattr(concepts, name)

        def counted(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)
        return counted

    for name in DEMOS:
        monkeypatch.setattr(concepts, name, spy(name))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=180).run()
    at.switch_page("pages/concepts.py").run()
    assert not at.exception and not at.error
    first = dict(calls)
    assert all(n <= 1 for n in first.values()), first  # at most once each (none when an earlier test cached it)
    at.switch_page("pages/home.py").run()
    at.switch_page("pages/concepts.py").run()
    assert not at.exception and calls == first, (first, calls)
    text = " ".join(m.value for m in at.markdown)
    assert "110,592" in text and "200,704" in text  # still the C=64 numbers, from the cache
    assert len(at.get("plotly_chart")) == 4

    at.select_slider(key="concept_c").set_value(32).run()
    assert calls["stacked_3x3_vs_7x7"] - first["stacked_3x3_vs_7x7"] <= 1
    assert "27,648" in " ".join(m.value for m in at.markdown)  # 27 * 32^2
    again = dict(calls)
    at.switch_page("pages/home.py").run()
    at.switch_page("pages/concepts.py").run()
    assert calls == again and at.select_slider(key="concept_c").value == 32  # the kept setting, still cached
