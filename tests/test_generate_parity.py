"""Our sampler against plain `StableDiffusionPipeline.__call__`, downsampling against PIL, tiny/benchmark smoke.

All on the tiny random pipeline in float32 on the CPU. Both paths do the same arithmetic, but not
always in the same order (batch shapes, BLAS blocking and SIMD width differ between CPUs and builds),
so they agree to float32 rounding, not bit for bit: see IMAGE_ATOL.
"""
from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from conftest import SHARED_CIFAR
from diffaug.generate.model import apply_speed_levers, quiet_libraries
from diffaug.generate.sampler import Sampler, downsample, to_uint8
from diffaug.io import load_npz
from diffaug.sandbox.tiny import SD14_UNET_PARAMS, sd14_unet_parameter_count

REPO = Path(__file__).resolve().parents[1]
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


def sampler(pipe, scheduler="default", steps=4):
    s = Sampler(pipe, steps=steps, guidance_scale=7.5, resolution=64, out_size=(32, 32), scheduler=scheduler)
    return s


def plain(pipe, scheduler, latents, negative=None, steps=4):
    """The stock pipeline on the same latents and scheduler; float images in [0, 1], NCHW."""
    original = pipe.scheduler
    pipe.scheduler = scheduler
    try:
        return pipe(PROMPTS, negative_prompt=[negative] * len(PROMPTS) if negative else None, latents=latents.clone(),
                    num_inference_steps=steps, guidance_scale=7.5, height=64, width=64, output_type="pt").images
    finally:
        pipe.scheduler = original


def assert_same_images(images: torch.Tensor, reference: torch.Tensor, full_u8: np.ndarray | None = None) -> None:
    """Float images in [0, 1] within IMAGE_ATOL; uint8 images within 1 level on at most 1% of values."""
    torch.testing.assert_close(images, reference, rtol=0, atol=IMAGE_ATOL)
    if full_u8 is not None:
        expected = (reference.permute(0, 2, 3, 1).numpy() * 255).round().astype(int)
        diff = np.abs(full_u8.astype(int) - expected)
        assert diff.max() <= UINT8_MAX_LEVELS and np.mean(diff > 0) <= UINT8_MAX_FRACTION, (diff.max(), np.mean(diff > 0))


def ours_and_plain(pipe, scheduler="default", negative=None):
    ours = sampler(pipe, scheduler)
    ours.encode_prompts(sorted(set(PROMPTS)), negative)
    latents = ours.initial_latents(SEEDS)
    images = (ours.decode(ours.denoise(latents, ours.embeddings(PROMPTS))) * 0.5 + 0.5).clamp(0, 1)
    reference = plain(pipe, ours.scheduler, latents, negative)
    return ours, images, reference


@pytest.mark.parametrize("scheduler", ["default", "pndm", "ddim", "dpmsolver++", "euler"])
@pytest.mark.parametrize("negative", [None, "blurry, low quality"])
def test_our_loop_equals_the_plain_pipeline(tiny_sd, scheduler, negative):
    pipe = load(tiny_sd)
    ours, images, reference = ours_and_plain(pipe, scheduler, negative)
    assert_same_images(images, reference, ours.run_batch(SEEDS, PROMPTS, want_full=True).full)


def _guidance_one_percent_off(monkeypatch, ours):
    ours.guidance_scale *= 1.01


def _guidance_halves_swapped(monkeypatch, ours):
    embeddings = Sampler.embeddings
    monkeypatch.setattr(Sampler, "embeddings", lambda self, prompts: embeddings(self, prompts).roll(len(prompts), 0))


def _scheduler_step_off_by_one(monkeypatch, ours):
    step = ours.scheduler.step
    monkeypatch.setattr(ours.scheduler, "step", lambda noise, t, latents, **kw: step(noise, t - 1, latents, **kw))


