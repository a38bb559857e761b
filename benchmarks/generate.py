"""Images/s of SD-v1.4 generation: plain diffusers vs diffaug's sampler, measured in one run.

    python benchmarks/generate.py --sweep                # every lever, one H100, < 9 min (see sweep())
    python benchmarks/generate.py --sweep --tiny         # the same path on the tiny pipeline, seconds on a CPU
    python benchmarks/generate.py                        # quick: plain b1/8/32 vs ours with the given levers
    python benchmarks/generate.py --compile              # add torch.compile to our levers
    python benchmarks/generate.py --tiny --device cpu    # smoke test: tiny pipeline, seconds on a CPU

Plain = `StableDiffusionPipeline.__call__` at the paper's settings (512², 50 steps, guidance 7.5,
the model's PNDM scheduler, safety checker on, PIL output, then PIL bilinear to 32x32 as the paper
did) at batch 1, 8 and 32. Ours = diffaug.generate's Sampler.run_batch (what the CLI runs, minus
file writes) with each speed lever switchable, plus the DPM-Solver++ 20-step fast preset. Weights
are random (built from SD-v1.4's configs: same FLOPs and memory traffic, no download); the random
safety checker never flags, so no regenerations are timed. Warm-up calls are excluded and CUDA is
synchronised around every timed region. Prints a table and appends a Markdown row to
benchmarks/RESULTS.md (device, date, command). Needs torch, diffusers, transformers; not dvc.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import math
import platform
import shlex
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

try:
    import diffaug  # noqa: F401
except ImportError:  # a GPU box with the repository but no `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from diffaug.generate.model import (  # noqa: E402
    DTYPE_NAMES,
    apply_fp8,
    apply_speed_levers,
    fp8_unavailable_reason,
    quiet_libraries,
    torch_dtype,
    use_inductor_cache,
)
from diffaug.generate.sampler import Sampler, downsample, make_scheduler, to_uint8  # noqa: E402
from diffaug.io import write_bytes_atomic  # noqa: E402
from diffaug.sandbox.tiny import build_sd14_random, build_tiny_pipeline  # noqa: E402

PROMPT = "a photo of a car"
REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny random pipeline and sizes (CPU smoke test)")
    p.add_argument("--device", default="auto", help="auto | cuda | cpu | cuda:N")
    p.add_argument("--dtype", choices=list(DTYPE_NAMES), help="default: float16 (float32 with --tiny)")
    p.add_argument("--resolution", type=int, help="default: 512 (64 with --tiny)")
    p.add_argument("--steps", type=int, help="default: 50 (3 with --tiny)")
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--plain-batches", help="comma-separated; default: 1,8,32 (1,2,4 with --tiny)")
    p.add_argument("--batch", type=int, help="our batch size; default: 32 (4 with --tiny)")
    p.add_argument("--images", type=int, help="images timed per configuration (whole batches); default: 32 (4 with --tiny)")
    p.add_argument("--out-size", type=int, default=32, help="dataset image size to downsample to")
    p.add_argument("--fast-steps", type=int, help="DPM-Solver++ preset steps, 0 skips it; default: 20 (2 with --tiny)")
    for lever, default in (("channels-last", False), ("fuse-qkv", True), ("compile", False), ("safety-checker", True)):
        p.add_argument(f"--{lever}", action=argparse.BooleanOptionalAction, default=default)
    p.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")), help="Markdown file to append to")
    p.add_argument("--no-record", action="store_true", help="print only; do not append to --results")
    p.add_argument("--sweep", action="store_true", help="every lever combination in one run (see sweep())")
    p.add_argument("--json", help="--sweep: where to write the JSON (default benchmarks/results/generate-<date>.json)")
    p.add_argument("--repeats", type=int, default=1, help="--sweep: timed batches per configuration")
    p.add_argument("--budget-s", type=float, help="--sweep: skip configurations once this much time is spent "
                   "(default 500 on a GPU: the sweep ends within 9 minutes)")
    args = p.parse_args(argv)
    tiny = args.tiny
    args.dtype = args.dtype or ("float32" if tiny else "float16")
    args.resolution = args.resolution or (64 if tiny else 512)
    args.steps = args.steps or (3 if tiny else 50)
    args.plain_batches = [int(b) for b in (args.plain_batches or ("1,2,4" if tiny else "1,8,32")).split(",")]
    args.batch = args.batch or (4 if tiny else 32)
    args.images = args.images or (4 if tiny else 32)
    args.fast_steps = (2 if tiny else 20) if args.fast_steps is None else args.fast_steps
    return args


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(fn, batch: int, images: int, device: torch.device) -> float:
    """Warm up once (excluded), then time whole batches covering at least `images` images."""
    fn(batch)
    calls = max(1, math.ceil(images / batch))
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn(batch)
    synchronize(device)
    return calls * batch / (time.perf_counter() - start)


def build(args, device: torch.device, tmp: str):
    dtype = torch_dtype(args.dtype)
    if args.tiny:
        path = build_tiny_pipeline(Path(tmp) / "tiny", safety_checker=args.safety_checker)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch_dtype is being renamed to dtype
            pipe = StableDiffusionPipeline.from_pretrained(str(path), torch_dtype=dtype).to(device)
    else:
        pipe = build_sd14_random(dtype, device, safety_checker=args.safety_checker)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def plain_runner(pipe, args):
    def run(batch: int) -> None:
        generators = [torch.Generator("cpu").manual_seed(i) for i in range(batch)]
        images = pipe([PROMPT] * batch, height=args.resolution, width=args.resolution, num_inference_steps=args.steps,
                      guidance_scale=args.guidance, generator=generators, output_type="pil").images
        [im.resize((args.out_size, args.out_size), Image.BILINEAR) for im in images]

    return run


def our_runner(pipe, args, *, scheduler: str, steps: int):
    sampler = Sampler(pipe, steps=steps, guidance_scale=args.guidance, resolution=args.resolution,
                      out_size=(args.out_size, args.out_size), scheduler=scheduler,
                      safety_checker=args.safety_checker, compile=args.compile)
    sampler.encode_prompts([PROMPT], None)

    def run(batch: int) -> None:
        sampler.run_batch(list(range(batch)), [PROMPT] * batch)

    return run


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


RESULTS_SECTION = "Generation throughput, images/s (benchmarks/generate.py)"
RESULTS_HEADER = ["date", "device", "torch / diffusers", "command", "plain diffusers, by batch size", "ours",
                  "ours, DPM-Solver++ fast preset", "ours / plain at its largest batch"]


def record(path: Path, row: list[str]) -> None:
    """Append `row` to the table under this script's `## section` of RESULTS.md (other benchmarks
    keep their own sections in the same file); the section is created on first use."""
    lines = (path.read_text() if path.exists() else "# Benchmark results\n").rstrip("\n").splitlines()
    line = "| " + " | ".join(row) + " |"
    heading = f"## {RESULTS_SECTION}"
    if heading not in lines:
        lines += ["", heading, "", "Plain = diffusers `StableDiffusionPipeline.__call__` at the paper's settings (PNDM, "
                  "PIL output, PIL bilinear to 32²); ours = `diffaug.generate`'s sampler with the levers in the command "
                  "(default: channels_last + fused QKV). Random weights, SD-v1.4's architecture.", "",
                  "| " + " | ".join(RESULTS_HEADER) + " |", "|" + "---|" * len(RESULTS_HEADER), line]
    else:
        i = lines.index(heading) + 1
        while i < len(lines) and not lines[i].startswith(("|", "## ")):
            i += 1
        while i < len(lines) and lines[i].startswith("|"):
            i += 1
        lines.insert(i, line)
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode())


def main(argv=None) -> dict:
    args = parse_args(argv)
    quiet_libraries()
    if args.sweep:
        return sweep(args, argv if argv is not None else sys.argv[1:])
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    results: dict[str, float] = {}
    rows: list[tuple[str, int, float]] = []  # (what, batch, images/s) for the table

    def measure(key: str, what: str, fn, batch: int) -> None:
        results[key] = images_per_second(fn, batch, args.images, device)
        rows.append((what, batch, results[key]))
        print(f"{what:<44} batch {batch:3d}: {results[key]:9.3f} images/s", flush=True)

    levers = ", ".join(name for name, on in (("channels_last", args.channels_last), ("fused QKV", args.fuse_qkv),
                                             ("compile", args.compile)) if on) or "no levers"
    with tempfile.TemporaryDirectory() as tmp:
        pipe = build(args, device, tmp)
        for b in args.plain_batches:  # the stock pipeline first, before any lever touches the modules
            measure(f"plain b{b}", f"plain diffusers, PNDM {args.steps} steps", plain_runner(pipe, args), b)
        apply_speed_levers(pipe, channels_last=args.channels_last, fuse_qkv=args.fuse_qkv)
        measure("ours", f"ours ({levers}), PNDM {args.steps} steps",
                our_runner(pipe, args, scheduler="default", steps=args.steps), args.batch)
        if args.fast_steps:
            measure("ours fast", f"ours ({levers}), DPM-Solver++ {args.fast_steps} steps",
                    our_runner(pipe, args, scheduler="dpmsolver++", steps=args.fast_steps), args.batch)
    largest = max(args.plain_batches)
    ratio = results["ours"] / results[f"plain b{largest}"]
    print(f"\n| configuration | batch | images/s | vs plain b{largest} |\n|---|---|---|---|")
    for what, batch, rate in rows:
        print(f"| {what} | {batch} | {rate:.3f} | {rate / results[f'plain b{largest}']:.2f}x |")
    print(f"\nours / plain at batch {largest}: {ratio:.2f}x ({args.resolution}², guidance {args.guidance}, {device_name(device)})")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    if not args.no_record:
        command = "python benchmarks/generate.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        plain = " · ".join(f"b{b} {results[f'plain b{b}']:.3f}" for b in args.plain_batches)
        fast = f"b{args.batch} {results['ours fast']:.3f} ({args.fast_steps} steps)" if "ours fast" in results else "-"
        record(Path(args.results), [datetime.date.today().isoformat(), device_name(device),
                                    f"{torch.__version__} / {diffusers.__version__}", f"`{command.strip()}`",
                                    plain, f"b{args.batch} {results['ours']:.3f}", fast, f"{ratio:.2f}x"])
    return results


# ============================================================================= --sweep
# One run, one device: plain diffusers at batch 32, then every lever of issue 10 on our Sampler, in
# priority order so that the time guard (--budget-s) drops the least important ones. Per
# configuration: images/s (one warm-up batch at 2 steps, which also pays for compilation, then
# --repeats timed batches at full steps, synchronised between components), the split into denoise /
# decode / uint8+downsample+copy / safety checker, the UNet's effective TFLOP/s (FLOPs counted with
# torch.utils.flop_counter on one forward), compile time (warm-up minus a warm 2-step batch), peak
# GPU memory, and the pixel difference against the exact path (ours, eager, no levers) on the same
# seeds. One compiled denoising step is profiled (torch.profiler) and its kernel time attributed to
# attention / convolution / norm / matmul / elementwise; the top kernels go into the JSON.
# With --tiny (CPU) the same code runs on the tiny random pipeline in seconds; compiled
# configurations use dynamo's eager backend there (tracing only: inductor on 2 CPU cores would take
# minutes), and CUDA-only levers are recorded as skipped.
SWEEP_SECTION = "Generation lever sweep (benchmarks/generate.py --sweep)"
SWEEP_PROMPTS = ["a photo of a car", "a photo of a bird", "a photo of a cat", "a photo of a ship"]
RECOGNITION_NOTE = ("recognition score not measured: the weights are random (no download), so a classifier's "
                    "score on these images means nothing; for real weights, make a set with the lever "
                    "(dvc exp run -S diffusion.<lever>=...) and read evaluate's synthetic_quality.json")
CATEGORIES = (  # first match wins: kernel or op name -> share of a denoising step
    ("attention", ("attention", "flash", "fmha", "sdpa", "softmax", "mha")),
    ("convolution", ("conv", "fprop", "dgrad", "implicit", "winograd", "nhwckrsc")),
    ("norm", ("norm", "var_mean", "welford")),
    ("matmul", ("gemm", "matmul", "linear", "cutlass", "addmm", "bmm", "aten::mm", "sm90_xmma", "sm80_xmma")),
)

VIEW_OPS = {"as_strided", "view", "reshape", "expand", "permute", "transpose", "slice", "select", "unsqueeze", "squeeze",
            "t", "empty", "empty_strided", "detach", "alias", "lift_fresh", "_unsafe_view", "chunk", "split"}


@dataclass
class SweepConfig:
    name: str
    kind: str  # plain | exact (same images) | dtype (diffusion.dtype: a pixel setting) | approximate
    batch: int
    dtype: str
    fuse_qkv: bool = True
    channels_last: bool = False
    compile: bool = False
    mode: str = "default"  # inductor mode; reduce-overhead = CUDA graphs
    attention: str = "auto"
    scheduler: str = "default"
    steps: int = 0  # 0: the run's --steps
    deep_cache: int = 0
    fp8: bool = False
    profiled: bool = False


def sweep_configs(args) -> list[SweepConfig]:
    b, dt, fast, C = args.batch, args.dtype, args.fast_steps, SweepConfig
    other = "bfloat16" if dt != "bfloat16" else "float16"
    bigger = (6, 8) if args.tiny else (48, 64)
    return [
        C("plain diffusers (PNDM, PIL output)", "plain", b, dt, fuse_qkv=False),
        C("ours eager, no levers", "exact", b, dt, fuse_qkv=False),
        C("ours compiled, fused QKV (default on CUDA)", "exact", b, dt, compile=True, profiled=True),
        C(f"fast scheduler preset: DPM-Solver++ {fast} steps, compiled", "approximate", b, dt, compile=True,
          scheduler="dpmsolver++", steps=fast),
        C("DeepCache every 3 steps, compiled", "approximate", b, dt, compile=True, deep_cache=3),
        C(f"DPM-Solver++ {fast} steps + DeepCache 2, compiled", "approximate", b, dt, compile=True,
          scheduler="dpmsolver++", steps=fast, deep_cache=2),
        C("FP8 (torchao dynamic row-wise), compiled", "approximate", b, dt, compile=True, fp8=True),
        C(f"DPM-Solver++ {fast} steps + DeepCache 2 + FP8, compiled", "approximate", b, dt, compile=True,
          scheduler="dpmsolver++", steps=fast, deep_cache=2, fp8=True),
        C("ours eager, fused QKV", "exact", b, dt),
        C("ours eager, fused QKV + channels_last (the old default)", "exact", b, dt, channels_last=True),
        C("ours eager, fused QKV, SDPA cuDNN", "exact", b, dt, attention="cudnn"),
        C("ours eager, fused QKV, SDPA flash", "exact", b, dt, attention="flash"),
        C("ours eager, fused QKV, SDPA mem-efficient", "exact", b, dt, attention="efficient"),
        C("ours compiled + CUDA graphs (reduce-overhead)", "exact", b, dt, compile=True, mode="reduce-overhead"),
        C("ours compiled + channels_last", "exact", b, dt, compile=True, channels_last=True),
        C(f"ours compiled, {other}", "dtype", b, other, compile=True),  # dtype is a pixel setting: other images
        C(f"ours compiled, batch {bigger[0]}", "exact", bigger[0], dt, compile=True),
        C(f"ours compiled, batch {bigger[1]}", "exact", bigger[1], dt, compile=True),
        C("ours compiled, max-autotune-no-cudagraphs", "exact", b, dt, compile=True, mode="max-autotune-no-cudagraphs"),
    ]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"


class Pipes:
    """One pipeline per dtype (same random weights), with fused QKV / channels_last switched on demand."""

    def __init__(self, args, device: torch.device, tmp: str):
        self.args, self.device, self.tmp = args, device, tmp
        self.pipes: dict[str, Any] = {}
        self.state: dict[str, tuple[bool, bool]] = {}

    def get(self, dtype: str, *, fuse_qkv: bool, channels_last: bool):
        if dtype not in self.pipes:
            torch.manual_seed(0)
            if self.args.tiny:
                path = Path(self.tmp) / "tiny"
                if not path.exists():
                    build_tiny_pipeline(path, safety_checker=self.args.safety_checker)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)
                    pipe = StableDiffusionPipeline.from_pretrained(str(path), torch_dtype=torch_dtype(dtype)).to(self.device)
            else:
                pipe = build_sd14_random(torch_dtype(dtype), self.device, safety_checker=self.args.safety_checker)
            pipe.set_progress_bar_config(disable=True)
            self.pipes[dtype], self.state[dtype] = pipe, (False, False)
        pipe = self.pipes[dtype]
        fused, nhwc = self.state[dtype]
        if fused != fuse_qkv:
            (pipe.fuse_qkv_projections if fuse_qkv else pipe.unfuse_qkv_projections)(unet=True, vae=True)
        if nhwc != channels_last:
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            pipe.unet.to(memory_format=fmt)
            pipe.vae.to(memory_format=fmt)
        self.state[dtype] = (fuse_qkv, channels_last)
        return pipe


def unet_flops_per_image(pipe, args, device: torch.device) -> float:
    """FLOPs of one UNet forward for one latent (torch.utils.flop_counter: matmuls, convolutions, attention)."""
    latent = args.resolution // pipe.vae_scale_factor
    x = torch.randn((1, pipe.unet.config.in_channels, latent, latent), device=device, dtype=pipe.unet.dtype)
    context = torch.randn((1, 77, pipe.unet.config.cross_attention_dim), device=device, dtype=pipe.unet.dtype)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        pipe.unet(x, torch.tensor(500, device=device), encoder_hidden_states=context, return_dict=False)
    return float(counter.get_total_flops())


def timed_batch(s: Sampler, seeds: list[int], prompts: list[str], device: torch.device) -> tuple[dict[str, float], np.ndarray]:
    """Sampler.run_batch's steps with a sync between components: seconds per component, uint8 NHWC images."""
    _sync(device)
    t0 = time.perf_counter()
    latents = s.denoise(s.initial_latents(seeds), s.embeddings(prompts))
    _sync(device)
    t1 = time.perf_counter()
    decoded = s.decode(latents)
    _sync(device)
    t2 = time.perf_counter()
    full = to_uint8(decoded)
    downsample(full, s.out_size).cpu()
    full_cpu = full.cpu()
    t3 = time.perf_counter()
    if s.check_safety:
        s.safety_flags(full_cpu)
    t4 = time.perf_counter()
    parts = {"denoise_s": t1 - t0, "decode_s": t2 - t1, "uint8_downsample_copy_s": t3 - t2, "safety_s": t4 - t3, "total_s": t4 - t0}
    return parts, full_cpu.permute(0, 2, 3, 1).numpy()


