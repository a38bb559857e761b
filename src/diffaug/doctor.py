"""`python -m diffaug.doctor`: what this machine can run, measured here, in at most --budget-s seconds.

  python -m diffaug.doctor [--params params.yaml] [--json doctor.json] [--budget-s 300]

One line per check: `ok` (it runs; the measurement), `no` (why not, and the setting to use instead),
`info` (a fact about the machine) or `skipped` (what did not fit in the budget, or needs what is not
installed). It ends with the params.yaml lines it recommends for this machine. With a GPU:

  machine     GPU, compute capability, free memory, torch / CUDA / diffusers versions, kernels for this GPU,
              bf16 support;
  settings    params.yaml's diffusion dtype and levers and train.precision against this GPU (the checks
              the stages run before loading a model: diffaug.devices);
  generation  a few denoising steps of the configured model's UNet when its weights are in the local
              Hugging Face cache, else of the full-size SD-1.4 UNet with random weights (same cost),
              eager and with each lever: attention kernels, fused QKV, channels_last, torch.compile,
              float8 (torchao); then the largest batch whose UNet step and VAE decode fit, by doubling;
  training    the train step's CUDA graph: captured and proved against the eager step (diffaug.train.loop),
              or why not; seconds per epoch on the largest trained mixture (timed steps, scaled).

Without a GPU it says so and checks the CPU path instead: the tiny random pipeline's denoising and a few
training steps. Every check runs in a try: a failure is its line, never a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("DVC_NO_ANALYTICS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffaug.config import Config, load_config, parse_config  # noqa: E402
from diffaug.devices import GpuInfo, check_generation, gpu_info, resolve_device, synchronize, training_precision  # noqa: E402
from diffaug.errors import ConfigError, OneLineParser, UserError, exit_on_error  # noqa: E402
from diffaug.io import write_bytes_atomic  # noqa: E402

DEFAULT_BUDGET_S = 300.0
TIMED_STEPS = 3  # denoising steps timed per lever, after one warm-up step
LEVER_BATCH = 8  # images per UNet call when timing levers (16 latents with guidance)
MAX_BATCH = 512  # the batch search stops here
MEMORY_HEADROOM = 0.85  # a batch "fits" when its peak stays under this fraction of the free memory
# The real training images per class of the built-in datasets: a mixture's size is its fractions times these.
REAL_TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000}
CLASSES = {"cifar10": 10, "cifar100": 100}
TRAIN_TIMED_STEPS = 10
CPU_STEP_BATCH = 8
TRAINING_RESERVE_S = 40  # the training check on a GPU: trainer, capture and proof, timed steps


@dataclass
class Check:
    area: str
    name: str
    status: str  # ok | no | info | skipped
    detail: str
    setting: str | None = None  # the params.yaml setting this line recommends, if any
    value: Any = None  # the measurement, machine-readable


@dataclass
class Report:
    budget_s: float
    start: float = field(default_factory=time.perf_counter)
    checks: list[Check] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)
    recommend: dict[str, dict[str, Any]] = field(default_factory=lambda: {"diffusion": {}, "train": {}})
    comments: dict[str, str] = field(default_factory=dict)
    reserve_s: float = 0.0  # kept back for the checks still to come

    def add(self, area: str, name: str, status: str, detail: str, setting: str | None = None, value: Any = None) -> Check:
        check = Check(area, name, status, detail, setting, value)
        self.checks.append(check)
        print(f"[{status:7s}] {area}: {name}: {detail}" + (f"  -> {setting}" if setting else ""), flush=True)
        return check

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)

    def room(self, area: str, name: str, needs_s: float) -> bool:
        """Whether `needs_s` more seconds fit in the budget; if not, a `skipped` line says so."""
        if self.left() - self.reserve_s >= needs_s:
            return True
        self.add(area, name, "skipped", f"needs about {needs_s:.0f}s, {max(self.left(), 0):.0f}s of the "
                                        f"{self.budget_s:.0f}s budget left (--budget-s)")
        return False

    def recommend_line(self, section: str, key: str, value: Any, why: str) -> None:
        self.recommend[section][key] = value
        self.comments[f"{section}.{key}"] = why


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:240]}" if text else type(e).__name__


@contextmanager
def attempt(report: Report, area: str, name: str) -> Iterator[None]:
    """A check that raises is its `no` line (the exception in one line), never a traceback."""
    try:
        yield
    except Exception as e:  # noqa: BLE001
        report.add(area, name, "no", one_line(e))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------- machine
def machine_checks(report: Report, device: torch.device) -> GpuInfo | None:
    m = report.machine
    m.update({"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
              "cuda": torch.version.cuda, "diffusers": version("diffusers"), "transformers": version("transformers"),
              "torchao": version("torchao"), "cpu_threads": torch.get_num_threads()})
    report.add("machine", "versions", "info", f"torch {torch.__version__}, CUDA {torch.version.cuda or 'none (CPU build)'}, "
               f"diffusers {m['diffusers'] or 'not installed'}, torchao {m['torchao'] or 'not installed'}")
    if device.type != "cuda":
        m["gpu"] = None
        report.add("machine", "GPU", "no", "CPU-only machine: torch sees no CUDA GPU; checking the CPU path instead",
                   "diffusion.device: cpu, train.device: cpu (auto picks the CPU here)")
        return None
    gpu = gpu_info(device)
    assert gpu is not None
    free, total = torch.cuda.mem_get_info(device)
    m["gpu"] = {"name": gpu.name, "index": gpu.index, "capability": gpu.sm, "total_gib": round(total / 2**30, 1),
                "free_gib": round(free / 2**30, 1), "count": torch.cuda.device_count(), "arch_list": list(gpu.arch_list),
                "bf16": gpu.bf16}
    report.add("machine", "GPU", "info", f"{gpu.name} (cuda:{gpu.index} of {torch.cuda.device_count()}), compute "
               f"capability {gpu.sm}, {free / 2**30:.1f} of {total / 2**30:.1f} GiB free")
    # resolve_device has refused a GPU this torch has no kernels for (devices.check_architecture)
    report.add("machine", "kernels", "ok", f"this torch has kernels for sm_{gpu.capability[0]}{gpu.capability[1]} "
               f"({' '.join(gpu.arch_list)})")
    report.add("machine", "bf16", "ok" if gpu.bf16 else "no",
               "bf16 tensor cores (compute capability >= 8.0)" if gpu.bf16
               else f"no bf16 tensor cores (compute capability {gpu.sm} < 8.0): bf16 is emulated, slowly",
               None if gpu.bf16 else "diffusion.dtype: float16; train.precision: bf16 runs as fp16 + GradScaler here")
    return gpu


# ----------------------------------------------------------------------------- settings
FIXES = {"diffusion.fp8": ("fp8", False), "diffusion.attention": ("attention", "auto"),
         "diffusion.dtype": ("dtype", "float16")}


def settings_checks(report: Report, cfg: Config, device: torch.device, gpu: GpuInfo | None) -> Any:
    """params.yaml's generation settings against this device; returns the diffusion settings that can run."""
    dif = cfg.diffusion
    for _ in range(len(FIXES) + 1):
        try:
            notes = check_generation(dif, device, gpu)
        except ConfigError as e:
            key = str(e).split(":", 1)[0]
            if key not in FIXES:
                report.add("settings", key, "no", str(e))
                break
            attr, safe = FIXES[key]
            fix: dict[str, Any] = {attr: safe}
            report.add("settings", key, "no", str(e), f"{key}: {str(safe).lower()}")
            report.recommend_line("diffusion", attr, safe, str(e).split(";")[0])
            dif = dataclasses.replace(dif, **fix)
            continue
        for note in notes:
            report.add("settings", note.split(":", 1)[0], "info", note)
        report.add("settings", "diffusion", "ok", f"dtype {dif.dtype}, attention {dif.attention}, fp8 {dif.fp8}: "
                   f"run on this {'GPU' if gpu else 'machine'}")
        break
    precision = training_precision(cfg.train.precision, device, gpu)
    if precision.note:
        report.add("settings", "train.precision", "info", precision.note, "train.precision: bf16 (fp16 + GradScaler here) or fp32")
    else:
        report.add("settings", "train.precision", "ok", f"{cfg.train.precision} runs as {precision.name} here")
    return dif


