"""What a run will cost: a FLOP estimate before the model loads, then measured throughput and ETA."""
from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from diffaug.config import DiffusionConfig
from diffaug.errors import ConfigError

# SD-v1.4 at 512², 50 steps, classifier-free guidance (two UNet passes per step) plus one VAE decode.
SD14_FLOP_PER_IMAGE = 82.8e12
# A generous sustained float32 rate for a many-core server CPU on these convolutions and attentions.
CPU_FLOP_PER_S = 1e12
CPU_SECONDS_ALLOWED = 3600.0


def image_flops(dif: DiffusionConfig) -> float:
    """FLOPs per image, scaled from SD-v1.4's by steps, pixels and guidance (a lower bound at > 512²)."""
    flops = SD14_FLOP_PER_IMAGE * (dif.steps / 50) * (dif.resolution / 512) ** 2
    return flops if dif.guidance_scale > 1 else flops / 2


def human_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def check_cpu_cost(dif: DiffusionConfig, device_type: str, n_images: int) -> None:
    """Refuse (before the model loads) a CPU run estimated at over an hour, unless allow_cpu is set."""
    if device_type != "cpu" or dif.allow_cpu:
        return
    seconds = n_images * image_flops(dif) / CPU_FLOP_PER_S
    if seconds > CPU_SECONDS_ALLOWED:
        raise ConfigError(
            f"diffusion.allow_cpu: {n_images} images at {dif.resolution}² with {dif.steps} steps would take about "
            f"{human_duration(seconds)} on a CPU ({image_flops(dif) / 1e12:.1f} TFLOP per image at <= 1 TFLOP/s); "
            "run on a GPU (diffusion.device: auto | cuda) or set diffusion.allow_cpu: true to force it")


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
        self.task = None

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
