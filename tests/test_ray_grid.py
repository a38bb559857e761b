"""`python -m diffaug.grid` on tiny cells in the dvc sandbox, on a local Ray of 2 CPUs: every out-of-date
train cell runs as a Ray task, a cell whose worker is killed mid-training is retried and resumes from
its checkpoint, and the driver's `dvc commit` leaves only evaluate for `dvc repro`."""
from __future__ import annotations

import json
import signal
import threading
import time

import psutil
import pytest
import ray

from diffaug.grid import main
from diffaug.sandbox.demo import make_sandbox, run

pytestmark = pytest.mark.slow
MIXES = ["orig100", "orig50"]
CELLS = [f"train@resnet18-{mix}" for mix in MIXES]


def dvc_status(repo) -> dict:
    return json.loads(run(["dvc", "status", "--json"], repo).stdout)


@pytest.fixture
def sandbox(tmp_path):
    repo = make_sandbox(tmp_path / "repo", mixes=MIXES, epochs=3, images_per_class=4, per_class_real=20)
    run(["dvc", "repro", "build_mixtures"], repo)
    return repo


def test_grid_refuses_while_the_cells_inputs_are_out_of_date(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(make_sandbox(tmp_path / "repo", mixes=MIXES, epochs=1, images_per_class=4, per_class_real=20))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["--dry-run"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "build_mixtures" in err and "run `dvc repro" in err, err


def test_grid_trains_every_stale_cell_resumes_a_killed_one_and_commits(sandbox, monkeypatch, capfd):
    assert set(CELLS) <= set(dvc_status(sandbox))
    monkeypatch.chdir(sandbox)
    monkeypatch.setenv("RAY_worker_niceness", "0")  # Ray's default 15 starves the cells on a busy CI machine
    ray.init(num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False)
    try:
        result: list = []
        thread = threading.Thread(target=lambda: result.append(main([])))
        thread.start()
        checkpoint = sandbox / "checkpoints" / "resnet18" / "orig100" / "seed-0.pt"
        deadline = time.monotonic() + 900
        while not checkpoint.exists():
            assert thread.is_alive() and time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        # This sandbox's own trainer only (other dvc runs on the machine train orig100 cells too).
        trainer = next(p for p in psutil.process_iter(["cmdline", "cwd"])
                       if p.info["cwd"] == str(sandbox) and "diffaug.train" in (p.info["cmdline"] or []) and "orig100" in p.info["cmdline"])
        worker = trainer.parent()
        assert worker.name().startswith("ray::"), worker.name()
        worker.send_signal(signal.SIGKILL)  # the Ray worker, as a preempted node takes it
        thread.join(600)
    finally:
        ray.shutdown()
    assert result == [0]
    out = capfd.readouterr().out
    assert all(f"grid: {cell} done and committed" in out for cell in CELLS), out
    report = json.loads((sandbox / "models" / "resnet18" / "orig100" / "train.json").read_text())
    assert report["seeds"]["0"]["resumed_from_epoch"] >= 1, "the retried cell starts from its checkpoint"
    assert list(dvc_status(sandbox)) == ["evaluate"]
