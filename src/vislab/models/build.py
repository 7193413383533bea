"""Building a bare architecture by name: timm's or torchvision's, random weights, no download.

The one place that turns a model name into an nn.Module; `models` adds real weights and a new head on top,
`weights` uses it to check a file against the architecture it claims to be.
"""

from __future__ import annotations

import torch.nn as nn

from vislab.models import catalog


def build_architecture(name: str, num_classes: int | None = None) -> nn.Module:
    """The bare architecture with random weights (`num_classes` None keeps the library's default head)."""
    source = catalog.source_of(name)
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if source == "timm":
        import timm

        return timm.create_model(name, pretrained=False, **kwargs)
    from torchvision.models import get_model

    return _without_aux(get_model(name, weights=None, **kwargs))


def _without_aux(model: nn.Module) -> nn.Module:
    """GoogLeNet / Inception v3 without their auxiliary classifiers (training-only branches that return a
    tuple): the model returns logits in train and eval mode alike, as torchvision's pretrained ones do."""
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for name in ("aux1", "aux2", "AuxLogits"):
            if hasattr(model, name):
                setattr(model, name, None)
    return model
