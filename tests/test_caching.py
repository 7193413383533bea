"""Frozen-prefix caching gives the same training as the full loop, and says when it does not apply."""

import pytest
import torch

from vislab import caching, data, experiment, models
from vislab.training import TrainConfig


def _train(synthetic, name, strategy, cache, head="linear", thaw_last=1, epochs=2):
    spec = experiment.Spec(model=name, strategy=strategy, head=head, weights="auto", img_size=64,
                           thaw_last=thaw_last,
                           train=TrainConfig(epochs=epochs, batch_size=8, device="cpu", seed=1, cache=cache))
    return experiment.train(spec, data.scan_folder(synthetic), None)


@pytest.mark.parametrize("name, strategy, head", [
    ("test_resnet", "head", "linear"),
    ("test_resnet", "partial", "mlp"),  # MLP head: BatchNorm1d and Dropout after the cached prefix
    ("test_efficientnet", "partial", "linear"),  # functional dropout in forward_head stays live
    ("mobilenet_v2", "head", "linear"),  # torchvision: functional pooling after `features`
])
def test_cached_training_matches_the_full_loop(synthetic, name, strategy, head):
    cached = _train(synthetic, name, strategy, True, head)
    full = _train(synthetic, name, strategy, False, head)
    assert cached.history.cache[0].startswith("features cached")
    assert full.history.cache[0].startswith("no feature cache")
    for a, b in zip(cached.history.epochs, full.history.epochs):
        for key in ("train_loss", "val_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
        assert a["val_acc"] == b["val_acc"]
    full_state = full.model.state_dict()
    for k, v in cached.model.state_dict().items():  # every tensor, prefix included, is back in place
        assert torch.allclose(v.float(), full_state[k].float(), atol=1e-4), k


def test_vit_falls_back_to_the_full_loop(synthetic):
    result = _train(synthetic, "test_vit", "head", True, epochs=1)
    assert "no feature cache" in result.history.cache[0] and "position" in result.history.cache[0]


def test_prefix_stops_at_the_first_trainable_or_random_module():
    from vislab import freezing

    model, _ = models.create_model("test_resnet", 3, weights_choice="random")
    freezing.apply(model, freezing.preset(model, "partial", thaw_last=1)[0])
    prefix = caching.find_prefix(model, torch.randn(2, 3, 64, 64))
    assert prefix.boundary.startswith("layer4") and prefix.stubs[-1] == "layer3"
    freezing.apply(model, freezing.plan_for(model, set(), bn_frozen="train"))  # frozen stages, BN stats moving
    prefix = caching.find_prefix(model, torch.randn(2, 3, 64, 64))
    assert prefix.boundary == "conv1.1"  # the first BatchNorm that updates its running stats


def test_large_features_spill_to_disk_and_train_the_same(synthetic, monkeypatch):
    full = _train(synthetic, "test_resnet", "head", False)
    monkeypatch.setattr(caching, "MEMORY_LIMIT_BYTES", 1)  # everything counts as too large for memory
    spilled = _train(synthetic, "test_resnet", "head", True)
    assert "on disk" in spilled.history.cache[0]
    for a, b in zip(spilled.history.epochs, full.history.epochs):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, abs=1e-5)
