"""Load the Stable Diffusion pipeline (hub id or local directory, one code path) and apply speed levers."""
from __future__ import annotations

import warnings

import torch

from diffaug.config import DiffusionConfig
from diffaug.errors import UserError
from diffaug.generate.modelsource import missing_safety_checker_error, model_label

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def quiet_libraries() -> None:
    """Our rich progress bar is the only one; library bars and notices would interleave with it."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for lib in (diffusers_logging, transformers_logging):
        lib.set_verbosity_error()
        lib.disable_progress_bar()


def load_pipeline(dif: DiffusionConfig, device: torch.device):
    from diffusers import StableDiffusionPipeline

    quiet_libraries()
    kwargs = dict(revision=dif.revision, variant=dif.variant, torch_dtype=DTYPES[dif.dtype])
    if not dif.safety_checker:  # do not even load its 1.2 GB
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch_dtype is being renamed to dtype
            pipe = StableDiffusionPipeline.from_pretrained(dif.model, **kwargs)
    except Exception as e:  # hub unreachable, missing files, corrupt weights: all are "cannot load"
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise UserError(f"diffusion.model: cannot load {model_label(dif)} ({type(e).__name__}: {first}); "
                        "allowed: a hub id reachable or in the local cache, or a directory written by save_pretrained") from None
    if dif.safety_checker and (pipe.safety_checker is None or pipe.feature_extractor is None):
        raise missing_safety_checker_error(dif)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def apply_speed_levers(pipe, *, channels_last: bool, fuse_qkv: bool) -> None:
    """Levers that change speed, not which images are made (low-order float bits aside)."""
    if fuse_qkv:  # one matmul for Q, K and V in self-attention, K and V in cross-attention
        pipe.fuse_qkv_projections(unet=True, vae=True)
    if channels_last:  # NHWC convolutions: the fast layout for tensor cores
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type
