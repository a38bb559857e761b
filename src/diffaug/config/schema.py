"""The params.yaml schema: one frozen pydantic dataclass per section; defaults are the paper's settings.

A rule on one value sits in its type (a `Rule`), a rule across fields in the section's validator, a rule across
sections in Config's. A broken rule raises `Invalid(message, key)`, `key` naming the part below the checked value.
"""
from __future__ import annotations

import dataclasses
import string
from collections.abc import Callable
from functools import cached_property
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, ConfigDict, Discriminator, Field, StrictBool, StrictFloat, StrictInt, StrictStr, Tag, model_validator
from pydantic.dataclasses import dataclass
from pydantic_core import core_schema

Architecture = Literal["resnet18", "resnet34", "resnet50", "vgg16", "densenet121"]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
# The real training images (orig, and its rot90 / vflip copies); every other source is a set declared under synthetic.sets.
REAL_SOURCES = ("orig", "rot90", "vflip")
# The paper's sources in the order of their codes in mixture files (formats.mixture): fixed, so that declaring a set changes no file.
PAPER_SOURCES = REAL_SOURCES + ("syn1", "syn2")
SET_KINDS = ("prompt", "img2img")
SEED_MAX = 2**32 - 1  # what numpy's and torch's generators both accept, the same rule for every seed
SECTION = ConfigDict(extra="forbid", allow_inf_nan=False)
__all__ = ["ARCHITECTURES", "PAPER_SOURCES", "REAL_SOURCES", "SET_KINDS", "Config", "DatasetConfig", "DiffusionConfig", "EvaluateConfig",
           "Img2ImgSet", "Invalid", "MixtureFilter", "PromptSet", "Recipe", "SyntheticConfig", "TrainConfig"]


class Invalid(ValueError):
    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


def need(ok: bool, message: str, key: str = "") -> None:
    if not ok:
        raise Invalid(message, key)


class Rule:
    """Annotated metadata: a value (null passes) must pass `ok`, else 'got <value>; allowed: <allowed>'; `json_schema` tells editors the same."""

    def __init__(self, allowed: str, ok: Callable[[Any], bool], **json_schema: Any) -> None:
        self.allowed, self.ok, self.json_schema = allowed, ok, json_schema

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        check = lambda v: v if v is None or self.ok(v) else need(False, f"got {v!r}; allowed: {self.allowed}")
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


Templates = Annotated[Str | list[Str], AfterValidator(_templates)]
ImageNetIds = Annotated[Int | list[Int], Rule("an ImageNet class id in 0..999 or a non-empty list of them",
                                              lambda ids: ids != [] and all(0 <= v < 1000 for v in (ids if isinstance(ids, list) else [ids])))]


@dataclass(frozen=True, config=SECTION)
class Section:
    """Every section: unknown keys and non-finite numbers refused; an unknown key is told the keys there are."""

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        keys = [getattr(f.default, "alias", None) or f.name for f in dataclasses.fields(cls)]
        for key in data if isinstance(data, dict) else []:
            need(key in keys, f"unknown key; allowed: {', '.join(keys)}", str(key))
        return data


