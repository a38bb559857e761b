"""Make the missing shards of one process: batches, safety-checker regenerations, atomic writes."""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from diffaug.config import DiffusionConfig
from diffaug.formats import synthetic as storage
from diffaug.generate.cost import ThroughputReport
from diffaug.generate.pipeline import apply_speed_levers, device_label
from diffaug.generate.plan import Plan
from diffaug.generate.sampler import Sampler
from diffaug.generate.world import World
from diffaug.io import atomic_path


def save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def generate_shards(pipe, dif: DiffusionConfig, plan: Plan, out_dir: Path, shards: list[int], *,
                    save_full: bool, console: Console, show_bar: bool, label: str) -> None:
    apply_speed_levers(pipe, channels_last=dif.channels_last, fuse_qkv=dif.fuse_qkv)
    sampler = Sampler(pipe, steps=dif.steps, guidance_scale=dif.guidance_scale, resolution=dif.resolution,
                      out_size=plan.image_size, scheduler=dif.scheduler, safety_checker=dif.safety_checker,
                      compile=dif.compile)
    sampler.encode_prompts(plan.distinct_prompts, plan.negative_prompt)
    storage.remove_outdated_summary(out_dir)
    total = sum(len(plan.shard_range(k)) for k in shards)
    device = device_label(sampler.device)
    # PNG encoding of 512² images is CPU work that can overlap the GPU's next batch.
    with ThroughputReport(console, total, label, show_bar) as report, ThreadPoolExecutor(4) as png_pool:
        for k in shards:
            storage.prepare_shard_slot(out_dir, k)
            make_shard(sampler, plan, out_dir, k, batch_size=dif.batch_size, pad_batches=dif.compile,
                       max_regenerations=dif.max_regenerations, save_full=save_full, device=device,
                       report=report, png_pool=png_pool)


def make_shard(sampler: Sampler, plan: Plan, out_dir: Path, k: int, *, batch_size: int, pad_batches: bool,
               max_regenerations: int, save_full: bool, device: str, report: ThroughputReport,
               png_pool: ThreadPoolExecutor) -> None:
    """Generate shard k and write it atomically (PNGs first: a shard file implies its PNGs exist).

    Work is a queue of (global index, attempt); an image the safety checker flags goes back to the
    end of the queue with the next attempt's seed, up to max_regenerations, after which it is kept
    black (what the diffusers pipeline returns for flagged images) and counted in the manifest. The
    queue depends only on the shard and the flags, so batches are the same in every run.
    """
    span = plan.shard_range(k)
    h, w = plan.image_size
    images = np.zeros((len(span), h, w, 3), np.uint8)
    seeds = np.zeros(len(span), np.uint64)
    attempts = np.zeros(len(span), np.int64)
    flagged = np.zeros(len(span), bool)
    pngs: list[Future] = []
    folder = storage.full_dir(out_dir, k)
    queue = deque((g, 0) for g in span)
    while queue:
        batch = [queue.popleft() for _ in range(min(batch_size, len(queue)))]
        # With torch.compile a new batch shape means a recompile: fill the last batch with repeats.
        run = batch + [batch[-1]] * (batch_size - len(batch)) if pad_batches else batch
        out = sampler.run_batch([plan.seed(g, a) for g, a in run], [plan.prompt(g) for g, _ in run], want_full=save_full)
        finished = 0
        for j, (g, attempt) in enumerate(batch):
            if out.flagged[j] and attempt < max_regenerations:
                queue.append((g, attempt + 1))
                continue
            i = g - span.start
            still_flagged = out.flagged[j]
            images[i] = 0 if still_flagged else out.small[j]
            seeds[i], attempts[i], flagged[i] = plan.seed(g, attempt), attempt, still_flagged
            if save_full:
                folder.mkdir(parents=True, exist_ok=True)
                full = np.zeros_like(out.full[j]) if still_flagged else out.full[j]
                pngs.append(png_pool.submit(save_png, folder / storage.full_png_name(plan, g), full))
            finished += 1
        report.batch_done(generated=len(batch), finished=finished)
    for png in pngs:
        png.result()
    storage.write_shard(out_dir, k, plan, images=images, seeds=seeds, regenerations=attempts, flagged=flagged, device=device)


def pick_device(dif: DiffusionConfig, world: World) -> torch.device:
    """diffusion.device, with each torchrun worker on its own GPU (cuda:LOCAL_RANK) for auto/cuda."""
    from diffaug.devices import resolve_device

    device = resolve_device(dif.device)
    if device.type == "cuda" and device.index is None and world.size > 1:
        device = torch.device("cuda", world.local_rank % torch.cuda.device_count())
    return device
