"""Images/s of generation: plain diffusers against diffaug.generate's batches, per lever and per family.

    python benchmarks/generate.py --sweep                # SD-v1.4 at the paper's settings, every lever, one GPU (< 9 min)
    python benchmarks/generate.py --sweep --tiny         # the same path on the tiny pipeline, seconds on a CPU
    python benchmarks/generate.py                        # quick: plain b1/8/32 vs ours (fused QKV) and its fast preset
    python benchmarks/generate.py --family flux --model DIR   # another family: a saved model, its native size and steps
    python benchmarks/generate.py --family sana --tiny --device cpu   # ... or its tiny random pipeline

Plain = the stock `StableDiffusionPipeline.__call__` at the paper's settings (512², 50 steps, guidance
7.5, the model's PNDM, safety checker on, PIL output, then PIL bilinear to 32x32 as the paper did).
Ours = diffaug.generate's Sampler.run_batch (what the CLI runs, minus file writes: the same stock
pipeline called with cached prompt embeddings, per-image generators, output on the device) with each
lever switched on a fresh pipeline. SD-v1.4's weights are random (built from its configs: the same
FLOPs and memory traffic, no download); its random safety checker never flags. Warm-up batches are
excluded; CUDA is synchronised around every timed region. Prints a table, appends rows to
benchmarks/RESULTS.md (device, date, command) and, for --sweep, writes a JSON file.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import shlex
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
from PIL import Image

try:
    import diffaug  # noqa: F401
except ImportError:  # a GPU box with the repository but no `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from diffaug.config import DiffusionConfig  # noqa: E402
from diffaug.devices import check_generation, device_name, synchronize  # noqa: E402
from diffaug.errors import ConfigError  # noqa: E402
from diffaug.generate.families import FAMILIES, family_of, read_model_info, resolve_defaults, settled  # noqa: E402
from diffaug.generate.model import Levers, apply_levers, quiet_libraries  # noqa: E402
from diffaug.generate.sampler import Sampler  # noqa: E402
from diffaug.io import write_bytes_atomic  # noqa: E402
from diffaug.sandbox.tiny import build_sd14_random, build_tiny_pipeline  # noqa: E402

PROMPTS = ["a photo of a car", "a photo of a bird", "a photo of a cat", "a photo of a ship"]
REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
DTYPES = ("float16", "bfloat16", "float32")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny random pipeline and sizes (CPU smoke test)")
    p.add_argument("--family", choices=list(FAMILIES), help="time this family (with --tiny or --model) instead of SD-v1.4")
    p.add_argument("--model", help="--family: a save_pretrained directory of that family")
    p.add_argument("--device", default="auto", help="auto | cuda | cpu | cuda:N")
    p.add_argument("--dtype", choices=DTYPES, help="default: float16 (float32 with --tiny)")
    p.add_argument("--resolution", type=int, help="default: 512, the family's native size with --family (64 with --tiny)")
    p.add_argument("--steps", type=int, help="default: 50, the family's default with --family (3 with --tiny)")
    p.add_argument("--guidance", type=float, help="default: 7.5, the family's default with --family")
    p.add_argument("--plain-batches", help="comma-separated; default: 1,8,32 (1,2,4 with --tiny)")
    p.add_argument("--batch", type=int, help="our batch size; default: 32 (4 with --tiny)")
    p.add_argument("--images", type=int, help="images timed per configuration (whole batches); default: the batch")
    p.add_argument("--out-size", type=int, default=32, help="dataset image size to downsample to")
    p.add_argument("--fast-steps", type=int, help="DPM-Solver++ preset steps, 0 skips it; default: 20 (2 with --tiny)")
    p.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")), help="Markdown file to append to")
    p.add_argument("--no-record", action="store_true", help="print only; do not append to --results")
    p.add_argument("--sweep", action="store_true", help="every lever in one run (see sweep_configs())")
    p.add_argument("--json", help="--sweep: where to write the JSON (default benchmarks/results/generate-<date>.json)")
    p.add_argument("--budget-s", type=float, help="--sweep: skip configurations once this much time is spent "
                   "(default 500 on a GPU: the sweep ends within 9 minutes)")
    args = p.parse_args(argv)
    if args.family and not (args.tiny or args.model):
        p.error("--family needs --tiny (its tiny random pipeline) or --model DIR (a saved model of that family)")
    tiny = args.tiny
    args.dtype = args.dtype or ("float32" if tiny else "float16")
    args.plain_batches = [int(b) for b in (args.plain_batches or ("1,2,4" if tiny else "1,8,32")).split(",")]
    args.batch = args.batch or (4 if tiny else 32)
    args.images = args.images or args.batch
    args.fast_steps = (2 if tiny else 20) if args.fast_steps is None else args.fast_steps
    return args


def settings_for(args) -> None:
    """Resolution, steps and guidance: given, else the paper's (SD-v1.4) or the family's defaults."""
    if args.family:  # the generate stage's defaults, distilled variants (SDXL-Turbo, FLUX.1-schnell) included
        info = read_model_info(Path(args.model_dir), args.family)
        given = DiffusionConfig(steps=args.steps or None, guidance_scale=args.guidance, resolution=None)
        args.steps, args.guidance, native = settled(resolve_defaults(given, info))
        args.resolution = args.resolution or (64 if args.tiny and info.family.name != "dit" else native)
    else:
        args.resolution = args.resolution or (64 if args.tiny else 512)
        args.steps = args.steps or (3 if args.tiny else 50)
        args.guidance = 7.5 if args.guidance is None else args.guidance


def build(args, device: torch.device, tmp: str):
    """A fresh pipeline (every lever mutates its modules): SD-v1.4 random, or a saved/tiny model."""
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    if args.tiny or args.model:
        path = Path(args.model) if args.model else Path(tmp) / (args.family or "sd")
        if not path.exists():
            build_tiny_pipeline(path, args.family or "sd")
        args.model_dir = str(path)
        cls = diffusers.DiTPipeline if args.family == "dit" else diffusers.AutoPipelineForText2Image
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch_dtype is being renamed to dtype
            pipe = cls.from_pretrained(str(path), torch_dtype=dtype).to(device)
    else:
        pipe = build_sd14_random(dtype, device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


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


def plain_runner(pipe, args):
    def run(batch: int) -> None:
        generators = [torch.Generator("cpu").manual_seed(i) for i in range(batch)]
        images = pipe([PROMPTS[0]] * batch, height=args.resolution, width=args.resolution, num_inference_steps=args.steps,
                      guidance_scale=args.guidance, generator=generators, output_type="pil").images
        [im.resize((args.out_size, args.out_size), Image.BILINEAR) for im in images]
    return run


def sampler_for(pipe, args, *, steps: int | None = None, scheduler: str = "default", attention: str = "auto",
                like: Sampler | None = None) -> Sampler:
    """A Sampler on `pipe`; `like`: a second one on the same pipe, sharing the first's prompt embeddings and
    safety checker (the first released the text encoders and took the checker)."""
    s = Sampler(pipe, steps=steps or args.steps, guidance_scale=args.guidance, resolution=args.resolution,
                out_size=(args.out_size, args.out_size), scheduler=scheduler, attention=attention)
    if like is None:
        s.encode_prompts([] if s.family.name == "dit" else PROMPTS, None)
    else:
        s.embeds, s.prompt_index, s.checker, s.check_safety = like.embeds, like.prompt_index, like.checker, like.check_safety
    return s


def batch_call(s: Sampler, batch: int, want_full: bool = False):
    seeds = list(range(batch))
    if s.family.name == "dit":
        return s.run_batch(seeds, None, want_full=want_full, class_ids=[(207 + i) % 1000 for i in seeds])
    return s.run_batch(seeds, [PROMPTS[i % len(PROMPTS)] for i in seeds], want_full=want_full)


def command_line(argv: list[str]) -> str:
    return ("python benchmarks/generate.py " + " ".join(shlex.quote(a) for a in argv)).strip()


RESULTS_SECTION = "Generation throughput, images/s (benchmarks/generate.py)"
RESULTS_HEADER = ["date", "device", "torch / diffusers", "command", "model", "plain diffusers, by batch size", "ours",
                  "ours, DPM-Solver++ fast preset", "ours / plain at its largest batch"]


def append_to_section(path: Path, section: str, intro: list[str], block: list[str], table: bool) -> None:
    """Add `block` under `## section` of RESULTS.md (other benchmarks keep their own sections), after the
    section's existing content; the section is created (with `intro`) on first use."""
    lines = (path.read_text() if path.exists() else "# Benchmark results\n").rstrip("\n").splitlines()
    heading = f"## {section}"
    if heading not in lines:
        lines += ["", heading, "", *intro, *block]
    else:
        i = lines.index(heading) + 1
        while i < len(lines) and not lines[i].startswith("## "):
            i += 1
        while i > 0 and lines[i - 1] == "":
            i -= 1
        lines[i:i] = block if table else ["", *block]
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode())


