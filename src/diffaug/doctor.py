"""Can this machine run params.yaml's pipeline? One line per check (ok, no: why and what to set instead,
info, skipped) on the machine (versions, GPU), the settings against this device, one generation batch through
generate's own code (on a GPU: its peak memory and the batch `batch_size: auto` picks) and one training step
with the time per epoch; then the params.yaml lines it recommends. Speed sweeps: benchmarks/*.py --sweep.
"""
from __future__ import annotations

import dataclasses
import math
import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from diffaug.cli import stage_parser
from diffaug.config import Config, parse_config, read_params
from diffaug.devices import GpuInfo, check_generation, gpu_info, resolve_device, run_conditions, synchronize, training_precision
from diffaug.errors import ConfigError, UserError, exit_on_error
from diffaug.generate.model import quiet_libraries
from diffaug.io import ensure_writable_dir, write_json_atomic

CPU_STEP_BATCH = 8  # a CPU times small training steps and scales them to the recipe's batch
REAL_TRAIN_IMAGES = 50_000  # CIFAR's training images: a mixture's size is its fractions times these
STAND_IN_CLASSES = (["cat", "dog"], (32, 32))  # prompts when the prepare stage has not written classes.json


@dataclass
class Report:
    budget_s: float
    start: float = field(default_factory=time.perf_counter)
    checks: list[dict[str, Any]] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)
    recommend: dict[str, dict[str, Any]] = field(default_factory=lambda: {"diffusion": {}, "train": {}})

    def add(self, area: str, name: str, status: str, detail: str, setting: str | None = None, value: Any = None) -> None:
        """One check: ok | no | info | skipped, and the params.yaml line it recommends."""
        self.checks.append(dict(area=area, name=name, status=status, detail=detail, setting=setting, value=value))
        print(f"[{status:7s}] {area}: {name}: {detail}" + (f"  -> {setting}" if setting else ""), flush=True)

    def room(self, area: str, name: str, needs_s: float) -> bool:
        """Whether `needs_s` more seconds fit in the budget; if not, a `skipped` line says so."""
        left = self.budget_s - (time.perf_counter() - self.start)
        if left < needs_s:
            self.add(area, name, "skipped", f"needs about {needs_s:.0f}s, {max(left, 0):.0f}s of the {self.budget_s:.0f}s "
                                            "budget left (--budget-s)")
        return left >= needs_s

@contextmanager
def attempt(report: Report, area: str, name: str):
    """A check that raises is its `no` line (the exception in one line), never a traceback."""
    try:
        yield
    except Exception as e:  # noqa: BLE001
        text = str(e).strip().splitlines()
        report.add(area, name, "no", f"{type(e).__name__}: {text[0][:240]}" if text else type(e).__name__)


def machine_checks(report: Report, device: torch.device, dtype: str) -> GpuInfo | None:
    """The machine facts every shard and classifier records (devices.run_conditions), plus the platform and torchao."""
    torchao = version("torchao") if find_spec("torchao") else None
    report.machine.update(run_conditions(device, dtype), platform=platform.platform(), cuda=torch.version.cuda, torchao=torchao)
    report.add("machine", "versions", "info", f"torch {torch.__version__}, CUDA {torch.version.cuda or 'none (CPU build)'}, "
               + ", ".join(f"{p} {report.machine[p] or 'not installed'}" for p in ("diffusers", "transformers", "accelerate", "torchao")))
    gpu = gpu_info(device)
    report.machine["gpu"] = gpu and dataclasses.asdict(gpu)
    if gpu is None:
        report.add("machine", "GPU", "no", "CPU-only machine: torch sees no CUDA GPU; checking the CPU path instead",
                   "diffusion.device: cpu, train.device: cpu (auto picks the CPU here)")
        return None
    free, total = torch.cuda.mem_get_info(device)
    report.add("machine", "GPU", "info", f"{gpu.name} (cuda:{gpu.index} of {torch.cuda.device_count()}), compute capability "
               f"{gpu.sm}, {free / 2**30:.1f} of {total / 2**30:.1f} GiB free; kernels for {' '.join(gpu.arch_list)}; "
               + ("bf16 tensor cores" if gpu.bf16 else "no bf16 tensor cores (bf16 is emulated, slowly)"),
               value={"free_gib": free / 2**30, "total_gib": total / 2**30})
    return gpu


# What the doctor sets instead of a diffusion setting this device cannot run.
FIXES = {"diffusion.fp8": ("fp8", False), "diffusion.attention": ("attention", "auto"), "diffusion.dtype": ("dtype", "float16")}


