"""params.yaml validation: every bad value is one line naming the key, exit 2, nothing written."""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from diffaug.config import ARCHITECTURES, load_config, parse_config
from diffaug.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((REPO / "params.yaml").read_text())


def with_change(path: str, value):
    """The committed params with one key set (value=DELETE removes it)."""
    p = copy.deepcopy(BASE)
    *parents, leaf = path.split(".")
    target = p
    for part in parents:
        target = target[part]
    target[leaf] = value
    return p


def test_committed_params_are_the_paper_settings():
    cfg = load_config(REPO / "params.yaml")
    assert cfg.dataset.name == "cifar10"
    assert cfg.synthetic.images_per_class == 5000
    assert cfg.synthetic.syn1.templates == ["{label}"] and cfg.synthetic.syn2.templates == ["a photo of a {label}"]
    d = cfg.diffusion
    assert (d.model, d.dtype, d.variant, d.resolution, d.guidance_scale, d.steps, d.scheduler, d.safety_checker) == (
        "CompVis/stable-diffusion-v1-4", "float16", "fp16", 512, 7.5, 50, "default", True)
    paper = cfg.train.recipes["paper"]
    assert (paper.lr, paper.momentum, paper.nesterov, paper.weight_decay, paper.batch_size, paper.epochs) == (0.01, 0.9, True, 5e-4, 128, 250)
    assert cfg.model in ARCHITECTURES


def test_all_eleven_paper_mixtures_and_fig7_baselines_are_defined():
    cfg = load_config(REPO / "params.yaml")
    fractions = {tuple(m.get(s, 0.0) for s in ("orig", "syn1", "syn2")) for m in cfg.mixtures.values() if not {"rot90", "vflip"} & set(m)}
    paper = {(1, 0, 0), (.5, 0, 0), (.5, .5, 0), (0, 1, 0), (0, .5, 0), (1, 1, 0), (.5, 0, .5), (0, 0, 1), (0, 0, .5), (1, 0, 1), (1, 1, 1)}
    assert fractions == paper
    baselines = [m for m in cfg.mixtures.values() if {"rot90", "vflip"} & set(m)]
    assert sorted(tuple(sorted(m)) for m in baselines) == sorted([("orig", "rot90"), ("orig", "vflip"), ("orig", "rot90", "vflip")])
    assert set(cfg.mixes) == set(cfg.mixtures)


BAD = [
    # (key to change, value, text the one-line error must contain)
    ("diffusion.colour", "red", "diffusion.colour: unknown key"),
    ("diffusion.steps", "fifty", "diffusion.steps: got 'fifty'; allowed: an integer"),
    ("diffusion.resolution", 500, "diffusion.resolution: got 500; allowed: a multiple of 8"),
    ("diffusion.dtype", "int8", "diffusion.dtype: got 'int8'; allowed: 'float16' | 'bfloat16' | 'float32'"),
    ("diffusion.scheduler", "lms", "diffusion.scheduler: got 'lms'"),
    ("diffusion.guidance_scale", True, "diffusion.guidance_scale: got True; allowed: a number"),
    ("model", "resnet101", "model: got 'resnet101'; allowed: 'resnet18'"),
    ("mixes", ["orig100", "orig75"], "mixes[1]: unknown mixture 'orig75'"),
    ("mixtures.orig100", {"orig": 1.5}, "mixtures.orig100.orig: fraction 1.5 is outside [0, 1]"),
    ("mixtures.orig100", {"syn3": 1.0}, "mixtures.orig100.syn3: unknown source; allowed: orig, rot90, vflip, syn1, syn2"),
    ("mixtures.orig50_rot50", {"orig": 0.25, "rot90": 0.5}, "mixtures.orig50_rot50.rot90: copies the real images that orig draws"),
    ("synthetic.syn2.prompt", "a photo of a bird", "synthetic.syn2.prompt: 'a photo of a bird' must contain {label}"),
    ("synthetic.syn1.prompt", ["{label}", "{label} by {artist}"], "must contain {label} and no other {field}"),
    ("synthetic.images_per_class", 0, "synthetic.images_per_class: got 0; allowed: an integer >= 1"),
    ("dataset.name", "mnist", "dataset.name: got 'mnist'; allowed: cifar10 | cifar100 | npz:<path> | imagefolder:<path>"),
    ("train.recipe", "fast", "train.recipe: got 'fast'; allowed: default, paper"),
    ("train.recipes.default.lr", -0.1, "train.recipes.default.lr: got -0.1; allowed: a number > 0"),
    ("train.seeds", [0, 0], "train.seeds: allowed: a non-empty list of distinct integers"),
    ("train.variant", "imagenet", "train.variant: got 'imagenet'; allowed: 'cifar' | 'paper'"),
    ("evaluate.device", "tpu", "evaluate.device: got 'tpu'; allowed: auto | cpu | cuda | cuda:N"),
]


@pytest.mark.parametrize("key,value,message", BAD, ids=[b[0] + "=" + str(b[1])[:20] for b in BAD])
def test_bad_value_is_one_line_naming_the_key(key, value, message):
    with pytest.raises(ConfigError) as err:
        parse_config(with_change(key, value))
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith("params.yaml: ")
    assert message in text, text


def test_a_mixture_may_not_use_a_source_that_is_not_generated():
    p = copy.deepcopy(BASE)
    p["mixtures"]["orig50_syn1_50"] = {"orig": 0.5, "syn9": 0.5}
    with pytest.raises(ConfigError, match=r"mixtures\.orig50_syn1_50\.syn9: unknown source"):
        parse_config(p)


def test_not_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("dataset: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("module", ["diffaug.prepare", "diffaug.mixtures", "diffaug.evaluate --models models/resnet18"])
def test_stage_exits_2_with_one_line_and_writes_nothing(tmp_path, module):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_change("diffusion.resolution", 500)))
    name, *extra = module.split()
    proc = subprocess.run([sys.executable, "-m", name, "--params", "params.yaml", *extra], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["error: params.yaml: diffusion.resolution: got 500; allowed: a multiple of 8, at least 64 (the paper: 512)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
