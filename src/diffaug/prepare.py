"""Stage `prepare`: materialise the real train / val / test splits as compact .npz files.

    python -m diffaug.prepare --params params.yaml --raw data/raw --out data/prepared

Writes train.npz, val.npz, test.npz and classes.json (diffaug.formats.splits) and splits.json
(counts per class and a digest of the source).

CIFAR-10/100 come from torchvision.datasets, which verifies the official archive's md5 before it
unpickles anything; no other pickle is ever read (npz files are loaded with allow_pickle=False).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
from torchvision import datasets
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.datasets.utils import check_integrity

from diffaug.cli import stage_parser
from diffaug.config import Config, DatasetConfig, load_config
from diffaug.errors import UserError, exit_on_error
from diffaug.formats.splits import Split, read_npz_split, save_split, write_classes
from diffaug.io import ensure_writable_dir, sha256_file, write_json_atomic

CIFAR = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}


# ----------------------------------------------------------------------------- sources
def _load_cifar(kind: str, raw: Path, train: bool) -> Split:
    cls = CIFAR[kind]
    archive, md5 = cls.filename, cls.tgz_md5  # torchvision's own archive name and md5
    where = raw / archive
    if where.exists() and not check_integrity(str(where), md5):
        raise UserError(f"{where}: md5 does not match the official {kind} archive ({md5}); replace it with the original file")
    created = [p for p in (raw, *raw.parents) if not p.exists()]  # what a failed download must not leave behind
    try:
        # download=True downloads only when the archive is absent; torchvision checks md5 sums of the
        # archive and of each extracted batch before unpickling it.
        ds = cls(root=str(raw), train=train, download=True)
    except Exception as e:  # no network: URLError, socket errors, http errors
        for folder in created:  # innermost first; only folders still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise UserError(
            f"{kind}: could not download ({type(e).__name__}); with no network, place the official archive "
            f"{archive} (md5 {md5}) at {where} and rerun"
        ) from None
    return Split(np.asarray(ds.data, dtype=np.uint8), np.asarray(ds.targets), list(ds.classes))


def _load_imagefolder(path: Path, key: str) -> Split:
    if not path.is_dir():
        raise UserError(f"{key}: {path} is not a directory; allowed: a folder with one sub-folder per class")
    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise UserError(f"{key}: {path} has {len(classes)} class folder(s); allowed: one sub-folder per class, at least 2")
    for name in classes:  # torchvision would raise FileNotFoundError naming only the first empty one
        if not any(f.suffix.lower() in IMG_EXTENSIONS for f in (path / name).iterdir() if f.is_file()):
            raise UserError(f"{key}: class folder {path / name} holds no image ({', '.join(IMG_EXTENSIONS)}); "
                            "remove it or add its images")
    folder = ImageFolder(str(path))
    images: list[np.ndarray] = []
    size = None
    for file, _ in folder.samples:
        try:
            arr = np.asarray(folder.loader(file), dtype=np.uint8)  # torchvision's PIL loader: RGB
        except (OSError, ValueError) as e:  # UnidentifiedImageError is an OSError
            raise UserError(f"{key}: {file} is not a readable image ({type(e).__name__}); fix or remove it") from None
        if size is None:
            size = arr.shape
        elif arr.shape != size:
            raise UserError(f"{key}: {file} is {arr.shape[1]}x{arr.shape[0]}, the first image {size[1]}x{size[0]}; "
                            "all images must share one size")
        images.append(arr)
    return Split(np.stack(images), np.array(folder.targets), folder.classes)


def load_source(spec: str, key: str, raw: Path, train: bool = True) -> Split:
    kind, _, path = spec.partition(":")
    if kind in CIFAR:
        return _load_cifar(kind, raw, train)
    if kind != "npz":
        return _load_imagefolder(Path(path), key)
    fix = "allowed: an .npz with uint8 NHWC 'images', integer 'labels' and str 'classes'"
    if not Path(path).is_file():
        raise UserError(f"{key}: {path} not found; {fix}")
    return read_npz_split(Path(path), f"{key}: {path}", fix)


# ----------------------------------------------------------------------------- splitting
def hold_out(split: Split, per_class: int, seed: int, what: str) -> tuple[Split, Split]:
    """Seeded, class-balanced hold-out: (rest, held) with `per_class` images of each class in held."""
    rng = np.random.default_rng(seed)
    held = []
    for c, name in enumerate(split.classes):
        idx = np.flatnonzero(split.labels == c)
        if per_class >= len(idx):
            raise UserError(f"dataset.{what}_per_class: {per_class} leaves no training images of class {name!r} ({len(idx)} in all)")
        held.append(rng.permutation(idx)[:per_class])
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    keep = np.setdiff1d(np.arange(len(split.labels)), held_idx)
    return split.take(keep), split.take(held_idx)


def make_splits(ds: DatasetConfig, raw: Path) -> tuple[Split, Split, Split]:
    train = load_source(ds.name, "dataset.name", raw, train=True)
    if ds.kind in CIFAR:
        test = load_source(ds.name, "dataset.name", raw, train=False)
    elif ds.test is not None:
        test = load_source(ds.test, "dataset.test", raw)
        if test.classes != train.classes:
            raise UserError(f"dataset.test: its classes {test.classes} differ from the training classes {train.classes}")
        if test.images.shape[1:] != train.images.shape[1:]:
            raise UserError(f"dataset.test: images are {test.images.shape[1:3]}, training images {train.images.shape[1:3]}")
    else:
        train, test = hold_out(train, ds.test_per_class, ds.split_seed, "test")
    if ds.val_per_class:
        train, val = hold_out(train, ds.val_per_class, ds.split_seed + 1, "val")
    else:
        val = train.take(np.zeros(0, np.int64))
    ds.words(train.classes)  # a label_names key that names no class: one line, as in every stage that reads them
    return train, val, test


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    ap = stage_parser("python -m diffaug.prepare", __doc__.splitlines()[0])
    ap.add_argument("--raw", type=Path, default=Path("data/raw"), help="where dataset archives are (downloaded) kept")
    ap.add_argument("--out", type=Path, default=Path("data/prepared"))
    args = ap.parse_args(argv)
    cfg: Config = load_config(args.params)
    ensure_writable_dir(args.out, "--out")  # before a download or a decode

    train, val, test = make_splits(cfg.dataset, args.raw)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", train), ("val", val), ("test", test)):
        save_split(args.out / f"{name}.npz", split)
    height, width = train.images.shape[1:3]
    write_classes(args.out / "classes.json", train.classes, (height, width))
    counts = {n: np.bincount(s.labels, minlength=len(train.classes)).tolist() for n, s in (("train", train), ("val", val), ("test", test))}
    # cifar: fixed by torchvision's checksums; imagefolder: hashed by DVC if the user tracks it
    digest = sha256_file(cfg.dataset.path) if cfg.dataset.kind == "npz" else cfg.dataset.name
    write_json_atomic(args.out / "splits.json", {"dataset": cfg.dataset.name, "source_digest": digest,
                                                 "classes": train.classes, "counts_per_class": counts})
    print(f"prepare: {cfg.dataset.name}: {len(train.labels)} train, {len(val.labels)} val, {len(test.labels)} test images "
          f"of {height}x{width}, {len(train.classes)} classes -> {args.out}")


if __name__ == "__main__":
    main()