def categorize(name: str) -> str:
    low = name.lower()
    for category, keys in CATEGORIES:
        if any(k in low for k in keys):
            return category
    return "elementwise"


def profile_step(s: Sampler, seeds: list[int], prompts: list[str], device: torch.device) -> dict[str, Any]:
    """Kernel time of one denoising step (UNet on [uncond; cond], guidance, scheduler), by category."""
    embeds = s.embeddings(prompts)
    s.scheduler.set_timesteps(s.steps, device="cpu")
    t = s.scheduler.timesteps[0]
    latents = s.initial_latents(seeds) * s.scheduler.init_noise_sigma
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.no_grad(), s.attention_kernels():
        s.step(0, t, t.to(device), latents, embeds)  # once outside the profiler (PNDM's first-step state)
        _sync(device)
        s.scheduler.set_timesteps(s.steps, device="cpu")
        with profile(activities=activities) as prof:
            s.step(0, t, t.to(device), latents, embeds)
            _sync(device)
    events = prof.key_averages()
    if device.type == "cuda":
        kernels = [(e.key, e.self_device_time_total) for e in events
                   if e.device_type == torch.autograd.DeviceType.CUDA and e.self_device_time_total > 0]
        clock = "GPU kernel time"
    else:
        kernels = [(e.key, e.self_cpu_time_total) for e in events
                   if e.key.startswith("aten::") and e.key[6:] not in VIEW_OPS and e.self_cpu_time_total > 0]
        clock = "CPU self time of aten ops"
    total = sum(us for _, us in kernels) or 1.0
    shares: dict[str, float] = {}
    for name, us in kernels:
        shares[categorize(name)] = shares.get(categorize(name), 0.0) + us
    top = sorted(kernels, key=lambda k: -k[1])[:15]
    return {
        "clock": clock, "total_ms": total / 1e3,
        "share": {k: round(v / total, 4) for k, v in sorted(shares.items(), key=lambda kv: -kv[1])},
        "top_kernels": [{"name": n[:160], "category": categorize(n), "ms": round(us / 1e3, 4), "share": round(us / total, 4)}
                        for n, us in top],
    }


