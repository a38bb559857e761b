"""End to end in the dvc sandbox (slow): a filtered mixture added to the shared reproduced repository
(conftest's e2e_repo, copied) runs only its own stages, they rerun when the classifier that filters it
changes, and `dvc artifacts get` fetches the synthetic sets and classifiers from a fresh clone."""
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import E2E_MIXES, copy_repo
from diffaug.sandbox.demo import DEMO_FILTERED, DEMO_FILTERED_MIX, run, tool_env

pytestmark = pytest.mark.slow
FILTERED = DEMO_FILTERED_MIX


def dvc(repo: Path, *args: str, check: bool = True) -> str:
    proc = run(["dvc", *args], repo, check=False)
    if check and proc.returncode:
        raise AssertionError(f"dvc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}")
    return proc.stdout


@pytest.fixture(scope="module")
def repo(e2e_repo, tmp_path_factory):
    """The shared repository with the demo's confidence-filtered mixture added, then `dvc repro`."""
    root = tmp_path_factory.mktemp("sharing")
    sandbox = copy_repo(e2e_repo, root / "repo")
    params = yaml.safe_load((sandbox / "params.yaml").read_text())
    params["mixtures"][FILTERED] = DEMO_FILTERED[f"mixtures.{FILTERED}"]
    params["filtered_mixes"] = DEMO_FILTERED["filtered_mixes"]
    (sandbox / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log = dvc(sandbox, "repro")
    return {"path": sandbox, "root": root, "log": log}


def test_filtered_mixture_is_built_trained_and_evaluated(repo):
    for stage in (f"filter@{FILTERED}", f"train_filtered@resnet18-{FILTERED}", "evaluate"):
        assert f"Running stage '{stage}'" in repo["log"], repo["log"]
    assert "Running stage 'train@" not in repo["log"] and "Running stage 'generate" not in repo["log"], repo["log"]
    account = json.loads((repo["path"] / "data" / "filtered" / f"{FILTERED}.json").read_text())
    # 16 real training images per class (30 - 10 test - 4 val), 4 syn1: half of each drawn, then half the syn1 dropped
    assert account["candidates"] == 3 * 8 + 3 * 2 and account["total"] == 3 * 8 + 3 and len(account["dropped"]) == 3
    summary = json.loads((repo["path"] / "metrics" / "summary.json").read_text())
    assert set(summary["test_acc"]) == set(E2E_MIXES) | {FILTERED}


def test_a_filtering_mixture_reruns_when_its_classifier_changes(repo):
    path = repo["path"]
    assert "Data and pipelines are up to date." in dvc(path, "status")
    weights = path / "models" / "resnet18" / "orig100" / "seed-0.pt"
    script = ("import sys, torch; from diffaug.formats.classifier import load_trained, save_trained\n"
              "m, meta = load_trained(sys.argv[1])\n"
              "with torch.no_grad(): m.net.fc.bias += torch.tensor([2.0, 0.0, -2.0])\n"
              "save_trained(sys.argv[1], m, meta)\n")
    run(["python", "-c", script, str(weights)], path)  # as if train@resnet18-orig100 had produced other weights
    dvc(path, "commit", "-f", "train@resnet18-orig100")
    status = json.loads(dvc(path, "status", "--json"))
    assert f"filter@{FILTERED}" in status and "evaluate" in status
    assert not [s for s in status if s.startswith("train")], status
    log = dvc(path, "repro")
    assert f"Running stage 'filter@{FILTERED}'" in log and f"Running stage 'train_filtered@resnet18-{FILTERED}'" in log
    assert "Running stage 'train@" not in log and "Running stage 'build_mixtures'" not in log, log
    account = json.loads((path / "data" / "filtered" / f"{FILTERED}.json").read_text())
    assert account["scorer"]["sha256"] == __import__("diffaug.io", fromlist=["x"]).sha256_file(weights)


def test_artifacts_get_from_a_fresh_clone(repo):
    path, root = repo["path"], repo["root"]
    run(["git", "add", "-A"], path)
    run(["git", "commit", "-q", "-m", "results"], path)
    for name in ("syn1", "classifiers"):  # a registered version (GTO's tag format): what `artifacts get` resolves
        run(["git", "tag", "-a", f"{name}@v1.0.0", "-m", f"{name} v1.0.0"], path)
    dvc(path, "push")
    clone = root / "clone"
    subprocess.run(["git", "clone", "-q", str(path), str(clone)], check=True, env=tool_env())
    assert not (clone / "data" / "synthetic" / "syn1").exists()
    consumer = root / "consumer"
    consumer.mkdir()
    dvc(consumer, "artifacts", "get", str(clone), "syn1", "-o", "syn1")
    dvc(consumer, "artifacts", "get", str(clone), "classifiers", "-o", "classifiers")
    original = path / "data" / "synthetic" / "syn1"
    got = sorted(p.relative_to(consumer / "syn1") for p in (consumer / "syn1").rglob("*") if p.is_file())
    assert got == sorted(p.relative_to(original) for p in original.rglob("*") if p.is_file())
    from diffaug.formats.synthetic import load_synthetic

    images, labels = load_synthetic(consumer / "syn1")  # every shard's sha256 checked
    assert len(images) == len(labels) == 12
    import diffaug

    model = diffaug.load_classifier(consumer / "classifiers" / "resnet18" / "orig100" / "seed-0.pt")
    assert model.classes == ["circle", "square", "cross"] and not model.training
