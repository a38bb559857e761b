"""Every model family through the generate CLI on tiny random pipelines (CPU), and what is family-aware:
defaults for null settings, the manifest's record, img2img where diffusers has a twin, one-line
refusals (unsupported family, DiT without class ids, a lever the family lacks), batch_size auto and
the halving of a batch that runs out of GPU memory (faked on the CPU).
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch

from diffaug.formats import synthetic as storage
from diffaug.generate import model as model_module
from diffaug.generate import runner
from diffaug.generate.__main__ import main
from diffaug.generate.families import FAMILIES
from diffaug.generate.sampler import Sampler
from test_generate import cli_args, write_inputs
from test_generate_img2img import args as img2img_args
from test_generate_img2img import real_splits, write_params

pytestmark = pytest.mark.usefixtures("one_thread")
CLASS_IDS = {"airplane": [404], "automobile": [817, 511], "bird": 10}
PIPELINES = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline", "sd3": "StableDiffusion3Pipeline",
             "flux": "FluxPipeline", "pixart": "PixArtSigmaPipeline", "sana": "SanaPipeline", "dit": "DiTPipeline"}


def inputs(tmp_path: Path, model: Path, family: str, syn1: dict | None = None, **diffusion):
    """params.yaml and classes.json for 3 classes x 1 image, 2 steps, at 64² (DiT: its native size), the
    family's guidance."""
    settings = {"steps": 2, "resolution": None if family == "dit" else 64, "guidance_scale": None, "batch_size": 2,
                "safety_checker": family == "sd", **diffusion}
    return write_inputs(tmp_path, model, diffusion=settings, synthetic={"images_per_class": 1},
                        syn1={"class_ids": CLASS_IDS} if family == "dit" else syn1)


def refused(params: Path, classes: Path, out: Path, capsys, set_name: str = "syn1", argv=None) -> str:
    capsys.readouterr()  # building a tiny model prints progress bars
    with pytest.raises(SystemExit) as exit_info:
        main(argv or cli_args(params, classes, out, set_name))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert not out.exists() or not any(out.iterdir())
    return err


# ----------------------------------------------------------------------------- defaults
def test_family_defaults_are_the_installed_pipelines_own():
    for family in FAMILIES.values():
        for name in family.classes:
            params = inspect.signature(getattr(diffusers, name).__call__).parameters
            assert params["num_inference_steps"].default == family.steps, name
            assert params["guidance_scale"].default == family.guidance_scale, name
            for key in family.embeddings:
                assert key is None or key in params, (name, key)


# ----------------------------------------------------------------------------- every family, through the CLI
@pytest.mark.parametrize("family", list(PIPELINES))
def test_each_family_makes_a_set_through_the_cli(tiny_pipelines, tmp_path, capsys, family):
    """With fused QKV, and FirstBlockCache where the family has it: the levers apply to every family."""
    cache = "first_block" if FAMILIES[family].cache else "none"
    params, classes = inputs(tmp_path, tiny_pipelines(family), family, safety_checker=True, fuse_qkv=True, cache=cache)
    out = tmp_path / "out"
    assert main(cli_args(params, classes, out)) == 0
    err = capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    generator = manifest["generator"]
    assert generator["pipeline"] == PIPELINES[family] and generator["family"].split()[0] == family
    dif = manifest["settings"]["diffusion"]
    assert dif.get("family", "sd") == family and dif["steps"] == 2 and dif.get("cache", "none") == cache
    assert all(s["provenance"]["fuse_qkv"] for s in manifest["shards"])
    assert dif["guidance_scale"] == FAMILIES[family].guidance_scale and generator["family_defaults"] == (
        ["guidance_scale", "resolution"] if family == "dit" else ["guidance_scale"])
    if family == "sd":
        assert generator["safety_checker"] == "on" and dif["safety_checker"] is True
    else:  # asked for, but the family ships none: said once, recorded, and the hash records what ran
        assert generator["safety_checker"].startswith("none: ") and dif["safety_checker"] is False
        assert "ships no safety checker" in err
    images, labels = storage.load_synthetic(out)
    assert images.shape == (3, 32, 32, 3) and labels.tolist() == [0, 1, 2]
    assert images.std() > 5 and not np.array_equal(images[0], images[1])
    if family == "dit":
        assert [e["prompt"] for e in manifest["images"]] == ["imagenet class 404", "imagenet class 817", "imagenet class 10"]
        assert manifest["settings"]["prompts"] == {"class_ids": {"airplane": [404], "automobile": [817, 511], "bird": [10]}}


def test_family_defaults_fill_nulls_and_enter_the_hash(tiny_pipelines, tmp_path):
    params, classes = inputs(tmp_path, tiny_pipelines("dit"), "dit", steps=None, guidance_scale=None)
    assert main(cli_args(params, classes, tmp_path / "out")) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    dif = manifest["settings"]["diffusion"]
    assert (dif["steps"], dif["guidance_scale"], dif["resolution"]) == (50, 4.0, 64)
    assert manifest["generator"]["family_defaults"] == ["steps", "guidance_scale", "resolution"]


