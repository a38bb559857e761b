"""Diffusion pipelines with random weights, built from configs alone (no hub, no download).

`build_tiny_pipeline(dir, family)` saves a tiny random pipeline of one of `FAMILIES` with `save_pretrained`,
so tests and the offline demo load it through the same `from_pretrained` path as the hub model it mimics;
its images are noise, but every code path runs. `build_sd14_random` is the full-size SD-v1.4 architecture
with random weights, for benchmarks. `python -m diffaug.sandbox.tiny --family F OUT` writes one to OUT.
Tokenizers are built in code (CLIP: byte-level BPE, T5: Unigram, Gemma: BPE over characters with byte fallback).
"""
from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from transformers import CLIPConfig, CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from diffaug.errors import OneLineParser, UserError, exit_on_error
from diffaug.generate.families import FAMILIES as GENERATE_FAMILIES

FAMILIES = tuple(GENERATE_FAMILIES)
# Families with an img2img pipeline (AutoPipelineForImage2Image.from_pipe), checked by tests/test_tiny_families.py.
IMG2IMG_FAMILIES = tuple(name for name, family in GENERATE_FAMILIES.items() if family.img2img)

# SD-v1.4's scheduler_config.json (PNDM; clip_sample is no PNDM setting but travels to a scheduler built from the config)
SD14_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1,
                      clip_sample=False)
# diffusers' and transformers' defaults are SD-v1.4's but for these (UNet: SD-v1's blocks, widths 320-1280, 8 heads;
# VAE: 4 latent channels, scaling 0.18215; text: CLIP ViT-L/14's 12 layers; its vocabulary, not the byte tokenizer's)
SD14_UNET = dict(sample_size=64, cross_attention_dim=768)
SD14_VAE = dict(layers_per_block=2, sample_size=512, block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
SD14_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12, projection_dim=768)
SD14_SAFETY_VISION = dict(  # CLIP ViT-L/14, the safety checker's image tower
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=224, patch_size=14)
SD14_UNET_PARAMS = 859_520_964

TINY_UNET = dict(
    sample_size=8, layers_per_block=1, block_out_channels=(32, 64), cross_attention_dim=32, attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)
# Four blocks like SD's VAE, so latents are resolution/8 as in the real model.
TINY_VAE = dict(sample_size=64, norm_num_groups=8, block_out_channels=(8, 8, 16, 16),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
TINY_CLIP = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)


def byte_level_tokenizer():
    """A CLIPTokenizer whose vocabulary is the 256 bytes (plain and word-final) plus BOS/EOS: 514 ids."""
    alphabet = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(alphabet)} | {c + "</w>": 256 + i for i, c in enumerate(alphabet)}
    vocab |= {"<|startoftext|>": 512, "<|endoftext|>": 513}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _clip(with_projection: bool = False, suffix: str = "", **sizes) -> dict[str, Any]:
    """A CLIP text tower (default: tiny) as a pipeline's tokenizer{suffix} and text_encoder{suffix}."""
    from transformers import CLIPTextModelWithProjection

    tokenizer = byte_level_tokenizer()
    config = CLIPTextConfig(**{"vocab_size": len(tokenizer), "bos_token_id": 512, "eos_token_id": 513, "pad_token_id": 513,
                               **(sizes or dict(TINY_CLIP, projection_dim=32))})  # byte_level_tokenizer's ids
    return {f"tokenizer{suffix}": tokenizer, f"text_encoder{suffix}": (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)}


def _never_flagging(checker):
    """Random concept embeddings would flag random images; thresholds of 1 on cosine similarity never fire."""
    with torch.no_grad():
        for p in (checker.concept_embeds_weights, checker.special_care_embeds_weights):
            p.fill_(1.0)
    return checker


def _sd_pipeline(unet: dict, vae: dict, text: dict, vision: dict | None, device: Any = "cpu") -> Any:
    """A StableDiffusionPipeline of these sizes; a never-flagging safety checker unless `vision` is None."""
    with torch.device(device):  # on a GPU: initialised there, minutes faster than on the CPU for SD-v1.4
        parts: dict[str, Any] = dict(unet=UNet2DConditionModel(**unet), vae=AutoencoderKL(**vae), **_clip(**text),
                                     safety_checker=None, feature_extractor=None)
        if vision is not None:
            clip = CLIPConfig(text_config=parts["text_encoder"].config.to_dict(), vision_config=vision, projection_dim=text["projection_dim"])
            parts["safety_checker"] = _never_flagging(StableDiffusionSafetyChecker(clip))
            size = vision["image_size"]  # SD-v1.4's: 224 px, bicubic, CLIP mean/std
            parts["feature_extractor"] = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return StableDiffusionPipeline(scheduler=PNDMScheduler.from_config(SD14_SCHEDULER),
                                   requires_safety_checker=vision is not None, **parts)


