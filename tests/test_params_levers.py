"""The keys params.yaml may leave at their code default (config.LEVERS) change no byte: each run both ways, on CPU.

diffusion.cpu_offload acts on CUDA devices only; on a CPU it must be a no-op, which is what runs here.
"""
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from diffaug.config import LEVERS
from test_generate import cli_args, write_inputs

REPO = Path(__file__).resolve().parents[1]
TESTED = {"train.checkpoint_every", "diffusion.cpu_offload"}

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_lever_has_a_test_here():
    assert set(LEVERS) == TESTED


def train_once(folder: Path, monkeypatch, checkpoint_every: int) -> dict[str, torch.Tensor]:
    from diffaug.train import stage

    rng = np.random.default_rng(0)
    classes = ["cat", "dog", "ship"]
    images, labels = rng.integers(0, 256, (24, 8, 8, 3), dtype=np.uint8), np.arange(24) % 3
    monkeypatch.setattr(stage, "load_mixture", lambda *paths: (images, labels.astype(np.int64), classes))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(device="cpu", precision="fp32", checkpoint_every=checkpoint_every)
    params["train"]["recipes"]["default"].update(epochs=3, batch_size=8, warmup_epochs=1)
    (folder / "prepared").mkdir(parents=True)
    np.savez(folder / "prepared" / "val.npz", images=images[:6], labels=labels[:6], classes=np.array(classes))
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    (folder / "mix.npz").write_bytes(b"read by the replaced loader only")
    stage.main(["--params", str(folder / "params.yaml"), "--model", "resnet18", "--mix", "orig100", "--mixture", str(folder / "mix.npz"),
                "--prepared", str(folder / "prepared"), "--synthetic", str(folder / "synthetic"), "--out", str(folder / "models"),
                "--metrics", str(folder / "metrics"), "--checkpoints", str(folder / "checkpoints")])
    return torch.load(folder / "models" / "seed-0.pt", weights_only=True)["state_dict"]


def test_checkpoint_every_gives_the_same_weights(tmp_path, monkeypatch):
    every_epoch = train_once(tmp_path / "every", monkeypatch, checkpoint_every=1)
    at_the_end = train_once(tmp_path / "end", monkeypatch, checkpoint_every=10)
    assert every_epoch.keys() == at_the_end.keys()
    assert all(torch.equal(every_epoch[k], at_the_end[k]) for k in every_epoch)


def test_cpu_offload_on_a_cpu_gives_the_same_images(tiny_sd, tmp_path):
    from diffaug.formats.synthetic import load_synthetic
    from diffaug.generate.__main__ import main

    sets = {}
    for offload in (False, True):
        params, classes = write_inputs(tmp_path / str(offload), tiny_sd, diffusion={"cpu_offload": offload})
        assert main(cli_args(params, classes, tmp_path / str(offload) / "out")) == 0
        sets[offload] = load_synthetic(tmp_path / str(offload) / "out")[0]
    assert sets[True].tobytes() == sets[False].tobytes()
