"""`python -m diffaug.doctor`: on this CPU-only machine it says so, checks the CPU path, writes its JSON and
ends with recommendations; its GPU path (levers, batch search, settings fixes) runs here with a tiny UNet
and a faked GPU, so its logic is exercised without one."""
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from diffaug import doctor
from diffaug.config import load_config, parse_config
from diffaug.config.schema import DiffusionConfig
from diffaug.devices import GpuInfo

REPO = Path(__file__).resolve().parents[1]
HOPPER = GpuInfo(0, "NVIDIA H100", (9, 0), 80 << 30, ("sm_90",))
TURING = GpuInfo(0, "NVIDIA GeForce RTX 2080 Ti", (7, 5), 11 << 30, ("sm_75",))


def test_doctor_on_a_cpu_says_so_checks_the_cpu_path_and_recommends(tmp_path):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "diffaug.doctor", "--params", str(REPO / "params.yaml"),
                          "--json", str(tmp_path / "doctor.json"), "--budget-s", "100"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    took = time.perf_counter() - start
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Traceback" not in run.stdout + run.stderr
    out = run.stdout
    assert "CPU-only machine: torch sees no CUDA GPU; checking the CPU path instead" in out
    assert "# params.yaml lines diffaug.doctor recommends for this machine" in out
    report = json.loads((tmp_path / "doctor.json").read_text())
    assert {"elapsed_s", "budget_s", "machine", "cpu_only", "checks", "recommendations", "recommended_yaml"} <= report.keys()
    assert report["cpu_only"] is True and report["machine"]["torch"] == torch.__version__
    checks = {(c["area"], c["name"]): c for c in report["checks"]}
    assert all(c["status"] in ("ok", "no", "info", "skipped") for c in report["checks"])
    assert checks[("machine", "GPU")]["status"] == "no"
    assert checks[("generation", "CPU path (tiny pipeline)")]["status"] == "ok"
    epoch = checks[("training", "resnet18 epoch")]
    assert epoch["status"] == "ok" and epoch["value"]["images"] == 150_000 and epoch["value"]["s_per_epoch"] > 0
    assert report["recommendations"]["diffusion"]["dtype"] == "float32"
    assert report["recommendations"]["train"]["precision"] == "fp32"
    assert "  dtype: float32" in report["recommended_yaml"]
    assert not [c for c in report["checks"] if c["area"] == "doctor"], "a check crashed"
    # about 20 s on an idle 2-core CPU; the budget bounds what it starts, the subprocess timeout the rest
    assert report["elapsed_s"] <= 100 and took < 120


def test_a_bad_budget_is_one_line_exit_2(tmp_path):
    run = subprocess.run([sys.executable, "-m", "diffaug.doctor", "--budget-s", "0"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert run.returncode == 2 and run.stderr.strip().splitlines() == ["error: --budget-s: got 0.0; allowed: a number of seconds > 0"]


def test_mixture_sizes_follow_params():
    sizes = doctor.mixture_sizes(load_config(REPO / "params.yaml"))
    assert sizes["orig100"] == 50_000 and sizes["orig50_syn1_50"] == 50_000
    assert sizes["orig100_syn1_100_syn2_100"] == 150_000 and sizes["orig50_rot50_vflip50"] == 75_000


def test_settings_a_gpu_cannot_run_are_reported_and_fixed_in_the_recommendations(monkeypatch):
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["diffusion"].update(fp8=True, attention="flash", dtype="bfloat16")
    cfg = parse_config(data)
    report = doctor.Report(100)
    dif = doctor.settings_checks(report, cfg, torch.device("cuda", 0), TURING)
    no = [c for c in report.checks if c.status == "no"]
    assert [c.name for c in no] == ["diffusion.fp8", "diffusion.attention", "diffusion.dtype"]
    assert all("\n" not in c.detail for c in no)
    assert (dif.fp8, dif.attention, dif.dtype) == (False, "auto", "float16")
    assert report.recommend["diffusion"] == {"fp8": False, "attention": "auto", "dtype": "float16"}
    precision = [c for c in report.checks if c.name == "train.precision"][0]
    assert precision.status == "info" and "fp16 autocast with a GradScaler" in precision.detail
    yaml_text = doctor.recommended_yaml(report)
    assert "  fp8: false" in yaml_text and "  dtype: float16" in yaml_text


@pytest.fixture
def fake_gpu_memory(monkeypatch):
    """The CUDA memory API on a CPU: each batch "uses" 1 GiB per image of peak; 6 GiB are free, so
    batch 4 fits under the 85% headroom and batch 8 does not."""
    state = {"peak": 0}

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (6 << 30, 80 << 30))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: state.update(peak=0))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: state["peak"])
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    return state


def test_the_gpu_path_times_each_lever_finds_the_largest_batch_and_recommends(monkeypatch, fake_gpu_memory):
    """generation_checks as on a GPU, on a tiny random UNet and VAE on this CPU: every lever gets a line, the
    batch search stops at the first batch over the memory headroom, and the recommendation is a fitting batch."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from diffaug.sandbox.tiny import TINY_UNET, TINY_VAE

    state = fake_gpu_memory
    torch.manual_seed(0)
    unet, vae = UNet2DConditionModel(**TINY_UNET).eval(), AutoencoderKL(**TINY_VAE).eval()
    real_decode = vae.decode

    def decode(z, *a, **k):
        state["peak"] = len(z) << 30  # 1 GiB per image
        return real_decode(z, *a, **k)

    vae.decode = decode
    monkeypatch.setattr(doctor, "load_unet_and_vae", lambda dif, dtype, device: (unet, vae, "tiny"))
    dif = dataclasses.replace(DiffusionConfig(), dtype="float32", resolution=64, steps=2)
    report = doctor.Report(budget_s=100)  # torch.compile needs 150 s of budget: skipped here
    monkeypatch.setattr(doctor, "LEVER_BATCH", 2)
    monkeypatch.setattr(doctor, "TIMED_STEPS", 1)
    doctor.generation_checks(report, dif, torch.device("cpu"), HOPPER)
    lines = {c.name: c for c in report.checks}
    assert lines["eager (attention auto)"].status == "ok"
    # flash and cudnn refuse float32 before timing; efficient and math are timed
    assert lines["attention flash"].status == "no" and "float16/bfloat16" in lines["attention flash"].detail
    assert lines["attention cudnn"].status == "no"
    assert {lines["attention efficient"].status, lines["attention math"].status} <= {"ok", "no"}
    assert lines["fuse_qkv"].status == "ok" and lines["channels_last"].status == "ok"
    assert lines["torch.compile"].status == "skipped"
    assert lines["fp8"].status == "no" and "bfloat16" not in lines["fp8"].detail  # torchao missing, or not
    batch = lines["largest batch"]
    assert batch.status == "ok" and batch.value["largest"] == 4 and set(batch.value["peaks"]) == {1, 2, 4, 8}
    assert batch.value["recommended"] in (1, 2, 4) and report.recommend["diffusion"]["batch_size"] == batch.value["recommended"]
    assert report.recommend["diffusion"]["attention"] in ("auto", "efficient", "math")
    assert isinstance(report.recommend["diffusion"]["fuse_qkv"], bool)
    assert "  batch_size: " in doctor.recommended_yaml(report)


def test_an_exception_in_a_check_is_its_line_not_a_traceback(capsys):
    report = doctor.Report(10)
    with doctor.attempt(report, "generation", "x"):
        raise RuntimeError("No available kernel. Aborting execution.\nsecond line")
    assert report.checks[-1].status == "no" and report.checks[-1].detail == "RuntimeError: No available kernel. Aborting execution."
