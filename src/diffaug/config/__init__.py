"""params.yaml as one validated `Config`, a frozen pydantic model per section (params.yaml says what each key means).
Every stage calls `load_config()` first, so a bad value stops it before any work with one line, `params.yaml: <dotted
key>: <pydantic's message> (got <value>)`. A rule on one value sits in its `Field`; a rule across keys calls `need`."""
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, NonNegativeFloat, NonNegativeInt, PositiveInt, Tag, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError, ValidationError
from ruamel.yaml import YAML, YAMLError

from diffaug.errors import ConfigError

Architecture = Literal["resnet18", "resnet34", "resnet50", "vgg16", "densenet121"]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
REAL_SOURCES = ("orig", "rot90", "vflip")  # the real training images and their copies; any other source is a synthetic set
LEVERS = {  # the only keys params.yaml may leave at their default, each proven never to change bytes (tests/test_params_levers.py)
    "train.checkpoint_every": "writing a resumable checkpoint changes no training state (equal weights with 1 and 10, tested on CPU)",
    "diffusion.cpu_offload": "each component moves to the GPU when called, not at load: the same kernels (CUDA only; a CPU no-op)",
}


def need(ok: bool, message: str, *key: str | int) -> None:  # key: below the model that raised it, for the dotted key
    if not ok:
        raise PydanticCustomError("rule", message, {"key below": key})  # a name no message holds in braces


class Section(BaseModel):  # strict: no YAML value is coerced into another type
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:  # pydantic's own refusal of an unknown key does not say which keys there are
        keys = [field.alias or name for name, field in cls.model_fields.items()]
        for key in data if isinstance(data, dict) and cls.model_config.get("extra") == "forbid" else ():
            need(key in keys, f"Extra inputs are not permitted; allowed: {', '.join(keys)}", key)
        return data


def _distinct(values: list[Any]) -> list[Any]:
    need(len(set(values)) == len(values), "lists an entry twice; allowed: each once")
    return values


Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # what numpy's and torch's generators both accept
Below1 = Annotated[float, Field(ge=0, lt=1)]
Device = Annotated[str, Field(pattern=r"^(auto|cpu|cuda|cuda:\d+)$")]
Name = Annotated[str, Field(pattern=r"^[\w-]+$")]
Strength = Annotated[float, Field(gt=0, le=1)]  # the share of the steps run from the noised real image; 1 = from pure noise
ImageNetId = Annotated[int, Field(ge=0, le=999)]
Distinct = AfterValidator(_distinct)
Template = Annotated[str, Field(pattern=r"^[^{}]*(\{label\}[^{}]*)+$")]  # text and {label}, which str.format turns into the word as it is
Templates = Template | Annotated[list[Template], Field(min_length=1)]


class DatasetConfig(Section):
    name: Annotated[str, Field(pattern=r"^(cifar10|cifar100|(npz|imagefolder):.+)$")] = "cifar10"
    test: Annotated[str, Field(pattern=r"^(npz|imagefolder):.+$")] | None = None
    test_per_class: PositiveInt = 100
    val_per_class: NonNegativeInt = 0
    split_seed: Seed = 0
    label_names: dict[str, Annotated[str, Field(pattern=r"\S")]] = {}
    kind = property(lambda self: self.name.split(":", 1)[0])  # cifar10, cifar100, npz or imagefolder
    path = property(lambda self: self.name.split(":", 1)[1] if ":" in self.name else None)

    def words(self, classes: list[str]) -> list[str]:  # each class's prompt word; label_names checked here, where the classes are known
        for name in [n for n in self.label_names if n not in classes]:
            raise ConfigError(f"params.yaml: dataset.label_names.{name}: names no class (got {name!r}); allowed: {', '.join(classes)}")
        return [self.label_names.get(c, c.replace("_", " ")) for c in classes]


class PromptSet(Section):
    """`kind: prompt`: text-to-image from the class label alone (Paulsen et al.'s syn1 and syn2)."""
    kind: Literal["prompt"] = "prompt"
    prompt: Templates = "{label}"
    negative_prompt: str | None = None
    class_ids: dict[str, ImageNetId | Annotated[list[ImageNetId], Field(min_length=1)]] | None = None
    templates = property(lambda self: self.prompt if isinstance(self.prompt, list) else [self.prompt])


