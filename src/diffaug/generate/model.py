"""The model: where its weights come from, their fingerprint, its family, loading, and the levers.

`resolve_model` pins `diffusion.model` once, before the plan (whose hash holds the fingerprint): a
directory by content, a hub id by snapshot commit (downloaded first when none is cached). torch and
diffusers are imported inside functions: the CLI's checks fail in well under a second.
"""
from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffaug.config import DiffusionConfig
from diffaug.errors import UserError
from diffaug.generate.families import ModelInfo, family_of, read_model_info
from diffaug.generate.plan import COMPILE_AUTO_IMAGES
from diffaug.io import sha256_file

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# Inductor's compiled kernels and FX graphs, kept in the repository (git-ignored) so a resumed run
# does not compile again. An INDUCTOR cache directory set in the environment wins.
INDUCTOR_CACHE = Path(".cache") / "torchinductor"


def check_model_files(folder: Path, dif: DiffusionConfig) -> ModelInfo:
    """The family of the model in `folder`, after checking the safety checker and weight variant exist."""
    info = read_model_info(folder, dif.model)
    if dif.safety_checker and info.family.safety_checker and not info.has_safety_checker:
        raise missing_safety_checker_error(dif)
    if dif.variant is not None:
        weights = folder / info.family.denoiser
        if weights.is_dir() and not any(f".{dif.variant}." in p.name for p in weights.glob("*")):
            raise UserError(f"diffusion.variant: no {dif.variant!r} weights in {weights}; set diffusion.variant: null "
                            "to load the default weight files")
    return info


def missing_safety_checker_error(dif: DiffusionConfig) -> UserError:
    return UserError(f"diffusion.safety_checker: true, but {model_label(dif)} has no safety checker weights; set diffusion."
                     "safety_checker: false (e.g. dvc exp run -S diffusion.safety_checker=false) to generate without it")


def model_label(dif: DiffusionConfig) -> str:
    return f"model {dif.model!r}" + (f" (revision {dif.revision})" if dif.revision else "")


def directory_digest(root: Path) -> str:
    """sha256 over (relative path, file sha256) of every file under `root`, hidden ones excepted."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if any(part.startswith(".") for part in rel.split("/")):
            continue  # .cache/ and editor droppings are not weights
        h.update(f"{rel}\0{sha256_file(path)}\n".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class ModelSource:
    """What `from_pretrained` loads: a local directory, or a hub id pinned to one snapshot commit, and the
    folder of its model_index.json and configs (the directory, or the snapshot in the hub cache)."""

    load_from: str
    revision: str | None
    fingerprint: str
    folder: Path


def cached_hub_snapshot(model: str, revision: str | None) -> Path | None:
    """The folder .../snapshots/<commit> of `model` at `revision` in the local hub cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, "model_index.json", revision=revision)
    return Path(cached).parent if isinstance(cached, str) else None


def download_hub_snapshot(dif: DiffusionConfig) -> Path:
    """Download the files the pipeline needs (this variant only) and return the snapshot's folder."""
    from diffusers import DiffusionPipeline

    quiet_libraries()
    try:
        folder = DiffusionPipeline.download(dif.model, revision=dif.revision, variant=dif.variant)
    except Exception as e:  # hub unreachable, unknown repo or revision: all are "cannot download"
        raise _cannot_load(dif, e) from None
    return Path(folder)


class NotCached(UserError):
    """A hub model that is not in the local cache, where the caller asked for no download."""


def resolve_model(dif: DiffusionConfig, download: bool = True) -> ModelSource:
    """Check the source and pin it: once per run, before the plan (whose hash includes the fingerprint).
    A hub id not in the local cache is downloaded, or with `download=False` raises NotCached."""
    path = Path(dif.model).expanduser()
    if not path.exists() and not _HUB_ID.match(dif.model):  # "/x", "./x", "~/x", "a/b/c": a path, not there
        raise UserError(f"diffusion.model: directory {dif.model!r} not found; allowed: a hub id such as "
                        "CompVis/stable-diffusion-v1-4 or a directory written by save_pretrained")
    if path.exists():
        if not path.is_dir() or not (path / "model_index.json").is_file():
            raise UserError(f"diffusion.model: {model_label(dif)} has no model_index.json; allowed: a directory "
                            "written by a diffusers pipeline's save_pretrained, or a hub id")
        return ModelSource(str(path), None, "sha256:" + directory_digest(path), path)
    folder = cached_hub_snapshot(dif.model, dif.revision)
    if folder is None and not download:
        raise NotCached(f"diffusion.model: {model_label(dif)} is not in the local Hugging Face cache")
    folder = folder or download_hub_snapshot(dif)
    return ModelSource(dif.model, folder.name, "hub-commit:" + folder.name, folder)


