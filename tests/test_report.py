"""diffaug.report: results parsed from REAL `dvc.api.exp_show()` rows, figures drawn or skipped, the page.

One scratch git+DVC repository per module (a few seconds): the project's params.yaml, a stage that
writes a realistic metrics/summary.json per `model` from a table, two experiments (resnet18 with one
seed; vgg16 with three seeds, so test_acc_std), one queued experiment, dvclive logs for two of the
workspace's cells and one synthetic sample grid.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from diffaug.config import load_config
from diffaug.report import page
from diffaug.report.figures import Context, Skip, fig_classic, fig_half_half, fig_resnet_sizes, fig_synthetic_only, mixture_label
from diffaug.report.results import Result, parse_exp_show, select_rows

ROOT = Path(__file__).resolve().parents[1]
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
# A failed experiment as dvc.api.exp_show() (DVC 3.67.1) lists it after `dvc queue start` (the queue worker
# is too slow for this suite): State "Failed", and the summary it lists is its baseline's, not its own.
FAILED_EXP = {"Experiment": "edged-rube", "rev": "68b91a9", "typ": "branch_commit", "Created": "Nov 24, 2026",
              "parent": None, "State": "Failed", "Executor": "Workspace", "params.yaml:model": "fail",
              "metrics/summary.json:model": "c", "variant": "cifar", "recipe": "default", "seeds": 1.0,
              "test_acc.orig100": 0.8, "test_acc.orig50": 0.85}
FAKE_EVAL = """\
import json, os, yaml
model = yaml.safe_load(open("params.yaml"))["model"]
os.makedirs("metrics", exist_ok=True)
json.dump(json.load(open("summaries.json"))[model], open("metrics/summary.json", "w"), indent=1)
"""


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


def log_curves(directory: Path, epochs: int, with_val: bool) -> None:
    from dvclive import Live

    live = Live(str(directory), dvcyaml=None, save_dvc_exp=False)
    for e in range(epochs):
        live.log_metric("train/loss", 2.0 / (e + 1))
        live.log_metric("train/acc", 0.3 + 0.1 * e)
        live.log_metric("lr", 0.1)
        if with_val:
            live.log_metric("val/acc", 0.25 + 0.09 * e)
        live.next_step()
    live.end()


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("report") / "repo"
    path.mkdir()
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
    names = dvc(path, "exp", "ls", "--name-only").split()
    from dvc.api import exp_show as dvc_exp_show

    exp_show = dvc_exp_show(repo=str(path))
    # dvclive logs of two of the workspace's 15 cells (vgg16 x 5 mixes x 3 seeds), one with validation
    log_curves(path / "metrics/train/vgg16/orig100/seed-0", 4, with_val=True)
    log_curves(path / "metrics/train/vgg16/orig50_syn2_50/seed-0", 4, with_val=False)
    from PIL import Image

    (path / "data/synthetic/syn1").mkdir(parents=True)
    Image.new("RGB", (64, 40), (200, 30, 30)).save(path / "data/synthetic/syn1/samples.png")
    return {"path": path, "names": names, "exp_show": exp_show}


@pytest.fixture(scope="module")
def built(repo, tmp_path_factory) -> dict:
    """The report, built once by main() in the scratch repo (it reads `dvc.api.exp_show()` itself)."""
    out = tmp_path_factory.mktemp("out") / "reports"
    out.mkdir()
    (out / "resnet_sizes.png").write_bytes(b"stale picture from an earlier build")
    (out / "notes.txt").write_text("not ours")
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with cwd(repo["path"]), redirect_stdout(buf):
        start = time.perf_counter()
        page.main(["--out", str(out)])
        seconds = time.perf_counter() - start
    return {"out": out, "stdout": buf.getvalue(), "md": (out / "report.md").read_text(), "seconds": seconds}


def column(row: dict, name: str) -> str:
    """The key of `name`'s cell in an exp_show row: `name`, or `<file>:name` when two files share it."""
    return next(k for k in row if k == name or k.endswith(":" + name) and k.startswith("metrics/"))


def cfg():
    return load_config(ROOT / "params.yaml")


