"""What a synthetic set is: its images, prompts, seeds, shard layout and settings hash (no torch).

Images are ordered by (class, index): global index g = c * images_per_class + i, and shard k holds
g in [k * S, (k + 1) * S) with S = synthetic.images_per_shard. The settings hash covers everything
that changes the bytes of a shard (pixels, prompts, seeds, layout) and nothing that only changes
speed, so a faster batch size never throws finished work away.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from diffaug.config import Config, DiffusionConfig
from diffaug.errors import UserError
from diffaug.generate.seeds import image_seed
from diffaug.io import read_json, sha256_json

FORMAT = "diffaug-synthetic/1"
# How a 512² image becomes a dataset-size one; part of the hash because it changes pixels.
DOWNSAMPLE_METHOD = "uint8 -> torch bilinear antialias -> round"

# Every DiffusionConfig field is in exactly one of these (a test keeps it so when knobs are added).
PIXEL_SETTINGS = ("model", "revision", "variant", "dtype", "resolution", "guidance_scale", "steps",
                  "scheduler", "seed", "safety_checker", "max_regenerations")
SPEED_SETTINGS = ("batch_size", "channels_last", "fuse_qkv", "compile", "device", "allow_cpu")


def read_classes(path: str | Path) -> tuple[list[str], tuple[int, int]]:
    """classes.json from the prepare stage: {"classes": [...], "image_size": [H, W]}."""
    path = Path(path)
    data = read_json(path, "file not found; run the prepare stage first (dvc repro prepare)")
    classes = data.get("classes") if isinstance(data, dict) else None
    size = data.get("image_size") if isinstance(data, dict) else None
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) and c.strip() for c in classes)):
        raise UserError(f"{path}: 'classes' must be a non-empty list of non-empty class names")
    if len(set(classes)) != len(classes):
        raise UserError(f"{path}: 'classes' lists a class twice")
    if not (isinstance(size, list) and len(size) == 2 and all(type(v) is int and v > 0 for v in size)):
        raise UserError(f"{path}: 'image_size' must be [height, width] in pixels, got {size!r}")
    return classes, (size[0], size[1])


@dataclass(frozen=True)
class Plan:
    set_name: str
    classes: tuple[str, ...]
    image_size: tuple[int, int]  # (H, W) of the stored images
    images_per_class: int
    images_per_shard: int
    words: tuple[str, ...]  # the prompt word of each class
    templates: tuple[str, ...]
    negative_prompt: Optional[str]
    diffusion_seed: int
    settings: dict[str, Any]
    settings_hash: str

    @property
    def num_images(self) -> int:
        return len(self.classes) * self.images_per_class

    @property
    def num_shards(self) -> int:
        return -(-self.num_images // self.images_per_shard)

    def shard_range(self, k: int) -> range:
        return range(k * self.images_per_shard, min((k + 1) * self.images_per_shard, self.num_images))

    def class_and_index(self, g: int) -> tuple[int, int]:
        return divmod(g, self.images_per_class)

    def prompt(self, g: int) -> str:
        c, i = self.class_and_index(g)
        return self.templates[i % len(self.templates)].format(label=self.words[c])

    def seed(self, g: int, attempt: int = 0) -> int:
        c, i = self.class_and_index(g)
        return image_seed(self.diffusion_seed, self.set_name, self.classes[c], i, attempt)

    @property
    def distinct_prompts(self) -> list[str]:
        """Every prompt of the set once, in a fixed order (so every process encodes the same batch)."""
        seen = dict.fromkeys(t.format(label=w) for w in self.words for t in self.templates)
        return list(seen)


def diffusion_settings(dif: DiffusionConfig, model_fingerprint: Optional[str]) -> dict[str, Any]:
    values = dataclasses.asdict(dif)
    settings = {k: values[k] for k in PIXEL_SETTINGS}
    settings["model_fingerprint"] = model_fingerprint
    return settings


def build_plan(cfg: Config, set_name: str, classes: list[str], image_size: tuple[int, int],
               model_fingerprint: Optional[str]) -> Plan:
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
        set_name=set_name, classes=tuple(classes), image_size=tuple(image_size),
        images_per_class=syn.images_per_class, images_per_shard=syn.images_per_shard, words=words,
        templates=tuple(prompts.templates), negative_prompt=prompts.negative_prompt,
        diffusion_seed=cfg.diffusion.seed, settings=settings, settings_hash=sha256_json(settings),
    )
