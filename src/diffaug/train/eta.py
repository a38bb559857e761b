"""The estimated wall time of the whole train grid for the current params.yaml, printed by the train stage
before it trains (as generation prints its ETA).

  time = sum over mixes of (images in the mixture) x epochs x seeds / (images/s of the architecture)

Images per mixture come from build_mixtures' `<mix>.json` files (`total`) beside the cell's mixture file.
The throughput table is per architecture, cifar variant, one cell alone on one H100 80GB, and says where
each number comes from. Update it from `python benchmarks/train.py --sweep`, which prints the measured
values in this table's form.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffaug.formats.mixture import read_total

# Images/s of one training cell on one H100 80GB (torch 2.11+cu130, bf16, channels_last, deterministic
# kernels, batch 128, 50k images): measured with benchmarks/train.py and the eager loop as of issue 11
# (s/epoch 5.26 / 8.38 / 12.27 / 4.84 / 27.28). The CUDA-graph step is meant to be faster, so until the
# sweep's rows replace these numbers the estimate errs long. The paper variant is cheaper per image
# (its stem downsamples 4x), so the same numbers overestimate it too.
H100_IMAGES_PER_S: dict[str, float] = {
    "resnet18": 50_000 / 5.26,
    "resnet34": 50_000 / 8.38,
    "resnet50": 50_000 / 12.27,
    "vgg16": 50_000 / 4.84,
    "densenet121": 50_000 / 27.28,
}
THROUGHPUT_SOURCE = "H100 eager loop at batch 128, issue 11's measurement"


@dataclass
class GridEstimate:
    seconds: float  # over the mixtures whose size is known
    images: int  # training images seen over the whole grid (known mixtures)
    sized: int  # mixtures whose size is known
    unsized: list[str]  # mixtures without a <mix>.json yet


def mixture_sizes(mixes: list[str], directory: Path, known: dict[str, int] | None = None) -> dict[str, int | None]:
    """Images per mixture from `<directory>/<mix>.json` (build_mixtures' composition files); `known`
    overrides (the cell's own mixture, already loaded)."""
    sizes: dict[str, int | None] = {}
    for mix in mixes:
        if known and mix in known:
            sizes[mix] = int(known[mix])
            continue
        sizes[mix] = read_total(directory, mix)
    return sizes


def estimate_grid(model: str, epochs: int, seeds: int, sizes: dict[str, int | None],
                  images_per_s: dict[str, float] | None = None) -> GridEstimate:
    rate = (images_per_s or H100_IMAGES_PER_S)[model]
    images = sum(size for size in sizes.values() if size is not None) * epochs * seeds
    return GridEstimate(images / rate, images, sum(s is not None for s in sizes.values()),
                        [mix for mix, size in sizes.items() if size is None])


def format_duration(seconds: float) -> str:
    minutes = seconds / 60
    if minutes < 1:
        return f"{seconds:.0f} s"
    if minutes < 120:
        return f"{minutes:.0f} min"
    return f"{minutes / 60:.1f} h"


def grid_eta_line(model: str, epochs: int, seeds: int, mixes: list[str], directory: Path,
                  known: dict[str, int] | None = None) -> str:
    sizes = mixture_sizes(mixes, directory, known)
    est = estimate_grid(model, epochs, seeds, sizes)
    missing = f"; {len(est.unsized)} mixture(s) not built yet, not counted: {', '.join(est.unsized)}" if est.unsized else ""
    return (f"grid ETA: {model} x {est.sized} mixtures x {seeds} seed(s) x {epochs} epochs = {est.images:,} images, "
            f"about {format_duration(est.seconds)} on one H100 ({THROUGHPUT_SOURCE}; cells run one after another){missing}")