def result(model: str, acc: dict, kind: str = "experiment", ts: str | None = "2026-01-01T10:00:00", name: str = "x",
           std: dict | None = None, mixtures: dict | None = None) -> Result:
    from datetime import datetime

    return Result(name=name, rev=name.ljust(40, "0") if kind != "workspace" else "workspace", kind=kind,
                  timestamp=datetime.fromisoformat(ts) if ts else None, model=model, variant="cifar", recipe="default",
                  seeds=3 if std else 1, acc=acc, std=std or {}, mixtures=mixtures)


# ============================================================================ parsing real dvc output
def test_parser_reads_every_experiment_of_real_exp_show_output(repo):
    found, notes = parse_exp_show(repo["exp_show"])
    experiments = {r.name: r for r in found if r.kind == "experiment"}
    assert set(experiments) == set(repo["names"]) and len(experiments) == 2
    by_model = {r.model: r for r in experiments.values()}
    assert by_model["resnet18"].acc == SUMMARIES["resnet18"]["test_acc"] and by_model["resnet18"].std == {}
    assert by_model["vgg16"].acc == SUMMARIES["vgg16"]["test_acc"]
    assert by_model["vgg16"].std == SUMMARIES["vgg16"]["test_acc_std"] and by_model["vgg16"].seeds == 3
    for model, summary in SUMMARIES.items():  # the whole summary.json, nested again, for the figures' other columns
        assert by_model[model].summary == summary
    assert all(r.timestamp is not None and len(r.rev) == 7 for r in experiments.values())
    workspace = [r for r in found if r.kind == "workspace"]
    assert len(workspace) == 1 and workspace[0].model == "vgg16"  # the last `exp run` left vgg16 in the workspace
    assert not [r for r in found if r.kind == "commit"]  # the baseline commit has no summary.json
    assert any("queued" in n for n in notes), notes  # the queued resnet50 run is reported, not tabulated
    assert all(r.model != "resnet50" for r in found)
    assert by_model["vgg16"].mixtures is not None and by_model["vgg16"].mixtures["orig50_syn1_50"] == {"orig": 0.5, "syn1": 0.5}


def test_workspace_equal_to_an_experiment_is_dropped_and_one_row_per_config(repo):
    rows, notes = select_rows(parse_exp_show(repo["exp_show"])[0])
    assert [(r.model, r.kind) for r in rows] == [("resnet18", "experiment"), ("vgg16", "experiment")]
    assert {r.name for r in rows} == set(repo["names"])
    assert notes == []  # nothing superseded: the workspace was a copy


def test_changed_workspace_wins_only_when_its_summary_is_newer(repo, tmp_path):
    data = copy.deepcopy(repo["exp_show"])
    ws = next(e for e in data if e["rev"] == "workspace")
    ws[column(ws, "test_acc.orig100")] = 0.95
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


def test_failed_and_stale_runs_are_left_out(repo):
    data = copy.deepcopy(repo["exp_show"])
    data.append({**{k: None for k in data[0]}, **FAILED_EXP})
    stale = copy.deepcopy(next(e for e in data if e["Experiment"] in repo["names"]))
    stale["Experiment"] = "stale-one"
    stale["params.yaml:model"] = "densenet121"  # params changed, not rerun
    data.append(stale)
    found, notes = parse_exp_show(data)
    assert {r.name for r in found if r.kind == "experiment"} == set(repo["names"])
    assert any(n.startswith("edged-rube: failed") for n in notes), notes
    assert any(n.startswith("stale-one:") and "stale" in n for n in notes), notes


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


# ============================================================================ labels and skipping
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


def test_figures_without_their_mixtures_are_skipped_not_drawn(tmp_path):
    rows = [result("resnet18", {"orig100": 0.93, "orig50": 0.90}), result("vgg16", {"orig100": 0.91})]
    ctx = Context(cfg(), rows, tmp_path / "none", tmp_path / "none")
    for build, words in ((fig_resnet_sizes, "at least two of resnet18"), (fig_half_half, "no experiment has both"),
                         (fig_synthetic_only, "synthetic-only"), (fig_classic, "rotated/v-flipped baseline")):
        with pytest.raises(Skip, match=re.escape(words)):
            build(ctx)
    out = tmp_path / "out"
    figures, skipped = page.write_report(ctx, out, "Numbers: test.", [])
    assert sorted(figures) == ["acc_resnet18.png", "acc_vgg16.png"]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(figures)
    assert len(skipped) == 11  # resnet sizes, half/half, synthetic-only, classic, filtered, img2img, synthetic quality,
    md = (out / "report.md").read_text()  # exchange rate, curves, two sample grids
    assert md.count("_Not drawn:") == 9 and "93.00" in md and "–" in md  # vgg16 has no orig50