def skip_reason(c: SweepConfig, device: torch.device) -> str | None:
    if device.type != "cuda":
        if c.mode != "default":
            return f"{c.mode}: an inductor mode on CUDA only (CPU sweeps trace with dynamo's eager backend)"
        if c.attention in ("cudnn", "efficient"):
            return f"SDPA {c.attention}: a CUDA kernel"
    if c.fp8:
        return fp8_unavailable_reason(device)
    return None


def run_config(c: SweepConfig, pipes: Pipes, samplers: dict, args, device: torch.device, flops: float,
               exact: np.ndarray | None) -> tuple[dict[str, Any], np.ndarray | None]:
    steps = c.steps or args.steps
    row: dict[str, Any] = {**dataclasses.asdict(c), "steps": steps, "status": "ok"}
    seeds = list(range(c.batch))
    prompts = [SWEEP_PROMPTS[i % len(SWEEP_PROMPTS)] for i in seeds]
    pipe = pipes.get(c.dtype, fuse_qkv=c.fuse_qkv, channels_last=c.channels_last)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    if c.kind == "plain":
        def call(n_steps: int) -> None:
            generators = [torch.Generator("cpu").manual_seed(i) for i in seeds]
            pipe(prompts, height=args.resolution, width=args.resolution, num_inference_steps=n_steps,
                 guidance_scale=args.guidance, generator=generators, output_type="pil")

        call(2)
        _sync(device)
        start = time.perf_counter()
        for _ in range(args.repeats):
            call(steps)
        _sync(device)
        seconds = (time.perf_counter() - start) / args.repeats
        row.update(images_per_s=c.batch / seconds, total_s=seconds)
        if device.type == "cuda":
            row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        return row, None
    # A configuration that differs from an earlier one only in scheduler, steps or DeepCache interval
    # reuses its Sampler: the compiled graphs are the same, so nothing is traced or compiled again.
    key = (c.dtype, c.fuse_qkv, c.channels_last, c.compile, c.mode, c.attention, bool(c.deep_cache), c.fp8, c.batch)
    s = samplers.get(key)
    if s is not None:
        s.scheduler, s.steps = make_scheduler(s.pipe, c.scheduler), steps
        if s.deep_cache is not None:
            s.deep_cache.interval = c.deep_cache
    else:
        if c.compile:
            use_inductor_cache(REPO)
            torch._dynamo.reset()  # fresh guards: no silent fall-back to eager after 8 recompiles of the UNet
        unet = pipe.unet
        if c.fp8:
            pipe.unet = copy.deepcopy(unet)
            apply_fp8(pipe)
        try:
            s = Sampler(pipe, steps=steps, guidance_scale=args.guidance, resolution=args.resolution,
                        out_size=(args.out_size, args.out_size), scheduler=c.scheduler, safety_checker=args.safety_checker,
                        compile=c.compile, compile_mode=c.mode, compile_backend="inductor" if device.type == "cuda" else "eager",
                        attention=c.attention, deep_cache=c.deep_cache)
        finally:
            pipe.unet = unet  # the Sampler keeps the (quantized) module it was built with
        samplers[key] = s
    s.encode_prompts(sorted(set(prompts)), None)
    s.steps = min(2, steps)  # warm-up: compiles every graph the loop uses (DeepCache: a full and a shallow step)
    _sync(device)
    start = time.perf_counter()
    timed_batch(s, seeds, prompts, device)
    warm_s = time.perf_counter() - start
    s.steps = steps
    runs = [timed_batch(s, seeds, prompts, device) for _ in range(args.repeats)]
    parts = {k: float(np.mean([r[0][k] for r in runs])) for k in runs[0][0]}
    images = runs[0][1]
    two_steps = parts["total_s"] - parts["denoise_s"] * (1 - min(2, steps) / steps)
    guided = 2 if s.guided else 1
    row.update(parts, images_per_s=c.batch / parts["total_s"], warmup_s=warm_s,
               compile_s=max(0.0, warm_s - two_steps) if c.compile else 0.0,
               unet_tflops_effective=flops * guided * steps * c.batch / parts["denoise_s"] / 1e12)
    if device.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if exact is not None and exact.shape[1:] == images.shape[1:]:
        n = min(len(exact), len(images))  # the same seeds 0..n-1 in both
        diff = np.abs(images[:n].astype(np.int16) - exact[:n].astype(np.int16))
        row.update(diff_mean=float(diff.mean()), diff_max=int(diff.max()), diff_fraction=float(np.mean(diff > 0)))
    if c.profiled:
        row["profile"] = profile_step(s, seeds, prompts, device)
    return row, images


