"""Tiny random pipelines of every family load through the hub-id path and generate deterministically, offline."""
import inspect
import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoPipelineForImage2Image, AutoPipelineForText2Image, DiffusionPipeline, DiTPipeline
from diffusers.utils import logging as diffusers_logging
from safetensors.torch import load_file
from transformers import AutoTokenizer

from diffaug.sandbox.tiny import FAMILIES, IMG2IMG_FAMILIES, build_tiny_pipeline, main

# The class from_pretrained must pick from model_index.json alone, as it does for the real model's hub id.
PIPELINE_CLASS = {
    "sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline", "sd3": "StableDiffusion3Pipeline",
    "flux": "FluxPipeline", "pixart": "PixArtSigmaPipeline", "sana": "SanaPipeline", "dit": "DiTPipeline",
}
SIZE = 32
SEEDS = (0, 1)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", autouse=True)
def _quiet():
    diffusers_logging.disable_progress_bar()
    yield
    diffusers_logging.enable_progress_bar()


@pytest.fixture(scope="module")
def built(tiny_pipelines) -> dict[str, Path]:
    return {f: tiny_pipelines(f) for f in FAMILIES}


@pytest.fixture(scope="module")
def pipes(built):
    """Each family loaded once, through the same call a hub id would go through."""
    loaded = {}
    for family, path in built.items():
        loader = DiTPipeline if family == "dit" else AutoPipelineForText2Image
        loaded[family] = loader.from_pretrained(path)
    return loaded


def generate(pipe, family: str, seeds=SEEDS) -> torch.Tensor:
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    common = dict(generator=generators, num_inference_steps=2, output_type="pt")
    if family == "dit":  # class-conditional; its resolution is fixed by the transformer's sample_size
        return pipe(class_labels=[1, 207][: len(seeds)], **common).images
    extra = {}
    if family in ("pixart", "sana"):
        # their default binning snaps to the 256/512-px aspect-ratio bins and resizes back
        extra["use_resolution_binning"] = False
    prompts = ["a photo of a cat", "a photo of a dog"][: len(seeds)]
    return pipe(prompts, height=SIZE, width=SIZE, **common, **extra).images


