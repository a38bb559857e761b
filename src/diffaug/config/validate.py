"""Rules a type cannot express: ranges, cross-references between sections, prompt templates."""
from __future__ import annotations

import string

from diffaug.config.schema import REAL_SOURCES, Config, Img2ImgSet, MixtureFilter, PromptSet
from diffaug.errors import ConfigError

PAPER_PROMPT_SETS = ("syn1", "syn2")  # the paper's sets, each with a dvc.yaml stage of its own


def _template_fields(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}


SEED_RANGE = (0, 2**32 - 1)  # what numpy's and torch's generators both accept, the same rule for every seed


def validate(cfg: Config) -> None:
    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise ConfigError(f"{key}: {msg}")

    def need_seed(value: int, key: str) -> None:
        need(SEED_RANGE[0] <= value <= SEED_RANGE[1], key, f"got {value}; allowed: an integer seed in 0..{SEED_RANGE[1]}")

    need_seed(cfg.dataset.split_seed, "dataset.split_seed")
    need_seed(cfg.mixture_seed, "mixture_seed")
    need_seed(cfg.diffusion.seed, "diffusion.seed")
    for i, seed in enumerate(cfg.train.seeds):
        need_seed(seed, f"train.seeds[{i}]")

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
    for name, spec in syn.sets.items():
        key = f"synthetic.sets.{name}"
        need(name.replace("_", "").replace("-", "").isalnum(), key, "a set name may hold only letters, digits, '_' and '-'")
        need(name not in REAL_SOURCES and name != "filter", key,
             f"{name!r} is a reserved source name; allowed: any other name")
        templates = spec.templates
        need(len(templates) > 0, f"{key}.prompt", "empty list; allowed: a template or a non-empty list of templates")
        for t in templates:
            try:
                fields = _template_fields(t)
            except ValueError as e:
                raise ConfigError(f"{key}.prompt: {t!r} is not a valid template ({e})") from None
            need(fields == {"label"}, f"{key}.prompt",
                 f"{t!r} must contain {{label}} and no other {{field}}; e.g. 'a photo of a {{label}}'")
        if isinstance(spec, Img2ImgSet):
            _validate_img2img(cfg, name, spec, need)
        elif spec.class_ids is not None:
            for cls, ids in spec.class_ids.items():
                values = ids if isinstance(ids, list) else [ids]
                need(len(values) > 0 and all(0 <= v < 1000 for v in values), f"{key}.class_ids.{cls}",
                     f"got {ids}; allowed: an ImageNet class id in 0..999 or a non-empty list of them")
    img2img = [n for n, s in syn.sets.items() if isinstance(s, Img2ImgSet)]
    for i, name in enumerate(cfg.img2img_sets):
        need(name in img2img, f"img2img_sets[{i}]",
             f"{name!r} is not an img2img set under synthetic.sets; allowed: {', '.join(img2img) or 'none declared'}")
    need(len(set(cfg.img2img_sets)) == len(cfg.img2img_sets), "img2img_sets", "lists a set twice")
    for name in img2img:
        need(name in cfg.img2img_sets, "img2img_sets",
             f"misses {name!r}: list every img2img set here, so dvc.yaml's generate_img2img@<set> stage makes it")
    # syn1 and syn2 have stages of their own (generate_syn1, generate_syn2); any other prompt set is made by
    # the generate_prompt@<set> matrix over prompt_sets.
    extra = [n for n, s in syn.sets.items() if isinstance(s, PromptSet) and n not in PAPER_PROMPT_SETS]
    for i, name in enumerate(cfg.prompt_sets):
        need(name in extra, f"prompt_sets[{i}]", f"{name!r} is not a prompt set under synthetic.sets other than "
             f"{' and '.join(PAPER_PROMPT_SETS)}; allowed: {', '.join(extra) or 'none declared'}")
    need(len(set(cfg.prompt_sets)) == len(cfg.prompt_sets), "prompt_sets", "lists a set twice")
    for name in extra:
        need(name in cfg.prompt_sets, "prompt_sets",
             f"misses {name!r}: list every prompt set other than syn1 and syn2 here, so dvc.yaml's generate_prompt@<set> makes it")

    dif = cfg.diffusion
    # resolution, steps, guidance_scale: null = the model family's default (generate/families.py)
    need(dif.resolution is None or (dif.resolution >= 64 and dif.resolution % 8 == 0), "diffusion.resolution",
         f"got {dif.resolution}; allowed: a multiple of 8, at least 64 (the paper: 512)")
    need(dif.steps is None or dif.steps >= 1, "diffusion.steps", f"got {dif.steps}; allowed: an integer >= 1")
    need(dif.guidance_scale is None or dif.guidance_scale >= 0, "diffusion.guidance_scale",
         f"got {dif.guidance_scale}; allowed: a number >= 0")
    need(dif.batch_size == "auto" or dif.batch_size >= 1, "diffusion.batch_size",
         f"got {dif.batch_size}; allowed: auto or an integer >= 1")
    need(dif.max_regenerations >= 0, "diffusion.max_regenerations", f"got {dif.max_regenerations}; allowed: an integer >= 0")
    need(dif.deep_cache == 0, "diffusion.deep_cache", f"got {dif.deep_cache}; the hand-written DeepCache was removed; "
         "allowed: 0 (use diffusion.cache: first_block on transformer models, or a fast scheduler preset)")
    need(dif.model.strip() != "", "diffusion.model", "empty; allowed: a hub id or a local directory")
    for key, dev in (("diffusion.device", dif.device), ("train.device", cfg.train.device), ("evaluate.device", cfg.evaluate.device)):
        need(dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()), key,
             f"got {dev!r}; allowed: auto | cpu | cuda | cuda:N")

    sources = ", ".join(cfg.sources)
    need(len(cfg.mixtures) > 0, "mixtures", "empty; allowed: at least one named mixture")
    for mix, fractions in cfg.mixtures.items():
        need(mix.replace("_", "").replace("-", "").isalnum(), f"mixtures.{mix}",
             "a mixture name may hold only letters, digits, '_' and '-'")
        need(len(fractions) > 0, f"mixtures.{mix}", f"no sources; allowed sources: {sources}")
        for src, frac in fractions.items():
            need(src != "filter", f"mixtures.{mix}.filter", f"got {frac!r}; allowed: a mapping with keys by, threshold, "
                 "keep_fraction, classifier_mix")
            need(not isinstance(frac, MixtureFilter), f"mixtures.{mix}.{src}", "got a mapping; allowed: a fraction in [0, 1] "
                 "(only `filter` takes a mapping)")
            need(src in cfg.sources, f"mixtures.{mix}.{src}",
                 f"unknown source (no synthetic set {src!r} under synthetic.sets); allowed: {sources}")
            need(0.0 <= frac <= 1.0, f"mixtures.{mix}.{src}", f"fraction {frac} is outside [0, 1]")
        for copy in ("rot90", "vflip"):
            if copy in fractions:
                need(fractions[copy] <= fractions.get("orig", 0.0), f"mixtures.{mix}.{copy}",
                     f"copies the real images that orig draws, so it may not exceed orig ({fractions.get('orig', 0.0)})")
        need(sum(fractions.values()) > 0, f"mixtures.{mix}", "all fractions are 0; allowed: at least one fraction > 0")

    need(len(cfg.mixes) > 0, "mixes", "empty; allowed: a list of names from mixtures")
    for i, mix in enumerate(cfg.mixes):
        need(mix in cfg.mixtures, f"mixes[{i}]", f"unknown mixture {mix!r}; allowed: {', '.join(cfg.mixtures)}")
    need(len(set(cfg.mixes)) == len(cfg.mixes), "mixes", "lists a mixture twice")
    _validate_filters(cfg, need)
    for i, mix in enumerate(cfg.real_curve):
        need(mix in cfg.mixtures and set(cfg.mixtures[mix]) == {"orig"}, f"real_curve[{i}]",
             f"got {mix!r}; allowed: a mixture that draws from orig alone")
    curve_fractions = [cfg.mixtures[m]["orig"] for m in cfg.real_curve]
    need(not cfg.real_curve or len(set(curve_fractions)) >= 3 and len(set(cfg.real_curve)) == len(cfg.real_curve), "real_curve",
         "allowed: [] (off) or at least 3 distinct mixtures with distinct orig fractions (the curve has 3 parameters)")

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
        need(r.cutout >= 0, f"{key}.cutout", f"got {r.cutout}; allowed: an integer >= 0 (0: off)")
        need(0 <= r.ema_decay < 1, f"{key}.ema_decay", f"got {r.ema_decay}; allowed: a number in [0, 1) (0: off)")
    need(cfg.evaluate.batch_size >= 1, "evaluate.batch_size", f"got {cfg.evaluate.batch_size}; allowed: an integer >= 1")


