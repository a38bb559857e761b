"""The report's figures: mixture labels from params.yaml fractions, and matplotlib (Agg) drawings.

Every figure builder takes a Context and returns [(file name, Figure, caption)], or raises Skip with
the reason when the results lack what it compares. Values are only ever read from the results: a
missing cell is drawn as "n/a", never filled in. Accuracy axes start at 0 unless every value drawn
is at least 50%; then the axis is zoomed and its label says where it starts.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure  # no pyplot: no global state; savefig uses the Agg canvas
from matplotlib.ticker import MaxNLocator

from diffaug.config import ARCHITECTURES, REAL_SOURCES, Config, Img2ImgSet
from diffaug.config.schema import MixtureFilter
from diffaug.formats.curves import read_live_curves
from diffaug.report.results import Result, model_order

RESNETS = ARCHITECTURES[:3]
COPIES = {"rot90": "rotated", "vflip": "v-flipped"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAMILY_COLOURS = {"real only": "#7f7f7f", "real + synthetic": "#1f77b4", "synthetic only": "#ff7f0e",
                  "real + rotated/flipped copies": "#2ca02c", "other": "#9467bd"}
Made = list[tuple[str, Any, str]]  # (file name, matplotlib Figure, caption)


class Skip(Exception):
    """A figure that cannot be drawn from the results; the message says why."""


# ============================================================================ mixtures
def same_mixture(a: dict[str, float], b: dict[str, float]) -> bool:
    return set(a) == set(b) and all(abs(a[k] - b[k]) < 1e-9 for k in a)


def _pct(x: float) -> str:
    return f"{x * 100:.4g}%"


def mixture_label(sources: dict[str, float]) -> str:
    """Readable name from fractions: '50% real + 50% syn1', '50% real + rotated + v-flipped copies'."""
    parts = []
    orig = sources.get("orig", 0.0)
    if orig:
        parts.append(f"{_pct(orig)} real")
    parts += [f"{_pct(v)} {s}" for s, v in sources.items() if s not in REAL_SOURCES and v]  # the synthetic sets
    copies = [(COPIES[c] if abs(sources[c] - orig) < 1e-9 else f"{_pct(sources[c])} {COPIES[c]}")
              for c in COPIES if sources.get(c)]
    if copies:
        parts.append(" + ".join(copies) + " copies")
    return " + ".join(parts) or "empty"


def mixture_family(sources: dict[str, float]) -> str:
    kinds = {"real" if s == "orig" else "copies" if s in COPIES else "synthetic" for s, v in sources.items() if v}
    return {frozenset({"real"}): "real only", frozenset({"synthetic"}): "synthetic only",
            frozenset({"real", "synthetic"}): "real + synthetic",
            frozenset({"real", "copies"}): "real + rotated/flipped copies"}.get(frozenset(kinds), "other")


def filter_label(f: Any) -> str:
    """'confidence-filtered (best 80%)', 'clip-filtered (score >= 0.25)' from a config.schema.MixtureFilter."""
    how = f"score >= {f.threshold:g}" if f.threshold is not None else f"best {_pct(f.keep_fraction)}"
    return f"{f.by}-filtered ({how})"


@dataclass
class Context:
    """What every figure reads: params, the chosen rows, and where the other inputs lie."""

    cfg: Config
    rows: list[Result]
    train_metrics: Path
    synthetic: Path

    def label(self, mix: str) -> str:
        if mix not in self.cfg.mixtures:
            return mix
        text = mixture_label(self.cfg.mixtures[mix])
        return f"{text}, {filter_label(self.cfg.filters[mix])}" if mix in self.cfg.filters else text

    def redefined(self, row: Result, mix: str) -> bool:
        """The run defined `mix` differently from params.yaml: its number is not this label's."""
        return (row.mixtures is not None and mix in row.mixtures and mix in self.cfg.mixtures
                and not same_mixture(row.mixtures[mix], self.cfg.mixtures[mix]))

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
        return next((m for m, s in self.cfg.mixtures.items() if same_mixture(s, sources) and m not in self.cfg.filters), None)

    def row_label(self, row: Result, sep: str = " ") -> str:
        clash = sum(r.model == row.model for r in self.rows) > 1
        return f"{row.model}{sep}({row.variant}, {row.recipe})" if clash else row.model


