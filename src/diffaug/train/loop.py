"""The training loop, airbench style: the mixture sits on the device as uint8 and every batch is gathered,
augmented and normalised there (no DataLoader, no host round trip per step); the epoch's metrics are read
from the device once per epoch.

A step runs eager (Python picks its slice of the epoch plan and its lr) or static (both read through a device
step counter, so every launch is identical: captured once in a CUDA graph on CUDA, uncaptured on a CPU).
The graph is proven against the uncaptured step before use, else training continues eager (one line says why).
All of an epoch's random numbers and lrs are drawn before its first step, so both ways consume the same
numbers and a checkpoint at an epoch boundary resumes bit for bit. Metrics leave through `fit`'s `log`
callback: no dvc/dvclive here (benchmarks/train.py runs it without them).
"""
from __future__ import annotations

import copy
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# cuBLAS is deterministic only with a fixed workspace; torch reads this when it first creates a handle.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import numpy as np
import torch
import torch.nn.functional as F

from diffaug.config import Recipe
from diffaug.errors import UserError
from diffaug.formats.classifier import ImageClassifier
from diffaug.io import save_torch_atomic
from diffaug.models import build_model
from diffaug.train.augment import apply_crop_flip, apply_cutout, draw_crop_flip, draw_cutout, trivial_augment
from diffaug.train.schedule import learning_rate

EVAL_BATCH = 1000  # images per validation forward when the caller passes none (evaluate.batch_size in the stage)
GRAPH_WARMUP_STEPS = 3  # eager runs on a side stream before capture (cuDNN/cuBLAS handles, autograd state)
PROOF_STEPS = 2  # replays compared with the uncaptured step: the second proves the step counter advances
# How far a replay may stray from the uncaptured step, as a fraction of the step's own change of the state (L2
# norm): another kernel choice under stream capture reassociates sums (a few bf16 roundings, ~1e-6 in float32);
# a wrong replay (stale inputs, another lr, a skipped or doubled update) is off by the order of the change itself.
GRAPH_TOLERANCE = {"autocast": 5e-2, "fp32": 1e-3}

# Columns of the epoch plan: one row per sample slot of the epoch.
LABEL_ROW, IMAGE_ROW, CROP, CUT, WEIGHT = 0, 1, slice(2, 5), slice(5, 7), 7
PLAN_COLUMNS = 8


