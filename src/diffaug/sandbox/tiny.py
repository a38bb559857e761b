"""Diffusion pipelines with random weights, built from configs alone (no hub, no download).

* `build_tiny_pipeline(dir, family)` writes a tiny random pipeline of one of `FAMILIES` (tens of
  thousands of parameters per component; the SD and SDXL UNets 0.8M and 1.4M) with `save_pretrained`,
  so tests and the offline demo load it through exactly the same `from_pretrained` path as the hub
  model it mimics: `AutoPipelineForText2Image` for sd, sdxl, sd3, flux, pixart and sana, `DiTPipeline`
  (or `DiffusionPipeline`) for dit. Its images
  are noise-like, but every code path (prompts, CFG, scheduler, VAE, safety checker, downsampling) runs.
  `tiny_diffusion_params(dir)` gives the params.yaml `diffusion:` overrides that suit the SD one.
* `build_sd14_random(dtype, device)` builds the full-size SD-v1.4 architecture (UNet 859.52M
  parameters) for benchmarks: the same FLOPs and memory traffic as the real model, random weights.
* `python -m diffaug.sandbox.tiny --family F OUT` writes the tiny pipeline of family F to OUT.

Tokenizers are built in code, never downloaded: CLIP's is a byte-level BPE with no merges (every byte
is a token), T5's a Unigram over single characters, Gemma's a BPE of single characters with byte
fallback. They yield the sequence lengths the text encoders expect and round-trip through
`save_pretrained`/`from_pretrained` offline.
"""
from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from transformers import CLIPConfig, CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from diffaug.generate.families import FAMILIES as GENERATE_FAMILIES

FAMILIES = tuple(GENERATE_FAMILIES)
# Families whose text-to-image pipeline diffusers maps to an img2img one (AutoPipelineForImage2Image.from_pipe),
# as the family table says; tests/test_tiny_families.py checks the table against diffusers.
IMG2IMG_FAMILIES = tuple(name for name, family in GENERATE_FAMILIES.items() if family.img2img)

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


def build_tiny_pipeline(out_dir: str | Path, family: str = "sd", *, seed: int = 0, safety_checker: bool = True) -> Path:
    """Write a tiny random pipeline of `family` (one of FAMILIES) to `out_dir`; return the path.

    The same `seed` gives the same weights, byte for byte. For "sd" the directory also holds fp16-variant
    weights (like the hub repo), and `safety_checker=True` adds a tiny StableDiffusionSafetyChecker
    (+ CLIPImageProcessor) that never flags; with False the model has no checker, like a pipeline saved
    without one. The other families ship no checker (neither do their real models), so the flag is
    ignored for them.
    """
    if family not in FAMILIES:
        raise ValueError(f"family {family!r} is not one of {', '.join(FAMILIES)}")
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    if family == "sd":
        return _build_sd(out_dir, safety_checker)
    pipe = _BUILDERS[family]()
    pipe.save_pretrained(out_dir)
    return out_dir


def _build_sd(out_dir: Path, safety_checker: bool) -> Path:
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
    # fp16 files first, like the hub repo's; then the float32 ones, whose configs (shared by both
    # variants) must say float32, since transformers loads a text encoder in its config's dtype
    copy.deepcopy(pipe).to(torch.float16).save_pretrained(out_dir, variant="fp16")
    pipe.save_pretrained(out_dir)
    return out_dir


# A VAE shaped like the real ones (four blocks, so latents are resolution/8) but 8-16 channels wide;
# SD3's and FLUX's have 16 latent channels and no quant convs.
_TINY_VAE16 = dict(TINY_VAE, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)