# ============================================================================ drawing helpers
def _figure(width: float, height: float):

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _fmt(acc: float, std: float | None, digits: int = 1) -> str:
    return f"{acc * 100:.{digits}f}" + (f" ± {std * 100:.{digits}f}" if std is not None else "")


def _axis_floor(values: Iterable[tuple[float, float | None] | None]) -> float:
    """Where the accuracy axis starts, in %: 0, unless every bar is within 25% of the longest (then
    differences of a point would be invisible from 0): a round number a little below the lowest."""
    ends = [(a - (s or 0)) * 100 for a, s in (v for v in values if v is not None)]
    if not ends:
        return 0.0
    low, high = min(ends), max(ends)
    return max(0.0, 5 * math.floor((low - 3) / 5)) if low >= 0.75 * high and low > 10 else 0.0


def _axis_label(floor: float, with_std: bool, sep: str = "  ") -> str:
    text = "test accuracy (%)" + (", mean ± std over seeds" if with_std else "")
    return text + (f"{sep}[axis starts at {floor:g}%, not 0]" if floor else "")


def _ink(colour) -> str:
    """Black or white text, whichever reads better on `colour`."""

    r, g, b = to_rgb(colour)
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.6 else "white"


def _series_colours(n: int) -> list:

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _hbars(ax, positions, values, height, colour, floor, label=None, fontsize=8.0) -> None:
    """Horizontal bars (accuracy in %) with error bars where a std exists, value labels, 'n/a' gaps."""
    span = 100 - floor
    for y, v in zip(positions, values):
        if v is None:
            ax.text(floor + 0.01 * span, y, "n/a", va="center", ha="left", fontsize=fontsize - 1, color="#555555")
    have = [(y, v) for y, v in zip(positions, values) if v is not None]
    if not have:
        return
    ax.barh([y for y, _ in have], [v[0] * 100 - floor for _, v in have], left=floor, height=height, color=colour,
            label=label)
    with_std = [(y, v) for y, v in have if v[1] is not None]
    if with_std:
        ax.errorbar([v[0] * 100 for _, v in with_std], [y for y, _ in with_std], xerr=[v[1] * 100 for _, v in with_std],
                    fmt="none", ecolor="black", capsize=2, elinewidth=0.8)
    for y, (a, s) in have:
        end, err = a * 100, (s or 0) * 100
        if end - floor > 0.3 * span:  # inside the bar, clear of the error bar
            ax.text(end - err - 0.012 * span, y, _fmt(a, s), va="center", ha="right", fontsize=fontsize, color=_ink(colour))
        else:
            ax.text(end + err + 0.012 * span, y, _fmt(a, s), va="center", ha="left", fontsize=fontsize)


def _finish_hbar_axes(ax, labels: list[str], floor: float, with_std: bool, title: str) -> None:
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlim(floor, 100)
    ax.set_xlabel(_axis_label(floor, with_std))
    ax.set_title(title, fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)