# ----------------------------------------------------------------------------- generation (GPU)
def load_unet_and_vae(dif: Any, dtype: torch.dtype, device: torch.device) -> tuple[Any, Any, str]:
    """The configured model's UNet and VAE from the local Hugging Face cache (no download), or SD-1.4's
    architecture with random weights: the same shapes, so the same cost."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    kw = {"revision": dif.revision, "variant": dif.variant, "torch_dtype": dtype, "local_files_only": True}
    unet: Any
    vae: Any
    try:
        unet = UNet2DConditionModel.from_pretrained(dif.model, subfolder="unet", **kw)
        vae = AutoencoderKL.from_pretrained(dif.model, subfolder="vae", **kw)
        return unet.to(device).eval(), vae.to(device).eval(), f"{dif.model} (local weights)"
    except Exception as e:  # noqa: BLE001  not cached (the hub is never asked): the architecture, random weights
        reason = one_line(e)
    from diffaug.sandbox.tiny import SD14_UNET, SD14_VAE

    torch.manual_seed(0)
    with torch.device(device):  # built on the GPU: minutes faster than on the CPU
        unet = UNet2DConditionModel(**SD14_UNET)
        vae = AutoencoderKL(**SD14_VAE)
    return (unet.to(dtype).eval(), vae.to(dtype).eval(),
            f"SD-1.4 architecture, random weights ({dif.model} not in the local cache: {reason[:120]})")


def unet_inputs(unet: Any, batch: int, latent: int, dtype: torch.dtype, device: torch.device,
                channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(0)
    channels, width = unet.config.in_channels, unet.config.cross_attention_dim
    x = torch.randn(2 * batch, channels, latent, latent, generator=g, device=device, dtype=dtype)  # guidance: 2 per image
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    text = torch.randn(2 * batch, 77, width, generator=g, device=device, dtype=dtype)
    return x, text


def time_unet(unet: Any, batch: int, latent: int, dtype: torch.dtype, device: torch.device,
              attention: str = "auto", channels_last: bool = False, steps: int | None = None) -> float:
    """Seconds per denoising step (one UNet call on 2 x batch latents) after one warm-up call."""
    from torch.nn.attention import sdpa_kernel

    from diffaug.generate.sampler import ATTENTION_BACKENDS

    steps = steps or TIMED_STEPS
    x, text = unet_inputs(getattr(unet, "_orig_mod", unet), batch, latent, dtype, device, channels_last)
    context = sdpa_kernel(ATTENTION_BACKENDS[attention]) if attention in ATTENTION_BACKENDS else contextlib.nullcontext()
    with torch.inference_mode(), context:
        unet(x, 999, encoder_hidden_states=text)
        synchronize(device)
        start = time.perf_counter()
        for step in range(steps):
            unet(x, 999 - 20 * step, encoder_hidden_states=text)
        synchronize(device)
    return (time.perf_counter() - start) / steps


def generation_checks(report: Report, dif: Any, device: torch.device, gpu: GpuInfo) -> None:
    area = "generation"
    dtype = getattr(torch, dif.dtype)
    latent = dif.resolution // 8
    if importlib.util.find_spec("diffusers") is None:
        report.add(area, "levers", "skipped", "diffusers is not installed (pip install diffusers)")
        return
    if not report.room(area, "load the UNet", 30):
        return
    unet, vae, source = load_unet_and_vae(dif, dtype, device)
    report.machine["generation_model"] = source
    report.add(area, "model", "info", f"{source}; {dif.dtype}, {dif.resolution}px, batch {LEVER_BATCH} with guidance "
               f"({2 * LEVER_BATCH} latents per UNet call), {TIMED_STEPS} timed steps after 1 warm-up")
    per_image_steps = dif.steps

    def images_per_s(step_s: float) -> float:
        return LEVER_BATCH / (step_s * per_image_steps)

    base = None
    with attempt(report, area, "eager (attention auto)"):
        base = time_unet(unet, LEVER_BATCH, latent, dtype, device)
        report.add(area, "eager (attention auto)", "ok", f"{base * 1000:.1f} ms/step, {images_per_s(base):.2f} images/s "
                   f"at {per_image_steps} steps (UNet only)", value={"s_per_step": base})
    if base is None:
        return
    speeds: dict[str, float] = {"auto": base}
    for kernel in ("flash", "efficient", "cudnn", "math"):
        if not report.room(area, f"attention {kernel}", 10):
            break
        try:
            check_generation(dataclasses.replace(dif, attention=kernel), device, gpu)
        except ConfigError as e:
            report.add(area, f"attention {kernel}", "no", str(e))
            continue
        with attempt(report, area, f"attention {kernel}"):
            s = time_unet(unet, LEVER_BATCH, latent, dtype, device, attention=kernel)
            speeds[kernel] = s
            report.add(area, f"attention {kernel}", "ok", f"{s * 1000:.1f} ms/step ({base / s:.2f}x eager auto)",
                       f"diffusion.attention: {kernel}", value={"s_per_step": s})
    best = min(speeds, key=lambda k: speeds[k])
    best = best if speeds[best] < 0.97 * base else "auto"  # within 3%: not worth pinning a kernel
    report.recommend_line("diffusion", "attention", best, f"fastest measured here ({speeds[best] * 1000:.1f} ms/step)")
    if report.room(area, "fuse_qkv", 10):
        with attempt(report, area, "fuse_qkv"):
            unet.fuse_qkv_projections()
            s = time_unet(unet, LEVER_BATCH, latent, dtype, device)
            unet.unfuse_qkv_projections()
            report.add(area, "fuse_qkv", "ok", f"{s * 1000:.1f} ms/step ({base / s:.2f}x eager)", value={"s_per_step": s})
            report.recommend_line("diffusion", "fuse_qkv", s < base, f"{base / s:.2f}x measured here")
    if report.room(area, "channels_last", 10):
        with attempt(report, area, "channels_last"):
            unet.to(memory_format=torch.channels_last)
            s = time_unet(unet, LEVER_BATCH, latent, dtype, device, channels_last=True)
            unet.to(memory_format=torch.contiguous_format)
            report.add(area, "channels_last", "ok", f"{s * 1000:.1f} ms/step ({base / s:.2f}x eager)", value={"s_per_step": s})
            report.recommend_line("diffusion", "channels_last", s < 0.97 * base, f"{base / s:.2f}x measured here")
    batch_search(report, unet, vae, dif, dtype, device)
    if report.room(area, "torch.compile", 150):
        with attempt(report, area, "torch.compile"):
            compiled = torch.compile(unet)
            start = time.perf_counter()
            s = time_unet(compiled, LEVER_BATCH, latent, dtype, device)
            took = time.perf_counter() - start
            report.add(area, "torch.compile", "ok", f"{s * 1000:.1f} ms/step ({base / s:.2f}x eager) after "
                       f"{took:.0f}s compiling", value={"s_per_step": s, "compile_s": took})
            report.recommend_line("diffusion", "compile", "auto" if s < base else False,
                                  f"{base / s:.2f}x after {took:.0f}s compiling (auto compiles long runs only)")
    else:
        report.recommend_line("diffusion", "compile", dif.compile, "not measured here (budget)")
    fp8_check(report, unet, dif, device, gpu, base, latent)


def fp8_check(report: Report, unet: Any, dif: Any, device: torch.device, gpu: GpuInfo, base: float, latent: int) -> None:
    area = "generation"
    try:
        check_generation(dataclasses.replace(dif, fp8=True, dtype="bfloat16"), device, gpu)
    except ConfigError as e:
        report.add(area, "fp8", "no", str(e), "diffusion.fp8: false")
        return
    if not report.room(area, "fp8", 40):
        return
    with attempt(report, area, "fp8"):
        from diffaug.generate.model import apply_fp8

        unet.to(torch.bfloat16)
        unet.fuse_qkv_projections()  # quantize the fused projections too: fuse first, as generation does
        apply_fp8(unet)
        linears = [m for m in unet.modules() if isinstance(m, torch.nn.Linear)]
        plain = [m for m in linears if type(m.weight).__name__ in ("Parameter", "Tensor")]
        s = time_unet(unet, LEVER_BATCH, latent, torch.bfloat16, device)
        report.add(area, "fp8", "ok", f"{s * 1000:.1f} ms/step ({base / s:.2f}x eager {dif.dtype}); "
                   f"{len(linears) - len(plain)} of {len(linears)} Linear layers float8 (approximate: changes the images)",
                   "diffusion.fp8: true with diffusion.dtype: bfloat16 (approximate)", value={"s_per_step": s})


def batch_search(report: Report, unet: Any, vae: Any, dif: Any, dtype: torch.dtype, device: torch.device) -> None:
    """The largest batch whose denoising step (UNet on 2 x batch latents) and VAE decode (all at once) fit:
    batches double from 1 until one runs out of memory, peaks above MEMORY_HEADROOM of the free memory,
    or the budget ends. Recommends the smallest batch within 5% of the best images/s among those that fit."""
    area = "generation"
    latent = dif.resolution // 8
    free, _ = torch.cuda.mem_get_info(device)
    base_alloc = torch.cuda.memory_allocated(device)
    fits: dict[int, dict[str, float]] = {}
    batch, last_s = 1, 4.0
    while batch <= MAX_BATCH:
        if not report.room(area, f"batch {batch}", 2.5 * last_s + 2):  # twice the work of the last try, and some
            break
        trial = time.perf_counter()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            step = time_unet(unet, batch, latent, dtype, device, steps=1)
            with torch.inference_mode():
                z = torch.randn(batch, vae.config.latent_channels, latent, latent, device=device, dtype=dtype)
                vae.decode(z / vae.config.scaling_factor)
            synchronize(device)
        except torch.cuda.OutOfMemoryError:
            report.add(area, f"batch {batch}", "info", "out of memory (UNet step + VAE decode of the whole batch)")
            torch.cuda.empty_cache()
            break
        last_s = time.perf_counter() - trial
        peak = torch.cuda.max_memory_allocated(device) - base_alloc
        fits[batch] = {"peak_gib": peak / 2**30, "s_per_step": step, "images_per_s": batch / (step * dif.steps)}
        if peak > MEMORY_HEADROOM * free:
            break
        batch *= 2
    torch.cuda.empty_cache()
    safe = {b: v for b, v in fits.items() if v["peak_gib"] * 2**30 <= MEMORY_HEADROOM * free}
    if not safe:
        report.add(area, "largest batch", "no", "not even batch 1 fits in the free memory", "free GPU memory first")
        return
    largest = max(safe)
    top = max(v["images_per_s"] for v in safe.values())
    pick = min(b for b, v in safe.items() if v["images_per_s"] >= 0.95 * top)
    table = ", ".join(f"{b}: {v['peak_gib']:.1f} GiB" for b, v in fits.items())
    report.add(area, "largest batch", "ok", f"batch {largest} fits ({table}; free {free / 2**30:.1f} GiB, headroom "
               f"{MEMORY_HEADROOM:.0%}); batch {pick} is within 5% of the best UNet images/s",
               f"diffusion.batch_size: {pick}", value={"largest": largest, "recommended": pick, "peaks": fits})
    report.recommend_line("diffusion", "batch_size", pick, f"largest fitting here: {largest} (UNet + unsliced VAE decode)")


# ----------------------------------------------------------------------------- CPU generation path
def cpu_generation_check(report: Report) -> None:
    area = "generation"
    if importlib.util.find_spec("diffusers") is None:
        report.add(area, "CPU path", "skipped", "diffusers is not installed (pip install diffusers)")
        return
    if not report.room(area, "CPU path (tiny pipeline)", 20):
        return
    with attempt(report, area, "CPU path (tiny pipeline)"):
        from diffusers import StableDiffusionPipeline

        from diffaug.sandbox.tiny import build_tiny_pipeline

        with tempfile.TemporaryDirectory() as tmp:
            path = build_tiny_pipeline(Path(tmp) / "tiny", safety_checker=False)
            pipe = StableDiffusionPipeline.from_pretrained(path, torch_dtype=torch.float32)
            pipe.set_progress_bar_config(disable=True)
            start = time.perf_counter()
            images = pipe(["a cat", "a dog"], num_inference_steps=2, height=64, width=64, output_type="np",
                          generator=torch.Generator().manual_seed(0)).images
            took = time.perf_counter() - start
        ok = np.isfinite(images).all() and images.shape == (2, 64, 64, 3)
        report.add(area, "CPU path (tiny pipeline)", "ok" if ok else "no",
                   f"2 images, 2 steps of a tiny random SD pipeline in {took:.2f}s (proves the code path; "
                   f"a paper-sized run on a CPU takes months)", value={"s": took})
    report.recommend_line("diffusion", "dtype", "float32", "float16 is emulated on a CPU")
    report.recommend_line("diffusion", "compile", False, "inductor's gains are measured on CUDA only")


# ----------------------------------------------------------------------------- training
def mixture_sizes(cfg: Config) -> dict[str, int]:
    """Images per trained mixture implied by params.yaml (fractions of the real set and of each synthetic set)."""
    real = REAL_TRAIN_IMAGES.get(cfg.dataset.name, 50_000)
    classes = CLASSES.get(cfg.dataset.name, 10)
    sizes = {}
    for mix in cfg.trained_mixes:
        total = 0.0
        for source, frac in cfg.mixtures[mix].items():  # a filtered mixture: its size before filtering
            if cfg.is_synthetic(source):
                per_class = getattr(cfg.synthetic.sets[source], "images_per_class", None) or cfg.synthetic.images_per_class
                total += frac * per_class * classes
            else:
                total += frac * real
        sizes[mix] = int(total)
    return sizes


def training_checks(report: Report, cfg: Config, device: torch.device, gpu: GpuInfo | None) -> None:
    from diffaug.train.loop import Trainer, steps_per_epoch

    area = "training"
    tr, recipe = cfg.train, cfg.train.active
    precision = training_precision(tr.precision, device, gpu)
    sizes = mixture_sizes(cfg)
    largest_mix = max(sizes, key=lambda m: sizes[m]) if sizes else None
    n_mix = sizes[largest_mix] if largest_mix else 50_000
    on_gpu = device.type == "cuda"
    timed = TRAIN_TIMED_STEPS if on_gpu else 2
    batch = recipe.batch_size
    step_batch = batch if on_gpu else min(batch, CPU_STEP_BATCH)  # a CPU: small steps, per-image time scaled up
    if not report.room(area, f"{cfg.model} step", 30 if on_gpu else 15):
        return
    with attempt(report, area, f"{cfg.model} step"):
        n = step_batch * (timed + 4)
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, CLASSES.get(cfg.dataset.name, 10), n)
        trainer = Trainer(cfg.model, tr.variant, CLASSES.get(cfg.dataset.name, 10),
                          dataclasses.replace(recipe, batch_size=step_batch), images, labels, seed=0,
                          device=device, precision=precision.name, channels_last=tr.channels_last, compile=tr.compile,
                          cuda_graph=tr.cuda_graph)
        trainer.train_epoch(max_steps=2 if on_gpu else 1)  # capture and proof of the CUDA graph, cuDNN/cuBLAS handles
        synchronize(device)
        mode = trainer.step_mode
        if not on_gpu:
            report.add(area, "CUDA graph", "info", f"no CUDA: the static step runs uncaptured ({mode})")
        elif not tr.cuda_graph:
            report.add(area, "CUDA graph", "info", "train.cuda_graph: false: not tried", "train.cuda_graph: true (it proves itself)")
        elif mode == "cuda_graph":
            report.add(area, "CUDA graph", "ok", "captured, and its first replays match the eager step", "train.cuda_graph: true")
            report.recommend_line("train", "cuda_graph", True, "captured and matched eager here")
        else:
            report.add(area, "CUDA graph", "no", mode, "train.cuda_graph: false (training falls back to eager anyway)")
            report.recommend_line("train", "cuda_graph", False, mode)
        start = time.perf_counter()
        trainer.train_epoch(max_steps=timed)
        synchronize(device)
        per_step = (time.perf_counter() - start) / timed * batch / step_batch
        epoch = per_step * steps_per_epoch(n_mix, batch, recipe.pad_last_batch)
        grid = sum(steps_per_epoch(s, batch, recipe.pad_last_batch) for s in sizes.values()) * per_step \
            * recipe.epochs * len(tr.seeds)
        scaled = "" if step_batch == batch else f", timed at batch {step_batch} and scaled"
        report.add(area, f"{cfg.model} epoch", "ok", f"{per_step * 1000:.1f} ms/step at batch {batch}{scaled} ({precision.name}, "
                   f"{mode}): about {epoch:.1f}s per epoch of {largest_mix or 'a 50k mixture'} ({n_mix} images); "
                   f"the {len(sizes)} mixtures x {recipe.epochs} epochs x {len(tr.seeds)} seeds: about {grid / 3600:.1f} h",
                   value={"s_per_step": per_step, "s_per_epoch": epoch, "mixture": largest_mix, "images": n_mix,
                          "grid_h": grid / 3600})
        del trainer
        if on_gpu:
            torch.cuda.empty_cache()
            report.recommend_line("train", "precision", "bf16", f"runs as {precision.name} here")
        else:
            report.recommend_line("train", "precision", "fp32", "a CPU trains in float32 whatever is set")


# ----------------------------------------------------------------------------- output
def recommended_yaml(report: Report) -> str:
    lines = ["# params.yaml lines diffaug.doctor recommends for this machine"]
    for section, values in report.recommend.items():
        if not values:
            continue
        lines.append(f"{section}:")
        for key, value in values.items():
            text = "true" if value is True else "false" if value is False else str(value)
            lines.append(f"  {key}: {text}".ljust(32) + f"# {report.comments[f'{section}.{key}']}")
    return "\n".join(lines)


def print_table(report: Report) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        return  # the lines were printed as they came
    table = Table(title="diffaug doctor", show_lines=False)
    for column in ("area", "check", "result", "detail", "setting"):
        table.add_column(column, overflow="fold")
    colour = {"ok": "green", "no": "red", "info": "cyan", "skipped": "yellow"}
    for c in report.checks:
        table.add_row(c.area, c.name, f"[{colour[c.status]}]{c.status}[/]", c.detail, c.setting or "")
    Console(width=160).print(table)


def quiet_libraries() -> None:
    """diffusers/transformers progress bars and deprecation chatter would bury the one line per check."""
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if importlib.util.find_spec("diffusers") is not None:  # a GPU machine may lack it: the checks that need it say so
        from diffaug.generate.model import quiet_libraries as quiet_diffusers

        quiet_diffusers()


def run(cfg: Config, budget_s: float, params_note: str) -> Report:
    quiet_libraries()
    report = Report(budget_s)
    report.add("machine", "params", "info", params_note)
    device = resolve_device(cfg.diffusion.device, "diffusion.device")
    gpu = machine_checks(report, device)
    dif = settings_checks(report, cfg, device, gpu)
    steps: list[Callable[[], None]]
    if gpu is not None:
        # generation first: the trainer switches on deterministic kernels process-wide, which would slow the
        # UNet timings; the budget keeps time back for the training check
        def generation() -> None:
            report.reserve_s = TRAINING_RESERVE_S
            try:
                generation_checks(report, dif, device, gpu)
            finally:
                report.reserve_s = 0.0
                torch.cuda.empty_cache()

        steps = [generation, lambda: training_checks(report, cfg, device, gpu)]
    else:
        steps = [lambda: cpu_generation_check(report), lambda: training_checks(report, cfg, device, None)]
    for step in steps:
        try:
            step()
        except Exception as e:  # noqa: BLE001  a check's failure is its line, never the doctor's end
            report.add("doctor", "check", "no", one_line(e))
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = OneLineParser(prog="python -m diffaug.doctor", description=__doc__.split("\n\n")[0])
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="the pipeline's params.yaml")
    p.add_argument("--json", type=Path, default=Path("doctor.json"), help="where to write the report (JSON)")
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="stop starting checks after this many seconds")
    args = p.parse_args(argv)
    if args.budget_s <= 0:
        raise UserError(f"--budget-s: got {args.budget_s}; allowed: a number of seconds > 0")
    return args


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.params.is_file():
        cfg, note = load_config(args.params), f"settings from {args.params}"
    else:
        cfg, note = parse_config({"mixtures": {"orig100": {"orig": 1.0}}}), f"{args.params} not found: checking the built-in defaults"
    report = run(cfg, args.budget_s, note)
    print_table(report)
    yaml_text = recommended_yaml(report)
    print(yaml_text)
    elapsed = time.perf_counter() - report.start
    out = {"elapsed_s": round(elapsed, 1), "budget_s": args.budget_s, "machine": report.machine,
           "cpu_only": report.machine.get("gpu") is None,
           "checks": [dataclasses.asdict(c) for c in report.checks],
           "recommendations": report.recommend, "recommended_yaml": yaml_text}
    write_bytes_atomic(args.json, (json.dumps(out, indent=1, default=str) + "\n").encode())
    print(f"doctor: {len(report.checks)} checks in {elapsed:.0f}s; wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
