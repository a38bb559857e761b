"""Make the missing shards of one process: placement among workers, batches, safety-checker
regenerations, atomic writes, provenance, and the throughput report."""
from __future__ import annotations

import os
import platform
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from diffaug.cli import human_duration
from diffaug.config import DiffusionConfig
from diffaug.devices import resolve_device
from diffaug.errors import UserError
from diffaug.formats import synthetic as storage
from diffaug.generate.model import Levers, apply_speed_levers, device_label, use_inductor_cache
from diffaug.generate.plan import Plan
from diffaug.generate.sampler import Sampler
from diffaug.io import atomic_path


# ----------------------------------------------------------------------------- placement
@dataclass(frozen=True)
class World:
    """This process's place among `torchrun`/multi-node workers: shard k is made by rank k % size."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> World:
        values = {}
        for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
            raw = os.environ.get(name)
            if raw is None or raw == "":
                values[name] = default
                continue
            try:
                values[name] = int(raw)
            except ValueError:
                raise UserError(f"environment variable {name}={raw!r}: allowed: an integer") from None
        world = cls(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])
        if not (world.size >= 1 and 0 <= world.rank < world.size and world.local_rank >= 0):
            raise UserError(f"RANK={world.rank}, WORLD_SIZE={world.size}: allowed: 0 <= RANK < WORLD_SIZE")
        return world

    def owns(self, k: int) -> bool:
        return k % self.size == self.rank


def shards_to_make(out_dir: Path, plan: Plan, world: World) -> list[int]:
    return [k for k in range(plan.num_shards) if world.owns(k) and storage.valid_shard(out_dir, plan, k) is None]


def pick_device(dif: DiffusionConfig, world: World) -> torch.device:
    """diffusion.device, with each torchrun worker on its own GPU (cuda:LOCAL_RANK) for auto/cuda."""
    device = resolve_device(dif.device)
    if device.type == "cuda" and device.index is None and world.size > 1:
        device = torch.device("cuda", world.local_rank % torch.cuda.device_count())
    return device


# ----------------------------------------------------------------------------- provenance
def provenance(levers: Levers, device: torch.device) -> dict[str, Any]:
    """How a shard was made, beyond its settings: what can move low-order bits (not in the settings hash)."""
    return {
        **levers.record(),
        "device": device.type,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": platform.machine() if device.type == "cpu" else None,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
    }


# ----------------------------------------------------------------------------- generation
def save_png(path: Path, image: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def build_sampler(pipe, dif: DiffusionConfig, levers: Levers, out_size: tuple[int, int]) -> Sampler:
    """The Sampler with `dif`'s pixel settings and the resolved levers applied to `pipe`."""
    apply_speed_levers(pipe, channels_last=levers.channels_last, fuse_qkv=levers.fuse_qkv)
    if levers.compile:
        use_inductor_cache()
    return Sampler(pipe, steps=dif.steps, guidance_scale=dif.guidance_scale, resolution=dif.resolution,
                   out_size=out_size, scheduler=dif.scheduler, safety_checker=dif.safety_checker,
                   compile=levers.compile, compile_mode=levers.inductor_mode, attention=levers.attention,
                   deep_cache=dif.deep_cache)


def generate_shards(pipe, dif: DiffusionConfig, levers: Levers, plan: Plan, out_dir: Path, shards: list[int], *,
                    save_full: bool, console: Console, show_bar: bool, label: str) -> None:
    sampler = build_sampler(pipe, dif, levers, plan.image_size)
    sampler.encode_prompts(plan.distinct_prompts, plan.negative_prompt)
    storage.remove_outdated_summary(out_dir)
    total = sum(len(plan.shard_range(k)) for k in shards)
    device = device_label(sampler.device)
    made_with = provenance(levers, sampler.device)
    # PNG encoding of 512² images is CPU work that can overlap the GPU's next batch.
    with ThroughputReport(console, total, label, show_bar) as report, ThreadPoolExecutor(4) as png_pool:
        for k in shards:
            storage.prepare_shard_slot(out_dir, k)
            make_shard(sampler, plan, out_dir, k, batch_size=levers.batch_size, pad_batches=levers.compile,
                       max_regenerations=dif.max_regenerations, save_full=save_full, device=device,
                       provenance=made_with, report=report, png_pool=png_pool, label=label)