# ============================================================================ the figures
def fig_per_architecture(ctx: Context) -> Made:
    """Fig. 2-6: for each architecture, test accuracy on every mixture it was trained on."""
    out = []
    for model in sorted({r.model for r in ctx.rows}, key=model_order):
        rows = [r for r in ctx.rows if r.model == model]
        mixes = ctx.mixes_order(m for r in rows for m in r.acc if ctx.value(r, m) is not None)
        if not mixes:
            continue
        floor = _axis_floor(ctx.value(r, m) for r in rows for m in mixes)
        with_std = any((v := ctx.value(r, m)) is not None and v[1] is not None for r in rows for m in mixes)
        k = len(rows)
        fig = _figure(9.0, 1.4 + len(mixes) * (0.32 + 0.22 * k))
        ax = fig.add_subplot()
        if k == 1:
            row = rows[0]
            families = [mixture_family(ctx.cfg.mixtures.get(m, {})) for m in mixes]
            for fam, colour in FAMILY_COLOURS.items():
                idx = [i for i, f in enumerate(families) if f == fam]
                if idx:
                    _hbars(ax, idx, [ctx.value(row, mixes[i]) for i in idx], 0.7, colour, floor, fam)
            ref = ctx.find({"orig": 1.0})
            if ref and ctx.value(row, ref) is not None:
                ax.axvline(row.acc[ref] * 100, color="black", ls="--", lw=0.8, label="100% real (reference)")
            title = f"{model} ({row.variant}, recipe {row.recipe}, {row.seeds} seed{'s' * (row.seeds > 1)}): test accuracy"
        else:
            slot = 0.84 / k
            for j, (row, colour) in enumerate(zip(rows, _series_colours(k))):
                pos = [i - 0.42 + slot * (j + 0.5) for i in range(len(mixes))]
                _hbars(ax, pos, [ctx.value(row, m) for m in mixes], slot * 0.92, colour, floor,
                       f"{row.variant}, recipe {row.recipe}: {row.display}", fontsize=7)
            title = f"{model}: test accuracy per mixture"
        _finish_hbar_axes(ax, [ctx.label(m) for m in mixes], floor, with_std, title)
        handles = len(ax.get_legend_handles_labels()[0])
        fig.legend(loc="outside lower center", ncol=min(3, handles), fontsize=8, frameon=False)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", model)
        out.append((f"acc_{safe}.png", fig, f"{model}: test accuracy per mixture"))
    if not out:
        raise Skip("no experiment has a test accuracy for any mixture")
    return out


def fig_resnet_sizes(ctx: Context) -> Made:
    """ResNet depth series: resnet18/34/50 side by side on every mixture any of them has."""

    rows = [r for r in ctx.rows if r.model in RESNETS]
    present = sorted({r.model for r in rows}, key=model_order)
    if len(present) < 2:
        raise Skip(f"needs results for at least two of {', '.join(RESNETS)}; have {', '.join(present) or 'none'}")
    mixes = ctx.mixes_order(m for r in rows for m in r.acc if ctx.value(r, m) is not None)
    floor = _axis_floor(ctx.value(r, m) for r in rows for m in mixes)
    with_std = any((v := ctx.value(r, m)) is not None and v[1] is not None for r in rows for m in mixes)
    k = len(rows)
    slot = 0.84 / k
    ramp = colormaps["Blues"]  # deeper network, darker blue
    colours = [ramp(0.45 + 0.5 * (RESNETS.index(r.model) / 2)) for r in rows]
    fig = _figure(9.5, 1.5 + len(mixes) * (0.3 + 0.2 * k))
    ax = fig.add_subplot()
    for j, (row, colour) in enumerate(zip(rows, colours)):
        pos = [i - 0.42 + slot * (j + 0.5) for i in range(len(mixes))]
        _hbars(ax, pos, [ctx.value(row, m) for m in mixes], slot * 0.92, colour, floor, ctx.row_label(row), fontsize=7)
    _finish_hbar_axes(ax, [ctx.label(m) for m in mixes], floor, with_std, "ResNet depth: test accuracy per mixture")
    fig.legend(loc="outside lower center", ncol=k, fontsize=9, frameon=False)
    return [("resnet_sizes.png", fig, "ResNet-18/34/50 across mixtures")]


def _mixture_colours(ctx: Context, mixes: list[str]) -> dict[str, Any]:
    """Colours by meaning: greys for real only, blues for syn1, oranges for syn2, greens for copies."""

    ramps = {"real only": "Greys", "syn1": "Blues", "syn2": "Oranges", "synthetic only": "Purples",
             "real + rotated/flipped copies": "Greens", "other": "RdPu"}

    def ramp(m: str) -> str:
        src = ctx.cfg.mixtures.get(m, {})
        fam = mixture_family(src)
        syn = [s for s in ctx.cfg.synthetic_sets if src.get(s)]
        if fam in ("real + synthetic", "synthetic only") and len(syn) == 1 and syn[0] in ramps:
            return syn[0]
        return fam if fam in ramps else "other"

    groups: dict[str, list[str]] = {}
    for m in mixes:
        groups.setdefault(ramp(m), []).append(m)
    colours = {}
    for name, members in groups.items():
        cmap = colormaps[ramps[name]]
        for i, m in enumerate(members):
            colours[m] = cmap(0.45 + 0.45 * i / (len(members) - 1) if len(members) > 1 else 0.6)
    return colours