def settings_checks(report: Report, raw: dict[str, Any], source: str, device: torch.device, gpu: GpuInfo | None) -> Config | None:
    """params.yaml's settings against this device; returns them with the fixes the doctor recommends (None: no fix)."""
    fixes = report.recommend["diffusion"]  # the fixed settings are the recommended ones
    for _ in range(len(FIXES) + 1):
        cfg = parse_config({**raw, "diffusion": {**(raw.get("diffusion") or {}), **fixes}}, source)
        try:
            notes = check_generation(cfg.diffusion, device, gpu)
        except ConfigError as e:
            key = str(e).split(":", 1)[0]
            report.add("settings", key, "no", str(e), f"{key}: {str(FIXES[key][1]).lower()}" if key in FIXES else None)
            if key not in FIXES:
                return None
            fixes[FIXES[key][0]] = FIXES[key][1]
            continue
        for note in notes:
            report.add("settings", note.split(":", 1)[0], "info", note)
        report.add("settings", "diffusion", "ok", f"dtype {cfg.diffusion.dtype}, attention {cfg.diffusion.attention}, "
                   f"fp8 {cfg.diffusion.fp8}: run here")
        break
    precision = training_precision(cfg.train.precision, device, gpu)
    report.add("settings", "train.precision", "info" if precision.note else "ok",
               precision.note or f"{cfg.train.precision} runs as {precision.name} here")
    return cfg


def generation_check(report: Report, cfg: Config, classes_path: Path) -> None:
    """One batch of the first prompt set, through generate's plan_set, open_sampler and sample_batch."""
    from diffaug.formats.splits import read_classes
    from diffaug.generate.__main__ import plan_set
    from diffaug.generate.model import NotCached, choose_levers
    from diffaug.generate.plan import CPU_FLOP_PER_S, image_flops
    from diffaug.generate.runner import first_batch_size, measured_batch_size, open_sampler, pick_device, sample_batch

    sets, dif = [name for name, spec in cfg.synthetic.sets.items() if spec.kind == "prompt"], cfg.diffusion
    if not sets:
        return report.add("generation", "batch", "skipped", "params.yaml declares no prompt set under synthetic.sets")
    classes, image_size = read_classes(classes_path) if classes_path.is_file() else STAND_IN_CLASSES
    try:
        source, info, plan = plan_set(cfg, sets[0], None, classes, image_size, download=False)
    except NotCached:
        return report.add("generation", "batch", "skipped", f"{dif.model} is not in the local Hugging Face cache; the "
                          f"doctor downloads nothing (dvc repro generate_{sets[0]} does)")
    dif = plan.diffusion  # the family's defaults filled in, as generate runs them
    device = pick_device(dif)
    levers = choose_levers(dif, device.type, plan.num_images)
    batch, cuda = first_batch_size(levers.batch_size, device), device.type == "cuda"
    if not report.room("generation", "batch", 40 if cuda else 30 + batch * image_flops(dif) / CPU_FLOP_PER_S):
        return None
    started = time.perf_counter()
    sampler, made_with = open_sampler(source, info, device, levers, plan)
    loaded = time.perf_counter()
    before = torch.cuda.memory_allocated(device) if cuda else 0
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    out = sample_batch(sampler, plan, [(g, 0) for g in range(batch)])
    took = time.perf_counter() - loaded
    value = dict(family=info.family.name, pipeline=info.class_name, steps=dif.steps, resolution=dif.resolution, batch=batch,
                 s=took, load_s=loaded - started, images_per_s=batch / took, made_with=made_with,
                 peak_gib=(torch.cuda.max_memory_allocated(device) - before) / 2**30 if cuda else None,
                 auto_batch=measured_batch_size(device, before, batch) if cuda else None)
    memory = f", peak {value['peak_gib']:.1f} GiB: batch_size auto would run {value['auto_batch']}" if cuda else ""
    report.add("generation", "batch", "ok" if out.all_finite else "no",
               f"{sets[0]}: {info.class_name} (family {info.family.name}), {dif.resolution}² x {dif.steps} steps, {batch} "
               f"images in {took:.1f}s ({batch / took:.3g} images/s, first batch){memory}; loaded in {loaded - started:.0f}s"
               + ("" if out.all_finite else "; non-finite pixels: try diffusion.dtype: float32 or bfloat16"), value=value)