def test_a_run_that_defined_a_mixture_differently_is_not_drawn_under_todays_label(tmp_path):
    mixtures = dict(cfg().mixtures, orig50_syn1_50={"orig": 0.5, "syn1": 0.25})
    rows = [result("resnet18", {"orig100": 0.93, "orig50": 0.90, "orig50_syn1_50": 0.91}, mixtures=mixtures)]
    ctx = Context(cfg(), rows, tmp_path, tmp_path)
    assert ctx.value(rows[0], "orig50_syn1_50") is None and ctx.value(rows[0], "orig50") == (0.90, None)
    with pytest.raises(Skip):
        fig_half_half(ctx)
    table, footnotes = page.table_markdown(ctx)
    assert "91.00 †" in table and "syn1 0.25" in footnotes[0]


# ============================================================================ the whole report
def test_report_draws_every_applicable_figure_as_a_valid_png(built):
    from PIL import Image

    out, md = built["out"], built["md"]
    expected = {"acc_resnet18.png", "acc_vgg16.png", "half_real_half_synthetic.png", "synthetic_only.png",
                "classic_augmentation.png", "training_curves.png", "samples_syn1.png"}
    pngs = {p.name for p in out.glob("*.png")}
    assert pngs == expected  # the stale resnet_sizes.png is gone
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


def test_report_table_has_the_numbers_and_says_where_they_come_from(built, repo):
    md = built["md"]
    for name in repo["names"]:
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
    assert "`dvc.api.exp_show()`" in md and str(repo["path"]) in md
    assert re.search(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}", md)
    assert "training curves of the workspace's vgg16 cells; 13 of 15 cells have no log yet" in md


def test_cli_with_saved_exp_json(repo, tmp_path):
    saved = tmp_path / "exp.json"
    saved.write_text(json.dumps(repo["exp_show"]))
    out = tmp_path / "reports"
    proc = subprocess.run([sys.executable, "-m", "diffaug.report", "--exp-json", str(saved), "--out", str(out)],
                          cwd=repo["path"], env=env(), text=True, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert "built in" in proc.stdout and (out / "acc_vgg16.png").is_file()
    assert f"as saved in `{saved}`" in (out / "report.md").read_text()


# ============================================================================ errors: one line, exit 2
def run_main(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        page.main(args)
    err = capsys.readouterr().err.strip()
    return exc.value.code, err


def test_no_results_exits_2_with_one_line(repo, tmp_path, capsys):
    data = copy.deepcopy(repo["exp_show"])
    # keep only the queued experiment and the summary-less baseline commit
    data = [e for e in data if e["typ"] == "baseline" or e["State"] == "Queued"]
    for entry in data:
        if entry["rev"] == "workspace":
            entry.update({k: None for k in entry if k.startswith(("test_acc", "metrics/"))})
    saved = tmp_path / "exp.json"
    saved.write_text(json.dumps(data))
    code, err = run_main(["--params", str(ROOT / "params.yaml"), "--exp-json", str(saved), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: no results") and "queued" in err
    assert not (tmp_path / "o").exists()


def test_dvc_failure_or_absence_exits_2_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not a DVC repository
    code, err = run_main(["--params", str(ROOT / "params.yaml")], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "dvc.api.exp_show()" in err and "failed" in err
    monkeypatch.setitem(sys.modules, "dvc.api", None)  # as if dvc were not installed
    code, err = run_main(["--params", str(ROOT / "params.yaml")], capsys)
    assert code == 2 and err == "error: dvc is not available (not importable); install it or pass --exp-json FILE"
    (tmp_path / "bad.yaml").write_text("model: resnet19\n")
    code, err = run_main(["--params", str(tmp_path / "bad.yaml")], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "model" in err
