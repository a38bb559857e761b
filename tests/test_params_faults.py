"""Config faults that used to pass validation and fail (or be ignored) later: each is one line, exit 2, before any
model loads, and nothing is written.

* A prompt template with a conversion or format spec ({label!r}, {label:d}) is refused when params are read.
* A `dataset.label_names` key that names no class is refused by every stage that reads label_names: generate, pilot,
  evaluate and filtering (the classes are known only at stage time, so DatasetConfig.words is the one check).
"""
import copy
from pathlib import Path

import numpy as np
import pytest
import yaml

import diffaug.generate.__main__ as generate_cli
from diffaug.config import DatasetConfig, parse_config
from diffaug.errors import ConfigError
from diffaug.formats.mixture import MixtureIndex, unfiltered_name, write_mixture
from diffaug.formats.splits import Split, save_split
from diffaug.generate import runner
from test_generate import CLASSES, cli_args, write_inputs

REPO = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
NO_CLASS = f"params.yaml: dataset.label_names.zebra: names no class (got 'zebra'); allowed: {', '.join(CLASSES)}"


TEMPLATE_RULE = r"String should match pattern '^[^{}]*(\{label\}[^{}]*)+$'"


@pytest.mark.parametrize("template", ["{label!r}", "a photo of a {label:>9}", "{label:d}", "{label} in {place}", "{0}", "{label.upper}",
                                      "a photo", "a {label"])
def test_a_template_that_would_not_format_to_the_word_is_refused_when_params_are_read(template):
    params = copy.deepcopy(PARAMS)
    params["synthetic"]["sets"]["syn2"]["prompt"] = ["a photo of a {label}", template]
    with pytest.raises(ConfigError) as err:
        parse_config(params)
    assert str(err.value) == f"params.yaml: synthetic.sets.syn2.prompt[1]: {TEMPLATE_RULE} (got {template!r})"


@pytest.mark.parametrize("template", ["{label}", "a photo of a {label}", "a {label} next to a {label}", "a {label}'s photo: 100%"])
def test_an_accepted_template_formats_to_the_word_as_it_is(template):
    params = copy.deepcopy(PARAMS)
    params["synthetic"]["sets"]["syn2"]["prompt"] = template
    (accepted,) = parse_config(params).synthetic.sets["syn2"].templates
    assert accepted.format(label="pickup truck") == template.replace("{label}", "pickup truck")


def test_words_refuses_a_label_name_for_no_class_and_names_the_classes():
    names = DatasetConfig(label_names={"automobile": "car"})
    assert names.words(["airplane", "automobile", "pickup_truck"]) == ["airplane", "car", "pickup truck"]
    with pytest.raises(ConfigError) as err:
        DatasetConfig(label_names={"zebra": "striped horse"}).words(CLASSES)
    assert str(err.value) == NO_CLASS


def params_with_zebra(folder: Path, model: Path) -> tuple[Path, Path]:
    params, classes = write_inputs(folder, model)
    p = yaml.safe_load(params.read_text())
    p["dataset"]["label_names"] = {"zebra": "striped horse"}
    params.write_text(yaml.safe_dump(p))
    return params, classes


@pytest.fixture
def no_model_load(monkeypatch):
    monkeypatch.setattr(runner, "open_sampler", lambda *a, **k: pytest.fail("the model was loaded before the check"))


def one_line_exit_2(run, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    return err.strip()


def test_generate_refuses_a_label_name_for_no_class(tiny_sd, tmp_path, capsys, no_model_load):
    params, classes = params_with_zebra(tmp_path, tiny_sd)
    assert one_line_exit_2(lambda: generate_cli.main(cli_args(params, classes, tmp_path / "out")), capsys) == f"error: {NO_CLASS}"
    assert not (tmp_path / "out").exists()


def test_pilot_refuses_a_label_name_for_no_class(tiny_sd, tmp_path, capsys, no_model_load):
    from diffaug.pilot import main as pilot_main

    params, classes = params_with_zebra(tmp_path, tiny_sd)
    argv = ["syn1", "--params", str(params), "--classes", str(classes), "--out", str(tmp_path / "pilot"), "--prepared", str(tmp_path / "prepared")]
    assert one_line_exit_2(lambda: pilot_main(argv), capsys) == f"error: {NO_CLASS}"
    assert not (tmp_path / "pilot").exists()


def zebra_config(**top) -> object:
    params = copy.deepcopy(PARAMS)
    params["dataset"]["label_names"] = {"zebra": "striped horse"}
    params.update(top)
    return parse_config(params)


def a_split(n: int = 6) -> Split:
    labels = np.arange(n) % len(CLASSES)
    return Split(np.zeros((n, 8, 8, 3), np.uint8), labels, list(CLASSES))


def test_evaluate_refuses_a_label_name_for_no_class(tmp_path):
    from diffaug.evaluate import evaluate

    (tmp_path / "prepared").mkdir()
    save_split(tmp_path / "prepared" / "test.npz", a_split())
    with pytest.raises(ConfigError) as err:
        evaluate(zebra_config(), tmp_path / "prepared", tmp_path / "synthetic", tmp_path / "models", tmp_path / "out", tmp_path / "summary.json")
    assert str(err.value) == NO_CLASS and sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


def test_filtering_refuses_a_label_name_for_no_class(tmp_path):
    from diffaug.filtering import filter_mixture

    mixtures = dict(PARAMS["mixtures"], conf={"orig": 0.5, "syn1": 0.5, "filter": {"by": "clip", "keep_fraction": 0.5}})
    cfg = zebra_config(mixtures=mixtures, filtered_mixes=["conf"])
    (tmp_path / "mixtures").mkdir()
    write_mixture(tmp_path / "mixtures" / f"{unfiltered_name('conf')}.npz",
                  MixtureIndex(np.zeros(3, np.uint8), np.arange(3), np.arange(3), ["orig"], list(CLASSES), ["orig"], ["d"]))
    with pytest.raises(ConfigError) as err:
        filter_mixture(cfg, "conf", tmp_path / "mixtures", tmp_path / "prepared", tmp_path / "synthetic", tmp_path / "c.pt", tmp_path / "out")
    assert str(err.value) == NO_CLASS and not (tmp_path / "out").exists()
