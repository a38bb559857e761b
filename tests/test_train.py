"""train: schedules, seeded determinism, checkpoint settings, trained-model files and one-line errors."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from diffaug.config import Recipe, parse_config
from diffaug.errors import UserError
from diffaug.formats.classifier import load_trained, save_trained
from diffaug.io import load_npz
from diffaug.models import build_model
from diffaug.train import loop
from diffaug.train.loop import Trainer, fit, steps_per_epoch
from diffaug.train.schedule import learning_rate
from diffaug.train.stage import main
from tiny_training import assert_same, tiny_network, toy  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
# A fixed thread count: same CPU floats every run, quicker when shared. The loop trains tiny_net (one ResNet-18 smoke test).
pytestmark = pytest.mark.usefixtures("one_thread", "tiny_network")


def lr_trace(recipe: Recipe, per_epoch: int, steps: int) -> np.ndarray:
    """The lr of each step, from the schedule's lr(step)."""
    lr = learning_rate(recipe, per_epoch)
    return np.array([lr(step) for step in range(steps)])


def test_cosine_warms_up_linearly_then_decays_to_zero_over_the_whole_run():
    recipe = Recipe(epochs=20, lr=0.2, schedule="cosine", warmup_epochs=2)
    lrs = lr_trace(recipe, per_epoch=10, steps=200)
    assert lrs[0] == pytest.approx(0.2 / 20) and lrs[19] == pytest.approx(0.2)
    assert np.allclose(np.diff(lrs[:20]), 0.2 / 20)
    assert np.all(np.diff(lrs[20:]) < 0)
    assert lrs[110] == pytest.approx(0.1)  # halfway through the cosine part
    assert lrs[-1] < 1e-3 * 0.2


def test_constant_schedule_is_flat_after_warm_up():
    lrs = lr_trace(Recipe(epochs=5, lr=0.05, schedule="constant", warmup_epochs=1), per_epoch=4, steps=20)
    assert np.allclose(lrs[:4], [0.0125, 0.025, 0.0375, 0.05]) and np.allclose(lrs[4:], 0.05)


def test_paper_cyclic_reproduces_per_batch_cosine_with_a_400_iteration_period():
    lr = 0.01
    lrs = lr_trace(Recipe(epochs=250, lr=lr, schedule="paper_cyclic", warmup_epochs=0), per_epoch=40, steps=1300)
    assert lrs[0] == pytest.approx(lr) and lrs[100] == pytest.approx(lr / 2)
    assert lrs[200] == pytest.approx(0, abs=1e-9) and lrs[400] == pytest.approx(lr) and lrs[600] == pytest.approx(0, abs=1e-9)
    assert np.allclose(lrs[:900], lrs[400:1300], atol=1e-9)  # period 400, independent of epochs
    closed_form = 0.5 * lr * (1 + np.cos(np.pi * np.arange(1300) / 200))
    assert np.allclose(lrs, closed_form, atol=1e-9)


def test_paper_cyclic_with_warm_up_is_rejected():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["recipes"]["paper"]["warmup_epochs"] = 3
    with pytest.raises(Exception, match="train.recipes.paper.warmup_epochs"):
        parse_config(params)


def test_steps_per_epoch_drops_only_a_single_leftover_image():
    assert steps_per_epoch(256, 128) == 2 and steps_per_epoch(257, 128) == 2
    assert steps_per_epoch(258, 128) == 3 and steps_per_epoch(5, 128) == 1


# ----------------------------------------------------------------------------- the loop
TINY = Recipe(epochs=3, batch_size=16, lr=0.05, warmup_epochs=1, label_smoothing=0.1, crop_padding=2)


def tiny_trainer(seed=0, recipe=TINY, val=True):
    images, labels = toy(40, 16)
    val_images, val_labels = toy(12, 16, seed=1)
    return Trainer("resnet18", "cifar", 3, recipe, images, labels, seed=seed, device=torch.device("cpu"),
                   precision="fp32", channels_last=True,
                   val_images=val_images if val else None, val_labels=val_labels if val else None)