def build_tiny_pipeline(out_dir: str | Path, family: str = "sd", *, seed: int = 0, safety_checker: bool = True) -> Path:
    """Write a tiny random pipeline of `family` to `out_dir` (the same `seed`, the same bytes); return the path.

    Only "sd" ships a (never flagging) safety checker, unless `safety_checker=False`, and fp16-variant
    weights beside the float32 ones, like its hub repo."""
    if family not in FAMILIES:
        raise ValueError(f"family {family!r} is not one of {', '.join(FAMILIES)}")
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    if family != "sd":
        _BUILDERS[family]().save_pretrained(out_dir)
        return out_dir
    vision = dict(image_size=32, patch_size=8, **TINY_CLIP) if safety_checker else None
    pipe = _sd_pipeline(TINY_UNET, TINY_VAE, dict(TINY_CLIP, projection_dim=32), vision)
    # fp16 files first; then the float32 ones, whose configs (shared by both variants) must say float32,
    # since transformers loads a text encoder in its config's dtype
    copy.deepcopy(pipe).to(torch.float16).save_pretrained(out_dir, variant="fp16")
    pipe.save_pretrained(out_dir)
    return out_dir


# A VAE shaped like the real ones (four blocks, so latents are resolution/8) but 8-16 channels wide;
# SD3's and FLUX's have 16 latent channels and no quant convs.
_TINY_VAE16 = dict(TINY_VAE, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)


def _t5(suffix: str = "", d_model: int = 32) -> dict[str, Any]:
    """A tiny T5 encoder; its tokenizer a Unigram over printable ASCII, with and without the word-start mark."""
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    chars = [chr(c) for c in range(33, 127)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    tokenizer = T5Tokenizer(vocab=vocab + [("▁" + c, -3.0) for c in chars] + [(c, -4.0) for c in chars], extra_ids=0)
    config = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, feed_forward_proj="gated-gelu")  # default <pad> 0, </s> 1
    return {f"tokenizer{suffix}": tokenizer, f"text_encoder{suffix}": T5EncoderModel(config)}


def _sdxl():
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(
        **_clip(with_projection=False), **_clip(with_projection=True, suffix="_2"),
        unet=UNet2DConditionModel(
            sample_size=8, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
            # penultimate hidden states of both encoders side by side (32 + 32); the added embedding is the
            # pooled text embedding (32) + six size/crop ids of 8 each, as in SDXL's text_time conditioning
            cross_attention_dim=64, addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=32 + 6 * 8),
        vae=AutoencoderKL(**dict(TINY_VAE, scaling_factor=0.13025, force_upcast=True)),
        scheduler=EulerDiscreteScheduler(  # SDXL-base-1.0's scheduler_config.json (the rest: diffusers' defaults)
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"),
        force_zeros_for_empty_prompt=True, add_watermarker=False)


def _sd3():
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    return StableDiffusion3Pipeline(
        **_clip(with_projection=True), **_clip(with_projection=True, suffix="_2"),
        **_t5("_3", d_model=64),  # CLIP's 32 + 32 are zero-padded to T5's width
        transformer=SD3Transformer2DModel(  # 16 latent channels, patches of 2: diffusers' defaults, as in SD3.5
            sample_size=4, num_layers=2, attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64,
            caption_projection_dim=32, pooled_projection_dim=64, qk_norm="rms_norm", dual_attention_layers=(0,)),  # MMDiT-X
        vae=AutoencoderKL(**dict(_TINY_VAE16, scaling_factor=1.5305, shift_factor=0.0609)),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))


def _flux():
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    return FluxPipeline(
        **_clip(with_projection=False), **_t5("_2"),
        transformer=FluxTransformer2DModel(  # default: 16 latent channels packed 2x2 -> 64 per token, as in FLUX.1
            num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
            pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 4, 8)),
        vae=AutoencoderKL(**dict(_TINY_VAE16, scaling_factor=0.3611, shift_factor=0.1159)),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True))  # FLUX.1-dev's (shift bounds: defaults)


