"""Mixtures: `data/mixtures/<mix>.npz` index files, and the pixels they stand for.

An index file never copies pixels: it lists (source code, row) pairs into the pools it draws from,
the label of each row, and a digest of every source it uses, so the file changes exactly when its
own data changes. Pools: `orig` is data/prepared/train.npz; a synthetic set is
data/synthetic/<set>/; `rot90` and `vflip` are copies of orig's rows made by COPY_TRANSFORMS when
the mixture is loaded. `<mix>.json` beside it is the readable composition.

A mixture with a `filter:` is written twice: build_mixtures writes its draw before filtering as
`data/mixtures/<mix>.unfiltered.npz` (never trained on), and its filter@<mix> stage writes
`data/filtered/<mix>.npz`: the same index minus the dropped synthetic rows, plus what the filter did:
`filter_settings` (JSON: the filter, its scorer's sha256, the cutoffs), `score` (float32 per row; nan: real
rows, never scored) and each dropped row's `dropped_source` (uint8), `dropped_row`, `dropped_label` and `dropped_score`.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffaug.errors import UserError
from diffaug.formats import synthetic
from diffaug.formats.splits import load_split
from diffaug.io import load_npz, save_npz_atomic, sha256_file, write_json_atomic

# Copies of real images, applied when the mixture is loaded (part of the train stage's deps).
COPY_TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "rot90": lambda images: np.rot90(images, k=1, axes=(1, 2)),  # 90° counter-clockwise
    "vflip": lambda images: images[:, ::-1],
}
REAL_POOL = "orig"
KEYS = ("source", "row", "label", "source_names", "classes", "used", "digests")
RERUN = "rerun the mixtures stage (dvc repro build_mixtures)"


def unfiltered_name(mix: str) -> str:
    """File stem of a filtered mixture's draw before its filter@ stage (mixture names hold no dots)."""
    return f"{mix}.unfiltered"


@dataclass(frozen=True)
class MixtureIndex:
    source: np.ndarray  # uint8 code per image: an index into source_names
    row: np.ndarray  # int64 row in that source's pool
    label: np.ndarray  # int64 class index per image
    source_names: list[str]
    classes: list[str]
    used: list[str]  # sources this mixture draws from
    digests: list[str]  # digest of each used source's pool when the mixture was built


def pool_of(source: str) -> str:
    """The pixel pool a source reads: copies read the real images."""
    return REAL_POOL if source in COPY_TRANSFORMS else source


def pool_digest(pool: str, prepared: Path, synthetic_root: Path) -> str:
    if pool == REAL_POOL:
        return sha256_file(prepared / "train.npz")
    return synthetic.synthetic_digest(synthetic_root / pool)


def write_mixture(path: str | Path, index: MixtureIndex, **filter_record: np.ndarray) -> None:
    save_npz_atomic(path, **{key: np.asarray(value) for key, value in vars(index).items()}, **filter_record)  # KEYS


def read_mixture(path: str | Path) -> MixtureIndex:
    path = Path(path)
    data = load_npz(path, RERUN)
    missing = [k for k in KEYS if k not in data]
    if missing:
        raise UserError(f"{path}: lacks {', '.join(missing)}; not a mixture index file; {RERUN}")
    names = [str(s) for s in data["source_names"]]
    source, row, label = data["source"], data["row"], data["label"]
    n = len(row)
    if source.shape != (n,) or label.shape != (n,) or row.dtype.kind not in "iu" or label.dtype.kind not in "iu":
        raise UserError(f"{path}: source/row/label arrays disagree in length or type; {RERUN}")
    if n and (int(source.max()) >= len(names) or row.min() < 0):
        raise UserError(f"{path}: a source code or row is out of range; {RERUN}")
    return MixtureIndex(source.astype(np.uint8), row.astype(np.int64), label.astype(np.int64), names,
                        [str(c) for c in data["classes"]], [str(s) for s in data["used"]], [str(d) for d in data["digests"]])


def load_mixture(mixture_path: str | Path, prepared_dir: str | Path,
                 synthetic_root: str | Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Pixels and labels of one mixture: (images uint8 NHWC, labels int64, class names). The pools are not
    hashed again: the digests recorded at build time change the index file when a source does, and a
    synthetic set's shards are checked against their manifest sha256 as they load."""
    mixture_path, prepared_dir, synthetic_root = Path(mixture_path), Path(prepared_dir), Path(synthetic_root)
    index = read_mixture(mixture_path)
    pools = {pool: load_split(prepared_dir / "train.npz").images if pool == REAL_POOL  # each pool loaded once
             else synthetic.load_synthetic(synthetic_root / pool)[0] for pool in dict.fromkeys(map(pool_of, index.used))}
    if not pools:
        raise UserError(f"{mixture_path}: draws from no source; {RERUN}")
    out = np.empty((len(index.row),) + next(iter(pools.values())).shape[1:], np.uint8)
    for code in np.unique(index.source):
        src = index.source_names[code]
        sel = index.source == code
        rows = index.row[sel]
        pixels = pools.get(pool_of(src))
        if pixels is None or (len(rows) and rows.max() >= len(pixels)):
            raise UserError(f"{mixture_path}: rows of source {src} point outside its pool; {RERUN}")
        picked = pixels[rows]
        out[sel] = COPY_TRANSFORMS[src](picked) if src in COPY_TRANSFORMS else picked
    return out, index.label, index.classes


def write_composition(directory: Path, stem: str, composition: dict) -> None:
    """`<stem>.json` beside the index file: the readable account of a mixture (counts per source and class)."""
    write_json_atomic(directory / f"{stem}.json", composition)


def read_total(directory: Path, mix: str) -> int | None:
    """The image count a mixture's `<mix>.json` states, or None while it is absent or unreadable."""
    try:
        return int(json.loads((directory / f"{mix}.json").read_text())["total"])
    except (OSError, ValueError, KeyError, TypeError):
        return None

