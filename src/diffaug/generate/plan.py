"""What a synthetic set is, and what making it costs (no torch).

Images are ordered by (class, index): g = c * images_per_class + i; shard k holds g in [k * S, (k + 1) * S)
(formats.synthetic.SetLayout). The settings hash covers everything that changes a shard's bytes (pixels,
prompts, seeds, layout, resolved diffusion settings, the family unless SD, whose sets predate families)
and nothing that only changes speed, so a faster batch size never throws finished work away.

Image i of class c: prompt `templates[i % len(templates)]` with {label} the class's word (a DiT set:
`class_ids[c][i % len]`), seed sha256("diffaug/v1|<diffusion seed>|<set>|<class>|<i>|<attempt>")[:8],
`attempt` counting safety-checker regenerations; plain diffusers reproduces it with
`pipe(prompt, generator=torch.Generator("cpu").manual_seed(seed))`. An `img2img` set's image g starts
from train.npz row `source_rows[g]` (per class every row in order, or the first N of a seeded
permutation, cycled) at `strengths[i % len]`, and runs only int(steps * strength) steps; reproduced by
`AutoPipelineForImage2Image.from_pipe(pipe)(prompt, image=<the upsampled source>, strength=s, generator=...)`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diffaug.cli import human_duration
from diffaug.config import Config, DiffusionConfig, Img2ImgSet
from diffaug.errors import ConfigError, UserError
from diffaug.formats.splits import Split
from diffaug.formats.synthetic import FORMAT, SetLayout
from diffaug.generate.families import FAMILIES, ModelInfo, resolve_defaults, settled
from diffaug.io import sha256_json

# How images are resized, and img2img's image enters the latent space (as diffusers' img2img pipelines
# do: x / 255 * 2 - 1, latent_dist SAMPLED with the image's generator, noise added); in the hash.
DOWNSAMPLE_METHOD = "uint8 -> torch bilinear antialias -> round"
UPSAMPLE_METHOD = "uint8 -> torch bicubic -> round, clamp"
IMG2IMG_METHOD = "diffusers img2img: vae latent_dist.sample(generator), scaling_factor, scheduler.add_noise, last int(steps*strength) steps"
SOURCE_SELECTION = "per class: train rows in order (images_per_class null) or sha256-seeded permutation, cycled"

# Every DiffusionConfig field is in exactly one of these (a test keeps it so when knobs are added).
# cache and fp8 are approximations: they change the images, so they are pixel settings.
PIXEL_SETTINGS = ("model", "revision", "variant", "dtype", "resolution", "guidance_scale", "steps",
                  "scheduler", "seed", "safety_checker", "max_regenerations", "fp8", "cache")
APPROXIMATE = ("fp8", "cache")
SPEED_SETTINGS = ("batch_size", "channels_last", "fuse_qkv", "compile", "compile_mode", "cuda_graphs", "attention",
                  "device", "allow_cpu", "cpu_offload")


def image_seed(diffusion_seed: int, set_name: str, class_name: str, index: int | str, attempt: int | None = 0) -> int:
    """A 64-bit seed (0 <= seed < 2**64, what torch.Generator.manual_seed accepts); see the module docstring.
    An img2img class's draw of source images is seeded by index "sources" and no attempt."""
    key = f"diffaug/v1|{diffusion_seed}|{set_name}|{class_name}|{index}" + ("" if attempt is None else f"|{attempt}")
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