def training_check(report: Report, cfg: Config, device: torch.device, gpu: GpuInfo | None) -> None:
    """One training step (two on a GPU: capture, then the check against eager), then a few timed steps."""
    from diffaug.train.loop import Trainer, steps_per_epoch

    tr, recipe, on_gpu = cfg.train, cfg.train.active, device.type == "cuda"
    precision = training_precision(tr.precision, device, gpu)
    step_batch = recipe.batch_size if on_gpu else min(recipe.batch_size, CPU_STEP_BATCH)
    if not report.room("training", f"{cfg.model} step", 30 if on_gpu else 15):
        return
    timed, rng, n = (10 if on_gpu else 2), np.random.default_rng(0), step_batch * 12
    trainer = Trainer(cfg.model, tr.variant, 10, recipe.model_copy(update={"batch_size": step_batch}),
                      rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n), seed=0, device=device,
                      precision=precision.name, channels_last=tr.channels_last, compile=tr.compile, cuda_graph=tr.cuda_graph)
    trainer.train_epoch(max_steps=2 if on_gpu else 1)  # on a GPU: the CUDA graph's capture and its check against eager
    synchronize(device)
    start = time.perf_counter()
    trainer.train_epoch(max_steps=timed)
    synchronize(device)
    per_step = (time.perf_counter() - start) / timed * recipe.batch_size / step_batch
    mode = trainer.step_mode
    if on_gpu and tr.cuda_graph:
        report.recommend["train"]["cuda_graph"] = mode == "cuda_graph"  # else the line says why it fell back
    sizes = {m: int(sum(cfg.mixtures[m].values()) * REAL_TRAIN_IMAGES) for m in cfg.trained_mixes} or {"a 50k mixture": REAL_TRAIN_IMAGES}
    epochs = {m: per_step * steps_per_epoch(n, recipe.batch_size, recipe.pad_last_batch) for m, n in sizes.items()}
    largest, grid_h = max(sizes, key=lambda m: sizes[m]), sum(epochs.values()) * recipe.epochs * len(tr.seeds) / 3600
    report.add("training", f"{cfg.model} step", "ok", f"{per_step * 1000:.1f} ms/step at batch {recipe.batch_size}"
               + ("" if step_batch == recipe.batch_size else f" (timed at batch {step_batch}, scaled)")
               + f", {precision.name}, {mode}: about {epochs[largest]:.1f}s per epoch of {largest} ({sizes[largest]} images); "
               f"the {len(sizes)} mixtures x {recipe.epochs} epochs x {len(tr.seeds)} seeds: about {grid_h:.1f} h",
               value={"s_per_step": per_step, "s_per_epoch": epochs[largest], "mixture": largest, "step": mode, "grid_h": grid_h})


def recommended_yaml(report: Report) -> str:
    sections = {section: values for section, values in report.recommend.items() if values}
    return ("# params.yaml lines diffaug.doctor recommends for this machine\n"
            + (yaml.safe_dump(sections, sort_keys=False) if sections else ""))


def run(raw: dict[str, Any], source: str, budget_s: float, classes_path: Path) -> Report:
    quiet_libraries()
    report = Report(budget_s)
    report.add("machine", "params", "info", f"settings from {source}" if raw else f"{source}: not found or empty: "
               "checking the built-in defaults")
    raw = raw or {"mixtures": {"orig100": {"orig": 1.0}}}  # params.yaml must declare a mixture; real only is the lightest
    cfg = parse_config(raw, source)
    device = resolve_device(cfg.diffusion.device, "diffusion.device")
    gpu = machine_checks(report, device, cfg.diffusion.dtype)
    fixed = settings_checks(report, raw, source, device, gpu)
    if fixed is not None:  # first: the trainer switches on deterministic kernels process-wide
        with attempt(report, "generation", "batch"):
            generation_check(report, fixed, classes_path)
    with attempt(report, "training", f"{cfg.model} step"):
        training_check(report, cfg, resolve_device(cfg.train.device, "train.device"), gpu)
    return report


def parse_args(argv: list[str] | None):
    p = stage_parser("python -m diffaug.doctor", __doc__.split("\n\n")[0])
    p.add_argument("--classes", type=Path, default=Path("data/prepared/classes.json"), help="the prompts' classes")
    p.add_argument("--json", type=Path, default=Path("doctor.json"), help="where to write the report (JSON)")
    p.add_argument("--budget-s", type=float, default=300.0, help="stop starting checks after this many seconds")
    args = p.parse_args(argv)
    if not (math.isfinite(args.budget_s) and args.budget_s > 0):
        raise UserError(f"--budget-s: got {args.budget_s}; allowed: a number of seconds > 0")
    ensure_writable_dir(args.json.parent, "--json")
    if args.json.is_dir():
        raise UserError(f"--json: {args.json}: cannot write (it is a folder); give a file name")
    return args


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    raw = (read_params(args.params) or {}) if args.params.is_file() else {}
    report = run(raw, str(args.params), args.budget_s, args.classes)
    print(yaml_text := recommended_yaml(report))
    elapsed = time.perf_counter() - report.start
    write_json_atomic(args.json, {"elapsed_s": round(elapsed, 1), "budget_s": args.budget_s, "machine": report.machine,
                                  "cpu_only": report.machine["gpu"] is None, "checks": report.checks,
                                  "recommendations": report.recommend, "recommended_yaml": yaml_text})
    print(f"doctor: {len(report.checks)} checks in {elapsed:.0f}s; wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