def record(path: Path, row: list[str]) -> None:
    intro = ["Plain = diffusers `StableDiffusionPipeline.__call__` at the paper's settings (PNDM, PIL output, PIL "
             "bilinear to 32²); ours = `diffaug.generate`'s batches on the same stock pipeline (fused QKV). Random "
             "weights, SD-v1.4's architecture, unless the model column says otherwise.", "",
             "| " + " | ".join(RESULTS_HEADER) + " |", "|" + "---|" * len(RESULTS_HEADER)]
    append_to_section(path, RESULTS_SECTION, intro, ["| " + " | ".join(row) + " |"], table=True)


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    quiet_libraries()
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.sweep:
        return sweep(args, argv, device)
    results: dict[str, float] = {}

    def measure(key: str, what: str, fn, batch: int) -> None:
        results[key] = images_per_second(fn, batch, args.images, device)
        print(f"{what:<48} batch {batch:3d}: {results[key]:9.3f} images/s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        pipe = build(args, device, tmp)
        settings_for(args)
        model = args.family or "sd"
        if not args.family:  # the stock pipeline first, before any lever touches the modules
            for b in args.plain_batches:
                measure(f"plain b{b}", f"plain diffusers, PNDM {args.steps} steps", plain_runner(pipe, args), b)
        apply_levers(pipe, Levers(fuse_qkv=True))
        s = sampler_for(pipe, args)
        measure("ours", f"ours {model} (fused QKV), {args.steps} steps", lambda b: batch_call(s, b), args.batch)
        if args.fast_steps and family_of(pipe).schedulers:
            fast = sampler_for(pipe, args, steps=args.fast_steps, scheduler="dpmsolver++", like=s)
            measure("ours fast", f"ours {model}, DPM-Solver++ {args.fast_steps} steps", lambda b: batch_call(fast, b), args.batch)
    largest = max(args.plain_batches)
    ratio = f"{results['ours'] / results[f'plain b{largest}']:.2f}x" if f"plain b{largest}" in results else "-"
    print(f"\n{model} at {args.resolution}², {args.steps} steps, guidance {args.guidance} on {device_name(device)}; "
          f"ours / plain b{largest}: {ratio}")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    if not args.no_record:
        plain = " · ".join(f"b{b} {results[f'plain b{b}']:.3f}" for b in args.plain_batches if f"plain b{b}" in results) or "-"
        fast = f"b{args.batch} {results['ours fast']:.3f} ({args.fast_steps} steps)" if "ours fast" in results else "-"
        record(Path(args.results), [datetime.date.today().isoformat(), device_name(device),
                                    f"{torch.__version__} / {diffusers.__version__}", f"`{command_line(argv)}`",
                                    f"{model} {args.resolution}² {args.steps} steps", plain,
                                    f"b{args.batch} {results['ours']:.3f}", fast, ratio])
    return results


# ============================================================================= --sweep
# One run, one device: plain diffusers at the batch, then each lever on a fresh pipeline, in priority
# order so that the time guard (--budget-s) drops the least important ones. Per configuration:
# images/s (one warm-up batch, which also pays for compilation, then one timed batch), compile time
# (warm-up minus the timed batch), peak GPU memory, and the pixel difference against the exact path
# (ours, eager, no levers) on the same seeds. With --tiny (CPU), compiled configurations use dynamo's
# eager backend (tracing only: inductor on 2 CPU cores would take minutes) and CUDA-only levers are
# recorded as skipped.
SWEEP_SECTION = "Generation lever sweep (benchmarks/generate.py --sweep)"
RECOGNITION_NOTE = ("recognition score not measured: the weights are random (no download), so a classifier's "
                    "score on these images means nothing; for real weights, make a set with the lever "
                    "(dvc exp run -S diffusion.<lever>=...) and read evaluate's synthetic_quality.json")


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
    fp8: bool = False


def sweep_configs(args) -> list[SweepConfig]:
    b, dt, fast, C = args.batch, args.dtype, args.fast_steps, SweepConfig
    other = "bfloat16" if dt != "bfloat16" else "float16"
    bigger = (6, 8) if args.tiny else (48, 64)
    return [
        C("plain diffusers (PNDM, PIL output)", "plain", b, dt, fuse_qkv=False),
        C("ours eager, no levers", "exact", b, dt, fuse_qkv=False),
        C("ours compiled, fused QKV (default on CUDA)", "exact", b, dt, compile=True),
        C(f"fast scheduler preset: DPM-Solver++ {fast} steps, compiled", "approximate", b, dt, compile=True,
          scheduler="dpmsolver++", steps=fast),
        C("FP8 (torchao dynamic row-wise), compiled", "approximate", b, dt, compile=True, fp8=True),
        C("ours eager, fused QKV", "exact", b, dt),
        C("ours eager, fused QKV + channels_last", "exact", b, dt, channels_last=True),
        C("ours eager, fused QKV, SDPA cuDNN", "exact", b, dt, attention="cudnn"),
        C("ours eager, fused QKV, SDPA flash", "exact", b, dt, attention="flash"),
        C("ours eager, fused QKV, SDPA mem-efficient", "exact", b, dt, attention="efficient"),
        C("ours compiled + CUDA graphs (reduce-overhead)", "exact", b, dt, compile=True, mode="reduce-overhead"),
        C(f"ours compiled, {other}", "dtype", b, other, compile=True),  # dtype is a pixel setting: other images
        C(f"ours compiled, batch {bigger[0]}", "exact", bigger[0], dt, compile=True),
        C(f"ours compiled, batch {bigger[1]}", "exact", bigger[1], dt, compile=True),
        C("ours compiled, max-autotune-no-cudagraphs", "exact", b, dt, compile=True, mode="max-autotune-no-cudagraphs"),
    ]


def skip_reason(c: SweepConfig, device: torch.device) -> str | None:
    if c.fp8:
        try:
            check_generation(c, device)  # fp8 needs bfloat16, compute capability >= 8.9 and torchao
        except ConfigError as e:
            return f"skipped: {e}"
    if device.type != "cuda" and (c.mode != "default" or c.attention in ("flash", "cudnn", "efficient")):
        return "skipped: a CUDA-only lever"
    if device.type != "cuda" and c.dtype != "float32":
        return "skipped: half precision is timed on CUDA only"
    return None


def run_config(c: SweepConfig, args, device: torch.device, tmp: str, exact: np.ndarray | None) -> dict[str, Any]:
    row: dict[str, Any] = {**asdict(c), "status": "ok"}
    run_args = argparse.Namespace(**{**vars(args), "dtype": c.dtype})
    pipe = build(run_args, device, tmp)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if c.kind == "plain":
        fn = plain_runner(pipe, args)
    else:
        levers = Levers(fuse_qkv=c.fuse_qkv, channels_last=c.channels_last, compile=c.compile, compile_mode=c.mode)
        apply_levers(pipe, levers, fp8=c.fp8, compile_backend="inductor" if device.type == "cuda" else "eager")
        s = sampler_for(pipe, args, steps=c.steps or None, scheduler=c.scheduler, attention=c.attention)
        fn = lambda b: batch_call(s, b)  # noqa: E731
    synchronize(device)
    start = time.perf_counter()
    fn(c.batch)  # warm-up: compilation, cuDNN heuristics, allocator growth
    synchronize(device)
    warm = time.perf_counter() - start
    start = time.perf_counter()
    fn(c.batch)
    synchronize(device)
    timed = time.perf_counter() - start
    row.update(images_per_s=c.batch / timed, compile_s=max(warm - timed, 0.0) if c.compile else 0.0)
    if device.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if c.kind != "plain":
        full = batch_call(s, len(PROMPTS), want_full=True).full.astype(int)
        if exact is not None:
            diff = np.abs(full - exact)
            row.update(diff_max=int(diff.max()), diff_mean=float(diff.mean()))
        row["_full"] = full
    return row


def sweep_table(rows: list[dict[str, Any]]) -> list[str]:
    head = ["configuration", "kind", "batch", "dtype", "images/s", "compile s", "peak GiB", "max / mean diff (uint8)", "status"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        diff = f"{r['diff_max']} / {r['diff_mean']:.3f}" if "diff_max" in r else "-"
        rate = f"{r['images_per_s']:.3f}" if "images_per_s" in r else "-"
        compile_s = f"{r['compile_s']:.1f}" if r.get("compile") and "compile_s" in r else "-"
        peak = f"{r['peak_gib']:.1f}" if "peak_gib" in r else "-"
        out.append(f"| {r['name']} | {r['kind']} | {r['batch']} | {r['dtype']} | {rate} | {compile_s} | {peak} | {diff} | "
                   f"{r['status']} |")
    return out


def record_sweep(path: Path, block: list[str]) -> None:
    append_to_section(path, SWEEP_SECTION, [], block, table=False)


def sweep(args, argv: list[str], device: torch.device) -> dict[str, Any]:
    budget = args.budget_s if args.budget_s is not None else (500.0 if device.type == "cuda" else math.inf)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    exact: np.ndarray | None = None
    with tempfile.TemporaryDirectory() as tmp:
        build(args, device, tmp)  # writes the tiny model folder that settings_for reads (args.model_dir)
        settings_for(args)
        for c in sweep_configs(args):
            reason = skip_reason(c, device)
            if reason is None and time.perf_counter() - started >= budget:
                reason = f"skipped: the {budget:.0f} s time budget is spent"
            if reason is not None:
                rows.append({**asdict(c), "status": reason})
            else:
                try:
                    rows.append(run_config(c, args, device, tmp, exact))
                except Exception as e:  # one lever failing on this device is a result, not the end of the sweep
                    rows.append({**asdict(c), "status": f"failed: {type(e).__name__}: {str(e).strip()[:200]}"})
            if exact is None and c.kind == "exact" and "_full" in rows[-1]:
                exact = rows[-1]["_full"]
                rows[-1].update(diff_max=0, diff_mean=0.0)
            print(f"{c.name:<60} {rows[-1].get('images_per_s', float('nan')):9.3f} images/s  {rows[-1]['status']}", flush=True)
    for r in rows:
        r.pop("_full", None)
    today = datetime.date.today().isoformat()
    result = {"date": today, "device": device_name(device), "torch": torch.__version__, "diffusers": diffusers.__version__,
              "command": command_line(argv), "resolution": args.resolution, "steps": args.steps,
              "guidance": args.guidance, "configs": rows, "recognition": RECOGNITION_NOTE}
    table = sweep_table(rows)
    print("\n" + "\n".join(table))
    if not args.no_record:
        out = Path(args.json) if args.json else RESULTS_DIR / f"generate-{today}-{datetime.datetime.now():%H%M%S}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(out, (json.dumps(result, indent=2) + "\n").encode())
        record_sweep(Path(args.results), [f"### {today}, {result['device']}: `{result['command']}`", "",
                                          f"{args.resolution}², {args.steps} steps, guidance {args.guidance}; torch "
                                          f"{torch.__version__}, diffusers {diffusers.__version__}. {RECOGNITION_NOTE}.",
                                          "", *table])
        result["json"] = str(out)
    return result


if __name__ == "__main__":
    main()
