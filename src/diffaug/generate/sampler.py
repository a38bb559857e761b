"""One batch of images through the family's stock diffusers pipeline (its own `__call__`: denoising loop,
schedulers, VAE decode), with diffaug's guarantees around it: one CPU `torch.Generator` per image (an
image does not depend on its batch); every distinct prompt encoded once per run by the pipeline's own
`encode_prompt`, then the text encoders dropped (FLUX's T5-XXL alone is about 9.5 GB); `output_type="pt"`,
so images stay on the device for the uint8 conversion (`round(255 * x)`, as the pipeline's path to PIL)
and the downsampling, and cross to the host once per batch with a finiteness flag per image (final
latents, seen by `callback_on_step_end`, and pixels); the SD safety checker run by us on exactly the
uint8 images the pipeline would show it, for its flags (to regenerate) instead of black images.
img2img: the real image, upsampled, goes in as a [0, 1] tensor; one call per distinct strength.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
from dataclasses import dataclass
from typing import Any

import diffusers
import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from diffaug.generate.families import family_of
from diffaug.generate.model import denoiser

# Name in params.yaml -> diffusers class, built from the model's own scheduler config.
SCHEDULER_CLASSES = {"pndm": "PNDMScheduler", "ddim": "DDIMScheduler", "dpmsolver++": "DPMSolverMultistepScheduler",
                     "euler": "EulerDiscreteScheduler"}
ATTENTION_BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                      "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}


def make_scheduler(pipe, name: str):
    """`default` is the model's own scheduler (PNDM for SD-v1.4); the others use its config."""
    if name == "default":
        return pipe.scheduler
    cls = getattr(diffusers, SCHEDULER_CLASSES[name])
    extra = {"algorithm_type": "dpmsolver++"} if name == "dpmsolver++" else {}
    return cls.from_config(pipe.scheduler.config, **extra)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Pipeline output in [0, 1] -> uint8 NCHW, as the pipeline's path to PIL (round half to even, as numpy)."""
    return (images.float() * 255).round().to(torch.uint8)


