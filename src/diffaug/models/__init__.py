"""The one model registry: `build_model(name, variant, num_classes)`.

Every architecture is torchvision's own definition, changed only where a variant says so:
  cifar  the 32x32 standard: a 3x3 stride-1 stem and no max-pool, so the last stage still sees 4x4
         feature maps instead of 1x1 (VGG16 gets BatchNorm and a small head, see vgg.py);
  paper  torchvision's ImageNet definition as Paulsen et al. trained it from scratch on 32x32 images,
         with the new num_classes head placed where it belongs (the paper's DenseNet bug is not kept).
torch and torchvision are imported only when a model is built, so `import diffaug.models` stays light.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from diffaug.config import ARCHITECTURES
from diffaug.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

VARIANTS = ("cifar", "paper")


def build_model(name: str, variant: str, num_classes: int) -> "nn.Module":
    """A freshly initialised classifier (uses torch's global RNG: seed it first for reproducible weights)."""
    if name not in ARCHITECTURES:
        raise ConfigError(f"model: got {name!r}; allowed: {' | '.join(ARCHITECTURES)}")
    if variant not in VARIANTS:
        raise ConfigError(f"train.variant: got {variant!r}; allowed: {' | '.join(VARIANTS)}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes: got {num_classes!r}; allowed: an integer >= 2")
    if name.startswith("resnet"):
        from diffaug.models.resnet import build_resnet as build
    elif name.startswith("vgg"):
        from diffaug.models.vgg import build_vgg as build
    else:
        from diffaug.models.densenet import build_densenet as build
    return build(name, variant, num_classes)
