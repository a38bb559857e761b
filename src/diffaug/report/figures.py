"""The report's figures: each comparison (`COMPARISONS`) picks rows and mixtures and returns Charts, or
raises Skip saying what the results lack; `bar_chart` draws every Chart. A missing cell is drawn as "n/a"."""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from matplotlib import colormaps
from matplotlib.figure import Figure  # no pyplot: no global state; savefig uses the Agg canvas

from diffaug.config import ARCHITECTURES, REAL_SOURCES, Config, Img2ImgSet
from diffaug.report.results import Result, model_order

RESNETS = ARCHITECTURES[:3]
COPIES = {"rot90": "rotated", "vflip": "v-flipped"}


class Skip(Exception):
    """A figure that cannot be drawn from the results; the message says why."""


class Chart(NamedTuple):
    file: str
    caption: str
    rows: list[Result]
    mixes: list[str]


# ============================================================================ mixtures
def _pct(x: float) -> str:
    return f"{x * 100:.4g}%"


def mixture_label(sources: dict[str, float]) -> str:
    """Readable name from fractions: '50% real + 50% syn1', '50% real + rotated + v-flipped copies'."""
    orig = sources.get("orig", 0.0)
    parts = [f"{_pct(orig)} real"] if orig else []
    parts += [f"{_pct(v)} {s}" for s, v in sources.items() if s not in REAL_SOURCES and v]  # the synthetic sets
    copies = [(COPIES[c] if sources[c] == orig else f"{_pct(sources[c])} {COPIES[c]}")
              for c in COPIES if sources.get(c)]
    if copies:
        parts.append(" + ".join(copies) + " copies")
    return " + ".join(parts) or "empty"


def filter_label(f: Any) -> str:
    """'confidence-filtered (best 80%)', 'clip-filtered (score >= 0.25)' from a config.MixtureFilter."""
    how = f"score >= {f.threshold:g}" if f.threshold is not None else f"best {_pct(f.keep_fraction)}"
    return f"{f.by}-filtered ({how})"


def img2img_strength(cfg: Config, mix: str) -> float | None:
    """The strength of the one img2img set an unfiltered mixture draws from, if it has a single strength."""
    sets = [cfg.synthetic.sets.get(s) for s, v in cfg.mixtures.get(mix, {}).items() if v]
    i2i = [s for s in sets if isinstance(s, Img2ImgSet)]
    return i2i[0].strengths[0] if len(i2i) == 1 and len(i2i[0].strengths) == 1 and mix not in cfg.filters else None


@dataclass
class Context:
    """What every figure reads: params, the chosen rows, and where the sample grids lie."""

    cfg: Config
    rows: list[Result]
    synthetic: Path

    def label(self, mix: str) -> str:
        if mix not in self.cfg.mixtures:
            return mix
        text = mixture_label(self.cfg.mixtures[mix])
        if (strength := img2img_strength(self.cfg, mix)) is not None:
            text += f" (img2img strength {strength:g})"
        return f"{text}, {filter_label(self.cfg.filters[mix])}" if mix in self.cfg.filters else text

    def redefined(self, row: Result, mix: str) -> bool:
        """The run defined `mix` differently from params.yaml: its number is not this label's."""
        return (row.mixtures is not None and mix in row.mixtures and mix in self.cfg.mixtures
                and row.mixtures[mix] != self.cfg.mixtures[mix])

    def value(self, row: Result, mix: str) -> tuple[float, float | None] | None:
        """(accuracy, std or None) of a cell usable in a figure, or None."""
        if mix not in row.acc or self.redefined(row, mix):
            return None
        return row.acc[mix], row.std.get(mix)

    def mixes_order(self, names: Iterable[str]) -> list[str]:
        """params.yaml's order, then mixtures it no longer defines, alphabetically."""
        names = set(names)
        known = [m for m in self.cfg.mixtures if m in names]
        return known + sorted(names - set(known))

    def all_mixes(self) -> list[str]:
        return self.mixes_order(m for r in self.rows for m in r.acc)

    def find(self, sources: dict[str, float]) -> str | None:
        """The unfiltered mixture with these fractions (a filtered one has the same fractions)."""
        return next((m for m, s in self.cfg.mixtures.items() if s == sources and m not in self.cfg.filters), None)

    def row_label(self, row: Result) -> str:
        clash = sum(r.model == row.model for r in self.rows) > 1
        return f"{row.model} ({row.variant}, {row.recipe})" if clash else row.model


