"""Our batches (the stock pipeline called with cached prompt embeddings, per-image generators and
on-device uint8 conversion) against plain `StableDiffusionPipeline.__call__`; downsampling against
PIL; tiny/benchmark smoke.

All on the tiny random pipeline in float32 on the CPU. Both paths run diffusers' own loop, but the
prompt embeddings are computed in another batch and the latents in other batch shapes (BLAS
blocking and SIMD width differ between shapes, CPUs and builds), so they agree to float32 rounding,
not bit for bit: see IMAGE_ATOL.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image

from conftest import SHARED_CIFAR
from diffaug.generate.model import Levers, apply_levers, quiet_libraries
from diffaug.generate.sampler import Sampler, downsample, make_scheduler, to_uint8
from diffaug.io import load_npz
from diffaug.sandbox.tiny import SD14_UNET, SD14_UNET_PARAMS
from test_generate_sweep import load_benchmark

# Tolerance from what may legitimately differ: float32 reassociation. A sum of n terms computed in
# another order differs by about sqrt(n) * u relative (random-walk rounding, u = 2**-24 = 6e-8); n is
# at most ~600 here (3x3 convolutions over 64 channels), and errors from L ~ 200 layers in sequence
# (4 steps x 2 guidance halves x ~20 UNet layers, then ~15 VAE layers, scheduler and clamp: unit
# gain, independent) add as sqrt(L): sqrt(200) * sqrt(600) * 6e-8 = 2e-5. Images are in [0, 1], so
# IMAGE_ATOL = 1e-4 (5x that estimate; an AVX-512 Xeon measured 1.67e-6) is still 40x below one uint8
# level (1/255 = 3.9e-3). Rounding to uint8 turns such a difference into a 1-level flip only for
# values within 1e-4 * 255 of a .5 boundary, about 2.6% of values at the very worst; expected ~0.1%.
IMAGE_ATOL = 1e-4
UINT8_MAX_LEVELS, UINT8_MAX_FRACTION = 1, 0.01
PROMPTS = ["a photo of a car", "airplane", "a photo of a car", "bird"]
SEEDS = [3, 1, 4, 2**64 - 1]


pytestmark = pytest.mark.usefixtures("one_thread")


def load(path: Path):
    quiet_libraries()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        pipe = StableDiffusionPipeline.from_pretrained(str(path), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sampler(pipe, scheduler="default", steps=4, guidance_scale=7.5, negative=None):
    s = Sampler(pipe, steps=steps, guidance_scale=guidance_scale, resolution=64, out_size=(32, 32), scheduler=scheduler)
    s.encode_prompts(sorted(set(PROMPTS)), negative)
    return s


def plain(pipe, scheduler, negative=None, steps=4, guidance_scale=7.5):
    """The stock pipeline, prompts as text, one CPU generator per image; float images in [0, 1], NCHW."""
    pipe.scheduler = scheduler
    generators = [torch.Generator("cpu").manual_seed(s) for s in SEEDS]
    return pipe(PROMPTS, negative_prompt=[negative] * len(PROMPTS) if negative else None, generator=generators,
                num_inference_steps=steps, guidance_scale=guidance_scale, height=64, width=64, output_type="pt").images


def assert_same_images(full_u8: np.ndarray, reference: torch.Tensor) -> None:
    """uint8 images within 1 level on at most 1% of values of the reference's float images in [0, 1]."""
    expected = (reference.permute(0, 2, 3, 1).numpy() * 255).round().astype(int)
    diff = np.abs(full_u8.astype(int) - expected)
    assert diff.max() <= UINT8_MAX_LEVELS and np.mean(diff > 0) <= UINT8_MAX_FRACTION, (diff.max(), np.mean(diff > 0))


@pytest.mark.parametrize("scheduler", ["default", "pndm", "ddim", "dpmsolver++", "euler"])
@pytest.mark.parametrize("negative", [None, "blurry, low quality"])
def test_our_batches_equal_the_plain_pipeline(tiny_sd, scheduler, negative):
    ours = sampler(load(tiny_sd), scheduler, negative=negative)
    stock = load(tiny_sd)
    reference = plain(stock, type(ours.scheduler).from_config(ours.scheduler.config), negative)
    images, latents = ours.call(SEEDS, PROMPTS)
    torch.testing.assert_close(images, reference, rtol=0, atol=IMAGE_ATOL)
    assert latents is not None and latents.shape == (4, 4, 8, 8)  # seen by the NaN/inf check
    out = ours.run_batch(SEEDS, PROMPTS, want_full=True)
    assert_same_images(out.full, reference)
    assert np.abs(out.small.astype(int) - downsample(to_uint8(reference), (32, 32)).permute(0, 2, 3, 1).numpy()).max() <= 1


