"""End to end: the real dvc.yaml in a scratch git repository, tiny params, no network.

The tests work in one copy of the shared reproduced repository (conftest's e2e_repo); they run in file
order, in one xdist worker (--dist loadfile), and build on each other like a user's session would.
"""
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import E2E_MIXES, copy_repo, e2e_log
from diffaug.report.results import parse_exp_show, run_exp_show
from diffaug.sandbox.demo import run, tool_env

pytestmark = pytest.mark.slow
MIXES = E2E_MIXES
STAGES = ["prepare", "generate_syn1", "generate_syn2", "build_mixtures"] + [f"train@resnet18-{m}" for m in MIXES] + ["evaluate"]


def dvc(repo: Path, *args: str, check: bool = True) -> str:
    proc = run(["dvc", *args], repo, check=False)
    if check and proc.returncode:
        raise AssertionError(f"dvc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}")
    return proc.stdout


def git(repo: Path, *args: str) -> str:
    return run(["git", *args], repo).stdout


@pytest.fixture(scope="module")
def repo(e2e_repo, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    return {"path": copy_repo(e2e_repo, root / "repo"), "repro_log": e2e_log(e2e_repo), "root": root}


def test_repro_runs_every_stage(repo):
    log = repo["repro_log"]
    for stage in STAGES:
        assert f"Running stage '{stage}'" in log, f"{stage} did not run:\n{log}"
    summary = json.loads((repo["path"] / "metrics" / "summary.json").read_text())
    assert set(summary["test_acc"]) == set(MIXES)
    assert all(0.0 <= a <= 1.0 for a in summary["test_acc"].values())
    assert summary["model"] == "resnet18"
    for name in ("syn1", "syn2"):
        assert (repo["path"] / "data" / "synthetic" / name / "samples.png").stat().st_size > 0


def test_status_is_clean_and_dag_shows_the_six_stage_groups(repo):
    assert "Data and pipelines are up to date." in dvc(repo["path"], "status")
    dag = dvc(repo["path"], "dag", "--md")
    for stage in STAGES:
        assert stage in dag


def test_plots_render_without_warnings(repo):
    proc = run(["dvc", "plots", "show", "--json"], repo["path"], check=False)
    assert proc.returncode == 0, proc.stdout
    assert "WARNING" not in proc.stdout and "failed to load" not in proc.stdout, proc.stdout
    shown = json.loads(proc.stdout[proc.stdout.index("{"):])
    paths = set(shown["data"])
    assert {f"metrics/train/resnet18/{m}/seed-0/plots/metrics/train/acc.tsv" for m in MIXES} <= paths  # dvclive's own
    assert "Test accuracy per mixture" in paths and "Confusion matrix (first mixture of mixes)" in paths


def test_changing_syn2_prompt_reruns_syn2_but_not_syn1(repo):
    path = repo["path"]
    original = (path / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params["synthetic"]["sets"]["syn2"]["prompt"] = "a drawing of a {label}"
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        status = json.loads(dvc(path, "status", "--json"))
        assert "generate_syn2" in status and "generate_syn1" not in status
        assert not any(s.startswith("train@") for s in status)  # only after syn2 is regenerated can its mixtures change
    finally:
        (path / "params.yaml").write_text(original)
    assert "Data and pipelines are up to date." in dvc(path, "status")


def test_changing_one_mixture_reruns_only_its_train_cell(repo):
    path = repo["path"]
    original = (path / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params["mixtures"]["orig50_syn1_50"] = {"orig": 0.5, "syn1": 0.25}
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        log = dvc(path, "repro", "build_mixtures")
        assert "Running stage 'build_mixtures'" in log
        status = json.loads(dvc(path, "status", "--json"))
        assert sorted(s for s in status if s.startswith("train@")) == ["train@resnet18-orig50_syn1_50"]
    finally:
        (path / "params.yaml").write_text(original)
        dvc(path, "repro", "build_mixtures")
    assert "Data and pipelines are up to date." in dvc(path, "status")


def test_exp_run_with_another_model_makes_its_cells_and_a_table_row(repo):
    path = repo["path"]
    git(path, "add", "-A")  # the shared repository committed its run; the tests above changed nothing for good
    git(path, "commit", "-q", "--allow-empty", "-m", "baseline run")
    log = dvc(path, "exp", "run", "-n", "r50", "-S", "model=resnet50")
    for mix in MIXES:
        assert f"Running stage 'train@resnet50-{mix}'" in log
    assert "train@resnet18" not in log
    results, _ = parse_exp_show(run_exp_show(cwd=path)[0])
    rows = {r.model: r for r in results if r.kind == "experiment"}
    assert set(rows) == {"resnet50"}, results
    assert set(rows["resnet50"].acc) == set(MIXES)
    md = dvc(path, "exp", "show", "--md")
    assert "test_acc.orig100" in md and "r50" in md
    dvc(path, "exp", "apply", "r50")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "resnet50 run")


def test_push_clone_pull_then_nothing_to_rerun(repo):
    path, root = repo["path"], repo["root"]
    storage = root / "dvc-storage"
    dvc(path, "remote", "add", "-d", "-f", "local", str(storage))
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "default remote")
    dvc(path, "push")
    clone = root / "clone"
    subprocess.run(["git", "clone", "-q", str(path), str(clone)], check=True, env=tool_env())
    assert not (clone / "data" / "synthetic" / "syn1").exists()
    dvc(clone, "pull")
    assert "Data and pipelines are up to date." in dvc(clone, "status")
    log = dvc(clone, "repro")
    assert "Running stage" not in log, log
    for name in ("syn1", "syn2"):
        assert sorted(p.name for p in (clone / "data" / "synthetic" / name).iterdir()) == \
            sorted(p.name for p in (path / "data" / "synthetic" / name).iterdir())
    shutil.rmtree(clone)


def test_pull_of_one_stage_restores_exactly_that_output(repo):
    path, root = repo["path"], repo["root"]
    clone = root / "clone-syn1"
    subprocess.run(["git", "clone", "-q", str(path), str(clone)], check=True, env=tool_env())
    dvc(clone, "pull", "generate_syn1")
    syn1 = sorted(p.relative_to(clone) for p in (clone / "data" / "synthetic" / "syn1").rglob("*") if p.is_file())
    assert syn1 == sorted(p.relative_to(path) for p in (path / "data" / "synthetic" / "syn1").rglob("*") if p.is_file())
    assert all((clone / p).read_bytes() == (path / p).read_bytes() for p in syn1)
    assert not (clone / "data" / "synthetic" / "syn2").exists() and not list((clone / "models").rglob("*.pt"))
    assert not (clone / "data" / "prepared" / "train.npz").exists()
    shutil.rmtree(clone)


def test_import_a_synthetic_set_from_another_copy(repo):
    path, root = repo["path"], repo["root"]
    other = root / "consumer"
    other.mkdir()
    run(["git", "init", "-q"], other)
    dvc(other, "init", "-q")
    dvc(other, "import", str(path), "data/synthetic/syn2", "-o", "syn2")
    imported = sorted(p.relative_to(other / "syn2") for p in (other / "syn2").rglob("*") if p.is_file())
    original = sorted(p.relative_to(path / "data" / "synthetic" / "syn2") for p in (path / "data" / "synthetic" / "syn2").rglob("*") if p.is_file())
    assert imported == original and "manifest.json" in {p.name for p in imported}
    assert (other / "syn2.dvc").is_file()
    from diffaug.formats.synthetic import load_synthetic

    images, labels = load_synthetic(other / "syn2")  # verifies every shard's sha256
    assert len(images) == len(labels) > 0


def test_queued_sweep_of_two_models_feeds_the_report(repo):
    path = repo["path"]
    dvc(path, "exp", "run", "--queue", "-S", "model=resnet18,resnet50", "-S", "mixes=[orig100,syn2_100]")
    dvc(path, "queue", "start", "-j", "1")
    deadline = time.time() + 600
    while time.time() < deadline:
        status = dvc(path, "queue", "status")
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    assert "Failed" not in status and "Queued" not in status and "Running" not in status, status
    results, _ = parse_exp_show(run_exp_show(cwd=path)[0])
    swept = [r for r in results if r.kind == "experiment" and set(r.acc) == {"orig100", "syn2_100"}]
    assert sorted(r.model for r in swept) == ["resnet18", "resnet50"], results
    out = repo["root"] / "report"
    proc = run([sys.executable, "-m", "diffaug.report", "--out", str(out)], path, check=False)
    assert proc.returncode == 0, proc.stdout
    page = (out / "report.md").read_text()
    for model in ("resnet18", "resnet50"):
        assert (out / f"acc_{model}.png").stat().st_size > 10_000
        assert model in page
    dvc(path, "queue", "stop", check=False)
