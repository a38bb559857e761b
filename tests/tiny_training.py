"""What the training-loop tests share: toy images, a two-layer network standing in for ResNet-18 (the
loop's semantics do not depend on the architecture; test_train.py keeps one ResNet-18 smoke test),
torch.cuda's capture API faked on a CPU, and a counter of host reads."""
import collections
import contextlib
import types

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

CPU = torch.device("cpu")


def toy(n=37, size=8, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rng.integers(0, classes, n)


def tiny_net(name: str, variant: str, num_classes: int) -> torch.nn.Module:
    """Two convolutions with BatchNorm (batch statistics and an integer batch counter, as in ResNet) and a linear head."""
    return torch.nn.Sequential(collections.OrderedDict(
        conv1=torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), bn1=torch.nn.BatchNorm2d(8), relu1=torch.nn.ReLU(),
        conv2=torch.nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), bn2=torch.nn.BatchNorm2d(16),
        relu2=torch.nn.ReLU(), pool=torch.nn.AdaptiveAvgPool2d(1), flatten=torch.nn.Flatten(),
        fc=torch.nn.Linear(16, num_classes)))


@pytest.fixture
def tiny_network(monkeypatch):
    """Every model the trainer builds, and every trained-model file loads, is tiny_net."""
    monkeypatch.setattr("diffaug.train.loop.build_model", tiny_net)
    monkeypatch.setattr("diffaug.formats.classifier.build_model", tiny_net)


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different[:5]}"


def fake_cuda_capture(monkeypatch, graph_class, graph=lambda g: contextlib.nullcontext(),
                      get_rng_state=lambda device=None: torch.get_rng_state()) -> None:
    """torch.cuda's capture API on a CPU: device and stream contexts that do nothing, `graph_class` as
    CUDAGraph, `graph` as the capture context, and the CUDA RNG state read and set through the CPU's."""
    stream = types.SimpleNamespace(wait_stream=lambda other: None)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: stream)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", graph_class)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.cuda, "get_rng_state", get_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device=None: torch.set_rng_state(state))


class HostReads(TorchDispatchMode):
    """Counts reads of a tensor's value by the host (.item(), bool(), float()): each is a device sync on a
    GPU, which a CUDA graph cannot capture. Works on a CPU, where the same ops dispatch the same way."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))
