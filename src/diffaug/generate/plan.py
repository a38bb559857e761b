"""What a synthetic set is, and what making it costs (no torch).

Images are ordered by (class, index): global index g = c * images_per_class + i, and shard k holds
g in [k * S, (k + 1) * S) with S = synthetic.images_per_shard (formats.synthetic.SetLayout). The
settings hash covers everything that changes the bytes of a shard (pixels, prompts, seeds, layout)
and nothing that only changes speed, so a faster batch size never throws finished work away.

Per-image seeds are a pure function of what the image is, never of how the work was scheduled:
image `index` of class `class_name` in set `set_name` gets the first 8 bytes of
sha256("diffaug/v1|<diffusion seed>|<set>|<class>|<index>|<attempt>"), `attempt` counting
safety-checker regenerations (0 for the first try). A seed reproduces its image in plain diffusers:
`pipe(prompt, generator=torch.Generator("cpu").manual_seed(seed))`.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

from diffaug.config import Config, DiffusionConfig
from diffaug.errors import ConfigError
from diffaug.formats.synthetic import FORMAT, SetLayout
from diffaug.io import sha256_json

# How a 512² image becomes a dataset-size one; part of the hash because it changes pixels.
DOWNSAMPLE_METHOD = "uint8 -> torch bilinear antialias -> round"

# Every DiffusionConfig field is in exactly one of these (a test keeps it so when knobs are added).
# deep_cache and fp8 are approximations: they change the images, so they are pixel settings.
PIXEL_SETTINGS = ("model", "revision", "variant", "dtype", "resolution", "guidance_scale", "steps",
                  "scheduler", "seed", "safety_checker", "max_regenerations", "deep_cache", "fp8")
SPEED_SETTINGS = ("batch_size", "channels_last", "fuse_qkv", "compile", "compile_mode", "cuda_graphs", "attention",
                  "device", "allow_cpu")


def image_seed(diffusion_seed: int, set_name: str, class_name: str, index: int, attempt: int = 0) -> int:
    """A 64-bit seed (0 <= seed < 2**64, what torch.Generator.manual_seed accepts); see the module docstring."""
    key = f"diffaug/v1|{diffusion_seed}|{set_name}|{class_name}|{index}|{attempt}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


@dataclass(frozen=True)
class Plan(SetLayout):
    """The set's layout plus what each image is: its prompt and its seed."""

    words: tuple[str, ...] = ()  # the prompt word of each class
    templates: tuple[str, ...] = ()
    negative_prompt: str | None = None
    diffusion_seed: int = 0

    def prompt(self, g: int) -> str:
        c, i = self.class_and_index(g)
        return self.templates[i % len(self.templates)].format(label=self.words[c])

    @property
    def prompts(self) -> list[str]:
        """The prompt of every image, by global index."""
        return [self.prompt(g) for g in range(self.num_images)]

    def seed(self, g: int, attempt: int = 0) -> int:
        c, i = self.class_and_index(g)
        return image_seed(self.diffusion_seed, self.set_name, self.classes[c], i, attempt)

    @property
    def distinct_prompts(self) -> list[str]:
        """Every prompt of the set once, in a fixed order (so every process encodes the same batch)."""
        seen = dict.fromkeys(t.format(label=w) for w in self.words for t in self.templates)
        return list(seen)


def diffusion_settings(dif: DiffusionConfig, model_fingerprint: str | None) -> dict[str, Any]:
    values = dataclasses.asdict(dif)
    settings = {k: values[k] for k in PIXEL_SETTINGS}
    # Approximate levers enter the hash only when on, so sets made before they existed stay valid.
    for key in ("deep_cache", "fp8"):
        if not settings[key]:
            del settings[key]
    settings["model_fingerprint"] = model_fingerprint
    return settings