def _comparison(ctx: Context, fname: str, title: str, mixes: list[str], need: Callable[[set[str]], bool],
                why: str) -> Made:
    """Vertical grouped bars: a group per experiment row (architecture), a bar per mixture of `mixes`.

    A row is drawn when `need(the mixtures of `mixes` it has)`; with none, Skip(why)."""
    rows = [r for r in ctx.rows if need({m for m in mixes if ctx.value(r, m) is not None})]
    if not rows:
        have = [ctx.label(m) for m in mixes if any(ctx.value(r, m) is not None for r in ctx.rows)]
        raise Skip(f"{why}; the results have {', '.join(have) if have else 'none of these mixtures'}")
    mixes = [m for m in mixes if any(ctx.value(r, m) is not None for r in rows)]
    values = {m: [ctx.value(r, m) for r in rows] for m in mixes}
    floor = _axis_floor(v for vs in values.values() for v in vs)
    top = max((a + (s or 0)) * 100 for vs in values.values() for a, s in (v for v in vs if v))
    span = top - floor
    k = len(mixes)
    slot = 0.84 / k
    fig = _figure(max(6.5, 0.085 * len(title) + 1.0, 1.6 + len(rows) * (0.5 + 0.36 * k)), 5.4)
    ax = fig.add_subplot()
    colours = _mixture_colours(ctx, mixes)
    for j, mix in enumerate(mixes):
        xs = [i - 0.42 + slot * (j + 0.5) for i in range(len(rows))]
        bars = [(x, v) for x, v in zip(xs, values[mix]) if v is not None]
        for x, v in zip(xs, values[mix]):
            if v is None:
                ax.text(x, floor + 0.02 * span, "n/a", ha="center", va="bottom", rotation=90, fontsize=7, color="#555555")
        ax.bar([x for x, _ in bars], [v[0] * 100 - floor for _, v in bars], bottom=floor, width=slot * 0.92,
               color=colours[mix], label=ctx.label(mix))
        with_std = [(x, v) for x, v in bars if v[1] is not None]
        if with_std:
            ax.errorbar([x for x, _ in with_std], [v[0] * 100 for _, v in with_std], yerr=[(v[1] or 0) * 100 for _, v in with_std],
                        fmt="none", ecolor="black", capsize=2, elinewidth=0.8)
        for x, (a, s) in bars:
            ax.text(x, (a + (s or 0)) * 100 + 0.015 * span, _fmt(a, s), ha="center", va="bottom", rotation=90,
                    fontsize=7.5)
    ax.set_xticks(range(len(rows)), [ctx.row_label(r, "\n") for r in rows])
    ax.set_xlim(-0.5, len(rows) - 0.5)
    ax.set_ylim(floor, top + 0.3 * span)  # room for the rotated value labels
    ax.set_yticks([t for t in ax.get_yticks() if floor <= t <= min(100, top + 0.3 * span)])
    ax.set_ylabel(_axis_label(floor, any(v and v[1] is not None for vs in values.values() for v in vs), "\n"))
    ax.set_title(title, fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.legend(loc="outside lower center", ncol=min(k, 3), fontsize=8.5, frameon=False)
    return [(fname, fig, title)]


def _halves(ctx: Context) -> list[str]:
    return [m for m in (ctx.find({"orig": 0.5, s: 0.5}) for s in ctx.cfg.synthetic_sets) if m]


def fig_half_half(ctx: Context) -> Made:
    """50% real alone vs 50% real + 50% syn1 / syn2, per architecture."""
    half, halves = ctx.find({"orig": 0.5}), _halves(ctx)
    if half is None or not halves:
        raise Skip("params.yaml defines no '50% real' mixture or no '50% real + 50% synN' mixture")
    return _comparison(ctx, "half_real_half_synthetic.png", "50% real alone vs 50% real + 50% synthetic",
                       [half] + halves, lambda have: half in have and bool(have & set(halves)),
                       f"no experiment has both '{ctx.label(half)}' and '" + "' or '".join(map(ctx.label, halves)) + "'")


def fig_synthetic_only(ctx: Context) -> Made:
    """Synthetic-only mixtures vs 100% real, per architecture."""
    real = ctx.find({"orig": 1.0})
    syn = [m for m, s in ctx.cfg.mixtures.items() if s and set(s) <= set(ctx.cfg.synthetic_sets)]
    if real is None or not syn:
        raise Skip("params.yaml defines no '100% real' mixture or no synthetic-only mixture")
    return _comparison(ctx, "synthetic_only.png", "Synthetic images only vs 100% real", [real] + syn,
                       lambda have: real in have and bool(have & set(syn)),
                       f"no experiment has both '{ctx.label(real)}' and a synthetic-only mixture")


def fig_classic(ctx: Context) -> Made:
    """Fig. 7: 50% real, + rotated / v-flipped / both copies, vs 50% real + 50% synthetic."""
    half, halves = ctx.find({"orig": 0.5}), _halves(ctx)
    classic = [m for m, s in ctx.cfg.mixtures.items()
               if abs(s.get("orig", 0) - 0.5) < 1e-9 and set(s) - {"orig"} and set(s) - {"orig"} <= set(COPIES)]
    if not classic or not halves:
        raise Skip("params.yaml defines no '50% real + rotated/v-flipped copies' or no '50% real + 50% synN' mixture")
    return _comparison(ctx, "classic_augmentation.png",
                       "Classical augmentation (rotated / v-flipped copies) vs synthetic images (paper Fig. 7)",
                       ([half] if half else []) + classic + halves,
                       lambda have: bool(have & set(classic)) and bool(have & set(halves)),
                       "no experiment has both a rotated/v-flipped baseline and a '50% real + 50% synN' mixture")


def fig_filtered(ctx: Context) -> Made:
    """Each filtered mixture beside the unfiltered mixture with the same fractions (its draw before
    filtering), per architecture: what dropping implausible synthetic images changes (ALIA, He et al.)."""
    pairs = [(u, f) for f in ctx.cfg.filters if (u := ctx.find(ctx.cfg.mixtures[f])) is not None]
    if not pairs:
        raise Skip("params.yaml defines no filtered mixture (mixtures.<name>.filter) beside an unfiltered one with "
                   "the same fractions")
    mixes = list(dict.fromkeys(m for pair in pairs for m in pair))
    return _comparison(ctx, "filtered_vs_unfiltered.png", "Synthetic images filtered vs unfiltered", mixes,
                       lambda have: any(u in have and f in have for u, f in pairs),
                       "no experiment has both a filtered mixture and its unfiltered twin ("
                       + "; ".join(f"{u} / {f}" for u, f in pairs) + ")")


def img2img_series(cfg: Config) -> dict[str, list[tuple[float, str]]]:
    """Mixtures that differ only in the img2img set they draw from, each set with one strength:
    {pattern label ('50% real + 50% img2img'): [(strength, mixture), ...] by strength}. Filtered
    mixtures and sets with a list of strengths are left out (no single strength to plot them at)."""
    series: dict[str, list[tuple[float, str]]] = {}
    for mix, sources in cfg.mixtures.items():
        if mix in cfg.filters:
            continue
        i2i = [s for s, v in sources.items() if v and isinstance(cfg.synthetic.sets.get(s), Img2ImgSet)]
        if len(i2i) != 1:
            continue
        spec = cfg.synthetic.sets[i2i[0]]
        assert isinstance(spec, Img2ImgSet)
        if len(spec.strengths) != 1:
            continue
        fractions = {k: float(v) for k, v in sources.items() if not isinstance(v, MixtureFilter)}
        pattern = mixture_label({("img2img" if k == i2i[0] else k): v for k, v in fractions.items()})
        series.setdefault(pattern, []).append((spec.strengths[0], mix))
    return {k: sorted(v) for k, v in series.items()}


def fig_img2img_strength(ctx: Context) -> Made:
    """Test accuracy against img2img strength (SDEdit / DA-Fusion): a line per experiment row and mixture
    pattern, a point per img2img set with that strength; the real-only mixture with the same real fraction,
    where it has a result, as a dashed line of the same colour."""
    series = img2img_series(ctx.cfg)
    if not series:
        raise Skip("params.yaml defines no mixture drawing from an img2img set with a single strength "
                   "(synthetic.sets.<name>: {kind: img2img, strength: s})")
    lines = []  # (label, [(strength, acc, std)], reference (acc, std) or None)
    for pattern, points in series.items():
        for r in ctx.rows:
            have = [(s, *v) for s, m in points if (v := ctx.value(r, m)) is not None]
            if have:
                orig = ctx.cfg.mixtures[points[0][1]].get("orig", 0.0)
                real = ctx.find({"orig": orig}) if isinstance(orig, float) and orig else None
                lines.append((f"{ctx.row_label(r)}: {pattern}", have, ctx.value(r, real) if real else None))
    if not lines:
        mixes = ", ".join(m for points in series.values() for _, m in points)
        raise Skip(f"no experiment has a result for an img2img mixture ({mixes})")
    fig = _figure(7.0, 4.8)
    ax = fig.add_subplot()
    colours = _series_colours(len(lines))
    values = [(a, s) for _, have, _ in lines for _, a, s in have] + [ref for _, _, ref in lines if ref]
    floor = _axis_floor(values)
    for (label, have, ref), colour in zip(lines, colours):
        xs, accs, stds = [h[0] for h in have], [h[1] * 100 for h in have], [h[2] for h in have]
        ax.errorbar(xs, accs, yerr=[(s or 0) * 100 for s in stds] if any(s is not None for s in stds) else None,
                    color=colour, marker="o", capsize=3, lw=1.4, label=label)
        for x, a in zip(xs, accs):
            ax.annotate(f"{a:.1f}", (x, a), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7.5)
        if ref is not None:
            ax.axhline(ref[0] * 100, color=colour, ls="--", lw=1.0, alpha=0.8)
    top = max(a + (s or 0) for a, s in values) * 100
    ax.set_ylim(floor, top + 0.15 * max(top - floor, 1))
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("img2img strength (share of the denoising steps run from the noised real image)")
    ax.set_ylabel(_axis_label(floor, any(s is not None for _, s in values), "\n"))
    ax.set_title("Test accuracy vs img2img strength (SDEdit / DA-Fusion); dashed: the same real share alone", fontsize=10)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncol=1, fontsize=8.5, frameon=False)
    return [("img2img_strength.png", fig, "test accuracy vs img2img strength")]


