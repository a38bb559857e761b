"""Trained classifiers: `models/<model>/<mix>/seed-<s>.pt`, written by the train stage, read by evaluate.

The saved network is an `ImageClassifier`: it takes images as stored on disk, a uint8 (or any numeric)
tensor of 0..255 RGB pixels in (N, 3, H, W) layout, and normalises them itself with the per-channel
mean/std of its training mixture (buffers in the state_dict). So evaluation cannot pair a model with
the wrong normalisation: feed `torch.from_numpy(images_nhwc).permute(0, 3, 1, 2)` and take the logits.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffaug.errors import UserError
from diffaug.models import build_model
from diffaug.io import atomic_path

META_KEYS = ("model", "variant", "num_classes", "classes", "epochs", "settings")


class ImageClassifier(nn.Module):
    """`net` behind the input normalisation: 0..255 pixels in, logits out."""

    def __init__(self, net: nn.Module, mean: torch.Tensor, std: torch.Tensor, channels_last: bool = False):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1).clone())
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1).clone())
        self.channels_last = channels_last

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - self.mean) / self.std
        x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        return self.net(x)


def save_trained(path: str | Path, model: ImageClassifier, meta: dict[str, Any]) -> None:
    """Atomically write the final weights (CPU tensors, loadable anywhere) and their metadata."""
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"save_trained: metadata lacks {missing}")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"state_dict": state, **{k: meta[k] for k in META_KEYS}}, tmp)


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> tuple[ImageClassifier, dict[str, Any]]:
    """(model in eval mode on `device`, metadata). Loads with weights_only=True: no pickled code runs."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: trained model not found; run the train stage first")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        meta = {k: saved[k] for k in META_KEYS}
        state = saved["state_dict"]
    except Exception as e:  # a truncated or foreign file: name it, in one line
        raise UserError(f"{path}: not a trained-model file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    net = build_model(meta["model"], meta["variant"], int(meta["num_classes"]))
    channels_last = bool(meta["settings"].get("channels_last", False))  # the layout it was trained in
    model = ImageClassifier(net, torch.zeros(3), torch.ones(3), channels_last=channels_last)
    model.load_state_dict(state)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.eval(), meta