def build_plan(cfg: Config, set_name: str, classes: list[str], image_size: tuple[int, int],
               model_fingerprint: str | None) -> Plan:
    prompts = cfg.synthetic.prompt_set(set_name)
    words = tuple(cfg.dataset.label_names.get(c, c.replace("_", " ")) for c in classes)
    syn = cfg.synthetic
    settings = {
        "format": FORMAT,
        "set": set_name,
        "classes": list(classes),
        "image_size": list(image_size),
        "images_per_class": syn.images_per_class,
        "images_per_shard": syn.images_per_shard,
        "prompts": {"templates": prompts.templates, "words": dict(zip(classes, words)),
                    "negative_prompt": prompts.negative_prompt},
        "save_full_resolution": syn.save_full_resolution,
        "downsample": DOWNSAMPLE_METHOD,
        "diffusion": diffusion_settings(cfg.diffusion, model_fingerprint),
    }
    return Plan(
        set_name=set_name, classes=tuple(classes), image_size=(image_size[0], image_size[1]),
        images_per_class=syn.images_per_class, images_per_shard=syn.images_per_shard,
        settings=settings, settings_hash=sha256_json(settings), words=words,
        templates=tuple(prompts.templates), negative_prompt=prompts.negative_prompt, diffusion_seed=cfg.diffusion.seed,
    )


# ----------------------------------------------------------------------------- cost of a plan
# SD-v1.4 at 512², 50 steps, classifier-free guidance (two UNet passes per step) plus one VAE decode.
SD14_FLOP_PER_IMAGE = 82.8e12
# A generous sustained float32 rate for a many-core server CPU on these convolutions and attentions.
CPU_FLOP_PER_S = 1e12
CPU_SECONDS_ALLOWED = 3600.0
# Measured on one H100 (issue 10: SD-v1.4 architecture, fp16, batch 32, torch 2.11, diffusers 0.42.1):
# 3.10 images/s eager and 4.45 compiled at 82.8 TFLOP per image, i.e. these whole-pipeline rates.
H100_EAGER_FLOP_PER_S = 82.8e12 * 3.10
H100_COMPILED_FLOP_PER_S = 82.8e12 * 4.45
# A cold inductor compile of the UNet and VAE decoder (default mode); an estimate, not yet measured
# by benchmarks/generate.py --sweep (which reports it). A warm cache (.cache/torchinductor) is faster.
COMPILE_SECONDS = {"default": 120.0, "reduce-overhead": 150.0, "max-autotune-no-cudagraphs": 600.0, "max-autotune": 660.0}


def image_flops(dif: DiffusionConfig) -> float:
    """FLOPs per image, scaled from SD-v1.4's by steps, pixels and guidance (a lower bound at > 512²)."""
    flops = SD14_FLOP_PER_IMAGE * (dif.steps / 50) * (dif.resolution / 512) ** 2
    return flops if dif.guidance_scale > 1 else flops / 2


def compile_pays_after(dif: DiffusionConfig, mode: str = "default") -> int:
    """Images after which compiling (time COMPILE_SECONDS[mode]) has paid for itself on an H100."""
    saved_per_image = image_flops(dif) / H100_EAGER_FLOP_PER_S - image_flops(dif) / H100_COMPILED_FLOP_PER_S
    return int(COMPILE_SECONDS[mode] / saved_per_image) + 1


def gpu_seconds(dif: DiffusionConfig, n_images: int, *, compiled: bool, mode: str = "default") -> float:
    """Estimated wall time on one H100-class GPU, compile included."""
    if compiled:
        return COMPILE_SECONDS[mode] + n_images * image_flops(dif) / H100_COMPILED_FLOP_PER_S
    return n_images * image_flops(dif) / H100_EAGER_FLOP_PER_S


def human_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def check_cpu_cost(dif: DiffusionConfig, device_type: str, n_images: int) -> None:
    """Refuse (before the model loads) a CPU run estimated at over an hour, unless allow_cpu is set."""
    if device_type != "cpu" or dif.allow_cpu:
        return
    seconds = n_images * image_flops(dif) / CPU_FLOP_PER_S
    if seconds > CPU_SECONDS_ALLOWED:
        raise ConfigError(
            f"diffusion.allow_cpu: {n_images} images at {dif.resolution}² with {dif.steps} steps would take about "
            f"{human_duration(seconds)} on a CPU ({image_flops(dif) / 1e12:.1f} TFLOP per image at <= 1 TFLOP/s); "
            "run on a GPU (diffusion.device: auto | cuda) or set diffusion.allow_cpu: true to force it")
