"""The report's filtered-vs-unfiltered bars: drawn only when a filtered mixture and its unfiltered twin
both have results, a Skip line otherwise; filtered mixtures never stand in for the paper's ones."""
import copy
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from diffaug.config import parse_config
from diffaug.report import page
from diffaug.report.figures import Context, Skip, bar_chart, filtered, half_half
from diffaug.report.results import Result

REPO = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
FILTERED = "orig50_syn1_50_conf"


def cfg(with_filter: bool = True):
    p = copy.deepcopy(PARAMS)
    if with_filter:
        # listed first on purpose: it must never be mistaken for the unfiltered orig50_syn1_50
        p["mixtures"] = {FILTERED: {"orig": 0.5, "syn1": 0.5, "filter": {"by": "confidence", "keep_fraction": 0.8}},
                         **p["mixtures"]}
        p["filtered_mixes"] = [FILTERED]
    return parse_config(p)


def row(model: str, acc: dict) -> Result:
    return Result(name=model, rev=model.ljust(40, "0"), kind="experiment", timestamp=datetime(2026, 1, 1), model=model,
                  variant="cifar", recipe="default", seeds=1, acc=acc)


def test_filtered_bars_are_drawn_beside_their_unfiltered_twin(tmp_path):
    rows = [row("resnet18", {"orig100": 0.93, "orig50": 0.90, "orig50_syn1_50": 0.91, FILTERED: 0.915}),
            row("vgg16", {"orig100": 0.92, "orig50_syn1_50": 0.89})]  # no filtered run: not drawn
    ctx = Context(cfg(), rows, tmp_path)
    assert ctx.label(FILTERED) == "50% real + 50% syn1, confidence-filtered (best 80%)"
    assert ctx.find({"orig": 0.5, "syn1": 0.5}) == "orig50_syn1_50"
    [chart] = filtered(ctx)
    assert chart.file == "filtered_vs_unfiltered.png" and [r.model for r in chart.rows] == ["resnet18"]
    assert chart.mixes == ["orig50_syn1_50", FILTERED]
    ax = bar_chart(ctx, chart).axes[0]
    assert sorted(round(p.get_width() + ax.get_xlim()[0], 2) for p in ax.patches) == [91.0, 91.5]
    # the paper's half/half figure still uses the unfiltered mixture only
    [half] = half_half(ctx)
    assert FILTERED not in half.mixes
    figures, skipped = page.write_report(ctx, tmp_path / "out", "Numbers: test.", [])
    assert "filtered_vs_unfiltered.png" in figures
    with Image.open(tmp_path / "out" / "filtered_vs_unfiltered.png") as im:
        assert im.format == "PNG" and len(np.unique(np.asarray(im.convert("L")))) > 20
    md = (tmp_path / "out" / "report.md").read_text()
    assert "](filtered_vs_unfiltered.png)" in md and "confidence-filtered (best 80%)" in md


def test_without_filtered_runs_the_figure_is_skipped_with_a_line(tmp_path):
    rows = [row("resnet18", {"orig100": 0.93, "orig50_syn1_50": 0.91})]
    with pytest.raises(Skip, match=f"no experiment has both one of orig50_syn1_50 and one of {FILTERED}"):
        filtered(Context(cfg(), rows, tmp_path))
    with pytest.raises(Skip, match=r"defines no filtered mixture \(mixtures.<name>.filter\)"):
        filtered(Context(cfg(with_filter=False), rows, tmp_path))
    figures, skipped = page.write_report(Context(cfg(with_filter=False), rows, tmp_path), tmp_path / "out", "N.", [])
    assert "filtered_vs_unfiltered.png" not in figures
    assert any(s.startswith("filtered_vs_unfiltered.png: skipped: params.yaml defines no filtered mixture") for s in skipped)
