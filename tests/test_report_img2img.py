"""The report's img2img-strength series: drawn only when img2img mixtures have results, a Skip line otherwise."""
import copy
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from diffaug.config import parse_config
from diffaug.report import page
from diffaug.report.figures import Context, Skip, bar_chart, img2img, img2img_strength, synthetic_only
from diffaug.report.results import Result

REPO = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def cfg(with_img2img: bool = True):
    p = copy.deepcopy(PARAMS)
    if with_img2img:
        for name, strength in (("i2i25", 0.25), ("i2i50", 0.5), ("i2i75", 0.75), ("i2imix", [0.25, 0.75])):
            p["synthetic"]["sets"][name] = {"kind": "img2img", "strength": strength}
        p["img2img_sets"] = ["i2i25", "i2i50", "i2i75", "i2imix"]
        p["mixtures"].update({"orig50_i2i25_50": {"orig": 0.5, "i2i25": 0.5}, "orig50_i2i50_50": {"orig": 0.5, "i2i50": 0.5},
                              "orig50_i2i75_50": {"orig": 0.5, "i2i75": 0.5}, "i2i50_100": {"i2i50": 1.0},
                              "orig50_i2imix_50": {"orig": 0.5, "i2imix": 0.5}})
    return parse_config(p)


def row(model: str, acc: dict) -> Result:
    return Result(name=model, rev=model.ljust(40, "0"), kind="experiment", timestamp=datetime(2026, 1, 1), model=model,
                  variant="cifar", recipe="default", seeds=1, acc=acc)


def test_strength_is_read_from_the_one_img2img_set_a_mixture_draws_from():
    c = cfg()
    assert [img2img_strength(c, m) for m in ("orig50_i2i25_50", "orig50_i2i50_50", "orig50_i2i75_50", "i2i50_100")] == \
        [0.25, 0.5, 0.75, 0.5]
    assert img2img_strength(c, "orig50_i2imix_50") is None  # a set with a list of strengths has no single one
    assert img2img_strength(c, "orig50_syn1_50") is None


def test_the_strength_bars_are_drawn_per_experiment_beside_the_real_only_reference(tmp_path):
    rows = [row("resnet18", {"orig50": 0.80, "orig50_i2i25_50": 0.84, "orig50_i2i50_50": 0.86, "orig50_i2i75_50": 0.83}),
            row("vgg16", {"orig100": 0.9})]  # no img2img result: not drawn
    ctx = Context(cfg(), rows, tmp_path)
    [chart] = img2img(ctx)
    assert chart.file == "img2img_strength.png" and "strength" in chart.caption
    assert [r.model for r in chart.rows] == ["resnet18"]
    assert chart.mixes == ["orig50", "orig50_i2i25_50", "orig50_i2i50_50", "orig50_i2i75_50"]  # by strength
    ax = bar_chart(ctx, chart).axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()][1] == "50% real + 50% i2i25 (img2img strength 0.25)"
    assert np.allclose([p.get_width() + ax.get_xlim()[0] for p in ax.patches], [80, 84, 86, 83])
    figures, skipped = page.write_report(ctx, tmp_path / "out", "Numbers: test.", [])
    assert "img2img_strength.png" in figures and not any(s.startswith("img2img_strength.png") for s in skipped)
    with Image.open(tmp_path / "out" / "img2img_strength.png") as im:
        assert im.format == "PNG" and len(np.unique(np.asarray(im.convert("L")))) > 20
    md = (tmp_path / "out" / "report.md").read_text()
    assert "](img2img_strength.png)" in md and "50% real + 50% i2i50" in md
    # an img2img-only mixture is a synthetic-only mixture, like syn1_100
    [only] = synthetic_only(Context(cfg(), [row("resnet18", {"orig100": 0.9, "i2i50_100": 0.5})], tmp_path))
    assert "i2i50_100" in only.mixes


def test_without_img2img_runs_the_figure_is_skipped_with_a_line(tmp_path):
    rows = [row("resnet18", {"orig100": 0.93, "orig50_syn1_50": 0.91})]
    with pytest.raises(Skip, match=r"no experiment has both one of orig50 and one of orig50_i2i25_50, "):
        img2img(Context(cfg(), rows, tmp_path))
    with pytest.raises(Skip, match=r"defines no mixture drawing from an img2img set with a single strength"):
        img2img(Context(cfg(with_img2img=False), rows, tmp_path))
    out = tmp_path / "out"
    out.mkdir()
    (out / "img2img_strength.png").write_bytes(b"stale")  # from an earlier report: removed, never left beside report.md
    figures, skipped = page.write_report(Context(cfg(), rows, tmp_path), out, "N.", [])
    assert "img2img_strength.png" not in figures and not (out / "img2img_strength.png").exists()
    assert any(s.startswith("img2img_strength.png: skipped: no experiment has both") for s in skipped)
    assert "_Not drawn: no experiment has both one of orig50" in (out / "report.md").read_text()
