"""The generate stage end to end on a tiny random Stable Diffusion pipeline (CPU, seconds).

Determinism, resume after SIGKILL, corruption detection, invalidation, multi-process equality,
safety-checker regenerations, one-line errors. Pipeline parity and downsampling bounds are in
tests/test_generate_parity.py.
"""
from __future__ import annotations

import hashlib
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
from PIL import Image

from diffaug.config import DiffusionConfig, load_config
from diffaug.errors import UserError
from diffaug.formats import synthetic as storage
from diffaug.generate import runner
from diffaug.generate.__main__ import main
from diffaug.generate.plan import PIXEL_SETTINGS, SPEED_SETTINGS, build_plan, image_seed
from diffaug.generate.sampler import Sampler, downsample
from diffaug.sandbox.tiny import tiny_diffusion_params

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["airplane", "automobile", "bird"]
IMAGES_PER_CLASS, IMAGES_PER_SHARD = 4, 2  # 12 images in 6 shards
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="session")
def tiny_without_checker(tiny_pipelines) -> Path:
    return tiny_pipelines("sd", safety_checker=False)


def write_inputs(folder: Path, model: Path, *, diffusion=None, synthetic=None, syn1=None) -> tuple[Path, Path]:
    """params.yaml (the repository's, with the tiny model) and classes.json in `folder`."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["diffusion"] = {**tiny_diffusion_params(model), "steps": 4, "batch_size": 3, **(diffusion or {})}
    params["synthetic"].update({"images_per_class": IMAGES_PER_CLASS, "images_per_shard": IMAGES_PER_SHARD, **(synthetic or {})})
    params["synthetic"]["sets"]["syn1"].update(syn1 or {})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    (folder / "classes.json").write_text(json.dumps({"classes": CLASSES, "image_size": [32, 32]}))
    return folder / "params.yaml", folder / "classes.json"


def cli_args(params: Path, classes: Path, out: Path, set_name: str = "syn1") -> list[str]:
    return [set_name, "--params", str(params), "--classes", str(classes), "--out", str(out)]


def generate(params: Path, classes: Path, out: Path) -> Path:
    assert main(cli_args(params, classes, out)) == 0
    return out


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tiny_sd, tmp_path_factory) -> tuple[Path, Path, Path]:
    """An uninterrupted single-process run: (params, classes, out)."""
    folder = tmp_path_factory.mktemp("reference")
    params, classes = write_inputs(folder, tiny_sd)
    return params, classes, generate(params, classes, folder / "out")


# ----------------------------------------------------------------------------- seeds and layout
def test_seeds_are_a_pure_function_of_the_image():
    seed = image_seed(0, "syn1", "airplane", 0)
    assert seed == image_seed(0, "syn1", "airplane", 0) == int.from_bytes(
        hashlib.sha256(b"diffaug/v1|0|syn1|airplane|0|0").digest()[:8], "big")
    variants = {image_seed(1, "syn1", "airplane", 0), image_seed(0, "syn2", "airplane", 0),
                image_seed(0, "syn1", "bird", 0), image_seed(0, "syn1", "airplane", 1),
                image_seed(0, "syn1", "airplane", 0, attempt=1)}
    assert seed not in variants and len(variants) == 5
    assert all(0 <= s < 2**64 for s in variants)


def test_output_layout_and_reader(reference):
    _, _, out = reference
    n = len(CLASSES) * IMAGES_PER_CLASS
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "samples.png"] + [f"shard-{k:05d}.npz" for k in range(6)]
    images, labels = storage.load_synthetic(out)
    assert images.shape == (n, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [c for c in range(3) for _ in range(IMAGES_PER_CLASS)]
    assert images.std() > 5  # real (noise-like) pictures, not a constant
    manifest = json.loads((out / "manifest.json").read_text())
    first = manifest["images"][IMAGES_PER_CLASS]  # automobile #0: label_names maps it to "car"
    assert (first["class"], first["index"], first["prompt"]) == ("automobile", 0, "car")
    assert first["seed"] == image_seed(0, "syn1", "automobile", 0) and first["regenerations"] == 0
    assert manifest["settings_hash"] and manifest["settings"]["diffusion"]["model_fingerprint"].startswith("sha256:")
    assert [s["file"] for s in manifest["shards"]] == [f"shard-{k:05d}.npz" for k in range(6)]
    assert storage.synthetic_digest(out) == manifest["digest"] and len(manifest["digest"]) == 16
    grid = np.asarray(Image.open(out / "samples.png").convert("RGB"))
    assert grid.shape[0] == 3 * (64 + 2) + 2  # a row per class
    label_width = grid.shape[1] - 4 * (64 + 2)  # then 4 tiles per row, the class name to their left
    assert 30 < label_width < 150
    for row in range(3):  # a dark class name in each row's label column
        band = grid[2 + row * 66: 2 + row * 66 + 64, :label_width - 2]
        assert (band.min(axis=2) < 100).sum() > 20


def test_settings_hash_ignores_speed_levers_only(tiny_sd, tmp_path):
    fields = set(DiffusionConfig.model_fields)
    assert set(PIXEL_SETTINGS) | set(SPEED_SETTINGS) == fields and not set(PIXEL_SETTINGS) & set(SPEED_SETTINGS)

    def plan_hash(**diffusion):
        params, _ = write_inputs(tmp_path / str(len(list(tmp_path.iterdir()))), tiny_sd, diffusion=diffusion)
        return build_plan(load_config(params), "syn1", CLASSES, (32, 32), "fp").settings_hash

    base = plan_hash()
    assert plan_hash(batch_size=7, channels_last=True, fuse_qkv=True, compile=True, compile_mode="max-autotune",
                     cuda_graphs=True, attention="math", allow_cpu=True) == base
    assert plan_hash(steps=9) != base and plan_hash(seed=1) != base and plan_hash(scheduler="ddim") != base


# ----------------------------------------------------------------------------- determinism and resume
def test_two_runs_give_identical_bytes(reference, tmp_path):
    params, classes, out = reference
    again = generate(params, classes, tmp_path / "again")
    assert files(again) == files(out)


def test_batch_size_changes_no_seed_and_at_most_one_level(reference, tmp_path):
    """Seeds and latents never depend on batching; pixels may move by float noise, <= 1 level."""
    params, classes, out = reference
    other, _ = write_inputs(tmp_path, Path(yaml.safe_load(params.read_text())["diffusion"]["model"]), diffusion={"batch_size": 5})
    again = generate(other, classes, tmp_path / "out")
    ref, new = json.loads((out / "manifest.json").read_text()), json.loads((again / "manifest.json").read_text())
    assert ref["settings_hash"] == new["settings_hash"]
    assert [e["seed"] for e in ref["images"]] == [e["seed"] for e in new["images"]]
    a, b = storage.load_synthetic(out)[0].astype(int), storage.load_synthetic(again)[0].astype(int)
    assert np.abs(a - b).max() <= 1


@pytest.mark.slow  # end to end: a CLI subprocess killed, or two under torchrun
def test_kill_9_mid_run_then_rerun_equals_uninterrupted(tiny_sd, tmp_path):
    params, classes = write_inputs(tmp_path, tiny_sd, diffusion={"steps": 30, "batch_size": 2})
    expected = files(generate(params, classes, tmp_path / "uninterrupted"))
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "diffaug.generate", *cli_args(params, classes, out)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(out.glob("shard-*.npz")):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no shard appeared within 120 s"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    survivors = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("shard-*.npz")}
    assert 1 <= len(survivors) < 6 and not (out / "manifest.json").exists(), "the kill must land mid-run"

    generate(params, classes, out)
    assert files(out) == expected
    assert all((out / name).stat().st_ino == ino and (out / name).stat().st_mtime_ns == mtime
               for name, (ino, mtime) in survivors.items()), "complete shards must not be made again"
    assert not list(out.glob(".*.tmp"))


def test_corrupt_shard_is_reported_then_regenerated(reference, tmp_path):
    params, classes, out = reference
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    shard = copy / "shard-00003.npz"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the pixel array
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError) as err:
        storage.load_synthetic(copy)
    message = str(err.value)
    assert "shard-00003.npz" in message and "sha256" in message and "\n" not in message
    mtimes = {p.name: p.stat().st_mtime_ns for p in copy.glob("shard-*.npz")}
    generate(params, classes, copy)
    assert files(copy) == files(out)
    changed = {p.name for p in copy.glob("shard-*.npz") if p.stat().st_mtime_ns != mtimes[p.name]}
    assert changed == {"shard-00003.npz"}


@pytest.mark.parametrize("change", [{"diffusion": {"seed": 1}}, {"syn1": {"prompt": ["a photo of a {label}", "{label}"]}}])
def test_a_settings_change_replaces_every_shard(reference, tmp_path, change):
    params, classes, out = reference
    model = Path(yaml.safe_load(params.read_text())["diffusion"]["model"])
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    changed_params, _ = write_inputs(tmp_path, model, **change)
    generate(changed_params, classes, copy)
    fresh = generate(changed_params, classes, tmp_path / "fresh")
    assert files(copy) == files(fresh)  # nothing of the old settings survives
    old, new = files(out), files(copy)
    assert all(old[name] != new[name] for name in new if name.startswith("shard-"))
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["settings_hash"] != json.loads((out / "manifest.json").read_text())["settings_hash"]
    if "syn1" in change:
        assert [e["prompt"] for e in manifest["images"][:2]] == ["a photo of a airplane", "airplane"]


def test_a_smaller_set_drops_stale_shards(reference, tmp_path):
    params, classes, out = reference
    model = Path(yaml.safe_load(params.read_text())["diffusion"]["model"])
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    smaller, _ = write_inputs(tmp_path, model, synthetic={"images_per_class": 2})
    generate(smaller, classes, copy)
    assert sorted(p.name for p in copy.glob("shard-*.npz")) == ["shard-00000.npz", "shard-00001.npz", "shard-00002.npz"]
    assert storage.load_synthetic(copy)[0].shape == (6, 32, 32, 3)


@pytest.mark.slow  # end to end: a CLI subprocess killed, or two under torchrun
def test_two_processes_equal_one(reference, tmp_path):
    params, classes, out = reference
    multi = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "diffaug.generate", *cli_args(params, classes, multi)]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert files(multi) == files(out)
    shard_devices = {s["device"] for s in json.loads((multi / "manifest.json").read_text())["shards"]}
    assert shard_devices == {"cpu"}


def test_a_final_single_pass_assembles_without_a_model(reference, tmp_path):
    """Multi-node recipe: shards copied together, then one plain run writes the manifest only."""
    params, classes, out = reference
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    (copy / "manifest.json").unlink()
    (copy / "samples.png").unlink()
    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded when every shard is valid")

    original, runner.open_sampler = runner.open_sampler, no_model
    try:
        generate(params, classes, copy)
    finally:
        runner.open_sampler = original
    assert files(copy) == files(out)


# ----------------------------------------------------------------------------- safety checker
def _flag_by_hash(self, images_u8_cpu):
    """A stand-in checker: flags ~40% of images, as a pure function of their pixels."""
    return [hashlib.sha256(im.numpy().tobytes()).digest()[0] < 100 for im in images_u8_cpu]


def test_flagged_images_are_regenerated_with_the_next_seed(tiny_sd, tmp_path, monkeypatch):
    monkeypatch.setattr(Sampler, "safety_flags", _flag_by_hash)
    params, classes = write_inputs(tmp_path, tiny_sd)
    out = generate(params, classes, tmp_path / "out")
    manifest = json.loads((out / "manifest.json").read_text())
    regenerated = [e for e in manifest["images"] if e["regenerations"] > 0]
    assert regenerated and manifest["regenerations"] == sum(e["regenerations"] for e in manifest["images"])
    assert manifest["still_flagged_blacked_out"] == 0
    for e in manifest["images"]:
        assert e["seed"] == image_seed(0, "syn1", e["class"], e["index"], attempt=e["regenerations"]) and not e["flagged"]


def test_images_still_flagged_after_the_limit_are_black_and_counted(tiny_sd, tmp_path, monkeypatch):
    monkeypatch.setattr(Sampler, "safety_flags", _flag_by_hash)
    params, classes = write_inputs(tmp_path, tiny_sd, diffusion={"max_regenerations": 0})
    out = generate(params, classes, tmp_path / "out")
    manifest = json.loads((out / "manifest.json").read_text())
    flagged = [j for j, e in enumerate(manifest["images"]) if e["flagged"]]
    assert flagged and manifest["still_flagged_blacked_out"] == len(flagged) and manifest["regenerations"] == 0
    images, _ = storage.load_synthetic(out)
    assert all(images[j].max() == 0 for j in flagged)
    assert all(images[j].max() > 0 for j in range(len(images)) if j not in flagged)


# ----------------------------------------------------------------------------- errors
def _error_cases(tiny_sd, tiny_without_checker, tmp_path):
    return {
        "missing model directory": ({"diffusion": {"model": str(tmp_path / "no-such-model")}}, "syn1", "diffusion.model"),
        "safety checker on but absent": ({"diffusion": {"model": str(tiny_without_checker)}}, "syn1", "diffusion.safety_checker"),
        "paper-sized run on the CPU": ({"diffusion": {"resolution": 512, "steps": 50},
                                        "synthetic": {"images_per_class": 5000, "images_per_shard": 1000}}, "syn1", "diffusion.allow_cpu"),
        "fp16 variant absent": ({"diffusion": {"variant": "fp8"}}, "syn1", "diffusion.variant"),
        "unknown scheduler": ({"diffusion": {"scheduler": "lms"}}, "syn1", "diffusion.scheduler"),
        "unknown set": ({}, "syn3", "set: 'syn3' is not declared under synthetic.sets"),
        "classes.json missing": ({"classes": "absent"}, "syn1", "classes.json: not found"),
    }


@pytest.mark.parametrize("case", ["missing model directory", "safety checker on but absent", "paper-sized run on the CPU",
                                  "fp16 variant absent", "unknown scheduler", "unknown set", "classes.json missing"])
def test_bad_input_is_one_line_exit_2_nothing_written(tiny_sd, tiny_without_checker, tmp_path, capsys, case):
    change, set_name, expected = _error_cases(tiny_sd, tiny_without_checker, tmp_path)[case]
    params, classes = write_inputs(tmp_path / "in", tiny_sd, diffusion=change.get("diffusion"), synthetic=change.get("synthetic"))
    if change.get("classes") == "absent":
        classes.unlink()
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args(params, classes, out, set_name))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert not out.exists()


def test_safety_checker_message_says_how_to_turn_it_off(tiny_without_checker, tmp_path, capsys):
    params, classes = write_inputs(tmp_path, tiny_without_checker)
    with pytest.raises(SystemExit):
        main(cli_args(params, classes, tmp_path / "out"))
    assert "diffusion.safety_checker: false" in capsys.readouterr().err
    params, classes = write_inputs(tmp_path, tiny_without_checker, diffusion={"safety_checker": False})
    assert main(cli_args(params, classes, tmp_path / "out")) == 0


def test_cli_reports_cost_before_and_during_the_run(tiny_sd, tmp_path, capsys):
    params, classes = write_inputs(tmp_path, tiny_sd)
    generate(params, classes, tmp_path / "out")
    err = capsys.readouterr().err
    assert "12 images to make (6 of 6 shards)" in err
    assert "images/s (after a warm-up batch)" in err and "ETA" in err


def test_full_resolution_pngs_are_kept_and_checked(tiny_sd, tmp_path):
    params, classes = write_inputs(tmp_path, tiny_sd, synthetic={"save_full_resolution": True, "images_per_class": 2})
    out = generate(params, classes, tmp_path / "out")
    pngs = sorted((out / "full").rglob("*.png"))
    names = [p.relative_to(out / "full").as_posix() for p in pngs]
    assert names[:2] == ["shard-00000/airplane_00000.png", "shard-00000/airplane_00001.png"]
    assert len(pngs) == 6 and Image.open(pngs[0]).size == (64, 64)
    full = torch.from_numpy(np.stack([np.asarray(Image.open(p)) for p in pngs])).permute(0, 3, 1, 2)
    assert np.array_equal(downsample(full, (32, 32)).permute(0, 2, 3, 1).numpy(), storage.load_synthetic(out)[0])
    before = files(out)
    pngs[3].unlink()  # a shard whose PNGs are incomplete is made again
    generate(params, classes, out)
    assert files(out) == before


def test_package_imports_neither_torch_nor_diffusers_nor_dvc():
    code = ("import sys, diffaug.generate, diffaug.formats.synthetic; "
            "bad = [m for m in ('torch', 'diffusers', 'transformers', 'dvc') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], env=ENV, check=True, timeout=60)