def t5_tokenizer():
    """A T5 tokenizer (Unigram over printable ASCII characters, with and without the word-start mark)."""
    from transformers import T5Tokenizer

    chars = [chr(c) for c in range(33, 127)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + c, -3.0) for c in chars] + [(c, -4.0) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _t5_encoder(tokenizer, d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
    )
    return T5EncoderModel(config)


def gemma_tokenizer():
    """A Gemma tokenizer: printable ASCII characters and the word mark, every other byte through byte fallback."""
    from transformers import GemmaTokenizer

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    vocab.update({f"<0x{b:02X}>": 5 + b for b in range(256)})
    for c in ["▁"] + [chr(c) for c in range(33, 127)]:
        vocab[c] = len(vocab)
    return GemmaTokenizer(vocab=vocab, merges=[], add_bos_token=True, add_eos_token=False)  # as gemma-2-2b-it


def _clip(with_projection: bool):
    from transformers import CLIPTextModelWithProjection

    tokenizer = byte_level_tokenizer()
    config = _text_config(tokenizer, projection_dim=32, **TINY_CLIP)
    return tokenizer, (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def _sdxl():
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    tokenizer, text_encoder = _clip(with_projection=False)
    tokenizer_2, text_encoder_2 = _clip(with_projection=True)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
        # penultimate hidden states of both encoders side by side (32 + 32); the added embedding is the
        # pooled text embedding (32) + six size/crop ids of 8 each, as in SDXL's text_time conditioning
        cross_attention_dim=64, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8, norm_num_groups=32,
    )
    vae = AutoencoderKL(**dict(TINY_VAE, scaling_factor=0.13025, force_upcast=True))
    scheduler = EulerDiscreteScheduler(  # SDXL-base-1.0's scheduler_config.json
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        steps_offset=1, timestep_spacing="leading", interpolation_type="linear", prediction_type="epsilon",
    )
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def _sd3():
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer, text_encoder = _clip(with_projection=True)
    tokenizer_2, text_encoder_2 = _clip(with_projection=True)
    tokenizer_3 = t5_tokenizer()
    text_encoder_3 = _t5_encoder(tokenizer_3, d_model=64)  # CLIP's 32 + 32 are zero-padded to T5's width
    transformer = SD3Transformer2DModel(
        sample_size=4, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=64,
        qk_norm="rms_norm", dual_attention_layers=(0,),  # SD3.5's MMDiT-X layout
    )
    vae = AutoencoderKL(**dict(_TINY_VAE16, scaling_factor=1.5305, shift_factor=0.0609))
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3,
    )


def _flux():
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer, text_encoder = _clip(with_projection=False)
    tokenizer_2 = t5_tokenizer()
    text_encoder_2 = _t5_encoder(tokenizer_2)
    transformer = FluxTransformer2DModel(  # 16 latent channels packed 2x2 -> 64 per token, as in FLUX.1
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )
    vae = AutoencoderKL(**dict(_TINY_VAE16, scaling_factor=0.3611, shift_factor=0.1159))
    scheduler = FlowMatchEulerDiscreteScheduler(  # FLUX.1-dev's scheduler_config.json
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer,
    )


def _pixart():
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    tokenizer = t5_tokenizer()
    text_encoder = _t5_encoder(tokenizer)
    transformer = PixArtTransformer2DModel(
        # sample_size 32 is one the pipeline's resolution binning knows (its 256-px bins)
        sample_size=32, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3,
        caption_channels=32, in_channels=4, out_channels=8, cross_attention_dim=24, attention_bias=True,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, use_additional_conditions=False,
    )
    vae = AutoencoderKL(**dict(TINY_VAE, scaling_factor=0.13025))
    scheduler = DPMSolverMultistepScheduler(  # PixArt-Sigma's: DPM-Solver++ on the DDPM linear betas
        beta_start=0.0001, beta_end=0.02, beta_schedule="linear", num_train_timesteps=1000,
        algorithm_type="dpmsolver++", solver_order=2, prediction_type="epsilon",
    )
    return PixArtSigmaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                               scheduler=scheduler)


def _sana():
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    tokenizer = gemma_tokenizer()
    text_encoder = Gemma2Model(Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=4096,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    ))
    transformer = SanaTransformer2DModel(
        # sample_size 16 is one the pipeline's resolution binning knows (its 512-px bins)
        sample_size=16, patch_size=1, in_channels=4, out_channels=4, num_layers=2, num_attention_heads=2,
        attention_head_dim=8, num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16,
        caption_channels=16,
    )
    vae = AutoencoderDC(  # two stages, so latents are resolution/2 (Sana's real DC-AE: /32)
        in_channels=3, latent_channels=4, attention_head_dim=2,
        encoder_block_types=("ResBlock", "EfficientViTBlock"), decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
        encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1),
        downsample_block_type="conv", upsample_block_type="interpolate", decoder_norm_types="rms_norm",
        decoder_act_fns="silu", scaling_factor=0.41407,
    )
    scheduler = DPMSolverMultistepScheduler(  # Sana_1600M_1024px's: flow-matching DPM-Solver++
        beta_start=0.0001, beta_end=0.02, beta_schedule="linear", num_train_timesteps=1000,
        algorithm_type="dpmsolver++", solver_order=2, prediction_type="flow_prediction",
        use_flow_sigmas=True, flow_shift=3.0,
    )
    return SanaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                        scheduler=scheduler)


