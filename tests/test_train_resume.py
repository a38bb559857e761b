"""The train stage's CLI, end to end in subprocesses: outputs, and SIGKILL-then-resume equal to one run."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 20  # the tiny network trains fast: enough epochs that the kill lands inside seed 1

pytestmark = pytest.mark.slow  # subprocesses of the whole stage, one killed
# Runs the real CLI; only the mixture loader (which reads prepared and synthetic shards) is replaced by
# a reader of one toy npz, and the network by tests/tiny_training.py's, so the test depends on nothing but the train stage.
RUNNER = f'''
import sys
import numpy as np
sys.path.insert(0, {str(Path(__file__).parent)!r})
from tiny_training import tiny_net
from diffaug.train import loop, stage
loop.build_model = tiny_net
def load_mixture(mixture_path, prepared_dir, synthetic_root):
    d = np.load(mixture_path, allow_pickle=False)
    return d["images"], d["labels"].astype(np.int64), [str(c) for c in d["classes"]]
stage.load_mixture = load_mixture
stage.main(sys.argv[1:])
'''


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train_cli")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(seeds=[0, 1], checkpoint_every=2, device="cpu", precision="fp32")
    # Every recipe lever on (its own RNG draws, EMA state, padding), so resume is exact with all of them.
    params["train"]["recipes"]["default"].update(epochs=EPOCHS, batch_size=16, lr=0.05, warmup_epochs=1, crop_padding=2,
                                                 pad_last_batch=True, cutout=4, trivial_augment=True, ema_decay=0.9,
                                                 tta_hflip=True)
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    rng = np.random.default_rng(0)
    classes = np.array(["cat", "dog", "ship"])
    np.savez(tmp / "mix.npz", images=rng.integers(0, 256, (32, 8, 8, 3), dtype=np.uint8),
             labels=rng.integers(0, 3, 32), classes=classes)
    (tmp / "prepared").mkdir()
    np.savez(tmp / "prepared" / "val.npz", images=rng.integers(0, 256, (9, 8, 8, 3), dtype=np.uint8),
             labels=rng.integers(0, 3, 9), classes=classes)
    (tmp / "runner.py").write_text(RUNNER)
    return tmp


def command(tmp: Path, run: str) -> list[str]:
    return [sys.executable, str(tmp / "runner.py"), "--params", str(tmp / "params.yaml"), "--model", "resnet18",
            "--mix", "orig100", "--mixture", str(tmp / "mix.npz"), "--prepared", str(tmp / "prepared"),
            "--synthetic", str(tmp / "synthetic"), "--out", str(tmp / run / "models"),
            "--metrics", str(tmp / run / "metrics"), "--checkpoints", str(tmp / run / "checkpoints")]


# One thread: the same in every run (CPU results may depend on it) and quicker on a shared machine.
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1"}


def metric_rows(metrics_dir: Path, name: str) -> list[tuple[int, float]]:
    lines = (metrics_dir / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()
    assert lines[0].split("\t")[0] == "step"
    return [(int(step), float(value)) for step, value in (line.split("\t")[:2] for line in lines[1:])]


@pytest.fixture(scope="module")
def uninterrupted(workdir):
    subprocess.run(command(workdir, "a"), check=True, env=ENV, capture_output=True, timeout=300)
    return workdir / "a"


def test_outputs_of_a_complete_run(uninterrupted):
    run = uninterrupted
    assert sorted(p.name for p in (run / "models").iterdir()) == ["seed-0.pt", "seed-1.pt", "train.json"]
    assert list((run / "checkpoints").glob("*.pt")) == [], "checkpoints must go once the run completes"
    saved = torch.load(run / "models" / "seed-0.pt", weights_only=True)
    assert {"state_dict", "model", "variant", "num_classes", "classes", "epochs", "settings"} <= set(saved)
    assert saved["classes"] == ["cat", "dog", "ship"] and saved["num_classes"] == 3 and saved["epochs"] == EPOCHS
    report = json.loads((run / "models" / "train.json").read_text())
    assert set(report["seeds"]) == {"0", "1"}
    for summary in report["seeds"].values():
        assert summary["epochs"] == EPOCHS and summary["resumed_from_epoch"] == 0 and summary["wall_time_s"] > 0
        assert 0 <= summary["final_val_acc"] <= 1 and summary["final_train_loss"] > 0
    assert report["settings"]["recipe"]["epochs"] == EPOCHS
    for seed in (0, 1):
        metrics = run / "metrics" / f"seed-{seed}"
        for name in ("train/loss", "train/acc", "lr", "epoch_time_s", "val/loss", "val/acc"):
            assert [step for step, _ in metric_rows(metrics, name)] == list(range(EPOCHS)), name
        assert not (metrics / "dvc.yaml").exists()
    assert report["seeds"]["0"]["final_val_acc"] == metric_rows(run / "metrics" / "seed-0", "val/acc")[-1][1]


def test_sigkill_then_resume_ends_with_identical_weights_and_history(workdir, uninterrupted):
    ckpt = workdir / "b" / "checkpoints"
    process = subprocess.Popen(command(workdir, "b"), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    # Kill mid-way through seed 1: seed 0 is then finished (its final state kept in its checkpoint) and
    # seed 1 has a checkpoint at epoch 2 while epochs past it may already be in its metrics log.
    while not (ckpt / "seed-1.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    assert (ckpt / "seed-0.pt").exists() and not (workdir / "b" / "models" / "seed-1.pt").exists()
    # dvc deletes a stage's outputs before rerunning it; the checkpoints (persist: true) stay.
    shutil.rmtree(workdir / "b" / "models")
    shutil.rmtree(workdir / "b" / "metrics" / "seed-0")
    subprocess.run(command(workdir, "b"), check=True, env=ENV, capture_output=True, timeout=300)

    report = json.loads((workdir / "b" / "models" / "train.json").read_text())
    assert report["seeds"]["0"]["resumed_from_epoch"] == EPOCHS  # finished seed restored, not retrained
    assert 2 <= report["seeds"]["1"]["resumed_from_epoch"] < EPOCHS
    for seed in (0, 1):
        a = torch.load(uninterrupted / "models" / f"seed-{seed}.pt", weights_only=True)["state_dict"]
        b = torch.load(workdir / "b" / "models" / f"seed-{seed}.pt", weights_only=True)["state_dict"]
        assert a.keys() == b.keys()
        assert [k for k in a if not torch.equal(a[k], b[k])] == []
        for name in ("train/loss", "train/acc", "lr", "val/acc"):
            assert metric_rows(uninterrupted / "metrics" / f"seed-{seed}", name) == \
                metric_rows(workdir / "b" / "metrics" / f"seed-{seed}", name), f"seed {seed} {name}"
    assert list(ckpt.glob("*.pt")) == []
