"""VGG16 from torchvision.

cifar: `vgg16_bn` (BatchNorm after every conv: plain VGG16 trains poorly from scratch at lr 0.1). At 32x32
its five max-pools leave 1x1x512 features, so torchvision's 7x7 adaptive pool (which would copy the one
pixel 49 times) and its 25088-4096-4096 head (120M parameters for 10 classes) are replaced by a global
average pool and one Linear(512, num_classes): the usual CIFAR VGG head.
paper: plain `vgg16` as the paper used it, with classifier[6] replaced by a num_classes Linear.
"""
from __future__ import annotations

import torchvision
from torch import nn


def build_vgg(name: str, variant: str, num_classes: int) -> nn.Module:
    if variant == "paper":
        model = torchvision.models.vgg16(weights=None)
        model.classifier[6] = nn.Linear(model.classifier[6].in_features, num_classes)
        return model
    model = torchvision.models.vgg16_bn(weights=None)
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Linear(512, num_classes)
    return model
