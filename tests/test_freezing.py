import pytest
import torch

from vislab.data import folders as data, datasets
from vislab.models import freezing, factory as models, stages
from vislab.training import loop as training
from vislab.training.loop import Phase, TrainConfig
from vislab.data.transforms import eval_transform


def _loaders(folder, cfg, batch=8):
    report = data.scan_folder(folder)
    train_items, val_items = data.split(report.items, 0.25, seed=0)
    tcfg = TrainConfig(epochs=1, lr=1e-2, batch_size=batch, device="cpu")
    t = eval_transform(cfg.with_size(64))
    return training.make_loaders(datasets.ImageDataset(train_items, t), datasets.ImageDataset(val_items, t), tcfg,
                                 torch.device("cpu"))


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _train(model, info, plan, synthetic, epochs=1):
    train_loader, val_loader = _loaders(synthetic, info.data_config)
    model.train()  # the classic trap: a model-wide train() must not undo BN eval / frozen
    training.fit(model, train_loader, val_loader, [Phase(plan, epochs, 1e-2)],
                 TrainConfig(epochs=epochs, lr=1e-2, batch_size=8, device="cpu"))


def _bn_names(model, stage_names):
    owner = stages.stage_of_modules(model)
    return [n for n, m in model.named_modules()
            if isinstance(m, torch.nn.BatchNorm2d) and owner.get(n) in stage_names]


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "test_convnext", "test_vit"])
def test_frozen_tensors_bit_identical_and_thawed_ones_move(name, synthetic):
    model, info = models.create_model(name, 3, weights_choice="random")
    plan = freezing.preset(model, "partial", thaw_last=1)[0]
    thawed = {s for s, on in plan.trainable.items() if on}
    freezing.apply(model, plan)
    before = _snapshot(model)
    _train(model, info, plan, synthetic)
    after = model.state_dict()
    owner = stages.stage_of_modules(model)
    frozen_keys, moved_keys = [], []
    for stage in stages.stages(model):
        keys = [k for k in before if any(k.startswith(m + ".") for m in stage.modules) or k in stage.params]
        (moved_keys if stage.name in thawed else frozen_keys).extend(keys)
    assert frozen_keys and moved_keys
    for k in frozen_keys:
        assert torch.equal(before[k], after[k]), f"frozen tensor {k} changed"
    weights_moved = [k for k in moved_keys if k.endswith("weight") and not torch.equal(before[k], after[k])]
    assert weights_moved, "no thawed weight moved"
    in_params = {p for stage in stages.stages(model) for p in stage.params}
    orphans = [n for n, _ in model.named_parameters() if n not in in_params and n.rpartition(".")[0] not in owner]
    assert not orphans, f"parameters in no stage (so never checked above): {orphans[:3]}"


@pytest.mark.parametrize("mode", ["train", "eval", "frozen"])
def test_batchnorm_modes_survive_model_train(mode, synthetic):
    model, info = models.create_model("test_resnet", 3, weights_choice="random")
    plan = freezing.plan_for(model, None, bn_thawed=mode)  # everything thawed, BN in `mode`
    freezing.apply(model, plan)
    bns = _bn_names(model, set(plan.trainable))
    before = _snapshot(model)
    _train(model, info, plan, synthetic)
    after = model.state_dict()
    stats_moved = [n for n in bns if not torch.equal(before[f"{n}.running_mean"], after[f"{n}.running_mean"])]
    affine_moved = [n for n in bns if not torch.equal(before[f"{n}.weight"], after[f"{n}.weight"])]
    convs_moved = [k for k in before if "conv" in k and k.endswith("weight") and not torch.equal(before[k], after[k])]
    assert convs_moved  # the thawed convolutions did train
    if mode == "train":
        assert len(stats_moved) == len(bns)
    else:
        assert stats_moved == [], f"running stats moved in BN mode {mode}"
        assert all(torch.equal(before[f"{n}.running_var"], after[f"{n}.running_var"]) for n in bns)
    if mode == "frozen":
        assert affine_moved == []
    else:
        assert len(affine_moved) == len(bns)


def test_bn_eval_normalises_with_running_stats_in_train_mode():
    model, _ = models.create_model("test_resnet", 3, weights_choice="random")
    freezing.apply(model, freezing.plan_for(model, None, bn_thawed="eval"))
    model.train()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        a = model(x)
        model.eval()
        b = model(x)
    assert torch.allclose(a, b, atol=1e-5)  # BN used running stats both times (no dropout in test_resnet)


def test_report_counts_and_moving_buffers():
    model, _ = models.create_model("test_resnet", 3, weights_choice="random")
    head_only = freezing.preset(model, "head")[0]
    freezing.apply(model, head_only)
    rep = freezing.report(model)
    head = model.get_submodule("fc")
    assert rep.trainable_params == sum(p.numel() for p in head.parameters())
    assert rep.trainable_params + rep.frozen_params == sum(p.numel() for p in model.parameters())
    assert rep.moving_bn_buffers == []
    full = freezing.preset(model, "scratch")[0]
    freezing.apply(model, full)
    rep = freezing.report(model)
    assert rep.frozen_params == 0
    assert len(rep.moving_bn_buffers) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_single_module_override():
    model, _ = models.create_model("test_resnet", 3, weights_choice="random")
    plan = freezing.preset(model, "head")[0]
    plan.modules["layer4.0.conv1"] = True
    freezing.apply(model, plan)
    names = freezing.report(model).trainable_tensors
    assert "layer4.0.conv1.weight" in names and "layer4.0.conv2.weight" not in names