def _pixart():
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    return PixArtSigmaPipeline(
        **_t5(),
        transformer=PixArtTransformer2DModel(
            # sample_size 32 is one the pipeline's resolution binning knows (its 256-px bins); the rest: PixArt's defaults
            sample_size=32, num_layers=2, attention_head_dim=8, num_attention_heads=3, caption_channels=32,
            cross_attention_dim=24, use_additional_conditions=False),
        vae=AutoencoderKL(**dict(TINY_VAE, scaling_factor=0.13025)),
        scheduler=DPMSolverMultistepScheduler())  # PixArt-Sigma's: the defaults, DPM-Solver++ on DDPM betas


def _sana():
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model, GemmaTokenizer

    # printable ASCII and the word mark; every other byte through byte fallback
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4} | {f"<0x{b:02X}>": 5 + b for b in range(256)}
    vocab |= {c: 261 + i for i, c in enumerate(["▁"] + [chr(c) for c in range(33, 127)])}
    tokenizer = GemmaTokenizer(vocab=vocab, merges=[], add_bos_token=True, add_eos_token=False)  # as gemma-2-2b-it
    return SanaPipeline(
        tokenizer=tokenizer,
        text_encoder=Gemma2Model(Gemma2Config(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, head_dim=8, max_position_embeddings=4096)),  # default <pad> 0, <eos> 1, <bos> 2
        transformer=SanaTransformer2DModel(
            # sample_size 16 is one the pipeline's resolution binning knows (its 512-px bins)
            sample_size=16, in_channels=4, out_channels=4, num_layers=2, num_attention_heads=2,
            attention_head_dim=8, num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16,
            caption_channels=16),
        vae=AutoencoderDC(  # two stages, so latents are resolution/2 (Sana's real DC-AE: /32)
            latent_channels=4, attention_head_dim=2,
            encoder_block_types=("ResBlock", "EfficientViTBlock"), decoder_block_types=("ResBlock", "EfficientViTBlock"),
            encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
            encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
            encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1),
            downsample_block_type="conv", upsample_block_type="interpolate", scaling_factor=0.41407),
        # Sana_1600M_1024px's: flow-matching DPM-Solver++
        scheduler=DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0))


def _dit():
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    transformer = DiTTransformer2DModel(  # sample_size 8 latents -> 64-px images through the /8 VAE (params allow >= 64)
        sample_size=8, out_channels=8, num_layers=2, attention_head_dim=8, num_attention_heads=2)
    # DiTPipeline takes id2label but does not store it; registering it puts it in model_index.json,
    # from where from_pretrained hands it back (as DiT-XL-2-256's own model_index.json does)
    id2label = {str(i): f"class {i}" for i in range(1000)}
    pipe: Any = DiTPipeline(transformer=transformer, vae=AutoencoderKL(**TINY_VAE), scheduler=DDIMScheduler(clip_sample=False),
                            id2label=id2label)  # DDIM on DiT's linear DDPM betas, the defaults
    pipe.register_to_config(id2label=id2label)
    return pipe


_BUILDERS = {"sdxl": _sdxl, "sd3": _sd3, "flux": _flux, "pixart": _pixart, "sana": _sana, "dit": _dit}


def tiny_diffusion_params(path: str | Path) -> dict[str, Any]:
    """The whole `diffusion:` section for the tiny SD pipeline on a CPU: 64-px images in seconds."""
    from diffaug.config import DiffusionConfig

    return DiffusionConfig(model=str(path), variant=None, dtype="float32", resolution=64, guidance_scale=7.5, steps=3,
                           batch_size=4, fuse_qkv=False, compile=False, device="cpu").model_dump()


def build_sd14_random(dtype, device):
    """The full-size SD-v1.4 pipeline with random weights on `device`, for benchmarks. The byte-level
    tokenizer changes nothing about cost; the safety checker never flags, so no timing includes a regeneration."""
    return _sd_pipeline(SD14_UNET, SD14_VAE, SD14_TEXT, SD14_SAFETY_VISION, device).to(device=device, dtype=dtype)


@exit_on_error
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m diffaug.sandbox.tiny",
                           description="Write a tiny random-weight diffusers pipeline with save_pretrained.")
    parser.add_argument("--family", default="sd", choices=FAMILIES, help="model family (default: sd)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed for the random weights (default: 0)")
    parser.add_argument("out", type=Path, help="directory to write (created; must not exist or be empty)")
    args = parser.parse_args(argv)
    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: exists and is not an empty directory; give a new path")
    # built beside OUT and renamed into place (over an empty OUT too), so an interrupted build leaves no half-written model
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        os.replace(build_tiny_pipeline(Path(tmp) / "pipe", args.family, seed=args.seed), out)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
