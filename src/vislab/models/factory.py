"""Creating a model: architecture, real weights, a new head, the input size, and the model's own data config.

`create_model` is the one builder: a job's model (`training.experiment.prepare`), a reloaded run
(`training.runs.rebuild`) and a command's `--model` all come from it."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from vislab.models import catalog, heads, weights
from vislab.models.build import build_architecture
from vislab._modes import inference
from vislab.models.weights import WeightsError, WeightsStatus
from vislab.data.config import DataConfig

WEIGHT_CHOICES = ("auto", "pretrained", "random")


@dataclass
class ModelInfo:
    name: str
    source: str  # "torchvision" | "timm"
    head: str  # dotted module name of the classifier
    head_kind: str  # "linear" | "mlp" | "original"
    num_classes: int
    data_config: DataConfig
    weights: WeightsStatus  # where the weights came from; source None means random init
    notes: list[str] = field(default_factory=list)

    @property
    def pretrained(self) -> bool:
        return self.weights.available


def fit_input_size(model: nn.Module, name: str, size: int, check: bool = True) -> None:
    """Make the model take size x size images. timm's `set_input_size` resamples a ViT's or Swin's position
    embeddings; a convolutional network needs nothing. With `check`, one forward at that size proves it,
    and a model that cannot (a fixed-size one) raises ValueError saying so."""
    if hasattr(model, "set_input_size"):
        current = getattr(getattr(model, "patch_embed", None), "img_size", None)
        if current is None or tuple(current) != (size, size):
            try:
                model.set_input_size(img_size=(size, size))
            except Exception as exc:  # timm raises assorted errors for sizes a model cannot take
                raise ValueError(f"{name} cannot take {size}x{size} input: {str(exc).splitlines()[0]}") from None
    if not check:
        return
    try:
        with inference(model):
            model(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    except Exception as exc:
        raise ValueError(f"{name} cannot take {size}x{size} input ({str(exc).splitlines()[0][:200]}): use "
                         "its own input size") from None


def data_config(model: nn.Module, name: str, source: str, weights_file: Path | None = None) -> DataConfig:
    """Input size, mean/std, interpolation and crop from the model's own config, never hard-coded."""
    if source == "timm":
        from timm.data import resolve_model_data_config

        cfg = resolve_model_data_config(model)
        return DataConfig(tuple(cfg["input_size"]), tuple(cfg["mean"]), tuple(cfg["std"]),
                          cfg["interpolation"], float(cfg["crop_pct"]))
    enum = weights.torchvision_weights(name)
    used = [w for w in enum if weights_file is not None and w.url.rsplit("/", 1)[-1] == weights_file.name]
    preset = (used or enum)[0].transforms()  # ImageClassification of the weights in use, else DEFAULT
    crop, resize = preset.crop_size[0], preset.resize_size[0]
    return DataConfig((3, crop, crop), tuple(preset.mean), tuple(preset.std), preset.interpolation.value,
                      crop / resize)


def _load_timm(name: str, file: Path, file_classes: int | None) -> nn.Module:
    import timm

    overlay = {"file": str(file)}
    kwargs = {}
    if file_classes:  # a fine-tuned file: keep its own head instead of letting timm drop it
        overlay["num_classes"] = kwargs["num_classes"] = file_classes
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)


def _load_torchvision(name: str, status: WeightsStatus, file_classes: int | None) -> nn.Module:
    if status.source in ("hub", "seeded") and status.path.suffix != ".safetensors":
        # torchvision's own loading path, pointed at the folder that holds the file
        for w in weights.torchvision_weights(name):
            if w.url.rsplit("/", 1)[-1] == status.path.name:
                state = torch.hub.load_state_dict_from_url(w.url, model_dir=str(status.path.parent),
                                                           map_location="cpu", weights_only=True)
                break
        else:
            state = weights.read_state_dict(status.path)
    else:
        state = weights.read_state_dict(status.path)
    model = build_architecture(name, num_classes=file_classes)
    if getattr(model, "aux_logits", None) is False:  # pretrained files carry the auxiliary heads: drop them
        state = {k: v for k, v in state.items() if k.split(".")[0] not in ("aux1", "aux2", "AuxLogits")}
    weights.check_fits(model, state)
    model.load_state_dict(state, strict=False)  # num_batches_tracked may be absent in old files
    return model