def _fmt(row: dict[str, Any], key: str, spec: str) -> str:
    return format(row[key], spec) if isinstance(row.get(key), (int, float)) else "-"


def sweep_table(rows: list[dict[str, Any]]) -> list[str]:
    plain = next((r["images_per_s"] for r in rows if r["kind"] == "plain" and r["status"] == "ok"), None)
    head = ["configuration", "kind", "batch", "steps", "images/s", "vs plain", "denoise s", "decode s", "safety s",
            "UNet TFLOP/s", "compile s", "peak GiB", "vs exact: mean / max levels (fraction)", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ok = r["status"] == "ok"
        ratio = f"{r['images_per_s'] / plain:.2f}x" if ok and plain else "-"
        diff = (f"{r['diff_mean']:.3f} / {r['diff_max']} ({r['diff_fraction']:.2%})" if "diff_mean" in r else "-")
        lines.append("| " + " | ".join([
            r["name"], r["kind"], str(r["batch"]), str(r["steps"]), _fmt(r, "images_per_s", ".3f"), ratio,
            _fmt(r, "denoise_s", ".3f"), _fmt(r, "decode_s", ".3f"), _fmt(r, "safety_s", ".3f"),
            _fmt(r, "unet_tflops_effective", ".3g"), _fmt(r, "compile_s", ".1f"), _fmt(r, "peak_gib", ".1f"), diff,
            r.get("note", "") if ok else r["status"]]) + " |")
    return lines


def record_sweep(path: Path, block: list[str]) -> None:
    """Append `block` at the end of this script's sweep section of RESULTS.md (created on first use)."""
    lines = (path.read_text() if path.exists() else "# Benchmark results\n").rstrip("\n").splitlines()
    heading = f"## {SWEEP_SECTION}"
    if heading not in lines:
        lines += ["", heading, "", "Appended by `python benchmarks/generate.py --sweep`: one block per run, every row "
                  "measured in that run on that device (compare within a block). Random weights, SD-v1.4's "
                  "architecture; `vs exact` is the uint8 difference from ours-eager-no-levers on the same seeds. A CPU "
                  "block (`--tiny`) only proves the path runs end to end; its numbers say nothing about a GPU."]
        end = len(lines)
    else:
        end = lines.index(heading) + 1
        while end < len(lines) and not lines[end].startswith("## "):
            end += 1
    lines[end:end] = [""] + block
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode())