def _dit():
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    transformer = DiTTransformer2DModel(  # sample_size 8 latents -> 64-px images through the /8 VAE (params allow >= 64)
        sample_size=8, patch_size=2, in_channels=4, out_channels=8, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, num_embeds_ada_norm=1000, norm_type="ada_norm_zero", norm_elementwise_affine=False,
    )
    vae = AutoencoderKL(**TINY_VAE)
    scheduler = DDIMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", num_train_timesteps=1000,
                              clip_sample=False)
    # DiTPipeline takes id2label but does not store it; registering it puts it in model_index.json,
    # from where from_pretrained hands it back (as DiT-XL-2-256's own model_index.json does)
    id2label = {str(i): f"class {i}" for i in range(1000)}
    pipe: Any = DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler, id2label=id2label)
    pipe.register_to_config(id2label=id2label)
    return pipe


_BUILDERS = {"sdxl": _sdxl, "sd3": _sd3, "flux": _flux, "pixart": _pixart, "sana": _sana, "dit": _dit}


def tiny_diffusion_params(path: str | Path) -> dict[str, Any]:
    """`diffusion:` overrides for the tiny pipeline: 20 images of 32x32 take a few seconds on a CPU."""
    return {
        "model": str(path), "revision": None, "variant": None, "dtype": "float32", "resolution": 64,
        "guidance_scale": 7.5, "steps": 3, "scheduler": "default", "seed": 0,
        "safety_checker": True, "max_regenerations": 10, "batch_size": 4,
        "channels_last": False, "fuse_qkv": False, "compile": False, "compile_mode": "default", "cuda_graphs": False,
        "attention": "auto", "fp8": False, "device": "cpu", "allow_cpu": False,
    }


def build_sd14_random(dtype, device):
    """The full-size SD-v1.4 pipeline with random weights, built on `device` (for benchmarks).

    Sizes are SD-v1.4's configs; the tokenizer is the byte-level one above (ids < 514 <= 49408), which
    changes nothing about cost. Its safety checker (ViT-L/14) never flags, so timings never include
    regenerations.
    """
    tokenizer = byte_level_tokenizer()
    text_config = _text_config(tokenizer, **SD14_TEXT)
    with torch.device(device):  # initialise directly on the GPU: minutes faster than on the CPU
        clip = CLIPConfig(text_config=text_config.to_dict(), vision_config=SD14_SAFETY_VISION, projection_dim=768)
        parts: dict[str, Any] = dict(
            unet=UNet2DConditionModel(**SD14_UNET),
            vae=AutoencoderKL(**SD14_VAE),
            text_encoder=CLIPTextModel(text_config),
            safety_checker=_never_flagging(StableDiffusionSafetyChecker(clip)),
            feature_extractor=CLIPImageProcessor(),  # 224 px, bicubic, CLIP mean/std: SD-v1.4's
        )
    pipe: Any = StableDiffusionPipeline(tokenizer=tokenizer, scheduler=PNDMScheduler.from_config(SD14_SCHEDULER), **parts)
    return pipe.to(device=device, dtype=dtype)


def sd14_unet_parameter_count() -> int:
    """Parameters of SD-v1.4's UNet built on the meta device (no memory, ~1 s)."""
    with torch.device("meta"):
        unet: Any = UNet2DConditionModel(**SD14_UNET)
    return sum(p.numel() for p in unet.parameters())


def main(argv: list[str] | None = None) -> int:
    from diffaug.errors import OneLineParser, UserError, exit_on_error

    parser = OneLineParser(prog="python -m diffaug.sandbox.tiny",
                           description="Write a tiny random-weight diffusers pipeline with save_pretrained.")
    parser.add_argument("--family", default="sd", choices=FAMILIES, help="model family (default: sd)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed for the random weights (default: 0)")
    parser.add_argument("out", type=Path, help="directory to write (created; must not exist or be empty)")

    @exit_on_error
    def run() -> None:
        args = parser.parse_args(argv)
        out: Path = args.out
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UserError(f"{out}: exists and is not an empty directory; give a new path")
        # built beside OUT and renamed into place, so an interrupted build leaves no half-written model
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
            build_tiny_pipeline(Path(tmp) / "pipe", args.family, seed=args.seed)
            if out.exists():
                out.rmdir()
            os.replace(Path(tmp) / "pipe", out)
        print(out)

    run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