def _validate_img2img(cfg: Config, name: str, spec: Img2ImgSet, need) -> None:
    key = f"synthetic.sets.{name}"
    strengths = spec.strengths
    need(len(strengths) > 0, f"{key}.strength", "empty list; allowed: a number in (0, 1] or a non-empty list of them")
    steps = cfg.diffusion.steps  # null: the family's default, checked again by the generate stage
    for s in strengths:
        need(0.0 < s <= 1.0, f"{key}.strength", f"got {s}; allowed: a number in (0, 1] (the share of the "
             "diffusion steps run from the noised real image; 1 = from pure noise)")
        if steps is not None:
            need(int(steps * s) >= 1, f"{key}.strength",
                 f"got {s}: int(diffusion.steps * strength) = int({steps} * {s}) = 0 steps; allowed: a strength >= {1 / steps:.4g}")
    if spec.images_per_class is not None:
        need(spec.images_per_class >= 1, f"{key}.images_per_class",
             f"got {spec.images_per_class}; allowed: null (every real training image) or an integer >= 1")


def _validate_filters(cfg: Config, need) -> None:
    """`mixtures.<name>.filter` and `filtered_mixes`: filtered cells train after the classifier that filters them."""
    for mix, f in cfg.filters.items():
        key = f"mixtures.{mix}.filter"
        need((f.threshold is None) != (f.keep_fraction is None), key,
             "set exactly one of threshold (keep scores >= it) or keep_fraction (the best-scored share per class)")
        if f.keep_fraction is not None:
            need(0.0 < f.keep_fraction <= 1.0, f"{key}.keep_fraction", f"got {f.keep_fraction}; allowed: a number in (0, 1]")
        if f.threshold is not None:
            low = 0.0 if f.by == "confidence" else -1.0
            need(low <= f.threshold <= 1.0, f"{key}.threshold",
                 f"got {f.threshold}; allowed: a number in [{low:g}, 1] (a {'probability' if f.by == 'confidence' else 'cosine similarity'})")
        need(any(cfg.is_synthetic(s) for s in cfg.mixtures[mix]), key,
             f"{mix} draws no synthetic images; a filter drops synthetic images only")
        ref = cfg.mixtures.get(f.classifier_mix)
        need(ref is not None and set(ref) == {"orig"} and f.classifier_mix not in cfg.filters, f"{key}.classifier_mix",
             f"got {f.classifier_mix!r}; allowed: a mixture of real images only (orig100)")
        need(f.classifier_mix == "orig100", f"{key}.classifier_mix",
             f"got {f.classifier_mix!r}; allowed: orig100 (the cell dvc.yaml's filter@ stages depend on)")
        need(f.classifier_mix in cfg.mixes, f"{key}.classifier_mix",
             f"{f.classifier_mix} is not in mixes, so no classifier is trained to filter with; add it to mixes")
    for i, mix in enumerate(cfg.filtered_mixes):
        need(mix in cfg.mixtures, f"filtered_mixes[{i}]", f"unknown mixture {mix!r}; allowed: {', '.join(cfg.filters) or 'a mixture with a filter'}")
        need(mix in cfg.filters, f"filtered_mixes[{i}]", f"{mix} has no filter; list it under mixes")
        need(mix not in cfg.mixes, f"filtered_mixes[{i}]", f"{mix} is also in mixes; list it once")
    need(len(set(cfg.filtered_mixes)) == len(cfg.filtered_mixes), "filtered_mixes", "lists a mixture twice")
    for i, mix in enumerate(cfg.mixes):
        need(mix not in cfg.filters, f"mixes[{i}]", f"{mix} has a filter; list it under filtered_mixes (its cells "
             "train after the classifier that filters it)")