def quiet_libraries() -> None:
    """Our rich progress bar is the only one; library bars and notices would interleave with it."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for lib in (diffusers_logging, transformers_logging):
        lib.set_verbosity_error()
        lib.disable_progress_bar()


def _cannot_load(dif: DiffusionConfig, e: Exception) -> UserError:
    first = (str(e).strip().splitlines() or [""])[0][:300]
    return UserError(f"diffusion.model: cannot load {model_label(dif)} ({type(e).__name__}: {first}); "
                     "allowed: a hub id reachable or in the local cache, or a directory written by save_pretrained")


def load_pipeline(dif: DiffusionConfig, source: ModelSource, info: ModelInfo, device, *, img2img: bool = False):
    """The family's stock pipeline on `device` (or with model CPU offload), its img2img twin for img2img sets."""
    import diffusers
    import torch

    quiet_libraries()
    kwargs: dict[str, Any] = dict(revision=source.revision, variant=dif.variant, torch_dtype=getattr(torch, dif.dtype))
    if info.family.safety_checker and not dif.safety_checker:  # do not even load its 1.2 GB
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    cls = diffusers.DiTPipeline if info.family.name == "dit" else diffusers.AutoPipelineForText2Image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch_dtype is being renamed to dtype
            pipe = cls.from_pretrained(source.load_from, **kwargs)
    except Exception as e:  # hub unreachable, missing files, corrupt weights: all are "cannot load"
        raise _cannot_load(dif, e) from None
    if dif.safety_checker and (getattr(pipe, "safety_checker", None) is None or pipe.feature_extractor is None):
        raise missing_safety_checker_error(dif)
    if img2img:
        pipe = diffusers.AutoPipelineForImage2Image.from_pipe(pipe)
    if dif.cpu_offload and device.type == "cuda":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@dataclass(frozen=True)
class Levers:
    """The speed levers a run uses, resolved for its device and size; `reason` says why compile is on/off."""

    batch_size: int | str = 32
    fuse_qkv: bool = True
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"
    cuda_graphs: bool = False
    attention: str = "auto"
    reason: str = ""

    @property
    def inductor_mode(self) -> str:
        """torch.compile's mode: CUDA graphs are inductor's reduce-overhead (or max-autotune) mode."""
        graphs = "max-autotune" if self.compile_mode.startswith("max-autotune") else "reduce-overhead"
        return graphs if self.cuda_graphs else self.compile_mode

    def record(self) -> dict[str, Any]:  # for provenance (the reason is not a setting)
        return {"batch_size": self.batch_size, "fuse_qkv": self.fuse_qkv, "channels_last": self.channels_last,
                "compile": self.compile, "compile_mode": self.inductor_mode if self.compile else None,
                "attention": self.attention}


def choose_levers(dif: DiffusionConfig, device_type: str, n_images: int) -> Levers:
    """Resolve `compile: auto`: on for CUDA runs long enough to pay for compiling, else eager."""
    if isinstance(dif.compile, bool):
        on, why = dif.compile, f"diffusion.compile: {str(dif.compile).lower()}"
    elif device_type != "cuda":
        on, why = False, f"compile: auto stays eager on {device_type} (inductor's gains are measured on CUDA only)"
    else:
        on = n_images >= COMPILE_AUTO_IMAGES
        why = (f"compile: auto {'compiles' if on else 'stays eager'}: {n_images} images "
               f"{'>=' if on else '<'} {COMPILE_AUTO_IMAGES}, where compiling paid for itself on an H100")
    same = dif.model_dump(include={"batch_size", "fuse_qkv", "channels_last", "compile_mode", "cuda_graphs", "attention"})
    return Levers(**same, compile=on, reason=why)


def use_inductor_cache(root: Path | None = None) -> Path:
    """Keep inductor's caches under <repo>/.cache/torchinductor (stages run from the repository root)."""
    folder = Path(os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(((root or Path.cwd()) / INDUCTOR_CACHE).resolve())))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def denoiser(pipe):
    """The network run at every step: the UNet or the transformer."""
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


def apply_levers(pipe, levers: Levers, *, fp8: bool = False, cache: str = "none", compile_backend: str = "inductor") -> None:
    """Fused QKV (the VAE's, and the denoiser's where its family supports it), channels_last, fp8 (after fusion,
    so the fused projections are quantized too), diffusers' FirstBlockCache and torch.compile; the order matters."""
    import torch
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

    net = denoiser(pipe)
    if levers.fuse_qkv:  # one matmul for Q, K and V (and K, V in cross-attention)
        for module in (net, pipe.vae) if family_of(pipe).fuse_qkv else (pipe.vae,):
            if hasattr(module, "fuse_qkv_projections"):
                module.fuse_qkv_projections()
    if levers.channels_last:  # NHWC convolutions (measured slower eager on an H100: off by default)
        net.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if fp8:
        apply_fp8(net)
    if cache == "first_block":
        apply_first_block_cache(net, FirstBlockCacheConfig())
    if levers.compile:
        if compile_backend == "inductor":
            use_inductor_cache()
        compile_denoiser(net, levers.inductor_mode, compile_backend)


def compile_denoiser(net, mode: str, backend: str = "inductor") -> None:
    """torch.compile the denoiser's forward in place. With CUDA graphs (reduce-overhead) every call starts a
    new graph step and returns copies: the schedulers keep past outputs, which the next replay overwrites."""
    import torch
    from torch.utils._pytree import tree_map_only

    compiled = (torch.compile(net.forward, backend=backend) if backend != "inductor"
                else torch.compile(net.forward, mode=None if mode == "default" else mode))
    graphs = mode in ("reduce-overhead", "max-autotune")

    def forward(*args, **kwargs):
        if not graphs:
            return compiled(*args, **kwargs)
        torch.compiler.cudagraph_mark_step_begin()
        return tree_map_only(torch.Tensor, torch.clone, compiled(*args, **kwargs))

    net.forward = forward


def apply_fp8(net) -> None:
    """Float8 (e4m3) dynamic row-wise scaled matmuls in the denoiser's linear layers (torchao); approximate."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    quantize_(net, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
