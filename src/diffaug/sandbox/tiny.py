"""Stable Diffusion pipelines with random weights, built from configs alone (no hub, no download).

* `build_tiny_pipeline(dir)` writes a tiny SD-v1 pipeline (a few hundred thousand parameters) with
  `save_pretrained`, so tests and the offline demo load it through exactly the same
  `StableDiffusionPipeline.from_pretrained` path as `CompVis/stable-diffusion-v1-4`. Its images are
  noise-like, but every code path (prompts, CFG, PNDM, VAE, safety checker, downsampling) runs.
  `tiny_diffusion_params(dir)` gives the params.yaml `diffusion:` overrides that suit it.
* `build_sd14_random(dtype, device)` builds the full-size SD-v1.4 architecture (UNet 859.52M
  parameters) for benchmarks: the same FLOPs and memory traffic as the real model, random weights.

The tokenizer is a byte-level BPE with no merges (every byte is a token): it needs no vocabulary
download and still yields the 77-token sequences the text encoder expects.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from transformers import CLIPConfig, CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

# SD-v1.4's scheduler/scheduler_config.json (the model's own scheduler, PNDM).
SD14_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1, trained_betas=None, clip_sample=False,
)
SD14_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
SD14_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512, 512), scaling_factor=0.18215,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
SD14_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)
SD14_SAFETY_VISION = dict(  # CLIP ViT-L/14, the safety checker's image tower
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
    image_size=224, patch_size=14, hidden_act="quick_gelu",
)
SD14_UNET_PARAMS = 859_520_964

TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=(32, 64), cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)
# Four blocks like SD's VAE, so latents are resolution/8 as in the real model.
TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, sample_size=64, norm_num_groups=8,
    block_out_channels=(8, 8, 16, 16), scaling_factor=0.18215,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
TINY_CLIP = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, hidden_act="quick_gelu")


def _bytes_to_unicode() -> list[str]:
    """CLIP/GPT-2's reversible byte -> printable character table (the BPE alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def byte_level_tokenizer(model_max_length: int = 77):
    """A CLIPTokenizer whose vocabulary is the 256 bytes (plain and word-final) plus BOS/EOS: 514 ids."""
    alphabet = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(alphabet)})
    vocab["<|startoftext|>"] = 512
    vocab["<|endoftext|>"] = 513
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "vocab.json").write_text(json.dumps(vocab))
        Path(tmp, "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=model_max_length)


def _text_config(tokenizer, **sizes):
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    bos = tokenizer.convert_tokens_to_ids("<|startoftext|>")
    base = dict(vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    return CLIPTextConfig(**{**base, **sizes})


def _never_flagging(checker):
    """Random concept embeddings would flag random images; thresholds of 1 on cosine similarity never fire."""
    with torch.no_grad():
        for p in (checker.concept_embeds_weights, checker.special_care_embeds_weights):
            p.fill_(1.0)
    return checker


def build_tiny_pipeline(out_dir: str | Path, *, seed: int = 0, safety_checker: bool = True) -> Path:
    """Write a tiny random SD-v1 pipeline to `out_dir` (default and fp16-variant weights); return the path.

    With `safety_checker=True` it carries a tiny StableDiffusionSafetyChecker (+ CLIPImageProcessor)
    that never flags; with False the model has no checker, like a pipeline saved without one.
    """
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    tokenizer = byte_level_tokenizer()
    text_config = _text_config(tokenizer, projection_dim=32, **TINY_CLIP)
    parts: dict[str, Any] = dict(
        unet=UNet2DConditionModel(**TINY_UNET),
        vae=AutoencoderKL(**TINY_VAE),
        text_encoder=CLIPTextModel(text_config),
        tokenizer=tokenizer,
        scheduler=PNDMScheduler.from_config(SD14_SCHEDULER),  # keeps clip_sample=False for DDIM
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=safety_checker,
    )
    if safety_checker:
        clip = CLIPConfig(text_config=text_config.to_dict(), projection_dim=32,
                          vision_config=dict(image_size=32, patch_size=8, **TINY_CLIP))
        parts["safety_checker"] = _never_flagging(StableDiffusionSafetyChecker(clip))
        parts["feature_extractor"] = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pipe: Any = StableDiffusionPipeline(**parts)
    pipe.save_pretrained(out_dir)
    pipe.to(torch.float16).save_pretrained(out_dir, variant="fp16")  # like the hub repo's fp16 files
    return out_dir


def tiny_diffusion_params(path: str | Path, *, safety_checker: bool = True) -> dict[str, Any]:
    """`diffusion:` overrides for the tiny pipeline: 20 images of 32x32 take a few seconds on a CPU."""
    return {
        "model": str(path), "revision": None, "variant": None, "dtype": "float32", "resolution": 64,
        "guidance_scale": 7.5, "steps": 3, "scheduler": "default", "seed": 0,
        "safety_checker": safety_checker, "max_regenerations": 10, "batch_size": 4,
        "channels_last": False, "fuse_qkv": False, "compile": False, "compile_mode": "default", "cuda_graphs": False,
        "attention": "auto", "deep_cache": 0, "fp8": False, "device": "cpu", "allow_cpu": False,
    }


def build_sd14_random(dtype, device, *, safety_checker: bool = True):
    """The full-size SD-v1.4 pipeline with random weights, built on `device` (for benchmarks).

    Sizes are SD-v1.4's configs; the tokenizer is the byte-level one above (ids < 514 <= 49408), which
    changes nothing about cost. Its safety checker (ViT-L/14) never flags, so timings never include
    regenerations.
    """
    tokenizer = byte_level_tokenizer()
    text_config = _text_config(tokenizer, **{**SD14_TEXT, "vocab_size": SD14_TEXT["vocab_size"]})
    with torch.device(device):  # initialise directly on the GPU: minutes faster than on the CPU
        parts: dict[str, Any] = dict(
            unet=UNet2DConditionModel(**SD14_UNET),
            vae=AutoencoderKL(**SD14_VAE),
            text_encoder=CLIPTextModel(text_config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=safety_checker,
        )
        if safety_checker:
            clip = CLIPConfig(text_config=text_config.to_dict(), vision_config=SD14_SAFETY_VISION, projection_dim=768)
            parts["safety_checker"] = _never_flagging(StableDiffusionSafetyChecker(clip))
            parts["feature_extractor"] = CLIPImageProcessor()  # 224 px, bicubic, CLIP mean/std: SD-v1.4's
    pipe: Any = StableDiffusionPipeline(tokenizer=tokenizer, scheduler=PNDMScheduler.from_config(SD14_SCHEDULER), **parts)
    return pipe.to(device=device, dtype=dtype)


def sd14_unet_parameter_count() -> int:
    """Parameters of SD-v1.4's UNet built on the meta device (no memory, ~1 s)."""
    with torch.device("meta"):
        unet: Any = UNet2DConditionModel(**SD14_UNET)
    return sum(p.numel() for p in unet.parameters())
