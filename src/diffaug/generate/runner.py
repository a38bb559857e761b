"""Make the missing shards of one process: placement among workers, batches, safety-checker
regenerations, atomic writes, provenance, and progress (rich's bar and its own rate and ETA).

A batch that runs out of memory is retried at half the size, told apart and cleared up by accelerate's
should_reduce_batch_size and clear_device_cache. Not its find_executable_batch_size: that runs gc.collect()
on every call, whether or not memory ran out (0.5 s a shard under pytest, half of a test's time).
`auto` on a GPU first runs one batch of 2 and sizes the rest from its measured memory peak, which
accelerate has no counterpart for (it only shrinks from a guess)."""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils.memory import clear_device_cache, should_reduce_batch_size
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from diffaug.cli import human_duration
from diffaug.config import DiffusionConfig
from diffaug.devices import resolve_device, run_conditions, use_local_rank
from diffaug.errors import UserError
from diffaug.formats import synthetic as storage
from diffaug.generate.families import ModelInfo, settled
from diffaug.generate.model import Levers, ModelSource, apply_levers, load_pipeline
from diffaug.generate.plan import Plan
from diffaug.generate.sampler import BatchOutput, Sampler


def pick_device(dif: DiffusionConfig) -> torch.device:
    """diffusion.device, made current; each torchrun worker on its own GPU (cuda:LOCAL_RANK) for auto/cuda."""
    return use_local_rank(resolve_device(dif.device, "diffusion.device"))


def provenance(levers: Levers, device: torch.device, dtype: str) -> dict[str, Any]:
    """How a shard was made beyond its settings (not in the hash, but they can move low-order bits)."""
    return {**levers.record(), **run_conditions(device, dtype)}


AUTO_PROBE_BATCH = 2  # auto: the first batch, whose measured peak sizes the rest
AUTO_CPU_BATCH = 8  # auto on a CPU: no memory to measure, a size that keeps the cores busy
AUTO_MAX_BATCH = 128
AUTO_MEMORY_SHARE = 0.85  # of the memory free for activations: room for fragmentation and the allocator
VAE_SLICING_FROM = 16  # batches this large decode one image at a time (VAE activations dominate the peak)


def first_batch_size(setting: int | str, device: torch.device) -> int:
    if setting != "auto":
        return int(setting)
    return AUTO_PROBE_BATCH if device.type == "cuda" else AUTO_CPU_BATCH


