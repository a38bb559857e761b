"""Parameter counts and an ESTIMATE of GPU memory for each family's flagship model, without a GPU or a download.

    python benchmarks/family_memory.py [--batch 32]

Every component is built from its full-size config under torch's FakeTensorMode (meta-backed tensors:
shapes and dtypes, no storage), so building FLUX.1-dev's 12B transformer takes seconds and no memory.
The configs are transcribed from the published model configs (see docs/generator-memory.md), not read
from the hub, which this machine cannot reach.

* weights: parameters x bytes per parameter in the family's default dtype.
* peak (ESTIMATE): all components resident on the device (a plain `pipe.to("cuda")`, no offload) plus
  the largest activation footprint of any one phase at that batch: text encoding (batch B), one
  denoiser forward (2B with classifier-free guidance, B for guidance-distilled FLUX.1-dev) or the VAE
  decode (B; SDXL's VAE upcasts to float32 for it). Activations are tracked by
  torch.distributed._tools.mem_tracker.MemTracker over the fake forward pass, with the fused
  (flash-style) scaled_dot_product_attention that never materialises the attention matrix. The CUDA
  context, allocator fragmentation, cuDNN/cuBLAS workspaces and the scheduler's few latents are not
  counted, so a real run needs more. Nothing here was measured on a GPU.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402
from torch.distributed._tools.mem_tracker import MemTracker  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
from diffaug.sandbox.tiny import SD14_SAFETY_VISION, SD14_TEXT, SD14_UNET, SD14_VAE  # noqa: E402

GIB = 2**30

# --- configs transcribed from the published model configs -------------------------------------------------
CLIP_L: dict[str, Any] = dict(SD14_TEXT)  # openai/clip-vit-large-patch14 text tower (SD-1.x, SDXL, SD3, FLUX)
CLIP_G: dict[str, Any] = dict(  # OpenCLIP ViT-bigG/14 text tower (SDXL text_encoder_2, SD3 text_encoder_2)
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=1280,
)
T5_XXL: dict[str, Any] = dict(  # google/t5-v1_1-xxl encoder (SD3, FLUX, PixArt-Sigma)
    vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
    relative_attention_num_buckets=32, feed_forward_proj="gated-gelu",
)
SDXL_UNET: dict[str, Any] = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
    cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
VAE16: dict[str, Any] = dict(SD14_VAE, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)  # SD3 / FLUX VAE
SD35M_TRANSFORMER: dict[str, Any] = dict(
    sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
    pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
)
FLUX_DEV_TRANSFORMER: dict[str, Any] = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
PIXART_SIGMA_TRANSFORMER: dict[str, Any] = dict(
    sample_size=128, patch_size=2, in_channels=4, out_channels=8, num_layers=28, num_attention_heads=16,
    attention_head_dim=72, cross_attention_dim=1152, caption_channels=4096, attention_bias=True,
    activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
    norm_elementwise_affine=False, norm_eps=1e-6, interpolation_scale=2, use_additional_conditions=False,
)
SANA_1600M_TRANSFORMER: dict[str, Any] = dict(
    sample_size=32, patch_size=1, in_channels=32, out_channels=32, num_layers=20, num_attention_heads=70,
    attention_head_dim=32, num_cross_attention_heads=20, cross_attention_head_dim=112, cross_attention_dim=2240,
    caption_channels=2304, mlp_ratio=2.5, norm_elementwise_affine=False, norm_eps=1e-6,
)
GEMMA2_2B: dict[str, Any] = dict(  # google/gemma-2-2b-it (Sana's text encoder, base model without the LM head)
    vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
    num_key_value_heads=4, head_dim=256, max_position_embeddings=8192,
)
DC_AE_F32C32: dict[str, Any] = dict(  # mit-han-lab/dc-ae-f32c32-sana-1.0
    in_channels=3, latent_channels=32, attention_head_dim=32,
    encoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
    decoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
    encoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
    decoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
    encoder_layers_per_block=(2, 2, 2, 3, 3, 3), decoder_layers_per_block=(3, 3, 3, 3, 3, 3),
    encoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)), decoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
    upsample_block_type="interpolate", downsample_block_type="Conv", decoder_norm_types="rms_norm",
    decoder_act_fns="silu", scaling_factor=0.41407,
)
DIT_XL2_256: dict[str, Any] = dict(
    sample_size=32, patch_size=2, in_channels=4, out_channels=8, num_layers=28, num_attention_heads=16,
    attention_head_dim=72, num_embeds_ada_norm=1000, norm_type="ada_norm_zero", norm_elementwise_affine=False,
)


# --- components: a builder and the forward pass whose activations we track -----------------------------------
@dataclass
class Component:
    name: str
    build: Callable[[], Any]  # -> torch.nn.Module (diffusers' models are untyped for mypy)
    run: Callable[[Any, int, torch.dtype], Any] | None  # (module, batch, dtype) -> forward
    per_image: int = 1  # inputs per image in that forward (2 with classifier-free guidance)
    dtype: torch.dtype | None = None  # None: the family's dtype


@dataclass
class Family:
    key: str
    model: str
    dtype: torch.dtype
    resolution: int
    components: list[Component] = field(default_factory=list)


def _clip(cfg: dict, projection: bool) -> Callable[[], Any]:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    return lambda: (CLIPTextModelWithProjection if projection else CLIPTextModel)(CLIPTextConfig(**cfg))


def _ids(length: int) -> Callable[[Any, int, torch.dtype], Any]:
    return lambda m, b, dt: m(torch.zeros(b, length, dtype=torch.long))


def _t5() -> Any:
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(**T5_XXL))


def _kl_vae(cfg: dict) -> Callable[[], Any]:
    from diffusers import AutoencoderKL

    return lambda: AutoencoderKL(**cfg)


def _decode(channels: int, factor: int, resolution: int):
    side = resolution // factor
    return lambda m, b, dt: m.decode(torch.randn(b, channels, side, side, dtype=dt))


def families() -> list[Family]:
    from diffusers import (
        AutoencoderDC,
        DiTTransformer2DModel,
        FluxTransformer2DModel,
        PixArtTransformer2DModel,
        SanaTransformer2DModel,
        SD3Transformer2DModel,
        UNet2DConditionModel,
    )
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPTextConfig, Gemma2Config, Gemma2Model

    def sd_unet(m, b, dt):
        return m(torch.randn(b, 4, 64, 64, dtype=dt), 999, torch.randn(b, 77, 768, dtype=dt))

    def sdxl_unet(m, b, dt):
        cond = dict(text_embeds=torch.randn(b, 1280, dtype=dt), time_ids=torch.randn(b, 6, dtype=dt))
        return m(torch.randn(b, 4, 128, 128, dtype=dt), 999, torch.randn(b, 77, 2048, dtype=dt),
                 added_cond_kwargs=cond)

    def sd3(m, b, dt):  # 77 CLIP + 256 T5 tokens
        return m(hidden_states=torch.randn(b, 16, 128, 128, dtype=dt), encoder_hidden_states=torch.randn(
            b, 333, 4096, dtype=dt), pooled_projections=torch.randn(b, 2048, dtype=dt), timestep=torch.ones(b))

    def flux(m, b, dt):  # 1024 px: 64x64 packed latents = 4096 tokens; 512 T5 tokens
        return m(hidden_states=torch.randn(b, 4096, 64, dtype=dt), encoder_hidden_states=torch.randn(
            b, 512, 4096, dtype=dt), pooled_projections=torch.randn(b, 768, dtype=dt), timestep=torch.ones(b),
            img_ids=torch.zeros(4096, 3), txt_ids=torch.zeros(512, 3), guidance=torch.ones(b))

    def pixart(m, b, dt):  # 300 T5 tokens
        return m(torch.randn(b, 4, 128, 128, dtype=dt), encoder_hidden_states=torch.randn(b, 300, 4096, dtype=dt),
                 encoder_attention_mask=torch.ones(b, 300), timestep=torch.ones(b),
                 added_cond_kwargs={"resolution": None, "aspect_ratio": None})

    def sana(m, b, dt):  # 300 Gemma tokens kept after the instruction prefix
        return m(torch.randn(b, 32, 32, 32, dtype=dt), encoder_hidden_states=torch.randn(b, 300, 2304, dtype=dt),
                 encoder_attention_mask=torch.ones(b, 300), timestep=torch.ones(b))

    def dit(m, b, dt):
        return m(torch.randn(b, 4, 32, 32, dtype=dt), timestep=torch.ones(b), class_labels=torch.zeros(b, dtype=torch.long))

    def checker() -> Any:
        clip = CLIPConfig(text_config=CLIPTextConfig(**CLIP_L).to_dict(), vision_config=SD14_SAFETY_VISION,
                          projection_dim=768)
        return StableDiffusionSafetyChecker(clip)

    def gemma() -> Any:
        return Gemma2Model(Gemma2Config(**{**GEMMA2_2B, "attn_implementation": "eager"}))

    return [
        Family("sd", "CompVis/stable-diffusion-v1-4", torch.float16, 512, [
            Component("text_encoder", _clip(CLIP_L, False), _ids(77)),
            Component("unet", lambda: UNet2DConditionModel(**SD14_UNET), sd_unet, per_image=2),
            Component("vae", _kl_vae(SD14_VAE), _decode(4, 8, 512)),
            Component("safety_checker", checker, lambda m, b, dt: m.vision_model(torch.randn(b, 3, 224, 224, dtype=dt))),
        ]),
        Family("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", torch.float16, 1024, [
            Component("text_encoder", _clip(CLIP_L, False), _ids(77)),
            Component("text_encoder_2", _clip(CLIP_G, True), _ids(77)),
            Component("unet", lambda: UNet2DConditionModel(**SDXL_UNET), sdxl_unet, per_image=2),
            # force_upcast: the fp16 pipeline decodes in float32
            Component("vae", _kl_vae(dict(SD14_VAE, sample_size=1024, scaling_factor=0.13025)), _decode(4, 8, 1024),
                      dtype=torch.float32),
        ]),
        Family("sd3", "stabilityai/stable-diffusion-3.5-medium", torch.bfloat16, 1024, [
            Component("text_encoder", _clip(CLIP_L, True), _ids(77)),
            Component("text_encoder_2", _clip(CLIP_G, True), _ids(77)),
            Component("text_encoder_3", _t5, _ids(256)),
            Component("transformer", lambda: SD3Transformer2DModel(**SD35M_TRANSFORMER), sd3, per_image=2),
            Component("vae", _kl_vae(VAE16), _decode(16, 8, 1024)),
        ]),
        Family("flux", "black-forest-labs/FLUX.1-dev", torch.bfloat16, 1024, [
            Component("text_encoder", _clip(CLIP_L, False), _ids(77)),
            Component("text_encoder_2", _t5, _ids(512)),
            Component("transformer", lambda: FluxTransformer2DModel(**FLUX_DEV_TRANSFORMER), flux, per_image=1),
            Component("vae", _kl_vae(VAE16), _decode(16, 8, 1024)),
        ]),
        Family("pixart", "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", torch.float16, 1024, [
            Component("text_encoder", _t5, _ids(300)),
            Component("transformer", lambda: PixArtTransformer2DModel(**PIXART_SIGMA_TRANSFORMER), pixart, per_image=2),
            Component("vae", _kl_vae(dict(SD14_VAE, scaling_factor=0.13025)), _decode(4, 8, 1024)),
        ]),
        Family("sana", "Efficient-Large-Model/Sana_1600M_1024px_diffusers", torch.float16, 1024, [
            Component("text_encoder", gemma, _ids(300)),
            Component("transformer", lambda: SanaTransformer2DModel(**SANA_1600M_TRANSFORMER), sana, per_image=2),
            Component("vae", lambda: AutoencoderDC(**DC_AE_F32C32), _decode(32, 32, 1024)),
        ]),
        Family("dit", "facebook/DiT-XL-2-256", torch.float16, 256, [
            Component("transformer", lambda: DiTTransformer2DModel(**DIT_XL2_256), dit, per_image=2),
            Component("vae", _kl_vae(SD14_VAE), _decode(4, 8, 256)),
        ]),
    ]


def _bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def activation_peak(module: torch.nn.Module, run: Callable, batch: int, dtype: torch.dtype) -> int:
    """Peak bytes of activations (not parameters) during one fake forward at this batch."""
    tracker = MemTracker()
    tracker.track_external(module)
    with tracker, torch.no_grad():
        run(module, batch, dtype)
    peak = tracker.get_tracker_snapshot("peak")
    return int(sum(v.get(_act_key(v), 0) for v in peak.values()))


def _act_key(per_device: dict) -> Any:
    return next(k for k in per_device if str(k).endswith("ACT"))


Activations = dict[str, dict[int, int]]  # component -> {batch: bytes on top of the resident weights}


def measure(family: Family, batches: tuple[int, ...]) -> tuple[list[tuple[str, int, float]], Activations]:
    """[(component, parameters, weight GiB)] and each component's extra bytes in its phase, per batch."""
    rows, acts = [], {}
    before = torch.get_default_dtype()
    with FakeTensorMode(allow_non_fake_inputs=True):
        for comp in family.components:
            dtype = comp.dtype or family.dtype
            torch.set_default_dtype(dtype)
            try:
                module = comp.build().eval()
            finally:
                torch.set_default_dtype(before)
            n = sum(p.numel() for p in module.parameters())
            rows.append((comp.name, n, n * _bytes(family.dtype) / GIB))
            if comp.run is not None:
                # weights stay in the family dtype; an upcast VAE (SDXL) holds a float32 copy while decoding
                upcast = n * _bytes(dtype) if dtype != family.dtype else 0
                acts[comp.name] = {b: upcast + activation_peak(module, comp.run, b * comp.per_image, dtype)
                                   for b in batches}
            del module
    return rows, acts


