"""Speed and approximate levers, provenance and non-finite refusal, on the tiny pipeline.

Default lever choice and its stated reasons; every approximate lever off unless asked for and in
the settings hash when on; per-shard provenance in the manifest; a resume at another batch size
that continues and says so; NaN/inf refused with one line.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
import yaml

import diffaug.generate.__main__ as cli
from diffaug.config import DiffusionConfig, load_config
from diffaug.formats import synthetic as storage
from diffaug.generate import model
from diffaug.generate.__main__ import main
from diffaug.generate.model import Levers, apply_levers, choose_levers
from diffaug.generate.plan import COMPILE_AUTO_IMAGES, build_plan
from diffaug.generate.sampler import Sampler
from test_generate import CLASSES, cli_args, files, generate, write_inputs
from test_generate_parity import load

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["a photo of a car", "airplane", "bird", "car"]
SEEDS = [3, 1, 4, 1 << 40]

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- defaults and their reasons
def test_default_levers_are_the_measured_ones_and_approximations_are_off():
    dif = DiffusionConfig()
    assert (dif.channels_last, dif.fuse_qkv, dif.compile, dif.cuda_graphs, dif.attention) == (False, True, "auto", False, "auto")
    assert dif.cache == "none" and dif.fp8 is False and dif.scheduler == "default" and dif.steps is None  # family default
    assert dif.batch_size == "auto" and dif.cpu_offload is False
    shipped = yaml.safe_load((REPO / "params.yaml").read_text())["diffusion"]
    levers = ("channels_last", "compile", "batch_size", "cache", "fp8", "scheduler")
    assert all(shipped.get(k, getattr(dif, k)) == getattr(dif, k) for k in levers)  # params.yaml keeps the code defaults
    assert shipped["steps"] == 50  # the paper's, explicit


def test_compile_auto_is_eager_on_cpu_and_for_small_runs_and_says_why():
    dif = DiffusionConfig(steps=50, guidance_scale=7.5, resolution=512)
    needed = COMPILE_AUTO_IMAGES
    assert 200 < needed < 5000  # ~1,200 images at the paper's settings on an H100 (measured rates)
    cpu = choose_levers(dif, "cpu", 50_000)
    assert not cpu.compile and "eager on cpu" in cpu.reason
    small = choose_levers(dif, "cuda", needed - 1)
    assert not small.compile and f"{needed - 1} images < {needed}" in small.reason
    big = choose_levers(dif, "cuda", 50_000)
    assert big.compile and "50000 images >=" in big.reason and big.inductor_mode == "default"
    forced = choose_levers(dif.model_copy(update={"compile": True}), "cpu", 1)
    assert forced.compile and forced.reason == "diffusion.compile: true"
    off = choose_levers(dif.model_copy(update={"compile": False}), "cuda", 50_000)
    assert not off.compile and off.reason == "diffusion.compile: false"
    # CUDA graphs are inductor's reduce-overhead mode (max-autotune with them when autotuning).
    assert Levers(compile=True, cuda_graphs=True).inductor_mode == "reduce-overhead"
    assert Levers(compile=True, cuda_graphs=True, compile_mode="max-autotune-no-cudagraphs").inductor_mode == "max-autotune"


def test_cli_states_the_lever_choice(tiny_sd, tmp_path, capsys):
    params, classes = write_inputs(tmp_path, tiny_sd, diffusion={"compile": "auto"}, synthetic={"images_per_class": 1})
    assert main(cli_args(params, classes, tmp_path / "out")) == 0
    err = capsys.readouterr().err
    assert "compile: auto stays eager on cpu" in err and "batch 3, fused QKV False, channels_last False" in err


@pytest.mark.parametrize("change", [{"cache": "first_block"}, {"fp8": True}, {"scheduler": "dpmsolver++", "steps": 20}])
def test_each_approximate_lever_changes_the_settings_hash(tiny_sd, tmp_path, change):
    def plan_hash(**diffusion):
        params, _ = write_inputs(tmp_path / str(len(list(tmp_path.iterdir()))), tiny_sd, diffusion=diffusion)
        return build_plan(load_config(params), "syn1", CLASSES, (32, 32), "fp")

    base, approx = plan_hash(), plan_hash(**change)
    assert approx.settings_hash != base.settings_hash
    assert all(approx.settings["diffusion"][k] == v for k, v in change.items())
    assert not {"deep_cache", "fp8", "cache"} & set(base.settings["diffusion"])  # off: as before they existed


@pytest.mark.parametrize("value, message", [(1, "diffusion.deep_cache"), ("sometimes", "diffusion.compile"),
                                            ("xformers", "diffusion.attention")])
def test_bad_lever_values_are_one_line(tiny_sd, tmp_path, capsys, value, message):
    key = message.split(".")[1]
    params, classes = write_inputs(tmp_path, tiny_sd, diffusion={key: value})
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args(params, classes, tmp_path / "out"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and message in err


def test_fp8_on_a_cpu_is_refused_with_one_line(tiny_sd, tmp_path, capsys):
    params, classes = write_inputs(tmp_path, tiny_sd, diffusion={"fp8": True})
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args(params, classes, tmp_path / "out"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "diffusion.fp8" in err and "CUDA" in err
    assert not list((tmp_path / "out").glob("shard-*"))


# ----------------------------------------------------------------------------- non-finite values
def test_infinite_guidance_is_rejected_before_any_work(tiny_sd, tmp_path, capsys):
    params, classes = write_inputs(tmp_path, tiny_sd)
    params.write_text(params.read_text().replace("guidance_scale: 7.5", "guidance_scale: .inf"))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args(params, classes, out))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "diffusion.guidance_scale" in err
    assert not out.exists()


def test_nan_images_stop_the_run_with_one_line_and_write_no_shard(tiny_sd, tmp_path, capsys, monkeypatch):
    call = Sampler.call

    def nan_images(self, *args, **kwargs):
        images, latents = call(self, *args, **kwargs)
        return images * float("nan"), latents
    monkeypatch.setattr(Sampler, "call", nan_images)
    params, classes = write_inputs(tmp_path, tiny_sd)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args(params, classes, out))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and err.startswith("error: syn1: shard 0 (shard-00000.npz), batch 0:")
    assert "non-finite" in err and "diffusion.dtype" in err
    assert not list(out.glob("shard-*.npz")) and not (out / "manifest.json").exists()


# ----------------------------------------------------------------------------- provenance and resume
def test_every_shard_records_how_it_was_made(tiny_sd, tmp_path):
    params, classes = write_inputs(tmp_path, tiny_sd, synthetic={"images_per_class": 2})
    out = generate(params, classes, tmp_path / "out")
    manifest = json.loads((out / "manifest.json").read_text())
    for shard in manifest["shards"]:
        prov = shard["provenance"]
        assert prov["batch_size"] == 3 and prov["device"] == "cpu" and prov["gpu"] is None
        assert prov["torch"] == torch.__version__ and prov["diffusers"] and "cuda" in prov
        assert {"fuse_qkv", "channels_last", "compile", "compile_mode", "attention"} <= set(prov)
    groups = manifest["provenance"]["groups"]
    assert len(groups) == 1 and groups[0]["shards"] == list(range(3)) and "same bytes" in manifest["provenance"]["note"]


def test_resume_with_another_batch_size_continues_and_the_manifest_says_so(tiny_sd, tmp_path):
    params, classes = write_inputs(tmp_path / "a", tiny_sd)
    out = generate(params, classes, tmp_path / "out")
    before = files(out)
    for k in (4, 5):  # as if the run had been killed after shard 3
        (out / storage.shard_name(k)).unlink()
    (out / "manifest.json").unlink()
    other, _ = write_inputs(tmp_path / "b", tiny_sd, diffusion={"batch_size": 2})
    generate(other, classes, out)
    after = files(out)
    assert all(after[storage.shard_name(k)] == before[storage.shard_name(k)] for k in range(4)), "finished shards kept"
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["provenance"]["batch_size"] for s in manifest["shards"]] == [3, 3, 3, 3, 2, 2]
    groups = manifest["provenance"]["groups"]
    assert [g["shards"] for g in groups] == [[0, 1, 2, 3], [4, 5]]
    assert [g["provenance"]["batch_size"] for g in groups] == [3, 2]
    assert "2 different provenances" in manifest["provenance"]["note"] and "match no single run" in manifest["provenance"]["note"]
    ref = generate(params, classes, tmp_path / "ref")
    diff = np.abs(storage.load_synthetic(ref)[0].astype(int) - storage.load_synthetic(out)[0])
    assert diff.max() <= 1


def test_batch_size_differences_on_this_cpu_are_at_most_one_level(tiny_sd):
    """The CPU figure of docs/generators.md: the same 24 images at batch 1, 4 and 8; fraction of uint8 values that differ."""
    pipe = load(tiny_sd)
    s = Sampler(pipe, steps=8, guidance_scale=7.5, resolution=64, out_size=(32, 32))
    s.encode_prompts(sorted(set(PROMPTS)), None)
    seeds, prompts = list(range(24)), [PROMPTS[i % 4] for i in range(24)]

    def images(batch):
        return np.concatenate([s.run_batch(seeds[i:i + batch], prompts[i:i + batch], want_full=True).full
                               for i in range(0, 24, batch)]).astype(int)

    one = images(1)
    for batch in (4, 8):
        diff = np.abs(images(batch) - one)
        assert diff.max() <= 1, (batch, diff.max())
        print(f"batch {batch} vs 1: {np.mean(diff > 0):.4%} of uint8 values differ (max {diff.max()})")


# ----------------------------------------------------------------------------- attention and compile
def full_images(pipe, steps: int, attention: str = "auto") -> np.ndarray:
    """The generation-resolution images (int) of SEEDS x PROMPTS through our Sampler."""
    s = Sampler(pipe, steps=steps, guidance_scale=7.5, resolution=64, out_size=(32, 32), attention=attention)
    s.encode_prompts(sorted(set(PROMPTS)), None)
    return s.run_batch(SEEDS, PROMPTS, want_full=True).full.astype(int)


def test_attention_backend_and_dynamo_compile_keep_the_images(tiny_sd):
    exact = full_images(load(tiny_sd), 4)
    assert np.abs(full_images(load(tiny_sd), 4, attention="math") - exact).max() <= 1
    pipe = load(tiny_sd)
    apply_levers(pipe, Levers(compile=True, fuse_qkv=False), compile_backend="eager")  # dynamo's tracing, no inductor
    assert np.abs(full_images(pipe, 4) - exact).max() <= 1


# ----------------------------------------------------------------------------- the model is pinned once
def test_a_hub_model_is_pinned_to_one_snapshot_before_planning(tmp_path, monkeypatch):
    repo = tmp_path / "models--org--sd"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "model_index.json").write_text("{}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    downloads = []
    fetched = tmp_path / "models--org--not-cached" / "snapshots" / "def456"
    monkeypatch.setattr(model, "download_hub_snapshot", lambda dif: downloads.append(dif.model) or fetched)

    cached = model.resolve_model(DiffusionConfig(model="org/sd"))
    assert cached == model.ModelSource("org/sd", "abc123", "hub-commit:abc123", repo / "snapshots" / "abc123") and downloads == []
    fresh = model.resolve_model(DiffusionConfig(model="org/not-cached"))
    assert fresh == model.ModelSource("org/not-cached", "def456", "hub-commit:def456", fetched) and downloads == ["org/not-cached"]


def test_the_plan_is_built_once_per_run(tiny_sd, tmp_path, monkeypatch):
    calls = []
    build = cli.build_plan
    monkeypatch.setattr(cli, "build_plan", lambda *a, **k: calls.append(a[1]) or build(*a, **k))
    params, classes = write_inputs(tmp_path, tiny_sd, synthetic={"images_per_class": 1})
    assert main(cli_args(params, classes, tmp_path / "out")) == 0
    assert calls == ["syn1"]


def test_inductor_cache_is_a_git_ignored_folder_of_the_repository(tmp_path, monkeypatch):
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_CACHE", "TORCHINDUCTOR_AUTOGRAD_CACHE"):
        monkeypatch.delenv(name, raising=False)
    folder = model.use_inductor_cache(tmp_path)
    assert folder == (tmp_path / ".cache" / "torchinductor").resolve() and folder.is_dir()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(folder) and os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] == "1"
    ignored = subprocess.run(["git", "check-ignore", "-q", ".cache/torchinductor/fxgraph/x"], cwd=REPO)
    assert ignored.returncode == 0, ".cache/ must be in .gitignore"


def test_cpu_offload_hooks_the_pipeline_onto_the_gpu_instead_of_moving_it(tiny_sd):
    """diffusion.cpu_offload on a GPU: diffusers' enable_model_cpu_offload (accelerate's hooks) in place of .to(device).
    Installing the hooks moves nothing, so a CPU-only machine checks them with a CUDA device named. (Without the
    safety checker, which diffusers keeps out of offloading: it would be moved to the GPU at once.)"""
    dif = DiffusionConfig(model=str(tiny_sd), variant=None, dtype="float32", cpu_offload=True, safety_checker=False)
    source = model.resolve_model(dif)
    pipe = model.load_pipeline(dif, source, model.check_model_files(Path(source.load_from), dif), torch.device("cuda", 0))
    assert pipe._offload_device == torch.device("cuda", 0)
    assert all(hasattr(part, "_hf_hook") for part in (pipe.text_encoder, pipe.unet, pipe.vae))  # each moves to the GPU when called
    assert {p.device.type for p in pipe.unet.parameters()} == {"cpu"}