def _vae_scaling_factor_rounded(monkeypatch, ours):
    monkeypatch.setattr(Sampler, "decode", lambda self, latents: self.vae_decode(latents / 0.18, return_dict=False)[0])


@pytest.mark.parametrize("mutation", [_guidance_one_percent_off, _guidance_halves_swapped, _scheduler_step_off_by_one,
                                      _vae_scaling_factor_rounded], ids=lambda m: m.__name__.strip("_"))
@pytest.mark.parametrize("scheduler", ["default", "ddim"])
def test_the_tolerance_still_catches_real_bugs(tiny_sd, monkeypatch, scheduler, mutation):
    """Each mutation of our loop is a plausible bug; the comparison above must fail on it."""
    pipe = load(tiny_sd)
    ours = sampler(pipe, scheduler)
    stock_scheduler = type(ours.scheduler).from_config(ours.scheduler.config)  # `default` is pipe.scheduler itself
    mutation(monkeypatch, ours)
    ours.encode_prompts(sorted(set(PROMPTS)), None)
    latents = ours.initial_latents(SEEDS)
    images = (ours.decode(ours.denoise(latents, ours.embeddings(PROMPTS))) * 0.5 + 0.5).clamp(0, 1)
    reference = plain(pipe, stock_scheduler, latents)
    worst = (images - reference).abs().max().item()
    assert worst > 10 * IMAGE_ATOL, f"{mutation.__name__} moved images by only {worst:.2e}"
    with pytest.raises(AssertionError):
        assert_same_images(images, reference)


def test_without_guidance_too(tiny_sd):
    """guidance_scale <= 1: one UNet pass on the prompts alone, as the pipeline does."""
    pipe = load(tiny_sd)
    ours = Sampler(pipe, steps=4, guidance_scale=1.0, resolution=64, out_size=(32, 32))
    ours.encode_prompts(sorted(set(PROMPTS)), "ignored without guidance")
    assert not ours.guided and ours.embeddings(PROMPTS).shape[0] == len(PROMPTS)
    latents = ours.initial_latents(SEEDS)
    images = (ours.decode(ours.denoise(latents, ours.embeddings(PROMPTS))) * 0.5 + 0.5).clamp(0, 1)
    reference = pipe(PROMPTS, latents=latents.clone(), num_inference_steps=4, guidance_scale=1.0, height=64, width=64,
                     output_type="pt").images
    assert_same_images(images, reference)


def test_default_scheduler_is_the_models_pndm(tiny_sd):
    pipe = load(tiny_sd)
    s = sampler(pipe)
    assert type(s.scheduler).__name__ == "PNDMScheduler" and s.scheduler.config.skip_prk_steps
    assert sampler(pipe, "dpmsolver++").scheduler.config.algorithm_type == "dpmsolver++"
    assert sampler(pipe, "ddim").scheduler.config.clip_sample is False  # inherited from SD-v1.4's config


def test_speed_levers_move_pixels_by_at_most_one_level(tiny_sd):
    pipe = load(tiny_sd)
    base = sampler(pipe)
    base.encode_prompts(sorted(set(PROMPTS)), None)
    before = base.run_batch(SEEDS, PROMPTS, want_full=True)
    apply_speed_levers(pipe, channels_last=True, fuse_qkv=True)
    fast = sampler(pipe)
    fast.encode_prompts(sorted(set(PROMPTS)), None)
    after = fast.run_batch(SEEDS, PROMPTS, want_full=True)
    assert np.abs(before.full.astype(int) - after.full).max() <= 1
    assert np.abs(before.small.astype(int) - after.small).max() <= 1


def test_latents_depend_on_the_seed_only(tiny_sd):
    pipe = load(tiny_sd)
    s = sampler(pipe)
    together = s.initial_latents(SEEDS)
    one_by_one = torch.cat([s.initial_latents([seed]) for seed in SEEDS])
    assert torch.equal(together, one_by_one) and together.shape == (4, 4, 8, 8)
    shuffled = s.initial_latents(SEEDS[::-1])
    assert torch.equal(shuffled, together.flip(0))
    # ...and they are what the stock pipeline draws from per-image CPU generators.
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in SEEDS]
    expected = pipe.prepare_latents(4, 4, 64, 64, torch.float32, torch.device("cpu"), generators) / pipe.scheduler.init_noise_sigma
    assert torch.equal(together, expected)


