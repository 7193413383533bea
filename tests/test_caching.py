"""Frozen-prefix caching gives the same training as the full loop, and says when it does not apply."""

import pytest
import torch

from vislab.training import decoding, engines, experiment, feature_cache, loop as training
from vislab.training.prefix import Prefix, find_prefix, fingerprint, memory_format_of, reproduces
from vislab.data import folders as data, datasets
from vislab.models import factory as models, freezing
from vislab.training.loop import TrainConfig
from vislab.data.transforms import Augment, eval_transform, train_transform
from vislab.views import base as view_base


def _train(synthetic, name, strategy, cache, head="linear", thaw_last=1, epochs=2, augment=None, pool=None):
    spec = experiment.Spec(model=name, strategy=strategy, head=head, weights="auto", img_size=64,
                           thaw_last=thaw_last, augment=augment or Augment(), engine="torch",  # test_engines: onnx
                           train=TrainConfig(epochs=epochs, batch_size=8, device="cpu", seed=1, cache=cache))
    return experiment.train(spec, data.scan_folder(synthetic), None, cache_pool=pool)


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


def test_the_caching_events_count_images_not_batches(synthetic):
    """While the prefix runs, 'caching' events say how many of the pass's images are done (both splits: all
    24), in batches of 8; `batch` stays for training batches."""
    spec = experiment.Spec(model="test_resnet", strategy="head", weights="auto", img_size=64, engine="torch",
                           train=TrainConfig(epochs=1, batch_size=8, device="cpu", seed=1))
    events = []
    experiment.train(spec, data.scan_folder(synthetic), None, on_event=events.append)
    caching = [(e.cached, e.to_cache, e.batch, e.batches) for e in events if e.kind == "caching"]
    assert caching == [(8, 24, 0, 0), (16, 24, 0, 0), (24, 24, 0, 0)]


def test_vit_falls_back_to_the_full_loop(synthetic):
    result = _train(synthetic, "test_vit", "head", True, epochs=1)
    assert "no feature cache" in result.history.cache[0] and "position" in result.history.cache[0]


def test_prefix_stops_at_the_first_trainable_or_random_module():
    model, _ = models.create_model("test_resnet", 3, weights_choice="random")
    freezing.apply(model, freezing.preset(model, "partial", thaw_last=1)[0])
    prefix = find_prefix(model, torch.randn(2, 3, 64, 64))
    assert prefix.boundary.startswith("layer4") and prefix.stubs[-1] == "layer3"
    freezing.apply(model, freezing.plan_for(model, set(), bn_frozen="train"))  # frozen stages, BN stats moving
    prefix = find_prefix(model, torch.randn(2, 3, 64, 64))
    assert prefix.boundary == "conv1.1"  # the first BatchNorm that updates its running stats


def test_large_features_spill_to_disk_and_train_the_same(synthetic, monkeypatch):
    full = _train(synthetic, "test_resnet", "head", False)
    monkeypatch.setattr(feature_cache, "MEMORY_LIMIT_BYTES", 1)  # everything counts as too large for memory
    spilled = _train(synthetic, "test_resnet", "head", True)
    assert "on disk" in spilled.history.cache[0]
    for a, b in zip(spilled.history.epochs, full.history.epochs):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, abs=1e-5)


def test_augmented_views_are_cached_and_train_like_the_full_loop(synthetic):
    """K fixed augmented views per image: the prefix runs once on K x the images, and training (epoch e on
    view e mod K, the same order) matches the full loop over the same views."""
    aug = Augment(crop=True, hflip=True, color=True, views=2)
    cached = _train(synthetic, "test_resnet", "partial", True, epochs=3, augment=aug)
    full = _train(synthetic, "test_resnet", "partial", False, epochs=3, augment=aug)
    assert cached.history.cache[0].startswith("features cached")
    for a, b in zip(cached.history.epochs, full.history.epochs, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, abs=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4, abs=1e-5)
    # and the views really differ from the plain transform and from each other
    plain = _train(synthetic, "test_resnet", "partial", True, epochs=3)
    assert plain.history.epochs[0]["train_loss"] != pytest.approx(cached.history.epochs[0]["train_loss"])
    one_view = _train(synthetic, "test_resnet", "partial", True, epochs=3, augment=Augment(crop=True, views=1))
    two_views = _train(synthetic, "test_resnet", "partial", True, epochs=3, augment=Augment(crop=True, views=2))
    assert one_view.history.epochs[1]["train_loss"] != pytest.approx(two_views.history.epochs[1]["train_loss"])


