"""Our deletion and insertion curves (vislab.views.faithfulness) against Quantus's PixelFlipping, the field's
implementation, set up to do the same thing: the same pixel order from the same map, the same fill, the same
number of steps.

How the two line up (read from quantus 0.6.0's pixel_flipping.py):
- PixelFlipping ranks the map's values (broadcast to every channel) in descending order and replaces
  `features_in_step` of them per step, so one of our steps of H*W/steps pixels is C*H*W/steps features. Quantus
  also asserts that `features_in_step` divides H*W (not C*H*W), so with 3 channels the number of steps must
  be a multiple of 3 and H*W/steps a whole number (else a step ends inside a pixel, some of its channels
  replaced, which ours never does): these tests use 72 px in 12 and in 24 steps, not our default 20
  (the code path is the same).
- Its curve is the target's softmax probability *after* each step (no value for the untouched image): our
  curve without its first point.
- Its AUC (`return_auc_per_sample=True`, `quantus.helpers.utils.calculate_auc`) is `np.trapz(curve, dx=1)`,
  a trapezoid in units of steps that starts at step 1; ours is a trapezoid on [0, 1] from step 0. So
  `ours * steps == quantus + (p0 + p1) / 2`, checked below. `np.trapz` is gone from numpy 2.4 (ours), so
  Quantus's own AUC call raises AttributeError: the tests apply the same rule (`trapezoid`) to its curve.
- Its built-in fills are constants ("black" is the image's minimum, "white" its maximum, "mean" the mean of
  the *already perturbed* image, so it drifts); it has no Gaussian-blur fill for PixelFlipping and no
  insertion metric. So (1) our curve with `fill=` the image's minimum is checked against Quantus's own
  "black" baseline, and (2) our default blurred fill, and insertion, through PixelFlipping's `perturb_func`
  hook with a 2-line function that copies the replaced features from another image (for insertion: start
  from the blurred image and copy from the original). In (2) Quantus still does the ranking, the stepping
  and the prediction.

The map's values are all distinct, so the set of pixels reached after each step is the same whichever way
ties are broken (Quantus's argsort is not stable, ours is).
"""

import numpy as np
import pytest
import quantus  # scripts/setup.sh installs it (without its dependencies, see there): missing, this fails, never skips
import timm
import torch

from vislab.views import faithfulness

CLASSES = 4


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = timm.create_model("test_resnet", pretrained=False, num_classes=CLASSES).eval()  # tiny (0.4 M), seeded
    with torch.no_grad():
        m.get_classifier().weight.mul_(4)  # probabilities mid-range (not saturated): every step moves them
    return m


def image(size: int) -> torch.Tensor:
    """(1, 3, size, size): smooth seeded colours with a bright square off-centre, roughly normalised."""
    g = torch.Generator().manual_seed(size)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 6, generator=g), size=(size, size), mode="bilinear")
    x[:, :, size // 5: size // 2, size // 2: size - size // 6] += 1.5
    return (x - 0.5) / 0.25


def maps(size: int) -> dict[str, np.ndarray]:
    """Maps with distinct values: a random ranking, and the centre blob's ranking (ties broken by position)."""
    random = np.random.default_rng(size).permutation(size * size).reshape(size, size)
    blob = faithfulness.centre_blob((size, size)).ravel()
    rank = np.empty(blob.size, np.int64)
    rank[np.argsort(-blob, kind="stable")] = np.arange(blob.size)
    return {"random": random.astype(np.float32), "centre": (-rank).reshape(size, size).astype(np.float32)}


def copy_from(source: np.ndarray):
    """A PixelFlipping `perturb_func`: the replaced features take their values from `source` (same shape as x)."""
    flat = source.reshape(source.shape[0], -1)

    def perturb(arr, indices, **kwargs):
        out = arr.copy()
        out[np.arange(len(arr))[:, None], indices] = flat[np.arange(len(arr))[:, None], indices]
        return out
    return perturb


def pixel_flipping(model, x: torch.Tensor, saliency: np.ndarray, target: int, steps: int, **kwargs) -> np.ndarray:
    """Quantus's curve for one image: C*H*W / steps features per step, no normalising of the map."""
    metric = quantus.PixelFlipping(features_in_step=x[0].numel() // steps, abs=False, normalise=False,
                                   disable_warnings=True, **kwargs)
    out = metric(model=model, x_batch=x.numpy(), y_batch=np.array([target]), a_batch=saliency[None, None],
                 channel_first=True, softmax=True, device="cpu")
    return np.asarray(out[0])


def trapezoid(curve: np.ndarray) -> float:
    """Quantus's AUC rule, `np.trapz(curve, dx=1)`, written out (numpy 2.4 has no `np.trapz`)."""
    curve = np.asarray(curve, np.float64)
    return float((curve[:-1] + curve[1:]).sum() / 2)


CASES = [(72, 24, "random"), (72, 24, "centre"), (72, 12, "random")]


@pytest.mark.parametrize("size, steps, which", CASES)
def test_deletion_matches_quantus_pixel_flipping_with_its_black_baseline(model, size, steps, which):
    x, saliency = image(size), maps(size)[which]
    target = int(model(x).argmax())
    ours = faithfulness.score(model, x, saliency, target, steps=steps, fill=float(x.min()))
    theirs = pixel_flipping(model, x, saliency, target, steps, perturb_baseline="black")
    assert len(theirs) == steps and len(ours.deletion) == steps + 1
    assert np.ptp(theirs) > 0.02  # the curve moves: a wrong order or step would show
    np.testing.assert_allclose(ours.deletion[1:], theirs, atol=1e-5)
    theirs_auc = trapezoid(theirs)
    p0, p1 = ours.deletion[:2]
    assert ours.deletion_auc * steps == pytest.approx(theirs_auc + (p0 + p1) / 2, abs=1e-5)


@pytest.mark.parametrize("size, steps, which", CASES)
def test_blurred_deletion_and_insertion_match_quantus_with_the_blur_as_its_perturb_func(model, size, steps, which):
    x, saliency = image(size), maps(size)[which]
    target = int(model(x).argmax())
    fill = faithfulness.blurred(x)
    ours = faithfulness.score(model, x, saliency, target, steps=steps)  # the default fill: the page's numbers
    deletion = pixel_flipping(model, x, saliency, target, steps, perturb_func=copy_from(fill.numpy()))
    insertion = pixel_flipping(model, fill, saliency, target, steps, perturb_func=copy_from(x.numpy()))
    assert np.ptp(deletion) > 0.02 and np.ptp(insertion) > 0.02
    np.testing.assert_allclose(ours.deletion[1:], deletion, atol=1e-5)
    np.testing.assert_allclose(ours.insertion[1:], insertion, atol=1e-5)
    p0, p1 = ours.deletion[:2]
    assert ours.deletion_auc * steps == pytest.approx(trapezoid(deletion) + (p0 + p1) / 2, abs=1e-5)
    p0, p1 = ours.insertion[:2]
    assert ours.insertion_auc * steps == pytest.approx(trapezoid(insertion) + (p0 + p1) / 2, abs=1e-5)