# ---------------------------------------------------------------------------- training curves
CURVES = {"train_acc": ("train acc", "#1f77b4", "-"), "val_acc": ("validation acc", "#ff7f0e", "-"),
          "train_loss": ("train loss (right axis)", "#555555", "--")}


def fig_training_curves(ctx: Context) -> Made:
    """dvclive curves of the cells the workspace's params train (`model` x `mixes` x `train.seeds`):
    a panel per mixture; accuracy (train, validation if logged) on the left axis, train loss on the right,
    one line per seed."""
    cfg = ctx.cfg
    root = ctx.train_metrics / cfg.model
    found: dict[str, dict[str, list[tuple[list[float], list[float]]]]] = {}  # mix -> metric -> per-seed curves
    missing = 0
    for mix in cfg.mixes:
        for seed in cfg.train.seeds:
            rows = read_live_curves(root / mix / f"seed-{seed}")
            if not any("train_acc" in r for r in rows):
                missing += 1
                continue
            for key in CURVES:
                points = [(r["step"], r[key]) for r in rows if key in r]
                if points:
                    found.setdefault(mix, {}).setdefault(key, []).append(([p[0] for p in points], [p[1] for p in points]))

    mixes = [m for m in cfg.mixes if "train_acc" in found.get(m, {})]
    if not mixes:
        raise Skip(f"no dvclive logs under {root}/<mix>/seed-<s>/ for the workspace's {cfg.model} cells")
    ncols = min(4, len(mixes))
    nrows = math.ceil(len(mixes) / ncols)
    fig = _figure(3.4 * ncols + 0.6, 2.6 * nrows + 1.0)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    loss_axes, loss_max = [], max((max(v) for m in mixes for _, v in found[m].get("train_loss", [])), default=0)
    for i, ax in enumerate(axes.flat):
        if i >= len(mixes):
            ax.set_visible(False)
            continue
        mix = mixes[i]
        for key in ("train_acc", "val_acc"):
            for seed_i, (steps, values) in enumerate(found[mix].get(key, [])):
                label, colour, style = CURVES[key]
                ax.plot([s + 1 for s in steps], [v * 100 for v in values], color=colour, ls=style, lw=1.1,
                        alpha=1.0 if seed_i == 0 else 0.55, label=label if seed_i == 0 else None)
        if found[mix].get("train_loss"):
            lax = ax.twinx()
            loss_axes.append(lax)
            for seed_i, (steps, values) in enumerate(found[mix]["train_loss"]):
                label, colour, style = CURVES["train_loss"]
                lax.plot([s + 1 for s in steps], values, color=colour, ls=style, lw=1.0,
                         alpha=1.0 if seed_i == 0 else 0.55, label=label if seed_i == 0 else None)
            lax.set_ylim(0, loss_max * 1.05 if loss_max > 0 else 1)
            if i % ncols != ncols - 1 and i != len(mixes) - 1:  # the loss scale is shared: show it at the right edge
                lax.tick_params(right=False, labelright=False)
            lax.tick_params(labelsize=7)
        ax.set_title(ctx.label(mix), fontsize=8.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, 100)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if i % ncols == 0:
            ax.set_ylabel("accuracy (%)", fontsize=8)
        if i >= len(mixes) - ncols:
            ax.set_xlabel("epoch", fontsize=8)
            ax.tick_params(labelbottom=True)
    seeds = len(cfg.train.seeds)
    fig.suptitle(f"Training curves: {cfg.model} ({cfg.train.variant}, recipe {cfg.train.recipe}), workspace cells"
                 + (f", {seeds} seeds (one line each)" if seeds > 1 else ""), fontsize=11)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if loss_axes:
        h2, l2 = loss_axes[0].get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8.5, frameon=False)
    note = f"; {missing} of {len(cfg.mixes) * seeds} cells have no log yet" if missing else ""
    return [("training_curves.png", fig, f"training curves of the workspace's {cfg.model} cells{note}")]