@dataclass(frozen=True)
class Plan(SetLayout):
    """The set's layout plus what each image is: its prompt and its seed."""

    words: tuple[str, ...] = ()  # the prompt word of each class
    templates: tuple[str, ...] = ()
    negative_prompt: str | None = None
    diffusion: Any = field(default=None, compare=False, repr=False)  # the resolved DiffusionConfig
    class_ids: tuple[tuple[int, ...], ...] = ()  # class-conditional sets: ImageNet ids per class

    def class_id(self, g: int) -> int:
        c, i = self.class_and_index(g)
        return self.class_ids[c][i % len(self.class_ids[c])]

    def prompt(self, g: int) -> str:
        if self.class_ids:
            return f"imagenet class {self.class_id(g)}"
        c, i = self.class_and_index(g)
        return self.templates[i % len(self.templates)].format(label=self.words[c])

    def seed(self, g: int, attempt: int = 0) -> int:
        c, i = self.class_and_index(g)
        return image_seed(self.diffusion.seed, self.set_name, self.classes[c], i, attempt)

    @property
    def distinct_prompts(self) -> list[str]:
        """Every prompt of the set once, in a fixed order (so every process encodes the same batch)."""
        return [] if self.class_ids else list(dict.fromkeys(t.format(label=w) for w in self.words for t in self.templates))

    # --- img2img (empty / None for prompt sets)
    kind: str = "prompt"
    strengths: tuple[float, ...] = ()
    source_rows: tuple[int, ...] = ()  # per global index: its real source image's row in train.npz
    source_hashes: tuple[str, ...] = ()  # per global index: sha256 (16 hex) of that image's uint8 bytes
    source_images: Any = field(default=None, compare=False, repr=False)  # the train split's uint8 NHWC images

    def strength(self, g: int) -> float | None:
        return self.strengths[self.class_and_index(g)[1] % len(self.strengths)] if self.strengths else None

    def denoise_steps(self, g: int, steps: int) -> int:
        """All steps, or StableDiffusionImg2ImgPipeline's int(steps * strength)."""
        s = self.strength(g)
        return steps if s is None else min(int(steps * s), steps)

    def work_order(self, span: range) -> list[int]:
        """The order a shard's images are queued in: by index, or for img2img grouped by strength (one
        strength per batch where possible: images of one batch share the denoising timesteps)."""
        return sorted(span, key=lambda g: (self.strengths.index(self.strength(g)), g)) if self.strengths else list(span)

    def init_images(self, gs: list[int]) -> np.ndarray | None:
        return None if self.source_images is None else self.source_images[[self.source_rows[g] for g in gs]]

    def image_extras(self) -> list[dict[str, Any]] | None:
        """Per image, the manifest's record of an img2img image's real source."""
        if self.kind != "img2img":
            return None
        return [{"source_split": "train", "source_row": self.source_rows[g], "source_sha256": self.source_hashes[g],
                 "strength": self.strength(g)} for g in range(self.num_images)]


def _class_ids(cfg: Config, set_name: str, classes: list[str]) -> tuple[tuple[int, ...], ...]:
    ids, key = getattr(cfg.synthetic.sets[set_name], "class_ids", None) or {}, f"synthetic.sets.{set_name}.class_ids"
    for c in classes:
        if c not in ids:
            raise UserError(f"{key}.{c}: class {c!r} has no ImageNet id; a class-conditional model (DiT) needs one or "
                            f"more ids per dataset class, e.g. {key}: {{{c}: [404]}}")
    return tuple(tuple(ids[c]) if isinstance(ids[c], list) else (int(ids[c]),) for c in classes)


