"""Fixtures shared by several test files."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# CI and developers have the shared data folder beside the checkout.
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10-5k-train.npz"

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def one_thread():
    """Two shared cores; a fixed thread count also keeps CPU float results identical across runs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    """A tiny random-weight Stable Diffusion pipeline saved with save_pretrained."""
    from diffaug.sandbox.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd")
