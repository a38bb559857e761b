"""params.yaml validation: every bad value is one line naming the key, exit 2, nothing written."""
import copy
import functools
import importlib
import json
import os
import random
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
    sets = cfg.synthetic.sets
    assert cfg.synthetic_sets == ("syn1", "syn2") and cfg.img2img_sets == []
    assert sets["syn1"].kind == sets["syn2"].kind == "prompt"
    assert sets["syn1"].templates == ["{label}"] and sets["syn2"].templates == ["a photo of a {label}"]
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
    assert fractions == paper | {(.1, 0, 0), (.25, 0, 0), (.75, 0, 0)}  # and the real_curve's other sizes
    assert cfg.real_curve == ["orig10", "orig25", "orig50", "orig75", "orig100"]
    baselines = [m for m in cfg.mixtures.values() if {"rot90", "vflip"} & set(m)]
    assert sorted(tuple(sorted(m)) for m in baselines) == sorted([("orig", "rot90"), ("orig", "vflip"), ("orig", "rot90", "vflip")])
    assert set(cfg.mixes) == set(cfg.mixtures)


BAD = [
    # (key to change, value, text the one-line error must contain)
    ("evaluate.colour", "red", "evaluate.colour: Extra inputs are not permitted; allowed: batch_size, device (got 'red')"),
    ("real_curve", ["orig50_syn1_50", "orig50", "orig100"], "real_curve[0]: allowed: a mixture that draws from orig alone (got 'orig50_syn1_50')"),
    ("real_curve", ["orig50", "orig100"], "real_curve: allowed: [] (off) or at least 3 distinct mixtures with distinct orig fractions (the curve has 3 "
     "parameters) "
     "(got ['orig50', 'orig100'])"),
    ("diffusion.steps", "fifty", "diffusion.steps: Input should be a valid integer (got 'fifty')"),
    ("diffusion.resolution", 500, "diffusion.resolution: Input should be a multiple of 8 (got 500)"),
    ("diffusion.dtype", "int8", "diffusion.dtype: Input should be 'float16', 'bfloat16' or 'float32' (got 'int8')"),
    ("diffusion.scheduler", "lms", "diffusion.scheduler: Input should be 'default', 'pndm', 'ddim', 'dpmsolver++' or 'euler' (got 'lms')"),
    ("diffusion.guidance_scale", True, "diffusion.guidance_scale: Input should be a valid number (got True)"),
    ("model", "resnet101", "model: Input should be 'resnet18', 'resnet34', 'resnet50', 'vgg16' or 'densenet121' (got 'resnet101')"),
    ("mixes", ["orig100", "orig33"], "mixes[1]: unknown mixture; allowed: orig100, orig75, orig50"),
    ("mixtures.orig100", {"orig": 1.5}, "mixtures.orig100.orig: Input should be less than or equal to 1 (got 1.5)"),
    ("mixtures.orig100", {"syn3": 1.0}, "mixtures.orig100.syn3: unknown source; allowed: orig, rot90, vflip, syn1, syn2 "
     "(the sets under synthetic.sets) (got 1.0)"),
    ("mixtures.orig100", {"orig": 0.0}, "mixtures.orig100: allowed: at least one fraction > 0 (got {'orig': 0.0})"),
    ("dataset.test", "npz:test.npz", "dataset.test: allowed: null with dataset cifar10 (got 'npz:test.npz')"),
    ("mixtures.orig50_rot50", {"orig": 0.25, "rot90": 0.5}, "mixtures.orig50_rot50.rot90: allowed: at most orig's fraction (0.25) (got 0.5)"),
    ("synthetic.sets.syn2.prompt", "a photo of a bird", "synthetic.sets.syn2.prompt: String should match pattern "
     "'^[^{}]*(\\{label\\}[^{}]*)+$' (got 'a photo of a bird')"),
    ("synthetic.sets.syn1.prompt", ["{label}", "{label} by {artist}"], "synthetic.sets.syn1.prompt[1]: String should match "
     "pattern '^[^{}]*(\\{label\\}[^{}]*)+$' (got '{label} by {artist}')"),
    ("synthetic.sets.syn1.kind", "text", "synthetic.sets.syn1: kind must be 'prompt' or 'img2img' (got {'kind': 'text'"),
    ("synthetic.sets.syn1", 5, "synthetic.sets.syn1: kind must be 'prompt' or 'img2img' (got 5)"),
    ("synthetic.sets.syn1.strength", 0.5, "synthetic.sets.syn1.strength: Extra inputs are not permitted; "
     "allowed: kind, prompt, negative_prompt, class_ids (got 0.5)"),
    ("synthetic.sets.orig", {"kind": "prompt"}, "synthetic.sets.orig: 'orig' is a reserved source name; allowed: any other name (got {'kind': 'prompt'})"),
    ("synthetic.images_per_class", 0, "synthetic.images_per_class: Input should be greater than 0 (got 0)"),
    ("dataset.name", "mnist", "dataset.name: String should match pattern '^(cifar10|cifar100|(npz|imagefolder):.+)$' (got 'mnist')"),
    ("train.recipe", "fast", "train.recipe: allowed: default, paper (got 'fast')"),
    ("train.recipes.default.lr", -0.1, "train.recipes.default.lr: Input should be greater than 0 (got -0.1)"),
    ("train.seeds", [0, 0], "train.seeds: lists an entry twice; allowed: each once (got [0, 0])"),
    ("train.variant", "imagenet", "train.variant: Input should be 'cifar' or 'paper' (got 'imagenet')"),
    ("evaluate.device", "tpu", "evaluate.device: String should match pattern '^(auto|cpu|cuda|cuda:\\d+)$' (got 'tpu')"),
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


def with_img2img(set_spec: dict, listed: bool = True, **top) -> dict:
    p = copy.deepcopy(BASE)
    p["synthetic"]["sets"]["i2i"] = {"kind": "img2img", **set_spec}
    p["img2img_sets"] = ["i2i"] if listed else []
    p.update(top)
    return p


def test_an_img2img_set_parses_with_its_defaults_and_a_strength_list():
    cfg = parse_config(with_img2img({"strength": [0.25, 0.5, 1]}))
    spec = cfg.synthetic.sets["i2i"]
    assert spec.kind == "img2img" and spec.strengths == [0.25, 0.5, 1.0] and spec.images_per_class is None
    assert spec.templates == ["a photo of a {label}"]
    assert cfg.synthetic_sets == ("syn1", "syn2", "i2i") and "i2i" in cfg.synthetic.sets
    assert parse_config(with_img2img({"strength": 1})).synthetic.sets["i2i"].strengths == [1.0]


BAD_IMG2IMG = [
    ({"strength": 0}, "synthetic.sets.i2i.strength: Input should be greater than 0 (got 0)"),
    ({"strength": 1.5}, "synthetic.sets.i2i.strength: Input should be less than or equal to 1 (got 1.5)"),
    ({"strength": -0.2}, "synthetic.sets.i2i.strength: Input should be greater than 0 (got -0.2)"),
    ({"strength": [0.5, 1.01]}, "synthetic.sets.i2i.strength[1]: Input should be less than or equal to 1 (got 1.01)"),
    ({"strength": []}, "synthetic.sets.i2i.strength: List should have at least 1 item after validation, not 0 (got [])"),
    ({"strength": "high"}, "synthetic.sets.i2i.strength: Input should be a valid number or Input should be a valid list (got 'high')"),
    ({"strength": float("nan")}, "synthetic.sets.i2i.strength: Input should be a finite number (got nan)"),
    ({"images_per_class": 0}, "synthetic.sets.i2i.images_per_class: Input should be greater than 0 (got 0)"),
    ({"prompt": "a photo"}, "synthetic.sets.i2i.prompt: String should match pattern '^[^{}]*(\\{label\\}[^{}]*)+$' (got 'a photo')"),
    ({"guidance": 3}, "synthetic.sets.i2i.guidance: Extra inputs are not permitted; allowed: kind, strength, prompt, negative_prompt, "
     "images_per_class (got 3)"),
]


@pytest.mark.parametrize("spec,message", BAD_IMG2IMG, ids=[str(b[0])[:30] for b in BAD_IMG2IMG])
def test_bad_img2img_value_is_one_line_naming_the_key(spec, message):
    with pytest.raises(ConfigError) as err:
        parse_config(with_img2img(spec))
    text = str(err.value)
    assert "\n" not in text and text.startswith("params.yaml: ") and message in text, text


def test_img2img_sets_lists_exactly_the_img2img_sets():
    every = r"img2img_sets: allowed: \[i2i\], every img2img set under synthetic.sets, so that dvc.yaml's generate_img2img@<set> makes it"
    with pytest.raises(ConfigError, match=every + r" \(got \[\]\)$"):
        parse_config(with_img2img({"strength": 0.5}, listed=False))
    with pytest.raises(ConfigError, match=every + r" \(got \['syn1'\]\)$"):
        parse_config(with_img2img({"strength": 0.5}, listed=False, img2img_sets=["syn1"]))


def test_prompt_sets_lists_exactly_the_prompt_sets_beyond_syn1_and_syn2():
    p = copy.deepcopy(BASE)
    p["synthetic"]["sets"]["syn3"] = {"kind": "prompt", "prompt": "a blurry photo of a {label}"}
    every = r"prompt_sets: allowed: \[syn3\], every prompt set under synthetic.sets other than syn1 and syn2, so that dvc.yaml's"
    with pytest.raises(ConfigError, match=every + r".* \(got \[\]\)$"):
        parse_config(p)
    p["prompt_sets"] = ["syn3"]
    assert parse_config(p).synthetic_sets == ("syn1", "syn2", "syn3")
    p["prompt_sets"] = ["syn3", "syn1"]
    with pytest.raises(ConfigError, match=every + r".* \(got \['syn3', 'syn1'\]\)$"):
        parse_config(p)


def test_not_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("dataset: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_bytes("model: résnet18\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"params.yaml: not valid YAML \(unacceptable character #x00e9: invalid continuation byte\)$"):
        load_config(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


RESOLUTION_500 = "error: params.yaml: diffusion.resolution: Input should be a multiple of 8 (got 500)"


def test_a_stage_process_exits_2_with_one_line_and_writes_nothing(tmp_path):
    """The `python -m` entry point: exit status 2, one line on stderr (mixtures: it imports no torch)."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_change("diffusion.resolution", 500)))
    proc = subprocess.run([sys.executable, "-m", "diffaug.mixtures", "--params", "params.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    assert (proc.returncode, proc.stderr.strip().splitlines()) == (2, [RESOLUTION_500])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.parametrize("module", ["diffaug.prepare", "diffaug.evaluate --models models/resnet18"])
def test_stage_exits_2_with_one_line_and_writes_nothing(tmp_path, module, monkeypatch, capsys):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_change("diffusion.resolution", 500)))
    monkeypatch.chdir(tmp_path)
    name, *extra = module.split()
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(name).main(["--params", "params.yaml", *extra])
    assert (exit_info.value.code, capsys.readouterr().err.strip().splitlines()) == (2, [RESOLUTION_500])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_params_schema_json_is_generated_from_the_models():
    printed = subprocess.run([sys.executable, "-m", "diffaug.config"], capture_output=True, text=True, check=True).stdout
    committed = json.loads((REPO / "params.schema.json").read_text())
    assert committed == json.loads(printed), "regenerate it: python -m diffaug.config > params.schema.json"
    assert (REPO / "params.yaml").read_text().splitlines()[0] == "# yaml-language-server: $schema=params.schema.json"


def test_a_standard_json_schema_validator_accepts_params_and_rejects_a_misspelled_key():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(json.loads((REPO / "params.schema.json").read_text()))
    assert list(validator.iter_errors(BASE)) == []
    for key, value in (("diffusion.stpes", 20), ("mixs", ["orig100"]), ("train.recipes.paper.learning_rate", 0.1)):
        errors = [e.message for e in validator.iter_errors(with_change(key, value))]
        assert errors == [f"Additional properties are not allowed ('{key.rsplit('.', 1)[-1]}' was unexpected)"], errors
    assert list(validator.iter_errors(with_change("diffusion.resolution", 500)))  # the rules travel too: a multiple of 8
    with pytest.raises(ConfigError, match=r"diffusion\.stpes: Extra inputs are not permitted; allowed: model, revision, .*, allow_cpu \(got 20\)$"):
        parse_config(with_change("diffusion.stpes", 20))  # and params.yaml's own check says the same


def test_without_mixes_every_mixture_without_a_filter_is_trained():
    p = copy.deepcopy(BASE)
    del p["mixes"]
    p["mixtures"]["conf"] = {"orig": 0.5, "syn1": 0.5, "filter": {"keep_fraction": 0.5}}
    p["filtered_mixes"] = ["conf"]
    cfg = parse_config(p)
    assert cfg.mixes == list(BASE["mixtures"]) and cfg.trained_mixes == list(BASE["mixtures"]) + ["conf"]
    assert cfg.mixtures["conf"] == {"orig": 0.5, "syn1": 0.5} and cfg.filters["conf"].keep_fraction == 0.5


def test_params_yaml_is_read_as_dvc_reads_it(tmp_path):
    """YAML 1.2, as dvc parses params.yaml for `dvc exp show` and `-S`: `1e-3` is a number (YAML 1.1 readers make it a string)."""
    text = (REPO / "params.yaml").read_text()
    assert "      lr: 0.1\n" in text
    (tmp_path / "params.yaml").write_text(text.replace("      lr: 0.1\n", "      lr: 1e-3\n", 1))
    assert load_config(tmp_path / "params.yaml").train.recipes["default"].lr == 0.001
    from dvc.utils.serialize import load_yaml

    assert load_yaml(tmp_path / "params.yaml")["train"]["recipes"]["default"]["lr"] == 0.001


def test_a_bad_value_is_told_before_a_missing_key():
    with pytest.raises(ConfigError) as err:
        parse_config({"model": "resnet19"})
    assert str(err.value).startswith("params.yaml: model: Input should be 'resnet18', ") and str(err.value).endswith(" (got 'resnet19')")
    with pytest.raises(ConfigError, match=r"^params.yaml: mixtures: Field required$"):
        parse_config({"model": "resnet18"})


def test_any_mutation_of_params_is_a_config_or_one_line():
    """Seeded random edits (a key set to another value or type, removed, or added): never a traceback or a blank key."""
    values = [None, "x", -1, 0, 0.5, 1.5, [], {}, [1, 1], {"a": 1}, True, float("nan"), float("inf"), 2**40, "{label}", {"kind": "img2img"}]

    def keys(node, at=()):
        yield at
        for k, child in (node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()):
            yield from keys(child, (*at, k))

    rng, every = random.Random(0), [k for k in keys(BASE) if k]
    for _ in range(1000):
        p, (*parents, leaf) = copy.deepcopy(BASE), rng.choice(every)
        node = functools.reduce(lambda n, k: n[k], parents, p)
        if rng.random() < 0.1 and isinstance(node, dict):
            del node[leaf]
        else:
            node[leaf if rng.random() < 0.9 or isinstance(node, list) else "extra"] = copy.deepcopy(rng.choice(values))
        try:
            parse_config(p)
        except ConfigError as e:
            assert "\n" not in str(e) and str(e).startswith("params.yaml: ") and not str(e).startswith("params.yaml: :"), str(e)
