"""Device and capability checks, with the GPU faked: every combination a GPU cannot run is one line naming
the key and what would work (ConfigError/UserError: exit 2 through the stage CLIs), every automatic
choice is a note; a good combination passes silently."""
import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from diffaug import devices
from diffaug.config import DiffusionConfig
from diffaug.devices import GpuInfo, check_generation, has_kernels_for, resolve_device, training_precision
from diffaug.errors import ConfigError, UserError

REPO = Path(__file__).resolve().parents[1]
ARCHES = ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120")
TURING = GpuInfo(0, "NVIDIA GeForce RTX 2080 Ti", (7, 5), 11 << 30, ARCHES)
AMPERE = GpuInfo(0, "NVIDIA A100", (8, 0), 40 << 30, ARCHES)
ADA = GpuInfo(0, "NVIDIA L4", (8, 9), 24 << 30, ARCHES)
HOPPER = GpuInfo(0, "NVIDIA H100", (9, 0), 80 << 30, ARCHES)
CUDA = torch.device("cuda", 0)
CPU = torch.device("cpu")


def dif(**kw) -> DiffusionConfig:
    return DiffusionConfig(**kw)


def one_line_error(call, *keys):
    with pytest.raises((ConfigError, UserError)) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and all(k in message for k in keys), message
    return message


# ----------------------------------------------------------------------------- generation
def test_the_defaults_pass_on_every_gpu_and_on_a_cpu_with_notes_only():
    for gpu in (TURING, AMPERE, ADA, HOPPER):
        assert check_generation(dif(), CUDA, gpu) == []
    notes = check_generation(dif(), CPU, None)
    assert notes == ["diffusion.dtype: float16 on a CPU is emulated and slow; float32 or bfloat16 run faster there"]


def test_fp8_needs_bfloat16_then_sm89_then_torchao():
    msg = one_line_error(lambda: check_generation(dif(fp8=True), CUDA, HOPPER, torchao=True), "diffusion.fp8", "bfloat16")
    assert "set diffusion.dtype: bfloat16 or diffusion.fp8: false" in msg
    bf16 = dif(fp8=True, dtype="bfloat16")
    one_line_error(lambda: check_generation(bf16, CUDA, AMPERE, torchao=True), "diffusion.fp8", ">= 8.9", "A100 has 8.0")
    one_line_error(lambda: check_generation(bf16, CPU, None, torchao=True), "diffusion.fp8", "runs on cpu")
    one_line_error(lambda: check_generation(bf16, CUDA, HOPPER, torchao=False), "diffusion.fp8", "pip install torchao")
    assert check_generation(bf16, CUDA, ADA, torchao=True) == []
    assert check_generation(bf16, CUDA, HOPPER, torchao=True) == []


@pytest.mark.parametrize("kernel", ["flash", "cudnn"])
def test_flash_and_cudnn_attention_need_half_precision_and_sm80(kernel):
    one_line_error(lambda: check_generation(dif(attention=kernel, dtype="float32"), CUDA, HOPPER),
                   "diffusion.attention", "float16/bfloat16", "efficient or auto")
    one_line_error(lambda: check_generation(dif(attention=kernel), CUDA, TURING),
                   "diffusion.attention", ">= 8.0", "7.5", "efficient or auto")
    assert check_generation(dif(attention=kernel), CUDA, AMPERE) == []
    assert check_generation(dif(attention="efficient", dtype="float32"), CUDA, TURING) == []


def test_bfloat16_generation_below_sm80_is_refused():
    one_line_error(lambda: check_generation(dif(dtype="bfloat16"), CUDA, TURING), "diffusion.dtype", "float16")
    assert check_generation(dif(dtype="bfloat16"), CUDA, AMPERE) == []


def test_a_cuda_attention_kernel_on_a_cpu_is_a_note():
    assert any("diffusion.attention: flash" in n for n in check_generation(dif(attention="flash", dtype="float32"), CPU))


# ----------------------------------------------------------------------------- device index and architecture
@pytest.mark.parametrize("capability, arches, ok", [
    ((9, 0), ARCHES, True), ((8, 6), ("sm_80",), True), ((8, 9), ("sm_80", "sm_86"), True),
    ((6, 1), ARCHES, False), ((12, 1), ("sm_80", "sm_90", "sm_120"), True), ((10, 3), ("sm_90", "sm_100a"), False),
    ((10, 0), ("sm_90", "sm_100a"), True), ((9, 0), ("sm_80", "compute_80"), True), ((7, 5), ("sm_80", "compute_80"), False),
    ((9, 0), (), True),
])
def test_kernels_for_a_capability(capability, arches, ok):
    assert has_kernels_for(capability, arches) is ok


def fake_gpus(monkeypatch, count, capability=(9, 0), arches=ARCHES):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(arches))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: type("P", (), {
        "name": "Fake GPU", "major": capability[0], "minor": capability[1], "total_memory": 16 << 30})())


def test_a_device_index_past_the_count_is_one_line(monkeypatch):
    fake_gpus(monkeypatch, 2)
    assert resolve_device("cuda:1", "train.device") == torch.device("cuda", 1)
    msg = one_line_error(lambda: resolve_device("cuda:2", "train.device"), "train.device", "'cuda:2'", "2 CUDA devices")
    assert "cuda:0..cuda:1" in msg
    assert isinstance(pytest.raises(ConfigError, resolve_device, "cuda:7", "diffusion.device").value, ConfigError)