def sweep(args, argv: list[str]) -> dict[str, Any]:
    started = time.perf_counter()
    if args.tiny:
        torch.set_num_threads(1)  # a model this small only loses from threads (and the CPU may be shared)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    budget = args.budget_s if args.budget_s is not None else (500.0 if device.type == "cuda" else 300.0)
    command = "python benchmarks/generate.py " + " ".join(shlex.quote(a) for a in argv)
    rows: list[dict[str, Any]] = []
    exact: np.ndarray | None = None
    last_batch_s = 12.0 if device.type == "cuda" else 1.0  # before anything is measured
    traced_on_cpu = False
    with tempfile.TemporaryDirectory() as tmp:
        pipes = Pipes(args, device, tmp)
        samplers: dict = {}
        flops = unet_flops_per_image(pipes.get(args.dtype, fuse_qkv=False, channels_last=False), args, device)
        for c in sweep_configs(args):
            elapsed = time.perf_counter() - started
            steps = c.steps or args.steps
            compile_guess = (0 if not c.compile or device.type != "cuda"
                             else 400 if c.mode.startswith("max-autotune") else 60)
            needed = compile_guess + last_batch_s * (steps / args.steps) * (c.batch / args.batch) * (args.repeats + 0.3)
            reason = skip_reason(c, device)
            note = ""
            if reason is None and c.compile and device.type != "cuda":
                if traced_on_cpu:  # dynamo tracing costs ~10 s a configuration on 2 cores and measures nothing
                    c, note = dataclasses.replace(c, compile=False), "ran eager: on a CPU only the first compiled configuration is traced"
                traced_on_cpu = True
            if reason is None and elapsed + needed > budget:
                reason = f"skipped: time budget ({elapsed:.0f} of {budget:.0f} s used, needs ~{needed:.0f} s)"
            if reason is not None:
                rows.append({**dataclasses.asdict(c), "steps": steps, "status": reason if reason.startswith("skipped")
                             else f"skipped: {reason}"})
            else:
                try:
                    row, images = run_config(c, pipes, samplers, args, device, flops, exact)
                    row["note"] = note
                    if c.name == "ours eager, no levers":
                        exact = images
                    if c.kind == "exact" and not c.compile and c.batch == args.batch:
                        last_batch_s = row["total_s"]
                except Exception as e:  # an unsupported kernel, OOM, a compile failure: recorded, the sweep goes on
                    row = {**dataclasses.asdict(c), "steps": steps, "status": f"failed: {_one_line(e)}"}
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                rows.append(row)
            r = rows[-1]
            print(f"{r['name']:<62} {r['status'] if r['status'] != 'ok' else format(r['images_per_s'], '9.3f') + ' images/s'}",
                  flush=True)
    profile = next((r.pop("profile") for r in rows if "profile" in r), None)
    result = {
        "date": datetime.date.today().isoformat(), "device": device_name(device), "torch": torch.__version__,
        "diffusers": diffusers.__version__, "cuda": torch.version.cuda, "command": command.strip(),
        "settings": {"resolution": args.resolution, "steps": args.steps, "guidance": args.guidance, "dtype": args.dtype,
                     "batch": args.batch, "repeats": args.repeats, "safety_checker": args.safety_checker,
                     "budget_s": budget, "tiny": args.tiny},
        "unet_gflop_per_forward_per_image": flops / 1e9,
        "configs": rows, "profile_one_denoising_step": profile, "recognition": RECOGNITION_NOTE,
        "wall_s": time.perf_counter() - started,
    }
    table = sweep_table(rows)
    print("\n" + "\n".join(table))
    if profile:
        print(f"\none denoising step ({profile['clock']}, {profile['total_ms']:.1f} ms): "
              + ", ".join(f"{k} {v:.0%}" for k, v in profile["share"].items()))
    print(f"\n{RECOGNITION_NOTE}\nsweep took {result['wall_s']:.0f} s")
    if not args.no_record:
        out = Path(args.json) if args.json else RESULTS_DIR / f"generate-{result['date']}.json"
        if not args.json and out.exists():
            out = out.with_name(f"generate-{result['date']}-{datetime.datetime.now():%H%M%S}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(out, (json.dumps(result, indent=2) + "\n").encode())
        shares = (" Profile of one compiled denoising step (" + profile["clock"] + "): "
                  + ", ".join(f"{k} {v:.0%}" for k, v in profile["share"].items()) + ".") if profile else ""
        block = [f"### {result['date']} · {result['device']} · torch {torch.__version__} / diffusers {diffusers.__version__}",
                 "", f"`{command.strip()}` ({result['wall_s']:.0f} s; JSON: `{out.name}`).{shares} "
                 f"{RECOGNITION_NOTE[0].upper() + RECOGNITION_NOTE[1:]}.", "", *table]
        record_sweep(Path(args.results), block)
        result["json"] = str(out)
    return result


if __name__ == "__main__":
    main()
