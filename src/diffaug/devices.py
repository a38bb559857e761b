"""Pick the torch device a stage runs on from its `device` param (auto | cpu | cuda | cuda:N)."""
from __future__ import annotations

import torch

from diffaug.errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} was asked for but torch sees no CUDA device; use auto or cpu")
    return torch.device(name)