def test_fresh_augmentation_falls_back_and_says_why(synthetic):
    result = _train(synthetic, "test_resnet", "head", True, epochs=1, augment=Augment(hflip=True))
    assert result.history.cache[0].startswith("no feature cache") and "augment" in result.history.cache[0]


def test_a_view_is_the_same_pixels_every_time_and_views_differ(synthetic):
    items = data.scan_folder(synthetic).items[:3]
    cfg = models.create_model("test_resnet", 3, weights_choice="random")[1].data_config
    views = datasets.AugmentedViews(items, train_transform(cfg, Augment(crop=True, color=True)), views=3, seed=0)
    assert len(views) == 9
    torch.manual_seed(123)
    first = views[4][0]
    torch.manual_seed(999)  # the global RNG does not matter, and is not consumed
    state = torch.random.get_rng_state()
    assert torch.equal(first, views[4][0]) and torch.equal(state, torch.random.get_rng_state())
    assert not torch.equal(views[1][0], views[4][0])  # view 0 vs view 1 of image 1


def test_shared_features_are_not_reused_for_other_images_or_sizes(synthetic):
    """The pool (Compare's shared cache) keys on the images and their transform, not just their count."""
    pool: dict = {}
    _train(synthetic, "test_resnet", "head", True, epochs=1, pool=pool)
    again = _train(synthetic, "test_resnet", "head", True, epochs=1, pool=pool)
    assert "shared" in again.history.cache[0]
    flipped = _train(synthetic, "test_resnet", "head", True, epochs=1, pool=pool,
                     augment=Augment(hflip=True, views=1))
    assert "shared" not in flipped.history.cache[0] and flipped.history.cache[0].startswith("features cached")


def test_one_changed_weight_value_gives_the_prefix_a_new_key():
    """Cached features and exported engines are keyed by prefix.fingerprint: moving a single weight of the
    prefix by one float step (a rounded sum of the weights cannot see it) means a new key for both, so
    neither is reused for other weights; the memory layout alone is no change."""
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)
    x = torch.randn(8, 3, 16, 16)  # (B, 3, H, W)
    loader = DataLoader(TensorDataset(x, torch.arange(8) % 2), batch_size=4)
    stubs = find_prefix(model, x[:4]).stubs
    key, export_key = fingerprint(model, stubs), engines.export_key(model, stubs, x)
    pool: dict = {}
    first, _ = feature_cache.build(model, loader, loader, torch.device("cpu"), 0, pool=pool, engine="torch")
    again, _ = feature_cache.build(model, loader, loader, torch.device("cpu"), 0, pool=pool, engine="torch")
    assert not first.shared and again.shared
    model.to(memory_format=torch.channels_last)
    assert fingerprint(model, stubs) == key
    with torch.no_grad():
        w = model[0].weight
        w[0, 0, 0, 0] = torch.nextafter(w[0, 0, 0, 0], torch.tensor(float("inf")))  # one float step
    assert fingerprint(model, stubs) != key and engines.export_key(model, stubs, x) != export_key
    moved, _ = feature_cache.build(model, loader, loader, torch.device("cpu"), 0, pool=pool, engine="torch")
    assert not moved.shared


def test_a_smaller_training_set_inside_a_cached_one_reuses_its_features(synthetic):
    """A study's smaller fraction (a nested subset of the training images, the same validation images) takes
    its features as rows of the larger set's cache: the same numbers a pass of its own computes, in its order."""
    from torch.utils.data import DataLoader

    model, info = models.create_model("test_resnet", 3, weights_choice="random", img_size=64)
    freezing.apply(model, freezing.preset(model, "head")[0])
    report = data.scan_folder(synthetic)
    train, val = data.split(report.items, 0.2, 0)
    half = data.fraction_of(train, 0.5, 0)
    tf = eval_transform(info.data_config)

    def build(items, pool):
        loaders = [DataLoader(datasets.ImageDataset(i, tf), batch_size=5) for i in (items, val)]
        return feature_cache.build(model, *loaders, torch.device("cpu"), 0, pool=pool, engine="torch")[0]

    pool: dict = {}
    full = build(train, pool)
    shared, own = build(half, pool), build(half, None)
    assert not full.shared and shared.shared and not own.shared
    for split in ("train", "val"):
        got, want = getattr(shared, split).dataset.tensors, getattr(own, split).dataset.tensors
        assert got[0].shape == want[0].shape and torch.equal(got[1], want[1])  # same images, same order
        assert torch.allclose(got[0], want[0], atol=1e-5, rtol=1e-4)  # the same numbers


