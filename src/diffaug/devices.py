"""The torch device a stage runs on and what it can do, checked before a model loads: a setting this GPU
cannot run is a one-line ConfigError; one with a safe equivalent is replaced, with a note. Every check takes
a `GpuInfo`, so tests can hand in any GPU on a machine without one."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import re
from dataclasses import dataclass
from typing import Any

import torch

from diffaug.errors import ConfigError, UserError

# Ampere (8.0) onwards: bf16 tensor cores (below, bf16 is emulated, slowly), and torch's flash and cuDNN SDPA
# kernels (aten/src/ATen/native/transformers/cuda/sdp_utils.cpp), which take float16/bfloat16 only.
AMPERE = (8, 0)
FP8_MIN_CAPABILITY = (8, 9)  # float8 tensor cores: Ada (8.9) and Hopper (9.0) onwards


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    capability: tuple[int, int]
    total_memory: int  # bytes
    arch_list: tuple[str, ...]  # the wheel's kernels: torch.cuda.get_arch_list(), e.g. ('sm_80', 'sm_90', 'compute_90')

    @property
    def sm(self) -> str:
        return f"{self.capability[0]}.{self.capability[1]}"

    @property
    def bf16(self) -> bool:
        return self.capability >= AMPERE


def gpu_info(device: torch.device) -> GpuInfo | None:
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return GpuInfo(index, props.name, (props.major, props.minor), int(props.total_memory), tuple(torch.cuda.get_arch_list()))


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a timing boundary); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """What a benchmark row names as its device: the GPU's name, or the CPU and its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


# The libraries whose kernels, schedulers or image codecs a result's bytes pass through (torch apart: its
# distribution's version drops the local tag, +cu130 or +cpu, which says which kernels it ships).
LIBRARIES = ("torchvision", "diffusers", "transformers", "accelerate", "numpy", "pillow")