def _guidance_one_percent_off(monkeypatch, ours):
    ours.guidance_scale *= 1.01


def _guidance_halves_swapped(monkeypatch, ours):
    ours.embeds["prompt_embeds"], ours.embeds["negative_prompt_embeds"] = (ours.embeds["negative_prompt_embeds"],
                                                                           ours.embeds["prompt_embeds"])


def _prompt_rows_shifted(monkeypatch, ours):
    ours.prompt_index = {p: (i + 1) % len(ours.prompt_index) for p, i in ours.prompt_index.items()}


def _seeds_off_by_one(monkeypatch, ours):
    call = Sampler.call
    monkeypatch.setattr(Sampler, "call", lambda self, seeds, *a, **k: call(self, [s ^ 1 for s in seeds], *a, **k))


@pytest.mark.parametrize("mutation", [_guidance_one_percent_off, _guidance_halves_swapped, _prompt_rows_shifted,
                                      _seeds_off_by_one], ids=lambda m: m.__name__.strip("_"))
@pytest.mark.parametrize("scheduler", ["default", "ddim"])
def test_the_tolerance_still_catches_real_bugs(tiny_sd, monkeypatch, scheduler, mutation):
    """Each mutation of our wrapper is a plausible bug; the comparison above must fail on it."""
    ours = sampler(load(tiny_sd), scheduler)
    reference = plain(load(tiny_sd), type(ours.scheduler).from_config(ours.scheduler.config))
    mutation(monkeypatch, ours)
    images, _ = ours.call(SEEDS, PROMPTS)
    worst = (images - reference).abs().max().item()
    assert worst > 10 * IMAGE_ATOL, f"{mutation.__name__} moved images by only {worst:.2e}"
    with pytest.raises(AssertionError):
        torch.testing.assert_close(images, reference, rtol=0, atol=IMAGE_ATOL)


def test_without_guidance_too(tiny_sd):
    """guidance_scale <= 1: no negative embeddings are computed or passed, as the pipeline does it."""
    ours = sampler(load(tiny_sd), guidance_scale=1.0, negative="ignored without guidance")
    assert not ours.guided and set(ours.embeds) == {"prompt_embeds"}
    reference = plain(load(tiny_sd), load(tiny_sd).scheduler, guidance_scale=1.0)
    assert_same_images(ours.run_batch(SEEDS, PROMPTS, want_full=True).full, reference)


def test_default_scheduler_is_the_models_pndm(tiny_sd):
    pipe = load(tiny_sd)
    assert type(make_scheduler(pipe, "default")).__name__ == "PNDMScheduler" and pipe.scheduler.config.skip_prk_steps
    assert make_scheduler(pipe, "dpmsolver++").config.algorithm_type == "dpmsolver++"
    assert make_scheduler(pipe, "ddim").config.clip_sample is False  # inherited from SD-v1.4's config


def test_speed_levers_move_pixels_by_at_most_one_level(tiny_sd):
    before = sampler(load(tiny_sd)).run_batch(SEEDS, PROMPTS, want_full=True)
    pipe = load(tiny_sd)
    apply_levers(pipe, Levers(channels_last=True, fuse_qkv=True))
    after = sampler(pipe).run_batch(SEEDS, PROMPTS, want_full=True)
    assert np.abs(before.full.astype(int) - after.full).max() <= 1
    assert np.abs(before.small.astype(int) - after.small).max() <= 1


def test_an_image_depends_on_its_seed_not_its_batch(tiny_sd):
    s = sampler(load(tiny_sd))
    together = s.run_batch(SEEDS, PROMPTS, want_full=True).full.astype(int)
    alone = np.concatenate([s.run_batch([seed], [prompt], want_full=True).full for seed, prompt in zip(SEEDS, PROMPTS)])
    assert np.abs(together - alone).max() <= 1
    swapped = s.run_batch(SEEDS[::-1], PROMPTS[::-1], want_full=True).full.astype(int)
    assert np.abs(swapped[::-1] - together).max() <= 1


def test_each_prompt_is_encoded_once_per_run_then_the_encoder_goes(tiny_sd):
    pipe = load(tiny_sd)
    calls = []
    forward = pipe.text_encoder.forward
    pipe.text_encoder.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    s = Sampler(pipe, steps=1, guidance_scale=7.5, resolution=64, out_size=(32, 32))
    s.encode_prompts(sorted(set(PROMPTS)), None)
    encoded = len(calls)  # one pass for the prompts, one for the negative prompt
    assert pipe.text_encoder is None  # released: its memory goes to the denoiser
    for _ in range(3):
        s.run_batch(SEEDS, PROMPTS)
    assert encoded == 2 and len(calls) == encoded


