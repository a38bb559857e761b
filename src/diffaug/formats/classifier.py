"""Trained classifiers: `models/<model>/<mix>/seed-<s>.pt`, written by the train stage, read by evaluate.

The saved network is an `ImageClassifier`: it takes images as stored on disk, a uint8 (or any numeric)
tensor of 0..255 RGB pixels in (N, 3, H, W) layout, and normalises them itself with the per-channel
mean/std of its training mixture (buffers in the state_dict). So evaluation cannot pair a model with
the wrong normalisation: feed `torch.from_numpy(images_nhwc).permute(0, 3, 1, 2)` and take the logits.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from diffaug.errors import UserError
from diffaug.io import save_torch_atomic
from diffaug.models import build_model

META_KEYS = ("model", "variant", "num_classes", "classes", "epochs", "settings")
OPTIONAL_META_KEYS = ("conditions",)  # diffaug.devices.run_conditions of the run that trained it


class ImageClassifier(nn.Module):
    """`net` behind the input normalisation: 0..255 pixels in, logits out."""

    def __init__(self, net: nn.Module, mean: torch.Tensor, std: torch.Tensor, channels_last: bool = False,
                 tta_hflip: bool = False):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1).clone())
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1).clone())
        self.channels_last = channels_last
        self.tta_hflip = tta_hflip  # in eval mode: the mean of the logits of each image and its mirror image

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mean, std = self.get_buffer("mean"), self.get_buffer("std")
        x = (images.float() - mean) / std
        x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        if self.tta_hflip and not self.training:
            return (self.net(x) + self.net(x.flip(3))) / 2
        return self.net(x)


RERUN = "rerun its train cell (dvc repro)"


def non_finite(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of a state_dict that hold nan or inf."""
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """Content hash of a state_dict (names, dtypes, shapes, bytes): a flipped bit anywhere changes it."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def require_files(paths: list[Path], hint: str) -> None:
    """One line for the first trained-model file that is absent (before any work is done)."""
    for path in paths:
        if not path.is_file():
            raise UserError(f"{path}: trained model not found; {hint}")


def save_trained(path: str | Path, model: ImageClassifier, meta: dict[str, Any]) -> None:
    """Atomically write the final weights (CPU tensors, loadable anywhere) and their metadata (every META_KEY).
    Weights holding nan/inf are refused (ValueError): a diverged run never becomes a result."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    bad = non_finite(state)
    if bad:
        raise ValueError(f"save_trained: {len(bad)} tensors hold nan/inf (first: {bad[0]}); not saved")
    kept = [*META_KEYS, *(k for k in OPTIONAL_META_KEYS if k in meta)]
    save_torch_atomic(path, {"state_dict": state, "state_sha256": state_sha256(state), **{k: meta[k] for k in kept}})


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> tuple[ImageClassifier, dict[str, Any]]:
    """(model in eval mode on `device`, metadata). Loads with weights_only=True: no pickled code runs.

    A missing, truncated or foreign file, a state that does not fit its declared architecture and
    non-finite weights are each one UserError line naming the file.
    """
    path = Path(path)
    require_files([path], RERUN)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        meta = {k: saved[k] for k in META_KEYS} | {k: saved[k] for k in OPTIONAL_META_KEYS if k in saved}
        state = saved["state_dict"]
    except Exception as e:  # a truncated or foreign file: name it, in one line
        first = str(e).splitlines()[0][:160] if str(e) else ""
        raise UserError(f"{path}: not a trained-model file ({type(e).__name__}: {first}); {RERUN}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: not a trained-model file (no tensor state_dict); {RERUN}")
    if "state_sha256" in saved and saved["state_sha256"] != state_sha256(state):
        raise UserError(f"{path}: weights differ from the sha256 stored with them (corrupt or modified file); {RERUN}")
    bad = non_finite(state)
    if bad:
        raise UserError(f"{path}: {len(bad)} weight tensors hold nan/inf (first: {bad[0]}); the run diverged, "
                        f"lower the learning rate and {RERUN}")
    try:
        net = build_model(meta["model"], meta["variant"], int(meta["num_classes"]))
        channels_last = bool(meta["settings"].get("channels_last", False))  # the layout it was trained in
        tta_hflip = bool((meta["settings"].get("recipe") or {}).get("tta_hflip", False))  # the recipe's evaluation
        model = ImageClassifier(net, torch.zeros(3), torch.ones(3), channels_last=channels_last, tta_hflip=tta_hflip)
        model.load_state_dict(state)
    except Exception as e:  # unknown architecture, wrong shapes or keys
        first = str(e).splitlines()[0][:160] if str(e) else ""
        raise UserError(f"{path}: weights do not fit {meta.get('model')!r} ({type(e).__name__}: {first}); {RERUN}") from None
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.eval(), meta


def logits_of(model: ImageClassifier, images: np.ndarray, batch_size: int, device: str | torch.device) -> np.ndarray:
    """float32 logits (N x classes) of a loaded classifier on uint8 NHWC images, `batch_size` at a time."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device).permute(0, 3, 1, 2)
            out.append(model(batch).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)

