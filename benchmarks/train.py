#!/usr/bin/env python
"""Training speed (and a real-data accuracy check) of diffaug's loop, in one run.

  python benchmarks/train.py --sweep         one command (< 9 min on one H100), all timed in the
                                             same run, over all 50,000 real CIFAR-10 training images when
                                             ../shared/data/cifar10-50k-train-jpeg.npz is there (--jpeg;
                                             decoded once into .cache/): the usual DataLoader + PIL recipe; ours for ResNet-18
                                             at batch 128/512/1024, eager vs graph-captured; N concurrent
                                             ResNet-18 cells (separate processes) against one; every
                                             architecture at the default recipe's batch; --real-check of the
                                             default recipe with one seed. A time guard skips what would not
                                             fit in --budget-s, with a note. Appends rows to
                                             benchmarks/RESULTS.md and writes benchmarks/results/train-<date>.json.
  python benchmarks/train.py                 epoch time over 50k 32x32 images of ResNet-18 (cifar variant):
                                             ours vs the usual recipe, their ratio, then ours for all
                                             five architectures; appends a row to benchmarks/RESULTS.md
  python benchmarks/train.py --real-check    hold out 1000 of the 5085 real CIFAR-10 images, train ResNet-18
                                             with the default recipe, print the final-epoch validation
                                             accuracy and the wall time; --seeds 0 1 2 for mean +- std;
                                             --ablation: also the default with each lever switched;
                                             --full: train on 45,000 of the 50,000 real images (--jpeg) and
                                             validate on the 5,000 held out (500 per class)
  --smoke                                    a few images, one timed step: proves the script on a CPU

"Ours" is diffaug.train.loop exactly as the stage runs it, with params.yaml's train settings (precision,
channels_last, compile, cuda_graph, deterministic kernels): uint8 images on the device, augmentation
there, no per-step host sync; "graph" captures the whole step in one CUDA graph (on a CPU the same
static-shape code runs uncaptured). "Usual" is the common torchvision recipe: PIL images through
RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize in a DataLoader with 2 workers,
fp32, batch 128, SGD, and `loss.item()` every step as the tutorials log it. Both time one full epoch after
a short warm-up (smoke: one step, scaled to an epoch). Images are the 5085 real ones tiled to the count
asked for, or random pixels when that file is absent; the sweep times all 50,000 real images instead when the
JPEG file is there. Needs torch, torchvision, numpy, pyyaml (Pillow to decode the JPEGs): not dvc/dvclive.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # runs from a bare checkout (the GPU box has no editable install)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffaug.config import ARCHITECTURES, Config, load_config  # noqa: E402
from diffaug.devices import device_name, resolve_device, synchronize, training_precision  # noqa: E402
from diffaug.io import load_npz, write_bytes_atomic  # noqa: E402
from diffaug.models import build_model  # noqa: E402
from diffaug.train.loop import Trainer, fit  # noqa: E402

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-5k-train.npz"  # shared/ beside the checkout
JPEG_50K = REAL_DATA.with_name("cifar10-50k-train-jpeg.npz")  # all 50,000 training images, JPEG (q 95) in one npz
CACHE = REPO / ".cache"  # decoded images, named after the JPEG file they come from
FULL_VAL_PER_CLASS = 500  # --real-check --full: 45,000 train / 5,000 validation
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
USUAL_BATCH = 128
WARMUP_STEPS = 10
SWEEP_BATCHES = (128, 512, 1024)
SWEEP_CELLS = (1, 2, 4)  # concurrent ResNet-18 cells, each its own process on the same GPU
SWEEP_BUDGET_S = 500  # the sweep's measurements stop being started after this (< 9 min with start-up)
# Rough H100 seconds per sweep item, for the time guard (generous: capture and process start-up included).
EXPECTED_S = {"usual": 20, "ours": 15, "arch": 45, "cells": 60, "real_check": 150}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", type=Path, default=REPO / "params.yaml")
    p.add_argument("--data", type=Path, default=REAL_DATA, help="npz of real images (images, labels, classes)")
    p.add_argument("--jpeg", type=Path, default=JPEG_50K,
                   help="the 50,000 CIFAR-10 training images as JPEG npz, with cifar10_jpeg.py beside it (the sweep "
                        "times epochs over all of them; --real-check --full trains on them)")
    p.add_argument("--cache-dir", type=Path, default=CACHE, help="where the decoded --jpeg images are kept")
    p.add_argument("--full", action="store_true", help="--real-check: 45,000 train / 5,000 val of the --jpeg images")
    p.add_argument("--images", type=int, default=50_000, help="images per timed epoch")
    p.add_argument("--compile", action="store_true", help="torch.compile ours (overrides train.compile)")
    p.add_argument("--real-check", action="store_true", help="train on the real images, report val accuracy")
    p.add_argument("--epochs", type=int, help="--real-check: epochs (default: the default recipe's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="--real-check: seeds (mean +- std over them)")
    p.add_argument("--ablation", nargs="*", metavar="VARIANT",
                   help="--real-check: the default and the default with each lever switched, or only the VARIANTs named: "
                        "'no tta_hflip', 'no EMA', 'no cutout', 'trivial_augment on', 'no label smoothing', 'batch 128, lr 0.1')")
    p.add_argument("--sweep", action="store_true", help="every training-speed measurement in one run (batches, models, concurrent cells)")
    p.add_argument("--budget-s", type=float, default=SWEEP_BUDGET_S, help="--sweep: start nothing after this many seconds")
    p.add_argument("--smoke", action="store_true", help="a few images and one timed step (CPU, tests)")
    p.add_argument("--results", type=Path, help="Markdown file to append to (default benchmarks/RESULTS.md; none with --smoke)")
    p.add_argument("--json-out", type=Path, help="--sweep: JSON file (default benchmarks/results/train-<date>.json; none with --smoke)")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # one concurrent cell: JSON job file
    args = p.parse_args(argv)
    if args.results is None and not args.smoke:
        args.results = REPO / "benchmarks" / "RESULTS.md"
    if args.json_out is None and not args.smoke:
        args.json_out = REPO / "benchmarks" / "results" / f"train-{datetime.date.today().isoformat()}.json"
    return args


def decoded_50k(jpeg: Path, cache: Path = CACHE) -> Path | None:
    """The 50,000 real training images as a plain npz under .cache/, decoded from `jpeg` by the
    cifar10_jpeg.py beside it on first use (about 15 s); None when `jpeg` is absent. The cached file is
    named after the JPEG file's path, size and mtime, so another or a changed file is decoded anew."""
    if not jpeg.is_file():
        return None
    stat = jpeg.stat()
    key = hashlib.sha256(f"{jpeg.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    decoded = cache / f"{jpeg.stem}-decoded-{key}.npz"
    if decoded.is_file():
        return decoded
    decoder = jpeg.with_name("cifar10_jpeg.py")
    if not decoder.is_file():
        raise FileNotFoundError(f"{decoder}: not found; it decodes {jpeg.name} (keep it beside that file)")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = decoded.with_name(f".{decoded.stem}-{os.getpid()}.npz")  # np.savez keeps a .npz name as is
    print(f"decoding {jpeg} into {decoded} (once)", flush=True)
    subprocess.run([sys.executable, str(decoder), str(tmp)], check=True, stdout=subprocess.DEVNULL)
    os.replace(tmp, decoded)
    return decoded


def benchmark_images(path: Path, count: int | None) -> tuple[np.ndarray, np.ndarray, str]:
    """`count` 32x32 images (None: every image of `path`): the real ones (tiled if fewer), or random pixels
    (speed does not depend on content)."""
    if path.is_file():
        data = load_npz(path)
        count = len(data["images"]) if count is None else count
        if count == len(data["images"]):
            return data["images"], data["labels"].astype(np.int64), f"all {count} real images of {path.name}"
        reps = -(-count // len(data["images"]))
        return (np.tile(data["images"], (reps, 1, 1, 1))[:count], np.tile(data["labels"], reps)[:count].astype(np.int64),
                f"{path.name} tiled")
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, count), "random pixels"


# ----------------------------------------------------------------------------- ours
def make_trainer(cfg: Config, model: str, images: np.ndarray, labels: np.ndarray, device: torch.device,
                 batch_size: int, compile: bool, cuda_graph: bool) -> Trainer:
    recipe = cfg.train.recipes["default"].model_copy(update={"batch_size": batch_size})
    tr = cfg.train
    precision = training_precision(tr.precision, device).name  # as the stage runs it (fp16 below sm80)
    return Trainer(model, "cifar", 10, recipe, images, labels, seed=0, device=device, precision=precision,
                   channels_last=tr.channels_last, compile=compile, cuda_graph=cuda_graph)


def time_epoch(trainer: Trainer, device: torch.device, timed_steps: int | None, warmup_steps: int) -> float:
    """Seconds per epoch (measured over a full epoch, or `timed_steps` scaled up) after a warm-up that
    includes compilation and CUDA-graph capture."""
    trainer.train_epoch(max_steps=warmup_steps)  # compilation, graph capture, cuDNN/cuBLAS handles, allocator
    synchronize(device)
    start = time.perf_counter()
    trainer.train_epoch(max_steps=timed_steps)  # reads the device once at its end: the timing is complete
    elapsed = time.perf_counter() - start
    return elapsed if timed_steps is None else elapsed / timed_steps * trainer.steps_per_epoch


def time_ours(cfg: Config, model: str, images: np.ndarray, labels: np.ndarray, device: torch.device,
              batch_size: int, compile: bool, timed_steps: int | None, warmup_steps: int,
              cuda_graph: bool | None = None) -> tuple[float, str]:
    """(seconds per epoch of diffaug's loop, measured over a full epoch or `timed_steps` scaled up; the step
    mode that ran: a graph that failed its check ran eager, and the row must say so)."""
    graph = cfg.train.cuda_graph if cuda_graph is None else cuda_graph
    trainer = make_trainer(cfg, model, images, labels, device, batch_size, compile, graph)
    seconds, mode = time_epoch(trainer, device, timed_steps, warmup_steps), trainer.step_mode
    del trainer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return seconds, mode


def step_label(wanted: str, ran: str) -> str:
    """The row's step column: what was asked for, or the fallback that ran instead."""
    return ran if ran.startswith("eager (fallback") else wanted


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


# ----------------------------------------------------------------------------- N concurrent cells
def worker(job_path: Path) -> None:
    """One concurrent cell: build and warm up, say ready, wait for go, time `epochs` epochs, write the result."""
    job = json.loads(job_path.read_text())
    cfg = load_config(Path(job["params"]))
    device = resolve_device(cfg.train.device)
    images, labels, _ = benchmark_images(Path(job["data"]), job["images"])
    trainer = make_trainer(cfg, "resnet18", images, labels, device, job["batch"], False, cfg.train.cuda_graph)
    trainer.train_epoch(max_steps=job["warmup"])
    synchronize(device)
    Path(job["ready"]).write_text("ready")
    deadline = time.monotonic() + job["wait_s"]
    while not Path(job["go"]).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    start = time.time()
    seen = 0
    for _ in range(job["epochs"]):
        trainer.train_epoch(max_steps=job["steps"])
        seen += min(len(images), job["steps"] * job["batch"]) if job["steps"] else len(images)  # padding not counted
    end = time.time()
    Path(job["out"]).write_text(json.dumps({"start": start, "end": end, "images": seen}))


def time_cells(params: Path, data: Path, cells: int, images: int, batch: int, epochs: int, steps: int | None,
               warmup: int, timeout_s: float) -> dict:
    """Aggregate images/s of `cells` ResNet-18 cells training at once, each its own process (as
    `dvc queue start -j N` runs them), timed from the first start to the last end after all are ready."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        go = tmp / "go"
        procs = []
        for i in range(cells):
            job = {"params": str(params), "data": str(data), "images": images, "batch": batch, "epochs": epochs,
                   "steps": steps, "warmup": warmup, "ready": str(tmp / f"ready-{i}"), "go": str(go),
                   "out": str(tmp / f"out-{i}.json"), "wait_s": timeout_s}
            (tmp / f"job-{i}.json").write_text(json.dumps(job))
            procs.append(subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", str(tmp / f"job-{i}.json")],
                                          env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}))
        deadline = time.monotonic() + timeout_s
        while not all((tmp / f"ready-{i}").exists() for i in range(cells)):
            if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
                for p in procs:
                    p.kill()
                return {"cells": cells, "error": "a cell did not get ready in time or failed"}
            time.sleep(0.05)
        go.write_text("go")
        try:
            for p in procs:
                p.wait(timeout=timeout_s)
            results = [json.loads((tmp / f"out-{i}.json").read_text()) for i in range(cells)]
        except (subprocess.TimeoutExpired, OSError, ValueError):
            for p in procs:
                p.kill()
            return {"cells": cells, "error": "a cell failed or did not finish in time"}
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    total = sum(r["images"] for r in results)
    return {"cells": cells, "batch": batch, "images_per_cell": results[0]["images"], "wall_s": wall,
            "images_per_s": total / wall, "per_cell_images_per_s": [r["images"] / (r["end"] - r["start"]) for r in results]}


# ----------------------------------------------------------------------------- the real-data check
def stratified_holdout(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def ablations(recipe) -> dict[str, dict]:
    """The default recipe and, for each lever, the default with only that lever switched."""
    flips = {"default": {}}
    if recipe.tta_hflip:
        flips["no tta_hflip"] = {"tta_hflip": False}
    if recipe.ema_decay:
        flips["no EMA"] = {"ema_decay": 0.0}
    if recipe.cutout:
        flips["no cutout"] = {"cutout": 0}
    flips["trivial_augment " + ("off" if recipe.trivial_augment else "on")] = {"trivial_augment": not recipe.trivial_augment}
    if recipe.label_smoothing:
        flips["no label smoothing"] = {"label_smoothing": 0.0}
    if recipe.batch_size != 128:
        flips["batch 128, lr 0.1"] = {"batch_size": 128, "lr": 0.1}
    else:
        flips["batch 512, lr 0.4"] = {"batch_size": 512, "lr": 0.4}
    return flips


def real_check(args: argparse.Namespace, cfg: Config, device: torch.device, seeds: list[int] | None = None,
               variants: dict[str, dict] | None = None, full: bool = False) -> list[dict]:
    """Train ResNet-18 on 4085 real images (`full`: 45,000) per seed and variant; each result: variant, seed,
    val acc, wall."""
    if full:
        path = decoded_50k(args.jpeg, args.cache_dir)
        if path is None:
            raise FileNotFoundError(f"{args.jpeg}: not found; --real-check --full needs the 50,000 real CIFAR-10 "
                                    f"images as JPEG (--jpeg)")
        per_class = 10 if args.smoke else FULL_VAL_PER_CLASS
    else:
        path, per_class = args.data, 10 if args.smoke else 100
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; --real-check needs the 5085 real CIFAR-10 images (--data)")
    data = load_npz(path)
    images, labels = data["images"], data["labels"].astype(np.int64)
    held = stratified_holdout(labels, per_class)
    train = np.setdiff1d(np.arange(len(images)), held)
    if args.smoke:
        train = train[:64]
    base = cfg.train.recipes["default"]
    epochs = args.epochs or (1 if args.smoke else base.epochs)
    out = []
    for name, change in (variants or {"default": {}}).items():
        recipe = base.model_validate({**base.model_dump(), **change})  # validated: a misspelt lever is refused
        recipe = recipe.model_copy(update=dict(epochs=epochs, warmup_epochs=min(recipe.warmup_epochs, epochs - 1),
                                            batch_size=32 if args.smoke else recipe.batch_size))
        for seed in seeds or [0]:
            tr = cfg.train
            trainer = Trainer("resnet18", "cifar", len(data["classes"]), recipe, images[train], labels[train], seed=seed,
                              device=device, precision=training_precision(tr.precision, device).name, channels_last=tr.channels_last,
                              compile=args.compile or tr.compile, cuda_graph=tr.cuda_graph,
                              val_images=images[held], val_labels=labels[held])

            def progress(m: dict) -> None:
                if (m["epoch"] + 1) % 50 == 0 or m["epoch"] + 1 == epochs:
                    print(f"  epoch {m['epoch'] + 1}/{epochs} train loss {m['train/loss']:.3f} val acc {m['val/acc']:.4f}", flush=True)

            synchronize(device)
            start = time.perf_counter()
            result = fit(trainer, log=progress, label=f"real check {name} seed {seed}")
            synchronize(device)
            wall = time.perf_counter() - start
            val_acc = result.history[-1]["val/acc"]  # the final epoch's: no selection on validation
            print(f"real check: ResNet-18 (cifar), {name}, seed {seed}, {len(train)} train / {len(held)} val real images, "
                  f"{epochs} epochs: val acc {val_acc:.4f}, wall {wall:.1f}s", flush=True)
            out.append({"variant": name, "seed": seed, "train": len(train), "val": len(held), "epochs": epochs,
                        "recipe": recipe.model_dump(), "val_acc": val_acc, "wall_s": wall})
            del trainer
    return out


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


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


REAL_TITLE = "Real-data check: ResNet-18, default recipe (benchmarks/train.py --real-check)"
REAL_HEADER = ["date", "device", "command", "variant", "seeds", "train images", "val images", "epochs",
               "val acc (final epoch, mean ± std)", "wall s per seed"]
SWEEP_TITLE = "Training sweep (benchmarks/train.py --sweep)"
SWEEP_HEADER = ["date", "device", "command", "measurement", "model", "batch", "step", "s/epoch", "images/s", "vs usual"]


def real_rows(stamp: list[str], results: list[dict]) -> list[list[str]]:
    rows = []
    for variant in dict.fromkeys(r["variant"] for r in results):
        runs = [r for r in results if r["variant"] == variant]
        rows.append(stamp + [variant, " ".join(str(r["seed"]) for r in runs), str(runs[0]["train"]), str(runs[0]["val"]),
                             str(runs[0]["epochs"]), mean_std([r["val_acc"] for r in runs]),
                             f"{statistics.mean(r['wall_s'] for r in runs):.1f}"])
    return rows


def sweep(args: argparse.Namespace, cfg: Config, device: torch.device, stamp: list[str]) -> dict:
    """Every training-speed measurement in one run, most important first, under a time guard."""
    t0 = time.perf_counter()
    smoke = args.smoke
    count = 32 if smoke else args.images
    batches = (4, 8, 16) if smoke else SWEEP_BATCHES
    default_batch = 8 if smoke else cfg.train.recipes["default"].batch_size
    timed, warmup = (1, 1) if smoke else (None, WARMUP_STEPS)
    scale = 0.1 if smoke else 1.0  # smoke: CPU seconds are not H100 seconds; the guard still runs
    full = None if smoke else decoded_50k(args.jpeg, args.cache_dir)
    timing_data = full or args.data
    # the 50k set: every real training image, once (no tiling, no resizing)
    images, labels, source = benchmark_images(timing_data, None if full is not None else count)
    count = len(labels)
    capture = "CUDA graph" if device.type == "cuda" else "static path, uncaptured (CPU)"
    report = {"device": stamp[1], "torch": torch.__version__, "date": stamp[0], "command": stamp[2], "images": count,
              "image_source": source, "precision": cfg.train.precision if device.type == "cuda" else "fp32",
              "budget_s": args.budget_s, "rows": [], "cells": [], "real_check": [], "skipped": []}
    print(f"sweep: {count} images ({source}), {'1 timed step scaled to an epoch' if smoke else 'one full epoch each'}, "
          f"budget {args.budget_s:.0f}s", flush=True)

    def room(item: str, what: str) -> bool:
        elapsed = time.perf_counter() - t0
        if elapsed + EXPECTED_S[item] * (0.0 if smoke else scale) > args.budget_s:
            note = f"skipped {what}: {elapsed:.0f}s used of the {args.budget_s:.0f}s budget"
            print(note, flush=True)
            report["skipped"].append(note)
            return False
        return True

    def row(measurement: str, model: str, batch: int, step: str, seconds: float) -> None:
        usual = report.get("usual_s")
        entry = {"measurement": measurement, "model": model, "batch": batch, "step": step, "s_per_epoch": seconds,
                 "images_per_s": count / seconds, "vs_usual": (usual / seconds) if usual else None}
        report["rows"].append(entry)
        print(f"  {measurement:28s} {model:12s} batch {batch:5d} {step:32s} {seconds:8.3f} s/epoch "
              f"{count / seconds:10.0f} img/s" + (f" {usual / seconds:6.1f}x usual" if usual else ""), flush=True)

    if room("usual", "the usual recipe"):
        report["usual_s"] = time_usual(images, labels, device, 8 if smoke else USUAL_BATCH, timed, warmup)
        row("usual DataLoader + PIL", "resnet18", 8 if smoke else USUAL_BATCH, "eager, fp32", report["usual_s"])
    for batch in batches:
        for graph in (False, True):
            step = capture if graph else "eager"
            if room("ours", f"ours resnet18 batch {batch} {step}"):
                seconds, ran = time_ours(cfg, "resnet18", images, labels, device, batch, args.compile or cfg.train.compile,
                                         timed, warmup, graph)
                row("ours", "resnet18", batch, step_label(step, ran), seconds)
    for model in ARCHITECTURES:
        if room("arch", f"{model} at batch {default_batch}"):
            seconds, ran = time_ours(cfg, model, images, labels, device, default_batch, args.compile or cfg.train.compile,
                                     timed, warmup, True)
            row("ours, default batch", model, default_batch, step_label(capture, ran), seconds)
    for cells in (1, 2) if smoke else SWEEP_CELLS:
        if room("cells", f"{cells} concurrent cells"):
            result = time_cells(args.params, timing_data, cells, count, default_batch, 1 if smoke else 3, 1 if smoke else None,
                                1 if smoke else WARMUP_STEPS, 240 if smoke else 180)
            report["cells"].append(result)
            if "error" in result:
                print(f"  {cells} concurrent cells: {result['error']}", flush=True)
                continue
            one = report["cells"][0].get("images_per_s")
            print(f"  {cells} concurrent resnet18 cells, batch {default_batch}: {result['images_per_s']:.0f} img/s in all"
                  + (f" ({result['images_per_s'] / one:.2f}x one cell)" if one else ""), flush=True)
    if not args.data.is_file():
        note = f"skipped --real-check: {args.data} not found (needs the 5085 real CIFAR-10 images)"
        print(note, flush=True)
        report["skipped"].append(note)
    elif room("real_check", "--real-check"):
        report["real_check"] = real_check(args, cfg, device, [0])  # the 5085 lossless images, whatever --full says
    report["total_s"] = time.perf_counter() - t0
    table = {r["model"]: round(r["images_per_s"]) for r in report["rows"] if r["measurement"] == "ours, default batch"}
    if table and device.type == "cuda":
        print(f"throughput for H100_IMAGES_PER_S in src/diffaug/train/stage.py (images/s, batch {default_batch}, {capture}): {table}")
    print(f"sweep done in {report['total_s']:.0f}s", flush=True)
    return report


def write_sweep(args: argparse.Namespace, report: dict, stamp: list[str]) -> None:
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(args.json_out, (json.dumps(report, indent=1) + "\n").encode())
        print(f"wrote {args.json_out}")
    if not args.results:
        return
    for r in report["rows"]:
        append_row(args.results, SWEEP_TITLE, SWEEP_HEADER,
                   stamp + [r["measurement"], r["model"], str(r["batch"]), r["step"], f"{r['s_per_epoch']:.3f}",
                            f"{r['images_per_s']:.0f}", f"{r['vs_usual']:.1f}x" if r["vs_usual"] else "-"])
    one = next((c["images_per_s"] for c in report["cells"] if c.get("cells") == 1 and "images_per_s" in c), None)
    for c in report["cells"]:
        if "images_per_s" in c:
            append_row(args.results, SWEEP_TITLE, SWEEP_HEADER,
                       stamp + [f"{c['cells']} concurrent cells (aggregate)", "resnet18", str(c["batch"]), "processes",
                                "-", f"{c['images_per_s']:.0f}", f"{c['images_per_s'] / one:.2f}x one cell" if one else "-"])
    for note in report["skipped"]:
        append_row(args.results, SWEEP_TITLE, SWEEP_HEADER, stamp + [note, "-", "-", "-", "-", "-", "-"])
    for r in real_rows(stamp, report["real_check"]):
        append_row(args.results, REAL_TITLE, REAL_HEADER, r)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args.worker)
        return
    cfg = load_config(args.params)
    device = resolve_device(cfg.train.device)
    name = device_name(device)
    stamp = [datetime.date.today().isoformat(), name,
             "`python benchmarks/train.py " + " ".join(sys.argv[1:] if argv is None else argv) + "`"]
    print(f"device: {name}; torch {torch.__version__}")
    if args.sweep:
        report = sweep(args, cfg, device, stamp)
        write_sweep(args, report, stamp)
        return
    if args.real_check:
        try:
            base = cfg.train.recipes["default"]
            variants = None
            if args.ablation is not None:
                variants = ablations(base)
                unknown = [v for v in args.ablation if v not in variants]
                if unknown:
                    sys.exit(f"error: --ablation: unknown variant(s) {unknown}; allowed: {', '.join(list(variants)[1:])}")
                if args.ablation:  # just the variants named (the default's own seeds: --real-check alone)
                    variants = {k: v for k, v in variants.items() if k in args.ablation}
            results = real_check(args, cfg, device, args.seeds, variants, full=args.full)
        except FileNotFoundError as e:
            sys.exit(f"error: {e}")
        for variant in dict.fromkeys(r["variant"] for r in results):
            accs = [r["val_acc"] for r in results if r["variant"] == variant]
            print(f"{variant}: val acc {mean_std(accs)} over seeds {args.seeds}")
        if args.results:
            for r in real_rows(stamp, results):
                append_row(args.results, REAL_TITLE, REAL_HEADER, r)
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
        ours[model] = time_ours(cfg, model, images, labels, device, batch, compile, timed, warmup)[0]
        print(f"  ours {model:12s} {ours[model]:8.2f} s/epoch", flush=True)
    ratio = usual / ours["resnet18"]
    print(f"ResNet-18: usual {usual:.2f} s/epoch, ours {ours['resnet18']:.2f} s/epoch: {ratio:.1f}x faster")
    if args.results:
        setup = (f"{count} imgs, batch {batch}, {cfg.train.precision if device.type == 'cuda' else 'fp32'}"
                 f"{', compiled' if compile else ''}{', CUDA graph' if cfg.train.cuda_graph and device.type == 'cuda' else ''}"
                 f"{', smoke' if args.smoke else ''}")
        append_row(args.results, "Training epoch time, s/epoch (benchmarks/train.py)",
                   ["date", "device", "command", "setup", "usual ResNet-18", "ours ResNet-18", "speed-up",
                    *[f"ours {m}" for m in ARCHITECTURES[1:]]],
                   stamp + [setup, f"{usual:.2f}", f"{ours['resnet18']:.2f}", f"{ratio:.1f}x",
                            *[f"{ours[m]:.2f}" for m in ARCHITECTURES[1:]]])


if __name__ == "__main__":
    main()