def peak(weights_gib: float, acts: Activations, batch: int, vae_batch: int | None = None) -> tuple[float, str]:
    """Resident weights + the largest phase; `vae_batch` decodes that many images at a time (VAE slicing: 1)."""
    phases = {name: a[vae_batch if name == "vae" and vae_batch else batch] for name, a in acts.items()}
    name = max(phases, key=lambda k: phases[k])
    return weights_gib + phases[name] / GIB, name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="the default batch (diffusion.batch_size; 32)")
    parser.add_argument("--family", action="append", help="only these families (repeatable)")
    args = parser.parse_args(argv)
    b = args.batch
    print("| family | model | dtype | resolution | component | parameters | weights GiB |")
    print("|---|---|---|---|---|---:|---:|")
    totals = []
    for fam in families():
        if args.family and fam.key not in args.family:
            continue
        rows, acts = measure(fam, (1, b))
        dt = str(fam.dtype).removeprefix("torch.")
        for name, n, w in rows:
            print(f"| {fam.key} | {fam.model} | {dt} | {fam.resolution} | {name} | {n / 1e6:,.2f}M | {w:.2f} |")
        n_all, w_all = sum(r[1] for r in rows), sum(r[2] for r in rows)
        print(f"| {fam.key} | | | | **total** | **{n_all / 1e6:,.2f}M** | **{w_all:.2f}** |")
        totals.append((fam, n_all, w_all, acts))
        sys.stdout.flush()
    print()
    print(f"| family | dtype | resolution | parameters | weights GiB | peak GiB, batch 1 | peak GiB, batch {b} "
          f"| set by | peak GiB, batch {b}, VAE sliced | set by |")
    print("|---|---|---:|---:|---:|---:|---:|---|---:|---|")
    for fam, n_all, w_all, acts in totals:
        dt = str(fam.dtype).removeprefix("torch.")
        one, full, sliced = peak(w_all, acts, 1), peak(w_all, acts, b), peak(w_all, acts, b, vae_batch=1)
        print(f"| {fam.key} | {dt} | {fam.resolution} | {n_all / 1e9:.2f}B | {w_all:.1f} | {one[0]:.1f} | "
              f"{full[0]:.1f} | {full[1]} | {sliced[0]:.1f} | {sliced[1]} |")
    print("\nPeak columns are ESTIMATES from fake-tensor forwards (see the docstring); nothing was measured on a GPU.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
