"""ResNet-18/34/50 from torchvision; `cifar` swaps the 7x7/2 stem + max-pool for one 3x3/1 conv."""
from __future__ import annotations

import torchvision
from torch import nn


def build_resnet(name: str, variant: str, num_classes: int) -> nn.Module:
    constructor = getattr(torchvision.models, name)
    if variant == "paper":
        # As the paper: the ImageNet model (1000-way) with its .fc replaced by a fresh num_classes head.
        model = constructor(weights=None)
        model.fc = nn.Linear(model.fc.in_features, num_classes)
        return model
    model = constructor(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's conv init
    model.maxpool = nn.Identity()
    return model