def test_same_seed_same_weights_other_seed_other_weights():
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        trainer = tiny_trainer(seed)
        result = fit(trainer)
        runs[name] = (trainer.model.state_dict(), result.history)
    assert_same(runs["a"][0], runs["b"][0])
    assert [h["train/loss"] for h in runs["a"][1]] == [h["train/loss"] for h in runs["b"][1]]
    assert not torch.equal(runs["a"][0]["net.fc.weight"], runs["c"][0]["net.fc.weight"])
    history = runs["a"][1]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert all({"train/loss", "train/acc", "lr", "epoch_time_s", "val/loss", "val/acc"} <= h.keys() for h in history)
    assert all(0 <= h["val/acc"] <= 1 and math.isfinite(h["train/loss"]) for h in history)


def test_no_validation_metrics_without_validation_images():
    result = fit(tiny_trainer(val=False))
    assert all("val/acc" not in h for h in result.history)


def test_a_checkpoint_from_other_settings_is_ignored_and_a_finished_one_is_not_retrained(tmp_path):
    checkpoint = tmp_path / "seed-0.pt"
    first = tiny_trainer()
    fit(first, checkpoint=checkpoint, checkpoint_every=1, settings_hash="A")
    assert checkpoint.is_file()  # the finished state stays until the stage has written its outputs
    other = tiny_trainer()
    result = fit(other, checkpoint=checkpoint, checkpoint_every=1, settings_hash="B")
    assert result.resumed_from == 0 and len(result.history) == 3
    assert_same(first.model.state_dict(), other.model.state_dict())
    fit(tiny_trainer(), checkpoint=checkpoint, checkpoint_every=1, settings_hash="A")  # rewrite under A
    again = tiny_trainer()
    logged = []
    result = fit(again, checkpoint=checkpoint, settings_hash="A", log=logged.append)
    assert result.resumed_from == 3 and [m["epoch"] for m in logged] == [0, 1, 2]
    assert_same(first.model.state_dict(), again.model.state_dict())


def test_unreadable_checkpoint_is_ignored(tmp_path):
    checkpoint = tmp_path / "seed-0.pt"
    checkpoint.write_bytes(b"not a checkpoint")
    result = fit(tiny_trainer(), checkpoint=checkpoint, settings_hash="A")
    assert result.resumed_from == 0 and len(result.history) == 3


# ----------------------------------------------------------------------------- trained-model files
def test_load_trained_round_trips_with_weights_only(tmp_path, monkeypatch):
    trainer = tiny_trainer(recipe=Recipe(epochs=1, batch_size=16, warmup_epochs=0))
    fit(trainer)
    meta = {"model": "resnet18", "variant": "cifar", "num_classes": 3, "classes": ["a", "b", "c"], "epochs": 1,
            "settings": {"seed": 0, "channels_last": True}}
    path = tmp_path / "seed-0.pt"
    save_trained(path, trainer.model, meta)
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    model, loaded_meta = load_trained(path, "cpu")
    assert calls and all(k.get("weights_only") is True for k in calls)
    assert loaded_meta == meta and not model.training
    assert_same(trainer.model.state_dict(), model.state_dict())
    images = torch.from_numpy(toy(5, 16, seed=9)[0]).permute(0, 3, 1, 2)
    trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(model(images), trainer.model(images))
    assert not torch.equal(model.mean, torch.zeros_like(model.mean))  # the mixture's statistics travelled


def test_load_trained_names_a_bad_file(tmp_path):
    bad = tmp_path / "seed-0.pt"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(UserError, match="seed-0.pt: not a trained-model file"):
        load_trained(bad)
    with pytest.raises(UserError, match="not found"):
        load_trained(tmp_path / "missing.pt")


