"""Export a synthetic set for people who do not run the pipeline.

imagefolder (DIR/<class>/<class>_<index>.png + metadata.csv) loads with torchvision's ImageFolder and
datasets' "imagefolder"; parquet (DIR/<set>.parquet: image, label and provenance columns) with datasets
or pandas. Provenance: every per-image field of the set's manifest.json, plus `set` and `settings_hash`
(docs/sharing.md). DIR is written beside itself and renamed into place: absent, the old export or a whole new one.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from diffaug.errors import OneLineParser, UserError, exit_on_error
from diffaug.formats import synthetic
from diffaug.io import ensure_writable_dir

FORMATS = ("imagefolder", "parquet")
METADATA = "metadata.csv"


def resolve_set(spec: str, synthetic_root: Path) -> Path:
    """A set directory (it holds manifest.json) or a set name under `synthetic_root`."""
    path = Path(spec)
    if (path / synthetic.MANIFEST).is_file():
        return path
    if re.fullmatch(r"[A-Za-z0-9_-]+", spec) and (synthetic_root / spec / synthetic.MANIFEST).is_file():
        return synthetic_root / spec
    known = sorted(p.name for p in synthetic_root.iterdir() if (p / synthetic.MANIFEST).is_file()) if synthetic_root.is_dir() else []
    raise UserError(f"{spec}: unknown set (not a set directory with {synthetic.MANIFEST}, nor a finished set under "
                    f"{synthetic_root}); allowed: {', '.join(known) or 'a generated set (dvc repro generate_syn1)'}")


def provenance_rows(manifest: dict[str, Any], n: int) -> list[dict[str, Any]]:
    entries = manifest.get("images")
    if not isinstance(entries, list) or len(entries) != n or not all(isinstance(e, dict) for e in entries):
        raise UserError(f"manifest of set {manifest.get('set')!r}: lists {len(entries) if isinstance(entries, list) else 'no'} "
                        f"images for {n} stored; rerun the generate stage")
    extra = {"set": manifest.get("set"), "settings_hash": manifest.get("settings_hash")}
    return [{**e, **extra} for e in entries]


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r))


def write_imagefolder(tmp: Path, images: np.ndarray, labels: np.ndarray, classes: list[str], rows: list[dict]) -> None:
    for c in classes:
        (tmp / c).mkdir()
    columns = ["file_name", "label"] + [k for k in _columns(rows) if k not in ("file_name", "label")]
    with open(tmp / METADATA, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for i, (image, label, row) in enumerate(zip(images, labels, rows)):
            cls = classes[int(label)]
            name = f"{cls}/{cls}_{int(row.get('index', i)):05d}.png"
            Image.fromarray(image).save(tmp / name)
            writer.writerow({**{k: _csv_value(k, v) for k, v in row.items()}, "file_name": name, "label": cls})


def _csv_value(column: str, value: Any) -> Any:
    """A seed spans 0..2**64-1, beyond the int64 that pandas and pyarrow read CSV integers as: hexadecimal text."""
    if column == "seed" and isinstance(value, int):
        return f"{value:#018x}"
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def write_parquet(tmp: Path, name: str, images: np.ndarray, labels: np.ndarray, classes: list[str], rows: list[dict]) -> None:
    """DIR/<name>.parquet through `datasets`: its Features (Image, ClassLabel, inferred values) travel in the file."""
    import pyarrow as pa
    from datasets import ClassLabel, Dataset
    from datasets import Image as ImageFeature

    data: dict[str, Any] = {
        "image": [ImageFeature().encode_example(im) for im in images],  # PNG: lossless, as datasets encodes RGB arrays
        "label": [int(lab) for lab in labels],
        **{k: [r.get(k) for r in rows] for k in _columns(rows) if k not in ("image", "label")},
    }
    if "seed" in data:  # seeds span 0..2**64-1: datasets would infer int64 from Python ints and overflow
        data["seed"] = pa.array(data["seed"], pa.uint64())
    ds = Dataset.from_dict(data).cast_column("image", ImageFeature()).cast_column("label", ClassLabel(names=list(classes)))
    ds.to_parquet(str(tmp / f"{name}.parquet"), batch_size=1000)


def export(set_dir: Path, fmt: str, out: Path, force: bool = False) -> Path:
    if out.exists() and not force:
        raise UserError(f"{out}: already exists; pass --force to replace it, or choose another --out")
    ensure_writable_dir(out.parent, "--out")  # the export is made beside it: before every shard is read
    manifest = synthetic.read_manifest(set_dir)
    images, labels = synthetic.load_synthetic(set_dir)  # checks every shard's sha256
    classes = [str(c) for c in manifest["classes"]]
    rows = provenance_rows(manifest, len(images))
    name = str(manifest.get("set") or set_dir.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"  # mkdir, not mkdtemp: the folder gets the umask's mode
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run that had this pid
    tmp.mkdir()
    try:
        if fmt == "imagefolder":
            write_imagefolder(tmp, images, labels, classes, rows)
        else:
            write_parquet(tmp, name, images, labels, classes, rows)
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():  # --force: swap, then remove the old export
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    ap = OneLineParser(prog="python -m diffaug.export", description=__doc__.splitlines()[0])
    ap.add_argument("set", help="a set directory (data/synthetic/syn1) or a set name (syn1)")
    ap.add_argument("--format", required=True, choices=FORMATS)
    ap.add_argument("--out", type=Path, required=True, help="the folder to create")
    ap.add_argument("--synthetic", type=Path, default=Path("data/synthetic"), help="where set names are looked up")
    ap.add_argument("--force", action="store_true", help="replace an existing --out")
    args = ap.parse_args(argv)
    set_dir = resolve_set(args.set, args.synthetic)
    out = export(set_dir, args.format, args.out, args.force)
    how = (f"torchvision.datasets.ImageFolder('{out}')" if args.format == "imagefolder"
           else f"datasets.load_dataset('parquet', data_files='{out}/*.parquet')")
    print(f"export: {set_dir} -> {out} ({args.format}); load it with {how}")


if __name__ == "__main__":
    main()