def test_each_prompt_is_encoded_once_per_run(tiny_sd):
    pipe = load(tiny_sd)
    calls = []
    forward = pipe.text_encoder.forward
    pipe.text_encoder.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    s = sampler(pipe, steps=1)
    s.encode_prompts(sorted(set(PROMPTS)), None)
    encoded = len(calls)  # one pass for the prompts, one for the negative prompt
    for _ in range(3):
        s.run_batch(SEEDS, PROMPTS)
    assert encoded == 2 and len(calls) == encoded


def test_safety_checker_sees_what_the_pipeline_shows_it_and_flags_alike(tiny_sd):
    pipe = load(tiny_sd)
    s = sampler(pipe)
    s.encode_prompts(sorted(set(PROMPTS)), None)
    latents = s.initial_latents(SEEDS)
    decoded = s.decode(s.denoise(latents, s.embeddings(PROMPTS)))
    full = to_uint8(decoded)
    ours = s.safety_input(full)
    pil = pipe.image_processor.postprocess(decoded, output_type="pil")
    assert torch.equal(ours, pipe.feature_extractor(pil, return_tensors="pt").pixel_values)
    # Make the checker flag image 1 only: a concept pointing from the other images to it, with the
    # threshold halfway between image 1's similarity and the next highest. Then compare with the stock pipeline.
    checker = pipe.safety_checker
    with torch.no_grad():
        embeds = checker.visual_projection(checker.vision_model(ours)[1])
        concept = embeds[1] - embeds[[0, 2, 3]].mean(0)
        cos = torch.nn.functional.normalize(embeds) @ torch.nn.functional.normalize(concept, dim=0)
        checker.concept_embeds[0] = concept
        checker.concept_embeds_weights[0] = (cos[1] + cos[[0, 2, 3]].max()) / 2
    assert s.safety_flags(full) == [False, True, False, False]
    stock = pipe(PROMPTS, latents=latents.clone(), num_inference_steps=4, guidance_scale=7.5, height=64, width=64, output_type="np")
    assert stock.nsfw_content_detected == [False, True, False, False]


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
    assert sd14_unet_parameter_count() == SD14_UNET_PARAMS == 859_520_964


def test_tiny_pipeline_loads_its_fp16_variant_too(tiny_sd):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd), variant="fp16", torch_dtype=torch.float16)
    assert pipe.unet.dtype == torch.float16 and pipe.safety_checker is not None
    assert any(p.name.endswith(".fp16.safetensors") for p in (tiny_sd / "unet").iterdir())


def test_benchmark_runs_on_cpu_with_tiny(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_generate", REPO / "benchmarks" / "generate.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    results_md = tmp_path / "RESULTS.md"
    results = bench.main(["--tiny", "--device", "cpu", "--results", str(results_md)])
    assert set(results) == {"plain b1", "plain b2", "plain b4", "ours", "ours fast"}
    assert all(v > 0 for v in results.values())
    rows = [line for line in results_md.read_text().splitlines() if line.startswith("| 20")]
    assert len(rows) == 1 and "--tiny" in rows[0] and "b4 " in rows[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_denoising_loop_never_syncs_with_the_gpu(tiny_sd):
    pipe = load(tiny_sd).to("cuda")
    s = sampler(pipe, steps=5)
    s.encode_prompts(sorted(set(PROMPTS)), None)
    latents, embeds = s.initial_latents(SEEDS), s.embeddings(PROMPTS)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        s.denoise(latents, embeds)
    finally:
        torch.cuda.set_sync_debug_mode("default")
