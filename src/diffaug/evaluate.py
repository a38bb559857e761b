"""Stage `evaluate`: test accuracy of the final weights of every trained cell, keyed by mixture.

    python -m diffaug.evaluate --params params.yaml --prepared data/prepared --synthetic data/synthetic \
        --models models/<model> --out metrics/evaluate --summary metrics/summary.json

Cells come from params (`model` x (`mixes` + `filtered_mixes`) x `train.seeds`), never from globbing models/, so
leftovers of earlier experiments cannot leak into the table. The test split is read here only.

Writes:
  metrics/summary.json         what `dvc exp show` tabulates: test_acc.<mix> (mean over seeds),
                               test_acc_std.<mix> with several seeds, test_loss.<mix>, and the
                               synthetic-data quality numbers (see below)
  metrics/evaluate/accuracy.json     one row per mixture, for `dvc plots`
  metrics/evaluate/confusion.json    {actual, predicted} rows of the first mixture, seed 0
  metrics/evaluate/per_class.json    per mixture and class: test accuracy (mean over seeds)
  metrics/curves/<mix>.tsv     per-epoch train/val accuracy, loss and lr of the first seed, for `dvc plots`
  metrics/evaluate/synthetic_quality.json
      (a) recognisability: how a real-data-only model classifies each synthetic set, per class;
      (b) train-on-synthetic, test-on-real: test accuracy of the synthetic-only mixtures, per class.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffaug.cli import stage_parser
from diffaug.config import Config, load_config
from diffaug.devices import resolve_device
from diffaug.errors import exit_on_error
from diffaug.formats import synthetic
from diffaug.formats.classifier import load_trained, logits_of, require_files
from diffaug.formats.curves import read_live_curves, write_curves
from diffaug.formats.splits import load_split
from diffaug.io import write_json_atomic


def predict(model_path: Path, images: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """Logits (float32, N x classes) of the final weights at `model_path` on uint8 NHWC images."""
    model, _ = load_trained(model_path, device)  # normalises its own input: uint8 NCHW pixels in
    return logits_of(model, images, batch_size, device)


def scores(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    pred = logits.argmax(axis=1)
    correct = pred == labels
    per_class = [float(correct[labels == c].mean()) if (labels == c).any() else float("nan") for c in range(num_classes)]
    return {"acc": float(correct.mean()), "loss": float(-log_probs[np.arange(len(labels)), labels].mean()),
            "per_class": per_class, "pred": pred}


def real_only_mix(cfg: Config) -> str | None:
    """The trained mixture of real images only with the most real data (orig100 by default)."""
    candidates = [m for m in cfg.mixes if set(cfg.mixtures[m]) == {"orig"}]
    return max(candidates, key=lambda m: cfg.mixtures[m]["orig"], default=None)


def evaluate(cfg: Config, prepared: Path, synthetic_root: Path, models: Path, out: Path, summary_path: Path,
             train_metrics: Path | None = None, curves: Path | None = None) -> dict:
    device = resolve_device(cfg.evaluate.device)
    test = load_split(prepared / "test.npz")
    classes, seeds = test.classes, cfg.train.seeds
    # Check every weight file before any work, so a missing cell fails fast and writes nothing.
    for mix in cfg.trained_mixes:
        require_files([models / mix / f"seed-{s}.pt" for s in seeds], f"train@{cfg.model}-{mix} has not run (dvc repro)")

    results: dict[str, dict[str, Any]] = {}
    confusion: list[dict[str, str]] = []
    for mix in cfg.trained_mixes:
        runs = [scores(predict(models / mix / f"seed-{s}.pt", test.images, cfg.evaluate.batch_size, device), test.labels, len(classes))
                for s in seeds]
        accs = np.array([r["acc"] for r in runs])
        results[mix] = {"acc": float(accs.mean()), "std": float(accs.std(ddof=1)) if len(accs) > 1 else 0.0,
                        "loss": float(np.mean([r["loss"] for r in runs])), "per_class": np.mean([r["per_class"] for r in runs], axis=0).tolist(),
                        "per_seed": accs.tolist()}
        if not confusion:
            confusion = [{"actual": classes[a], "predicted": classes[p]} for a, p in zip(test.labels, runs[0]["pred"])]

    quality: dict[str, dict[str, Any]] = {"recognisability": {}, "train_on_synthetic": {}}
    reference = real_only_mix(cfg)
    if reference is not None:
        for name in cfg.synthetic_sets_used:
            images, labels = synthetic.load_synthetic(synthetic_root / name)
            runs = [scores(predict(models / reference / f"seed-{s}.pt", images, cfg.evaluate.batch_size, device), labels, len(classes)) for s in seeds]
            quality["recognisability"][name] = {
                "classifier": f"{cfg.model}-{reference}", "acc": float(np.mean([r["acc"] for r in runs])),
                "per_class": dict(zip(classes, np.mean([r["per_class"] for r in runs], axis=0).tolist()))}
    for mix in cfg.trained_mixes:
        if set(cfg.mixtures[mix]) <= set(cfg.synthetic_sets):
            quality["train_on_synthetic"][mix] = {"acc": results[mix]["acc"], "per_class": dict(zip(classes, results[mix]["per_class"]))}

    summary = {"model": cfg.model, "variant": cfg.train.variant, "recipe": cfg.train.recipe, "seeds": len(seeds),
               "test_acc": {m: round(r["acc"], 6) for m, r in results.items()}}
    if len(seeds) > 1:
        summary["test_acc_std"] = {m: round(r["std"], 6) for m, r in results.items()}
    summary["test_loss"] = {m: round(r["loss"], 6) for m, r in results.items()}
    if quality["recognisability"]:
        summary["syn_recognised"] = {n: round(q["acc"], 6) for n, q in quality["recognisability"].items()}

    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "accuracy.json", [{"mixture": m, "test_acc": r["acc"], "test_acc_std": r["std"]} for m, r in results.items()])
    write_json_atomic(out / "confusion.json", confusion)
    write_json_atomic(out / "per_class.json", {m: dict(zip(classes, r["per_class"])) for m, r in results.items()})
    write_json_atomic(out / "per_seed.json", {m: dict(zip(map(str, seeds), r["per_seed"])) for m, r in results.items()})
    write_json_atomic(out / "synthetic_quality.json", quality)
    if train_metrics is not None and curves is not None:  # first seed's curve per mixture, for `dvc plots`
        curves.mkdir(parents=True, exist_ok=True)
        for mix in cfg.trained_mixes:
            write_curves(curves / f"{mix}.tsv", read_live_curves(train_metrics / mix / f"seed-{seeds[0]}"))
    write_json_atomic(summary_path, summary)
    return summary


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    ap = stage_parser("python -m diffaug.evaluate", __doc__.splitlines()[0], data_dirs=True)
    ap.add_argument("--models", type=Path, required=True, help="models/<model>: one folder per mixture")
    ap.add_argument("--out", type=Path, default=Path("metrics/evaluate"))
    ap.add_argument("--summary", type=Path, default=Path("metrics/summary.json"))
    ap.add_argument("--train-metrics", type=Path, help="metrics/train/<model>: the cells' dvclive folders")
    ap.add_argument("--curves", type=Path, help="where to gather one training-curve TSV per mixture")
    args = ap.parse_args(argv)
    cfg = load_config(args.params)
    summary = evaluate(cfg, args.prepared, args.synthetic, args.models, args.out, args.summary, args.train_metrics, args.curves)
    width = max(len(m) for m in summary["test_acc"])
    print(f"evaluate: {cfg.model} ({cfg.train.variant}, recipe {cfg.train.recipe}, {len(cfg.train.seeds)} seed(s)), test accuracy:")
    for mix, acc in summary["test_acc"].items():
        std = summary.get("test_acc_std", {}).get(mix)
        print(f"  {mix:<{width}}  {acc:.4f}" + (f" ± {std:.4f}" if std is not None else ""))


if __name__ == "__main__":
    main()
