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

Kinds (synthetic.sets.<name>.kind): `prompt` sets are text-to-image from the class label (syn1,
syn2); their plan is exactly what it was before sets had kinds (same settings hash, same seeds).
`img2img` sets (SDEdit, Meng et al.; DA-Fusion, Trabucco et al.) start image g of class c from a real
training image, its row `source_rows[g]` of data/prepared/train.npz: per class, every training image
in row order (images_per_class: null) or the first N of a permutation seeded by (diffusion seed, set,
class) (repeating it when N exceeds the class), and strength `strengths[i % len(strengths)]` for
image index i. Only int(steps * strength) denoising steps run. The train split's sha256 is in the
settings hash: another split invalidates every shard. The seed of image g is `image_seed` as above,
and reproduces it in plain diffusers: `StableDiffusionImg2ImgPipeline(**pipe.components)(prompt,
image=<the upsampled source>, strength=s, generator=torch.Generator("cpu").manual_seed(seed))`.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diffaug.cli import human_duration
from diffaug.config import Config, DiffusionConfig, Img2ImgSet
from diffaug.errors import ConfigError, UserError
from diffaug.formats.splits import Split
from diffaug.formats.synthetic import FORMAT, SetLayout
from diffaug.io import sha256_json

# How a 512² image becomes a dataset-size one; part of the hash because it changes pixels.
DOWNSAMPLE_METHOD = "uint8 -> torch bilinear antialias -> round"
# img2img: how a real image becomes the generation-size one, and how it enters the latent space (as
# StableDiffusionImg2ImgPipeline does: x / 255 * 2 - 1, the VAE's latent_dist SAMPLED with the image's
# own generator, times scaling_factor, then noise from the same generator added at the first timestep).
UPSAMPLE_METHOD = "uint8 -> torch bicubic -> round, clamp"
IMG2IMG_METHOD = "diffusers img2img: vae latent_dist.sample(generator), scaling_factor, scheduler.add_noise, last int(steps*strength) steps"
SOURCE_SELECTION = "per class: train rows in order (images_per_class null) or sha256-seeded permutation, cycled"

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

    # --- img2img (empty / None for prompt sets)
    kind: str = "prompt"
    strengths: tuple[float, ...] = ()
    source_rows: tuple[int, ...] = ()  # per global index: its real source image's row in train.npz
    source_hashes: tuple[str, ...] = ()  # per global index: sha256 (16 hex) of that image's uint8 bytes
    source_images: Any = field(default=None, compare=False, repr=False)  # the train split's uint8 NHWC images

    def strength(self, g: int) -> float | None:
        if not self.strengths:
            return None
        return self.strengths[self.class_and_index(g)[1] % len(self.strengths)]

    def strengths_of(self, gs: list[int]) -> list[float]:
        """The strength of each of images gs (an img2img plan)."""
        return [self.strengths[self.class_and_index(g)[1] % len(self.strengths)] for g in gs]

    def denoise_steps(self, g: int, steps: int) -> int:
        """Denoising steps image g runs: all of them, or StableDiffusionImg2ImgPipeline's int(steps * strength)."""
        s = self.strength(g)
        return steps if s is None else min(int(steps * s), steps)

    def work_order(self, span: range) -> list[int]:
        """The order a shard's images are queued in: by index, or for img2img grouped by strength (one
        strength per batch where possible: images of one batch share the denoising timesteps)."""
        if not self.strengths:
            return list(span)
        return sorted(span, key=lambda g: (self.strengths.index(self.strength(g)), g))

    def init_images(self, gs: list[int]) -> np.ndarray | None:
        """The real source images (uint8 NHWC, dataset size) of images gs; None for a prompt set."""
        if self.source_images is None:
            return None
        return self.source_images[[self.source_rows[g] for g in gs]]

    def image_extras(self) -> list[dict[str, Any]] | None:
        """Per image, what the manifest adds to class/prompt/seed: an img2img image's real source."""
        if self.kind != "img2img":
            return None
        return [{"source_split": "train", "source_row": self.source_rows[g], "source_sha256": self.source_hashes[g],
                 "strength": self.strength(g)} for g in range(self.num_images)]


