"""Resumable training state: `<checkpoints>/seed-<s>.pt`.

A checkpoint holds everything that decides what happens next, so a run killed at any moment and
resumed ends with the same weights as one never interrupted (on the same device): model, momentum
(and GradScaler) state, every RNG the run draws from (torch's CPU generator, the CUDA generator that
dropout uses, and the run's own device generator for shuffling and augmentation), the epochs done
(they also fix the lr: the schedule is a function of the step), the per-epoch metrics history
(replayed into dvclive on resume) and the hash of the settings that produced it. A checkpoint whose
hash differs (other data, recipe, model, seed, device type) is ignored. Writes are atomic: a kill mid-write leaves the previous checkpoint.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from diffaug.io import save_torch_atomic


def capture_rng(device: torch.device, generator: torch.Generator) -> dict[str, torch.Tensor]:
    state = {"torch_cpu": torch.get_rng_state(), "device_generator": generator.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, torch.Tensor], device: torch.device, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch_cpu"])
    generator.set_state(state["device_generator"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    save_torch_atomic(path, state)


def load_checkpoint(path: str | Path, settings_hash: str) -> dict[str, Any] | None:
    """The checkpoint at `path` if it was written under `settings_hash`, else None (and say why)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unreadable: starting over is always correct, only slower
        print(f"note: ignoring unreadable checkpoint {path} ({type(e).__name__}); training from scratch", file=sys.stderr)
        return None
    if not isinstance(state, dict) or state.get("settings_hash") != settings_hash:
        print(f"note: ignoring checkpoint {path}: written under other settings or conditions (device, CPU threads, "
              "library versions...); training from scratch", file=sys.stderr)
        return None
    return state
