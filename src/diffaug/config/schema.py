"""The params.yaml schema: one frozen pydantic dataclass per section; defaults are the paper's settings.

A rule on one value sits in its type (a `Rule`), a rule across fields in the section's `model_validator`,
a rule across sections in Config's. A broken rule raises `Invalid(message, key)`, `key` naming the part
below the validated value ('' the value itself).
"""
from __future__ import annotations

import string
from collections.abc import Callable
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Discriminator, Field, StrictBool, StrictFloat, StrictInt, StrictStr, Tag, model_validator
from pydantic.dataclasses import dataclass
from pydantic_core import core_schema

ARCHITECTURES = ("resnet18", "resnet34", "resnet50", "vgg16", "densenet121")
# The real training images (orig, and its rot90 / vflip copies); every other source is a set declared under synthetic.sets.
REAL_SOURCES = ("orig", "rot90", "vflip")
# The paper's sources in the order of their codes in mixture files (formats.mixture): fixed, so that declaring a set changes no file.
PAPER_SOURCES = REAL_SOURCES + ("syn1", "syn2")
PAPER_PROMPT_SETS = ("syn1", "syn2")  # the paper's sets, each with a dvc.yaml stage of its own
SET_KINDS = ("prompt", "img2img")
SCHEDULERS = ("default", "pndm", "ddim", "dpmsolver++", "euler")
FILTER_BY = ("confidence", "clip")
SEED_MAX = 2**32 - 1  # what numpy's and torch's generators both accept, the same rule for every seed
SECTION = ConfigDict(extra="forbid", allow_inf_nan=False)
__all__ = ["ARCHITECTURES", "PAPER_SOURCES", "REAL_SOURCES", "SCHEDULERS", "SET_KINDS", "Config", "DatasetConfig", "DiffusionConfig",
           "EvaluateConfig", "Img2ImgSet", "Invalid", "MixtureFilter", "PromptSet", "Recipe", "SyntheticConfig", "SyntheticSet", "TrainConfig"]


