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


@pytest.fixture
def tiny_clip_cache(tmp_path, monkeypatch) -> Path:
    """A random-weight CLIP saved where the Hugging Face cache keeps openai/clip-vit-base-patch32, with the
    cache pointed there: the same local_files_only loading as real weights. Returns its snapshot folder."""
    import huggingface_hub.constants
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from diffaug.sandbox.tiny import TINY_CLIP, byte_level_tokenizer

    tokenizer = byte_level_tokenizer()
    text = dict(vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513, **TINY_CLIP)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=dict(image_size=32, patch_size=8, **TINY_CLIP), projection_dim=16))
    cache, commit = tmp_path / "hf", "0" * 40
    snapshot = cache / "models--openai--clip-vit-base-patch32" / "snapshots" / commit
    model.save_pretrained(snapshot)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(snapshot)
    (cache / "models--openai--clip-vit-base-patch32" / "refs").mkdir()
    (cache / "models--openai--clip-vit-base-patch32" / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return snapshot
