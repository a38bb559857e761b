"""Stage `filter@<mix>`: drop the synthetic images of a mixture's draw that a classifier finds implausible.

`mixtures.<mix>.filter` scores each synthetic image `by: confidence` (the softmax probability of its class
under the orig100 cell's first seed, ALIA) or `by: clip` (CLIP image-text cosine with "a photo of a
<label>", local Hugging Face cache only), and keeps scores >= `threshold` or the ceil(keep_fraction * n)
best of each class of each source. Real rows are never dropped. The input is build_mixtures'
`<mix>.unfiltered.npz`, so filtered and unfiltered mixtures differ exactly by the dropped images; the
output `data/filtered/<mix>.npz` records what was dropped and the classifier's sha256 (so the cells
that train on it rerun when it changes), `<mix>.json` the readable account (docs/beyond-the-paper.md).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffaug.cli import stage_parser
from diffaug.config import REAL_SOURCES, Config, MixtureFilter, load_config
from diffaug.devices import resolve_device
from diffaug.errors import UserError, exit_on_error
from diffaug.formats.classifier import load_trained, logits_of, require_files
from diffaug.formats.mixture import (
    MixtureIndex,
    load_mixture,
    read_mixture,
    unfiltered_name,
    write_composition,
    write_mixture,
)
from diffaug.io import ensure_writable_dir, sha256_file
from diffaug.metrics import CLIP_MODEL, CLIP_PROMPT, clip_similarities, load_clip


# ----------------------------------------------------------------------------- scores
def confidence_scores(classifier: Path, images: np.ndarray, labels: np.ndarray, classes: list[str],
                      batch_size: int = 1000, device: str = "cpu") -> np.ndarray:
    """float32 softmax probability of each image's intended class under the trained classifier."""
    model, meta = load_trained(classifier, device)
    if list(meta["classes"]) != list(classes):
        raise UserError(f"{classifier}: trained on classes {list(meta['classes'])}, the mixture has {list(classes)}; "
                        "rerun its train cell (dvc repro)")
    probs = torch.softmax(torch.from_numpy(logits_of(model, images, batch_size, device)), dim=1).numpy()
    return probs[np.arange(len(probs)), labels].astype(np.float32)


# ----------------------------------------------------------------------------- selection
def select(scores: np.ndarray, groups: np.ndarray, rows: np.ndarray, spec: MixtureFilter) -> tuple[np.ndarray, dict[int, float]]:
    """(keep mask, cutoff per group): per group (a source and class), scores >= threshold, or the
    ceil(keep_fraction * n) best (ties: the lower row first). The cutoff is the lowest kept score
    (the threshold itself with `threshold`); a group that keeps nothing has none."""
    keep = np.zeros(len(scores), bool)
    cutoffs: dict[int, float] = {}
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        if spec.threshold is not None:
            keep[idx] = scores[idx] >= spec.threshold
            cutoffs[int(g)] = float(spec.threshold)
            continue
        assert spec.keep_fraction is not None  # validation: exactly one of threshold and keep_fraction
        n_keep = math.ceil(spec.keep_fraction * len(idx) - 1e-9)
        order = idx[np.lexsort((rows[idx], -scores[idx].astype(np.float64)))]
        keep[order[:n_keep]] = True
        if n_keep:
            cutoffs[int(g)] = float(scores[order[n_keep - 1]])
    return keep, cutoffs