def run_conditions(device: torch.device, dtype: str) -> dict[str, Any]:
    """Everything beyond a stage's settings that can change the bytes it makes (recorded with every shard and
    classifier, compared on resume): on a CPU the thread count splits float sums differently (1 uint8 level
    in a few pixels) and the instruction set picks kernels; on a GPU its model, CUDA and cuDNN."""
    gpu = gpu_info(device)
    return {
        "device": device.type, "gpu": gpu.name if gpu else None, "capability": gpu.sm if gpu else None,
        "cuda": torch.version.cuda if gpu else None, "cudnn": torch.backends.cudnn.version() if gpu else None,
        "cpu": platform.machine(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_threads": torch.get_num_threads(), "dtype": dtype, "python": platform.python_version(),
        "torch": str(torch.__version__),  # a plain str: torch's TorchVersion is refused by weights_only loading
        **{dist: importlib.metadata.version(dist) for dist in LIBRARIES},  # all dependencies of diffaug
    }


def has_kernels_for(capability: tuple[int, int], arch_list: tuple[str, ...]) -> bool:
    """Whether a wheel built for `arch_list` runs on a GPU of `capability`: a cubin of its major version and no
    newer minor (sm_80 runs on 8.6; arch-specific sm_90a only on 9.0), or PTX no newer than it. An empty list passes."""
    if not arch_list:
        return True
    major, minor = capability
    for arch in arch_list:
        if not (m := re.fullmatch(r"(sm|compute)_(\d+)(\d)([af]?)", arch)):
            continue
        kind, a_major, a_minor, specific = m[1], int(m[2]), int(m[3]), m[4]
        if kind == "sm" and a_major == major and (a_minor == minor if specific else a_minor <= minor):
            return True
        if kind == "compute" and not specific and (a_major, a_minor) <= (major, minor):
            return True
    return False


def resolve_device(name: str, key: str = "device") -> torch.device:
    """The torch device for a `device` param; a bad index or a GPU without kernels is one line, exit 2."""
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{key}: {name!r} was asked for but torch sees no CUDA device; use auto or cpu")
    else:
        device = torch.device(name)
    if device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        allowed = f"cuda:0..cuda:{count - 1}" if count > 1 else "cuda:0"
        raise ConfigError(f"{key}: got {name!r} but torch sees {count} CUDA device{'s' if count != 1 else ''}; "
                          f"allowed here: auto | cuda | {allowed} | cpu")
    gpu = gpu_info(device)
    assert gpu is not None
    if not has_kernels_for(gpu.capability, gpu.arch_list):
        raise UserError(f"{key}: {gpu.name} (compute capability {gpu.sm}) has no kernels in this torch "
                        f"{torch.__version__} (built for {' '.join(gpu.arch_list)}); install a torch wheel built for "
                        f"sm_{gpu.capability[0]}{gpu.capability[1]}, or use {key}: cpu")
    return device


def use_local_rank(device: torch.device, env: dict[str, str] | None = None) -> torch.device:
    """Under torchrun each process takes GPU LOCAL_RANK (for `auto`/`cuda`) and makes it the current device,
    so no library opens a context on GPU 0 behind its back. Outside torchrun: the device, made current."""
    if device.type != "cuda":
        return device
    local = (os.environ if env is None else env).get("LOCAL_RANK", "")
    if device.index is None:
        index = int(local) % torch.cuda.device_count() if local.isdigit() else torch.cuda.current_device()
        device = torch.device("cuda", index)
    torch.cuda.set_device(device)
    return device


# ----------------------------------------------------------------------------- generation
def check_generation(dif: Any, device: torch.device, gpu: GpuInfo | None = None,
                     torchao: bool | None = None) -> list[str]:
    """diffusion's dtype and levers against `device`: a ConfigError for what cannot run (or would fail after
    minutes of loading), notes for settings ignored here. `torchao`: default, whether it is importable."""
    notes: list[str] = []
    gpu = gpu or gpu_info(device)
    dtype = dif.dtype
    if dif.fp8:
        if gpu is None:
            raise ConfigError(f"diffusion.fp8: true needs a CUDA GPU of compute capability >= 8.9, this runs on "
                              f"{device.type}; set diffusion.fp8: false")
        if dtype != "bfloat16":
            raise ConfigError(f"diffusion.fp8: true needs diffusion.dtype: bfloat16 (torchao's row-wise float8 scales "
                              f"are bfloat16), got {dtype}; set diffusion.dtype: bfloat16 or diffusion.fp8: false")
        if gpu.capability < FP8_MIN_CAPABILITY:
            raise ConfigError(f"diffusion.fp8: true needs compute capability >= 8.9 (float8 tensor cores), "
                              f"{gpu.name} has {gpu.sm}; set diffusion.fp8: false")
        if not (torchao if torchao is not None else importlib.util.find_spec("torchao")):
            raise ConfigError("diffusion.fp8: true needs torchao, which is not installed; pip install torchao, "
                              "or set diffusion.fp8: false")
    if dif.attention in ("flash", "cudnn") and gpu is not None:  # the CUDA kernels' limits (a CPU has its own)
        if dtype not in ("float16", "bfloat16"):
            raise ConfigError(f"diffusion.attention: {dif.attention} runs in float16/bfloat16 only, diffusion.dtype "
                              f"is {dtype}; use diffusion.attention: efficient or auto (or a half dtype)")
        if gpu.capability < AMPERE:
            raise ConfigError(f"diffusion.attention: {dif.attention} needs compute capability >= 8.0, {gpu.name} has "
                              f"{gpu.sm}; use diffusion.attention: efficient or auto")
    if gpu is not None and dtype == "bfloat16" and not gpu.bf16:
        raise ConfigError(f"diffusion.dtype: bfloat16 is emulated (slow) below compute capability 8.0, {gpu.name} "
                          f"has {gpu.sm}; use diffusion.dtype: float16")
    if gpu is None and device.type == "cpu":
        if dif.attention != "auto":
            notes.append(f"diffusion.attention: {dif.attention} selects a CUDA kernel; on the CPU torch picks its own")
        if dtype == "float16":
            notes.append("diffusion.dtype: float16 on a CPU is emulated and slow; float32 or bfloat16 run faster there")
    return notes


# ----------------------------------------------------------------------------- training
@dataclass(frozen=True)
class Precision:
    name: str  # bf16 | fp16 | fp32: what the Trainer actually runs (recorded in train.json)
    note: str | None = None  # why it differs from train.precision, if it does


def training_precision(precision: str, device: torch.device, gpu: GpuInfo | None = None) -> Precision:
    """train.precision as it can run on `device`: bf16 below compute capability 8.0 becomes fp16 with a
    GradScaler (the same tensor-core speed); a CPU trains in fp32 (its bf16 autocast is slower, not faster)."""
    if device.type != "cuda" or precision == "fp32":
        return Precision("fp32")
    gpu = gpu or gpu_info(device)
    assert gpu is not None
    if precision == "bf16" and not gpu.bf16:
        return Precision("fp16", f"train.precision: bf16 is emulated on {gpu.name} (compute capability {gpu.sm} < 8.0): "
                         f"training in fp16 autocast with a GradScaler instead (train.precision: fp32 for float32)")
    return Precision("bf16")