def test_a_flux_run_interrupted_between_shards_resumes(tiny_pipelines, tmp_path, monkeypatch):
    params, classes = inputs(tmp_path, tiny_pipelines("flux"), "flux")
    reference = tmp_path / "reference"
    assert main(cli_args(params, classes, reference)) == 0
    out, written, real_write = tmp_path / "out", [], storage.write_shard

    def write_then_die(out_dir, k, *a, **kw):
        real_write(out_dir, k, *a, **kw)
        written.append(k)
        raise KeyboardInterrupt  # as a kill right after the first shard
    monkeypatch.setattr(storage, "write_shard", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        main(cli_args(params, classes, out))
    monkeypatch.setattr(storage, "write_shard", real_write)
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.npz")}
    assert len(kept) == 1 and not (out / "manifest.json").exists()
    assert main(cli_args(params, classes, out)) == 0
    assert all((out / n).stat().st_mtime_ns == t for n, t in kept.items())
    assert (out / "manifest.json").read_bytes() == (reference / "manifest.json").read_bytes()


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_img2img_sets_on_every_family_with_a_twin(tiny_pipelines, tmp_path, family):
    prepared = real_splits(tmp_path / "prepared")
    params = write_params(tmp_path, tiny_pipelines(family), diffusion={"steps": 4, "safety_checker": False},
                          spec={"images_per_class": 1})
    assert main(img2img_args(params, prepared, tmp_path / "out")) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["generator"]["family"] == family and manifest["settings"]["kind"] == "img2img"
    assert all(e["source_split"] == "train" for e in manifest["images"])


# ----------------------------------------------------------------------------- refusals, before the model loads
@pytest.fixture
def no_load(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("the model must not be loaded")
    monkeypatch.setattr(runner, "open_sampler", fail)


def test_an_unsupported_family_is_one_line(tmp_path, capsys, no_load):
    model = tmp_path / "kandinsky"
    model.mkdir()
    (model / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyV22Pipeline"}))
    params, classes = inputs(tmp_path, model, "sdxl")
    err = refused(params, classes, tmp_path / "out", capsys)
    assert "diffusion.model" in err and "KandinskyV22Pipeline" in err and "sdxl (StableDiffusionXLPipeline)" in err


def test_a_dit_class_without_ids_is_one_line(tiny_pipelines, tmp_path, capsys, no_load):
    params, classes = write_inputs(tmp_path, tiny_pipelines("dit"), diffusion={"steps": 2, "resolution": None, "safety_checker": False},
                                   syn1={"class_ids": {"airplane": 1, "automobile": 2}})
    err = refused(params, classes, tmp_path / "out", capsys)
    assert "synthetic.sets.syn1.class_ids.bird" in err


@pytest.mark.parametrize("family, change, key", [
    ("sd", {"cache": "first_block"}, "diffusion.cache"),
    ("sana", {"cache": "first_block"}, "diffusion.cache"),
    ("flux", {"channels_last": True}, "diffusion.channels_last"),
    ("sd3", {"scheduler": "ddim"}, "diffusion.scheduler"),
    ("dit", {"resolution": 128}, "diffusion.resolution"),
    ("sdxl", {"syn1": {"class_ids": {"airplane": 1}}}, "synthetic.sets.syn1.class_ids"),
    ("flux", {"syn1": {"negative_prompt": "blurry"}}, "synthetic.sets.syn1.negative_prompt"),
])
def test_a_setting_the_family_lacks_is_one_line(tiny_pipelines, tmp_path, capsys, no_load, family, change, key):
    params, classes = inputs(tmp_path, tiny_pipelines(family), family, **change)
    assert key in refused(params, classes, tmp_path / "out", capsys)


def test_img2img_on_a_family_without_a_twin_is_one_line(tiny_pipelines, tmp_path, capsys, no_load):
    prepared = real_splits(tmp_path / "prepared")
    params = write_params(tmp_path, tiny_pipelines("pixart"), diffusion={"steps": 4, "safety_checker": False})
    err = refused(params, None, tmp_path / "out", capsys, argv=img2img_args(params, prepared, tmp_path / "out"))
    assert "synthetic.sets.i2i.kind: img2img" in err and "PixArtSigmaPipeline" in err


# ----------------------------------------------------------------------------- batch size
def test_out_of_memory_halves_the_batch_and_retries(tiny_sd, tmp_path, capsys, monkeypatch):
    params, classes = inputs(tmp_path, tiny_sd, "sd", batch_size=4)
    reference = tmp_path / "reference"
    assert main(cli_args(params, classes, reference)) == 0
    call, failures = Sampler.call, []

    def out_of_memory_once(self, seeds, *a, **k):
        if not failures:
            failures.append(len(seeds))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return call(self, seeds, *a, **k)
    monkeypatch.setattr(Sampler, "call", out_of_memory_once)
    capsys.readouterr()
    out = tmp_path / "out"
    assert main(cli_args(params, classes, out)) == 0
    assert failures == [2]  # a shard holds 2 images: the first batch asked for both
    assert "out of GPU memory; batch size halved to 2, the batch is retried" in capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["provenance"]["batch_size"] for s in manifest["shards"]] == [2, 2]
    diff = np.abs(storage.load_synthetic(out)[0].astype(int) - storage.load_synthetic(reference)[0])
    assert diff.max() <= 1  # the same seeds: only batch shapes differ


def test_out_of_memory_at_batch_1_is_one_line(tiny_sd, tmp_path, capsys, monkeypatch):
    def out_of_memory(self, *a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
    monkeypatch.setattr(Sampler, "call", out_of_memory)
    params, classes = inputs(tmp_path, tiny_sd, "sd", batch_size=1)
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args(params, classes, tmp_path / "out"))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and err.startswith("error: diffusion.batch_size: out of GPU memory at batch 1")
    assert "diffusion.cpu_offload: true" in err and not list((tmp_path / "out").glob("shard-*.npz"))


def test_batch_size_auto_on_a_cpu_is_recorded_per_shard(tiny_sd, tmp_path):
    params, classes = inputs(tmp_path, tiny_sd, "sd", batch_size="auto")
    assert main(cli_args(params, classes, tmp_path / "out")) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [s["provenance"]["batch_size"] for s in manifest["shards"]] == [8, 8]


def test_fp8_quantizes_after_qkv_fusion(tiny_sd, monkeypatch):
    """The fused projections exist when fp8 quantizes the denoiser's Linear layers, so they are quantized too."""
    seen = []
    monkeypatch.setattr(model_module, "apply_fp8", lambda net: seen.append(any(hasattr(m, "to_qkv") for m in net.modules())))
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(tiny_sd))
    model_module.apply_levers(pipe, model_module.Levers(fuse_qkv=True), fp8=True)
    assert seen == [True]


def test_fused_qkv_leaves_the_denoiser_of_a_family_that_cannot_take_it(tiny_pipelines):
    """apply_levers asks the pipeline's family: SD3's and DiT's transformers stay unfused, their VAEs are fused."""
    for family, cls in (("sd3", diffusers.StableDiffusion3Pipeline), ("dit", diffusers.DiTPipeline)):
        pipe = cls.from_pretrained(str(tiny_pipelines(family)))
        model_module.apply_levers(pipe, model_module.Levers(fuse_qkv=True))
        assert not any(hasattr(m, "to_qkv") for m in pipe.transformer.modules()), family
        assert any(hasattr(m, "to_qkv") for m in pipe.vae.modules()), family


# ----------------------------------------------------------------------------- dvc
@pytest.mark.slow
def test_dvc_repro_generate_syn2_with_every_family(tiny_pipelines, e2e_copy):
    """The pipeline's own stage makes syn2 with each family's model in turn (a copy of the shared reproduced
    repository); the manifest names the family, and settings left null hold the family's defaults."""
    import yaml

    from diffaug.sandbox.demo import SHAPES, run

    repo = e2e_copy
    for family in FAMILIES:
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["diffusion"].update(model=str(tiny_pipelines(family).resolve()), resolution=None if family == "dit" else 64,
                                   steps=2, guidance_scale=None, safety_checker=False)
        params["synthetic"]["sets"]["syn2"]["class_ids"] = {c: i for i, c in enumerate(SHAPES)} if family == "dit" else None
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        done = run(["dvc", "repro", "generate_syn2"], repo, check=False)
        assert done.returncode == 0, f"{family}: {done.stdout[-3000:]}"
        manifest = json.loads((repo / "data" / "synthetic" / "syn2" / "manifest.json").read_text())
        assert manifest["generator"]["family"].split()[0] == family and manifest["generator"]["pipeline"] == PIPELINES[family]
        dif = manifest["settings"]["diffusion"]
        assert dif["steps"] == 2 and dif["resolution"] == 64
        assert dif["guidance_scale"] == FAMILIES[family].guidance_scale, family  # null: the family's default
        made = storage.load_synthetic(repo / "data" / "synthetic" / "syn2")[0].shape[0]
        assert made == manifest["num_images"] == len(SHAPES) * params["synthetic"]["images_per_class"]


def test_batch_size_auto_sizes_from_the_first_batchs_measured_peak(monkeypatch):
    """The CUDA arithmetic with a faked allocator: 2 probe images took 3 GiB above the 10 GiB already
    allocated; 40 GiB free plus 2 GiB of unused reserve -> 85% of 42 GiB at 1.5 GiB an image = 23."""
    from diffaug.generate.runner import first_batch_size, measured_batch_size

    gib = 2**30
    for name, value in (("max_memory_allocated", 13 * gib), ("memory_reserved", 12 * gib), ("mem_get_info", (40 * gib, 80 * gib))):
        monkeypatch.setattr(torch.cuda, name, lambda *a, v=value: v)
    assert first_batch_size("auto", torch.device("cuda")) == 2 and first_batch_size(16, torch.device("cuda")) == 16
    assert measured_batch_size(torch.device("cuda"), 10 * gib, 2) == int(0.85 * (40 + 12 - 10) * gib // (1.5 * gib)) == 23
