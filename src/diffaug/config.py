"""One validated configuration object, read from params.yaml.

Every stage calls `load_config()` first; a bad value stops it with one line that names the key and
what is allowed (exit code 2) before any data is read or anything is written. Types are checked
from the dataclass annotations, so a new knob is one annotated field, not new checking code.
"""
from __future__ import annotations

import dataclasses
import string
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

ARCHITECTURES = ("resnet18", "resnet34", "resnet50", "vgg16", "densenet121")
SYNTHETIC_SETS = ("syn1", "syn2")
SOURCES = ("orig", "rot90", "vflip") + SYNTHETIC_SETS
SCHEDULERS = ("default", "pndm", "ddim", "dpmsolver++", "euler")


class ConfigError(ValueError):
    """A bad parameter: the message is one line, naming the key and what is allowed."""


# ----------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class DatasetConfig:
    name: str = "cifar10"
    test: Optional[str] = None
    test_per_class: int = 100
    val_per_class: int = 0
    split_seed: int = 0
    label_names: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.name.split(":", 1)[0]

    @property
    def path(self) -> Optional[str]:
        return self.name.split(":", 1)[1] if ":" in self.name else None


@dataclass(frozen=True)
class PromptSet:
    prompt: Union[str, list[str]] = "{label}"
    negative_prompt: Optional[str] = None

    @property
    def templates(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


@dataclass(frozen=True)
class SyntheticConfig:
    images_per_class: int = 5000
    images_per_shard: int = 1000
    save_full_resolution: bool = False
    syn1: PromptSet = field(default_factory=lambda: PromptSet("{label}"))
    syn2: PromptSet = field(default_factory=lambda: PromptSet("a photo of a {label}"))

    def prompt_set(self, name: str) -> PromptSet:
        return getattr(self, name)


@dataclass(frozen=True)
class DiffusionConfig:
    model: str = "CompVis/stable-diffusion-v1-4"
    revision: Optional[str] = None
    variant: Optional[str] = "fp16"
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    resolution: int = 512
    guidance_scale: float = 7.5
    steps: int = 50
    scheduler: Literal[SCHEDULERS] = "default"  # type: ignore[valid-type]
    seed: int = 0
    safety_checker: bool = True
    max_regenerations: int = 10
    batch_size: int = 32
    channels_last: bool = True
    fuse_qkv: bool = True
    compile: bool = False
    device: str = "auto"
    allow_cpu: bool = False


@dataclass(frozen=True)
class Recipe:
    epochs: int = 250
    batch_size: int = 128
    optimizer: Literal["sgd"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: Literal["constant", "cosine", "paper_cyclic"] = "cosine"
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    crop_padding: int = 4
    hflip: bool = True


@dataclass(frozen=True)
class TrainConfig:
    recipe: str = "default"
    variant: Literal["cifar", "paper"] = "cifar"
    seeds: list[int] = field(default_factory=lambda: [0])
    precision: Literal["bf16", "fp32"] = "bf16"
    channels_last: bool = True
    compile: bool = False
    checkpoint_every: int = 10
    device: str = "auto"
    recipes: dict[str, Recipe] = field(default_factory=lambda: {"default": Recipe()})

    @property
    def active(self) -> Recipe:
        return self.recipes[self.recipe]


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int = 1000
    device: str = "auto"


@dataclass(frozen=True)
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    mixture_seed: int = 0
    mixtures: dict[str, dict[str, float]] = field(default_factory=dict)
    model: Literal[ARCHITECTURES] = "resnet18"  # type: ignore[valid-type]
    mixes: list[str] = field(default_factory=list)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    @property
    def synthetic_sets_used(self) -> list[str]:
        """Synthetic sets that some trained mixture draws from (in SYNTHETIC_SETS order)."""
        used = {s for m in self.mixes for s in self.mixtures[m]}
        return [s for s in SYNTHETIC_SETS if s in used]


# ----------------------------------------------------------------------------- generic typing
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of str to {_type_name(typing.get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping with keys " + ", ".join(f.name for f in dataclasses.fields(tp))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Return `value` checked (and, for dataclasses, built) as type `tp`, or raise ConfigError."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{key}: got {value!r}; allowed: {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad
        hints = typing.get_type_hints(tp)
        names = [f.name for f in dataclasses.fields(tp)]
        for k in value:
            if k not in names:
                raise ConfigError(f"{key + '.' if key else ''}{k}: unknown key; allowed: {', '.join(names)}")
        return tp(**{k: _coerce(hints[k], v, f"{key + '.' if key else ''}{k}") for k, v in value.items()})
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin in (Union, types.UnionType):
        for arm in typing.get_args(tp):
            if arm is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(arm, value, key)
            except ConfigError:
                continue
        raise bad
    if origin is list:
        if not isinstance(value, list):
            raise bad
        (item,) = typing.get_args(tp)
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise bad
        _, item = typing.get_args(tp)
        return {str(k): _coerce(item, v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {key}")  # a programming error, not bad input


# ----------------------------------------------------------------------------- semantic checks
def _template_fields(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}


def _validate(cfg: Config) -> None:
    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise ConfigError(f"{key}: {msg}")

    ds = cfg.dataset
    need(ds.kind in ("cifar10", "cifar100", "npz", "imagefolder") and (ds.kind in ("cifar10", "cifar100")) == (ds.path is None),
         "dataset.name", f"got {ds.name!r}; allowed: cifar10 | cifar100 | npz:<path> | imagefolder:<path>")
    need(ds.path is None or ds.path != "", "dataset.name", "the path after the colon is empty")
    if ds.test is not None:
        kind = ds.test.split(":", 1)[0]
        need(kind in ("npz", "imagefolder") and ":" in ds.test and ds.kind in ("npz", "imagefolder"),
             "dataset.test", f"got {ds.test!r}; allowed: null, or npz:<path> | imagefolder:<path> with an npz/imagefolder dataset")
    need(ds.test_per_class >= 1, "dataset.test_per_class", f"got {ds.test_per_class}; allowed: an integer >= 1")
    need(ds.val_per_class >= 0, "dataset.val_per_class", f"got {ds.val_per_class}; allowed: an integer >= 0")
    for cls, word in ds.label_names.items():
        need(word.strip() != "", f"dataset.label_names.{cls}", "empty prompt word; allowed: a non-empty string")

    syn = cfg.synthetic
    need(syn.images_per_class >= 1, "synthetic.images_per_class", f"got {syn.images_per_class}; allowed: an integer >= 1")
    need(syn.images_per_shard >= 1, "synthetic.images_per_shard", f"got {syn.images_per_shard}; allowed: an integer >= 1")
    for name in SYNTHETIC_SETS:
        templates = syn.prompt_set(name).templates
        need(len(templates) > 0, f"synthetic.{name}.prompt", "empty list; allowed: a template or a non-empty list of templates")
        for t in templates:
            try:
                fields = _template_fields(t)
            except ValueError as e:
                raise ConfigError(f"synthetic.{name}.prompt: {t!r} is not a valid template ({e})") from None
            need(fields == {"label"}, f"synthetic.{name}.prompt",
                 f"{t!r} must contain {{label}} and no other {{field}}; e.g. 'a photo of a {{label}}'")

    dif = cfg.diffusion
    need(dif.resolution >= 64 and dif.resolution % 8 == 0, "diffusion.resolution",
         f"got {dif.resolution}; allowed: a multiple of 8, at least 64 (the paper: 512)")
    need(dif.steps >= 1, "diffusion.steps", f"got {dif.steps}; allowed: an integer >= 1")
    need(dif.guidance_scale >= 0, "diffusion.guidance_scale", f"got {dif.guidance_scale}; allowed: a number >= 0")
    need(dif.batch_size >= 1, "diffusion.batch_size", f"got {dif.batch_size}; allowed: an integer >= 1")
    need(dif.max_regenerations >= 0, "diffusion.max_regenerations", f"got {dif.max_regenerations}; allowed: an integer >= 0")
    need(dif.model.strip() != "", "diffusion.model", "empty; allowed: a hub id or a local directory")
    for key, dev in (("diffusion.device", dif.device), ("train.device", cfg.train.device), ("evaluate.device", cfg.evaluate.device)):
        need(dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()), key,
             f"got {dev!r}; allowed: auto | cpu | cuda | cuda:N")

    need(len(cfg.mixtures) > 0, "mixtures", "empty; allowed: at least one named mixture")
    for mix, sources in cfg.mixtures.items():
        need(mix.replace("_", "").replace("-", "").isalnum(), f"mixtures.{mix}",
             "a mixture name may hold only letters, digits, '_' and '-'")
        need(len(sources) > 0, f"mixtures.{mix}", f"no sources; allowed sources: {', '.join(SOURCES)}")
        for src, frac in sources.items():
            need(src in SOURCES, f"mixtures.{mix}.{src}", f"unknown source; allowed: {', '.join(SOURCES)}")
            need(0.0 <= frac <= 1.0, f"mixtures.{mix}.{src}", f"fraction {frac} is outside [0, 1]")
        for copy in ("rot90", "vflip"):
            if copy in sources:
                need(sources[copy] <= sources.get("orig", 0.0), f"mixtures.{mix}.{copy}",
                     f"copies the real images that orig draws, so it may not exceed orig ({sources.get('orig', 0.0)})")
        need(sum(sources.values()) > 0, f"mixtures.{mix}", "all fractions are 0; allowed: at least one fraction > 0")

    need(len(cfg.mixes) > 0, "mixes", "empty; allowed: a list of names from mixtures")
    for i, mix in enumerate(cfg.mixes):
        need(mix in cfg.mixtures, f"mixes[{i}]", f"unknown mixture {mix!r}; allowed: {', '.join(cfg.mixtures)}")
    need(len(set(cfg.mixes)) == len(cfg.mixes), "mixes", "lists a mixture twice")

    tr = cfg.train
    need(tr.recipe in tr.recipes, "train.recipe", f"got {tr.recipe!r}; allowed: {', '.join(tr.recipes) or 'a key of train.recipes'}")
    need(len(tr.seeds) >= 1 and len(set(tr.seeds)) == len(tr.seeds), "train.seeds", "allowed: a non-empty list of distinct integers")
    need(tr.checkpoint_every >= 1, "train.checkpoint_every", f"got {tr.checkpoint_every}; allowed: an integer >= 1")
    for name, r in tr.recipes.items():
        key = f"train.recipes.{name}"
        need(r.epochs >= 1, f"{key}.epochs", f"got {r.epochs}; allowed: an integer >= 1")
        need(r.batch_size >= 1, f"{key}.batch_size", f"got {r.batch_size}; allowed: an integer >= 1")
        need(r.lr > 0, f"{key}.lr", f"got {r.lr}; allowed: a number > 0")
        need(0 <= r.momentum < 1, f"{key}.momentum", f"got {r.momentum}; allowed: a number in [0, 1)")
        need(r.weight_decay >= 0, f"{key}.weight_decay", f"got {r.weight_decay}; allowed: a number >= 0")
        need(0 <= r.warmup_epochs < r.epochs, f"{key}.warmup_epochs", f"got {r.warmup_epochs}; allowed: 0 <= warmup_epochs < epochs")
        need(r.schedule != "paper_cyclic" or r.warmup_epochs == 0, f"{key}.warmup_epochs",
             f"got {r.warmup_epochs}; allowed: 0 with schedule paper_cyclic (the paper's schedule has no warm-up)")
        need(0 <= r.label_smoothing < 1, f"{key}.label_smoothing", f"got {r.label_smoothing}; allowed: a number in [0, 1)")
        need(r.crop_padding >= 0, f"{key}.crop_padding", f"got {r.crop_padding}; allowed: an integer >= 0")
        need(not r.nesterov or r.momentum > 0, f"{key}.nesterov", "Nesterov momentum needs momentum > 0")
    need(cfg.evaluate.batch_size >= 1, "evaluate.batch_size", f"got {cfg.evaluate.batch_size}; allowed: an integer >= 1")


def parse_config(data: Any, source: str = "params.yaml") -> Config:
    """Build and validate a Config from already-parsed YAML; errors are prefixed with `source`."""
    try:
        cfg = _coerce(Config, data if data is not None else {}, "")
        _validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return cfg


def load_config(path: str | Path = "params.yaml") -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found; run from the repository root or pass --params")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else "invalid YAML"
        raise ConfigError(f"{path}: not valid YAML ({first})") from None
    return parse_config(data, str(path))


def exit_on_error(fn):
    """Decorator for stage entry points: a ConfigError or UserError becomes one line on stderr and exit 2."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ConfigError, UserError) as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper


class UserError(RuntimeError):
    """Bad input other than params (a missing archive, a corrupt shard): one line, exit 2."""