class Invalid(ValueError):
    """A broken rule: `key` is where, below the value being validated ('' = the value itself)."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


def need(ok: bool, message: str, key: str = "") -> None:
    if not ok:
        raise Invalid(message, key)


class Rule:
    """Annotated metadata: a value must pass `ok`, else 'got <value>; allowed: <allowed>'; `json_schema` tells editors the same."""

    def __init__(self, allowed: str, ok: Callable[[Any], bool], **json_schema: Any) -> None:
        self.allowed, self.ok, self.json_schema = allowed, ok, json_schema

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        check = lambda v: v if self.ok(v) else need(False, f"got {v!r}; allowed: {self.allowed}")
        return core_schema.no_info_after_validator_function(check, handler(source))

    def __get_pydantic_json_schema__(self, schema: Any, handler: Any) -> dict[str, Any]:
        return {**handler(schema), **self.json_schema}


Int = StrictInt
Float = StrictFloat
Str = StrictStr
Bool = StrictBool
Count = Annotated[Int, Rule("an integer >= 1", lambda v: v >= 1, minimum=1)]
NonNegativeInt = Annotated[Int, Rule("an integer >= 0", lambda v: v >= 0, minimum=0)]
Seed = Annotated[Int, Rule(f"an integer seed in 0..{SEED_MAX}", lambda v: 0 <= v <= SEED_MAX, minimum=0, maximum=SEED_MAX)]
NonNegative = Annotated[Float, Rule("a number >= 0", lambda v: v >= 0, minimum=0)]
Below1 = Annotated[Float, Rule("a number in [0, 1)", lambda v: 0 <= v < 1, minimum=0, exclusiveMaximum=1)]
NonEmpty = Rule("a non-empty prompt word", lambda v: v.strip() != "", minLength=1)
Device = Annotated[Str, Rule("auto | cpu | cuda | cuda:N", lambda v: v in ("auto", "cpu", "cuda") or (v[:5] == "cuda:" and v[5:].isdigit()),
                             pattern=r"^(auto|cpu|cuda|cuda:\d+)$")]


def _templates(value: str | list[str]) -> str | list[str]:
    need(value != [], "empty list; allowed: a template or a non-empty list of templates")
    for t in [value] if isinstance(value, str) else value:
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(t) if f is not None}
        except ValueError as e:
            raise Invalid(f"{t!r} is not a valid template ({e})") from None
        need(fields == {"label"}, f"{t!r} must contain {{label}} and no other {{field}}; e.g. 'a photo of a {{label}}'")
    return value


def _strengths(value: float | list[float]) -> float | list[float]:
    need(value != [], "empty list; allowed: a number in (0, 1] or a non-empty list of them")
    for s in value if isinstance(value, list) else [value]:
        need(0.0 < s <= 1.0, f"got {s}; allowed: a number in (0, 1] (the share of the steps run from the noised real image; 1 = from pure noise)")
    return value


def _imagenet_ids(ids: int | list[int]) -> bool:
    return ids != [] and all(0 <= v < 1000 for v in (ids if isinstance(ids, list) else [ids]))


Templates = Annotated[Str | list[Str], AfterValidator(_templates)]


class _Prompted:
    prompt: str | list[str]

    @property
    def templates(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


# ----------------------------------------------------------------------------- sections
@dataclass(frozen=True, config=SECTION)
class DatasetConfig:
    name: Str = "cifar10"  # cifar10 | cifar100 | npz:<path> | imagefolder:<path>
    test: Str | None = None  # npz:<path> | imagefolder:<path>, with an npz/imagefolder dataset
    test_per_class: Count = 100
    val_per_class: NonNegativeInt = 0
    split_seed: Seed = 0
    label_names: dict[Str, Annotated[Str, NonEmpty]] = Field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.name.split(":", 1)[0]

    @property
    def path(self) -> str | None:
        return self.name.split(":", 1)[1] if ":" in self.name else None

    @model_validator(mode="after")
    def _sources(self) -> DatasetConfig:
        need(self.kind in ("cifar10", "cifar100", "npz", "imagefolder") and (self.kind in ("cifar10", "cifar100")) == (self.path is None),
             f"got {self.name!r}; allowed: cifar10 | cifar100 | npz:<path> | imagefolder:<path>", "name")
        need(self.path != "", "the path after the colon is empty", "name")
        need(self.test is None or (self.test.split(":", 1)[0] in ("npz", "imagefolder") and ":" in self.test and self.path is not None),
             f"got {self.test!r}; allowed: null, or npz:<path> | imagefolder:<path> with an npz/imagefolder dataset", "test")
        return self


@dataclass(frozen=True, config=SECTION)
class PromptSet(_Prompted):
    """`kind: prompt`: text-to-image from the class label alone (Paulsen et al.'s syn1 and syn2)."""

    kind: Literal["prompt"] = "prompt"
    prompt: Templates = "{label}"  # a template or a list of templates, cycled per image
    negative_prompt: Str | None = None
    # Class-conditional models (DiT) take ImageNet ids, not prompts: class -> one id or a list, cycled per image like the templates.
    class_ids: dict[Str, Annotated[Int | list[Int], Rule("an ImageNet class id in 0..999 or a non-empty list of them", _imagenet_ids)]] | None = None


@dataclass(frozen=True, config=ConfigDict(extra="forbid", allow_inf_nan=False, json_schema_extra={"required": ["kind"]}))
class Img2ImgSet(_Prompted):
    """`kind: img2img`: SDEdit / DA-Fusion-style image-to-image from each real training image (or a
    seeded class-balanced subset), noised to `strength` and denoised for int(steps * strength) steps."""

    kind: Literal["img2img"] = "img2img"
    strength: Annotated[Float | list[Float], AfterValidator(_strengths)] = 0.5  # in (0, 1]; a list is cycled by image index
    prompt: Templates = "a photo of a {label}"
    negative_prompt: Str | None = None
    # null: one image per real training image (classes must be balanced)
    images_per_class: Annotated[Int | None, Rule("null (every real training image) or an integer >= 1", lambda v: v is None or v >= 1, minimum=1)] = None

    @property
    def strengths(self) -> list[float]:
        return list(self.strength) if isinstance(self.strength, list) else [float(self.strength)]


# chosen by `kind`, prompt when absent
SyntheticSet = Annotated[Annotated[PromptSet, Tag("prompt")] | Annotated[Img2ImgSet, Tag("img2img")],
                         Discriminator(lambda v: v.get("kind", "prompt") if isinstance(v, dict) else getattr(v, "kind", None))]


def _set_names(sets: dict[str, Any]) -> dict[str, Any]:
    for name in sets:
        need(name.replace("_", "").replace("-", "").isalnum(), "a set name may hold only letters, digits, '_' and '-'", name)
        need(name not in REAL_SOURCES and name != "filter", f"{name!r} is a reserved source name; allowed: any other name", name)
    return sets


@dataclass(frozen=True, config=SECTION)
class SyntheticConfig:
    images_per_class: Count = 5000  # of every prompt set (an img2img set has its own)
    images_per_shard: Count = 1000
    save_full_resolution: Bool = False
    sets: Annotated[dict[Str, SyntheticSet], AfterValidator(_set_names)] = Field(  # name -> kind and settings
        default_factory=lambda: dict[str, PromptSet | Img2ImgSet](syn1=PromptSet(prompt="{label}"), syn2=PromptSet(prompt="a photo of a {label}")))


@dataclass(frozen=True, config=SECTION)
class DiffusionConfig:
    model: Annotated[Str, Rule("a hub id or a local directory", lambda v: v.strip() != "", minLength=1)] = "CompVis/stable-diffusion-v1-4"
    revision: Str | None = None
    variant: Str | None = "fp16"
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    # null: the model family's default (generate/families.py); params.yaml sets the paper's 512, 7.5, 50.
    resolution: Annotated[Int | None, Rule("a multiple of 8, at least 64 (the paper: 512)", lambda v: v is None or (v >= 64 and v % 8 == 0),
                                           minimum=64, multipleOf=8)] = None
    guidance_scale: Annotated[Float | None, Rule("a number >= 0", lambda v: v is None or v >= 0, minimum=0)] = None
    steps: Annotated[Int | None, Rule("an integer >= 1", lambda v: v is None or v >= 1, minimum=1)] = None
    scheduler: Literal[SCHEDULERS] = "default"  # type: ignore[valid-type]
    seed: Seed = 0
    safety_checker: Bool = True
    max_regenerations: NonNegativeInt = 10
    # Approximate levers (change the images; in the settings hash): off unless asked for.
    cache: Literal["none", "first_block"] = "none"  # diffusers' FirstBlockCache on transformer families
    fp8: Bool = False  # float8 matmuls in the denoiser (torchao, CUDA sm89+)
    # Speed levers (never change which images are meant; see generate/model.py).
    batch_size: Annotated[Int | Literal["auto"], Rule("auto or an integer >= 1", lambda v: v == "auto" or v >= 1)] = "auto"
    cpu_offload: Bool = False  # enable_model_cpu_offload(): for GPUs too small for the whole model
    channels_last: Bool = False
    fuse_qkv: Bool = True
    compile: Bool | Literal["auto"] = "auto"
    compile_mode: Literal["default", "max-autotune-no-cudagraphs", "max-autotune"] = "default"
    cuda_graphs: Bool = False
    attention: Literal["auto", "flash", "efficient", "cudnn", "math"] = "auto"
    device: Device = "auto"
    allow_cpu: Bool = False


@dataclass(frozen=True, config=SECTION)
class Recipe:
    epochs: Count = 250
    batch_size: Count = 128
    lr: Annotated[Float, Rule("a number > 0", lambda v: v > 0, exclusiveMinimum=0)] = 0.1
    momentum: Below1 = 0.9
    nesterov: Bool = True
    weight_decay: NonNegative = 5e-4
    schedule: Literal["constant", "cosine", "paper_cyclic"] = "cosine"
    warmup_epochs: NonNegativeInt = 0
    label_smoothing: Below1 = 0.0
    crop_padding: NonNegativeInt = 4
    hflip: Bool = True
    # Levers, all off by default (the paper's behaviour); each applies identically to real and synthetic images.
    pad_last_batch: Bool = False    # pad the last partial batch with zero-weight samples: one static shape
    cutout: NonNegativeInt = 0          # side of a square cut out of every training image, in pixels (0: off)
    trivial_augment: Bool = False   # TrivialAugmentWide (torchvision.transforms.v2) on the device
    ema_decay: Below1 = 0.0          # EMA of the weights, per step (0: off); the EMA weights are the result
    tta_hflip: Bool = False         # evaluation averages the logits of each image and its mirror image

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        need(self.warmup_epochs < self.epochs, f"got {self.warmup_epochs}; allowed: 0 <= warmup_epochs < epochs", "warmup_epochs")
        need(self.schedule != "paper_cyclic" or self.warmup_epochs == 0,
             f"got {self.warmup_epochs}; allowed: 0 with schedule paper_cyclic (the paper's schedule has no warm-up)", "warmup_epochs")
        need(not self.nesterov or self.momentum > 0, "Nesterov momentum needs momentum > 0", "nesterov")
        return self


def _distinct(seeds: list[int]) -> list[int]:
    need(len(seeds) >= 1 and len(set(seeds)) == len(seeds), "allowed: a non-empty list of distinct integers")
    return seeds


@dataclass(frozen=True, config=SECTION)
class TrainConfig:
    recipe: Str = "default"  # a key of recipes
    variant: Literal["cifar", "paper"] = "cifar"
    seeds: Annotated[list[Seed], AfterValidator(_distinct)] = Field(default_factory=lambda: [0])
    precision: Literal["bf16", "fp32"] = "bf16"
    channels_last: Bool = True
    compile: Bool = False
    cuda_graph: Bool = True         # capture the whole training step in one CUDA graph (CUDA only)
    checkpoint_every: Count = 10
    device: Device = "auto"
    recipes: dict[Str, Recipe] = Field(default_factory=lambda: {"default": Recipe()})

    @property
    def active(self) -> Recipe:
        return self.recipes[self.recipe]

    @model_validator(mode="after")
    def _known_recipe(self) -> TrainConfig:
        need(self.recipe in self.recipes, f"got {self.recipe!r}; allowed: {', '.join(self.recipes) or 'a key of train.recipes'}", "recipe")
        return self


@dataclass(frozen=True, config=SECTION)
class EvaluateConfig:
    batch_size: Count = 1000
    device: Device = "auto"


@dataclass(frozen=True, config=SECTION)
class MixtureFilter:
    """`mixtures.<name>.filter`: drop the synthetic images of a mixture's draw that the orig100 classifier
    (first seed) finds implausible (ALIA: its confidence; He et al.: CLIP image-text similarity).
    Exactly one of `threshold` (keep scores >= it) or `keep_fraction` (the best-scored share, per class)."""

    by: Literal[FILTER_BY] = "confidence"  # type: ignore[valid-type]
    threshold: Float | None = None
    keep_fraction: Annotated[Float | None, Rule("a number in (0, 1]", lambda v: v is None or 0 < v <= 1, exclusiveMinimum=0, maximum=1)] = None

    @model_validator(mode="after")
    def _one_rule(self) -> MixtureFilter:
        need((self.threshold is None) != (self.keep_fraction is None),
             "set exactly one of threshold (keep scores >= it) or keep_fraction (the best-scored share per class)")
        low, what = (0.0, "probability") if self.by == "confidence" else (-1.0, "cosine similarity")
        need(self.threshold is None or low <= self.threshold <= 1.0, f"got {self.threshold}; allowed: a number in [{low:g}, 1] (a {what})", "threshold")
        return self


def _unique(listed: list[str], key: str, what: str) -> None:
    need(len(set(listed)) == len(listed), f"lists {what} twice", key)


@dataclass(frozen=True, config=SECTION)
class Config:
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    mixture_seed: Seed = 0
    # name -> {source: fraction}, and optionally `filter:` (a MixtureFilter); `mixtures` and `filters` split them
    specs: dict[Str, dict[Str, Float | MixtureFilter]] = Field(default_factory=dict, alias="mixtures")
    model: Literal[ARCHITECTURES] = "resnet18"  # type: ignore[valid-type]
    mixes: list[Str] = Field(default_factory=list)  # what dvc.yaml's train@ trains; absent: every mixture without a filter
    img2img_sets: list[Str] = Field(default_factory=list)  # dvc.yaml's generate_img2img@<set> matrix: every img2img set
    prompt_sets: list[Str] = Field(default_factory=list)  # dvc.yaml's generate_prompt@<set> matrix: prompt sets beyond syn1, syn2
    filtered_mixes: list[Str] = Field(default_factory=list)  # mixtures with a filter: trained after their classifier
    real_curve: list[Str] = Field(default_factory=list)  # real-only mixes, accuracy vs real images: the exchange rate
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)

    @cached_property
    def mixtures(self) -> dict[str, dict[str, float]]:
        return {m: {s: v for s, v in spec.items() if not isinstance(v, MixtureFilter)} for m, spec in self.specs.items()}

    @cached_property
    def filters(self) -> dict[str, MixtureFilter]:  # the mixtures that carry a `filter:`, and their filters
        return {m: f for m, spec in self.specs.items() if isinstance(f := spec.get("filter"), MixtureFilter)}

    @property
    def trained_mixes(self) -> list[str]:  # every cell's mixture: `mixes`, then `filtered_mixes` (trained by train_filtered@)
        return list(self.mixes) + [m for m in self.filtered_mixes if m not in self.mixes]

    @property
    def synthetic_sets(self) -> tuple[str, ...]:  # every declared synthetic set, in params.yaml's order
        return tuple(self.synthetic.sets)

    @property
    def sources(self) -> tuple[str, ...]:  # what a mixture may draw from: the real images, their copies, every declared set
        return REAL_SOURCES + self.synthetic_sets

    def is_synthetic(self, source: str) -> bool:
        return source in self.synthetic.sets

    @property
    def synthetic_sets_used(self) -> list[str]:  # the sets that some trained mixture draws from, in declaration order
        used = {s for m in self.trained_mixes for s in self.mixtures[m]}
        return [s for s in self.synthetic_sets if s in used]

    @model_validator(mode="before")
    @classmethod
    def _every_mixture_by_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and "mixes" not in data and isinstance(data.get("mixtures"), dict):
            return {**data, "mixes": [m for m, s in data["mixtures"].items() if not (isinstance(s, dict) and "filter" in s)]}
        return data

    @model_validator(mode="after")
    def _across_sections(self) -> Config:
        sets, steps = self.synthetic.sets, self.diffusion.steps
        for name, spec in sets.items():  # steps null: the family's, checked by the generate stage
            for s in spec.strengths if isinstance(spec, Img2ImgSet) else []:
                need(steps is None or int(steps * s) >= 1, f"got {s}: int(diffusion.steps * strength) = int({steps} * {s}) = 0 steps; "
                     f"allowed: a strength >= {1 / (steps or 1):.4g}", f"synthetic.sets.{name}.strength")
        img2img = [n for n, s in sets.items() if isinstance(s, Img2ImgSet)]
        extra = [n for n, s in sets.items() if isinstance(s, PromptSet) and n not in PAPER_PROMPT_SETS]
        for field, kinds, what, why in (
                ("img2img_sets", img2img, "an img2img set under synthetic.sets", "every img2img set here, so dvc.yaml's generate_img2img@<set> stage"),
                ("prompt_sets", extra, "a prompt set under synthetic.sets other than syn1 and syn2",
                 "every prompt set other than syn1 and syn2 here, so dvc.yaml's generate_prompt@<set>")):
            listed: list[str] = getattr(self, field)
            for i, name in enumerate(listed):
                need(name in kinds, f"{name!r} is not {what}; allowed: {', '.join(kinds) or 'none declared'}", f"{field}[{i}]")
            _unique(listed, field, "a set")
            for name in kinds:
                need(name in listed, f"misses {name!r}: list {why} makes it", field)
        self._check_mixtures()
        return self

    def _check_mixtures(self) -> None:
        sources = ", ".join(self.sources)
        need(len(self.specs) > 0, "empty; allowed: at least one named mixture", "mixtures")
        for mix, spec in self.specs.items():
            key, fractions = f"mixtures.{mix}", self.mixtures[mix]
            need(mix.replace("_", "").replace("-", "").isalnum(), "a mixture name may hold only letters, digits, '_' and '-'", key)
            need(len(fractions) > 0, f"no sources; allowed sources: {sources}", key)
            for src, frac in spec.items():
                need(src != "filter" or isinstance(frac, MixtureFilter), f"got {frac!r}; allowed: a mapping with keys by, threshold, "
                     "keep_fraction", f"{key}.filter")
                need(src == "filter" or not isinstance(frac, MixtureFilter), "got a mapping; allowed: a fraction in [0, 1] "
                     "(only `filter` takes a mapping)", f"{key}.{src}")
            for src, frac in fractions.items():
                need(src in self.sources, f"unknown source (no synthetic set {src!r} under synthetic.sets); allowed: {sources}", f"{key}.{src}")
                need(0.0 <= frac <= 1.0, f"fraction {frac} is outside [0, 1]", f"{key}.{src}")
            for copy in ("rot90", "vflip"):
                need(fractions.get(copy, 0.0) <= fractions.get("orig", 0.0), "copies the real images that orig draws, so it may not "
                     f"exceed orig ({fractions.get('orig', 0.0)})", f"{key}.{copy}")
            need(sum(fractions.values()) > 0, "all fractions are 0; allowed: at least one fraction > 0", key)
        need(len(self.mixes) > 0, "empty; allowed: a list of names from mixtures", "mixes")
        for i, mix in enumerate(self.mixes):
            need(mix in self.specs, f"unknown mixture {mix!r}; allowed: {', '.join(self.specs)}", f"mixes[{i}]")
        _unique(self.mixes, "mixes", "a mixture")
        for mix in self.filters:
            key = f"mixtures.{mix}.filter"
            need(any(self.is_synthetic(s) for s in self.mixtures[mix]), f"{mix} draws no synthetic images; a filter drops synthetic images only", key)
            need(self.mixtures.get("orig100") == {"orig": 1.0}, "the filtering classifier is orig100's: define it as {orig: 1.0}", key)
            need("orig100" in self.mixes, "orig100 is not in mixes, so no classifier is trained to filter with; add it to mixes", key)
        for i, mix in enumerate(self.filtered_mixes):
            key = f"filtered_mixes[{i}]"
            need(mix in self.specs, f"unknown mixture {mix!r}; allowed: {', '.join(self.filters) or 'a mixture with a filter'}", key)
            need(mix in self.filters, f"{mix} has no filter; list it under mixes", key)
            need(mix not in self.mixes, f"{mix} is also in mixes; list it once", key)
        _unique(self.filtered_mixes, "filtered_mixes", "a mixture")
        for i, mix in enumerate(self.mixes):
            need(mix not in self.filters, f"{mix} has a filter; list it under filtered_mixes (its cells train after the classifier "
                 "that filters it)", f"mixes[{i}]")
        for i, mix in enumerate(self.real_curve):
            need(mix in self.mixtures and set(self.mixtures[mix]) == {"orig"}, f"got {mix!r}; allowed: a mixture that draws from orig alone",
                 f"real_curve[{i}]")
        curve = {self.mixtures[m]["orig"] for m in self.real_curve}
        need(not self.real_curve or (len(curve) >= 3 and len(set(self.real_curve)) == len(self.real_curve)),
             "allowed: [] (off) or at least 3 distinct mixtures with distinct orig fractions (the curve has 3 parameters)", "real_curve")
