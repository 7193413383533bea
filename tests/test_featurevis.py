"""Feature visualisation: the optimised image excites its channel far more than noise does, and a seed fixes it."""

import numpy as np
import pytest
import timm
import torch

from vislab.views import features
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


def channel_means(model, images: torch.Tensor) -> torch.Tensor:
    """The channel's mean activation for images (B, 3, H, W) in [0, 1], read as the Features page reads a
    layer (`features.activations`, one eval forward) after the model's own normalisation: (B,)."""
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (CFG.mean, CFG.std))
    return features.activations(model, LAYER, (images - mean) / std)[:, CHANNEL].mean(dim=(1, 2))


@pytest.fixture(scope="module")
def vis(model):
    return fv.visualise(model, LAYER, CHANNEL, CFG, fv.VisConfig(size=48, steps=40, lr=0.2, seed=3))


def test_the_image_excites_its_channel_well_above_random_images(model, vis):
    noise = channel_means(model, torch.rand(8, 3, 48, 48, generator=torch.Generator().manual_seed(0)))  # (8,)
    got = float(channel_means(model, as_batch(vis.image))[0])
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