class _Prompted:
    prompt: str | list[str]

    @property
    def templates(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


# ----------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class DatasetConfig(Section):
    name: Annotated[Str, Rule("cifar10 | cifar100 | npz:<path> | imagefolder:<path>", lambda v: v in ("cifar10", "cifar100") or (
        v.partition(":")[0] in ("npz", "imagefolder") and v.partition(":")[2] != ""))] = "cifar10"
    test: Annotated[Str | None, Rule("null, or npz:<path> | imagefolder:<path> with an npz/imagefolder dataset",
                                     lambda v: v.partition(":")[0] in ("npz", "imagefolder") and v.partition(":")[2] != "")] = None
    test_per_class: Count = 100
    val_per_class: NonNegativeInt = 0
    split_seed: Seed = 0
    label_names: dict[Str, Annotated[Str, Rule("a non-empty prompt word", lambda v: v.strip() != "", minLength=1)]] = Field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.name.split(":", 1)[0]

    @property
    def path(self) -> str | None:
        return self.name.split(":", 1)[1] if ":" in self.name else None

    def words(self, classes: list[str]) -> list[str]:  # each class's prompt word: label_names' entry, else its name with '_' as spaces
        return [self.label_names.get(c, c.replace("_", " ")) for c in classes]

    @model_validator(mode="after")
    def _test_split_of_a_dataset_on_disk(self) -> DatasetConfig:
        need(self.test is None or self.path is not None, f"got {self.test!r}; allowed: null with dataset {self.name}", "test")
        return self


@dataclass(frozen=True)
class PromptSet(Section, _Prompted):
    """`kind: prompt`: text-to-image from the class label alone (Paulsen et al.'s syn1 and syn2)."""

    kind: Literal["prompt"] = "prompt"
    prompt: Templates = "{label}"  # a template or a list of templates, cycled per image
    negative_prompt: Str | None = None
    # Class-conditional models (DiT) take ImageNet ids, not prompts: class -> one id or a list, cycled per image like the templates.
    class_ids: dict[Str, ImageNetIds] | None = None


@dataclass(frozen=True, config=ConfigDict(**SECTION, json_schema_extra={"required": ["kind"]}))
class Img2ImgSet(Section, _Prompted):
    """`kind: img2img`: SDEdit / DA-Fusion-style image-to-image from each real training image (or a
    seeded class-balanced subset), noised to `strength` and denoised for int(steps * strength) steps."""

    kind: Literal["img2img"] = "img2img"
    strength: Annotated[Float | list[Float], AfterValidator(_strengths)] = 0.5  # in (0, 1]; a list is cycled by image index
    prompt: Templates = "a photo of a {label}"
    negative_prompt: Str | None = None
    # null: one image per real training image (classes must be balanced)
    images_per_class: Annotated[Int | None, Rule("null (every real training image) or an integer >= 1", lambda v: v >= 1, minimum=1)] = None

    @property
    def strengths(self) -> list[float]:
        return list(self.strength) if isinstance(self.strength, list) else [float(self.strength)]


# chosen by `kind`, prompt when absent; the tags are how pydantic names the arm in an error's location, never a key of a set
SyntheticSet = Annotated[Annotated[PromptSet, Tag("kind=prompt")] | Annotated[Img2ImgSet, Tag("kind=img2img")],
                         Discriminator(lambda v: f"kind={v.get('kind', 'prompt')}" if isinstance(v, dict) else getattr(v, "kind", None) and f"kind={v.kind}")]


def _set_names(sets: dict[str, Any]) -> dict[str, Any]:
    for name in sets:
        need(name.replace("_", "").replace("-", "").isalnum(), "a set name may hold only letters, digits, '_' and '-'", name)
        need(name not in REAL_SOURCES and name != "filter", f"{name!r} is a reserved source name; allowed: any other name", name)
    return sets


@dataclass(frozen=True)
class SyntheticConfig(Section):
    images_per_class: Count = 5000  # of every prompt set (an img2img set has its own)
    images_per_shard: Count = 1000
    save_full_resolution: Bool = False
    sets: Annotated[dict[Str, SyntheticSet], AfterValidator(_set_names)] = Field(  # name -> kind and settings
        default_factory=lambda: dict[str, PromptSet | Img2ImgSet](syn1=PromptSet(prompt="{label}"), syn2=PromptSet(prompt="a photo of a {label}")))


@dataclass(frozen=True)
class DiffusionConfig(Section):
    model: Annotated[Str, Rule("a hub id or a local directory", lambda v: v.strip() != "", minLength=1)] = "CompVis/stable-diffusion-v1-4"
    revision: Str | None = None
    variant: Str | None = "fp16"
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    # null: the model family's default (generate/families.py); params.yaml sets the paper's 512, 7.5, 50.
    resolution: Annotated[Int | None, Rule("a multiple of 8, at least 64 (the paper: 512)", lambda v: v >= 64 and v % 8 == 0, minimum=64, multipleOf=8)] = None
    guidance_scale: Annotated[Float | None, Rule("a number >= 0", lambda v: v >= 0, minimum=0)] = None
    steps: Annotated[Int | None, Rule("an integer >= 1", lambda v: v >= 1, minimum=1)] = None
    scheduler: Literal["default", "pndm", "ddim", "dpmsolver++", "euler"] = "default"
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


@dataclass(frozen=True)
class Recipe(Section):
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
    cutout: NonNegativeInt = 0      # side of a square cut out of every training image, in pixels (0: off)
    trivial_augment: Bool = False   # TrivialAugmentWide (torchvision.transforms.v2) on the device
    ema_decay: Below1 = 0.0         # EMA of the weights, per step (0: off); the EMA weights are the result
    tta_hflip: Bool = False         # evaluation averages the logits of each image and its mirror image

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        need(self.warmup_epochs < self.epochs, f"got {self.warmup_epochs}; allowed: 0 <= warmup_epochs < epochs", "warmup_epochs")
        need(self.schedule != "paper_cyclic" or self.warmup_epochs == 0,
             f"got {self.warmup_epochs}; allowed: 0 with schedule paper_cyclic (the paper's schedule has no warm-up)", "warmup_epochs")
        need(not self.nesterov or self.momentum > 0, "Nesterov momentum needs momentum > 0", "nesterov")
        return self


def _seeds(seeds: list[int]) -> list[int]:
    need(len(seeds) >= 1 and len(set(seeds)) == len(seeds), "allowed: a non-empty list of distinct integers")
    return seeds


def _distinct(names: list[str]) -> list[str]:
    need(len(set(names)) == len(names), "lists a name twice; allowed: each once")
    return names


Distinct = AfterValidator(_distinct)


@dataclass(frozen=True)
class TrainConfig(Section):
    recipe: Str = "default"  # a key of recipes
    variant: Literal["cifar", "paper"] = "cifar"
    seeds: Annotated[list[Seed], AfterValidator(_seeds)] = Field(default_factory=lambda: [0])
    precision: Literal["bf16", "fp32"] = "bf16"
    channels_last: Bool = True
    compile: Bool = False
    cuda_graph: Bool = True  # capture the whole training step in one CUDA graph (CUDA only)
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


@dataclass(frozen=True)
class EvaluateConfig(Section):
    batch_size: Count = 1000
    device: Device = "auto"


@dataclass(frozen=True)
class MixtureFilter(Section):
    """`mixtures.<name>.filter`: drop the synthetic images of a mixture's draw that the orig100 classifier
    (first seed) finds implausible (ALIA: its confidence; He et al.: CLIP image-text similarity).
    Exactly one of `threshold` (keep scores >= it) or `keep_fraction` (the best-scored share, per class)."""

    by: Literal["confidence", "clip"] = "confidence"
    threshold: Float | None = None
    keep_fraction: Annotated[Float | None, Rule("a number in (0, 1]", lambda v: 0 < v <= 1, exclusiveMinimum=0, maximum=1)] = None

    @model_validator(mode="after")
    def _one_rule(self) -> MixtureFilter:
        need((self.threshold is None) != (self.keep_fraction is None),
             "set exactly one of threshold (keep scores >= it) or keep_fraction (the best-scored share per class)")
        low, what = (0.0, "probability") if self.by == "confidence" else (-1.0, "cosine similarity")
        need(self.threshold is None or low <= self.threshold <= 1.0, f"got {self.threshold}; allowed: a number in [{low:g}, 1] (a {what})", "threshold")
        return self


def _mixture(spec: dict[str, float | MixtureFilter]) -> dict[str, float | MixtureFilter]:
    for source, value in spec.items():
        if isinstance(value, MixtureFilter):
            need(source == "filter", "got a mapping; allowed: a fraction in [0, 1] (only `filter` takes a mapping)", source)
        else:
            need(source != "filter", f"got {value!r}; allowed: a mapping with keys by, threshold, keep_fraction", source)
            need(0.0 <= value <= 1.0, f"fraction {value} is outside [0, 1]", source)
    fractions = {s: v for s, v in spec.items() if not isinstance(v, MixtureFilter)}
    for copy in ("rot90", "vflip"):
        orig = fractions.get("orig", 0.0)
        need(fractions.get(copy, 0.0) <= orig, f"copies the real images that orig draws, so it may not exceed orig ({orig})", copy)
    need(sum(fractions.values()) > 0, "all fractions are 0 or none is given; allowed: at least one fraction > 0")
    return spec


@dataclass(frozen=True)
class Config(Section):
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    mixture_seed: Seed = 0
    # name -> {source: fraction}, and optionally `filter:` (a MixtureFilter); `mixtures` and `filters` split them
    specs: dict[Str, Annotated[dict[Str, Float | MixtureFilter], AfterValidator(_mixture)]] = Field(default_factory=dict, alias="mixtures")
    model: Architecture = "resnet18"
    # The lists dvc.yaml's stage matrices run over (dvc cannot filter a mapping):
    mixes: Annotated[list[Str], Distinct] = Field(default_factory=list)  # train@: absent, every mixture without a filter
    img2img_sets: Annotated[list[Str], Distinct] = Field(default_factory=list)  # generate_img2img@<set>: every img2img set
    prompt_sets: Annotated[list[Str], Distinct] = Field(default_factory=list)  # generate_prompt@<set>: prompt sets beyond syn1, syn2
    filtered_mixes: Annotated[list[Str], Distinct] = Field(default_factory=list)  # train_filtered@: the mixtures with a filter
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
    def trained_mixes(self) -> list[str]:  # every cell's mixture: `mixes`, then `filtered_mixes`
        return list(self.mixes) + list(self.filtered_mixes)

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
        for key, kind, what in (("img2img_sets", "img2img", "an img2img set"), ("prompt_sets", "prompt", "a prompt set")):
            other = " other than syn1 and syn2" if kind == "prompt" else ""  # syn1 and syn2 have stages of their own
            declared, listed = [n for n, s in sets.items() if s.kind == kind and not (other and n in ("syn1", "syn2"))], getattr(self, key)
            for i, name in enumerate(listed):
                need(name in declared, f"{name!r} is not {what} under synthetic.sets{other}; allowed: {', '.join(declared) or 'none'}", f"{key}[{i}]")
            for name in declared:
                need(name in listed, f"misses {name!r}: list every {kind} set{other} here, so dvc.yaml's generate_{kind}@<set> stage makes it", key)
        self._check_mixtures()
        return self

    def _check_mixtures(self) -> None:
        need(len(self.specs) > 0, "empty; allowed: at least one named mixture", "mixtures")
        for mix, fractions in self.mixtures.items():
            need(mix.replace("_", "").replace("-", "").isalnum(), "a mixture name may hold only letters, digits, '_' and '-'", f"mixtures.{mix}")
            for src in fractions:
                need(src in self.sources, f"unknown source (no synthetic set {src!r} under synthetic.sets); allowed: {', '.join(self.sources)}",
                     f"mixtures.{mix}.{src}")
        need(len(self.mixes) > 0, "empty; allowed: a list of names from mixtures", "mixes")
        for i, mix in enumerate(self.mixes):
            need(mix in self.specs, f"unknown mixture {mix!r}; allowed: {', '.join(self.specs)}", f"mixes[{i}]")
            need(mix not in self.filters, f"{mix} has a filter; list it under filtered_mixes (its cells train after the classifier that filters it)",
                 f"mixes[{i}]")
        for mix in self.filters:
            key = f"mixtures.{mix}.filter"
            need(any(map(self.is_synthetic, self.mixtures[mix])), f"{mix} draws no synthetic images; a filter drops synthetic images only", key)
            need(self.mixtures.get("orig100") == {"orig": 1.0}, "the filtering classifier is orig100's: define it as {orig: 1.0}", key)
            need("orig100" in self.mixes, "orig100 is not in mixes, so no classifier is trained to filter with; add it to mixes", key)
        for i, mix in enumerate(self.filtered_mixes):
            need(mix in self.filters, f"{mix} has no filter; list it under mixes" if mix in self.specs else
                 f"unknown mixture {mix!r}; allowed: {', '.join(self.filters) or 'a mixture with a filter'}", f"filtered_mixes[{i}]")
        for i, mix in enumerate(self.real_curve):
            need(set(self.mixtures.get(mix, {})) == {"orig"}, f"got {mix!r}; allowed: a mixture that draws from orig alone", f"real_curve[{i}]")
        need(not self.real_curve or len({self.mixtures[m]["orig"] for m in self.real_curve}) == len(self.real_curve) >= 3,
             "allowed: [] (off) or at least 3 distinct mixtures with distinct orig fractions (the curve has 3 parameters)", "real_curve")
