"""Real images: `data/prepared/{train,val,test}.npz` and `classes.json`.

A split is an uncompressed .npz with uint8 NHWC `images`, int64 `labels` (class indices) and str
`classes`. `classes.json` holds the class names and the image size: all that generation needs, so
changing a split does not invalidate days of generated images. `check_arrays` is the one validation
of images/labels/classes, also applied to a user's own npz dataset by the prepare stage.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from diffaug.errors import UserError
from diffaug.io import load_npz, read_json, save_npz_atomic, write_json_atomic

SPLIT_KEYS = ("images", "labels", "classes")
RERUN = "rerun the prepare stage (dvc repro prepare)"


class Split:
    """Images (uint8 NHWC), integer labels and the class names they index."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: list[str]):
        self.images, self.labels, self.classes = images, labels.astype(np.int64), list(classes)

    def take(self, idx: np.ndarray) -> Split:
        return Split(self.images[idx], self.labels[idx], self.classes)


def check_arrays(images: Any, labels: Any, classes: Any, source: str, fix: str = RERUN) -> list[str]:
    """The class names, after checking: uint8 (N, H, W, 3) images, N integer labels in range, distinct
    non-empty class names. Anything else is one UserError naming `source` and what is allowed."""
    hint = f"; {fix}" if fix else ""
    if not isinstance(classes, np.ndarray) or classes.ndim != 1 or classes.dtype.kind != "U":
        got = f"{classes.dtype} {classes.shape}" if isinstance(classes, np.ndarray) else type(classes).__name__
        raise UserError(f"{source}: 'classes' is {got}; allowed: a 1-d array of class-name strings{hint}")
    names = [str(c) for c in classes]
    if len(names) < 2 or any(not n.strip() for n in names):
        raise UserError(f"{source}: 'classes' must hold at least 2 non-empty names; got {names}{hint}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"{source}: 'classes' lists {', '.join(map(repr, duplicates))} more than once; "
                        f"allowed: distinct class names{hint}")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise UserError(f"{source}: 'images' is {got}; allowed: uint8 (N, H, W, 3){hint}")
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":  # floats would be truncated, strings cannot index classes
        raise UserError(f"{source}: 'labels' are {labels.dtype}; allowed: integer class indices 0..{len(names) - 1}{hint}")
    if labels.shape != (len(images),):
        raise UserError(f"{source}: 'labels' has shape {labels.shape}; allowed: ({len(images)},), one per image{hint}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        raise UserError(f"{source}: 'labels' must lie in 0..{len(names) - 1} ({len(names)} classes); "
                        f"got {labels.min()}..{labels.max()}{hint}")
    return names


def read_npz_split(path: Path, source: str, fix: str) -> Split:
    """A split-shaped .npz (ours or a user's dataset), checked; `source` prefixes every message."""
    data = load_npz(path, fix, label=source)
    missing = [k for k in SPLIT_KEYS if k not in data]
    if missing:
        raise UserError(f"{source}: lacks {', '.join(missing)}; allowed: an .npz with uint8 NHWC 'images', "
                        f"integer 'labels', str 'classes'; {fix}")
    classes = check_arrays(data["images"], data["labels"], data["classes"], source, fix)
    return Split(data["images"], data["labels"], classes)


def save_split(path: str | Path, split: Split) -> None:
    save_npz_atomic(path, images=split.images, labels=split.labels, classes=np.array(split.classes))


def load_split(path: str | Path) -> Split:
    """Read a split written by the prepare stage (the reader every later stage uses)."""
    path = Path(path)
    return read_npz_split(path, str(path), RERUN)


def write_classes(path: str | Path, classes: list[str], image_size: tuple[int, int]) -> None:
    write_json_atomic(path, {"classes": list(classes), "image_size": [int(image_size[0]), int(image_size[1])]})


def read_classes(path: str | Path) -> tuple[list[str], tuple[int, int]]:
    """classes.json: ({class names}, (height, width)), checked."""
    path = Path(path)
    data = read_json(path, f"not found; {RERUN}", f"; {RERUN}")
    classes, size = (data.get("classes"), data.get("image_size")) if isinstance(data, dict) else (None, None)
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) and c.strip() for c in classes)
            and len(set(classes)) == len(classes) and isinstance(size, list) and len(size) == 2
            and all(type(v) is int and v > 0 for v in size)):
        raise UserError(f"{path}: allowed: {{'classes': [distinct non-empty class names], 'image_size': [height, width]}}; {RERUN}")
    return classes, (size[0], size[1])
