"""Make the missing shards of one process: placement among workers, batches (their size: `auto` from
the first batch's measured memory peak, halved on out-of-memory), safety-checker regenerations,
atomic writes, provenance, and the measured throughput and ETA."""
from __future__ import annotations

import contextlib
import os
import platform
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from diffaug.cli import human_duration
from diffaug.config import DiffusionConfig
from diffaug.devices import resolve_device, use_local_rank
from diffaug.errors import UserError
from diffaug.formats import synthetic as storage
from diffaug.generate.families import settled
from diffaug.generate.model import Levers, apply_levers
from diffaug.generate.plan import Plan
from diffaug.generate.reuse import BatchCache, Run, batch_run
from diffaug.generate.sampler import BatchOutput, Sampler


@dataclass(frozen=True)
class World:
    """This process's place among `torchrun`/multi-node workers: shard k is made by rank k % size."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> World:
        names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
        raw = {name: os.environ.get(name) or ("1" if name == "WORLD_SIZE" else "0") for name in names}
        for name, value in raw.items():
            if not value.lstrip("-").isdigit():
                raise UserError(f"environment variable {name}={value!r}: allowed: an integer")
        world = cls(*map(int, raw.values()))
        if not (world.size >= 1 and 0 <= world.rank < world.size and world.local_rank >= 0):
            raise UserError(f"RANK={world.rank}, WORLD_SIZE={world.size}: allowed: 0 <= RANK < WORLD_SIZE")
        return world

    def owns(self, k: int) -> bool:
        return k % self.size == self.rank


def pick_device(dif: DiffusionConfig) -> torch.device:
    """diffusion.device, made current; each torchrun worker on its own GPU (cuda:LOCAL_RANK) for auto/cuda."""
    return use_local_rank(resolve_device(dif.device, "diffusion.device"))


def provenance(levers: Levers, device: torch.device) -> dict[str, Any]:
    """How a shard was made, beyond its settings: what can move low-order bits (not in the settings hash)."""
    cuda = device.type == "cuda"
    return {**levers.record(), "device": device.type, "gpu": torch.cuda.get_device_name(device) if cuda else None,
            "cpu": platform.machine() if device.type == "cpu" else None, "torch": torch.__version__,
            "diffusers": diffusers.__version__, "cuda": torch.version.cuda if cuda else None}


AUTO_PROBE_BATCH = 2  # auto: the first batch, whose measured peak sizes the rest
AUTO_CPU_BATCH = 8  # auto on a CPU: no memory to measure, a size that keeps the cores busy
AUTO_MAX_BATCH = 128
AUTO_MEMORY_SHARE = 0.85  # of the memory free for activations: room for fragmentation and the allocator
VAE_SLICING_FROM = 16  # batches this large decode one image at a time (VAE activations dominate the peak)


class BatchSize:
    """The batch size in use: fixed, or `auto`; halved (with one line) when a batch runs out of memory."""

    def __init__(self, setting: int | str, device: torch.device, console: Console, label: str):
        self.auto = setting == "auto"
        self.console, self.label, self.device = console, label, device
        self.probing = self.auto and device.type == "cuda"
        self.size = int(setting) if not self.auto else AUTO_PROBE_BATCH if self.probing else AUTO_CPU_BATCH
        self.used: list[int] = []

    def start_batch(self) -> None:  # auto's first batch: its peak is measured
        if self.probing:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)

    def batch_done(self, n: int) -> None:
        """After a batch of n images (n <= size: a shard's last batch may be short)."""
        self.used.append(self.size)
        if not self.probing:
            return
        self.probing = False
        per_image = max((torch.cuda.max_memory_allocated(self.device) - self.before) / n, 1.0)
        free = torch.cuda.mem_get_info(self.device)[0] + torch.cuda.memory_reserved(self.device) - self.before
        self.size = int(max(1, min(AUTO_MAX_BATCH, AUTO_MEMORY_SHARE * free // per_image)))
        self.console.print(f"{self.label}: batch_size auto: {per_image / 2**20:.0f} MiB per image measured, "
                           f"{free / 2**30:.1f} GiB free: batch {self.size}")

    def halve(self, error: Exception) -> None:
        if self.size == 1:
            raise UserError(f"diffusion.batch_size: out of GPU memory at batch 1 ({str(error).splitlines()[0][:200]}); "
                            "set diffusion.cpu_offload: true, a lower diffusion.resolution, or use a larger GPU")
        self.size //= 2
        self.probing = False
        self.console.print(f"{self.label}: out of GPU memory; batch size halved to {self.size}, the batch is retried")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def record(self) -> dict[str, Any]:
        """The shard's provenance: the batch size it ran at (every size, when it changed)."""
        sizes, self.used = sorted(set(self.used)), []
        return {"batch_size": sizes[0] if len(sizes) == 1 else sizes} if sizes else {}


def build_sampler(pipe, dif: DiffusionConfig, levers: Levers, plan: Plan, sizer: BatchSize) -> tuple[Sampler, dict[str, Any]]:
    """`pipe` with the levers applied, as a Sampler of `plan`'s images (its prompts encoded), and its provenance."""
    apply_levers(pipe, levers, fp8=dif.fp8, cache=dif.cache)
    steps, guidance_scale, resolution = settled(dif)
    sampler = Sampler(pipe, steps=steps, guidance_scale=guidance_scale, resolution=resolution, out_size=plan.image_size,
                      scheduler=dif.scheduler, safety_checker=dif.safety_checker, attention=levers.attention, cache=dif.cache)
    sampler.encode_prompts(plan.distinct_prompts, plan.negative_prompt)
    made_with = provenance(levers, sampler.device)
    # Large GPU batches decode one image at a time: the whole batch's VAE activations would set the peak.
    if sizer.device.type == "cuda" and (sizer.auto or sizer.size >= VAE_SLICING_FROM):
        pipe.vae.enable_slicing()
        made_with["vae_slicing"] = True
    return sampler, made_with


def generate_shards(pipe, dif: DiffusionConfig, levers: Levers, plan: Plan, out_dir: Path, shards: list[int], *,
                    save_full: bool, console: Console, show_bar: bool, label: str, reuse: BatchCache | None = None) -> None:
    """Generate each shard and write it atomically (PNGs first: a shard file implies its PNGs exist)."""
    maker = ShardMaker(pipe, dif, levers, plan, save_full=save_full, console=console, label=label, reuse=reuse)
    storage.remove_outdated_summary(out_dir)
    total = sum(len(plan.shard_range(k)) for k in shards)
    # PNG encoding of 512² images is CPU work that can overlap the GPU's next batch.
    with ThroughputReport(console, total, label, show_bar) as report, ThreadPoolExecutor(4) as png_pool:
        for k in shards:
            storage.prepare_shard_slot(out_dir, k)
            pngs: list[Future] = []

            def write_png(g: int, full: np.ndarray, pngs: list[Future] = pngs) -> None:
                pngs.append(png_pool.submit(storage.write_full_png, out_dir, plan, g, full))

            arrays = maker.make(k, report, write_png)
            for png in pngs:
                png.result()
            storage.write_shard(out_dir, k, plan, **arrays)


class ShardMaker:
    """A loaded pipeline that makes one shard's arrays at a time, writing nothing: the local loop above
    writes them, a Ray worker (generate/ray_engine.py) sends them to its driver, which writes them."""

    def __init__(self, pipe, dif: DiffusionConfig, levers: Levers, plan: Plan, *, save_full: bool, console: Console,
                 label: str, reuse: BatchCache | None = None):
        self.sizer = BatchSize(levers.batch_size, pipe._execution_device, console, label)
        self.sampler, self.made_with = build_sampler(pipe, dif, levers, plan, self.sizer)
        self.dif, self.levers, self.plan, self.save_full, self.label, self.reuse = dif, levers, plan, save_full, label, reuse
        device = self.sampler.device
        self.device = f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else device.type

    def make(self, k: int, report: Any, on_full: Callable[[int, np.ndarray], object]) -> dict[str, Any]:
        """Shard k as storage.write_shard's keyword arguments; each full-resolution image goes to `on_full`.

        A shard's work is a queue of (global index, attempt): a flagged image goes back to its end with the
        next attempt's seed, up to max_regenerations, then is kept black (as diffusers returns it) and counted.
        NaN/inf stops the run with one line, the shard unwritten; a batch out of GPU memory goes back to the
        queue's front at half the size."""
        plan, sizer, dif = self.plan, self.sizer, self.dif
        h, w = plan.image_size
        span = plan.shard_range(k)
        images = np.zeros((len(span), h, w, 3), np.uint8)
        seeds, attempts, flagged = np.zeros(len(span), np.uint64), np.zeros(len(span), np.int64), np.zeros(len(span), bool)
        queue = deque((g, 0) for g in plan.work_order(span))  # img2img: grouped by strength
        batch_number = 0
        while queue:
            batch = [queue.popleft() for _ in range(min(sizer.size, len(queue)))]
            # With torch.compile a new batch shape means a recompile: fill the last batch with repeats.
            run = batch_run(batch, sizer.size, self.levers.compile)
            sizer.start_batch()
            try:
                out = sample_batch(self.sampler, plan, run, want_full=self.save_full, made_with=self.made_with, reuse=self.reuse)
            except torch.cuda.OutOfMemoryError as e:
                sizer.halve(e)
                queue.extendleft(reversed(batch))
                continue
            sizer.batch_done(len(run))
            if not out.all_finite:
                bad = [g for j, (g, _) in enumerate(batch) if not out.finite[j]]
                c, i = plan.class_and_index(bad[0])
                raise UserError(
                    f"{self.label or plan.set_name}: shard {k} ({storage.shard_name(k)}), batch {batch_number}: {len(bad)} "
                    f"of {len(batch)} images have non-finite (NaN/inf) latents or pixels, first {plan.classes[c]} #{i}; "
                    f"nothing of this shard was written. Check diffusion.guidance_scale ({self.sampler.guidance_scale}) and "
                    "the model's weights, or use diffusion.dtype: float32 or bfloat16 (float16 overflows more easily)")
            batch_number += 1
            finished = 0
            for j, (g, attempt) in enumerate(batch):
                if out.flagged[j] and attempt < dif.max_regenerations:
                    queue.append((g, attempt + 1))
                    continue
                i, black = g - span.start, out.flagged[j]
                images[i] = 0 if black else out.small[j]
                seeds[i], attempts[i], flagged[i] = plan.seed(g, attempt), attempt, black
                if out.full is not None:  # save_full
                    on_full(g, np.zeros_like(out.full[j]) if black else out.full[j])
                finished += 1
            report.batch_done(generated=len(batch), finished=finished)
        return dict(images=images, seeds=seeds, regenerations=attempts, flagged=flagged, device=self.device,
                    provenance={**self.made_with, **sizer.record()})


def sample_batch(sampler: Sampler, plan: Plan, run: Run, *, want_full: bool, made_with: dict[str, Any],
                 reuse: BatchCache | None = None, keep: bool = False) -> BatchOutput:
    """The sampler's output for one batch as run (padding included). With `reuse`: a batch a pilot already
    made with these exact settings, levers and software is read back instead (generate/reuse.py); `keep`
    (the pilot) stores what it makes there."""
    key = BatchCache.key(plan, run, want_full, made_with) if reuse is not None else ""
    out = reuse.get(key) if reuse is not None else None
    if out is None:
        gs = [g for g, _ in run]
        init = plan.init_images(gs)  # img2img: the real source images; None for a prompt set
        out = sampler.run_batch([plan.seed(g, a) for g, a in run], None if plan.class_ids else [plan.prompt(g) for g in gs],
                                want_full=want_full, init_images=init,
                                strengths=None if init is None else plan.strengths_of(gs),
                                class_ids=[plan.class_id(g) for g in gs] if plan.class_ids else None)
        if keep and reuse is not None and out.all_finite:
            reuse.put(key, out)
    return out


class ThroughputReport(contextlib.AbstractContextManager):
    """The measured images/s and ETA, printed once after a warm-up batch (which pays for compilation, cuDNN
    heuristics and allocator growth), then a progress bar. `generated` counts every image made
    (regenerations included), `finished` only images that went into a shard."""

    def __init__(self, console: Console, total: int, label: str, show_bar: bool):
        self.console, self.total, self.label, self.show_bar = console, total, label, show_bar
        self.finished = self.batches = self.generated = 0
        self.started = self.warm_at = time.perf_counter()
        self.progress: Progress | None = None
        self.task: Any = None

    def batch_done(self, generated: int, finished: int) -> None:
        now = time.perf_counter()
        self.batches += 1
        self.finished += finished
        if self.batches == 1:
            self.warm_at = now
        else:
            self.generated += generated
        rate = (self.generated / max(now - self.warm_at, 1e-9) if self.batches > 1
                else self.finished / max(now - self.started, 1e-9))
        if self.batches == 2 or (self.batches == 1 and self.finished >= self.total):
            left = self.total - self.finished
            self.console.print(f"{self.label}: measured {rate:.2f} images/s "
                               f"({'after a warm-up batch' if self.batches == 2 else 'one batch, warm-up included'}); "
                               f"{left} images left, ETA {human_duration(left / rate) if rate > 0 else 'unknown'}")
            if self.show_bar:
                self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                         TextColumn("{task.fields[rate]:.2f} img/s"), TimeElapsedColumn(), TextColumn("ETA"),
                                         TimeRemainingColumn(), console=self.console)
                self.progress.start()
                self.task = self.progress.add_task(self.label, total=self.total, completed=self.finished, rate=0.0)
        if self.progress is not None:
            self.progress.update(self.task, completed=self.finished, rate=rate)

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()