def measured_batch_size(device: torch.device, allocated_before: int, n: int) -> int:
    """auto: the batch whose activations fill AUTO_MEMORY_SHARE of the free memory, at the peak per image
    measured for a batch of n (every cached block not in use counts as free)."""
    per_image = max((torch.cuda.max_memory_allocated(device) - allocated_before) / n, 1.0)
    free = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device) - allocated_before
    return int(max(1, min(AUTO_MAX_BATCH, AUTO_MEMORY_SHARE * free // per_image)))


def open_sampler(source: ModelSource, info: ModelInfo, device: torch.device, levers: Levers, plan: Plan) -> tuple[Sampler, dict[str, Any]]:
    """The family's pipeline with the levers applied, as a Sampler of `plan`'s images (its prompts encoded),
    and its provenance: what generate, the pilot and the doctor all run."""
    dif = plan.diffusion
    pipe = load_pipeline(dif, source, info, device, img2img=plan.kind == "img2img")
    apply_levers(pipe, levers, fp8=dif.fp8, cache=dif.cache)
    steps, guidance_scale, resolution = settled(dif)
    sampler = Sampler(pipe, steps=steps, guidance_scale=guidance_scale, resolution=resolution, out_size=plan.image_size,
                      scheduler=dif.scheduler, safety_checker=dif.safety_checker, attention=levers.attention, cache=dif.cache)
    sampler.encode_prompts(plan.distinct_prompts, plan.negative_prompt)
    made_with = provenance(levers, sampler.device, dif.dtype)
    # Large GPU batches decode one image at a time: the whole batch's VAE activations would set the peak.
    if device.type == "cuda" and (levers.batch_size == "auto" or int(levers.batch_size) >= VAE_SLICING_FROM):
        pipe.vae.enable_slicing()
        made_with["vae_slicing"] = True
    return sampler, made_with


def sample_batch(sampler: Sampler, plan: Plan, run: list[tuple[int, int]], want_full: bool = False) -> BatchOutput:
    """The sampler's output for one batch of (global index, attempt), padding included."""
    gs = [g for g, _ in run]
    init = plan.init_images(gs)  # img2img: the real source images; None for a prompt set
    return sampler.run_batch([plan.seed(g, a) for g, a in run], None if plan.class_ids else [plan.prompt(g) for g in gs],
                             want_full=want_full, init_images=init, strengths=None if init is None else [plan.strength(g) for g in gs],
                             class_ids=[plan.class_id(g) for g in gs] if plan.class_ids else None)


class ShardMaker:
    """Makes shards' arrays and writes nothing: generate_shards writes them, a Ray worker sends them to its driver.
    Each full-resolution image (save_full_resolution) goes to `on_full(global index, pixels)`."""

    def __init__(self, sampler: Sampler, made_with: dict[str, Any], levers: Levers, plan: Plan, *, console: Console,
                 label: str, progress: Progress, on_full: Callable[[int, np.ndarray], object]):
        self.sampler, self.made_with, self.levers, self.plan = sampler, made_with, levers, plan
        self.console, self.label, self.progress, self.on_full, self.device = console, label, progress, on_full, sampler.device
        self.device_name = f"cuda ({torch.cuda.get_device_name(self.device)})" if self.device.type == "cuda" else self.device.type
        self.size = first_batch_size(levers.batch_size, self.device)
        self.probing = levers.batch_size == "auto" and self.device.type == "cuda"
        self.task, self.batches = progress.add_task(label, total=0), 0

    def make(self, k: int) -> dict[str, Any]:
        """Shard k, as storage.write_shard's keyword arguments."""
        plan, span = self.plan, self.plan.shard_range(k)
        self.k, self.span, self.queue = k, span, deque((g, 0) for g in plan.work_order(span))
        self.images, self.seeds = np.zeros((len(span), *plan.image_size, 3), np.uint8), np.zeros(len(span), np.uint64)
        self.attempts, self.flagged = np.zeros(len(span), np.int64), np.zeros(len(span), bool)
        self.sizes: set[int] = set()  # the batch sizes it ran at, for its provenance
        self.shard_batches = 0

        while self.queue:
            try:
                self.one_batch()
            except Exception as e:
                if not should_reduce_batch_size(e):
                    raise
                if self.size == 1:
                    raise UserError("diffusion.batch_size: out of GPU memory at batch 1; set diffusion.cpu_offload: true, a "
                                    "lower diffusion.resolution, or use a larger GPU") from None
                clear_device_cache(garbage_collection=True)
                self.size, self.probing = self.size // 2, False
                self.console.print(f"{self.label}: out of GPU memory; batch size halved to {self.size}, the batch is retried")
        sizes = sorted(self.sizes)
        return dict(images=self.images, seeds=self.seeds, regenerations=self.attempts, flagged=self.flagged,
                    device=self.device_name, provenance={**self.made_with, "batch_size": sizes[0] if len(sizes) == 1 else sizes})

    def one_batch(self) -> None:
        plan, queue = self.plan, self.queue
        batch = [queue.popleft() for _ in range(min(self.size, len(queue)))]
        # With torch.compile a new batch shape means a recompile: fill the last batch with repeats.
        run = batch + [batch[-1]] * (self.size - len(batch)) if self.levers.compile else batch
        before = 0
        if self.probing:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
        try:
            out = sample_batch(self.sampler, plan, run, plan.save_full_resolution)
        except BaseException:
            queue.extendleft(reversed(batch))  # out of memory: the batch goes back to the front, retried smaller
            raise
        self.sizes.add(self.size)
        if self.probing:
            self.probing = False
            self.size = measured_batch_size(self.device, before, len(run))
            self.console.print(f"{self.label}: batch_size auto: {len(run)} images took "
                               f"{(torch.cuda.max_memory_allocated(self.device) - before) / 2**20:.0f} MiB: batch {self.size}")
        if not out.all_finite:
            bad = [g for j, (g, _) in enumerate(batch) if not out.finite[j]]
            c, i = plan.class_and_index(bad[0])
            raise UserError(
                f"{self.label or plan.set_name}: shard {self.k} ({storage.shard_name(self.k)}), batch {self.shard_batches}: "
                f"{len(bad)} of {len(batch)} images have non-finite (NaN/inf) latents or pixels, first {plan.classes[c]} #{i}; "
                f"nothing of this shard was written. Check diffusion.guidance_scale ({self.sampler.guidance_scale}) and "
                "the model's weights, or use diffusion.dtype: float32 or bfloat16 (float16 overflows more easily)")
        self.shard_batches += 1
        finished = 0
        for j, (g, attempt) in enumerate(batch):
            if out.flagged[j] and attempt < plan.diffusion.max_regenerations:
                queue.append((g, attempt + 1))
                continue
            i, black = g - self.span.start, out.flagged[j]
            self.images[i] = 0 if black else out.small[j]
            self.seeds[i], self.attempts[i], self.flagged[i] = plan.seed(g, attempt), attempt, black
            if out.full is not None:  # save_full
                full = np.zeros_like(out.full[j]) if black else out.full[j]
                self.on_full(g, full)
            finished += 1
        self.report(finished)

    def report(self, finished: int) -> None:
        """Advance the bar; after the second batch, one line with rich's rate (which leaves out the first,
        warm-up batch: compilation, cuDNN heuristics, allocator growth) and its ETA."""
        self.progress.advance(self.task, finished)
        task = self.progress.tasks[self.task]
        self.batches += 1
        if self.batches == 2 and task.speed:
            self.console.print(f"{self.label}: measured {task.speed:.2f} images/s (after a warm-up batch); "
                               f"{task.remaining:.0f} images left, ETA {human_duration(task.time_remaining or 0)}")


def generate_shards(sampler: Sampler, made_with: dict[str, Any], levers: Levers, plan: Plan, out_dir: Path, shards: list[int],
                    *, console: Console, show_bar: bool, label: str) -> None:
    """Generate each shard and write it atomically (PNGs first: a shard file implies its PNGs exist). A
    flagged image is queued again with the next attempt's seed, up to max_regenerations, then kept black."""
    storage.remove_outdated_summary(out_dir)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("ETA"), TimeRemainingColumn(), console=console, disable=not show_bar,
                        speed_estimate_period=600)
    # PNG encoding of 512² images is CPU work that can overlap the GPU's next batch.
    with progress, ThreadPoolExecutor(4) as png_pool:
        pngs: list[Future] = []

        def write_png(g: int, full: np.ndarray) -> None:
            pngs.append(png_pool.submit(storage.write_full_png, out_dir, plan, g, full))

        maker = ShardMaker(sampler, made_with, levers, plan, console=console, label=label, progress=progress, on_full=write_png)
        progress.update(maker.task, total=sum(len(plan.shard_range(k)) for k in shards))
        for k in shards:
            storage.prepare_shard_slot(out_dir, k)
            arrays = maker.make(k)
            for png in pngs:  # a shard file implies its PNGs exist
                png.result()
            pngs.clear()
            storage.write_shard(out_dir, k, plan, **arrays)
