"""Feature visualisation: the optimised image excites its channel far more than noise does, and a seed fixes it."""

import numpy as np
import pytest
import timm
import torch

from vislab.views import featurevis as fv
from vislab.data.config import DataConfig

CFG = DataConfig((3, 64, 64))
LAYER, CHANNEL = "layer2", 5


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return timm.create_model("test_resnet").eval()


def as_batch(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255  # (1, 3, H, W)


@pytest.fixture(scope="module")
def vis(model):
    return fv.visualise(model, LAYER, CHANNEL, CFG, fv.VisConfig(size=48, steps=40, lr=0.2, seed=3))


def test_the_image_excites_its_channel_well_above_random_images(model, vis):
    noise = fv.channel_activation(model, LAYER, CHANNEL, fv.random_images(8, 48), CFG)  # (8,)
    got = float(fv.channel_activation(model, LAYER, CHANNEL, as_batch(vis.image), CFG)[0])
    assert vis.image.shape == (48, 48, 3) and vis.image.dtype == np.uint8
    assert got > noise.max() + 3 * float(noise.std()) and got > 2 * float(noise.mean().abs())
    assert vis.objective[-1] > vis.objective[0]
    assert all(p.grad is None for p in model.parameters())  # the model's weights got no gradient
    assert not model.training


def test_a_seed_gives_the_same_image_and_another_seed_another(model, vis):
    again = fv.visualise(model, LAYER, CHANNEL, CFG, fv.VisConfig(size=48, steps=40, lr=0.2, seed=3))
    other = fv.visualise(model, LAYER, CHANNEL, CFG, fv.VisConfig(size=48, steps=40, lr=0.2, seed=4))
    assert np.array_equal(again.image, vis.image)
    assert not np.array_equal(other.image, vis.image)


def test_progress_stop_and_bad_channel(model):
    seen = []
    out = fv.visualise(model, LAYER, CHANNEL, CFG, fv.VisConfig(size=32, steps=10, fft=False, decorrelate=False),
                       on_progress=lambda step, steps, value: seen.append((step, steps)),
                       should_stop=lambda: len(seen) >= 3)
    assert out.stopped and out.steps == 3 and seen == [(1, 10), (2, 10), (3, 10)]
    with pytest.raises(ValueError, match="channel"):
        fv.visualise(model, LAYER, 10_000, CFG, fv.VisConfig(size=32, steps=2))