def _choose_sources(labels: np.ndarray, classes: list[str], spec: Img2ImgSet, set_name: str, diffusion_seed: int,
                    key: str) -> tuple[int, list[int]]:
    """(images per class, source row of every image in (class, index) order); see the module docstring."""
    per_class = [np.flatnonzero(labels == c) for c in range(len(classes))]
    counts = [len(rows) for rows in per_class]
    if min(counts) == 0:
        raise UserError(f"{key}: the training split has no image of class {classes[counts.index(0)]!r}; img2img needs one")
    if spec.images_per_class is None:
        if len(set(counts)) > 1:
            raise UserError(f"{key}.images_per_class: null takes every training image, but the classes have "
                            f"{min(counts)}..{max(counts)} images; set an integer (a class-balanced seeded draw)")
        return counts[0], [int(r) for rows in per_class for r in rows]
    n = spec.images_per_class
    rows_out: list[int] = []
    for c, rows in enumerate(per_class):
        seed = int.from_bytes(hashlib.sha256(f"diffaug/v1|{diffusion_seed}|{set_name}|{classes[c]}|sources".encode()).digest()[:8], "big")
        perm = np.random.default_rng(seed).permutation(rows)
        rows_out += [int(perm[i % len(perm)]) for i in range(n)]
    return n, rows_out


def diffusion_settings(dif: DiffusionConfig, model_fingerprint: str | None) -> dict[str, Any]:
    values = dataclasses.asdict(dif)
    settings = {k: values[k] for k in PIXEL_SETTINGS}
    # Approximate levers enter the hash only when on, so sets made before they existed stay valid.
    for key in ("deep_cache", "fp8"):
        if not settings[key]:
            del settings[key]
    settings["model_fingerprint"] = model_fingerprint
    return settings


def prompt_words(cfg: Config, classes: list[str]) -> tuple[str, ...]:
    """The word each class's prompts use: dataset.label_names' entry, else the name with '_' as spaces."""
    return tuple(cfg.dataset.label_names.get(c, c.replace("_", " ")) for c in classes)


def build_plan(cfg: Config, set_name: str, classes: list[str], image_size: tuple[int, int],
               model_fingerprint: str | None, train: Split | None = None, train_sha256: str | None = None) -> Plan:
    """The plan of set `set_name`; an img2img set also needs the train split and its file's sha256."""
    prompts = cfg.synthetic.sets[set_name]
    if isinstance(prompts, Img2ImgSet):
        if train is None or train_sha256 is None:
            raise UserError(f"{set_name}: an img2img set needs --train data/prepared/train.npz (its real source images)")
        return _img2img_plan(cfg, set_name, prompts, classes, image_size, model_fingerprint, train, train_sha256)
    words = prompt_words(cfg, classes)
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


