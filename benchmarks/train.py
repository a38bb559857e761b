#!/usr/bin/env python
"""Training speed (and a real-data accuracy check) of diffaug's loop, in one run.

  python benchmarks/train.py                 epoch time over 50k 32x32 images of ResNet-18 (cifar variant):
                                             ours vs the usual recipe, their ratio, then ours for all
                                             five architectures; appends a row to benchmarks/RESULTS.md
  python benchmarks/train.py --real-check    issue item 7: hold out 1000 of the 5085 real CIFAR-10
                                             images, train ResNet-18 with the default recipe, print
                                             the final-epoch validation accuracy and the wall time
  --smoke                                    a few images, one timed step: proves the script on a CPU

"Ours" is diffaug.train.loop exactly as the stage runs it, with params.yaml's train settings (precision,
channels_last, compile, deterministic kernels): uint8 images on the device, crop/flip/normalise there,
no per-step host sync. "Usual" is the common torchvision recipe: PIL images through RandomCrop(32,
padding=4) + RandomHorizontalFlip + ToTensor + Normalize in a DataLoader with 2 workers, fp32, batch 128,
SGD, and `loss.item()` every step as the tutorials log it. Both time one full epoch after a short
warm-up (smoke: one step, scaled to an epoch). Images are the 5085 real ones tiled to the count asked
for, or random pixels when that file is absent. Needs torch, torchvision, numpy, pyyaml: not dvc/dvclive.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # runs from a bare checkout (the GPU box has no editable install)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffaug.config import ARCHITECTURES, Config, load_config  # noqa: E402
from diffaug.devices import resolve_device  # noqa: E402
from diffaug.io import load_npz, write_bytes_atomic  # noqa: E402
from diffaug.models import build_model  # noqa: E402
from diffaug.train.loop import Trainer, fit  # noqa: E402

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-5k-train.npz"  # shared/ beside the checkout
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
USUAL_BATCH = 128
WARMUP_STEPS = 10


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", type=Path, default=REPO / "params.yaml")
    p.add_argument("--data", type=Path, default=REAL_DATA, help="npz of real images (images, labels, classes)")
    p.add_argument("--images", type=int, default=50_000, help="images per timed epoch")
    p.add_argument("--compile", action="store_true", help="torch.compile ours (overrides train.compile)")
    p.add_argument("--real-check", action="store_true", help="train on the real images, report val accuracy")
    p.add_argument("--epochs", type=int, help="--real-check: epochs (default: the default recipe's)")
    p.add_argument("--smoke", action="store_true", help="a few images and one timed step (CPU, tests)")
    p.add_argument("--results", type=Path, help="Markdown file to append to (default benchmarks/RESULTS.md; none with --smoke)")
    args = p.parse_args()
    if args.results is None and not args.smoke:
        args.results = REPO / "benchmarks" / "RESULTS.md"
    return args


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.machine()} ({torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark_images(path: Path, count: int) -> tuple[np.ndarray, np.ndarray, str]:
    """`count` 32x32 images: the real ones tiled, or random pixels (speed does not depend on content)."""
    if path.is_file():
        data = load_npz(path)
        reps = -(-count // len(data["images"]))
        return (np.tile(data["images"], (reps, 1, 1, 1))[:count], np.tile(data["labels"], reps)[:count].astype(np.int64),
                f"{path.name} tiled")
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, count), "random pixels"


# ----------------------------------------------------------------------------- ours
def time_ours(cfg: Config, model: str, images: np.ndarray, labels: np.ndarray, device: torch.device,
              batch_size: int, compile: bool, timed_steps: int | None, warmup_steps: int) -> float:
    """Seconds per epoch of diffaug's loop (measured over a full epoch, or `timed_steps` scaled up)."""
    recipe = dataclasses.replace(cfg.train.recipes["default"], batch_size=batch_size)
    tr = cfg.train
    trainer = Trainer(model, "cifar", 10, recipe, images, labels, seed=0, device=device, precision=tr.precision,
                      channels_last=tr.channels_last, compile=compile)
    trainer.train_epoch(max_steps=warmup_steps)  # compilation, cuDNN/cuBLAS handles, allocator
    synchronize(device)
    start = time.perf_counter()
    trainer.train_epoch(max_steps=timed_steps)  # reads the device once at its end: the timing is complete
    elapsed = time.perf_counter() - start
    return elapsed if timed_steps is None else elapsed / timed_steps * trainer.steps_per_epoch