# ============================================================================ beyond the paper: what a set is worth
QUALITY_PANELS = (("syn_fd", "Fréchet distance (lower: closer)", None), ("syn_kid", "KID ± se (lower: closer)", "syn_kid_se"),
                  ("syn_precision", "precision (realistic share)", None), ("syn_recall", "recall (covered share)", None))


def _column(row: Result, key: str) -> dict[str, float]:
    """A {name: number} summary column of a row, numbers only (null and missing entries left out)."""
    col = row.summary.get(key)
    return {k: float(v) for k, v in col.items() if isinstance(v, int | float)} if isinstance(col, dict) else {}


def fig_synthetic_quality(ctx: Context) -> Made:
    """FD, KID ± se, precision and recall of every synthetic set, per architecture's real-only classifier."""
    rows = [r for r in ctx.rows if _column(r, "syn_fd")]
    if not rows:
        raise Skip("no result has syn_fd columns (evaluate computes them when a real-only mixture and a synthetic set are trained)")
    sets = [s for s in ctx.cfg.synthetic_sets if any(s in _column(r, "syn_fd") for r in rows)]
    sets += sorted({s for r in rows for s in _column(r, "syn_fd")} - set(sets))
    fig = _figure(11, 1.2 + 0.45 * len(sets) * len(rows))
    axes = fig.subplots(1, len(QUALITY_PANELS), sharey=True)
    colours = _series_colours(len(rows))
    height = 0.8 / len(rows)
    for ax, (key, title, err_key) in zip(axes, QUALITY_PANELS):
        for i, row in enumerate(rows):
            values, errs = _column(row, key), _column(row, err_key) if err_key else {}
            ys = [j + (i - (len(rows) - 1) / 2) * height for j, s in enumerate(sets) if s in values]
            xs = [values[s] for s in sets if s in values]
            ax.barh(ys, xs, height=height, color=colours[i], label=ctx.row_label(row),
                    xerr=[errs.get(s, 0.0) for s in sets if s in values] if err_key else None, capsize=2)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
        if key in ("syn_precision", "syn_recall"):
            ax.set_xlim(0, 1)
    axes[0].set_yticks(range(len(sets)), sets)
    axes[0].invert_yaxis()
    if len(rows) > 1:
        axes[-1].legend(fontsize=8, loc="lower right")
    fig.suptitle("Synthetic sets against the real training images, in the real-only classifier's features", fontsize=11)
    return [("synthetic_quality.png", fig, "Fréchet distance, KID, precision and recall of each synthetic set against the "
             "real training images, in the penultimate-layer features of each architecture's real-only (orig100) classifier")]