class Img2ImgSet(Section):
    """`kind: img2img`: SDEdit-style, each real training image noised to `strength`, then int(steps * strength) steps."""
    kind: Literal["img2img"]
    strength: Strength | Annotated[list[Strength], Field(min_length=1)] = 0.5  # a list is cycled by image index
    prompt: Templates = "a photo of a {label}"
    negative_prompt: str | None = None
    images_per_class: PositiveInt | None = None  # null: one image per real training image (classes must be balanced)
    templates = property(lambda self: self.prompt if isinstance(self.prompt, list) else [self.prompt])
    strengths = property(lambda self: [float(s) for s in (self.strength if isinstance(self.strength, list) else [self.strength])])


SyntheticSet = Annotated[Annotated[PromptSet, Tag("prompt set")] | Annotated[Img2ImgSet, Tag("img2img set")], Discriminator(  # tags no data key is
    lambda v: f"{v.get('kind', 'prompt') if isinstance(v, dict) else getattr(v, 'kind', None)} set",  # a set is a prompt set unless it says otherwise
    custom_error_type="set_kind", custom_error_message="kind must be 'prompt' or 'img2img'")]


class SyntheticConfig(Section):
    images_per_class: PositiveInt = 5000  # of every prompt set (an img2img set has its own)
    images_per_shard: PositiveInt = 1000
    save_full_resolution: bool = False
    sets: dict[Name, SyntheticSet] = {"syn1": PromptSet(prompt="{label}"), "syn2": PromptSet(prompt="a photo of a {label}")}


class DiffusionConfig(Section):
    model: Annotated[str, Field(pattern=r"\S")] = "CompVis/stable-diffusion-v1-4"
    revision: str | None = None
    variant: str | None = "fp16"
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    resolution: Annotated[int, Field(ge=64, multiple_of=8)] | None = None
    guidance_scale: NonNegativeFloat | None = None
    steps: PositiveInt | None = None
    scheduler: Literal["default", "pndm", "ddim", "dpmsolver++", "euler"] = "default"
    seed: Seed = 0
    safety_checker: bool = True
    max_regenerations: NonNegativeInt = 10
    cache: Literal["none", "first_block"] = "none"  # approximate levers (they change the images): off unless asked for
    fp8: bool = False
    batch_size: PositiveInt | Literal["auto"] = "auto"  # speed levers (the same images, a pixel may change by a level)
    cpu_offload: bool = False
    channels_last: bool = False
    fuse_qkv: bool = True
    compile: bool | Literal["auto"] = "auto"
    compile_mode: Literal["default", "max-autotune-no-cudagraphs", "max-autotune"] = "default"
    cuda_graphs: bool = False
    attention: Literal["auto", "flash", "efficient", "cudnn", "math"] = "auto"
    device: Device = "auto"
    allow_cpu: bool = False


class Recipe(Section):
    epochs: PositiveInt = 250
    batch_size: PositiveInt = 128
    lr: Annotated[float, Field(gt=0)] = 0.1
    momentum: Below1 = 0.9
    nesterov: bool = True
    weight_decay: NonNegativeFloat = 5e-4
    schedule: Literal["constant", "cosine", "paper_cyclic"] = "cosine"
    warmup_epochs: NonNegativeInt = 0
    label_smoothing: Below1 = 0.0
    crop_padding: NonNegativeInt = 4
    hflip: bool = True
    pad_last_batch: bool = False  # the levers below are off by default (the paper's behaviour)
    cutout: NonNegativeInt = 0
    trivial_augment: bool = False
    ema_decay: Below1 = 0.0
    tta_hflip: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> "Recipe":
        need(self.warmup_epochs < self.epochs, f"allowed: 0 <= warmup_epochs < epochs ({self.epochs})", "warmup_epochs")
        need(self.schedule != "paper_cyclic" or self.warmup_epochs == 0, "allowed: 0 with schedule paper_cyclic (it has no warm-up)", "warmup_epochs")
        need(not self.nesterov or self.momentum > 0, "Nesterov momentum needs momentum > 0", "nesterov")
        return self


