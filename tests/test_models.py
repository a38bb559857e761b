"""models: every architecture x variant builds, trains a step at 32x32, and has its head where it belongs."""

import numpy as np
import pytest
import torch
from torch import nn

from diffaug.config import ARCHITECTURES
from diffaug.errors import ConfigError, UserError
from diffaug.formats.splits import check_arrays
from diffaug.models import VARIANTS, build_model

NUM_CLASSES = 7  # neither 10 nor 1000, so a head left at torchvision's default cannot pass


def head_of(model: nn.Module, name: str, variant: str) -> nn.Linear:
    if name.startswith("resnet"):
        return model.fc
    if name == "densenet121":
        return model.classifier
    return model.classifier[6] if variant == "paper" else model.classifier


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_builds_and_trains_one_step(name, variant):
    torch.manual_seed(0)
    model = build_model(name, variant, NUM_CLASSES)
    head = head_of(model, name, variant)
    assert isinstance(head, nn.Linear) and head.out_features == NUM_CLASSES
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 6])
    before = head.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    logits = model(x)
    assert logits.shape == (2, NUM_CLASSES)
    loss = nn.functional.cross_entropy(logits, y)
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    assert not torch.equal(before, head.weight), "the head did not train"


def test_densenet_paper_head_is_the_classifier_not_a_dangling_fc():
    model = build_model("densenet121", "paper", NUM_CLASSES)
    assert model.classifier.out_features == NUM_CLASSES
    assert not hasattr(model, "fc")  # the paper's `.fc` assignment changed nothing the forward pass uses
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_stems(name):
    cifar, paper = build_model(name, "cifar", 10), build_model(name, "paper", 10)
    assert (cifar.conv1.kernel_size, cifar.conv1.stride) == ((3, 3), (1, 1)) and isinstance(cifar.maxpool, nn.Identity)
    assert (paper.conv1.kernel_size, paper.conv1.stride) == ((7, 7), (2, 2)) and isinstance(paper.maxpool, nn.MaxPool2d)
    # cifar keeps 4x4 maps in the last stage at 32x32; the ImageNet stem shrinks them to 1x1
    body = lambda m, x: m.layer4(m.layer3(m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x))))))))
    x = torch.randn(2, 3, 32, 32)
    assert body(cifar.eval(), x).shape[-2:] == (4, 4)
    assert body(paper.eval(), x).shape[-2:] == (1, 1)


def test_densenet_and_vgg_variants():
    dense = build_model("densenet121", "cifar", 10)
    assert dense.features.conv0.kernel_size == (3, 3) and isinstance(dense.features.pool0, nn.Identity)
    assert build_model("densenet121", "paper", 10).features.conv0.kernel_size == (7, 7)
    vgg = build_model("vgg16", "cifar", 10)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in vgg.features) == 13
    assert isinstance(vgg.classifier, nn.Linear) and vgg.classifier.in_features == 512
    paper = build_model("vgg16", "paper", 10)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in paper.features)  # torchvision's plain vgg16


def test_same_seed_same_initial_weights():
    torch.manual_seed(3)
    a = build_model("resnet18", "cifar", 10).state_dict()
    torch.manual_seed(3)
    b = build_model("resnet18", "cifar", 10).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_names_are_config_errors():
    with pytest.raises(ConfigError, match="resnet18 \\| resnet34"):
        build_model("resnet101", "cifar", 10)
    with pytest.raises(ConfigError, match="cifar \\| paper"):
        build_model("resnet18", "imagenet", 10)
    # fewer than 2 classes never reaches build_model: every split's classes are checked first
    with pytest.raises(UserError, match="'classes' must hold at least 2 non-empty names"):
        check_arrays(np.zeros((1, 2, 2, 3), np.uint8), np.zeros(1, int), np.array(["a"]), "x.npz")


def test_the_registry_covers_exactly_the_architectures_params_allow():
    from diffaug.config import ARCHITECTURES
    from diffaug.models import HEADS

    assert set(HEADS) == set(ARCHITECTURES)