def fig_exchange_rate(ctx: Context) -> Made:
    """Real-data accuracy against the number of real images, with every synthetic mixture placed on it."""
    from diffaug.exchange import fit_power_law

    made: Made = []
    usable = [r for r in ctx.rows if _column(r, "n_real")]
    for row in usable:
        n_real, n_syn = _column(row, "n_real"), _column(row, "n_syn")
        curve = [(n_real[m], row.acc[m]) for m in ctx.cfg.real_curve if m in n_real and m in row.acc]
        if len(curve) < 3:
            continue
        fig = _figure(7.5, 4.8)
        ax = fig.add_subplot()
        xs, ys = zip(*sorted(curve))
        ax.plot(xs, [y * 100 for y in ys], "o", color="#7f7f7f", label="real images only (real_curve)")
        fit = fit_power_law(xs, ys)
        equiv = _column(row, "real_equiv")
        right = max([*xs, *(v for v in equiv.values())]) * 1.15
        grid = [min(xs) * 0.8 * (right / (min(xs) * 0.8)) ** (i / 200) for i in range(201)]
        ax.plot(grid, [fit.acc(n) * 100 for n in grid], "-", color="#7f7f7f", lw=1,
                label=f"fit: {fit.a * 100:.1f} - {fit.b * 100:.3g}·n^-{fit.c:.2f} (%)")
        colours = _series_colours(max(len(n_syn), 1))
        for i, mix in enumerate(n_syn):
            if mix not in row.acc:
                continue
            acc = row.acc[mix] * 100
            start = max(n_real.get(mix, 0.0), min(xs) * 0.8)
            if mix in equiv:
                ax.annotate("", xy=(max(equiv[mix], min(xs) * 0.8), acc), xytext=(start, acc),
                            arrowprops={"arrowstyle": "->", "color": colours[i], "lw": 1.2})
                ax.plot([max(equiv[mix], min(xs) * 0.8)], [acc], "D", color=colours[i], label=f"{mix}: worth {equiv[mix]:,.0f} real")
            else:
                ax.plot([right], [acc], ">", color=colours[i], label=f"{mix}: beyond the curve")
        ax.set_xscale("log")
        ax.set_xlabel("real training images (log scale)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        ax.set_title(f"{ctx.row_label(row)}: synthetic mixtures on the real-data curve", fontsize=11)
        made.append((f"exchange_rate_{row.model}.png", fig,
                     f"{ctx.row_label(row)}: each arrow runs from a mixture's real images to the real images the curve "
                     "needs for its accuracy (its real-equivalent)"))
    if not made:
        raise Skip("no result has the real_curve's accuracies and real_equiv columns (set real_curve and train its mixtures)")
    return made
