"""Stage `evaluate`: test accuracy of the final weights of every trained cell, keyed by mixture.

    python -m diffaug.evaluate --params params.yaml --prepared data/prepared --synthetic data/synthetic \
        --models models/<model> --out metrics/evaluate --summary metrics/summary.json

Cells come from params (`model` x (`mixes` + `filtered_mixes`) x `train.seeds`), never from globbing models/, so
leftovers of earlier experiments cannot leak into the table. The test split is read here only. Writes
metrics/summary.json (what `dvc exp show` tabulates) and metrics/evaluate/: accuracy.json, confusion.json,
per_class.json, per_seed.json, synthetic_quality.json (recognisability, train-on-synthetic, distribution
metrics, CLIP score) and exchange_rate.json; docs/experiments.md and docs/worth.md say what each number means.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from diffaug.cli import stage_parser
from diffaug.config import Config, load_config
from diffaug.devices import resolve_device
from diffaug.errors import exit_on_error
from diffaug.exchange import exchange_rates
from diffaug.formats import synthetic
from diffaug.formats.classifier import ImageClassifier, load_trained, logits_of, require_files
from diffaug.formats.splits import load_split
from diffaug.io import ensure_writable_dir, write_json_atomic
from diffaug.metrics import K_NEIGHBOURS, clip_similarities, load_clip, penultimate_features, set_quality

# Distribution metrics compare at most this many images per side (a seeded draw): precision/recall
# costs n_real x n_synthetic distances, and 10k images keep it to seconds on one GPU or CPU core.
QUALITY_MAX_SAMPLES = 10000
INCEPTION_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
CLIP_MODELS = ("openai/clip-vit-large-patch14", "openai/clip-vit-base-patch32")


def scores(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    pred = logits.argmax(axis=1)
    correct = pred == labels
    per_class = [float(correct[labels == c].mean()) if (labels == c).any() else float("nan") for c in range(num_classes)]
    loss = F.cross_entropy(torch.from_numpy(logits).double(), torch.from_numpy(labels).long())
    return {"acc": float(correct.mean()), "loss": float(loss), "per_class": per_class, "pred": pred}


def draw(n: int, limit: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded draw of at most `limit` of n items."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def cached_clip() -> Path | None:
    """The local snapshot folder of the first CLIP model of CLIP_MODELS in the Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache  # comes with transformers and diffusers
    found = (try_to_load_from_cache(repo, "config.json") for repo in CLIP_MODELS)
    return next((Path(f).parent for f in found if isinstance(f, str)), None)


def cached_weights_note(clip: Path | None = None) -> str:
    """One line on the Inception FID and CLIP score: they need weights that are not downloaded here."""
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    lacks = ([] if importlib.util.find_spec("pytorch_fid") else ["the pytorch-fid package is not installed"]) + \
        ([] if (hub / INCEPTION_WEIGHTS).is_file() else [f"{INCEPTION_WEIGHTS} not in {hub}"])
    missing = [f"Inception FID ({' and '.join(lacks) or 'pytorch-fid and its weights are there, but this version does not compute it'})"]
    if clip is None:
        missing.append(f"CLIP score ({' or '.join(CLIP_MODELS)} not in the Hugging Face cache)")
    done = f"CLIP score (syn_clip) with {clip}; " if clip is not None else ""
    return f"evaluate: {done}skipped " + "; ".join(missing) + "; the classifier-feature metrics need no download"


def mixture_counts(fractions: dict[str, float], pools: dict[str, np.ndarray]) -> tuple[int, int]:
    """(real images, synthetic images) of a mixture: per class round(fraction * n_class), as build_mixtures draws
    (a stage may not import another stage, so the rule is restated here); rot90/vflip copies count as neither."""
    drawn = {s: sum(int(round(f * int(n))) for n in np.bincount(pools[s])) for s, f in fractions.items() if s in pools}
    return drawn.pop("orig", 0), sum(drawn.values())