class NonFiniteTraining(UserError):
    """The loss (or the weights) stopped being finite; nothing of that epoch was kept."""

    def __init__(self, epoch: int, epochs: int, label: str = ""):
        self.epoch = epoch
        where = f"{label}: " if label else ""
        super().__init__(f"{where}training diverged in epoch {epoch + 1}/{epochs}: the loss or the weights are not finite "
                         f"(lower the recipe's lr?); stopped, the last good checkpoint is kept and no weights were written")


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (0..255 scale) of uint8 NHWC images, from each channel's histogram of the 256
    levels: exact sums in float64, and no float copy of the images."""
    counts = torch.stack([torch.bincount(images[..., c].reshape(-1), minlength=256) for c in range(images.shape[-1])])
    levels = torch.arange(256, dtype=torch.float64, device=images.device)
    count = images.numel() // images.shape[-1]
    mean = counts.double() @ levels / count
    std = (counts.double() @ levels.square() / count - mean.square()).clamp_min(1e-6).sqrt()
    return mean.float().cpu(), std.float().cpu()


def steps_per_epoch(num_images: int, batch_size: int, pad_last_batch: bool = False) -> int:
    """Every image once per epoch. Padded: ceil(N / B) batches of B. Not padded: the last batch is the
    rest, except that a rest of one image is dropped: BatchNorm cannot train on a single sample whose
    features have shrunk to 1x1 (paper variants at 32x32)."""
    if pad_last_batch:
        return -(-num_images // batch_size)
    full, rest = divmod(num_images, batch_size)
    return full + (1 if rest >= 2 else 0)


class Trainer:
    """One seed's model, optimizer state, schedule and RNGs over one training set (and optional validation)."""

    def __init__(self, model: str, variant: str, num_classes: int, recipe: Recipe,
                 images: np.ndarray, labels: np.ndarray, *, seed: int, device: torch.device,
                 precision: str = "bf16", channels_last: bool = True, compile: bool = False,
                 cuda_graph: bool = True, eval_batch: int = EVAL_BATCH,
                 val_images: np.ndarray | None = None, val_labels: np.ndarray | None = None):
        self.recipe, self.device, self.eval_batch = recipe, device, eval_batch
        if device.type == "cuda":  # resume must reproduce an uninterrupted run bit for bit: nothing may depend on timing
            torch.backends.cudnn.benchmark = False  # autotuning can pick a different kernel per process
            torch.backends.cudnn.deterministic = True
            torch.use_deterministic_algorithms(True, warn_only=True)  # deterministic variants; warn where none
            torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]  # NaN-filling every allocation costs time, decides nothing
        torch.manual_seed(seed)  # model initialisation and dropout
        self.generator = torch.Generator(device=device).manual_seed(seed)  # shuffling and augmentation, on the device
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(device)  # uint8 NHWC
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
        self.val_images = self.val_labels = None
        self.num_val = 0 if val_images is None else len(val_images)
        if val_images is not None and len(val_images) > 0:
            self.val_images = torch.from_numpy(np.ascontiguousarray(val_images)).to(device)
            self.val_labels = torch.from_numpy(np.asarray(val_labels, dtype=np.int64)).to(device)
        mean, std = channel_stats(self.images)
        self.fill = mean.round().clamp(0, 255).to(torch.uint8).to(device)  # cutout's fill: 0 after normalising
        net = build_model(model, variant, num_classes)
        self.model = ImageClassifier(net, mean, std, channels_last=channels_last, tta_hflip=recipe.tta_hflip).to(device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = None
        if recipe.ema_decay > 0:
            self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
            pairs = list(zip([*self.ema.net.parameters(), *self.ema.net.buffers()],
                             [*self.model.net.parameters(), *self.model.net.buffers()]))
            self._ema_float = [p for p in pairs if p[0].is_floating_point()]
            self._ema_other = [p for p in pairs if not p[0].is_floating_point()]  # BatchNorm's batch counters
        self.forward = torch.compile(self.model) if compile else self.model
        # precision as resolved by diffaug.devices.training_precision: bf16 | fp16 (with a GradScaler) | fp32.
        # CPU autocast is slower, not faster: float32 there.
        if precision not in ("bf16", "fp16", "fp32"):
            raise ValueError(f"precision: got {precision!r}; allowed: bf16 | fp16 | fp32")
        self.precision = precision if device.type == "cuda" else "fp32"
        self.autocast = self.precision != "fp32"
        self.autocast_dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")  # a no-op unless fp16
        self.params: list[torch.Tensor] = [p for p in self.model.parameters() if p.requires_grad]
        # torch's SGD, fused: it reads a device-tensor lr inside its kernel (foreach SGD reads it on the host,
        # which a CUDA graph cannot capture), so each replay applies the step's own lr.
        self.lr = torch.tensor(recipe.lr, dtype=torch.float32, device=device)
        self.optimizer = torch.optim.SGD(self.params, lr=self.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                                         nesterov=recipe.nesterov, fused=True)
        # Zero buffers from the start (0.9 * 0 + g == g: torch's first step), so the tensors a graph captures never change.
        self.momentum_buffers = [torch.zeros_like(p) for p in self.params] if recipe.momentum else []
        for p, buffer in zip(self.params, self.momentum_buffers):
            self.optimizer.state[p]["momentum_buffer"] = buffer
        # What must stay finite for an epoch to count: every float tensor a checkpoint or the result holds.
        kept = [self.model] + ([self.ema] if self.ema is not None else [])
        self._checked = [t for m in kept for t in (*m.parameters(), *m.buffers()) if t.is_floating_point()]
        self.steps_per_epoch = steps_per_epoch(len(self.images), recipe.batch_size, recipe.pad_last_batch)
        self.schedule = learning_rate(recipe, self.steps_per_epoch)  # lr(step); the epoch plan uploads an epoch's lrs
        self.epoch = 0
        # The epoch plan and the step's static inputs: allocated once, refilled in place every epoch.
        batch, n = recipe.batch_size, len(self.images)
        self.slots = self.steps_per_epoch * batch if recipe.pad_last_batch else min(n, self.steps_per_epoch * batch)
        self.full_steps = self.slots // batch  # steps of exactly `batch` samples (all of them when padded)
        self._plan = torch.zeros(self.slots, PLAN_COLUMNS, dtype=torch.int64, device=device)
        self._lrs = torch.zeros(self.steps_per_epoch, dtype=torch.float32, device=device)
        self._epoch_images = torch.empty((self.slots, *self.images.shape[1:]), dtype=torch.uint8, device=device) \
            if recipe.trivial_augment else None
        self._counter = torch.zeros(1, dtype=torch.int64, device=device)
        self._slot_offsets = torch.arange(batch, device=device)
        self._loss_sum = torch.zeros((), device=device)
        self._correct = torch.zeros((), device=device)
        self._finite = torch.ones((), dtype=torch.bool, device=device)
        self.static = cuda_graph  # the graph's code path; captured only on CUDA
        self.capture_graphs = cuda_graph and device.type == "cuda"
        self._graph: torch.cuda.CUDAGraph | None = None
        if not cuda_graph:
            self.step_mode = "eager"
        elif self.scaler.is_enabled():  # GradScaler's scale lives in private tensors the graph proof cannot snapshot
            self.capture_graphs = self.static = False
            self.step_mode = "eager (fallback: fp16 loss scaling is not captured)"
        elif device.type != "cuda":
            self.step_mode = "static (uncaptured: no CUDA)"
        else:
            self.step_mode = "cuda_graph (not yet captured)"
        self._ema_steps = torch.zeros((), dtype=torch.float64, device=device)  # steps averaged so far
        self._augment_rng = torch.Generator().manual_seed(seed).get_state()  # TrivialAugment's op draws

    @property
    def final_model(self) -> ImageClassifier:
        """What this run produces: the EMA of the weights when the recipe keeps one, else the weights."""
        return self.ema if self.ema is not None else self.model

    def _autocast(self):
        # cache_enabled=False: a CUDA graph must not capture autocast's weight-cast cache (torch's advice);
        # the eager way does the same so both run the same casts.
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype, enabled=self.autocast,
                              cache_enabled=False)

    # ------------------------------------------------------------------------- the epoch plan
    def _plan_epoch(self) -> None:
        """Draw all of the epoch's random numbers and lrs into the static plan tensors (no host sync)."""
        recipe, n, slots, gen = self.recipe, len(self.images), self.slots, self.generator
        order = torch.randperm(n, device=self.device, generator=gen)
        if slots > n:  # padding: the epoch's first images again, with weight 0 (BatchNorm sees real pixels)
            order = order.repeat(-(-slots // n))
        rows = order[:slots]
        weight = (torch.arange(slots, device=self.device) < n).long()
        crop = draw_crop_flip(slots, recipe.crop_padding, recipe.hflip, gen)
        cut = draw_cutout(slots, int(self.images.shape[1]), int(self.images.shape[2]), gen) if recipe.cutout \
            else torch.zeros(slots, 2, dtype=torch.int64, device=self.device)
        image_rows = rows
        if self._epoch_images is not None:  # TrivialAugment: this epoch's images, augmented in plan order
            with torch.random.fork_rng(devices=[]):  # TrivialAugment draws from torch's global CPU RNG: give it ours
                torch.set_rng_state(self._augment_rng)
                self._epoch_images.copy_(trivial_augment(self.images.index_select(0, rows)))
                self._augment_rng = torch.get_rng_state()
            image_rows = torch.arange(slots, device=self.device)
        self._plan.copy_(torch.cat([rows[:, None], image_rows[:, None], crop, cut, weight[:, None]], dim=1))
        first = self.epoch * self.steps_per_epoch
        lrs = [self.schedule(first + step) for step in range(self.steps_per_epoch)]
        self._lrs.copy_(torch.tensor(lrs, dtype=torch.float32))

    # ------------------------------------------------------------------------- one step
    def _step(self, plan: torch.Tensor, lr: torch.Tensor) -> None:
        """One optimisation step on the samples of `plan` (rows of the epoch plan) at learning rate `lr`."""
        recipe = self.recipe
        source = self._epoch_images if self._epoch_images is not None else self.images
        x = source.index_select(0, plan[:, IMAGE_ROW])
        x = apply_crop_flip(x, recipe.crop_padding, recipe.hflip, plan[:, CROP])
        if recipe.cutout:
            x = apply_cutout(x, recipe.cutout, plan[:, CUT], self.fill)
        y = self.labels.index_select(0, plan[:, LABEL_ROW])
        weight = plan[:, WEIGHT].float()
        count = weight.sum()
        with self._autocast():
            logits = self.forward(x.permute(0, 3, 1, 2))
            if recipe.pad_last_batch:  # the mean over the real samples: padding has weight 0
                losses = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing, reduction="none")
                loss = (losses * weight).sum() / count
            else:
                loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)  # backward allocates them: in a capture, from the graph's pool
        self.scaler.scale(loss).backward()
        with torch.no_grad():
            self.lr.copy_(lr)
            self.scaler.step(self.optimizer)  # fp16: a step whose gradients overflow is skipped inside the kernel
            self.scaler.update()
            if self.ema is not None:
                self._ema_update()
            loss = loss.detach().float()
            self._loss_sum.add_(loss * count)
            self._correct.add_(((logits.detach().argmax(1) == y).float() * weight).sum())
            self._finite.logical_and_(torch.isfinite(loss))

    def _ema_update(self) -> None:
        # Hand-written: torch.optim.swa_utils.AveragedModel branches on its step count on the host (a sync a graph cannot capture).
        """ema = d * ema + (1 - d) * weights with d = min(ema_decay, (1 + t) / (10 + t)) at step t: the usual
        warm-up, so a short run's EMA is not dominated by its random initialisation. d is a device tensor."""
        decay = torch.clamp((1 + self._ema_steps) / (10 + self._ema_steps), max=self.recipe.ema_decay).float()
        ema = [e for e, _ in self._ema_float]
        torch._foreach_mul_(ema, decay)
        torch._foreach_add_(ema, torch._foreach_mul([m for _, m in self._ema_float], 1 - decay))
        for e, m in self._ema_other:
            e.copy_(m)
        self._ema_steps.add_(1)

    def _static_step(self) -> None:
        """The step that a CUDA graph captures: its inputs come from device tensors via the step counter."""
        plan = self._plan.index_select(0, self._counter * self.recipe.batch_size + self._slot_offsets)
        lr = self._lrs.index_select(0, self._counter).reshape(())
        self._step(plan, lr)
        self._counter.add_(1)

    def _record_graph(self) -> torch.cuda.CUDAGraph:
        """Warm up on a side stream, then record one `_static_step` as a graph; both move the state (callers restore it)."""
        stream = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(stream)
        with torch.cuda.stream(side):
            for _ in range(GRAPH_WARMUP_STEPS):
                self._counter.zero_()
                self._static_step()
        stream.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._static_step()
        return graph

    def _eager_step(self, step: int) -> None:
        batch = self.recipe.batch_size
        self._step(self._plan[step * batch:(step + 1) * batch], self._lrs[step])

    def _live(self) -> list[torch.Tensor]:
        """Everything a step changes: weights, momentum, EMA, the step counter and the epoch's sums."""
        ema = [*self.ema.parameters(), *self.ema.buffers(), self._ema_steps] if self.ema is not None else []
        return [*self.model.parameters(), *self.model.buffers(), *self.momentum_buffers, *ema,
                self._counter, self._loss_sum, self._correct, self._finite]

    def _snapshot(self) -> list[torch.Tensor]:
        return [t.detach().clone() for t in self._live()]

    def _restore(self, saved: list[torch.Tensor], rng: torch.Tensor) -> None:
        with torch.no_grad():
            for tensor, value in zip(self._live(), saved, strict=True):
                tensor.copy_(value)
        torch.cuda.set_rng_state(rng, self.device)

    @torch.no_grad()
    def _graph_disagreement(self, start: list[torch.Tensor], eager: list[torch.Tensor],
                            replayed: list[torch.Tensor], steps: int) -> str | None:
        """Why the replayed state is not the eager one (None when it is, within GRAPH_TOLERANCE)."""
        tolerance = GRAPH_TOLERANCE["autocast" if self.autocast else "fp32"]
        states = list(zip(start, eager, (t.detach() for t in replayed)))
        floats = [(s, e, r) for s, e, r in states if e.is_floating_point()]
        if any(not bool(torch.isfinite(r).all()) and bool(torch.isfinite(e).all()) for _, e, r in floats):
            return "the replay produced non-finite values where the eager step did not"
        if not all(torch.equal(e, r) for _, e, r in states if not e.is_floating_point()):
            return "an integer state tensor (a step counter) differs"
        change = sum(float((e.double() - s.double()).square().sum()) for s, e, _ in floats) ** 0.5
        diff = sum(float((r.double() - e.double()).nan_to_num(0.0).square().sum()) for _, e, r in floats) ** 0.5
        if diff > tolerance * change:
            return (f"after {steps} steps the replayed state is {diff:.3g} from the eager one, "
                    f"{diff / max(change, 1e-30):.1%} of the steps' change (tolerance {tolerance:.1%})")
        return None

    def _prove_graph(self) -> None:
        """Capture the step and check it: its first replays against the uncaptured step from the same state
        on the same batches. Any failure means eager training, said in one line and in `step_mode`."""
        steps = min(PROOF_STEPS, self.full_steps)
        rng = torch.cuda.get_rng_state(self.device)
        start = self._snapshot()
        reason = None
        phase = "capture"
        try:
            with torch.cuda.device(self.device):  # the trainer's GPU, whichever is current
                graph = self._record_graph()
                phase = "the proof run"
                self._restore(start, rng)  # the warm-up's sums and counter too, not only the state
                self._counter.zero_()
                for _ in range(steps):
                    self._static_step()
                eager = self._snapshot()
                self._restore(start, rng)
                self._counter.zero_()
                for _ in range(steps):
                    graph.replay()
                reason = self._graph_disagreement(start, eager, self._live(), steps)  # two copies at most
        except Exception as e:  # noqa: BLE001  any failure of the fast path means the slow one, never a crash
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            reason = f"{phase} failed: {type(e).__name__}" + (f": {first[:200]}" if first else "")
        try:
            self._restore(start, rng)
        except Exception as e:  # noqa: BLE001  a failed capture can leave the CUDA context unusable
            raise UserError(f"train.cuda_graph: {reason or 'the graph check'} left the GPU unusable ({type(e).__name__}); "
                            f"set train.cuda_graph: false") from None
        if reason is None:  # kept only once proven: a graph that failed its proof is never stored
            self._graph, self.step_mode = graph, "cuda_graph"
            return
        self.static = self.capture_graphs = False
        self.step_mode = f"eager (fallback: {reason})"
        print(f"note: train.cuda_graph: {reason}; training continues eager, same results, slower "
              f"(train.cuda_graph: false skips the attempt)", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------------- epochs
    def _train_steps(self, max_steps: int | None) -> int:
        self.model.train()
        self._plan_epoch()
        steps = self.steps_per_epoch if max_steps is None else min(max_steps, self.steps_per_epoch)
        if self.capture_graphs and self._graph is None and self.full_steps > 0:
            self._prove_graph()
        self._loss_sum.zero_()
        self._correct.zero_()
        self._finite.fill_(True)
        self._counter.zero_()
        for step in range(steps):
            if step < self.full_steps and self._graph is not None:
                self._graph.replay()
            elif step < self.full_steps and self.static:
                self._static_step()
            else:  # the last, smaller batch of an unpadded epoch (or no static path asked for)
                self._eager_step(step)
        real = len(self.images) if self.recipe.pad_last_batch else self.slots  # padding comes last
        return min(real, steps * self.recipe.batch_size)

    @torch.no_grad()
    def _evaluate_on_device(self) -> torch.Tensor:
        """[loss sum, correct] of the final model (EMA if kept, with TTA if the recipe says) on the validation set."""
        assert self.val_images is not None and self.val_labels is not None, "no validation set"
        model = self.final_model
        model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        for x, y in zip(self.val_images.split(self.eval_batch), self.val_labels.split(self.eval_batch)):
            with self._autocast():
                logits = model(x.permute(0, 3, 1, 2)).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
        return torch.stack([loss_sum, correct])

    def run_epoch(self, validate: bool = True, max_steps: int | None = None, label: str = "") -> dict[str, float]:
        """One pass over a fresh permutation, then the validation metrics of `final_model`; one host read for all
        of it. train/acc is on the augmented batches, as trained; lr is the epoch's first. Raises
        NonFiniteTraining, without counting the epoch, if the loss or the weights stopped being finite."""
        seen = self._train_steps(max_steps)
        weights_finite = torch.stack(torch._foreach_norm(self._checked)).sum().isfinite()  # BatchNorm statistics too
        parts = [self._loss_sum, self._correct, self._finite.float(), weights_finite.float()]
        if validate and self.val_images is not None:
            parts.append(self._evaluate_on_device())
        values = torch.cat([p.reshape(-1).double() for p in parts]).tolist()  # the epoch's one host read
        if not (values[2] and values[3]):
            raise NonFiniteTraining(self.epoch, self.recipe.epochs, label)
        metrics = {"train/loss": values[0] / seen, "train/acc": values[1] / seen, "lr": self.schedule(self.epoch * self.steps_per_epoch)}
        if len(values) > 4:
            metrics.update({"val/loss": values[4] / self.num_val, "val/acc": values[5] / self.num_val})
        if max_steps is None:
            self.epoch += 1
        return metrics

    def train_epoch(self, max_steps: int | None = None) -> dict[str, float]:
        """One epoch without validation; `max_steps` cuts it short for timing, and then the epoch does not count."""
        return self.run_epoch(validate=False, max_steps=max_steps)

    def state_dict(self) -> dict[str, Any]:
        rng = {"torch_cpu": torch.get_rng_state(), "device_generator": self.generator.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        state = {"epoch": self.epoch, "model": self.model.state_dict(),
                 "momentum": [b.detach().clone() for b in self.momentum_buffers],
                 "rng": rng, "augment_rng": self._augment_rng.clone()}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
            state["ema_steps"] = self._ema_steps.clone()
        if self.scaler.is_enabled():
            state["grad_scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copies into the existing tensors (a captured graph keeps pointing at them)."""
        self.model.load_state_dict(state["model"])
        with torch.no_grad():
            for buffer, value in zip(self.momentum_buffers, state["momentum"], strict=True):
                buffer.copy_(value)
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
            self._ema_steps.copy_(state["ema_steps"])
        if "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])
        torch.set_rng_state(state["rng"]["torch_cpu"])
        self.generator.set_state(state["rng"]["device_generator"])
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self._augment_rng = state["augment_rng"].clone()
        self.epoch = int(state["epoch"])


def load_checkpoint(path: Path, settings_hash: str) -> dict[str, Any] | None:
    """The checkpoint at `path` if it was written under `settings_hash` (data, recipe, model, seed, device,
    conditions), else None (and say why): it holds everything that decides what happens next, so a run killed
    at any moment and resumed ends with the weights of one never interrupted."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unreadable: starting over is always correct, only slower
        print(f"note: ignoring unreadable checkpoint {path} ({type(e).__name__}); training from scratch", file=sys.stderr)
        return None
    if not isinstance(state, dict) or state.get("settings_hash") != settings_hash:
        print(f"note: ignoring checkpoint {path}: written under other settings or conditions (device, CPU threads, "
              "library versions...); training from scratch", file=sys.stderr)
        return None
    return state


@dataclass
class FitResult:
    history: list[dict[str, float]]  # one dict per epoch, in order
    wall_time_s: float  # time spent on the epochs kept (work lost to a crash is not counted)
    resumed_from: int  # epochs restored from a checkpoint (0: trained from scratch)


def fit(trainer: Trainer, *, checkpoint: Path | None = None, checkpoint_every: int = 10, settings_hash: str = "",
        log: Callable[[dict[str, float]], object] = lambda metrics: None, label: str = "") -> FitResult:
    """Train to `recipe.epochs`, resuming from `checkpoint` when it was written under `settings_hash`; the
    trainer ends holding the final epoch's weights (no epoch selection).

    `log` receives every epoch's metrics in order, restored epochs first, so a log rebuilt after a crash holds
    each epoch once. The finished state is checkpointed too (the caller removes it once the outputs are safe).
    A diverged epoch (NonFiniteTraining) is neither logged nor checkpointed.
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
        log(metrics)
    start = time.perf_counter()
    while trainer.epoch < epochs:
        epoch_start = time.perf_counter()
        metrics = {"epoch": trainer.epoch, **trainer.run_epoch(label=label)}
        metrics["epoch_time_s"] = time.perf_counter() - epoch_start
        history.append(metrics)
        log(metrics)
        if checkpoint is not None and (trainer.epoch % checkpoint_every == 0 or trainer.epoch == epochs):
            save_torch_atomic(checkpoint, {"settings_hash": settings_hash, "trainer": trainer.state_dict(),
                                         "history": history, "elapsed_s": elapsed + time.perf_counter() - start})
    return FitResult(history, elapsed + time.perf_counter() - start, resumed_from)

