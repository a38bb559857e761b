"""Honest provenance: everything beyond the settings that can change bytes (device, GPU and its compute
capability, CPU threads, library versions, dtype) is recorded per synthetic shard and per classifier by one
function, diffaug.devices.run_conditions; resumes group or restart by it, and no manifest sentence claims
more than holds.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import diffaug.train.stage as stage
from diffaug import devices
from diffaug.devices import GpuInfo, run_conditions
from diffaug.formats import synthetic as storage
from diffaug.formats.classifier import load_trained
from tiny_training import tiny_network  # noqa: F401 (a fixture: the classifier is tests/tiny_training.py's two-layer net)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def threads():
    """Set torch's CPU thread count for the test; restored after it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- the one function
def test_a_1_thread_and_a_2_thread_cpu_run_are_different_conditions(threads):
    threads(1)
    one = run_conditions(torch.device("cpu"), "float32")
    threads(2)
    two = run_conditions(torch.device("cpu"), "float32")
    assert one["cpu_threads"] == 1 and two["cpu_threads"] == 2 and one != two
    assert {k: v for k, v in one.items() if k != "cpu_threads"} == {k: v for k, v in two.items() if k != "cpu_threads"}
    assert one["device"] == "cpu" and one["gpu"] is None and one["dtype"] == "float32"
    assert one["torch"] == torch.__version__ and one["numpy"] == np.__version__
    assert all(one[lib] for lib in ("diffusers", "transformers", "pillow"))
    assert run_conditions(torch.device("cpu"), "bfloat16") != two, "the dtype is a condition"


def test_a_gpu_run_records_the_gpu_and_its_compute_capability(monkeypatch):
    h100 = GpuInfo(0, "NVIDIA H100 80GB HBM3", (9, 0), 80 << 30, ("sm_90",))
    monkeypatch.setattr(devices, "gpu_info", lambda device: h100 if device.type == "cuda" else None)
    conditions = run_conditions(torch.device("cuda", 0), "float16")
    assert conditions["device"] == "cuda" and conditions["gpu"] == "NVIDIA H100 80GB HBM3"
    assert conditions["capability"] == "9.0" and conditions["dtype"] == "float16"
    a100 = GpuInfo(0, "NVIDIA A100-SXM4-80GB", (8, 0), 80 << 30, ("sm_80",))
    monkeypatch.setattr(devices, "gpu_info", lambda device: a100)
    assert run_conditions(torch.device("cuda", 0), "float16") != conditions


# ----------------------------------------------------------------------------- synthetic sets
def generate_at(threads, n: int, params: Path, classes: Path, out: Path) -> dict:
    from diffaug.generate.__main__ import main
    from test_generate import cli_args

    threads(n)
    assert main(cli_args(params, classes, out)) == 0
    return json.loads((out / storage.MANIFEST).read_text())


def test_a_resume_at_another_thread_count_records_two_groups_and_claims_no_byte_identity(tiny_sd, tmp_path, threads):
    from test_generate import write_inputs

    params, classes = write_inputs(tmp_path / "in", tiny_sd, synthetic={"images_per_class": 2})  # 3 shards
    at_1 = generate_at(threads, 1, params, classes, tmp_path / "at-1")
    at_2 = generate_at(threads, 2, params, classes, tmp_path / "at-2")
    for manifest, n in ((at_1, 1), (at_2, 2)):
        (group,) = manifest["provenance"]["groups"]
        assert group["shards"] == [0, 1, 2] and group["provenance"]["cpu_threads"] == n
        assert group["provenance"]["dtype"] == "float32" and group["provenance"]["transformers"]
        assert "CPU threads" in manifest["provenance"]["note"] and "same bytes" in manifest["provenance"]["note"]
    assert at_1["provenance"]["groups"][0]["provenance"] != at_2["provenance"]["groups"][0]["provenance"]

    resumed = tmp_path / "resumed"  # killed after shard 0 at 1 thread, resumed at 2
    resumed.mkdir()
    shutil.copy(tmp_path / "at-1" / storage.shard_name(0), resumed)
    manifest = generate_at(threads, 2, params, classes, resumed)
    groups = manifest["provenance"]["groups"]
    assert [g["shards"] for g in groups] == [[0], [1, 2]]
    assert [g["provenance"]["cpu_threads"] for g in groups] == [1, 2]
    assert [s["provenance"]["cpu_threads"] for s in manifest["shards"]] == [1, 2, 2]
    note = manifest["provenance"]["note"]
    assert "2 different provenances" in note and "match no single run" in note and "same bytes" not in note
    # what the note says holds: the resumed set is the 1-thread set's first shard and the 2-thread set's others
    shas = {name: [s["sha256"] for s in m["shards"]] for name, m in (("1", at_1), ("2", at_2), ("resumed", manifest))}
    assert shas["resumed"] == shas["1"][:1] + shas["2"][1:]


# ----------------------------------------------------------------------------- classifiers
@pytest.fixture
def train_inputs(tmp_path, monkeypatch):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(device="cpu", seeds=[0], checkpoint_every=1)
    params["train"]["recipes"]["default"].update(epochs=2, batch_size=4, warmup_epochs=0)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8), np.arange(8) % 3
    (tmp_path / "prepared").mkdir()
    np.savez(tmp_path / "prepared" / "val.npz", images=images, labels=labels, classes=np.array(["a", "b", "c"]))
    monkeypatch.setattr(stage, "load_mixture", lambda *paths: (images, labels, ["a", "b", "c"]))
    (tmp_path / "mix.npz").write_bytes(b"stands for the mixture's index file")
    return tmp_path


def train_at(threads, n: int, tmp: Path) -> dict:
    threads(n)
    stage.main(["--params", str(tmp / "params.yaml"), "--model", "resnet18", "--mix", "orig100", "--mixture",
                str(tmp / "mix.npz"), "--prepared", str(tmp / "prepared"), "--synthetic", str(tmp / "s"), "--out",
                str(tmp / "out"), "--metrics", str(tmp / "metrics"), "--checkpoints", str(tmp / "ckpt")])
    return json.loads((tmp / "out" / "train.json").read_text())


@pytest.mark.usefixtures("tiny_network")
def test_a_classifier_records_its_conditions_and_resumes_only_under_them(train_inputs, threads, monkeypatch):
    tmp, kept = train_inputs, train_inputs / "kept.pt"
    fit = stage.fit

    def fit_and_keep_the_checkpoint(trainer, *, checkpoint, **kwargs):  # the first run's: as if killed after its last save
        result = fit(trainer, checkpoint=checkpoint, **kwargs)
        if not kept.exists():
            shutil.copy(checkpoint, kept)
        return result

    monkeypatch.setattr(stage, "fit", fit_and_keep_the_checkpoint)
    report = train_at(threads, 1, tmp)
    assert report["conditions"]["cpu_threads"] == 1 and report["conditions"]["dtype"] == "fp32"
    _, meta = load_trained(tmp / "out" / "seed-0.pt")
    assert meta["conditions"] == report["conditions"]

    shutil.copy(kept, tmp / "ckpt" / "seed-0.pt")
    report = train_at(threads, 2, tmp)
    assert report["seeds"]["0"]["resumed_from_epoch"] == 0, "a checkpoint made at 1 thread is not resumed at 2"
    assert report["conditions"]["cpu_threads"] == 2
    assert load_trained(tmp / "out" / "seed-0.pt")[1]["conditions"]["cpu_threads"] == 2

    shutil.copy(kept, tmp / "ckpt" / "seed-0.pt")
    assert train_at(threads, 1, tmp)["seeds"]["0"]["resumed_from_epoch"] == 2, "under its own conditions it is"
