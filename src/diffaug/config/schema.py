"""The params.yaml schema: one frozen dataclass per section, defaults = the paper's settings.

A new knob is one annotated field here (types are checked from the annotations by coerce.py) plus,
where a type is not enough, one rule in validate.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

ARCHITECTURES = ("resnet18", "resnet34", "resnet50", "vgg16", "densenet121")
# Sources that are the real training images: orig itself, and its rot90 / vflip copies. Every other
# source of a mixture is a synthetic set, declared by name under synthetic.sets (Config.synthetic_sets).
REAL_SOURCES = ("orig", "rot90", "vflip")
# The paper's sources, in the order their codes have in mixture files (formats.mixture): fixed, so
# mixture files made before sets were named are unchanged, and a newly declared set changes none.
PAPER_SOURCES = REAL_SOURCES + ("syn1", "syn2")
SET_KINDS = ("prompt", "img2img")
SCHEDULERS = ("default", "pndm", "ddim", "dpmsolver++", "euler")
FILTER_BY = ("confidence", "clip")


# ----------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class DatasetConfig:
    name: str = "cifar10"
    test: str | None = None
    test_per_class: int = 100
    val_per_class: int = 0
    split_seed: int = 0
    label_names: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.name.split(":", 1)[0]

    @property
    def path(self) -> str | None:
        return self.name.split(":", 1)[1] if ":" in self.name else None


@dataclass(frozen=True)
class PromptSet:
    """`kind: prompt`: text-to-image from the class label alone (Paulsen et al.'s syn1 and syn2)."""

    kind: Literal["prompt"] = "prompt"
    prompt: str | list[str] = "{label}"  # a template or a list of templates, cycled per image
    negative_prompt: str | None = None
    # Class-conditional models (DiT) take ImageNet ids, not prompts: dataset class -> one id or a list,
    # cycled per image like the templates.
    class_ids: dict[str, int | list[int]] | None = None

    @property
    def templates(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


@dataclass(frozen=True)
class Img2ImgSet:
    """`kind: img2img`: SDEdit / DA-Fusion-style image-to-image from each real training image (or a
    seeded class-balanced subset), noised to `strength` and denoised for int(steps * strength) steps."""

    kind: Literal["img2img"] = "img2img"
    strength: float | list[float] = 0.5  # in (0, 1]; a list is cycled by image index
    prompt: str | list[str] = "a photo of a {label}"
    negative_prompt: str | None = None
    images_per_class: int | None = None  # null: one image per real training image (classes must be balanced)

    @property
    def templates(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    @property
    def strengths(self) -> list[float]:
        return list(self.strength) if isinstance(self.strength, list) else [float(self.strength)]


SyntheticSet = PromptSet | Img2ImgSet  # chosen by `kind` (config.coerce), prompt when absent


def _paper_sets() -> dict[str, SyntheticSet]:
    return {"syn1": PromptSet(prompt="{label}"), "syn2": PromptSet(prompt="a photo of a {label}")}


@dataclass(frozen=True)
class SyntheticConfig:
    images_per_class: int = 5000  # of every prompt set (an img2img set has its own)
    images_per_shard: int = 1000
    save_full_resolution: bool = False
    sets: dict[str, SyntheticSet] = field(default_factory=_paper_sets)  # name -> kind and settings

    def prompt_set(self, name: str) -> SyntheticSet:
        return self.sets[name]


@dataclass(frozen=True)
class DiffusionConfig:
    model: str = "CompVis/stable-diffusion-v1-4"
    revision: str | None = None
    variant: str | None = "fp16"
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    # null: the model family's default (generate/families.py); params.yaml sets the paper's 512, 7.5, 50.
    resolution: int | None = None
    guidance_scale: float | None = None
    steps: int | None = None
    scheduler: Literal[SCHEDULERS] = "default"  # type: ignore[valid-type]
    seed: int = 0
    safety_checker: bool = True
    max_regenerations: int = 10
    # Approximate levers (change the images; in the settings hash): off unless asked for.
    cache: Literal["none", "first_block"] = "none"  # diffusers' FirstBlockCache on transformer families
    fp8: bool = False  # float8 matmuls in the denoiser (torchao, CUDA sm89+)
    deep_cache: int = 0  # removed (the hand-written DeepCache is gone): only 0 is accepted
    # Speed levers (never change which images are meant; see generate/model.py).
    batch_size: int | Literal["auto"] = "auto"  # auto: the largest batch the GPU's free memory holds
    cpu_offload: bool = False  # enable_model_cpu_offload(): for GPUs too small for the whole model
    channels_last: bool = False
    fuse_qkv: bool = True
    compile: bool | Literal["auto"] = "auto"
    compile_mode: Literal["default", "max-autotune-no-cudagraphs", "max-autotune"] = "default"
    cuda_graphs: bool = False
    attention: Literal["auto", "flash", "efficient", "cudnn", "math"] = "auto"
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
    # Recipe levers (issue 11): all off by default, i.e. the paper's behaviour; each applies identically to
    # real and synthetic images (see src/diffaug/train/augment.py and loop.py).
    pad_last_batch: bool = False    # pad the last partial batch with zero-weight samples: one static shape
    cutout: int = 0                 # side of a square cut out of every training image, in pixels (0: off)
    trivial_augment: bool = False   # TrivialAugmentWide (torchvision.transforms.v2) on the device
    ema_decay: float = 0.0          # EMA of the weights, per step (0: off); the EMA weights are the result
    tta_hflip: bool = False         # evaluation averages the logits of each image and its mirror image


@dataclass(frozen=True)
class TrainConfig:
    recipe: str = "default"
    variant: Literal["cifar", "paper"] = "cifar"
    seeds: list[int] = field(default_factory=lambda: [0])
    precision: Literal["bf16", "fp32"] = "bf16"
    channels_last: bool = True
    compile: bool = False
    cuda_graph: bool = True         # capture the whole training step in one CUDA graph (CUDA only)
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
class MixtureFilter:
    """`mixtures.<name>.filter`: drop the synthetic images of a mixture's draw that a classifier finds
    implausible (ALIA: confidence of the real-data classifier; He et al.: CLIP image-text similarity).
    Exactly one of `threshold` (keep scores >= it) or `keep_fraction` (the best-scored share, per class)."""

    by: Literal[FILTER_BY] = "confidence"  # type: ignore[valid-type]
    threshold: float | None = None
    keep_fraction: float | None = None
    classifier_mix: str = "orig100"  # the real-only cell whose first seed's weights score the images


@dataclass(frozen=True)
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    mixture_seed: int = 0
    # name -> {source: fraction}; in params.yaml a mixture may also hold a `filter:` mapping (a
    # MixtureFilter, see PARSE_AS). At construction the filters move to `filters`, so `mixtures` maps
    # every name to fractions only.
    mixtures: dict[str, dict[str, float]] = field(default_factory=dict)
    model: Literal[ARCHITECTURES] = "resnet18"  # type: ignore[valid-type]
    mixes: list[str] = field(default_factory=list)
    img2img_sets: list[str] = field(default_factory=list)  # dvc.yaml's generate_img2img@<set> matrix: every img2img set
    prompt_sets: list[str] = field(default_factory=list)  # dvc.yaml's generate_prompt@<set> matrix: prompt sets beyond syn1, syn2
    filtered_mixes: list[str] = field(default_factory=list)  # mixtures with a filter: trained after their classifier
    real_curve: list[str] = field(default_factory=list)  # real-only mixes, accuracy vs real images: the exchange rate
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    PARSE_AS: ClassVar[dict[str, Any]] = {"mixtures": dict[str, dict[str, float | MixtureFilter]]}

    def __post_init__(self) -> None:
        filters = {m: s["filter"] for m, s in self.mixtures.items() if isinstance(s.get("filter"), MixtureFilter)}
        object.__setattr__(self, "_filters", filters)
        object.__setattr__(self, "mixtures", {m: {k: v for k, v in s.items() if not (k == "filter" and m in filters)}
                                              for m, s in self.mixtures.items()})

    @property
    def filters(self) -> dict[str, MixtureFilter]:
        """The mixtures that carry a `filter:`, and their filters."""
        return self._filters  # type: ignore[attr-defined]

    @property
    def trained_mixes(self) -> list[str]:
        """Every cell's mixture: `mixes`, then `filtered_mixes` (trained by train_filtered@)."""
        return list(self.mixes) + [m for m in self.filtered_mixes if m not in self.mixes]

    @property
    def synthetic_sets(self) -> tuple[str, ...]:
        """Every declared synthetic set (synthetic.sets), in params.yaml's order."""
        return tuple(self.synthetic.sets)

    @property
    def sources(self) -> tuple[str, ...]:
        """What a mixture may draw from: the real images, their copies, and every declared set."""
        return REAL_SOURCES + self.synthetic_sets

    def is_synthetic(self, source: str) -> bool:
        return source in self.synthetic.sets

    @property
    def synthetic_sets_used(self) -> list[str]:
        """Synthetic sets that some trained mixture draws from (in declaration order)."""
        used = {s for m in self.trained_mixes for s in self.mixtures[m]}
        return [s for s in self.synthetic_sets if s in used]
