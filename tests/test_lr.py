"""Per-stage learning rates and the LR finder."""

import dataclasses

import pytest
import torch

from vislab.data import folders as data, datasets
from vislab.models import freezing, factory as models, stages
from vislab.training import lr_finder, loop as training
from vislab.data.transforms import eval_transform


def test_layer_decay_gives_geometric_rates_from_the_head():
    model, _ = models.create_model("test_resnet", 3, weights_choice="random")
    freezing.apply(model, freezing.plan_for(model, None))
    opt = training.make_optimizer(model, 1e-2, 1e-4, layer_decay=0.5)
    by_param = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert by_param[id(model.fc.weight)] == pytest.approx(1e-2)
    assert by_param[id(model.layer4[0].conv1.weight)] == pytest.approx(5e-3)
    assert by_param[id(model.layer3[0].conv1.weight)] == pytest.approx(2.5e-3)
    n = len(stages.stages(model))
    assert by_param[id(model.conv1[0].weight)] == pytest.approx(1e-2 * 0.5 ** (n - 1))
    assert len(by_param) == sum(1 for _ in model.parameters())  # every trainable tensor, once
    flat = training.make_optimizer(model, 1e-2, 1e-4)
    assert {g["lr"] for g in flat.param_groups} == {1e-2}


def test_lr_finder_sweeps_suggests_and_leaves_the_model_alone(synthetic):
    model, info = models.create_model("test_resnet", 3, weights_choice="random")
    freezing.apply(model, freezing.preset(model, "partial", thaw_last=1)[0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = data.scan_folder(synthetic)
    tr, va = data.split(report.items, 0.25, 0)
    tf = eval_transform(info.data_config.with_size(64))
    cfg = training.TrainConfig(batch_size=4, device="cpu")
    loaders = training.make_loaders(datasets.ImageDataset(tr, tf), datasets.ImageDataset(va, tf), cfg, torch.device("cpu"))
    sweep = lr_finder.lr_find(model, *loaders, steps=40)
    assert len(sweep.lrs) >= 10 and sweep.lrs == sorted(sweep.lrs)
    assert sweep.lrs[0] <= sweep.suggestion <= sweep.lrs[-1]
    assert sweep.cached.startswith("features cached")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_lr_finder_for_a_model_sweeps_a_resized_copy(synthetic):
    """for_model builds the sweep's job itself (a copy at the chosen size, eval transforms, loaders): the same
    sweep as lr_find on those pieces built by hand, and the model passed in keeps its weights and input size."""
    model, info = models.create_model("test_vit", 3, weights_choice="random")  # 160 px: 64 px needs a resample
    freezing.apply(model, freezing.preset(model, "head")[0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tr, va = data.split(data.scan_folder(synthetic).items, 0.25, 0)
    sweep = lr_finder.for_model(model, info, tr, va, img_size=64, batch=4, seed=2, device="cpu", steps=20)
    assert tuple(model.patch_embed.img_size) == (160, 160)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    by_hand = training.clone_model(model)
    models.fit_input_size(by_hand, info.name, 64)
    tf = eval_transform(info.data_config.with_size(64))
    loaders = training.make_loaders(datasets.ImageDataset(tr, tf), datasets.ImageDataset(va, tf),
                                    training.TrainConfig(batch_size=4), torch.device("cpu"))
    reference = lr_finder.lr_find(by_hand, *loaders, device="cpu", steps=20, seed=2)
    assert sweep.lrs == reference.lrs and sweep.losses == pytest.approx(reference.losses, rel=1e-5)
    fixed = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2 * 158 * 158, 3))
    with pytest.raises(ValueError, match="fixed cannot take 64x64"):  # a fixed-size model says so, not a sweep
        lr_finder.for_model(fixed, dataclasses.replace(info, name="fixed"), tr, va, img_size=64, batch=4, steps=2)


def test_suggestion_is_the_steepest_descent():
    lrs = [10 ** (-6 + i * 0.1) for i in range(60)]
    losses = [2.0] * 20 + [2.0 - 0.05 * i for i in range(1, 16)] + [1.25 - 0.2 * i for i in range(1, 6)] + \
             [0.25 + 0.5 * i for i in range(20)]
    assert lr_finder.suggest(lrs, losses) == pytest.approx(lrs[35], rel=0.3)