def evaluate(cfg: Config, prepared: Path, synthetic_root: Path, models: Path, out: Path, summary_path: Path) -> dict:
    device = resolve_device(cfg.evaluate.device, "evaluate.device")
    test = load_split(prepared / "test.npz")
    classes, seeds = test.classes, cfg.train.seeds
    cfg.dataset.words(classes)  # refuses a label_names key that names no class, as every stage that reads them does
    # Check every weight file before any work, so a missing cell fails fast and writes nothing.
    for mix in cfg.trained_mixes:
        require_files([models / mix / f"seed-{s}.pt" for s in seeds], f"train@{cfg.model}-{mix} has not run (dvc repro)")

    results: dict[str, dict[str, Any]] = {}
    confusion: list[dict[str, str]] = []
    real_only = [m for m in cfg.mixes if set(cfg.mixtures[m]) == {"orig"}]
    reference = max(real_only, key=lambda m: cfg.mixtures[m]["orig"], default=None)  # the most real data: orig100 by default
    reference_models = list[ImageClassifier]()
    for mix in cfg.trained_mixes:
        cell = [load_trained(models / mix / f"seed-{s}.pt", device)[0] for s in seeds]  # each normalises its own uint8 input
        runs = [scores(logits_of(model, test.images, cfg.evaluate.batch_size, device), test.labels, len(classes)) for model in cell]
        reference_models = cell if mix == reference else reference_models
        accs = np.array([r["acc"] for r in runs])
        results[mix] = {"acc": float(accs.mean()), "std": float(accs.std(ddof=1)) if len(accs) > 1 else 0.0,
                        "loss": float(np.mean([r["loss"] for r in runs])), "per_class": np.mean([r["per_class"] for r in runs], axis=0).tolist(),
                        "per_seed": accs.tolist()}
        if not confusion:
            confusion = [{"actual": classes[a], "predicted": classes[p]} for a, p in zip(test.labels, runs[0]["pred"])]

    quality: dict[str, dict[str, Any]] = {"recognisability": {}, "train_on_synthetic": {}}
    distribution: dict[str, Any] = {}
    syn_labels: dict[str, np.ndarray] = {}
    train = load_split(prepared / "train.npz") if (reference and cfg.synthetic_sets_used) or cfg.real_curve else None
    if reference is not None and train is not None and cfg.synthetic_sets_used:
        keep = draw(len(train.labels), QUALITY_MAX_SAMPLES)
        real_feats = penultimate_features(reference_models[0], train.images[keep], cfg.evaluate.batch_size, device)[0]
        real_labels = train.labels[keep]
        clip = load_clip(snapshot, str(device)) if (snapshot := cached_clip()) else None
        for name in cfg.synthetic_sets_used:
            images, labels = synthetic.load_synthetic(synthetic_root / name)
            syn_labels[name] = labels
            if clip is not None:  # CLIP score: 100 x max(cos(image, "a photo of a <class word>"), 0), mean over images
                cos = clip_similarities(clip, images, labels, cfg.dataset.words(classes), str(device))
                quality.setdefault("clip_score", {})[name] = float(100 * np.clip(cos, 0, None).mean())
            runs = [scores(logits_of(model, images, cfg.evaluate.batch_size, device), labels, len(classes)) for model in reference_models]
            quality["recognisability"][name] = {
                "classifier": f"{cfg.model}-{reference}", "acc": float(np.mean([r["acc"] for r in runs])),
                "per_class": dict(zip(classes, np.mean([r["per_class"] for r in runs], axis=0).tolist()))}
            keep = draw(len(labels), QUALITY_MAX_SAMPLES)
            if min(len(keep), len(real_labels)) <= K_NEIGHBOURS:  # k-NN radii need more than k images per side
                continue
            feats = penultimate_features(reference_models[0], images[keep], cfg.evaluate.batch_size, device)[0]
            distribution[name] = {"classifier": f"{cfg.model}-{reference} seed {seeds[0]}, penultimate layer",
                                  **set_quality(real_feats, real_labels, feats, labels[keep], classes)}
        quality["distribution"] = distribution
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
    for key in ("fd", "kid", "kid_se", "precision", "recall"):
        if distribution:
            summary[f"syn_{key}"] = {n: round(d["overall"][key], 6 if key != "fd" else 4) for n, d in distribution.items()}
    if quality.get("clip_score"):
        summary["syn_clip"] = {n: round(v, 4) for n, v in quality["clip_score"].items()}
    exchange = worth_in_real_images(cfg, train.labels if train else None, synthetic_root, results, syn_labels)
    if exchange is not None:
        rows = exchange["mixtures"]
        summary["real_equiv"] = {m: _finite(r["real_equiv"], 0) for m, r in rows.items()}
        if len(seeds) > 1:
            summary["real_equiv_std"] = {m: _finite(r["real_equiv_std"], 0) for m, r in rows.items()}
        summary["syn_per_real"] = {m: _finite(r["exchange_rate"], 3) for m, r in rows.items()}
        summary["equal_budget_acc"] = {m: round(r["equal_budget_acc"], 6) for m, r in rows.items()}
        counts = {m: exchange["curve"]["sizes"][i] for i, m in enumerate(cfg.real_curve)}
        summary["n_real"] = {**counts, **{m: r["n_real"] for m, r in rows.items()}}
        summary["n_syn"] = {m: r["n_syn"] for m, r in rows.items()}

    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "accuracy.json", [{"mixture": m, "test_acc": r["acc"], "test_acc_std": r["std"]} for m, r in results.items()])
    write_json_atomic(out / "confusion.json", confusion)
    write_json_atomic(out / "per_class.json", {m: dict(zip(classes, r["per_class"])) for m, r in results.items()})
    write_json_atomic(out / "per_seed.json", {m: dict(zip(map(str, seeds), r["per_seed"])) for m, r in results.items()})
    write_json_atomic(out / "synthetic_quality.json", quality)
    if exchange is not None:
        # JSON has no nan or infinity: null and "inf" stand for them
        write_json_atomic(out / "exchange_rate.json", json.loads(json.dumps(exchange), parse_constant=lambda c: None if c == "NaN" else "inf"))
    write_json_atomic(summary_path, summary)
    return summary


