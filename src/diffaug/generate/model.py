"""The model: where its weights come from, their fingerprint, loading, and the levers applied to it.

`diffusion.model` is a hub id (CompVis/stable-diffusion-v1-4) or a directory written by
`save_pretrained`; both are loaded by the same `StableDiffusionPipeline.from_pretrained` call.
`resolve_model` runs once, before the plan is built: a local directory is fingerprinted by content,
a hub id is pinned to one snapshot commit (the cached one, or downloaded first when none is cached),
and that commit is what `load_pipeline` loads. The fingerprint is part of the settings hash, so
swapping the weights behind an unchanged name still invalidates old shards.

Speed levers (`choose_levers`, `apply_speed_levers`) never change which images are meant; where
they move low-order float bits the shard's provenance records them. Approximate levers (`fp8`,
`deep_cache`) change the images and are pixel settings (in the settings hash); both are off unless
params.yaml asks for them.

torch, diffusers and huggingface_hub are imported inside the functions that need them: the CLI
checks params and the model source first and fails in well under a second, instead of after the
several seconds those imports take.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffaug.config import DiffusionConfig
from diffaug.errors import UserError
from diffaug.generate.plan import compile_pays_after
from diffaug.io import sha256_file

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_OFF_HINT = "set diffusion.safety_checker: false (e.g. dvc exp run -S diffusion.safety_checker=false) to generate without it"
DTYPE_NAMES = ("float16", "bfloat16", "float32")
# Inductor's compiled kernels and FX graphs, kept in the repository (git-ignored) so a resumed run
# does not compile again. An INDUCTOR cache directory set in the environment wins.
INDUCTOR_CACHE = Path(".cache") / "torchinductor"


# ----------------------------------------------------------------------------- source and fingerprint
def local_model_dir(model: str) -> Path | None:
    """The directory `model` names, or None when it is a hub id; a path-like name that is absent fails."""
    path = Path(model).expanduser()
    if path.exists():
        return path
    if not _HUB_ID.match(model):  # "/x", "./x", "~/x", "a/b/c": a path, and it is not there
        raise UserError(f"diffusion.model: directory {model!r} not found; allowed: a hub id such as "
                        "CompVis/stable-diffusion-v1-4 or a directory written by save_pretrained")
    return None


def check_model_source(dif: DiffusionConfig) -> Path | None:
    """Fail early (one line) on a model directory that cannot work with these params; return it."""
    path = local_model_dir(dif.model)
    if path is None:
        return None
    index = path / "model_index.json"
    if not path.is_dir() or not index.is_file():
        raise UserError(f"diffusion.model: {model_label(dif)} has no model_index.json; allowed: a directory written "
                        "by StableDiffusionPipeline.save_pretrained, or a hub id")
    try:
        components = json.loads(index.read_text())
    except ValueError as e:
        raise UserError(f"{index}: not valid JSON ({e})") from None
    if dif.safety_checker and not _has_component(components, "safety_checker"):
        raise missing_safety_checker_error(dif)
    if dif.variant is not None:
        unet = path / "unet"
        if not any(f".{dif.variant}." in p.name for p in unet.glob("*")):
            raise UserError(f"diffusion.variant: no {dif.variant!r} weights in {unet}; set diffusion.variant: null "
                            "to load the default weight files")
    return path


def _has_component(components: dict, name: str) -> bool:
    entry = components.get(name)
    return isinstance(entry, list) and len(entry) == 2 and all(entry)


def missing_safety_checker_error(dif: DiffusionConfig) -> UserError:
    return UserError(f"diffusion.safety_checker: true, but {model_label(dif)} has no safety checker weights; {_OFF_HINT}")


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
    """What `from_pretrained` loads: a local directory, or a hub id pinned to one snapshot commit."""

    load_from: str
    revision: str | None
    fingerprint: str


def cached_hub_commit(model: str, revision: str | None) -> str | None:
    """The commit of the snapshot of `model` at `revision` in the local hub cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, "model_index.json", revision=revision)
    return Path(cached).parent.name if isinstance(cached, str) else None  # .../snapshots/<commit>/model_index.json


def download_hub_snapshot(dif: DiffusionConfig) -> str:
    """Download the files the pipeline needs (this variant only) and return the snapshot's commit."""
    from diffusers import StableDiffusionPipeline

    quiet_libraries()
    try:
        folder = StableDiffusionPipeline.download(dif.model, revision=dif.revision, variant=dif.variant)
    except Exception as e:  # hub unreachable, unknown repo or revision: all are "cannot download"
        raise _cannot_load(dif, e) from None
    return Path(folder).name


def resolve_model(dif: DiffusionConfig) -> ModelSource:
    """Check the source and pin it: once per run, before the plan (whose hash includes the fingerprint)."""
    path = check_model_source(dif)
    if path is not None:
        return ModelSource(str(path), None, "sha256:" + directory_digest(path))
    commit = cached_hub_commit(dif.model, dif.revision) or download_hub_snapshot(dif)
    return ModelSource(dif.model, commit, "hub-commit:" + commit)


