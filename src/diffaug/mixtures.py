"""Stage `build_mixtures`: every named mixture as an index file of (source, row), never copied pixels.

    python -m diffaug.mixtures --params params.yaml --prepared data/prepared --synthetic data/synthetic --out data/mixtures

Per source and class, the draw is the first round(fraction * n_class) rows of a permutation seeded by
(mixture_seed, source, class) alone, so draws nest across mixtures: orig50 is the same half of the real
images in orig50, orig50_syn1_50 and orig50_rot50, which keeps a comparison about the data added, not about
which half was drawn. rot90 / vflip rows are copies of images orig drew (the Fig. 7 baselines).
The file, its source digests and a filtered mixture's `<mix>.unfiltered.npz`: diffaug.formats.mixture.
"""
from __future__ import annotations

import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from diffaug.cli import stage_parser
from diffaug.config import REAL_SOURCES, Config, load_config
from diffaug.errors import UserError, exit_on_error
from diffaug.formats import synthetic
from diffaug.formats.mixture import COPY_TRANSFORMS, MixtureIndex, pool_digest, pool_of, unfiltered_name, write_composition, write_mixture
from diffaug.formats.splits import load_split
from diffaug.io import ensure_writable_dir

PAPER_SOURCES = REAL_SOURCES + ("syn1", "syn2")  # codes 0-4 in every mixture file


def _draw(labels: np.ndarray, num_classes: int, fraction: float, seed: int, source: str) -> list[np.ndarray]:
    """Per class: the first round(fraction * n) rows of a permutation seeded by (seed, source, class), sorted."""
    rows = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        rng = np.random.default_rng([seed, zlib.crc32(source.encode()), c])
        rows.append(np.sort(rng.permutation(idx)[: int(round(fraction * len(idx)))]))
    return rows


def source_names(sources: Iterable[str]) -> list[str]:
    """The code table of a mixture file: the paper's sources (codes 0-4), then the other sets it draws from, sorted
    (declaring a new set changes no existing mixture file)."""
    return list(PAPER_SOURCES) + sorted(s for s in sources if s not in PAPER_SOURCES)


def compose(sources: dict[str, float], source_labels: dict[str, np.ndarray], num_classes: int, seed: int):
    """Return (source codes, rows, their labels, counts[source][class]) for one mixture."""
    codes, rows, labels, counts = [], [], [], {}
    names = source_names(sources)
    for src in names:  # fixed order: identical files whatever order params.yaml lists sources in
        if src not in sources:
            continue
        # a copy draws the first rows of orig's own permutation: copies of images orig drew (validated <= orig)
        per_class = _draw(source_labels[src], num_classes, sources[src], seed, pool_of(src))
        drawn = np.concatenate(per_class).astype(np.int64)
        codes.append(np.full(len(drawn), names.index(src), np.uint8))
        rows.append(drawn)
        labels.append(source_labels[src][drawn].astype(np.int64))
        counts[src] = [len(p) for p in per_class]
    return np.concatenate(codes), np.concatenate(rows), np.concatenate(labels), counts


def build(cfg: Config, prepared: Path, synthetic_root: Path, out: Path) -> dict[str, dict]:
    train = load_split(prepared / "train.npz")
    num_classes = len(train.classes)
    labels = {"orig": train.labels}
    digests = {"orig": pool_digest("orig", prepared, synthetic_root)}
    needed = {s for sources in cfg.mixtures.values() for s in sources if s in cfg.synthetic.sets}
    for name in sorted(needed):
        labels[name] = synthetic.load_synthetic(synthetic_root / name)[1]
        digests[name] = pool_digest(name, prepared, synthetic_root)
    for copy in COPY_TRANSFORMS:
        labels[copy], digests[copy] = labels["orig"], digests["orig"]

    # Every mixture is composed and checked before any file is written.
    composed = {mix: compose(sources, labels, num_classes, cfg.mixture_seed) for mix, sources in cfg.mixtures.items()}
    for mix, (_, _, _, counts) in composed.items():
        per_class = np.sum(list(counts.values()), axis=0)
        empty = [train.classes[c] for c in range(num_classes) if per_class[c] == 0]
        if empty:
            raise UserError(f"mixtures.{mix}: draws 0 images of class {', '.join(map(repr, empty))} "
                            f"({', '.join(f'{s} {f}' for s, f in cfg.mixtures[mix].items())}); allowed: fractions that draw "
                            "at least one image of every class")

    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for mix, (codes, rows, mix_labels, counts) in composed.items():
        sources, used = cfg.mixtures[mix], list(counts)  # used: in source_names order
        # a filtered mixture's draw, before its filter@ stage drops images: never trained on as it is
        stem = unfiltered_name(mix) if mix in cfg.filters else mix
        write_mixture(out / f"{stem}.npz", MixtureIndex(codes, rows, mix_labels, source_names(sources), train.classes,
                                                       used, [digests[s] for s in used]))
        composition = {
            "mixture": mix, "fractions": sources, "seed": cfg.mixture_seed, "total": int(len(rows)),
            "per_source": {s: int(sum(counts[s])) for s in used},
            "per_class": {s: dict(zip(train.classes, counts[s])) for s in used},
            "source_digests": {s: digests[s] for s in used},
        }
        if mix in cfg.filters:
            composition["filter"] = "pending: filter@" + mix + " writes the filtered mixture to data/filtered/"
        write_composition(out, stem, composition)
        summary[mix] = composition
    return summary


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    ap = stage_parser("python -m diffaug.mixtures", __doc__.splitlines()[0], data_dirs=True)
    ap.add_argument("--out", type=Path, default=Path("data/mixtures"))
    args = ap.parse_args(argv)
    cfg = load_config(args.params)
    ensure_writable_dir(args.out, "--out")
    summary = build(cfg, args.prepared, args.synthetic, args.out)
    for mix, comp in summary.items():
        parts = ", ".join(f"{s} {n}" for s, n in comp["per_source"].items())
        print(f"build_mixtures: {mix}: {comp['total']} images ({parts})")


if __name__ == "__main__":
    main()
