"""diffaug.report: results read from `dvc exp show --json` output, figures drawn or skipped, the page.

Most tests read tests/data/exp_show.json: the real output of `dvc exp show --json` (DVC 3.67) in the
scratch repository that the slow end-to-end test at the bottom builds (params trimmed to the keys the
report reads): two experiments (resnet18 with one seed; vgg16 with three seeds, so test_acc_std), the
workspace holding vgg16's numbers, and one queued experiment. The end-to-end test builds that repository
again with real `dvc exp run`s and checks that the report read live from it matches the saved file.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import subprocess
import sys
import time
from contextlib import redirect_stdout
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import yaml

from diffaug.config import load_config
from diffaug.report import page, results
from diffaug.report.figures import Context, Skip, bar_chart, classic, half_half, mixture_label, resnet_sizes, synthetic_only
from diffaug.report.results import Result, parse_exp_show, select_rows

ROOT = Path(__file__).resolve().parents[1]
SAVED = Path(__file__).parent / "data" / "exp_show.json"
EXPERIMENTS = {"snide-toil": "resnet18", "bosky-doek": "vgg16"}  # the saved file's experiments; beaky-lats is queued
SUMMARIES = {
    "resnet18": {"model": "resnet18", "variant": "cifar", "recipe": "default", "seeds": 1,
                 "test_acc": {"orig100": 0.9312, "orig50": 0.9047, "orig50_syn1_50": 0.9121, "syn1_100": 0.6234,
                              "orig50_rot50": 0.8958},
                 "test_loss": {"orig100": 0.31, "orig50": 0.37, "orig50_syn1_50": 0.35, "syn1_100": 1.41, "orig50_rot50": 0.39},
                 "syn_recognised": {"syn1": 0.61}},
    "vgg16": {"model": "vgg16", "variant": "cifar", "recipe": "default", "seeds": 3,
              "test_acc": {"orig100": 0.9188, "orig50": 0.8811, "orig50_syn1_50": 0.8902, "orig50_syn2_50": 0.8876,
                           "syn2_100": 0.6645},
              "test_acc_std": {"orig100": 0.0021, "orig50": 0.0035, "orig50_syn1_50": 0.0029, "orig50_syn2_50": 0.0043,
                               "syn2_100": 0.0112},
              "test_loss": {"orig100": 0.33, "orig50": 0.41, "orig50_syn1_50": 0.39, "orig50_syn2_50": 0.4, "syn2_100": 1.2}},
}
WORKSPACE_MIXES = ["orig100", "orig50", "orig50_syn1_50", "orig50_syn2_50", "syn2_100"]
FAKE_EVAL = """\
import json, os, yaml
model = yaml.safe_load(open("params.yaml"))["model"]
os.makedirs("metrics", exist_ok=True)
json.dump(json.load(open("summaries.json"))[model], open("metrics/summary.json", "w"), indent=1)
"""


def saved() -> list:
    return json.loads(SAVED.read_text())


def experiment(data: list, name: str) -> dict:
    return next(e["revs"][0] for e in data[1]["experiments"] if e["name"] == name)


def summary_of(rev: dict) -> dict:
    return rev["data"]["metrics"]["metrics/summary.json"]["data"]


def cfg():
    return load_config(ROOT / "params.yaml")


def result(model: str, acc: dict, kind: str = "experiment", ts: str | None = "2026-01-01T10:00:00", name: str = "x",
           std: dict | None = None, mixtures: dict | None = None) -> Result:
    return Result(name=name, rev=name.ljust(40, "0") if kind != "workspace" else "workspace", kind=kind,
                  timestamp=datetime.fromisoformat(ts) if ts else None, model=model, variant="cifar", recipe="default",
                  seeds=3 if std else 1, acc=acc, std=std or {}, mixtures=mixtures)


# ============================================================================ reading dvc's output
def test_parser_reads_every_experiment_of_real_exp_show_output():
    found, notes = parse_exp_show(saved())
    experiments = {r.name: r for r in found if r.kind == "experiment"}
    assert {n: r.model for n, r in experiments.items()} == EXPERIMENTS
    by_model = {r.model: r for r in experiments.values()}
    assert by_model["resnet18"].acc == SUMMARIES["resnet18"]["test_acc"] and by_model["resnet18"].std == {}
    assert by_model["vgg16"].acc == SUMMARIES["vgg16"]["test_acc"]
    assert by_model["vgg16"].std == SUMMARIES["vgg16"]["test_acc_std"] and by_model["vgg16"].seeds == 3
    for model, summary in SUMMARIES.items():  # the whole summary.json, for the quality and exchange-rate tables
        assert by_model[model].summary == summary
    assert all(r.timestamp is not None and len(r.rev) == 40 for r in experiments.values())
    workspace = [r for r in found if r.kind == "workspace"]
    assert len(workspace) == 1 and workspace[0].model == "vgg16"  # the last `exp run` left vgg16 in the workspace
    assert not [r for r in found if r.kind == "commit"]  # the baseline commit has no summary.json
    assert notes == ["beaky-lats: queued, not run yet; left out"]  # the queued resnet50 run: reported, not tabulated
    assert by_model["vgg16"].mixtures is not None and by_model["vgg16"].mixtures["orig50_syn1_50"] == {"orig": 0.5, "syn1": 0.5}


def test_workspace_equal_to_an_experiment_is_dropped_and_one_row_per_config():
    rows, notes = select_rows(parse_exp_show(saved())[0])
    assert [(r.model, r.kind, r.name) for r in rows] == [("resnet18", "experiment", "snide-toil"),
                                                        ("vgg16", "experiment", "bosky-doek")]
    assert notes == []  # nothing superseded: the workspace was a copy


def test_changed_workspace_wins_only_when_its_summary_is_newer(tmp_path):
    data = saved()
    summary_of(data[0])["test_acc"]["orig100"] = 0.95
    summary = tmp_path / "metrics" / "summary.json"
    summary.parent.mkdir()
    summary.write_text("{}")
    os.utime(summary, (time.time() + 3600, time.time() + 3600))
    rows, notes = select_rows(parse_exp_show(data, workspace_root=tmp_path)[0])
    vgg = next(r for r in rows if r.model == "vgg16")
    assert vgg.kind == "workspace" and vgg.acc["orig100"] == 0.95
    assert any("workspace is the most recent" in n for n in notes), notes
    os.utime(summary, (1_000_000_000, 1_000_000_000))  # 2001: older than the experiment
    rows, _ = select_rows(parse_exp_show(data, workspace_root=tmp_path)[0])
    assert next(r for r in rows if r.model == "vgg16").kind == "experiment"
    rows, _ = select_rows(parse_exp_show(data)[0])  # undated workspace (--exp-json): a named result wins
    assert next(r for r in rows if r.model == "vgg16").kind == "experiment"


def test_failed_stale_and_unreadable_runs_are_left_out():
    data = saved()
    exps = data[1]["experiments"]
    for name, change in (("edged-rube", "failed"), ("stale-one", "stale"), ("broken-one", "unreadable")):
        entry = copy.deepcopy(next(e for e in exps if e["name"] == "snide-toil"))
        entry["name"] = entry["revs"][0]["name"] = name
        rev = entry["revs"][0]["data"]
        if change == "failed":  # as DVC lists it: the summary it started from, its baseline's numbers
            entry["executor"] = {"state": "failed", "name": "dvc-task", "local": None}
        elif change == "stale":
            rev["params"]["params.yaml"]["data"]["model"] = "densenet121"  # params changed, not rerun
        else:
            rev["metrics"]["metrics/summary.json"] = {"error": {"type": "JSONDecodeError", "msg": "Expecting value"}}
        exps.append(entry)
    found, notes = parse_exp_show(data)
    assert {r.name for r in found if r.kind == "experiment"} == set(EXPERIMENTS)
    assert "edged-rube: failed; left out" in notes
    assert any(n.startswith("stale-one:") and "stale" in n for n in notes), notes
    assert "broken-one: dvc could not read metrics/summary.json (JSONDecodeError); left out" in notes


def test_most_recent_result_per_config_wins():
    old = result("resnet18", {"orig100": 0.90}, ts="2026-01-01T10:00:00", name="old-exp")
    new = result("resnet18", {"orig100": 0.92}, ts="2026-01-02T10:00:00", name="new-exp")
    commit = result("resnet18", {"orig100": 0.91}, kind="commit", ts="2026-01-02T10:00:00", name="main")
    other = result("vgg16", {"orig100": 0.89}, ts="2025-01-01T00:00:00", name="vgg-exp")
    rows, notes = select_rows([old, commit, other, new])
    assert [r.name for r in rows] == ["new-exp", "vgg-exp"]  # tie at the same second: experiment beats commit
    assert notes == ["resnet18 (cifar, default): new-exp is the most recent of 3; older: main (main000), old-exp"]
    undated = result("resnet18", {"orig100": 0.99}, kind="workspace", ts=None)
    assert select_rows([undated, old])[0][0].name == "old-exp"
    assert select_rows([undated])[0][0].kind == "workspace"  # the only result: kept


# ============================================================================ labels, charts and skipping
def test_mixture_labels_come_from_fractions():
    mixtures = cfg().mixtures
    assert mixture_label(mixtures["orig100"]) == "100% real"
    assert mixture_label(mixtures["orig50_syn1_50"]) == "50% real + 50% syn1"
    assert mixture_label(mixtures["syn2_100"]) == "100% syn2"
    assert mixture_label(mixtures["orig100_syn1_100_syn2_100"]) == "100% real + 100% syn1 + 100% syn2"
    assert mixture_label(mixtures["orig50_rot50"]) == "50% real + rotated copies"
    assert mixture_label(mixtures["orig50_rot50_vflip50"]) == "50% real + rotated + v-flipped copies"
    assert mixture_label({"orig": 0.5, "vflip": 0.25}) == "50% real + 25% v-flipped copies"
    assert mixture_label({"orig": 0.125}) == "12.5% real"


def test_the_bar_chart_draws_each_value_its_std_and_na_for_a_missing_cell(tmp_path):
    rows = [result("resnet18", {"orig100": 0.93, "orig50": 0.90}), result("vgg16", {"orig100": 0.91}, std={"orig100": 0.02})]
    ctx = Context(cfg(), rows, tmp_path)
    [chart] = half_half(Context(cfg(), [result("resnet18", {"orig50": 0.9, "orig50_syn1_50": 0.91})], tmp_path))
    assert chart.file == "half_real_half_synthetic.png" and chart.mixes == ["orig50", "orig50_syn1_50"]
    fig = bar_chart(ctx, chart._replace(rows=rows, mixes=["orig100", "orig50"]))
    ax = fig.axes[0]
    floor = ax.get_xlim()[0]
    assert floor == 85  # every bar within 25% of the longest: the axis is zoomed, and says so
    assert "[axis starts at 85%, not 0]" in ax.get_xlabel() and "mean ± std over seeds" in ax.get_xlabel()
    assert sorted(round(p.get_width() + floor, 2) for p in ax.patches) == [90.0, 91.0, 93.0]
    assert sorted(t.get_text() for t in ax.texts) == ["90.0", "91.0 ± 2.0", "93.0", "n/a"]  # vgg16 has no orig50
    assert [t.get_text() for t in ax.get_yticklabels()] == ["100% real", "50% real"]


def test_figures_without_their_mixtures_are_skipped_not_drawn(tmp_path):
    rows = [result("resnet18", {"orig100": 0.93, "orig50": 0.90}), result("vgg16", {"orig100": 0.91})]
    ctx = Context(cfg(), rows, tmp_path / "none")
    for build, words in ((resnet_sizes, "at least two of resnet18"), (half_half, "no experiment has both"),
                         (synthetic_only, "no experiment has both one of orig100 and one of syn1_100"),
                         (classic, "no experiment has both one of orig50_rot50")):
        with pytest.raises(Skip, match=re.escape(words)):
            build(ctx)
    out = tmp_path / "out"
    figures, skipped = page.write_report(ctx, out, "Numbers: test.", [])
    assert sorted(figures) == ["acc_resnet18.png", "acc_vgg16.png"]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(figures)
    assert len(skipped) == 8  # resnet sizes, half/half, synthetic-only, classic, filtered, img2img, two sample grids
    md = (out / "report.md").read_text()
    assert md.count("_Not drawn:") == 6 and "93.00" in md and "–" in md  # vgg16 has no orig50
    assert "_No experiment has syn_fd columns" in md and "_No experiment has exchange-rate columns" in md


def test_a_run_that_defined_a_mixture_differently_is_not_drawn_under_todays_label(tmp_path):
    mixtures = dict(cfg().mixtures, orig50_syn1_50={"orig": 0.5, "syn1": 0.25})
    rows = [result("resnet18", {"orig100": 0.93, "orig50": 0.90, "orig50_syn1_50": 0.91}, mixtures=mixtures)]
    ctx = Context(cfg(), rows, tmp_path)
    assert ctx.value(rows[0], "orig50_syn1_50") is None and ctx.value(rows[0], "orig50") == (0.90, None)
    with pytest.raises(Skip):
        half_half(ctx)
    table, footnotes = page.table_markdown(ctx)
    assert "91.00 †" in table and "syn1 0.25" in footnotes[0]


# ============================================================================ the whole report, from the saved output
@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """The report, built once by main() from the saved `dvc exp show --json` output."""
    root = tmp_path_factory.mktemp("built")
    out = root / "reports"
    out.mkdir()
    (out / "resnet_sizes.png").write_bytes(b"stale picture from an earlier build")
    (out / "notes.txt").write_text("not ours")
    from PIL import Image

    (root / "synthetic" / "syn1").mkdir(parents=True)
    Image.new("RGB", (64, 40), (200, 30, 30)).save(root / "synthetic" / "syn1" / "samples.png")
    buf = io.StringIO()
    with redirect_stdout(buf):
        page.main(["--params", str(ROOT / "params.yaml"), "--exp-json", str(SAVED), "--out", str(out),
                   "--synthetic", str(root / "synthetic")])
    return {"out": out, "stdout": buf.getvalue(), "md": (out / "report.md").read_text()}


def test_report_draws_every_applicable_figure_as_a_valid_png(built):
    from PIL import Image

    out, md = built["out"], built["md"]
    expected = {"acc_resnet18.png", "acc_vgg16.png", "half_real_half_synthetic.png", "synthetic_only.png",
                "classic_augmentation.png", "samples_syn1.png"}
    assert {p.name for p in out.glob("*.png")} == expected  # the stale resnet_sizes.png is gone
    assert (out / "notes.txt").exists()  # other files in --out are left alone
    for name in expected:
        with Image.open(out / name) as im:
            im.verify()
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] >= 60 and im.size[1] >= 40
            if name != "samples_syn1.png":
                assert len(np.unique(np.asarray(im.convert("L")))) > 20, f"{name} looks blank"
        assert f"]({name})" in md, f"report.md does not embed {name}"
    assert set(re.findall(r"\]\(([^)]+\.png)\)", md)) == expected  # and references nothing else


def test_report_skips_with_a_reason_what_the_results_lack(built):
    out, stdout, md = built["out"], built["stdout"], built["md"]
    assert "resnet_sizes.png: skipped: needs results for at least two of resnet18, resnet34, resnet50; have resnet18" in stdout
    assert "samples_syn2.png: skipped:" in stdout and "does not exist" in stdout
    assert "resnet_sizes.png" not in md and not (out / "resnet_sizes.png").exists()
    assert "_Not drawn: needs results for at least two of" in md
    assert "queued" in stdout  # the queued resnet50 run is mentioned
    assert re.search(r"built in \d+\.\d s", stdout)


def test_report_table_has_the_numbers_and_says_where_they_come_from(built):
    md = built["md"]
    for name in EXPERIMENTS:
        assert name in md
    for model, summary in SUMMARIES.items():
        for mix, acc in summary["test_acc"].items():
            std = summary.get("test_acc_std", {}).get(mix)
            cell = f"{acc * 100:.2f}" + (f" ± {std * 100:.2f}" if std is not None else "")
            assert cell in md, f"{model} {mix}: {cell} missing"
    table = [ln for ln in md.splitlines() if ln.startswith("| ") and ("resnet18 |" in ln or "vgg16 |" in ln)]
    assert len(table) == 2  # a row per experiment, the workspace copy folded into vgg16's
    header = next(ln for ln in md.splitlines() if ln.startswith("| experiment"))
    for label in ("100% real", "50% real + 50% syn1", "50% real + rotated copies", "100% syn2"):
        assert f"| {label} |" in header or header.endswith(f"| {label} |")
    assert f"as saved in `{SAVED}` (`dvc exp show --json`)" in md
    assert re.search(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}", md)
    assert "## Training curves" in md and "`dvc plots show`" in md  # dvclive's curves, drawn by dvc


# ============================================================================ errors: one line, exit 2
def run_main(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        page.main(args)
    err = capsys.readouterr().err.strip()
    return exc.value.code, err


def test_no_results_exits_2_with_one_line(tmp_path, capsys):
    data = saved()
    data[1]["experiments"] = [e for e in data[1]["experiments"] if e["name"] == "beaky-lats"]  # only the queued one
    data[0]["data"]["metrics"] = {}
    (tmp_path / "exp.json").write_text(json.dumps(data))
    code, err = run_main(["--params", str(ROOT / "params.yaml"), "--exp-json", str(tmp_path / "exp.json"),
                          "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: no results") and "queued" in err
    assert not (tmp_path / "o").exists()
    (tmp_path / "bad.json").write_text('{"rows": []}')
    code, err = run_main(["--params", str(ROOT / "params.yaml"), "--exp-json", str(tmp_path / "bad.json")], capsys)
    assert code == 2 and err.startswith("error: exp show: expected the JSON list that `dvc exp show --json` prints")


def test_dvc_absence_or_bad_params_exit_2_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(results.importlib.util, "find_spec", lambda name: None)  # as if dvc were not installed
    code, err = run_main(["--params", str(ROOT / "params.yaml")], capsys)
    assert code == 2 and err == "error: dvc is not available (not importable); install it or pass --exp-json FILE"
    (tmp_path / "bad.yaml").write_text("model: resnet19\n")
    code, err = run_main(["--params", str(tmp_path / "bad.yaml")], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "model" in err


# ============================================================================ end to end, with dvc (slow)
def env() -> dict:
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}


def sh(repo: Path, *cmd: str) -> str:
    proc = subprocess.run(cmd, cwd=repo, env=env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}"
    return proc.stdout


def dvc(repo: Path, *args: str) -> str:
    return sh(repo, sys.executable, "-m", "dvc", *args)


@contextlib.contextmanager
def cwd(path: Path):
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def build_scratch_repo(path: Path) -> None:
    """What tests/data/exp_show.json was saved from: a stage writing each model's summary, two runs, one queued."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update({"model": "resnet18", "mixes": WORKSPACE_MIXES})
    params["train"]["seeds"] = [0, 1, 2]
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (path / "summaries.json").write_text(json.dumps(SUMMARIES))
    (path / "fake_eval.py").write_text(FAKE_EVAL)
    (path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"evaluate": {
        "cmd": f"{sys.executable} fake_eval.py", "deps": ["fake_eval.py", "summaries.json"], "params": ["model"],
        "metrics": [{"metrics/summary.json": {"cache": False}}]}}}))
    sh(path, "git", "init", "-q")
    dvc(path, "init", "-q")
    sh(path, "git", "add", "-A")
    sh(path, "git", "commit", "-qm", "scratch")
    dvc(path, "exp", "run", "-q", "-S", "model=resnet18")
    dvc(path, "exp", "run", "-q", "-S", "model=vgg16")  # the workspace now holds vgg16's results
    dvc(path, "exp", "run", "--queue", "-S", "model=resnet50")  # queued, never started