@pytest.mark.parametrize("family", FAMILIES)
def test_family_loads_and_generates_deterministically(pipes, family):
    pipe = pipes[family]
    assert type(pipe).__name__ == PIPELINE_CLASS[family]
    first = generate(pipe, family)
    size = 64 if family == "dit" else SIZE  # DiT's size is its transformer's sample_size (8 latents)
    assert first.shape == (2, 3, size, size)
    assert torch.isfinite(first).all()
    assert 0 <= first.min() and first.max() <= 1
    assert not torch.equal(first[0], first[1]), "different seeds gave the same image"
    assert torch.equal(generate(pipe, family), first), "same seeds gave different images"
    # each image depends on its own seed only: generated alone, it equals its place in the batch
    alone = generate(pipe, family, seeds=SEEDS[:1])
    assert torch.allclose(alone[0], first[0], atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_img2img_from_pipe_exactly_where_diffusers_has_one(pipes, family):
    pipe = pipes[family]
    if family not in IMG2IMG_FAMILIES:
        with pytest.raises(ValueError, match="can't find a pipeline"):
            AutoPipelineForImage2Image.from_pipe(pipe)
        return
    img2img = AutoPipelineForImage2Image.from_pipe(pipe)
    assert "Img2Img" in type(img2img).__name__
    # components are shared, not copied: no second load
    denoiser = "unet" if hasattr(pipe, "unet") else "transformer"
    assert getattr(img2img, denoiser) is getattr(pipe, denoiser)
    init = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    # FLUX's img2img resizes the image to its default 1024 px unless told the size; the others have no size
    size = dict(height=SIZE, width=SIZE) if "height" in inspect.signature(img2img.__call__).parameters else {}
    out = img2img(["a photo of a cat"] * 2, image=init, strength=0.5, num_inference_steps=4, output_type="pt",
                  generator=[torch.Generator().manual_seed(s) for s in SEEDS], **size).images
    assert out.shape == (2, 3, SIZE, SIZE) and torch.isfinite(out).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_build_is_deterministic_and_seeded(built, tmp_path, family):
    again = build_tiny_pipeline(tmp_path / "again", family)
    other = build_tiny_pipeline(tmp_path / "other", family, seed=1)
    index = json.loads((built[family] / "model_index.json").read_text())
    assert json.loads((again / "model_index.json").read_text()) == index
    differs = False
    weights = sorted(p.relative_to(built[family]) for p in built[family].rglob("*.safetensors"))
    assert weights
    for rel in weights:
        a, b, c = (load_file(root / rel) for root in (built[family], again, other))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), rel
        differs |= any(not torch.equal(a[k], c[k]) for k in a)
    assert differs, "seed=1 built the same weights as seed=0"


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "dit"])
def test_tokenizers_round_trip_offline(built, pipes, family):
    """Each saved tokenizer loads back by itself, encodes the text losslessly (no unknown token) within the encoder's vocabulary."""
    pipe = pipes[family]
    text = "A photo of a red car, 3 dogs & a cat!"
    for name in sorted(k for k in pipe.components if k.startswith("tokenizer")):
        tokenizer = pipe.components[name]
        reloaded = AutoTokenizer.from_pretrained(built[family] / name)
        assert type(reloaded) is type(tokenizer)
        ids = tokenizer(text).input_ids
        assert reloaded(text).input_ids == ids
        assert len(ids) > len(text.split())
        encoder = pipe.components[name.replace("tokenizer", "text_encoder")]
        assert max(ids) < encoder.config.vocab_size
        assert str(tokenizer.decode(ids, skip_special_tokens=True)).replace(" ", "").lower() == text.replace(" ", "").lower()
        if family == "sana":  # Sana keeps token 0 of Gemma's output, which must be <bos> as with gemma-2-2b-it
            assert ids[0] == tokenizer.bos_token_id


@pytest.mark.parametrize("steps", [1, 4])
def test_sdxl_turbo_settings_run(pipes, steps):
    """SDXL-Turbo is SDXL's architecture and pipeline: guidance 0 (no CFG batch) and 1-4 steps must run."""
    out = pipes["sdxl"]("a photo of a cat", height=SIZE, width=SIZE, num_inference_steps=steps, guidance_scale=0.0,
                        generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert out.shape == (1, 3, SIZE, SIZE) and torch.isfinite(out).all()


def test_dit_class_names_survive_the_round_trip(pipes):
    assert pipes["dit"].get_label_ids(["class 207"]) == [207]
    assert len(pipes["dit"].labels) == pipes["dit"].transformer.config.num_embeds_ada_norm


def test_cli_writes_a_family_and_rejects_an_unknown_one(tmp_path, capsys):
    assert main(["--family", "dit", str(tmp_path / "dit")]) == 0
    assert type(DiffusionPipeline.from_pretrained(tmp_path / "dit")).__name__ == "DiTPipeline"
    with pytest.raises(SystemExit) as e:
        main(["--family", "kandinsky", str(tmp_path / "k")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--family" in err and "sdxl" in err
    assert not (tmp_path / "k").exists()
    with pytest.raises(SystemExit) as e:  # never over an existing model
        main(["--family", "sd", str(tmp_path / "dit")])
    assert e.value.code == 2 and "not an empty directory" in capsys.readouterr().err
    assert json.loads((tmp_path / "dit" / "model_index.json").read_text())["_class_name"] == "DiTPipeline"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dit"]  # no temporary directory left behind
    with pytest.raises(ValueError, match="not one of sd, sdxl"):
        build_tiny_pipeline(tmp_path / "k", "kandinsky")