def test_a_longer_prefix_continues_from_a_shorter_ones_cached_output(synthetic):
    """A study's head-only run after its depth-1 run: the longer frozen prefix is computed from the depth-1
    cut's cached tensors (no image decoded again), and gives the numbers its own pass over the images gives."""
    from torch.utils.data import DataLoader

    model, info = models.create_model("test_resnet", 3, weights_choice="random", img_size=64)
    report = data.scan_folder(synthetic)
    train, val = data.split(report.items, 0.2, 0)
    tf = eval_transform(info.data_config)

    def build(strategy, pool):
        freezing.apply(model, freezing.preset(model, strategy, thaw_last=1)[0])
        loaders = [DataLoader(datasets.ImageDataset(i, tf), batch_size=5) for i in (train, val)]
        return feature_cache.build(model, *loaders, torch.device("cpu"), 0, pool=pool, engine="torch")[0]

    pool: dict = {}
    deeper = build("partial", pool)
    chained, own = build("head", pool), build("head", None)
    assert len(deeper.prefix.stubs) < len(chained.prefix.stubs) == len(own.prefix.stubs)
    assert chained.continued == deeper.prefix.stubs[-1] and "continued from" in chained.describe()
    for split in ("train", "val"):
        got, want = getattr(chained, split).dataset.tensors, getattr(own, split).dataset.tensors
        assert got[0].shape == want[0].shape and torch.equal(got[1], want[1])
        assert torch.allclose(got[0], want[0], atol=1e-5, rtol=1e-4)  # the same numbers


def test_convnets_train_in_channels_last_unless_their_forward_refuses_it(synthetic):
    class Viewer(torch.nn.Module):  # flattens its maps with .view: fails on channels_last tensors
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.fc = torch.nn.Linear(4 * 62 * 62, 3)

        def forward(self, x):
            y = self.conv(x)
            return self.fc(y.view(y.shape[0], -1))

    items = data.scan_folder(synthetic).items
    cfg = models.create_model("test_resnet", 3, weights_choice="random")[1].data_config.with_size(64)
    ds = datasets.ImageDataset(items, eval_transform(cfg))
    net = models.create_model("test_resnet", 3, weights_choice="random")[0]
    assert training._memory_format(net, ds, torch.device("cpu")) is torch.channels_last
    assert memory_format_of(net) is torch.channels_last
    viewer = Viewer()
    assert training._memory_format(viewer, ds, torch.device("cpu")) is torch.contiguous_format
    assert viewer.conv.weight.is_contiguous()
    result = _train(synthetic, "test_resnet", "partial", True, epochs=1)
    assert all(p.is_contiguous() for p in result.model.parameters())  # handed back in the usual format


def test_a_residual_block_is_never_cut_in_half():
    """The first random module sits inside a residual block (x + drop(f(x))): the block must run whole,
    since a stub for f would also replace the x its forward adds back."""
    from torchvision.ops import StochasticDepth

    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU())
            self.drop = StochasticDepth(0.2, "row")

        def forward(self, x):
            return x + self.drop(self.block(x))

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), Residual(), Residual(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 2))
    for m in list(model)[:3]:
        m.requires_grad_(False)
    x = torch.randn(4, 3, 16, 16)
    prefix = find_prefix(model, x)
    assert prefix.boundary == "1.drop" and prefix.stubs == ["0"]
    assert reproduces(model, prefix, x)
    bad = Prefix(["0", "1.block"], "1.drop")  # the cut the old rule made
    with torch.no_grad():
        model[5].weight.mul_(1e-3)  # tiny logits, as with a random head: the check is relative
    assert not reproduces(model, bad, x)


def test_caching_hands_every_module_its_own_train_flag_back():
    """find_prefix, reproduces, build and the channels_last probe run in eval, then give each module its own
    flag back (_modes.inference): a layer set to eval on its own stays in eval, and a frozen stage's
    stilled stochastic depth still drops nothing in the next training forward."""
    import timm
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    model = timm.create_model("test_convnext", num_classes=3, drop_path_rate=0.3)  # residual DropPath per block
    freezing.apply(model, freezing.preset(model, "partial", thaw_last=1)[0])  # stages.3 and the head train
    stilled = [model.get_submodule(n) for n in freezing.report(model).stilled if n.endswith("drop_path")]
    model.train()
    by_hand = model.stages[3].blocks[0].drop_path
    by_hand.eval()  # a trained stage's layer set to eval on its own: model.train(was) would switch it back on
    flags = lambda: {n: m.training for n, m in model.named_modules()}  # noqa: E731
    before = flags()
    x = torch.randn(8, 3, 64, 64)  # (B, 3, H, W)
    ds = TensorDataset(x, torch.arange(8) % 3)
    prefix = find_prefix(model, x[:4])
    assert flags() == before
    assert reproduces(model, prefix, x[:4])
    assert flags() == before
    cache, why = feature_cache.build(model, DataLoader(ds, batch_size=4), DataLoader(ds, batch_size=4),
                               torch.device("cpu"), seed=0)
    assert cache is not None, why
    assert flags() == before
    training._memory_format(model, ds, torch.device("cpu"))
    assert flags() == before
    assert len(stilled) >= 3 and all(m.drop_prob > 0 for m in stilled) and not by_hand.training
    with torch.no_grad():
        a, b = (model.stages[:3](model.stem(x)) for _ in range(2))  # the frozen stages, in train mode
    assert torch.equal(a, b)  # deterministic: their stochastic depth is still off


