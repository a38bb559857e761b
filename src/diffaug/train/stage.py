"""The train stage's command line (see diffaug/train/__init__.py for the call dvc.yaml makes).

Everything that can be wrong with params or inputs is checked before anything is written: a bad value
gives one line naming it and exit code 2. Then, per seed in train.seeds: resume from a checkpoint made
under the same settings (or start fresh), log every epoch to dvclive at <metrics>/seed-<s>, save the
final-epoch weights to <out>/seed-<s>.pt. Finally <out>/train.json, and the checkpoints are removed.
Only the mixture's images and data/prepared/val.npz are read: never the test split.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from diffaug.config import ARCHITECTURES, Config, load_config
from diffaug.errors import ConfigError, UserError, exit_on_error
from diffaug.io import load_npz, sha256_json, write_json_atomic


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m diffaug.train", description="Train one architecture on one mixture.")
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--model", required=True, help=" | ".join(ARCHITECTURES))
    p.add_argument("--mix", required=True, help="a key of params.yaml mixtures")
    p.add_argument("--mixture", type=Path, required=True, help="data/mixtures/<mix>.npz")
    p.add_argument("--prepared", type=Path, required=True, help="data/prepared (its val.npz is the validation set)")
    p.add_argument("--synthetic", type=Path, required=True, help="data/synthetic")
    p.add_argument("--out", type=Path, required=True, help="models/<arch>/<mix>")
    p.add_argument("--metrics", type=Path, required=True, help="metrics/train/<arch>/<mix>")
    p.add_argument("--checkpoints", type=Path, required=True, help="checkpoints/<arch>/<mix>")
    return p.parse_args(argv)


def check_arrays(images: Any, labels: Any, classes: list[str], source: str) -> None:
    """Raise UserError naming `source` unless images are uint8 (N, H, W, 3) with N int labels in range."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise UserError(f"{source}: images must be uint8 (N, H, W, 3); got {got}")
    labels = np.asarray(labels)
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{source}: labels must be {len(images)} integers; got {labels.dtype} {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise UserError(f"{source}: labels must lie in 0..{len(classes) - 1} ({len(classes)} classes)")


def load_training_data(mixture: Path, prepared: Path, synthetic: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if not mixture.is_file():
        raise UserError(f"{mixture}: mixture file not found; run the mixtures stage first")
    from diffaug.mixtures import load_mixture  # the lead's loader: real and synthetic images of the mix

    images, labels, classes = load_mixture(mixture, prepared, synthetic)
    classes = [str(c) for c in classes]
    if len(classes) < 2:
        raise UserError(f"{mixture}: needs at least 2 classes; got {len(classes)}")
    check_arrays(images, labels, classes, str(mixture))
    if len(images) < 2:
        raise UserError(f"{mixture}: holds {len(images)} images; training needs at least 2")
    return images, np.asarray(labels, dtype=np.int64), classes


def load_validation(path: Path, classes: list[str], image_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise UserError(f"{path}: validation file not found; run the prepare stage first")
    try:
        data = load_npz(path)
        images, labels, val_classes = data["images"], data["labels"], [str(c) for c in data["classes"]]
    except KeyError as e:
        raise UserError(f"{path}: lacks key {e}; allowed: an npz with images, labels, classes") from None
    except Exception as e:  # truncated or not an npz
        raise UserError(f"{path}: unreadable ({type(e).__name__}: {e}); rerun the prepare stage") from None
    if val_classes != classes:
        raise UserError(f"{path}: classes {val_classes} differ from the mixture's {classes}")
    if np.asarray(images).size == 0:  # no validation split (dataset.val_per_class: 0)
        return np.zeros((0, *image_shape), np.uint8), np.zeros(0, np.int64)
    check_arrays(images, labels, classes, str(path))
    if images.shape[1:] != image_shape:
        raise UserError(f"{path}: images are {images.shape[1:]}, the mixture's are {image_shape}")
    return images, np.asarray(labels, dtype=np.int64)


def fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(images).data)
    h.update(np.ascontiguousarray(labels, dtype=np.int64).data)
    return h.hexdigest()


class EpochLog:
    """Per-epoch metrics to dvclive (one Live per seed) and a line on stdout."""

    def __init__(self, directory: Path, seed: int, epochs: int):
        from dvclive import Live  # imported here: the training loop itself must run without dvclive

        # Rebuilt from scratch every run; fit() replays restored epochs first, so no epoch is doubled or lost.
        shutil.rmtree(directory, ignore_errors=True)
        self.live = Live(str(directory), dvcyaml=None, save_dvc_exp=False)
        self.seed, self.epochs = seed, epochs

    def __call__(self, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            if name != "epoch":  # dvclive's step is the epoch
                self.live.log_metric(name, value)
        self.live.next_step()
        val = f" val/acc {metrics['val/acc']:.4f}" if "val/acc" in metrics else ""
        print(f"seed {self.seed} epoch {metrics['epoch'] + 1}/{self.epochs} loss {metrics['train/loss']:.4f} "
              f"acc {metrics['train/acc']:.4f}{val} lr {metrics['lr']:.5f} {metrics['epoch_time_s']:.2f}s", flush=True)

    def close(self) -> None:
        self.live.end()


def run(cfg: Config, model: str, mix: str, images: np.ndarray, labels: np.ndarray, classes: list[str],
        val_images: np.ndarray, val_labels: np.ndarray, out: Path, metrics: Path, checkpoints: Path) -> dict[str, Any]:
    """Train every seed of cfg.train.seeds and write the stage's outputs; returns train.json's content."""
    import torch

    from diffaug.devices import resolve_device
    from diffaug.train.loop import Trainer, fit
    from diffaug.formats.classifier import save_trained

    tr, recipe = cfg.train, cfg.train.active
    device = resolve_device(tr.device)
    settings = {
        "model": model, "variant": tr.variant, "num_classes": len(classes), "recipe_name": tr.recipe,
        "recipe": dataclasses.asdict(recipe), "precision": tr.precision if device.type == "cuda" else "fp32",
        "channels_last": tr.channels_last, "compile": tr.compile, "device": device.type,
        "train_images": len(images), "val_images": len(val_images),
        "train_sha256": fingerprint(images, labels), "val_sha256": fingerprint(val_images, val_labels),
    }
    report: dict[str, Any] = {"model": model, "mix": mix, "settings": settings, "torch": torch.__version__, "seeds": {}}
    for seed in tr.seeds:
        seed_settings = {**settings, "seed": seed}
        trainer = Trainer(model, tr.variant, len(classes), recipe, images, labels, seed=seed, device=device,
                          precision=tr.precision, channels_last=tr.channels_last, compile=tr.compile,
                          val_images=val_images, val_labels=val_labels)
        log = EpochLog(metrics / f"seed-{seed}", seed, recipe.epochs)
        result = fit(trainer, checkpoint=checkpoints / f"seed-{seed}.pt", checkpoint_every=tr.checkpoint_every,
                     settings_hash=sha256_json(seed_settings), log=log)
        log.close()
        save_trained(out / f"seed-{seed}.pt", trainer.model,
                     {"model": model, "variant": tr.variant, "num_classes": len(classes), "classes": classes,
                      "epochs": recipe.epochs, "settings": seed_settings})
        del trainer  # frees its device copy of the images before the next seed uploads them again
        last = result.history[-1]
        report["seeds"][str(seed)] = {
            "wall_time_s": round(result.wall_time_s, 3), "epochs": len(result.history),
            "resumed_from_epoch": result.resumed_from,
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
    from diffaug.devices import resolve_device

    resolve_device(cfg.train.device)  # a missing CUDA device is a one-line error before data is read
    images, labels, classes = load_training_data(args.mixture, args.prepared, args.synthetic)
    val_images, val_labels = load_validation(args.prepared / "val.npz", classes, images.shape[1:])
    report = run(cfg, args.model, args.mix, images, labels, classes, val_images, val_labels,
                 args.out, args.metrics, args.checkpoints)
    for seed, summary in report["seeds"].items():
        val = summary["final_val_acc"]
        print(f"{args.model}/{args.mix} seed {seed}: train acc {summary['final_train_acc']:.4f}"
              f"{'' if val is None else f', val acc {val:.4f}'} in {summary['wall_time_s']:.0f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
