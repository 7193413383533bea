"""The curated model catalog: plain data that walks the history of image classifiers.

Each entry names a real torchvision or timm model. Any other torchvision or timm name works too
(`lookup` makes an entry for it on the fly); the catalog only adds teaching notes and known facts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class CatalogEntry:
    name: str  # the library's own model name, e.g. "mobilenet_v2" or "vit_tiny_patch16_224"
    source: str  # "torchvision" or "timm"
    family: str  # AlexNet, VGG, ResNet, ...
    year: int  # year of the paper that introduced the family
    params: int  # parameter count with its original 1000-class head
    has_se: bool  # has Squeeze-and-Excitation (channel attention) blocks
    has_attention: bool  # has self-attention blocks
    cam_layer: str  # natural Grad-CAM target: the last spatial feature layer
    gap_linear_head: bool  # head is global average pooling then one linear layer (classic CAM is exact)
    idea: str  # one line on what the family brought

    def to_dict(self) -> dict:
        return asdict(self)


CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry("alexnet", "torchvision", "AlexNet", 2012, 61_100_840, False, False, "features.10", False,
                 "ReLU, dropout and GPUs: the network that started the deep-learning era"),
    CatalogEntry("vgg16_bn", "torchvision", "VGG", 2014, 138_365_992, False, False, "features.40", False,
                 "depth from stacks of small 3x3 convolutions (here with BatchNorm)"),
    CatalogEntry("resnet18", "torchvision", "ResNet", 2015, 11_689_512, False, False, "layer4", True,
                 "skip connections let gradients reach very deep layers"),
    CatalogEntry("resnet50", "torchvision", "ResNet", 2015, 25_557_032, False, False, "layer4", True,
                 "bottleneck residual blocks: deeper at a similar cost"),
    CatalogEntry("mobilenet_v2", "torchvision", "MobileNet", 2018, 3_504_872, False, False, "features.18", True,
                 "inverted residuals with depthwise convolutions: small and fast"),
    CatalogEntry("mobilenet_v3_small", "torchvision", "MobileNet", 2019, 2_542_856, True, False, "features.12",
                 False, "searched architecture with Squeeze-and-Excitation channel attention"),
    CatalogEntry("efficientnet_b0", "timm", "EfficientNet", 2019, 5_288_548, True, False, "bn2", True,
                 "compound scaling of depth, width and resolution; SE in every block"),
    CatalogEntry("tf_efficientnet_lite0", "timm", "EfficientNet", 2020, 4_652_008, False, False, "bn2", True,
                 "EfficientNet for mobile: no SE, ReLU6, fixed stem and head"),
    CatalogEntry("convnext_atto", "timm", "ConvNeXt", 2022, 3_695_520, False, False, "stages.3", False,
                 "a ConvNet modernised with Transformer design choices"),
    CatalogEntry("vit_tiny_patch16_224", "timm", "ViT", 2020, 5_717_416, False, True, "blocks.11.norm1", False,
                 "image as a sequence of 16x16 patches, processed by self-attention"),
)

DEFAULT_MODEL = "mobilenet_v2"

_BY_NAME = {e.name: e for e in CATALOG}


def names() -> list[str]:
    return [e.name for e in CATALOG]


def source_of(name: str) -> str:
    """"torchvision" or "timm" for any model name either library knows; ValueError otherwise."""
    if name in _BY_NAME:
        return _BY_NAME[name].source
    import timm
    import torchvision

    if name in torchvision.models.list_models(module=torchvision.models):
        return "torchvision"
    if timm.is_model(name):
        return "timm"
    close = timm.list_models(f"*{name}*")[:5]
    hint = f" Close timm names: {', '.join(close)}." if close else ""
    raise ValueError(f"unknown model '{name}': not a torchvision or timm model name.{hint}")


def lookup(name: str) -> CatalogEntry | None:
    """The catalog entry for `name`, or None for a model outside the curated list."""
    return _BY_NAME.get(name)