def _img2img_plan(cfg: Config, set_name: str, spec: Img2ImgSet, classes: list[str], image_size: tuple[int, int],
                  model_fingerprint: str | None, train: Split, train_sha256: str) -> Plan:
    key = f"synthetic.sets.{set_name}"
    if list(train.classes) != list(classes):
        raise UserError(f"--train: its classes {train.classes} differ from classes.json's {classes}; rerun the prepare stage")
    if tuple(train.images.shape[1:3]) != tuple(image_size):
        raise UserError(f"--train: its images are {train.images.shape[1]}x{train.images.shape[2]}, classes.json says "
                        f"{image_size[0]}x{image_size[1]}; rerun the prepare stage")
    per_class, rows = _choose_sources(train.labels, classes, spec, set_name, cfg.diffusion.seed, key)
    words = prompt_words(cfg, classes)
    syn = cfg.synthetic
    settings = {
        "format": FORMAT,
        "set": set_name,
        "kind": "img2img",
        "classes": list(classes),
        "image_size": list(image_size),
        "images_per_class": per_class,
        "images_per_shard": syn.images_per_shard,
        "prompts": {"templates": spec.templates, "words": dict(zip(classes, words)), "negative_prompt": spec.negative_prompt},
        "img2img": {"strength": spec.strengths, "images_per_class": spec.images_per_class, "source_split": "train",
                    "source_file": "train.npz", "source_sha256": train_sha256, "selection": SOURCE_SELECTION,
                    "upsample": UPSAMPLE_METHOD, "method": IMG2IMG_METHOD},
        "save_full_resolution": syn.save_full_resolution,
        "downsample": DOWNSAMPLE_METHOD,
        "diffusion": diffusion_settings(cfg.diffusion, model_fingerprint),
    }
    hashes = {r: hashlib.sha256(np.ascontiguousarray(train.images[r]).tobytes()).hexdigest()[:16] for r in set(rows)}
    return Plan(
        set_name=set_name, classes=tuple(classes), image_size=(image_size[0], image_size[1]),
        images_per_class=per_class, images_per_shard=syn.images_per_shard,
        settings=settings, settings_hash=sha256_json(settings), words=words,
        templates=tuple(spec.templates), negative_prompt=spec.negative_prompt, diffusion_seed=cfg.diffusion.seed,
        kind="img2img", strengths=tuple(spec.strengths), source_rows=tuple(rows),
        source_hashes=tuple(hashes[r] for r in rows), source_images=train.images,
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


# img2img also encodes the real image once with the VAE encoder: an estimate (about half the decoder's
# 2.5 TFLOP at 512²), not measured.
SD14_VAE_ENCODE_FLOP = 1.1e12


def image_flops(dif: DiffusionConfig, denoise_steps: int | None = None, encode: bool = False) -> float:
    """FLOPs per image, scaled from SD-v1.4's by denoising steps run (default: all of dif.steps), pixels
    and guidance (a lower bound at > 512²); `encode` adds img2img's VAE encoding of the real image."""
    steps = dif.steps if denoise_steps is None else denoise_steps
    scale = (dif.resolution / 512) ** 2
    flops = SD14_FLOP_PER_IMAGE * (steps / 50) * scale
    flops = flops if dif.guidance_scale > 1 else flops / 2
    return flops + (SD14_VAE_ENCODE_FLOP * scale if encode else 0.0)


def plan_flops(plan: Plan, dif: DiffusionConfig, images: list[int]) -> float:
    """FLOPs to make `images` (global indices): an img2img image runs only int(steps * strength) steps."""
    encode = plan.kind == "img2img"
    return sum(image_flops(dif, plan.denoise_steps(g, dif.steps), encode) for g in images)


def steps_note(plan: Plan, dif: DiffusionConfig, images: list[int]) -> str:
    """What the cost line says about steps: `50 steps`, or img2img's strength x steps per image."""
    if plan.kind != "img2img":
        return f"{dif.steps} steps"
    runs = sorted({(plan.strength(g), plan.denoise_steps(g, dif.steps)) for g in images})
    mean = sum(plan.denoise_steps(g, dif.steps) for g in images) / max(len(images), 1)
    parts = ", ".join(f"{k} at strength {s:g}" for s, k in runs)
    return f"img2img: only strength x steps run, {parts} of {dif.steps} steps (mean {mean:.3g})"


def compile_pays_after(dif: DiffusionConfig, mode: str = "default") -> int:
    """Images after which compiling (time COMPILE_SECONDS[mode]) has paid for itself on an H100."""
    saved_per_image = image_flops(dif) / H100_EAGER_FLOP_PER_S - image_flops(dif) / H100_COMPILED_FLOP_PER_S
    return int(COMPILE_SECONDS[mode] / saved_per_image) + 1


def gpu_seconds(dif: DiffusionConfig, n_images: int, *, compiled: bool, mode: str = "default",
                flops: float | None = None) -> float:
    """Estimated wall time on one H100-class GPU, compile included; `flops` (plan_flops) when the images
    do not all run every step (img2img)."""
    total = n_images * image_flops(dif) if flops is None else flops
    if compiled:
        return COMPILE_SECONDS[mode] + total / H100_COMPILED_FLOP_PER_S
    return total / H100_EAGER_FLOP_PER_S


def check_cpu_cost(dif: DiffusionConfig, device_type: str, n_images: int, flops: float | None = None) -> None:
    """Refuse (before the model loads) a CPU run estimated at over an hour, unless allow_cpu is set."""
    if device_type != "cpu" or dif.allow_cpu:
        return
    total = n_images * image_flops(dif) if flops is None else flops
    seconds = total / CPU_FLOP_PER_S
    if seconds > CPU_SECONDS_ALLOWED:
        raise ConfigError(
            f"diffusion.allow_cpu: {n_images} images at {dif.resolution}² with {dif.steps} steps would take about "
            f"{human_duration(seconds)} on a CPU ({total / max(n_images, 1) / 1e12:.1f} TFLOP per image at <= 1 TFLOP/s); "
            "run on a GPU (diffusion.device: auto | cuda) or set diffusion.allow_cpu: true to force it")