def build_plan(cfg: Config, set_name: str, classes: list[str], image_size: tuple[int, int],
               model_fingerprint: str | None, train: Split | None = None, train_sha256: str | None = None,
               info: ModelInfo | None = None) -> Plan:
    """An img2img set also needs the train split and its file's sha256; `info` (default: SD at 512²) gives the
    family and its defaults for null diffusion settings."""
    info = info or ModelInfo(FAMILIES["sd"], "StableDiffusionPipeline", 512, has_safety_checker=True)
    dif, family = resolve_defaults(cfg.diffusion, info), info.family.name
    spec, syn, key = cfg.synthetic.sets[set_name], cfg.synthetic, f"synthetic.sets.{set_name}"
    words = tuple(cfg.dataset.words(classes))
    settings: dict[str, Any] = {"format": FORMAT, "set": set_name, "classes": list(classes), "image_size": list(image_size),
                                "images_per_class": syn.images_per_class, "images_per_shard": syn.images_per_shard,
                                "prompts": {"templates": spec.templates, "words": dict(zip(classes, words)),
                                            "negative_prompt": spec.negative_prompt}}
    extra: dict[str, Any] = {}
    if isinstance(spec, Img2ImgSet):
        assert train is not None and train_sha256 is not None, "plan_set refuses an img2img set without --train"
        extra = _img2img_sources(spec, classes, image_size, train, set_name, dif, key)
        # The img2img layout (its keys in this order) predates families: its hashes stay as they were.
        settings = {"format": FORMAT, "set": set_name, "kind": "img2img", **{k: settings[k] for k in list(settings)[2:]},
                    "images_per_class": extra["images_per_class"],
                    "img2img": {"strength": spec.strengths, "images_per_class": spec.images_per_class,
                                "source_split": "train", "source_file": "train.npz", "source_sha256": train_sha256,
                                "selection": SOURCE_SELECTION, "upsample": UPSAMPLE_METHOD, "method": IMG2IMG_METHOD}}
    else:
        extra["class_ids"] = _class_ids(cfg, set_name, classes) if family == "dit" else ()
        if extra["class_ids"]:
            settings["prompts"] = {"class_ids": {c: list(ids) for c, ids in zip(classes, extra["class_ids"])}}
    values = dif.model_dump()
    # Approximate levers enter the hash only when on, and the family unless SD: sets made before either existed stay valid.
    pixels = {k: values[k] for k in PIXEL_SETTINGS if not (k in APPROXIMATE and values[k] in (0, False, "none"))}
    pixels.update({"family": family} if family != "sd" else {}, model_fingerprint=model_fingerprint)
    settings.update({"save_full_resolution": syn.save_full_resolution, "downsample": DOWNSAMPLE_METHOD, "diffusion": pixels})
    fields = {"images_per_class": syn.images_per_class, **extra}
    return Plan(set_name=set_name, classes=tuple(classes), image_size=(image_size[0], image_size[1]),
                images_per_shard=syn.images_per_shard, settings=settings, settings_hash=sha256_json(settings), words=words,
                templates=tuple(spec.templates), negative_prompt=spec.negative_prompt, diffusion=dif, **fields)


def _img2img_sources(spec: Img2ImgSet, classes: list[str], image_size: tuple[int, int], train: Split, set_name: str,
                     dif: DiffusionConfig, key: str) -> dict[str, Any]:
    """The Plan fields of an img2img set: which training image each image starts from, at what strength."""
    steps = settled(dif)[0]
    for s in spec.strengths:
        if int(steps * s) < 1:
            raise UserError(f"{key}.strength: got {s}: int(diffusion.steps * strength) = int({steps} * {s}) = 0 steps "
                            f"at this model's {steps} steps; allowed: a strength >= {1 / steps:.4g}")
    if list(train.classes) != list(classes):
        raise UserError(f"--train: its classes {train.classes} differ from classes.json's {classes}; rerun the prepare stage")
    if tuple(train.images.shape[1:3]) != tuple(image_size):
        raise UserError(f"--train: its images are {train.images.shape[1]}x{train.images.shape[2]}, classes.json says "
                        f"{image_size[0]}x{image_size[1]}; rerun the prepare stage")
    # Which training rows each class's images start from: all in order (images_per_class null, classes of
    # equal size), or the first N of a seeded permutation, cycled.
    per_class = [np.flatnonzero(train.labels == c) for c in range(len(classes))]
    counts = [len(r) for r in per_class]
    if min(counts) == 0:
        raise UserError(f"{key}: the training split has no image of class {classes[counts.index(0)]!r}; img2img needs one")
    n = spec.images_per_class
    if n is None and len(set(counts)) > 1:
        raise UserError(f"{key}.images_per_class: null takes every training image, but the classes have "
                        f"{min(counts)}..{max(counts)} images; set an integer (a class-balanced seeded draw)")
    if n is None:
        n, rows = counts[0], [int(r) for class_rows in per_class for r in class_rows]
    else:
        perms = [np.random.default_rng(image_seed(dif.seed, set_name, classes[c], "sources", None)).permutation(class_rows)
                 for c, class_rows in enumerate(per_class)]
        rows = [int(perm[i % len(perm)]) for perm in perms for i in range(n)]
    hashes = {r: hashlib.sha256(np.ascontiguousarray(train.images[r]).tobytes()).hexdigest()[:16] for r in set(rows)}
    return dict(images_per_class=n, kind="img2img", strengths=tuple(spec.strengths), source_rows=tuple(rows),
                source_hashes=tuple(hashes[r] for r in rows), source_images=train.images)