@pytest.mark.slow
def test_end_to_end_with_live_dvc_matches_the_saved_output(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    build_scratch_repo(repo)
    live, _ = results.run_exp_show(cwd=repo)
    key = lambda r: (r.kind, r.model, r.seeds, r.acc, r.std, r.summary)  # noqa: E731  (the saved params are trimmed)
    assert sorted(map(str, map(key, parse_exp_show(live)[0]))) == sorted(map(str, map(key, parse_exp_show(saved())[0])))
    out = tmp_path / "reports"
    with cwd(repo), redirect_stdout(io.StringIO()):
        page.main(["--params", str(repo / "params.yaml"), "--out", str(out)])  # runs `dvc exp show --json` itself
    md = (out / "report.md").read_text()
    assert "`dvc exp show --json`" in md and str(repo) in md and (out / "acc_vgg16.png").is_file()
    sh(repo, "git", "commit", "-qm", "second commit", "--allow-empty")  # HEAD moves: its experiments are the first's
    with cwd(repo), redirect_stdout(io.StringIO()):
        page.main(["--params", str(repo / "params.yaml"), "--out", str(out), "--all-commits"])
    md = (out / "report.md").read_text()
    assert "`dvc exp show --json --all-commits`" in md and all(name in md for name in EXPERIMENTS.values())
    proc = subprocess.run([sys.executable, "-m", "diffaug.report", "--params", str(repo / "params.yaml")], cwd=tmp_path,
                          env=env(), text=True, capture_output=True)  # not a DVC repository
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and "`dvc exp show --json` failed" in err[0], proc.stderr