class TrainConfig(Section):
    recipe: str = "default"
    variant: Literal["cifar", "paper"] = "cifar"
    seeds: Annotated[list[Seed], Field(min_length=1), Distinct] = [0]
    precision: Literal["bf16", "fp32"] = "bf16"
    channels_last: bool = True
    compile: bool = False
    cuda_graph: bool = True
    checkpoint_every: PositiveInt = 10
    device: Device = "auto"
    recipes: dict[str, Recipe] = {"default": Recipe()}
    active = property(lambda self: self.recipes[self.recipe])


class EvaluateConfig(Section):
    batch_size: PositiveInt = 1000
    device: Device = "auto"


class MixtureFilter(Section):
    """Drops the synthetic images orig100's classifier (or CLIP) scores lowest: below `threshold`, or past `keep_fraction`."""
    by: Literal["confidence", "clip"] = "confidence"
    threshold: float | None = None
    keep_fraction: Annotated[float, Field(gt=0, le=1)] | None = None


class Mixture(Section):
    """`mixtures.<name>`: source -> fraction in [0, 1] (an absent source: 0), and optionally a `filter`."""
    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(init=False)
    filter: MixtureFilter | None = None


class Config(Section):
    dataset: DatasetConfig = DatasetConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    mixture_seed: Seed = 0
    specs: dict[Name, Mixture] = Field(min_length=1, alias="mixtures")  # the properties `mixtures` and `filters` split them
    model: Architecture = "resnet18"
    # dvc.yaml's stage matrices (dvc cannot filter a mapping); mixes absent: every mixture without a filter
    mixes: Annotated[list[str], Field(min_length=1), Distinct] = Field(default_factory=lambda data: [m for m, s in data["specs"].items() if not s.filter])
    img2img_sets: Annotated[list[str], Distinct] = []
    prompt_sets: Annotated[list[str], Distinct] = []
    filtered_mixes: Annotated[list[str], Distinct] = []
    real_curve: list[str] = []
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    mixtures = property(lambda self: {m: dict(spec.model_extra or {}) for m, spec in self.specs.items()})
    filters = property(lambda self: {m: spec.filter for m, spec in self.specs.items() if spec.filter is not None})
    trained_mixes = property(lambda self: [*self.mixes, *self.filtered_mixes])
    synthetic_sets = property(lambda self: tuple(self.synthetic.sets))  # in params.yaml's order
    synthetic_sets_used = property(lambda self: [s for s in self.synthetic_sets if any(s in self.mixtures[m] for m in self.trained_mixes)])

    @model_validator(mode="after")
    def _across_sections(self) -> "Config":
        sets, sources = self.synthetic.sets, REAL_SOURCES + self.synthetic_sets
        need(self.dataset.test is None or self.dataset.path is not None, f"allowed: null with dataset {self.dataset.name}", "dataset", "test")
        for name in sets:
            need(name not in REAL_SOURCES + ("filter",), f"{name!r} is a reserved source name; allowed: any other name", "synthetic", "sets", name)
        need(self.train.recipe in self.train.recipes, f"allowed: {', '.join(self.train.recipes) or 'a key of train.recipes'}", "train", "recipe")
        for key, kind, other in (("img2img_sets", "img2img", ""), ("prompt_sets", "prompt", " other than syn1 and syn2")):  # syn1, syn2: own stages
            declared = [n for n, s in sets.items() if s.kind == kind and not (other and n in ("syn1", "syn2"))]
            need(set(getattr(self, key)) == set(declared), f"allowed: [{', '.join(declared)}], every {kind} set under synthetic.sets{other}, "
                 f"so that dvc.yaml's generate_{kind}@<set> makes it", key)
        for mix, fractions in self.mixtures.items():
            need(sum(fractions.values()) > 0, "allowed: at least one fraction > 0", "mixtures", mix)
            for src, fraction in fractions.items():  # rot90 and vflip: copies of the real images that orig draws
                need(src in sources, f"unknown source; allowed: {', '.join(sources)} (the sets under synthetic.sets)", "mixtures", mix, src)
                need(src not in ("rot90", "vflip") or fraction <= fractions.get("orig", 0.0),
                     f"allowed: at most orig's fraction ({fractions.get('orig', 0.0)})", "mixtures", mix, src)
        for i, mix in enumerate(self.mixes):
            need(mix in self.specs, f"unknown mixture; allowed: {', '.join(self.specs)}", "mixes", i)
            need(mix not in self.filters, f"{mix} has a filter; list it under filtered_mixes (trained after the classifier that filters it)", "mixes", i)
        for mix, rule in self.filters.items():
            at = ("mixtures", mix, "filter")
            need((rule.threshold is None) != (rule.keep_fraction is None), "set exactly one of threshold or keep_fraction", *at)
            low, what = (0.0, "probability") if rule.by == "confidence" else (-1.0, "cosine similarity")
            need(rule.threshold is None or low <= rule.threshold <= 1.0, f"allowed: a number in [{low:g}, 1] (a {what})", *at, "threshold")
            need(any(s in sets for s in self.mixtures[mix]), f"{mix} draws no synthetic images; a filter drops synthetic images only", *at)
            need(self.mixtures.get("orig100") == {"orig": 1.0}, "the filtering classifier is orig100's: define it as {orig: 1.0}", *at)
            need("orig100" in self.mixes, "orig100 is not in mixes, so no classifier is trained to filter with; add it to mixes", *at)
        for i, mix in enumerate(self.filtered_mixes):
            need(mix in self.filters, f"{mix} has no filter; list it under mixes" if mix in self.specs else
                 f"unknown mixture; allowed: {', '.join(self.filters) or 'a mixture with a filter'}", "filtered_mixes", i)
        for i, mix in enumerate(self.real_curve):
            need(set(self.mixtures.get(mix, {})) == {"orig"}, "allowed: a mixture that draws from orig alone", "real_curve", i)
        need(not self.real_curve or len({self.mixtures[m]["orig"] for m in self.real_curve}) == len(self.real_curve) >= 3,
             "allowed: [] (off) or at least 3 distinct mixtures with distinct orig fractions (the curve has 3 parameters)", "real_curve")
        return self