# ----------------------------------------------------------------------------- one-line errors, nothing written
@pytest.fixture
def stage_inputs(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(device="cpu", seeds=[0])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    images, labels = toy(8)
    (tmp_path / "prepared").mkdir()
    np.savez(tmp_path / "prepared" / "val.npz", images=images, labels=labels, classes=np.array(["a", "b", "c"]))
    np.savez(tmp_path / "mix.npz", images=images, labels=labels, classes=np.array(["a", "b", "c"]))
    return tmp_path, params


def run_main(tmp, capsys, *extra, model="resnet18", mixture="mix.npz"):
    args = ["--params", str(tmp / "params.yaml"), "--model", model, "--mix", "orig100", "--mixture", str(tmp / mixture),
            "--prepared", str(tmp / "prepared"), "--synthetic", str(tmp / "synthetic"), "--out", str(tmp / "out"),
            "--metrics", str(tmp / "metrics"), "--checkpoints", str(tmp / "ckpt"), *extra]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert not any((tmp / d).exists() for d in ("out", "metrics", "ckpt")), "an error must write nothing"
    return err


@pytest.mark.parametrize("edit, expected", [
    (lambda p: p["train"].update(recipe="fast"), "train.recipe: allowed: default, paper (got 'fast')"),
    (lambda p: p["train"]["recipes"]["default"].update(lr=-0.1), "train.recipes.default.lr: Input should be greater than 0 (got -0.1)"),
    (lambda p: p["train"]["recipes"]["default"].update(schedule="step"), "train.recipes.default.schedule"),
    (lambda p: p["train"]["recipes"]["default"].update(epochs=0), "train.recipes.default.epochs"),
    (lambda p: p["train"].update(variant="imagenet"), "train.variant"),
    (lambda p: p["train"].update(device="cuda"), "no CUDA device"),
])
def test_bad_train_params_give_one_line_and_exit_2(stage_inputs, capsys, edit, expected):
    tmp, params = stage_inputs
    if expected == "no CUDA device" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    edit(params)
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    assert expected in run_main(tmp, capsys)


def read_toy_mixture(mixture, prepared, synthetic):
    """Stands in for the mixture format's loader: the toy npz holds the pixels themselves."""
    d = load_npz(mixture)
    return d["images"], d["labels"], [str(c) for c in d["classes"]]


def test_unknown_model_and_mix_and_missing_inputs(stage_inputs, capsys, monkeypatch):
    tmp, _ = stage_inputs
    assert "--model: got 'resnet101'; allowed: resnet18 | resnet34 | resnet50 | vgg16 | densenet121" in run_main(
        tmp, capsys, model="resnet101")
    assert "mix.npz: not found" in run_main(tmp, capsys, mixture="missing/mix.npz")
    monkeypatch.setattr("diffaug.train.stage.load_mixture", read_toy_mixture)
    (tmp / "prepared" / "val.npz").write_bytes(b"truncated")
    assert "val.npz: not an .npz archive" in run_main(tmp, capsys)
    np.savez(tmp / "prepared" / "val.npz", images=np.zeros((2, 8, 8, 3), np.uint8), labels=np.zeros(2, int),
             classes=np.array(["a", "b", "x"]))
    assert "differ from the mixture's" in run_main(tmp, capsys)
    np.savez(tmp / "mix.npz", images=np.zeros((4, 8, 8), np.uint8), labels=np.zeros(4, int), classes=np.array(["a", "b", "c"]))
    assert "mix.npz: 'images' is uint8 (4, 8, 8); allowed: uint8 (N, H, W, 3)" in run_main(tmp, capsys)


@pytest.mark.slow  # a subprocess of the whole stage
def test_python_dash_m_reports_an_unknown_model_in_one_line(stage_inputs):
    tmp, _ = stage_inputs
    done = subprocess.run([sys.executable, "-m", "diffaug.train", "--params", str(tmp / "params.yaml"), "--model", "vgg19",
                           "--mix", "orig100", "--mixture", str(tmp / "mix.npz"), "--prepared", str(tmp / "prepared"),
                           "--synthetic", "s", "--out", str(tmp / "out"), "--metrics", str(tmp / "m"), "--checkpoints", str(tmp / "c")],
                          capture_output=True, text=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"}, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: --model: got 'vgg19'; allowed: resnet18 | resnet34 | resnet50 | vgg16 | densenet121"]


def test_stage_with_an_empty_validation_split_logs_no_validation(stage_inputs, monkeypatch):
    tmp, params = stage_inputs
    params["train"]["recipes"]["default"].update(epochs=2, batch_size=4, warmup_epochs=0)
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    np.savez(tmp / "prepared" / "val.npz", images=np.zeros((0, 8, 8, 3), np.uint8), labels=np.zeros(0, np.int64),
             classes=np.array(["a", "b", "c"]))
    monkeypatch.setattr("diffaug.train.stage.load_mixture", read_toy_mixture)
    main(["--params", str(tmp / "params.yaml"), "--model", "resnet18", "--mix", "orig100", "--mixture", str(tmp / "mix.npz"),
          "--prepared", str(tmp / "prepared"), "--synthetic", str(tmp / "s"), "--out", str(tmp / "out"),
          "--metrics", str(tmp / "metrics"), "--checkpoints", str(tmp / "ckpt")])
    report = json.loads((tmp / "out" / "train.json").read_text())
    assert report["seeds"]["0"]["final_val_acc"] is None and report["settings"]["val_images"] == 0
    plots = tmp / "metrics" / "seed-0" / "plots" / "metrics"
    assert (plots / "train" / "loss.tsv").is_file() and not (plots / "val").exists()
    assert sorted(p.name for p in (tmp / "metrics" / "seed-0").iterdir()) == ["plots"]  # curves only: dvc.yaml plots it all
    model, meta = load_trained(tmp / "out" / "seed-0.pt")
    assert meta["epochs"] == 2 and meta["classes"] == ["a", "b", "c"]


def test_the_recipes_optimizer_and_the_evaluate_batch_are_what_the_trainer_uses(monkeypatch):
    recipe = Recipe(epochs=1, batch_size=16, lr=0.05, momentum=0.8, nesterov=False, weight_decay=1e-3, warmup_epochs=0,
                    schedule="constant")
    trainer = tiny_trainer(recipe=recipe)
    calls = []
    real = trainer.optimizer.step
    monkeypatch.setattr(trainer.optimizer, "step", lambda *a, **k: calls.append(float(trainer.lr)) or real(*a, **k))
    trainer.train_epoch()
    assert calls == [pytest.approx(0.05)] * trainer.steps_per_epoch  # torch's SGD step, every step, at the step's lr
    group = trainer.optimizer.param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"], group["fused"]) == (0.8, False, 1e-3, True)
    images, labels = toy(12, 16, seed=1)
    small = Trainer("resnet18", "cifar", 3, TINY, *toy(40, 16), seed=0, device=torch.device("cpu"), precision="fp32",
                    eval_batch=5, val_images=images, val_labels=labels)
    seen: list[int] = []
    small.final_model.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    small.run_epoch(validate=True)
    assert seen[-3:] == [5, 5, 2]  # the validation after the epoch runs at evaluate.batch_size, not a constant of the loop


def test_resnet18_smoke(monkeypatch, tmp_path):
    """The one real architecture the loop tests train (the others use tiny_net): a ResNet-18 trains on the
    static path, its metrics are finite, and its trained-model file loads back with the same outputs."""
    monkeypatch.setattr(loop, "build_model", build_model)
    monkeypatch.setattr("diffaug.formats.classifier.build_model", build_model)
    images, labels = toy(24)
    trainer = Trainer("resnet18", "cifar", 3, Recipe(epochs=1, batch_size=8, warmup_epochs=0), images, labels, seed=0,
                      device=torch.device("cpu"), precision="fp32", cuda_graph=True, val_images=images[:6], val_labels=labels[:6])
    history = fit(trainer).history
    assert trainer.step_mode == "static (uncaptured: no CUDA)" and "net.layer4.1.conv2.weight" in trainer.model.state_dict()
    assert math.isfinite(history[0]["train/loss"]) and 0 <= history[0]["val/acc"] <= 1
    save_trained(tmp_path / "seed-0.pt", trainer.model, {"model": "resnet18", "variant": "cifar", "num_classes": 3,
                                                         "classes": ["a", "b", "c"], "epochs": 1,
                                                         "settings": {"channels_last": True}})
    model, _ = load_trained(tmp_path / "seed-0.pt", "cpu")
    x = torch.from_numpy(images[:4]).permute(0, 3, 1, 2)
    with torch.no_grad():
        assert torch.equal(model(x), trainer.model.eval()(x))