def test_presets():
    model, _ = models.create_model("test_convnext", 3, weights_choice="random")
    body = [s.name for s in stages.stages(model) if s.name != stages.HEAD]
    (partial,) = freezing.preset(model, "partial", thaw_last=2)
    assert [s for s, on in partial.trainable.items() if on] == body[-2:] + [stages.HEAD]
    two = freezing.preset(model, "two-phase")
    assert len(two) == 2 and all(two[1].trainable.values()) and sum(two[0].trainable.values()) == 1
    phases = training.phases_for("two-phase", two, 6, 1e-3, 0.2)
    assert [p.epochs for p in phases] == [2, 4] and phases[1].lr == pytest.approx(2e-4)
    with pytest.raises(ValueError):
        freezing.preset(model, "sideways")


def test_surgical_trains_one_stage_and_the_head():
    """Surgical (Lee et al. 2023): the N-th stage from the head and the head train, nothing else; a count past
    the stem means the stem. After training, every other stage's parameters are bit-identical."""
    model, _ = models.create_model("test_convnext", 3, weights_choice="random")
    body = [s.name for s in stages.stages(model) if s.name != stages.HEAD]
    assert len(body) >= 3
    for n in (1, 2, len(body)):
        (plan,) = freezing.preset(model, "surgical", thaw_last=n)
        assert [s for s, on in plan.trainable.items() if on] == [body[-n], stages.HEAD]
        assert plan.bn[body[-n]] == "eval" and all(plan.bn[s] == "frozen" for s in body if s != body[-n])
    assert freezing.preset(model, "surgical", thaw_last=99)[0].trainable[body[0]]
    with pytest.raises(ValueError):
        freezing.preset(model, "surgical", thaw_last=0)
    (plan,) = freezing.preset(model, "surgical", thaw_last=2)
    freezing.apply(model, plan)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    opt.step()
    owner = stages.stage_of_modules(model)
    moved = {owner.get(k.rsplit(".", 1)[0]) for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert moved == {body[-2], stages.HEAD}


def test_stage_names_are_real_modules():
    for name in ["vgg16_bn", "alexnet", "mobilenet_v2", "test_vit"]:
        with torch.device("meta"):
            model = models.build_architecture(name)
        for stage in stages.stages(model):
            for m in stage.modules:
                model.get_submodule(m)
            for p in stage.params:
                model.get_parameter(p)
    with torch.device("meta"):
        vgg = models.build_architecture("vgg16_bn")
    assert [s.name for s in stages.stages(vgg)][:2] == ["features.0-6", "features.7-13"]


def test_frozen_stages_drop_nothing_trained_ones_still_do():
    """Like Keras' base_model(x, training=False): a frozen stage is a fixed feature extractor, so its
    stochastic depth and dropout are off in model.train(); a thawed stage keeps them."""
    from vislab.training import prefix as frozen

    torch.manual_seed(0)
    from torchvision.models import efficientnet_b0

    net = efficientnet_b0(num_classes=3)  # torchvision: StochasticDepth in every block
    freezing.apply(net, freezing.preset(net, "head")[0])
    net.train()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = net.features(x), net.features(x)
    assert torch.equal(a, b)  # deterministic although in train mode
    prefix = frozen.find_prefix(net, x)
    assert prefix.boundary.startswith("classifier")  # the whole trunk can be cached
    freezing.apply(net, freezing.preset(net, "partial", thaw_last=2)[0])  # features.7 and features.8
    thawed = [m for n, m in net.named_modules() if freezing.is_stochastic(m) and n.startswith("features.7")]
    frozen = [m for n, m in net.named_modules() if freezing.is_stochastic(m) and n.startswith("features.2")]
    assert thawed and not any(m._vislab_still for m in thawed)
    assert frozen and all(m._vislab_still for m in frozen)
    stilled = freezing.report(net).stilled
    assert stilled and all(not n.startswith(("features.7", "features.8")) for n in stilled)
    over = freezing.FreezePlan.from_dict({**freezing.preset(net, "head")[0].to_dict(),
                                          "modules": {"features.2": True}})
    freezing.apply(net, over)  # a single-module override thaws a block: its drops come back
    assert not any(m._vislab_still for m in frozen)


def test_training_mode_puts_every_modules_own_flag_back():
    from vislab._modes import training_mode

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Dropout())
    model.train()
    model[1].eval()  # a BatchNorm someone set to eval on its own: model.train(was) would switch it back on
    with training_mode(model, False):
        assert not any(m.training for m in model.modules())
    assert model.training and not model[1].training and model[2].training
    with pytest.raises(RuntimeError), training_mode(model, True):
        assert model[1].training
        raise RuntimeError("inside the block")
    assert model.training and not model[1].training  # put back after an error too
