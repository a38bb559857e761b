"""End to end: the real dvc.yaml in a scratch git repository, tiny params, no network.

One sandbox per module (building and running it takes a minute or two on 2 cores); the tests
run in file order and build on each other like a user's session would.
"""
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from diffaug.demo import make_sandbox, run, tool_env

pytestmark = pytest.mark.slow
MIXES = ["orig100", "orig50_syn1_50", "syn2_100", "orig50_rot50"]
STAGES = ["prepare", "generate_syn1", "generate_syn2", "build_mixtures"] + [f"train@resnet18-{m}" for m in MIXES] + ["evaluate"]


def dvc(repo: Path, *args: str, check: bool = True) -> str:
    proc = run(["dvc", *args], repo, check=False)
    if check and proc.returncode:
        raise AssertionError(f"dvc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}")
    return proc.stdout


def git(repo: Path, *args: str) -> str:
    return run(["git", *args], repo).stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    sandbox = make_sandbox(root / "repo", mixes=MIXES, epochs=1, images_per_class=4, per_class_real=30)
    out = dvc(sandbox, "repro")
    return {"path": sandbox, "repro_log": out, "root": root}


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
    assert {f"metrics/curves/{m}.tsv" for m in MIXES} <= paths
    assert "Test accuracy per mixture" in paths and "Confusion matrix (first mixture of mixes)" in paths


def test_changing_syn2_prompt_reruns_syn2_but_not_syn1(repo):
    path = repo["path"]
    original = (path / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params["synthetic"]["syn2"]["prompt"] = "a drawing of a {label}"
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
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "baseline run")
    log = dvc(path, "exp", "run", "-n", "vgg", "-S", "model=vgg16")
    for mix in MIXES:
        assert f"Running stage 'train@vgg16-{mix}'" in log
    assert "train@resnet18" not in log
    table = json.loads(dvc(path, "exp", "show", "--json"))
    rows = {}
    for commit in table:
        for exp in [commit] + [e for e in commit.get("experiments") or []]:
            for rev in exp.get("revs", [exp]):
                data = rev.get("data") or {}
                name = rev.get("name") or data.get("name") or rev.get("rev")
                metrics = (data.get("metrics") or {}).get("metrics/summary.json", {}).get("data", {})
                if metrics:
                    rows[name] = metrics
    models = {m["model"] for m in rows.values()}
    assert {"resnet18", "vgg16"} <= models, rows
    for metrics in rows.values():
        assert set(metrics["test_acc"]) == set(MIXES)
    md = dvc(path, "exp", "show", "--md")
    assert "test_acc.orig100" in md and "vgg" in md
    dvc(path, "exp", "apply", "vgg")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "vgg16 run")


def test_push_clone_pull_then_nothing_to_rerun(repo):
    path, root = repo["path"], repo["root"]
    storage = root / "dvc-storage"
    dvc(path, "remote", "add", "-d", "local", str(storage))
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