def test_safety_checker_sees_what_the_pipeline_shows_it_and_flags_alike(tiny_sd):
    stock = load(tiny_sd)
    s = sampler(load(tiny_sd))
    images = plain(stock, stock.scheduler)
    full = to_uint8(images)
    ours = s.safety_input(full)
    pil = stock.numpy_to_pil(images.permute(0, 2, 3, 1).numpy())
    assert torch.equal(ours, stock.feature_extractor(pil, return_tensors="pt").pixel_values)
    # Make the checker flag image 1 only: a concept pointing from the other images to it, with the
    # threshold halfway between image 1's similarity and the next highest. Then compare with the stock pipeline.
    checker = stock.safety_checker
    with torch.no_grad():
        embeds = checker.visual_projection(checker.vision_model(ours)[1])
        concept = embeds[1] - embeds[[0, 2, 3]].mean(0)
        cos = torch.nn.functional.normalize(embeds) @ torch.nn.functional.normalize(concept, dim=0)
        checker.concept_embeds[0] = concept
        checker.concept_embeds_weights[0] = (cos[1] + cos[[0, 2, 3]].max()) / 2
    s.checker = checker
    assert s.safety_flags(full) == [False, True, False, False]
    assert s.run_batch(SEEDS, PROMPTS).flagged == [False, True, False, False]
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in SEEDS]
    flagged = stock(PROMPTS, generator=generators, num_inference_steps=4, guidance_scale=7.5, height=64, width=64,
                    output_type="np").nsfw_content_detected
    assert flagged == [False, True, False, False]


def _pil_bilinear(images_nhwc: np.ndarray, size: int) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images_nhwc])


def _diff_to_pil(big_nhwc: np.ndarray) -> np.ndarray:
    ours = downsample(torch.from_numpy(big_nhwc).permute(0, 3, 1, 2), (32, 32)).permute(0, 2, 3, 1).numpy()
    return np.abs(ours.astype(int) - _pil_bilinear(big_nhwc, 32))


@pytest.mark.skipif(not SHARED_CIFAR.is_file(), reason=f"{SHARED_CIFAR} not present")
def test_downsampling_matches_pil_bilinear_on_real_images():
    """Bound stated in sampler.downsample: max 1 uint8 level, mean < 0.1 levels (512² -> 32²)."""
    cifar = load_npz(SHARED_CIFAR)["images"][::50]  # 102 images across all classes
    big = np.stack([np.asarray(Image.fromarray(im).resize((512, 512), Image.BICUBIC)) for im in cifar])
    diff = _diff_to_pil(big)
    assert diff.max() <= 1 and diff.mean() < 0.1, (diff.max(), diff.mean())
    assert diff.mean() > 0  # the two really are different implementations (the bound is measured, not vacuous)


def test_downsampling_matches_pil_bilinear_on_smooth_random_images():
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand((48, 3, 8, 8), generator=g) * 255
    big = torch.nn.functional.interpolate(coarse, size=(512, 512), mode="bicubic", align_corners=False)
    big = big.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    diff = _diff_to_pil(big)
    assert diff.max() <= 1 and diff.mean() < 0.1, (diff.max(), diff.mean())


def test_sd14_unet_has_859_52m_parameters():
    with torch.device("meta"):  # no memory, ~1 s
        unet = UNet2DConditionModel(**SD14_UNET)
    assert sum(p.numel() for p in unet.parameters()) == SD14_UNET_PARAMS == 859_520_964


def test_tiny_pipeline_loads_its_fp16_variant_too(tiny_sd):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd), variant="fp16", torch_dtype=torch.float16)
    assert pipe.unet.dtype == torch.float16 and pipe.safety_checker is not None
    assert any(p.name.endswith(".fp16.safetensors") for p in (tiny_sd / "unet").iterdir())


def test_benchmark_runs_on_cpu_with_tiny(tmp_path):
    bench = load_benchmark()
    results_md = tmp_path / "RESULTS.md"
    results = bench.main(["--tiny", "--device", "cpu", "--results", str(results_md)])
    assert set(results) == {"plain b1", "plain b2", "plain b4", "ours", "ours fast"}
    assert all(v > 0 for v in results.values())
    rows = [line for line in results_md.read_text().splitlines() if line.startswith("| 20")]
    assert len(rows) == 1 and "--tiny" in rows[0] and "b4 " in rows[0]
