"""The one model registry: `build_model(name, variant, num_classes)`.

Every architecture is torchvision's own definition, changed only where a variant says so:
  cifar  the 32x32 standard: a 3x3 stride-1 stem and no max-pool, so the last stage still sees 4x4
         feature maps instead of 1x1 (VGG16 gets BatchNorm and a small head, see vgg.py);
  paper  torchvision's ImageNet definition as Paulsen et al. trained it from scratch on 32x32 images,
         with the new num_classes head placed where it belongs (the paper's DenseNet bug is not kept).
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from diffaug.config import ARCHITECTURES
from diffaug.errors import ConfigError
from diffaug.models.densenet import build_densenet
from diffaug.models.resnet import build_resnet
from diffaug.models.vgg import build_vgg

VARIANTS = ("cifar", "paper")
BUILDERS: dict[str, Callable[[str, str, int], nn.Module]] = {
    "resnet18": build_resnet, "resnet34": build_resnet, "resnet50": build_resnet,
    "vgg16": build_vgg, "densenet121": build_densenet,
}
assert set(BUILDERS) == set(ARCHITECTURES)  # params.yaml's allowed names are exactly the registry's


def build_model(name: str, variant: str, num_classes: int) -> nn.Module:
    """A freshly initialised classifier (uses torch's global RNG: seed it first for reproducible weights)."""
    if name not in BUILDERS:
        raise ConfigError(f"model: got {name!r}; allowed: {' | '.join(ARCHITECTURES)}")
    if variant not in VARIANTS:
        raise ConfigError(f"train.variant: got {variant!r}; allowed: {' | '.join(VARIANTS)}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes: got {num_classes!r}; allowed: an integer >= 2")
    return BUILDERS[name](name, variant, num_classes)
