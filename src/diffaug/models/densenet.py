"""DenseNet-121 from torchvision.

The head is `.classifier`. The paper assigned `.fc`, which DenseNet does not use, so it trained the
ImageNet 1000-way output; both variants here put the num_classes Linear in `.classifier`.
cifar: the 7x7/2 conv0 + max-pool0 stem becomes one 3x3/1 conv (64 channels, as torchvision's).
"""
from __future__ import annotations

import torchvision
from torch import nn


def build_densenet(name: str, variant: str, num_classes: int) -> nn.Module:
    if variant == "paper":
        model = torchvision.models.densenet121(weights=None)
        model.classifier = nn.Linear(model.classifier.in_features, num_classes)
        return model
    model = torchvision.models.densenet121(weights=None, num_classes=num_classes)
    model.features.conv0 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.features.conv0.weight)  # torchvision's DenseNet conv init
    model.features.pool0 = nn.Identity()
    return model