def load_config(path: str | Path = "params.yaml") -> Config:
    return parse_config(read_params(path), str(path))


def read_params(path: str | Path = "params.yaml") -> Any:
    if not Path(path).is_file():
        raise ConfigError(f"{path}: file not found; run from the repository root or pass --params")
    return parse_yaml(Path(path).read_bytes(), str(path))  # bytes: ruamel.yaml refuses text that is not UTF-8


def parse_yaml(text: str | bytes, where: str) -> Any:
    try:  # as dvc reads it: ruamel.yaml, YAML 1.2 (`1e-3` is a number), a key given twice an error
        return YAML(typ="safe").load(text)
    except YAMLError as e:  # a marked error (a key given twice is one) says what and where; a bad byte only what
        mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML{f' at line {mark.line + 1}' if mark else ''} ({problem})") from None


def parse_config(data: Any, source: str = "params.yaml") -> Config:
    try:
        return Config.model_validate(data if data is not None else {})
    except ValidationError as e:
        raise ConfigError(f"{source}: {explain(e.errors(), data)}") from None


def explain(errors: list[ErrorDetails], data: Any) -> str:
    """'<dotted key>: <pydantic's message> (got <value>)' for the error that matters most: a refused value before a missing key,
    a rule before a type mismatch, the deepest key (so a union's arm the value was meant for); its equals at that key, joined."""
    located = [(_located(e, data), e) for e in errors]
    rank = [(e["type"] in ("missing", "default_factory_not_called"), e["type"].endswith("_type"), -len(at[0])) for at, e in located]
    best = min(rank)
    (path, value), err = located[rank.index(best)]
    message = " or ".join(dict.fromkeys(e["msg"] for (at, e), r in zip(located, rank) if (at[0], r) == (path, best)))
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    return f"{key + ': ' if key else ''}{message}{'' if err['type'] == 'missing' else f' (got {value!r:.100})'}"


def _located(err: ErrorDetails, data: Any) -> tuple[list[str | int], Any]:
    """The error's location (and a rule's key below it) in keys and indexes of the data (not a union's arm names); the value there."""
    path: list[str | int] = []
    loc = (*err["loc"], *(err.get("ctx") or {}).get("key below", ()))
    for i, part in enumerate(loc):
        node = dict(enumerate(data)) if isinstance(data, list) else data
        if isinstance(node, dict) and part in node:
            path, data = [*path, part], node[part]
        elif isinstance(data, dict | None) and i == len(loc) - 1:  # a key not given: a default refused, or one required
            path.append(part)
    return path, data
