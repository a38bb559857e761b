"""The training loop, airbench style: the whole mixture sits on the device as uint8 and every batch is
gathered, cropped, flipped and normalised there, so no DataLoader, no worker processes and no host
round trip per step. Loss and accuracy are summed on the device and read once per epoch.

Independent of dvc/dvclive (benchmarks/train.py runs it on machines without them): metrics leave
through the `log` callback of `fit`.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

# cuBLAS is deterministic only with a fixed workspace; torch reads this when it first creates a handle.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import numpy as np
import torch
import torch.nn.functional as F

from diffaug.config import Recipe
from diffaug.models import build_model
from diffaug.train.augment import random_crop_flip
from diffaug.train.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from diffaug.train.schedule import build_scheduler
from diffaug.formats.classifier import ImageClassifier

EVAL_BATCH = 1000


def make_deterministic(device: torch.device) -> None:
    """Resume must reproduce an uninterrupted run bit for bit, so no algorithm may depend on timing."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False  # autotuning can pick a different kernel per process
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)  # deterministic variants; warn where none
        torch.utils.deterministic.fill_uninitialized_memory = False  # NaN-filling every allocation costs time, decides nothing


def channel_stats(images: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (0..255 scale) of uint8 NHWC images, summed in float64 chunk by chunk."""
    channels = images.shape[-1]
    total = torch.zeros(channels, dtype=torch.float64, device=images.device)
    squares = torch.zeros_like(total)
    for part in images.split(chunk):
        values = part.reshape(-1, channels).double()
        total += values.sum(0)
        squares += values.square().sum(0)
    count = images.numel() // channels
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(1e-6).sqrt()
    return mean.float().cpu(), std.float().cpu()


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    """Every image once per epoch, except that a last batch of one image is dropped: BatchNorm cannot
    train on a single sample whose features have shrunk to 1x1 (paper variants at 32x32)."""
    full, rest = divmod(num_images, batch_size)
    return full + (1 if rest >= 2 else 0)


class Trainer:
    """One seed's model, optimizer, schedule and RNGs over one training set (and optional validation)."""

    def __init__(self, model: str, variant: str, num_classes: int, recipe: Recipe,
                 images: np.ndarray, labels: np.ndarray, *, seed: int, device: torch.device,
                 precision: str = "bf16", channels_last: bool = True, compile: bool = False,
                 val_images: Optional[np.ndarray] = None, val_labels: Optional[np.ndarray] = None):
        if len(images) < 2:
            raise ValueError("training needs at least 2 images")
        self.recipe, self.device = recipe, device
        make_deterministic(device)
        torch.manual_seed(seed)  # model initialisation (and dropout) draw from torch's global generators
        self.generator = torch.Generator(device=device)  # shuffling and augmentation, on the device
        self.generator.manual_seed(seed)
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(device)  # uint8 NHWC
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
        self.val_images = self.val_labels = None
        if val_images is not None and len(val_images) > 0:
            self.val_images = torch.from_numpy(np.ascontiguousarray(val_images)).to(device)
            self.val_labels = torch.from_numpy(np.asarray(val_labels, dtype=np.int64)).to(device)
        mean, std = channel_stats(self.images)
        net = build_model(model, variant, num_classes)
        self.model = ImageClassifier(net, mean, std, channels_last=channels_last).to(device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if compile else self.model
        self.autocast = precision == "bf16" and device.type == "cuda"  # CPU bf16 autocast is slower, not faster
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                         nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)
        self.steps_per_epoch = steps_per_epoch(len(self.images), recipe.batch_size)
        self.scheduler = build_scheduler(self.optimizer, recipe, self.steps_per_epoch)
        self.epoch = 0

    @property
    def has_validation(self) -> bool:
        return self.val_images is not None

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.autocast)

    def train_epoch(self, max_steps: Optional[int] = None) -> dict[str, float]:
        """One pass over a fresh permutation; returns train/loss (the smoothed objective), train/acc (on the
        augmented batches, as trained) and lr (at the epoch's first step). Reads the device once."""
        self.model.train()
        recipe, batch = self.recipe, self.recipe.batch_size
        lr = self.scheduler.get_last_lr()[0]
        order = torch.randperm(len(self.images), device=self.device, generator=self.generator)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = 0
        steps = self.steps_per_epoch if max_steps is None else min(max_steps, self.steps_per_epoch)
        for step in range(steps):
            index = order[step * batch:(step + 1) * batch]
            x = random_crop_flip(self.images[index], recipe.crop_padding, recipe.hflip, self.generator)
            y = self.labels[index]
            with self._autocast():
                logits = self.forward(x.permute(0, 3, 1, 2))
                loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            loss_sum += loss.detach().float() * index.shape[0]
            correct += (logits.detach().argmax(1) == y).sum()
            seen += index.shape[0]
        if max_steps is None:
            self.epoch += 1
        return {"train/loss": loss_sum.item() / seen, "train/acc": correct.item() / seen, "lr": lr}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Plain (unsmoothed) cross-entropy and accuracy on the validation images, unaugmented."""
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        for x, y in zip(self.val_images.split(EVAL_BATCH), self.val_labels.split(EVAL_BATCH)):
            with self._autocast():
                logits = self.forward(x.permute(0, 3, 1, 2)).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
        count = len(self.val_images)
        return {"val/loss": loss_sum.item() / count, "val/acc": correct.item() / count}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": capture_rng(self.device, self.generator)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        restore_rng(state["rng"], self.device, self.generator)
        self.epoch = int(state["epoch"])


@dataclass
class FitResult:
    history: list[dict[str, float]]  # one dict per epoch, in order
    wall_time_s: float  # time spent on the epochs kept (work lost to a crash is not counted)
    resumed_from: int  # epochs restored from a checkpoint (0: trained from scratch)


def fit(trainer: Trainer, *, checkpoint: Optional[Path] = None, checkpoint_every: int = 10, settings_hash: str = "",
        log: Optional[Callable[[dict[str, float]], None]] = None) -> FitResult:
    """Train to `recipe.epochs`, resuming from `checkpoint` when it was written under `settings_hash`.

    `log` receives every epoch's metrics in order, restored epochs first, so a metrics log rebuilt by
    it after a crash holds each epoch exactly once. With a checkpoint path, the finished state is also
    saved there (the caller removes it once the outputs are safe), so a crash after this seed finished
    does not retrain it. Final-epoch weights are what the trainer holds at the end: no epoch selection.
    """
    epochs = trainer.recipe.epochs
    history: list[dict[str, float]] = []
    elapsed = 0.0
    saved = load_checkpoint(checkpoint, settings_hash) if checkpoint is not None else None
    if saved is not None:
        trainer.load_state_dict(saved["trainer"])
        history, elapsed = list(saved["history"]), float(saved["elapsed_s"])
    resumed_from = trainer.epoch
    for metrics in history:
        if log:
            log(metrics)
    start = time.perf_counter()
    while trainer.epoch < epochs:
        epoch_start = time.perf_counter()
        metrics = {"epoch": trainer.epoch, **trainer.train_epoch()}
        metrics["epoch_time_s"] = time.perf_counter() - epoch_start
        if trainer.has_validation:
            metrics.update(trainer.evaluate())
        history.append(metrics)
        if log:
            log(metrics)
        if checkpoint is not None and (trainer.epoch % checkpoint_every == 0 or trainer.epoch == epochs):
            save_checkpoint(checkpoint, {"settings_hash": settings_hash, "trainer": trainer.state_dict(),
                                         "history": history, "elapsed_s": elapsed + time.perf_counter() - start})
    return FitResult(history, elapsed + time.perf_counter() - start, resumed_from)
