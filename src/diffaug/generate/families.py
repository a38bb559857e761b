"""Model families: which diffusers pipeline a model directory is (its model_index.json's `_class_name`),
its defaults, which levers apply. Defaults are the installed pipelines' own `__call__` defaults (a test
checks the table against them), except the distilled models' (SDXL-Turbo, FLUX.1-schnell: their model
cards); they fill only the diffusion keys params.yaml leaves null. No torch here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffaug.config import DiffusionConfig
from diffaug.errors import UserError
from diffaug.io import read_json


@dataclass(frozen=True)
class Family:
    name: str
    classes: tuple[str, ...]  # model_index.json `_class_name`s of this family
    denoiser: str  # the pipeline attribute torch.compile, fp8 and caching act on
    steps: int
    guidance_scale: float
    # Names of what `encode_prompt` returns, in order, as `__call__` keyword arguments (None: dropped).
    embeddings: tuple[str | None, ...] = ()
    img2img: bool = False  # AutoPipelineForImage2Image has an img2img twin
    safety_checker: bool = False  # the family can ship diffusers' StableDiffusionSafetyChecker
    cache: bool = False  # its transformer blocks are ones diffusers' FirstBlockCache hooks know
    # The denoiser's fuse_qkv_projections() works for every model of the family. SD3's sets one joint
    # processor on every attention, which breaks SD3.5's self-only attention (dual_attention_layers).
    fuse_qkv: bool = True
    schedulers: bool = True  # the classic presets (pndm, ddim, dpmsolver++, euler) fit its noise schedule
    negative_prompt: bool = True
    call: tuple[tuple[str, object], ...] = ()  # fixed __call__ arguments


_POOLED = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
_MASKED = ("prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds", "negative_prompt_attention_mask")
FAMILIES = {f.name: f for f in (
    Family("sd", ("StableDiffusionPipeline",), "unet", 50, 7.5, ("prompt_embeds", "negative_prompt_embeds"),
           img2img=True, safety_checker=True),
    Family("sdxl", ("StableDiffusionXLPipeline",), "unet", 50, 5.0, _POOLED, img2img=True),
    # FirstBlockCache fails on SD3's last block, which returns no text stream (context_pre_only).
    Family("sd3", ("StableDiffusion3Pipeline",), "transformer", 28, 7.0, _POOLED, img2img=True, schedulers=False,
           fuse_qkv=False),
    Family("flux", ("FluxPipeline",), "transformer", 28, 3.5, ("prompt_embeds", "pooled_prompt_embeds", None),
           img2img=True, cache=True, schedulers=False, negative_prompt=False),
    Family("pixart", ("PixArtSigmaPipeline", "PixArtAlphaPipeline"), "transformer", 20, 4.5, _MASKED, cache=True,
           call=(("use_resolution_binning", False),)),
    Family("sana", ("SanaPipeline",), "transformer", 20, 4.5, _MASKED, schedulers=False,
           call=(("use_resolution_binning", False),)),
    Family("dit", ("DiTPipeline",), "transformer", 50, 4.0, cache=True, negative_prompt=False, fuse_qkv=False),
)}
BY_CLASS = {c: f for f in FAMILIES.values() for c in f.classes}
DISTILLED = {"turbo": (1, 0.0), "schnell": (4, 0.0)}  # (steps, guidance) of SDXL-Turbo, FLUX.1-schnell: model cards


def family_of(pipe) -> Family:
    """The family of a loaded pipeline (an img2img twin counts as its text-to-image pipeline's)."""
    return BY_CLASS.get(type(pipe).__name__.replace("Img2Img", ""), FAMILIES["sd"])


@dataclass(frozen=True)
class ModelInfo:
    """What the model directory says about itself, read from its JSON configs alone."""

    family: Family
    class_name: str
    native_resolution: int
    variant: str = ""  # "turbo" (SDXL-Turbo), "schnell" (FLUX.1-schnell) or ""
    has_safety_checker: bool = False


def _read_json(path: Path) -> dict:
    """A config file's keys; an absent or non-object file has none."""
    value = read_json(path, "not found") if path.is_file() else {}
    return value if isinstance(value, dict) else {}


def read_model_info(folder: Path, model: str) -> ModelInfo:
    """Family, native resolution and distilled variant of the model in `folder` (a save_pretrained layout)."""
    index = _read_json(folder / "model_index.json")
    class_name = str(index.get("_class_name", ""))
    family = BY_CLASS.get(class_name)
    if family is None:
        supported = ", ".join(f"{f.name} ({'/'.join(f.classes)})" for f in FAMILIES.values())
        raise UserError(f"diffusion.model: {model!r} is a {class_name or 'pipeline without _class_name'}; "
                        f"allowed: a model of a supported family: {supported}")
    denoiser = _read_json(folder / family.denoiser / "config.json")
    vae = _read_json(folder / "vae" / "config.json")
    factor = 2 ** (len(vae.get("block_out_channels") or vae.get("encoder_block_out_channels") or [0] * 4) - 1)
    sample = denoiser.get("sample_size")
    native = 1024 if family.name == "flux" or not isinstance(sample, int) else sample * factor
    variant = ("turbo" if family.name == "sdxl" and native == 512
               else "schnell" if family.name == "flux" and denoiser.get("guidance_embeds") is False else "")
    checker = index.get("safety_checker")
    return ModelInfo(family, class_name, native, variant, isinstance(checker, list) and len(checker) == 2 and all(checker))


def resolve_defaults(dif: DiffusionConfig, info: ModelInfo) -> DiffusionConfig:
    """`dif` with every null of steps, guidance_scale and resolution replaced by the family's default, and
    safety_checker off where the family ships no checker (what actually runs; the caller says so)."""
    steps, guidance = DISTILLED.get(info.variant, (info.family.steps, info.family.guidance_scale))
    return dif.model_copy(update=dict(
        steps=steps if dif.steps is None else dif.steps,
        guidance_scale=guidance if dif.guidance_scale is None else dif.guidance_scale,
        resolution=info.native_resolution if dif.resolution is None else dif.resolution,
        safety_checker=dif.safety_checker and info.family.safety_checker,
    ))


def settled(dif: DiffusionConfig) -> tuple[int, float, int]:
    """(steps, guidance_scale, resolution) of settings resolve_defaults has filled in."""
    assert dif.steps is not None and dif.guidance_scale is not None and dif.resolution is not None, "resolve_defaults first"
    return dif.steps, dif.guidance_scale, dif.resolution


def check_levers(dif: DiffusionConfig, info: ModelInfo, set_kind: str, set_key: str, has_class_ids: bool,
                 negative_prompt: str | None = None) -> None:
    """One line, before the model loads, for a setting the family cannot honour."""
    fam = info.family
    label = f"{info.class_name} (family {fam.name})"
    if negative_prompt and not fam.negative_prompt:
        raise UserError(f"{set_key}.negative_prompt: {label} has no classifier-free guidance on prompts to take a "
                        "negative prompt; set null")
    if dif.cache != "none" and not fam.cache:
        with_cache = ", ".join(f.name for f in FAMILIES.values() if f.cache)
        raise UserError(f"diffusion.cache: {dif.cache} needs a transformer whose blocks diffusers' cache hooks know; "
                        f"{label} has none; allowed: none (families with it: {with_cache})")
    if dif.channels_last and fam.denoiser != "unet":
        raise UserError(f"diffusion.channels_last: applies to UNet convolutions; {label} has a transformer; set false")
    if dif.scheduler != "default" and not fam.schedulers:
        raise UserError(f"diffusion.scheduler: {dif.scheduler} does not fit {label}'s flow-matching schedule; "
                        "allowed: default")
    if set_kind == "img2img" and not fam.img2img:
        raise UserError(f"{set_key}.kind: img2img needs an image-to-image pipeline, and {label} has none in diffusers; "
                        f"allowed: families {', '.join(f.name for f in FAMILIES.values() if f.img2img)}")
    if fam.name == "dit":
        if dif.resolution is not None and dif.resolution != info.native_resolution:
            raise UserError(f"diffusion.resolution: {label} generates {info.native_resolution}² only; set null or "
                            f"{info.native_resolution}")
    elif has_class_ids:
        raise UserError(f"{set_key}.class_ids: only class-conditional models (DiT) take ImageNet ids; {label} takes "
                        "prompts; remove class_ids")
