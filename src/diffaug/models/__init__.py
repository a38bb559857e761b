"""The one model registry: `build_model(name, variant, num_classes)`.

Every architecture is torchvision's own definition, changed only where a variant says so:
  paper  torchvision's ImageNet definition as Paulsen et al. trained it from scratch on 32x32 images,
         with a fresh num_classes Linear where the head belongs (`HEADS`). The paper assigned DenseNet's
         head to `.fc`, which DenseNet does not use, so it trained the 1000-way output: not kept here.
  cifar  the 32x32 standard: the 7x7/2 conv and max-pool stem (`STEMS`) become one 3x3/1 conv, so the
         last stage still sees 4x4 feature maps instead of 1x1. VGG16 becomes `vgg16_bn` (plain VGG16 trains
         poorly from scratch at lr 0.1) with the usual CIFAR head, a global average pool and one Linear(512,
         num_classes): its five max-pools leave 1x1x512 features, which the 7x7 pool would copy 49 times.
"""
from __future__ import annotations

import torchvision
from torch import nn

from diffaug.config import ARCHITECTURES
from diffaug.errors import ConfigError

VARIANTS = ("cifar", "paper")
HEADS = {"resnet18": "fc", "resnet34": "fc", "resnet50": "fc", "vgg16": "classifier.6", "densenet121": "classifier"}
STEMS = {"resnet18": ("conv1", "maxpool"), "resnet34": ("conv1", "maxpool"), "resnet50": ("conv1", "maxpool"),
         "densenet121": ("features.conv0", "features.pool0")}
assert set(HEADS) == set(ARCHITECTURES)  # params.yaml's allowed names are exactly the registry's


def build_model(name: str, variant: str, num_classes: int) -> nn.Module:
    """A freshly initialised classifier (uses torch's global RNG: seed it first for reproducible weights)."""
    if name not in HEADS or variant not in VARIANTS:  # params are checked by config, a model file's metadata is not
        raise ConfigError(f"model {name!r}, variant {variant!r}; allowed: {' | '.join(ARCHITECTURES)}; {' | '.join(VARIANTS)}")
    if variant == "paper":
        model = getattr(torchvision.models, name)(weights=None)
        head = model.get_submodule(HEADS[name])
        model.set_submodule(HEADS[name], nn.Linear(head.in_features, num_classes))
        return model
    if name == "vgg16":
        model = torchvision.models.vgg16_bn(weights=None)
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        model.classifier = nn.Linear(512, num_classes)
        return model
    model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    conv, pool = STEMS[name]
    stem = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    if name == "densenet121":  # each family's own conv init, as torchvision applies it to the stem it replaces
        nn.init.kaiming_normal_(stem.weight)
    else:
        nn.init.kaiming_normal_(stem.weight, mode="fan_out", nonlinearity="relu")
    model.set_submodule(conv, stem)
    model.set_submodule(pool, nn.Identity())
    return model