# The CPU guard's estimate: SD-v1.4's FLOPs at 512², 50 guided steps and one VAE decode, scaled to the
# run, at a generous 1 TFLOP/s for a many-core server CPU; img2img adds its VAE encode (about half the decode).
SD14_FLOP_PER_IMAGE, SD14_VAE_ENCODE_FLOP, CPU_FLOP_PER_S, CPU_SECONDS_ALLOWED = 82.8e12, 1.1e12, 1e12, 3600.0
# compile: auto compiles a CUDA run of at least this many images: compiling the denoiser (about 2 min
# cold, faster from the .cache/torchinductor cache) paid for itself after ~1,200 SD-v1.4 images on an
# H100 with the previous, hand-written sampler (3.10 -> 4.45 images/s at batch 32; the stock pipelines are unmeasured).
COMPILE_AUTO_IMAGES = 1200


def image_flops(dif: DiffusionConfig, denoise_steps: int | None = None, encode: bool = False) -> float:
    """FLOPs per image, scaled from SD-v1.4's by denoising steps run (default: all of dif.steps), pixels
    and guidance (a lower bound at > 512²); `encode` adds img2img's VAE encoding of the real image."""
    all_steps, guidance, resolution = settled(dif)
    steps = all_steps if denoise_steps is None else denoise_steps
    scale = (resolution / 512) ** 2
    flops = SD14_FLOP_PER_IMAGE * (steps / 50) * scale / (1 if guidance > 1 else 2)
    return flops + (SD14_VAE_ENCODE_FLOP * scale if encode else 0.0)


def steps_note(plan: Plan, images: list[int]) -> str:
    steps = settled(plan.diffusion)[0]
    if plan.kind != "img2img":
        return f"{steps} steps"
    runs = sorted({(plan.strength(g), plan.denoise_steps(g, steps)) for g in images})
    mean = sum(plan.denoise_steps(g, steps) for g in images) / max(len(images), 1)
    parts = ", ".join(f"{k} at strength {s:g}" for s, k in runs)
    return f"img2img: only strength x steps run, {parts} of {steps} steps (mean {mean:.3g})"


def check_cpu_cost(plan: Plan, device_type: str, images: list[int]) -> float:
    """The FLOPs to make `images`; a CPU run estimated at over an hour is refused (before the model loads)
    unless allow_cpu is set."""
    dif, n_images = plan.diffusion, len(images)
    total = sum(image_flops(dif, plan.denoise_steps(g, settled(dif)[0]), plan.kind == "img2img") for g in images)
    seconds = total / CPU_FLOP_PER_S
    if device_type == "cpu" and not dif.allow_cpu and seconds > CPU_SECONDS_ALLOWED:
        raise ConfigError(
            f"diffusion.allow_cpu: {n_images} images at {dif.resolution}² with {dif.steps} steps would take about "
            f"{human_duration(seconds)} on a CPU ({total / max(n_images, 1) / 1e12:.1f} TFLOP per image at <= 1 TFLOP/s); "
            "run on a GPU (diffusion.device: auto | cuda) or set diffusion.allow_cpu: true to force it")
    return total