def make_shard(sampler: Sampler, plan: Plan, out_dir: Path, k: int, *, batch_size: int, pad_batches: bool,
               max_regenerations: int, save_full: bool, device: str, provenance: dict[str, Any],
               report: ThroughputReport, png_pool: ThreadPoolExecutor, label: str = "") -> None:
    """Generate shard k and write it atomically (PNGs first: a shard file implies its PNGs exist).

    Work is a queue of (global index, attempt); an image the safety checker flags goes back to the
    end of the queue with the next attempt's seed, up to max_regenerations, after which it is kept
    black (what the diffusers pipeline returns for flagged images) and counted in the manifest. The
    queue depends only on the shard and the flags, so batches are the same in every run. A batch
    with NaN/inf latents or pixels stops the run with one line; the shard is not written.
    """
    span = plan.shard_range(k)
    h, w = plan.image_size
    images = np.zeros((len(span), h, w, 3), np.uint8)
    seeds = np.zeros(len(span), np.uint64)
    attempts = np.zeros(len(span), np.int64)
    flagged = np.zeros(len(span), bool)
    pngs: list[Future] = []
    folder = storage.full_dir(out_dir, k)
    queue = deque((g, 0) for g in plan.work_order(span))  # img2img: grouped by strength
    batch_number = 0
    while queue:
        batch = [queue.popleft() for _ in range(min(batch_size, len(queue)))]
        # With torch.compile a new batch shape means a recompile: fill the last batch with repeats.
        run = batch + [batch[-1]] * (batch_size - len(batch)) if pad_batches else batch
        gs = [g for g, _ in run]
        init = plan.init_images(gs)  # img2img: the real source images; None for a prompt set
        out = sampler.run_batch([plan.seed(g, a) for g, a in run], [plan.prompt(g) for g in gs], want_full=save_full,
                                init_images=init, strengths=None if init is None else plan.strengths_of(gs))
        if not out.all_finite:
            raise non_finite_error(plan, k, batch_number, batch, out.finite, sampler, label)
        batch_number += 1
        finished = 0
        for j, (g, attempt) in enumerate(batch):
            if out.flagged[j] and attempt < max_regenerations:
                queue.append((g, attempt + 1))
                continue
            i = g - span.start
            still_flagged = out.flagged[j]
            images[i] = 0 if still_flagged else out.small[j]
            seeds[i], attempts[i], flagged[i] = plan.seed(g, attempt), attempt, still_flagged
            if out.full is not None:  # save_full
                folder.mkdir(parents=True, exist_ok=True)
                full = np.zeros_like(out.full[j]) if still_flagged else out.full[j]
                pngs.append(png_pool.submit(save_png, folder / storage.full_png_name(plan, g), full))
            finished += 1
        report.batch_done(generated=len(batch), finished=finished)
    for png in pngs:
        png.result()
    storage.write_shard(out_dir, k, plan, images=images, seeds=seeds, regenerations=attempts, flagged=flagged,
                        device=device, provenance=provenance)


def non_finite_error(plan: Plan, k: int, batch_number: int, batch: list[tuple[int, int]], finite: np.ndarray | None,
                     sampler: Sampler, label: str) -> UserError:
    bad = [g for j, (g, _) in enumerate(batch) if finite is not None and not finite[j]]
    c, i = plan.class_and_index(bad[0])
    return UserError(
        f"{label or plan.set_name}: shard {k} ({storage.shard_name(k)}), batch {batch_number}: {len(bad)} of {len(batch)} "
        f"images have non-finite (NaN/inf) latents or pixels, first {plan.classes[c]} #{i}; nothing of this shard was "
        f"written. Check diffusion.guidance_scale ({sampler.guidance_scale}) and the model's weights, or use "
        f"diffusion.dtype: float32 or bfloat16 (float16 overflows more easily)")


# ----------------------------------------------------------------------------- progress
class ThroughputReport:
    """After a warm-up batch, print measured images/s and the ETA once; then keep a progress bar.

    The first batch pays for compilation, cuDNN heuristics and allocator growth, so the rate is
    measured on the second. `generated` counts every image made (regenerations included), `finished`
    only images that went into a shard.
    """

    def __init__(self, console: Console, total: int, label: str, show_bar: bool):
        self.console, self.total, self.label, self.show_bar = console, total, label, show_bar
        self.finished = self.batches = self.generated_after_warmup = 0
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
            self.generated_after_warmup += generated
        rate = self.rate(now)
        if self.batches == 2 or (self.batches == 1 and self.finished >= self.total):
            left = self.total - self.finished
            self.console.print(f"{self.label}: measured {rate:.2f} images/s "
                               f"({'after a warm-up batch' if self.batches == 2 else 'one batch, warm-up included'}); "
                               f"{left} images left, ETA {human_duration(left / rate) if rate > 0 else 'unknown'}")
            self._start_bar()
        if self.progress is not None:
            self.progress.update(self.task, completed=self.finished, rate=rate)

    def rate(self, now: float) -> float:
        if self.batches <= 1:
            return self.finished / max(now - self.started, 1e-9)
        return self.generated_after_warmup / max(now - self.warm_at, 1e-9)

    def __enter__(self):
        self.started = time.perf_counter()
        return self

    def _start_bar(self) -> None:
        if not self.show_bar or self.progress is not None:
            return
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.2f} img/s"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console,
        )
        self.progress.start()
        self.task = self.progress.add_task(self.label, total=self.total, completed=self.finished, rate=0.0)

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()