def resize(images: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """uint8 NCHW -> uint8 NCHW of `size` (H, W) on the images' device, rounded and clamped: `bilinear` with
    antialiasing to downsample (against PIL's BILINEAR, the paper's, 512² -> 32² on 5085 CIFAR-10 images: max 1
    uint8 level, mean 0.067, as PIL rounds between its passes), `bicubic` for img2img's real image."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    x = F.interpolate(images.float(), size=size, mode=mode, antialias=mode == "bilinear", align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)


downsample = functools.partial(resize, mode="bilinear")
upsample = functools.partial(resize, mode="bicubic")  # plan.UPSAMPLE_METHOD


def finite_rows(images: torch.Tensor, latents: torch.Tensor | None) -> torch.Tensor:
    ok = torch.isfinite(images).flatten(1).all(1)
    return ok if latents is None else ok & torch.isfinite(latents).flatten(1).all(1)


@dataclass
class BatchOutput:
    small: np.ndarray  # uint8 NHWC at the dataset size
    full: np.ndarray | None  # uint8 NHWC at the generation resolution, when asked for
    flagged: list[bool]
    finite: np.ndarray  # per image: latents and decoded pixels all finite

    @property
    def all_finite(self) -> bool:
        return bool(self.finite.all())


class Sampler:

    def __init__(self, pipe, *, steps: int, guidance_scale: float, resolution: int, out_size: tuple[int, int],
                 scheduler: str = "default", safety_checker: bool = True, attention: str = "auto", cache: str = "none"):
        self.pipe = pipe
        self.family = family_of(pipe)
        self.device = pipe._execution_device
        self.steps, self.guidance_scale, self.resolution, self.out_size = steps, guidance_scale, resolution, out_size
        self.guided = guidance_scale > 1 and self.family.negative_prompt
        # The checker is ours to call (flags, not black images); the pipeline must not run it again.
        self.checker: Any = getattr(pipe, "safety_checker", None) if safety_checker else None
        self.feature_extractor: Any = getattr(pipe, "feature_extractor", None)
        if hasattr(pipe, "safety_checker"):
            pipe.safety_checker = None
        self.check_safety = self.checker is not None
        pipe.scheduler = self.scheduler = make_scheduler(pipe, scheduler)
        self.attention, self.cache = attention, cache
        self.accepts = set(inspect.signature(pipe.__call__).parameters)
        self.prompt_index: dict[str, int] = {}
        self.embeds: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], negative_prompt: str | None, chunk: int = 256) -> None:
        """One text-encoder pass per distinct prompt for the whole run, then the text encoders go."""
        if not prompts:  # class-conditional: nothing to encode
            return
        accepts = inspect.signature(self.pipe.encode_prompt).parameters
        parts: dict[str, list[torch.Tensor]] = {}
        for start in range(0, len(prompts), chunk):
            part = prompts[start:start + chunk]
            kwargs = {"prompt": part, "device": self.device, "num_images_per_prompt": 1, "prompt_2": None, "prompt_3": None,
                      "do_classifier_free_guidance": self.guided, "clean_caption": False}  # clean_caption needs bs4, ftfy
            if negative_prompt and self.guided:
                kwargs["negative_prompt"] = [negative_prompt] * len(part)
            outputs = self.pipe.encode_prompt(**{k: v for k, v in kwargs.items() if k in accepts})
            for name, value in zip(self.family.embeddings, outputs):
                if name is not None and value is not None and (self.guided or "negative" not in name):
                    parts.setdefault(name, []).append(value)
        self.embeds = {name: torch.cat(values) for name, values in parts.items()}
        self.prompt_index = {p: i for i, p in enumerate(prompts)}
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):  # their memory goes to the denoiser
            if getattr(self.pipe, name, None) is not None:
                setattr(self.pipe, name, None)

    @contextlib.contextmanager
    def cache_context(self):
        """Step caching (FirstBlockCache) starts every batch from an empty cache. (DiT's and PixArt's
        transformers lack diffusers' CacheMixin.cache_context, hence the hooks' own calls.)"""
        if self.cache == "none":
            yield
            return
        from diffusers.hooks.hooks import CacheContext, HookRegistry, _set_cache_context

        net = denoiser(self.pipe)
        HookRegistry.check_if_exists_or_initialize(net).reset_stateful_hooks()
        _set_cache_context(net, CacheContext("diffaug"))
        yield
        _set_cache_context(net, None)

    def call(self, seeds: list[int], prompts: list[str] | None, class_ids: list[int] | None = None,
             **extra) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images in [0, 1] (NCHW, on the device) and the final latents when seen."""
        final: dict[str, torch.Tensor] = {}

        def keep_latents(pipe, i, t, tensors):
            final["latents"] = tensors["latents"]
            return {}

        kwargs: dict = dict(extra, generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                            num_inference_steps=self.steps, guidance_scale=self.guidance_scale, output_type="pt",
                            height=self.resolution, width=self.resolution, **dict(self.family.call))
        if class_ids is not None:
            kwargs["class_labels"] = class_ids
        else:  # the embeddings stand for prompt and negative prompt (PixArt's default negative is "", not None);
            rows = [self.prompt_index[p] for p in prompts or []]  # rows joined on the device: no index tensor from the host
            kwargs.update({name: torch.stack([v[i] for i in rows]) for name, v in self.embeds.items()}, negative_prompt=None)
        if "callback_on_step_end" in self.accepts:
            kwargs.update(callback_on_step_end=keep_latents, callback_on_step_end_tensor_inputs=["latents"])
        # attention `auto`: PyTorch's own SDPA kernel choice per call
        kernels = contextlib.nullcontext() if self.attention == "auto" else sdpa_kernel([ATTENTION_BACKENDS[self.attention]])
        with kernels, self.cache_context():
            images = self.pipe(**{k: v for k, v in kwargs.items() if k in self.accepts}).images
        return images, final.get("latents")

    def safety_input(self, images_u8_cpu: torch.Tensor) -> torch.Tensor:
        """The checker's CLIP input: the pipeline's uint8 pixels through its own feature extractor."""
        return self.feature_extractor(list(images_u8_cpu), return_tensors="pt").pixel_values.to(self.device, self.checker.dtype)

    @torch.no_grad()
    def safety_flags(self, images_u8_cpu: torch.Tensor) -> list[bool]:
        # Images are only blacked out by the checker; we need its flags, so it gets a stand-in.
        _, flags = self.checker(images=torch.zeros(len(images_u8_cpu), 1), clip_input=self.safety_input(images_u8_cpu))
        return [bool(f) for f in flags]

    @torch.no_grad()
    def run_batch(self, seeds: list[int], prompts: list[str] | None, *, want_full: bool = False,
                  init_images: np.ndarray | None = None, strengths: list[float | None] | None = None,
                  class_ids: list[int] | None = None) -> BatchOutput:
        """Text-to-image, class-conditional (`class_ids`), or img2img from `init_images` (uint8 NHWC) at `strengths`."""
        n = len(seeds)
        if init_images is None:
            images, latents = self.call(seeds, prompts, class_ids)
            finite = finite_rows(images, latents)
        else:
            assert strengths is not None and prompts is not None and len(strengths) == len(init_images) == n
            real = torch.from_numpy(np.ascontiguousarray(init_images)).to(self.device).permute(0, 3, 1, 2)
            real = upsample(real, (self.resolution, self.resolution)).float() / 255
            images = torch.empty((n, 3, self.resolution, self.resolution), device=self.device)
            finite = torch.ones(n, dtype=torch.bool, device=self.device)
            for strength in dict.fromkeys(strengths):
                idx = [j for j, s in enumerate(strengths) if s == strength]
                part, latents = self.call([seeds[j] for j in idx], [prompts[j] for j in idx], image=real[idx],
                                          strength=strength)
                images[idx] = part.float()
                finite[idx] = finite_rows(part, latents)
        full = to_uint8(images)
        small = downsample(full, self.out_size).permute(0, 2, 3, 1)
        # The batch's first host sync: the small images and the finiteness flags in one copy.
        packed = torch.cat([small.reshape(-1), finite.to(torch.uint8)]).cpu().numpy()
        small_np, finite_np = packed[:-n].reshape(small.shape), packed[-n:].astype(bool)
        if not finite_np.all():  # garbage: no safety check, no full-size copy; the caller refuses it
            return BatchOutput(small=small_np, full=None, flagged=[False] * n, finite=finite_np)
        full_cpu = full.cpu() if (self.check_safety or want_full) else full
        flagged = self.safety_flags(full_cpu) if self.check_safety else [False] * n
        return BatchOutput(small=small_np, full=full_cpu.permute(0, 2, 3, 1).numpy() if want_full else None,
                           flagged=flagged, finite=finite_np)