# ----------------------------------------------------------------------------- the usual recipe
class PILImages(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def time_usual(images: np.ndarray, labels: np.ndarray, device: torch.device, batch_size: int,
               timed_steps: int | None, warmup_steps: int) -> float:
    from torchvision import transforms

    # torch's defaults, whatever an earlier measurement of ours set
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = False
    torch.backends.cudnn.benchmark = False
    transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
    loader = torch.utils.data.DataLoader(PILImages(images, labels, transform), batch_size=batch_size, shuffle=True,
                                         num_workers=2, pin_memory=device.type == "cuda")
    torch.manual_seed(0)
    model = build_model("resnet18", "cifar", 10).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    criterion = torch.nn.CrossEntropyLoss()

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = criterion(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    for i, (x, y) in enumerate(loader):
        step(x, y)
        if i + 1 >= warmup_steps:
            break
    synchronize(device)
    start = time.perf_counter()
    steps = 0
    for x, y in loader:  # a fresh epoch: worker start-up is part of every epoch of this recipe
        step(x, y)
        steps += 1
        if timed_steps is not None and steps >= timed_steps:
            break
    synchronize(device)
    elapsed = time.perf_counter() - start
    return elapsed if timed_steps is None else elapsed / steps * len(loader)


# ----------------------------------------------------------------------------- the real-data check
def stratified_holdout(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def real_check(args: argparse.Namespace, cfg: Config, device: torch.device) -> list[str]:
    if not args.data.is_file():
        sys.exit(f"error: {args.data}: not found; --real-check needs the 5085 real CIFAR-10 images (--data)")
    data = load_npz(args.data)
    images, labels = data["images"], data["labels"].astype(np.int64)
    held = stratified_holdout(labels, 10 if args.smoke else 100)
    train = np.setdiff1d(np.arange(len(images)), held)
    if args.smoke:
        train = train[:64]
    recipe = cfg.train.recipes["default"]
    epochs = args.epochs or (1 if args.smoke else recipe.epochs)
    recipe = dataclasses.replace(recipe, epochs=epochs, warmup_epochs=min(recipe.warmup_epochs, epochs - 1),
                                 batch_size=32 if args.smoke else recipe.batch_size)
    tr = cfg.train
    trainer = Trainer("resnet18", "cifar", len(data["classes"]), recipe, images[train], labels[train], seed=0,
                      device=device, precision=tr.precision, channels_last=tr.channels_last,
                      compile=args.compile or tr.compile, val_images=images[held], val_labels=labels[held])

    def progress(m: dict) -> None:
        if (m["epoch"] + 1) % 25 == 0 or m["epoch"] + 1 == epochs:
            print(f"  epoch {m['epoch'] + 1}/{epochs} train loss {m['train/loss']:.3f} val acc {m['val/acc']:.4f}", flush=True)

    start = time.perf_counter()
    result = fit(trainer, log=progress)
    wall = time.perf_counter() - start
    val_acc = result.history[-1]["val/acc"]  # the final epoch's: no selection on validation
    print(f"real check: ResNet-18 (cifar), {len(train)} train / {len(held)} val real images, {epochs} epochs: "
          f"val acc {val_acc:.4f}, wall {wall:.1f}s", flush=True)
    return [str(len(train)), str(len(held)), str(epochs), f"{val_acc:.4f}", f"{wall:.1f}"]


# ----------------------------------------------------------------------------- RESULTS.md
def append_row(path: Path, title: str, header: list[str], row: list[str]) -> None:
    """Add `row` to the end of the table under `## title`, creating the section if needed (others may
    keep their own sections in the same file)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.rstrip("\n").splitlines()
    line = "| " + " | ".join(row) + " |"
    heading = f"## {title}"
    if heading not in lines:
        lines += ["", heading, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header), line]
    else:
        i = lines.index(heading) + 1
        while i < len(lines) and not lines[i].startswith("|") and not lines[i].startswith("## "):
            i += 1
        while i < len(lines) and lines[i].startswith("|"):
            i += 1
        lines.insert(i, line)
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode())


def main() -> None:
    args = parse_args()
    cfg = load_config(args.params)
    device = resolve_device(cfg.train.device)
    name = device_name(device)
    stamp = [datetime.date.today().isoformat(), name, "`python benchmarks/train.py " + " ".join(sys.argv[1:]) + "`"]
    print(f"device: {name}; torch {torch.__version__}")
    if args.real_check:
        row = real_check(args, cfg, device)
        if args.results:
            append_row(args.results, "Real-data check: ResNet-18, default recipe (benchmarks/train.py --real-check)",
                       ["date", "device", "command", "train images", "val images", "epochs", "val acc (final epoch)", "wall s"],
                       stamp + row)
        return

    count = 32 if args.smoke else args.images
    batch = 8 if args.smoke else USUAL_BATCH  # the same batch for both, so the ratio is the pipeline's
    timed, warmup = (1, 1) if args.smoke else (None, WARMUP_STEPS)
    compile = args.compile or cfg.train.compile
    images, labels, source = benchmark_images(args.data, count)
    print(f"{count} images ({source}), batch {batch}, {'1 timed step scaled to an epoch' if args.smoke else 'one full epoch'}")
    usual = time_usual(images, labels, device, batch, timed, warmup)
    ours = {}
    for model in ARCHITECTURES:
        ours[model] = time_ours(cfg, model, images, labels, device, batch, compile, timed, warmup)
        print(f"  ours {model:12s} {ours[model]:8.2f} s/epoch", flush=True)
    ratio = usual / ours["resnet18"]
    print(f"ResNet-18: usual {usual:.2f} s/epoch, ours {ours['resnet18']:.2f} s/epoch: {ratio:.1f}x faster")
    if args.results:
        setup = (f"{count} imgs, batch {batch}, {cfg.train.precision if device.type == 'cuda' else 'fp32'}"
                 f"{', compiled' if compile else ''}{', smoke' if args.smoke else ''}")
        append_row(args.results, "Training epoch time, s/epoch (benchmarks/train.py)",
                   ["date", "device", "command", "setup", "usual ResNet-18", "ours ResNet-18", "speed-up",
                    *[f"ours {m}" for m in ARCHITECTURES[1:]]],
                   stamp + [setup, f"{usual:.2f}", f"{ours['resnet18']:.2f}", f"{ratio:.1f}x",
                            *[f"{ours[m]:.2f}" for m in ARCHITECTURES[1:]]])


if __name__ == "__main__":
    main()