def test_a_gpu_the_wheel_has_no_kernels_for_is_one_line(monkeypatch):
    fake_gpus(monkeypatch, 1, capability=(6, 1))
    one_line_error(lambda: resolve_device("auto", "train.device"), "train.device", "Fake GPU", "6.1", "sm_61")


def strict_set_device(monkeypatch) -> list[torch.device]:
    """torch.cuda.set_device faked as strictly as torch's: a device without an index is a ValueError."""
    current: list[torch.device] = []

    def set_device(d):
        if torch.device(d).index is None:
            raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{d}")
        current.append(torch.device(d))
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    return current


def test_under_torchrun_each_rank_takes_its_local_gpu(monkeypatch):
    fake_gpus(monkeypatch, 4)
    current = strict_set_device(monkeypatch)
    assert devices.use_local_rank(torch.device("cuda"), {"LOCAL_RANK": "3"}) == torch.device("cuda", 3)
    assert devices.use_local_rank(torch.device("cuda"), {}) == torch.device("cuda", 0)
    assert devices.use_local_rank(torch.device("cuda", 1), {"LOCAL_RANK": "3"}) == torch.device("cuda", 1)  # named
    assert current == [torch.device("cuda", 3), torch.device("cuda", 0), torch.device("cuda", 1)]
    assert devices.use_local_rank(CPU, {"LOCAL_RANK": "3"}) == CPU and len(current) == 3


# ----------------------------------------------------------------------------- training precision
def test_bf16_training_below_sm80_becomes_fp16_with_a_grad_scaler_and_says_so():
    p = training_precision("bf16", CUDA, TURING)
    assert p.name == "fp16"  # float16 autocast with loss scaling (the Trainer's fp16)
    assert p.note.startswith("train.precision: bf16 is emulated on NVIDIA GeForce RTX 2080 Ti (compute capability 7.5 < 8.0)")
    assert "\n" not in p.note
    assert training_precision("bf16", CUDA, AMPERE) == devices.Precision("bf16")
    assert training_precision("fp32", CUDA, TURING).name == "fp32"
    assert training_precision("bf16", CPU).name == "fp32"


def test_the_train_stage_prints_and_records_the_precision_it_chose(tmp_path, monkeypatch, capsys):
    """The stage on a faked pre-Ampere GPU: one note line, train.json records what ran. (The trainer itself
    runs on the CPU here: only the precision decision is faked.)"""
    import numpy as np

    from diffaug.train import stage

    note = training_precision("bf16", CUDA, TURING)
    monkeypatch.setattr(stage, "training_precision", lambda precision, device: dataclasses.replace(note, name="fp32"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(device="cpu", seeds=[0])
    params["train"]["recipes"]["default"].update(epochs=1, batch_size=8, warmup_epochs=0)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8), rng.integers(0, 3, 12)
    classes = np.array(["a", "b", "c"])
    (tmp_path / "prepared").mkdir()
    np.savez(tmp_path / "prepared" / "val.npz", images=images[:4], labels=labels[:4], classes=classes)
    np.savez(tmp_path / "orig100.npz", images=images, labels=labels, classes=classes)
    monkeypatch.setattr(stage, "load_mixture", lambda m, p, s: (images, labels.astype(np.int64), list(classes)))
    stage.main(["--params", str(tmp_path / "params.yaml"), "--model", "resnet18", "--mix", "orig100",
                "--mixture", str(tmp_path / "orig100.npz"), "--prepared", str(tmp_path / "prepared"),
                "--synthetic", str(tmp_path / "s"), "--out", str(tmp_path / "out"), "--metrics", str(tmp_path / "m"),
                "--checkpoints", str(tmp_path / "c")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert err == [f"note: {note.note}"]
    import json
    report = json.loads((tmp_path / "out" / "train.json").read_text())
    assert report["precision_note"] == note.note
    assert report["seeds"]["0"]["step"] == "static (uncaptured: no CUDA)"


def test_a_bad_device_index_exits_2_with_one_line_from_the_train_cli(tmp_path, capsys):
    """The train command line's main (in this process): on this machine any cuda:N is refused in one line."""
    from diffaug.train import stage

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["device"] = "cuda:9"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    mixes = next(iter(params["mixtures"]))
    with pytest.raises(SystemExit) as exit_info:
        stage.main(["--params", str(tmp_path / "params.yaml"), "--model", "resnet18", "--mix", mixes,
                    "--mixture", str(tmp_path / "m.npz"), "--prepared", str(tmp_path), "--synthetic", str(tmp_path),
                    "--out", str(tmp_path / "o"), "--metrics", str(tmp_path / "x"), "--checkpoints", str(tmp_path / "c")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: train.device: 'cuda:9'"), lines


def test_generation_on_one_gpu_makes_an_indexed_device_current(monkeypatch):
    from diffaug.config import DiffusionConfig
    from diffaug.generate.runner import pick_device

    fake_gpus(monkeypatch, 2)
    current = strict_set_device(monkeypatch)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert pick_device(DiffusionConfig(device="auto")) == torch.device("cuda", 0) and current == [torch.device("cuda", 0)]
    monkeypatch.setenv("LOCAL_RANK", "1")  # a torchrun worker
    assert pick_device(DiffusionConfig(device="cuda")) == torch.device("cuda", 1)
    assert pick_device(DiffusionConfig(device="cpu")) == torch.device("cpu") and len(current) == 2
