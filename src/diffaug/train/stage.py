"""The train stage's command line (see diffaug/train/__init__.py). Params and inputs are checked before
anything is written; then per seed: resume or start, log epochs to dvclive at <metrics>/seed-<s>, save the
final-epoch weights to <out>/seed-<s>.pt; finally <out>/train.json. Never reads the test split.
"""
from __future__ import annotations

import argparse
import functools
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
from dvclive import Live

from diffaug.cli import human_duration, stage_parser
from diffaug.config import ARCHITECTURES, Config, load_config
from diffaug.devices import resolve_device, run_conditions, training_precision, use_local_rank
from diffaug.errors import ConfigError, UserError, exit_on_error
from diffaug.formats.classifier import save_trained
from diffaug.formats.mixture import RERUN as RERUN_MIXTURES
from diffaug.formats.mixture import load_mixture, read_total
from diffaug.formats.splits import check_arrays, load_split
from diffaug.io import ensure_writable_dir, sha256_file, sha256_json, write_json_atomic
from diffaug.train.loop import Trainer, fit

# Images/s of one training cell on one H100 80GB (bf16, channels_last, batch 128, 50k images; s/epoch 5.26 / 8.38 /
# 12.27 / 4.84 / 27.28), measured with benchmarks/train.py on the eager loop: the CUDA-graph step and the paper
# variant (its stem downsamples 4x) are faster, so the estimate errs long.
H100_IMAGES_PER_S = {"resnet18": 50_000 / 5.26, "resnet34": 50_000 / 8.38, "resnet50": 50_000 / 12.27, "vgg16": 50_000 / 4.84,
                     "densenet121": 50_000 / 27.28}
THROUGHPUT_SOURCE = "eager loop at batch 128, benchmarks/train.py"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = stage_parser("python -m diffaug.train", "Train one architecture on one mixture.")
    p.add_argument("--model", required=True, help=" | ".join(ARCHITECTURES))
    p.add_argument("--mix", required=True, help="a key of params.yaml mixtures")
    p.add_argument("--mixture", type=Path, required=True, help="data/mixtures/<mix>.npz")
    p.add_argument("--prepared", type=Path, required=True, help="data/prepared (its val.npz is the validation set)")
    p.add_argument("--synthetic", type=Path, required=True, help="data/synthetic")
    p.add_argument("--out", type=Path, required=True, help="models/<arch>/<mix>")
    p.add_argument("--metrics", type=Path, required=True, help="metrics/train/<arch>/<mix>")
    p.add_argument("--checkpoints", type=Path, required=True, help="checkpoints/<arch>/<mix>")
    return p.parse_args(argv)