def filter_mixture(cfg: Config, mix: str, mixtures_dir: Path, prepared: Path, synthetic_root: Path,
                   classifier: Path, out: Path, device: str = "cpu") -> dict:
    if mix not in cfg.filters:
        raise UserError(f"--mix: {mix!r} has no filter in params.yaml; allowed: {' | '.join(cfg.filters) or 'a mixture with a filter'}")
    spec = cfg.filters[mix]
    key = f"mixtures.{mix}.filter"
    source_path = mixtures_dir / f"{unfiltered_name(mix)}.npz"
    index = read_mixture(source_path)
    cfg.dataset.words(index.classes)  # refuses a label_names key that names no class, as every stage that reads them does
    if spec.by == "confidence":
        require_files([classifier], f"the filter of {mix} needs train@{cfg.model}-orig100 first (dvc repro)")
    classes, codes, names = index.classes, index.source, index.source_names
    scored = np.array([names[c] not in REAL_SOURCES for c in codes], bool)  # every synthetic set
    scores = np.full(len(index.row), np.nan, np.float32)
    clip: Any = None
    if spec.by == "clip":
        try:
            clip = load_clip(CLIP_MODEL, device)
        except Exception as e:  # not cached (no network here), or transformers lacks CLIP
            raise UserError(f"{key}.by: clip needs CLIP weights ({CLIP_MODEL}) in the local Hugging Face cache, which are "
                            f"not available ({type(e).__name__}); allowed here: by: confidence") from None
    pixels, _, _ = load_mixture(source_path, prepared, synthetic_root)
    for src in index.used:
        if src in REAL_SOURCES:
            continue
        sel = np.flatnonzero(codes == names.index(src))
        images, labels = pixels[sel], index.label[sel]
        if spec.by == "confidence":
            scores[sel] = confidence_scores(classifier, images, labels, classes, cfg.evaluate.batch_size, device)
        else:
            scores[sel] = clip_similarities(clip, images, labels, cfg.dataset.words(classes), device)

    groups = codes.astype(np.int64) * len(classes) + index.label
    keep_scored, cutoffs = select(scores[scored], groups[scored], index.row[scored], spec)
    keep = np.ones(len(index.row), bool)
    keep[np.flatnonzero(scored)] = keep_scored
    per_class = np.bincount(index.label[keep], minlength=len(classes))
    empty = [classes[c] for c in range(len(classes)) if per_class[c] == 0]
    if empty:
        raise UserError(f"{key}: drops every image of class {', '.join(map(repr, empty))} "
                        f"({'threshold ' + str(spec.threshold) if spec.threshold is not None else 'keep_fraction ' + str(spec.keep_fraction)}); "
                        "allowed: a filter that keeps at least one image of every class")

    drop = ~keep
    classifier_info = ({"path": str(classifier), "sha256": sha256_file(classifier), "mix": "orig100"}
                       if spec.by == "confidence" else {"clip": CLIP_MODEL, "prompt": CLIP_PROMPT})
    cutoff_table: dict[str, dict[str, float]] = {}
    for g, value in sorted(cutoffs.items()):
        cutoff_table.setdefault(names[g // len(classes)], {})[classes[g % len(classes)]] = value
    settings = {"mixture": mix, "filter": spec.model_dump(), "scorer": classifier_info, "cutoff": cutoff_table}
    filtered = MixtureIndex(codes[keep], index.row[keep], index.label[keep], names, classes, index.used, index.digests)
    write_mixture(out / f"{mix}.npz", filtered, filter_settings=np.array(json.dumps(settings, sort_keys=True)), score=scores[keep],
                  dropped_source=codes[drop], dropped_row=index.row[drop], dropped_label=index.label[drop], dropped_score=scores[drop])

    def counts(mask: np.ndarray) -> dict[str, dict[str, int]]:
        return {s: {classes[c]: int(((codes == names.index(s)) & (index.label == c) & mask).sum()) for c in range(len(classes))}
                for s in index.used}

    account = {
        "mixture": mix, "fractions": cfg.mixtures[mix], "seed": cfg.mixture_seed, "total": int(keep.sum()),
        "candidates": int(len(keep)), "filter": spec.model_dump(), "scorer": classifier_info, "unfiltered": str(source_path),
        "per_source": {s: int(sum(v.values())) for s, v in counts(keep).items()},
        "per_class": counts(keep), "dropped_per_class": {s: v for s, v in counts(drop).items() if s not in REAL_SOURCES},
        "cutoff": cutoff_table, "source_digests": dict(zip(index.used, index.digests)),
        "dropped_columns": ["source", "row", "class", "score"],
        "dropped": [[names[c], int(r), classes[lab], round(float(sc), 6)]
                    for c, r, lab, sc in zip(codes[drop], index.row[drop], index.label[drop], scores[drop])],
    }
    write_composition(out, mix, account)
    return account


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    ap = stage_parser("python -m diffaug.filtering", __doc__.splitlines()[0], data_dirs=True)
    ap.add_argument("--mix", required=True, help="a mixture with a `filter:` in params.yaml")
    ap.add_argument("--mixtures", type=Path, default=Path("data/mixtures"), help="build_mixtures' output")
    ap.add_argument("--classifier", type=Path, required=True, help="models/<model>/orig100/seed-<first seed>.pt")
    ap.add_argument("--out", type=Path, default=Path("data/filtered"))
    args = ap.parse_args(argv)
    cfg = load_config(args.params)
    device = str(resolve_device(cfg.evaluate.device, "evaluate.device"))
    ensure_writable_dir(args.out, "--out")  # before a classifier or CLIP is loaded
    account = filter_mixture(cfg, args.mix, args.mixtures, args.prepared, args.synthetic, args.classifier, args.out, device)
    dropped = len(account["dropped"])
    print(f"filter@{args.mix}: kept {account['total']} of {account['candidates']} images, dropped {dropped} synthetic "
          f"(by {account['filter']['by']}) -> {args.out / (args.mix + '.npz')}")


if __name__ == "__main__":
    main()