def test_forward_seconds_times_one_batch_after_a_warm_up_and_puts_flags_back(monkeypatch):
    """views.base.forward_seconds (the CAM page's cost estimate; here until views get their own test file): a
    warm-up on 2 images, then n images timed once, per image; eval inside, each module's own flag back after."""
    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 3)
            self.drop = torch.nn.Dropout()

        def forward(self, x):
            seen.append((tuple(x.shape), self.training, self.drop.training, torch.is_grad_enabled()))
            return self.drop(self.conv(x))

    model = Probe().train()
    model.drop.eval()  # set to eval on its own: stays so
    clock = iter([100.0, 103.2])
    monkeypatch.setattr(view_base.time, "perf_counter", lambda: next(clock))
    assert view_base.forward_seconds(model, (3, 8, 8), n=16) == pytest.approx(0.2)
    assert seen == [((2, 3, 8, 8), False, False, False), ((16, 3, 8, 8), False, False, False)]
    assert model.training and model.conv.training and not model.drop.training


class _SlowDecode(torch.utils.data.Dataset):
    """Images that take `decode` seconds each to load; the label tells the process that loaded it: its id
    x 100 + its nice level."""

    def __init__(self, decode: float = 0.01):
        self.decode = decode

    def __len__(self):
        return 24

    def __getitem__(self, i):
        import os
        import time

        time.sleep(self.decode)
        return torch.full((3, 8, 8), float(i)), os.getpid() * 100 + os.nice(0)


class _SlowPrefix(torch.nn.Module):
    """A frozen layer that takes 20 ms a batch: a prefix slower than decoding."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        import time

        time.sleep(0.02)
        return self.conv(x)


def _decode_pids(cache, nice: bool = False) -> list[int]:
    labels = [int(p) for split in (cache.train, cache.val) for p in split.dataset.tensors[1]]
    return [p % 100 if nice else p // 100 for p in labels]


def test_a_pass_whose_decoding_is_cheaper_than_its_prefix_decodes_in_line():
    import os

    model = torch.nn.Sequential(_SlowPrefix(), torch.nn.Flatten(), torch.nn.Linear(144, 2))
    model[0].requires_grad_(False)
    loader = torch.utils.data.DataLoader(_SlowDecode(0.0), batch_size=4)
    cache, why = feature_cache.build(model, loader, loader, torch.device("cpu"), 0, engine="torch")
    assert cache is not None, why
    assert set(_decode_pids(cache)) == {os.getpid()} and cache.decode_workers == 0
    assert "in line" in cache.describe()


def test_the_caching_pass_decodes_in_worker_processes_and_times_decoding():
    import os

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(144, 2))
    model[0].requires_grad_(False)
    loader = torch.utils.data.DataLoader(_SlowDecode(), batch_size=4)  # no workers of its own
    assert decoding.workers_for(24, 4) >= 1 and decoding.workers_for(8, 4) == 0
    cache, why = feature_cache.build(model, loader, loader, torch.device("cpu"), 0, engine="torch")
    assert cache is not None, why
    pids = _decode_pids(cache)
    # decoding (10 ms an image) is slower than this prefix: the first batch, measured in line, says so,
    # and every later image is loaded in a worker, not in our process
    assert pids[:4] == [os.getpid()] * 4 and os.getpid() not in pids[4:] and cache.decode_workers >= 1
    assert cache.decode_seconds >= 2 * 24 * 0.01  # both splits' decoding, summed over their images
    line = cache.describe()  # "run once by torch[, 4 images a call] (asked for), ..."
    assert "decoding" in line and "run once by torch" in line and "(asked for)" in line, line
    assert "overlapped" in cache.describe()
    assert set(_decode_pids(cache, nice=True)[4:]) == {19}  # the workers yield to the prefix
    # the features are those of the images in order, both splits (a batch may straddle the two)
    x = torch.stack([_SlowDecode()[i][0] for i in range(24)])
    with torch.no_grad():
        want = model[1](model[0](x))
    assert torch.allclose(cache.val.dataset.tensors[0], want, atol=1e-6)