def _finite(x: float | None, digits: int) -> float | None:
    """A JSON number, or None for an undefined (None) or infinite value."""
    if x is None or not np.isfinite(x):
        return None
    return round(float(x), digits) if digits else int(round(float(x)))


def worth_in_real_images(cfg: Config, train_labels: np.ndarray | None, synthetic_root: Path, results: dict[str, dict[str, Any]],
                         syn_labels: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """The exchange rate of every trained, unfiltered mixture with synthetic images (None without real_curve)."""
    if not cfg.real_curve or train_labels is None:
        return None
    untrained = [m for m in cfg.real_curve if m not in cfg.mixes]
    if untrained:
        print(f"evaluate: no exchange rate: real_curve mixtures {', '.join(untrained)} are not in mixes (not trained)")
        return None
    needed = {s for mix in cfg.mixes for s in cfg.mixtures[mix] if s in cfg.synthetic.sets}
    pools = {"orig": train_labels} | {s: syn_labels[s] if s in syn_labels else synthetic.load_synthetic(synthetic_root / s)[1]
                                      for s in needed}
    sizes = [mixture_counts(cfg.mixtures[m], pools)[0] for m in cfg.real_curve]
    curve = [results[m]["per_seed"] for m in cfg.real_curve]
    mixtures = {}
    for mix in cfg.mixes:
        if any(s in cfg.synthetic.sets for s in cfg.mixtures[mix]):
            n_real, n_syn = mixture_counts(cfg.mixtures[mix], pools)
            mixtures[mix] = {"n_real": n_real, "n_syn": n_syn, "accs": results[mix]["per_seed"]}
    exchange = exchange_rates(sizes, curve, mixtures)
    flat = [str(s) for s, fit in zip(cfg.train.seeds, exchange["curve"]["fits"]) if fit["b"] <= 0]
    if flat:  # a curve that does not rise says nothing about what extra images are worth
        print(f"evaluate: no exchange rate: accuracy does not rise with real images along real_curve "
              f"({', '.join(cfg.real_curve)}) for seed(s) {', '.join(flat)}; train longer or use more seeds")
        return None
    return exchange


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    ap = stage_parser("python -m diffaug.evaluate", __doc__.splitlines()[0], data_dirs=True)
    ap.add_argument("--models", type=Path, required=True, help="models/<model>: one folder per mixture")
    ap.add_argument("--out", type=Path, default=Path("metrics/evaluate"))
    ap.add_argument("--summary", type=Path, default=Path("metrics/summary.json"))
    args = ap.parse_args(argv)
    cfg = load_config(args.params)
    for key, folder in (("--out", args.out), ("--summary", args.summary.parent)):
        ensure_writable_dir(folder, key)  # before any model is loaded
    summary = evaluate(cfg, args.prepared, args.synthetic, args.models, args.out, args.summary)
    print(cached_weights_note(cached_clip()))
    width = max(len(m) for m in summary["test_acc"])
    print(f"evaluate: {cfg.model} ({cfg.train.variant}, recipe {cfg.train.recipe}, {len(cfg.train.seeds)} seed(s)), test accuracy:")
    for mix, acc in summary["test_acc"].items():
        std = summary.get("test_acc_std", {}).get(mix)
        print(f"  {mix:<{width}}  {acc:.4f}" + (f" ± {std:.4f}" if std is not None else ""))


if __name__ == "__main__":
    main()
