"""Images/s of SD-v1.4 generation: plain diffusers vs diffaug's sampler, measured in one run.

    python benchmarks/generate.py                        # full-size SD-v1.4 (random weights), CUDA fp16
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
import datetime
import math
import platform
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

try:
    import diffaug  # noqa: F401
except ImportError:  # a GPU box with the repository but no `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from diffaug.generate.model import DTYPE_NAMES, apply_speed_levers, quiet_libraries, torch_dtype  # noqa: E402
from diffaug.generate.sampler import Sampler  # noqa: E402
from diffaug.sandbox.tiny import build_sd14_random, build_tiny_pipeline  # noqa: E402

PROMPT = "a photo of a car"


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
    for lever, default in (("channels-last", True), ("fuse-qkv", True), ("compile", False), ("safety-checker", True)):
        p.add_argument(f"--{lever}", action=argparse.BooleanOptionalAction, default=default)
    p.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")), help="Markdown file to append to")
    p.add_argument("--no-record", action="store_true", help="print only; do not append to --results")
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
    from diffusers import StableDiffusionPipeline

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
    from PIL import Image

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
    from diffaug.io import write_bytes_atomic

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


def main(argv=None) -> dict[str, float]:
    import diffusers

    args = parse_args(argv)
    quiet_libraries()
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


if __name__ == "__main__":
    main()
