"""What a synthetic set bought, in real images: the synthetic-to-real exchange rate.

Per seed, acc(n) = a - b * n^(-c) is fitted to the `real_curve` mixtures (test accuracy against n real
training images) by least squares: c on a log grid, a and b in closed form (no scipy: the same answer on
every machine). A mixture of n_real real and n_syn synthetic images at accuracy A is worth real_equiv =
the n with acc(n) = A (inf at the asymptote, 0 at or below acc(1)); exchange_rate = n_syn / (real_equiv -
n_real), None without a gain; equal_budget = acc(n_real + n_syn). Mean and std over seeds (docs/worth.md).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

C_MIN, C_MAX, C_GRID = 0.02, 3.0, 600


@dataclass(frozen=True)
class PowerLaw:
    """acc(n) = a - b * n^(-c)."""

    a: float
    b: float
    c: float

    def acc(self, n: float) -> float:
        return self.a - self.b * float(n) ** (-self.c)

    def real_equivalent(self, accuracy: float) -> float:
        """The number of real images the curve needs to reach `accuracy` (inf at or past the asymptote)."""
        if accuracy >= self.a:
            return math.inf
        if accuracy <= self.acc(1.0):
            return 0.0
        return float((self.b / (self.a - accuracy)) ** (1.0 / self.c))


def fit_power_law(sizes: Sequence[float], accs: Sequence[float]) -> PowerLaw:
    """Least-squares fit of acc(n) = a - b n^-c with b >= 0 (accuracy does not fall with more data)."""
    n = np.asarray(sizes, dtype=np.float64)
    y = np.asarray(accs, dtype=np.float64)
    if len(np.unique(n)) < 3 or np.any(n <= 0):
        raise ValueError(f"a real curve needs at least 3 distinct positive sizes, got {sorted(set(n.tolist()))}")
    best: tuple[float, PowerLaw] | None = None
    for c in np.geomspace(C_MIN, C_MAX, C_GRID):
        x = n ** (-c)
        design = np.stack([np.ones_like(x), -x], axis=1)
        (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
        if b < 0:  # a falling curve: the best monotone fit is flat
            a, b = float(y.mean()), 0.0
        sse = float(((a - b * x - y) ** 2).sum())
        if best is None or sse < best[0] - 1e-15:
            best = (sse, PowerLaw(float(a), float(b), float(c)))
    assert best is not None
    return best[1]


def exchange_rates(curve_sizes: Sequence[int], curve_accs: Sequence[Sequence[float]],
                   mixtures: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The real curve (curve_accs[i][s]: size i's accuracy with seed s) and every mixture's worth in real images;
    mixtures: name -> {"n_real", "n_syn", "accs": [accuracy per seed, the curve's seeds]}."""
    accs = np.asarray(curve_accs, dtype=np.float64)  # (sizes, seeds)
    seeds = accs.shape[1]
    fits = [fit_power_law(curve_sizes, accs[:, s].tolist()) for s in range(seeds)]
    out: dict[str, Any] = {
        "curve": {"sizes": [int(n) for n in curve_sizes], "acc": accs.mean(axis=1).tolist(),
                  "fits": [{"a": f.a, "b": f.b, "c": f.c} for f in fits]},
        "mixtures": {},
    }
    for name, m in mixtures.items():
        if len(m["accs"]) != seeds:
            raise ValueError(f"{name}: {len(m['accs'])} seeds, the real curve has {seeds}")
        n_real, n_syn = int(m["n_real"]), int(m["n_syn"])
        equivs = [f.real_equivalent(acc) for f, acc in zip(fits, m["accs"])]
        budget = [f.acc(n_real + n_syn) for f in fits]
        if any(map(math.isinf, equivs)):  # beyond some seed's asymptote
            equiv, equiv_std = math.inf, math.nan
        else:
            equiv, equiv_std = float(np.mean(equivs)), float(np.std(equivs, ddof=1)) if len(equivs) > 1 else 0.0
        gained = equiv - n_real
        rate = n_syn / gained if gained > 0 and math.isfinite(gained) else None
        out["mixtures"][name] = {
            "n_real": n_real, "n_syn": n_syn, "acc": float(np.mean(m["accs"])),
            "real_equiv": equiv, "real_equiv_std": equiv_std, "real_equiv_per_seed": equivs,
            "gained": gained, "exchange_rate": rate,
            "equal_budget_acc": float(np.mean(budget)),
            "equal_budget_extrapolated": n_real + n_syn > max(curve_sizes),
        }
    return out
