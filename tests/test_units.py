"""Top-k patches per channel: the true maxima over the images, cropped to the receptive field as the model saw it."""

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from vislab.views import features, receptive, units
from vislab.data.config import DataConfig
from vislab.data.transforms import denormalize
from vislab.views.base import batch

CFG = DataConfig((3, 64, 64), crop_pct=1.0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return timm.create_model("test_resnet").eval()


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    pics = []
    for i in range(7):  # smooth colour fields with a few sharp squares: each channel has a clear maximum
        base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(base).resize((72, 64), Image.BILINEAR)).copy()
        y, x = rng.integers(0, 48, 2)
        img[y:y + 12, x:x + 12] = rng.integers(0, 255, 3)
        pics.append(Image.fromarray(img))
    return pics


LAYERS = ["bn1", "layer1", "layer3"]


def brute_force(model, images, layer):
    """Every image's activations at `layer`, one image at a time: (N, C, h, w)."""
    return torch.cat([features.activations(model, layer, batch([img], CFG)) for img in images])


def test_top_patches_are_the_true_maxima(model, images):
    res = units.top_patches(model, CFG, images, LAYERS, n_channels=4, k=3, batch_size=3)
    assert res.images_seen == len(images) and not res.stopped
    fields = receptive.receptive_fields(model, LAYERS, CFG.input_size)
    for lp in res.layers:
        acts = brute_force(model, images, lp.layer)  # (N, C, h, w)
        per_image_max = acts.flatten(2).max(2).values  # (N, C)
        strongest = per_image_max.mean(0).argsort(descending=True)[:4].tolist()
        assert lp.channels == strongest
        assert lp.field == fields[lp.layer]
        for c, row in zip(lp.channels, lp.patches):
            want = per_image_max[:, c].sort(descending=True).values[:3]
            assert torch.allclose(torch.tensor([p.value for p in row]), want, atol=1e-5)
            for p in row:
                assert acts[p.image, c][p.unit] == pytest.approx(p.value, abs=1e-5)  # the location is the max
                assert p.value == pytest.approx(float(per_image_max[p.image, c]), abs=1e-5)


def test_crops_are_the_receptive_field_of_the_image_the_model_saw(model, images):
    res = units.top_patches(model, CFG, images, ["layer1"], channels=[0, 3], k=2)
    lp = res.layers[0]
    assert lp.channels == [0, 3]
    for row in lp.patches:
        for p in row:
            seen = denormalize(batch([images[p.image]], CFG)[0], CFG)  # (3, 64, 64)
            seen = (seen.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            box, clipped = lp.field.box(*p.unit, 64, 64)
            assert p.box == box and p.clipped == clipped
            top, left, bottom, right = box
            assert np.array_equal(p.crop, seen[top:bottom, left:right])
            full = min(lp.field.size)
            assert (p.crop.shape[0] < full or p.crop.shape[1] < full) == clipped


def test_several_peaks_per_image_are_distinct_local_maxima(model, images):
    res = units.top_patches(model, CFG, images[:2], ["bn1"], channels=[1], k=6, per_image=3)
    row = res.layers[0].patches[0]
    assert len(row) == 6
    values = [p.value for p in row]
    assert values == sorted(values, reverse=True)
    acts = brute_force(model, images[:2], "bn1")[:, 1]
    for p in row:  # no neighbour within one cell is stronger
        i, j = p.unit
        assert float(acts[p.image, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2].max()) == pytest.approx(p.value)
    assert len({(p.image, p.unit) for p in row}) == 6
    wide = units.top_patches(model, CFG, images[:2], ["layer4"], channels=[1], k=6, per_image=3).layers[0]
    assert min(wide.field.size) > 64 and len(wide.patches[0]) == 2  # a field wider than the image: one per image


def test_deterministic_progress_and_stop(model, images):
    calls = []
    a = units.top_patches(model, CFG, images, ["layer1"], n_channels=2, k=2, batch_size=2,
                          on_progress=lambda done, total: calls.append((done, total)))
    b = units.top_patches(model, CFG, images, ["layer1"], n_channels=2, k=2, batch_size=5)
    assert calls == [(2, 7), (4, 7), (6, 7), (7, 7)]
    assert [[(p.image, p.unit, p.value) for p in r] for r in a.layers[0].patches] == \
           [[(p.image, p.unit, pytest.approx(p.value, abs=1e-5)) for p in r] for r in b.layers[0].patches]
    stopped = units.top_patches(model, CFG, images, ["layer1"], n_channels=2, k=2, batch_size=2,
                                should_stop=lambda: len(calls) >= 5, on_progress=lambda d, t: calls.append(d))
    assert stopped.stopped and stopped.images_seen == 2


def test_bad_channel_and_stage_list(model, images):
    with pytest.raises(ValueError, match="channels"):
        units.top_patches(model, CFG, images[:1], ["bn1"], channels=[999])
    stages = units.stage_layers(model, CFG.input_size)
    assert stages[0][1] == "bn1" and stages[-1][1] == "layer4"  # stem to last, the head left out
    assert units.spread(list(range(10)), 4) == [0, 3, 6, 9]
    assert units.grid(units.top_patches(model, CFG, images[:2], ["bn1"], n_channels=1, k=2)).size[0] > 0
    res = units.top_patches(model, CFG, images[:2], ["bn1", "layer4"], n_channels=1, k=2)
    small = units.shrink(res, 16)
    for big_lp, small_lp in zip(res.layers, small.layers):
        for big, little in zip(big_lp.patches[0], small_lp.patches[0]):
            assert max(little.crop.shape[:2]) == min(16, max(big.crop.shape[:2])) and little.value == big.value
    assert max(res.layers[1].patches[0][0].crop.shape[:2]) == 64  # the original is left as it was
