"""Stage `prepare`: materialise the real train / val / test splits as compact .npz files.

    python -m diffaug.prepare --params params.yaml --raw data/raw --out data/prepared

Writes train.npz, val.npz, test.npz (uint8 NHWC `images`, int64 `labels`, str `classes`),
classes.json (class names and image size: all that generation needs, so that changing a split
does not invalidate days of generated images) and splits.json (counts and source digests).

CIFAR-10/100 come from torchvision.datasets, which verifies the official archive's md5 before it
unpickles anything; no other pickle is ever read (npz files are loaded with allow_pickle=False).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from diffaug.config import Config, DatasetConfig, load_config
from diffaug.errors import UserError, exit_on_error
from diffaug.io import load_npz, save_npz_atomic, sha256_file, write_json_atomic

CIFAR_ARCHIVES = {  # torchvision's own file names and md5 sums, repeated here for the error message
    "cifar10": ("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    "cifar100": ("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
}


class Split:
    """Images (uint8 NHWC), integer labels and the class names they index."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: list[str]):
        self.images, self.labels, self.classes = images, labels.astype(np.int64), list(classes)

    def take(self, idx: np.ndarray) -> "Split":
        return Split(self.images[idx], self.labels[idx], self.classes)

    def save(self, path: Path) -> None:
        save_npz_atomic(path, images=self.images, labels=self.labels, classes=np.array(self.classes))


def load_split(path: str | Path) -> Split:
    """Read a split written by this stage (the reader every later stage uses)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: not found; run `dvc repro prepare` first")
    z = load_npz(path)
    return Split(z["images"], z["labels"], [str(c) for c in z["classes"]])


# ----------------------------------------------------------------------------- sources
def _load_cifar(kind: str, raw: Path, train: bool) -> Split:
    from torchvision import datasets
    from torchvision.datasets.utils import check_integrity

    cls = datasets.CIFAR10 if kind == "cifar10" else datasets.CIFAR100
    archive, md5 = CIFAR_ARCHIVES[kind]
    where = raw / archive
    if where.exists() and not check_integrity(str(where), md5):
        raise UserError(f"{where}: md5 does not match the official {kind} archive ({md5}); replace it with the original file")
    try:
        # download=True downloads only when the archive is absent; torchvision checks md5 sums of the
        # archive and of each extracted batch before unpickling it.
        ds = cls(root=str(raw), train=train, download=True)
    except Exception as e:  # no network: URLError, socket errors, http errors
        raise UserError(
            f"{kind}: could not download ({type(e).__name__}); with no network, place the official archive "
            f"{archive} (md5 {md5}) at {where} and rerun"
        ) from None
    return Split(np.asarray(ds.data, dtype=np.uint8), np.asarray(ds.targets), list(ds.classes))


def _load_npz_source(path: Path, key: str) -> Split:
    if not path.is_file():
        raise UserError(f"{key}: {path} not found; allowed: an .npz with uint8 NHWC 'images', 'labels', 'classes'")
    try:
        z = load_npz(path)
    except ValueError as e:  # object arrays (pickles) are refused
        raise UserError(f"{key}: {path} holds pickled objects, which are never loaded ({e})") from None
    missing = [k for k in ("images", "labels", "classes") if k not in z]
    if missing:
        raise UserError(f"{key}: {path} lacks {', '.join(missing)}; allowed: an .npz with uint8 NHWC 'images', 'labels', 'classes'")
    images, labels, classes = z["images"], z["labels"], [str(c) for c in z["classes"]]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise UserError(f"{key}: {path} 'images' is {images.dtype} {images.shape}; allowed: uint8 (N, H, W, 3)")
    if labels.shape != (len(images),) or (len(labels) and (labels.min() < 0 or labels.max() >= len(classes))):
        raise UserError(f"{key}: {path} 'labels' must be N integers in [0, {len(classes)})")
    return Split(images, labels, classes)


def _load_imagefolder(path: Path, key: str) -> Split:
    from PIL import Image
    from torchvision.datasets import ImageFolder

    if not path.is_dir():
        raise UserError(f"{key}: {path} is not a directory; allowed: a folder with one sub-folder per class")
    folder = ImageFolder(str(path), loader=lambda p: p)  # list files only; decode below
    images, size = [], None
    for file, _ in folder.samples:
        with Image.open(file) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        if size is None:
            size = arr.shape
        elif arr.shape != size:
            raise UserError(f"{key}: {file} is {arr.shape[1]}x{arr.shape[0]}, the first image {size[1]}x{size[0]}; all images must share one size")
        images.append(arr)
    return Split(np.stack(images), np.array(folder.targets), folder.classes)


def load_source(spec: str, key: str, raw: Path, train: bool = True) -> Split:
    kind, _, path = spec.partition(":")
    if kind in CIFAR_ARCHIVES:
        return _load_cifar(kind, raw, train)
    return _load_npz_source(Path(path), key) if kind == "npz" else _load_imagefolder(Path(path), key)


def _source_digest(spec: str) -> str:
    kind, _, path = spec.partition(":")
    if kind == "npz":
        return sha256_file(path)
    return spec  # cifar: fixed by torchvision's checksums; imagefolder: hashed by DVC if the user tracks it


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
    if ds.kind in CIFAR_ARCHIVES:
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
    for name in ds.label_names:
        if name not in train.classes:
            raise UserError(f"dataset.label_names.{name}: no such class; classes are {', '.join(train.classes)}")
    return train, val, test


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--raw", type=Path, default=Path("data/raw"), help="where dataset archives are (downloaded) kept")
    ap.add_argument("--out", type=Path, default=Path("data/prepared"))
    args = ap.parse_args(argv)
    cfg: Config = load_config(args.params)

    train, val, test = make_splits(cfg.dataset, args.raw)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", train), ("val", val), ("test", test)):
        split.save(args.out / f"{name}.npz")
    height, width = train.images.shape[1:3]
    write_json_atomic(args.out / "classes.json", {"classes": train.classes, "image_size": [int(height), int(width)]})
    counts = {n: np.bincount(s.labels, minlength=len(train.classes)).tolist() for n, s in (("train", train), ("val", val), ("test", test))}
    write_json_atomic(args.out / "splits.json", {"dataset": cfg.dataset.name, "source_digest": _source_digest(cfg.dataset.name),
                                                 "classes": train.classes, "counts_per_class": counts})
    print(f"prepare: {cfg.dataset.name}: {len(train.labels)} train, {len(val.labels)} val, {len(test.labels)} test images "
          f"of {height}x{width}, {len(train.classes)} classes -> {args.out}")


if __name__ == "__main__":
    main()
