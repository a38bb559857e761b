"""The synthetic-to-real exchange rate on accuracy curves with a known answer."""
import math
from pathlib import Path

import numpy as np
import pytest

from diffaug.exchange import PowerLaw, exchange_rates, fit_power_law
from diffaug.report.figures import Context

TRUE = PowerLaw(a=0.95, b=2.0, c=0.5)
SIZES = [5000, 12500, 25000, 37500, 50000]  # orig10 ... orig100 of CIFAR-10


def test_the_fit_recovers_a_known_power_law():
    fit = fit_power_law(SIZES, [TRUE.acc(n) for n in SIZES])
    assert fit.a == pytest.approx(TRUE.a, abs=2e-3)
    assert fit.c == pytest.approx(TRUE.c, rel=0.02)
    for n in (3000, 20000, 100000):  # inside and beyond the measured sizes
        assert fit.acc(n) == pytest.approx(TRUE.acc(n), abs=5e-4)


def test_real_equivalent_and_exchange_rate_have_the_known_answer():
    # A mixture of 25k real + 25k synthetic images that reaches the accuracy of 40k real images:
    # it is worth 40k real images, gained 15k, so 25k / 15k = 5/3 synthetic images per real one.
    curve = [[TRUE.acc(n)] for n in SIZES]
    out = exchange_rates(SIZES, curve, {"orig50_syn1_50": {"n_real": 25000, "n_syn": 25000, "accs": [TRUE.acc(40000)]},
                                        "syn1_100": {"n_real": 0, "n_syn": 50000, "accs": [TRUE.acc(10000)]},
                                        "orig50_bad": {"n_real": 25000, "n_syn": 25000, "accs": [TRUE.acc(20000)]},
                                        "orig100_syn1_100": {"n_real": 50000, "n_syn": 50000, "accs": [0.96]}})
    m = out["mixtures"]["orig50_syn1_50"]
    assert m["real_equiv"] == pytest.approx(40000, rel=0.01)
    assert m["exchange_rate"] == pytest.approx(25000 / 15000, rel=0.03)
    assert m["equal_budget_acc"] == pytest.approx(TRUE.acc(50000), abs=5e-4) and not m["equal_budget_extrapolated"]
    assert out["mixtures"]["syn1_100"]["real_equiv"] == pytest.approx(10000, rel=0.01)
    assert out["mixtures"]["syn1_100"]["exchange_rate"] == pytest.approx(5.0, rel=0.01)
    bad = out["mixtures"]["orig50_bad"]  # synthetic images that cost accuracy: no exchange rate
    assert bad["real_equiv"] == pytest.approx(20000, rel=0.01) and bad["exchange_rate"] is None
    beyond = out["mixtures"]["orig100_syn1_100"]  # past the asymptote: no amount of real data reaches it
    assert math.isinf(beyond["real_equiv"]) and beyond["exchange_rate"] is None
    assert beyond["equal_budget_extrapolated"] and beyond["equal_budget_acc"] == pytest.approx(TRUE.acc(100000), abs=1e-3)


def test_uncertainty_over_seeds_comes_from_refitting_each_seed():
    rng = np.random.default_rng(0)
    seeds = 4
    curve = [[TRUE.acc(n) + rng.normal(0, 0.0003) for _ in range(seeds)] for n in SIZES]
    mix_accs = [TRUE.acc(30000) + rng.normal(0, 0.0003) for _ in range(seeds)]
    m = exchange_rates(SIZES, curve, {"mix": {"n_real": 25000, "n_syn": 25000, "accs": mix_accs}})["mixtures"]["mix"]
    assert len(m["real_equiv_per_seed"]) == seeds
    assert m["real_equiv_std"] == pytest.approx(np.std(m["real_equiv_per_seed"], ddof=1))
    assert 0 < m["real_equiv_std"] < 15000 and m["real_equiv"] == pytest.approx(30000, rel=0.3)
    exact = exchange_rates(SIZES, [[TRUE.acc(n)] * seeds for n in SIZES],
                           {"mix": {"n_real": 25000, "n_syn": 25000, "accs": [TRUE.acc(30000)] * seeds}})["mixtures"]["mix"]
    assert exact["real_equiv_std"] == pytest.approx(0, abs=1.0)  # identical seeds: no spread


def test_a_flat_or_too_short_curve():
    flat = fit_power_law(SIZES, [0.5, 0.49, 0.5, 0.51, 0.5])
    assert flat.b == pytest.approx(0, abs=1e-3) or flat.c <= 0.05  # no trend to invert
    with pytest.raises(ValueError, match="at least 3 distinct"):
        fit_power_law([100, 200], [0.5, 0.6])


def test_the_report_tabulates_what_every_mixture_is_worth_in_real_images(tmp_path):
    from diffaug.config import load_config
    from diffaug.report.page import exchange_tables, quality_table
    from diffaug.report.results import Result

    cfg = load_config(Path(__file__).resolve().parents[1] / "params.yaml")
    real = dict(zip(cfg.real_curve, SIZES))
    acc = {m: TRUE.acc(n) for m, n in real.items()} | {"orig50_syn1_50": TRUE.acc(40000), "orig100_syn1_100": 0.96}
    summary = {"test_acc": acc, "n_real": {**real, "orig50_syn1_50": 25000, "orig100_syn1_100": 50000},
               "n_syn": {"orig50_syn1_50": 25000, "orig100_syn1_100": 50000},
               "real_equiv": {"orig50_syn1_50": 40000, "orig100_syn1_100": None},
               "syn_per_real": {"orig50_syn1_50": 1.667, "orig100_syn1_100": None},
               "equal_budget_acc": {"orig50_syn1_50": TRUE.acc(50000), "orig100_syn1_100": TRUE.acc(100000)},
               "syn_fd": {"syn1": 12.5}, "syn_kid": {"syn1": 0.01}, "syn_kid_se": {"syn1": 0.001},
               "syn_precision": {"syn1": 0.7}, "syn_recall": {"syn1": 0.4}}
    row = Result(name="workspace", rev="workspace", kind="workspace", timestamp=None, model="resnet18", variant="cifar",
                 recipe="default", seeds=1, acc=acc, summary=summary)
    ctx = Context(cfg, [row], tmp_path)
    table = exchange_tables(ctx)
    assert "| `orig50_syn1_50` | 25,000 | 25,000 | " in table and "| 40,000 | 1.67 |" in table
    assert "| `orig100_syn1_100` | 50,000 | 50,000 | 96.00 | beyond the curve | - |" in table
    assert "| resnet18 | syn1 | 12.50 | 0.0100 | 0.0010 | 0.700 | 0.400 |" in quality_table(ctx)
    bare = Result(name="w", rev="w", kind="workspace", timestamp=None, model="resnet18", variant="cifar", recipe="default",
                  seeds=1, acc=acc)
    assert exchange_tables(Context(cfg, [bare], tmp_path)).startswith("_No experiment has exchange-rate columns")