# ============================================================================ the one drawing
def _axis_floor(values: Iterable[tuple[float, float | None] | None]) -> float:
    """Where the accuracy axis starts, in %: 0, unless every bar is within 25% of the longest (differences
    of a point would be invisible): then a round number a little below the lowest."""
    ends = [(a - (s or 0)) * 100 for a, s in (v for v in values if v is not None)]
    low, high = min(ends, default=0.0), max(ends, default=0.0)
    return max(0.0, 5 * math.floor((low - 3) / 5)) if low >= 0.75 * high and low > 10 else 0.0


def bar_chart(ctx: Context, chart: Chart) -> Figure:
    """Test accuracy as horizontal bars: a group per mixture, a bar per row with its std over seeds as an
    error bar and its value written beside it; a row without that mixture shows "n/a"."""
    rows, mixes = chart.rows, chart.mixes
    values = [[ctx.value(r, m) for m in mixes] for r in rows]
    floor = _axis_floor(v for vs in values for v in vs)
    span, slot = 100 - floor, 0.84 / len(rows)
    fig = Figure(figsize=(9.0, 1.4 + len(mixes) * (0.3 + 0.22 * len(rows))), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    cmap = colormaps["tab10" if len(rows) <= 10 else "tab20"]
    for j, (row, vs) in enumerate(zip(rows, values)):
        ys = [i - 0.42 + slot * (j + 0.5) for i in range(len(mixes))]
        have = [(y, v) for y, v in zip(ys, vs) if v is not None]
        ax.barh([y for y, _ in have], [v[0] * 100 - floor for _, v in have], left=floor, height=slot * 0.92,
                color=cmap(j % cmap.N), label=f"{ctx.row_label(row)}: {row.display}",
                xerr=[(v[1] or 0) * 100 for _, v in have], capsize=2, error_kw={"elinewidth": 0.8})
        for y, v in zip(ys, vs):
            text = "n/a" if v is None else f"{v[0] * 100:.1f}" + (f" ± {v[1] * 100:.1f}" if v[1] is not None else "")
            end = floor if v is None else (v[0] + (v[1] or 0)) * 100
            ax.text(end + 0.01 * span, y, text, va="center", fontsize=7, color="#555555" if v is None else "black")
    ax.set_yticks(range(len(mixes)), [ctx.label(m) for m in mixes])
    ax.invert_yaxis()
    ax.set_xlim(floor, 100 + 0.12 * span)  # room for the value labels
    with_std = any(v is not None and v[1] is not None for vs in values for v in vs)
    ax.set_xlabel("test accuracy (%)" + (", mean ± std over seeds" if with_std else "")
                  + (f"  [axis starts at {floor:g}%, not 0]" if floor else ""))
    ax.set_title(chart.caption, fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    fig.legend(loc="outside lower center", ncol=min(3, len(rows)), fontsize=8, frameon=False)
    return fig


# ============================================================================ the comparisons
def per_architecture(ctx: Context) -> list[Chart]:
    """Paper Fig. 2-6: for each architecture, test accuracy on every mixture it was trained on."""
    charts = []
    for model in sorted({r.model for r in ctx.rows}, key=model_order):
        rows = [r for r in ctx.rows if r.model == model]
        mixes = ctx.mixes_order(m for r in rows for m in r.acc if ctx.value(r, m) is not None)
        if mixes:
            charts.append(Chart(f"acc_{re.sub(r'[^A-Za-z0-9_.-]', '_', model)}.png", f"{model}: test accuracy per mixture",
                                rows, mixes))
    if not charts:
        raise Skip("no experiment has a test accuracy for any mixture")
    return charts


def resnet_sizes(ctx: Context) -> list[Chart]:
    rows = [r for r in ctx.rows if r.model in RESNETS]
    present = sorted({r.model for r in rows}, key=model_order)
    if len(present) < 2:
        raise Skip(f"needs results for at least two of {', '.join(RESNETS)}; have {', '.join(present) or 'none'}")
    mixes = ctx.mixes_order(m for r in rows for m in r.acc if ctx.value(r, m) is not None)
    return [Chart("resnet_sizes.png", "ResNet depth: test accuracy per mixture", rows, mixes)]


def _compare(ctx: Context, file: str, caption: str, base: list[str], others: list[str], undefined: str) -> list[Chart]:
    """The rows that have a result for one of `base` and one of `others` (a comparison needs both sides)."""
    if not base or not others:
        raise Skip(f"params.yaml defines {undefined}")
    rows = [r for r in ctx.rows if any(ctx.value(r, m) is not None for m in base)
            and any(ctx.value(r, m) is not None for m in others)]
    if not rows:
        raise Skip(f"no experiment has both one of {', '.join(base)} and one of {', '.join(others)}")
    mixes = [m for m in dict.fromkeys(base + others) if any(ctx.value(r, m) is not None for r in rows)]
    return [Chart(file, caption, rows, mixes)]


def _halves(ctx: Context) -> list[str]:
    return [m for m in (ctx.find({"orig": 0.5, s: 0.5}) for s in ctx.cfg.synthetic_sets) if m]


def half_half(ctx: Context) -> list[Chart]:
    half = ctx.find({"orig": 0.5})
    return _compare(ctx, "half_real_half_synthetic.png", "50% real alone vs 50% real + 50% synthetic",
                    [half] if half else [], _halves(ctx), "no '50% real' mixture or no '50% real + 50% synN' mixture")


def synthetic_only(ctx: Context) -> list[Chart]:
    real = ctx.find({"orig": 1.0})
    syn = [m for m, s in ctx.cfg.mixtures.items() if s and set(s) <= set(ctx.cfg.synthetic_sets)]
    return _compare(ctx, "synthetic_only.png", "Synthetic images only vs 100% real", [real] if real else [], syn,
                    "no '100% real' mixture or no synthetic-only mixture")


def classic(ctx: Context) -> list[Chart]:
    copies = [m for m, s in ctx.cfg.mixtures.items()
              if s.get("orig") == 0.5 and set(s) - {"orig"} and set(s) - {"orig"} <= set(COPIES)]
    return _compare(ctx, "classic_augmentation.png", "Rotated / v-flipped copies vs synthetic images (paper Fig. 7)",
                    copies, _halves(ctx), "no '50% real + rotated/v-flipped copies' or no '50% real + 50% synN' mixture")


def filtered(ctx: Context) -> list[Chart]:
    """Each filtered mixture beside the unfiltered one with the same fractions (its draw before filtering)."""
    pairs = [(u, f) for f in ctx.cfg.filters if (u := ctx.find(ctx.cfg.mixtures[f])) is not None]
    return _compare(ctx, "filtered_vs_unfiltered.png", "Synthetic images filtered vs unfiltered", [u for u, _ in pairs],
                    [f for _, f in pairs], "no filtered mixture (mixtures.<name>.filter) beside an unfiltered one")


def img2img(ctx: Context) -> list[Chart]:
    """Mixtures drawing from img2img sets, by strength, beside the real-only mixture with the same real share."""
    i2i = sorted((s, m) for m in ctx.cfg.mixtures if (s := img2img_strength(ctx.cfg, m)) is not None)
    shares = dict.fromkeys(ctx.cfg.mixtures[m].get("orig", 0.0) for _, m in i2i)
    real = [m for share in shares if share and (m := ctx.find({"orig": share}))]
    return _compare(ctx, "img2img_strength.png", "Test accuracy by img2img strength (SDEdit / DA-Fusion)", real,
                    [m for _, m in i2i], "no mixture drawing from an img2img set with a single strength, or no real-only "
                    "mixture with its real share")


COMPARISONS: tuple[tuple[str, str, Callable[[Context], list[Chart]]], ...] = (
    ("Test accuracy per architecture (paper Fig. 2-6)", "acc_<model>.png", per_architecture),
    ("ResNet depth", "resnet_sizes.png", resnet_sizes),
    ("Half real, half synthetic", "half_real_half_synthetic.png", half_half),
    ("Synthetic images only", "synthetic_only.png", synthetic_only),
    ("Classical augmentation baselines (paper Fig. 7)", "classic_augmentation.png", classic),
    ("Filtered vs unfiltered synthetic images (beyond the paper: ALIA, He et al.)", "filtered_vs_unfiltered.png", filtered),
    ("Synthetic images from real ones: img2img strength (beyond the paper: SDEdit, DA-Fusion)", "img2img_strength.png",
     img2img),
)