def load_training_data(mixture: Path, prepared: Path, synthetic: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    images, labels, classes = load_mixture(mixture, prepared, synthetic)
    check_arrays(images, labels, np.array(classes), str(mixture), RERUN_MIXTURES)
    if len(images) < 2:
        raise UserError(f"{mixture}: holds {len(images)} images; training needs at least 2")
    return images, labels, classes


def load_validation(path: Path, classes: list[str], image_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The real validation images held out by prepare (empty with dataset.val_per_class: 0)."""
    val = load_split(path)
    if val.classes != classes:
        raise UserError(f"{path}: classes {val.classes} differ from the mixture's {classes}; rerun dvc repro")
    if len(val.labels) and val.images.shape[1:] != image_shape:
        raise UserError(f"{path}: images are {val.images.shape[1:]}, the mixture's are {image_shape}; rerun dvc repro")
    return val.images, val.labels


def log_epoch(live: Live, seed: int, epochs: int, metrics: dict[str, float]) -> None:
    """One epoch's metrics to dvclive (its step is the epoch) and a line on stdout."""
    for name, value in metrics.items():
        if name != "epoch":
            live.log_metric(name, value)
    live.next_step()
    val = f" val/acc {metrics['val/acc']:.4f}" if "val/acc" in metrics else ""
    print(f"seed {seed} epoch {metrics['epoch'] + 1}/{epochs} loss {metrics['train/loss']:.4f} "
          f"acc {metrics['train/acc']:.4f}{val} lr {metrics['lr']:.5f} {metrics['epoch_time_s']:.2f}s", flush=True)


def run(cfg: Config, model: str, mix: str, images: np.ndarray, labels: np.ndarray, classes: list[str],
        val_images: np.ndarray, val_labels: np.ndarray, out: Path, metrics: Path, checkpoints: Path,
        mixture_sha256: str) -> dict[str, Any]:
    """Train every seed of cfg.train.seeds and write the stage's outputs; returns train.json's content.

    The settings hash holds `mixture_sha256` (the index file records a digest of every pool it draws from)
    and the run conditions: a checkpoint made on other data, or under other conditions (whose weights the
    classifier's recorded conditions would misdescribe), is not resumed. Validation images change no weight.
    """
    tr, recipe = cfg.train, cfg.train.active
    device = use_local_rank(resolve_device(tr.device, "train.device"))  # under torchrun: GPU LOCAL_RANK
    precision = training_precision(tr.precision, device)
    settings = {
        "model": model, "variant": tr.variant, "num_classes": len(classes), "recipe_name": tr.recipe,
        "recipe": recipe.model_dump(), "precision": precision.name,
        "channels_last": tr.channels_last, "compile": tr.compile, "cuda_graph": tr.cuda_graph, "device": device.type,
        "train_images": len(images), "val_images": len(val_images),
        "mixture_sha256": mixture_sha256,
    }
    conditions = run_conditions(device, precision.name)
    report: dict[str, Any] = {"model": model, "mix": mix, "settings": settings, "conditions": conditions, "seeds": {}}
    if precision.note:
        print(f"note: {precision.note}", file=sys.stderr, flush=True)
        report["precision_note"] = precision.note
    for seed in tr.seeds:
        seed_settings = {**settings, "seed": seed}
        trainer = Trainer(model, tr.variant, len(classes), recipe, images, labels, seed=seed, device=device,
                          precision=precision.name, channels_last=tr.channels_last, compile=tr.compile,
                          cuda_graph=tr.cuda_graph, eval_batch=cfg.evaluate.batch_size,
                          val_images=val_images, val_labels=val_labels)
        # One Live per seed, rebuilt every run: fit() replays restored epochs first, so no epoch is doubled or lost.
        shutil.rmtree(metrics / f"seed-{seed}", ignore_errors=True)
        live = Live(str(metrics / f"seed-{seed}"), dvcyaml=None, save_dvc_exp=False)
        result = fit(trainer, checkpoint=checkpoints / f"seed-{seed}.pt", checkpoint_every=tr.checkpoint_every,
                     settings_hash=sha256_json({**seed_settings, "conditions": conditions}),
                     log=functools.partial(log_epoch, live, seed, recipe.epochs), label=f"{model}/{mix} seed {seed}")
        live.end()
        # dvclive's summary repeats the last row of the curves and is no plot: dvc.yaml's `plots: metrics/train`
        # reads every file under it and fails on this one.
        (metrics / f"seed-{seed}" / "metrics.json").unlink(missing_ok=True)
        save_trained(out / f"seed-{seed}.pt", trainer.final_model,  # the EMA weights when the recipe keeps them
                     {"model": model, "variant": tr.variant, "num_classes": len(classes), "classes": classes,
                      "epochs": recipe.epochs, "settings": seed_settings, "conditions": conditions})
        step_mode = trainer.step_mode
        del trainer  # frees its device copy of the images before the next seed uploads them again
        last = result.history[-1]
        report["seeds"][str(seed)] = {
            "wall_time_s": round(result.wall_time_s, 3), "epochs": len(result.history),
            "resumed_from_epoch": result.resumed_from, "step": step_mode,
            "final_train_loss": last["train/loss"], "final_train_acc": last["train/acc"],
            "final_val_acc": last.get("val/acc"), "final_val_loss": last.get("val/loss"),
        }
    write_json_atomic(out / "train.json", report)
    # The final weights are safe in <out>; checkpoints (persist: true in dvc.yaml) would only go stale.
    for stale in [*checkpoints.glob("seed-*.pt"), *checkpoints.glob(".seed-*.tmp")]:  # .tmp: writes cut by a kill
        stale.unlink(missing_ok=True)
    return report


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = load_config(args.params)
    if args.model not in ARCHITECTURES:
        raise ConfigError(f"--model: got {args.model!r}; allowed: {' | '.join(ARCHITECTURES)}")
    if args.mix not in cfg.mixtures:
        raise ConfigError(f"--mix: got {args.mix!r}; allowed: {' | '.join(cfg.mixtures)}")
    resolve_device(cfg.train.device, "train.device")  # a missing or bad CUDA device: one line before data is read
    for key, folder in (("--out", args.out), ("--metrics", args.metrics), ("--checkpoints", args.checkpoints)):
        ensure_writable_dir(folder, key)  # before the data is read and a model trained
    images, labels, classes = load_training_data(args.mixture, args.prepared, args.synthetic)
    val_images, val_labels = load_validation(args.prepared / "val.npz", classes, images.shape[1:])
    # The grid's ETA: images seen over every cell / images/s of one cell (build_mixtures' <mix>.json give the sizes)
    sizes = {m: len(images) if m == args.mix else read_total(args.mixture.parent, m) for m in cfg.trained_mixes}
    seen = sum(n for n in sizes.values() if n is not None) * cfg.train.active.epochs * len(cfg.train.seeds)
    unbuilt = [m for m, n in sizes.items() if n is None]
    missing = f"; not built yet, not counted: {', '.join(unbuilt)}" if unbuilt else ""
    print(f"grid ETA: {args.model} x {len(sizes) - len(unbuilt)} mixtures x {len(cfg.train.seeds)} seed(s) x {cfg.train.active.epochs} "
          f"epochs = {seen:,} images, about {human_duration(seen / H100_IMAGES_PER_S[args.model])} on one H100 ({THROUGHPUT_SOURCE}; "
          f"cells run one after another){missing}", flush=True)
    report = run(cfg, args.model, args.mix, images, labels, classes, val_images, val_labels,
                 args.out, args.metrics, args.checkpoints, sha256_file(args.mixture))
    for seed, summary in report["seeds"].items():
        val = summary["final_val_acc"]
        print(f"{args.model}/{args.mix} seed {seed}: train acc {summary['final_train_acc']:.4f}"
              f"{'' if val is None else f', val acc {val:.4f}'} in {summary['wall_time_s']:.0f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