# ----------------------------------------------------------------------------- loading
def quiet_libraries() -> None:
    """Our rich progress bar is the only one; library bars and notices would interleave with it."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for lib in (diffusers_logging, transformers_logging):
        lib.set_verbosity_error()
        lib.disable_progress_bar()


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def _cannot_load(dif: DiffusionConfig, e: Exception) -> UserError:
    first = (str(e).strip().splitlines() or [""])[0][:300]
    return UserError(f"diffusion.model: cannot load {model_label(dif)} ({type(e).__name__}: {first}); "
                     "allowed: a hub id reachable or in the local cache, or a directory written by save_pretrained")


def load_pipeline(dif: DiffusionConfig, source: ModelSource, device):
    from diffusers import StableDiffusionPipeline

    quiet_libraries()
    kwargs: dict[str, Any] = dict(revision=source.revision, variant=dif.variant, torch_dtype=torch_dtype(dif.dtype))
    if not dif.safety_checker:  # do not even load its 1.2 GB
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch_dtype is being renamed to dtype
            pipe = StableDiffusionPipeline.from_pretrained(source.load_from, **kwargs)
    except Exception as e:  # hub unreachable, missing files, corrupt weights: all are "cannot load"
        raise _cannot_load(dif, e) from None
    if dif.safety_checker and (pipe.safety_checker is None or pipe.feature_extractor is None):
        raise missing_safety_checker_error(dif)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def device_label(device) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


# ----------------------------------------------------------------------------- levers
@dataclass(frozen=True)
class Levers:
    """The speed levers a run uses, resolved for its device and size; `reason` says why compile is on/off."""

    batch_size: int = 32
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
        if not self.cuda_graphs:
            return self.compile_mode
        return "max-autotune" if self.compile_mode.startswith("max-autotune") else "reduce-overhead"

    def record(self) -> dict[str, Any]:
        """For provenance: the levers as run (the reason is not a setting)."""
        return {"batch_size": self.batch_size, "fuse_qkv": self.fuse_qkv, "channels_last": self.channels_last,
                "compile": self.compile, "compile_mode": self.inductor_mode if self.compile else None,
                "attention": self.attention}


def choose_levers(dif: DiffusionConfig, device_type: str, n_images: int) -> Levers:
    """Resolve `compile: auto`: on for CUDA when the run is long enough to pay for compiling, else eager."""
    if dif.compile is True:
        on, why = True, "diffusion.compile: true"
    elif dif.compile is False:
        on, why = False, "diffusion.compile: false"
    elif device_type != "cuda":
        on, why = False, f"compile: auto stays eager on {device_type} (inductor's gains are measured on CUDA only)"
    else:
        mode = Levers(compile_mode=dif.compile_mode, cuda_graphs=dif.cuda_graphs).inductor_mode
        needed = compile_pays_after(dif, mode)
        on = n_images >= needed
        why = (f"compile: auto {'compiles' if on else 'stays eager'}: {n_images} images "
               f"{'>=' if on else '<'} {needed}, where compiling ({mode}) pays for itself at these settings")
    return Levers(batch_size=dif.batch_size, fuse_qkv=dif.fuse_qkv, channels_last=dif.channels_last, compile=on,
                  compile_mode=dif.compile_mode, cuda_graphs=dif.cuda_graphs, attention=dif.attention, reason=why)


def use_inductor_cache(root: Path | None = None) -> Path:
    """Keep inductor's FX-graph and kernel caches under <repo>/.cache/torchinductor (call before compiling;
    stages run from the repository root, so that is the working directory by default)."""
    folder = Path(os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(((root or Path.cwd()) / INDUCTOR_CACHE).resolve())))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def apply_speed_levers(pipe, *, channels_last: bool, fuse_qkv: bool) -> None:
    """Levers that change speed, not which images are made (low-order float bits aside)."""
    import torch

    if fuse_qkv:  # one matmul for Q, K and V in self-attention, K and V in cross-attention
        pipe.fuse_qkv_projections(unet=True, vae=True)
    if channels_last:  # NHWC convolutions (measured slower eager on an H100: off by default, issue 10)
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)


def fp8_unavailable_reason(device) -> str | None:
    """Why float8 matmuls cannot run here, or None when they can."""
    import torch

    if device.type != "cuda":
        return f"diffusion.fp8: float8 matmuls need a CUDA GPU (compute capability >= 8.9), not {device.type}"
    if torch.cuda.get_device_capability(device) < (8, 9):
        return f"diffusion.fp8: {torch.cuda.get_device_name(device)} has no float8 tensor cores (compute capability < 8.9)"
    try:
        import torchao  # noqa: F401
    except ImportError:
        return "diffusion.fp8: needs torchao (pip install torchao), which is not installed"
    return None


def apply_fp8(pipe) -> None:
    """Float8 (e4m3) dynamic row-wise scaled matmuls in the UNet's linear layers (torchao); approximate."""
    from torchao.quantization import quantize_

    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

        config: Any = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    except ImportError:  # torchao < 0.10 spelled it as a function
        from torchao.quantization import PerRow, float8_dynamic_activation_float8_weight

        config = float8_dynamic_activation_float8_weight(granularity=PerRow())
    quantize_(pipe.unet, config)