def _file_classes(name: str, status: WeightsStatus) -> int | None:
    record = weights.read_manifest().get(name) or {}
    if record.get("file") and Path(record["file"]) == status.path:
        return record.get("num_classes")
    return None


def load_pretrained(name: str, status: WeightsStatus) -> nn.Module:
    source = catalog.source_of(name)
    classes = _file_classes(name, status)
    try:
        if source == "timm":
            return _load_timm(name, status.path, classes)
        return _load_torchvision(name, status, classes)
    except WeightsError as exc:
        raise WeightsError(f"{status.path.name}: {exc}") from None
    except RuntimeError as exc:  # load_state_dict size mismatch and the like
        raise WeightsError(f"{status.path.name} does not fit {name}: {str(exc).splitlines()[0]}") from None


def create_model(
    name: str = catalog.DEFAULT_MODEL,
    num_classes: int | None = None,
    head: str = "linear",
    weights_choice: str = "auto",
    img_size: int | None = None,
    base: tuple[nn.Module, ModelInfo] | None = None,
    check_size: bool = True,
) -> tuple[nn.Module, ModelInfo]:
    """The one model builder: every job, page, reloaded run and command gets its model here, always in one
    order: the architecture with its weights, then the new head, then the input size.

    weights_choice: "pretrained" (fail with a clear WeightsError when none are on this machine),
    "random" (random init, for training from scratch or before a saved state is loaded), "auto"
    (pretrained if available, else random, and the returned info says so). `num_classes` None keeps the
    original head (e.g. ImageNet's 1000). `img_size`: the input size (a ViT resamples its position
    embeddings; a model that cannot take it raises ValueError); `check_size` False skips the forward that
    proves it (a reloaded run took that size when it trained). `base`: (model, info) of `name` as this
    function built it with its original head (the app's cached pretrained model): a copy of it is used,
    and `weights_choice` is not looked at.
    """
    if base is None:
        model, info = _backbone(name, weights_choice)
    else:
        model, info = copy.deepcopy(base[0]), dataclasses.replace(base[1], notes=list(base[1].notes))
    if num_classes is not None:
        model = heads.attach_head(model, num_classes, head)
        info = dataclasses.replace(info, head=heads.head_name(model), head_kind=head,
                                   num_classes=heads.num_outputs(model))
    if img_size and img_size != info.data_config.size:
        fit_input_size(model, name, img_size, check=check_size)
    info.data_config = info.data_config.with_size(img_size)
    return model, info


def _backbone(name: str, weights_choice: str) -> tuple[nn.Module, ModelInfo]:
    """`name` with real weights when there are any, and its original head."""
    if weights_choice not in WEIGHT_CHOICES:
        raise ValueError(f"weights must be one of {', '.join(WEIGHT_CHOICES)}")
    source = catalog.source_of(name)
    status = weights.status(name, source) if weights_choice != "random" else WeightsStatus(name, None, None)
    notes = []
    if weights_choice == "pretrained" and not status.available:
        raise WeightsError(
            f"no pretrained weights for {name} on this machine. Import a file (`vislab weights import FILE "
            f"--model {name}`), download them when online (`vislab weights pull {name}`), or use random init."
        )
    if status.available:
        model = load_pretrained(name, status)
    else:
        model = build_architecture(name)
        if weights_choice == "auto":
            notes.append(f"{name}: no pretrained weights here, using random init")
    cfg = data_config(model, name, source, status.path)
    record = weights.read_manifest().get(name) or {}
    if status.path is not None and record.get("file") == str(status.path) and record.get("data_config"):
        cfg = dataclasses.replace(cfg, **record["data_config"])  # how that file's weights were trained
    info = ModelInfo(name, source, heads.head_name(model), "original", heads.num_outputs(model), cfg, status, notes)
    return model, info
