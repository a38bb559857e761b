"""params.yaml records every setting behind a number: every key the config would fill in from a code default is
written (only the byte-neutral LEVERS may be left out), every written key is a param of the stage that reads it,
and a changed value shows in `dvc params diff`."""
import copy
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from pydantic import TypeAdapter

from diffaug.config import LEVERS, Config, parse_config, read_params

REPO = Path(__file__).resolve().parents[1]
RAW = read_params(REPO / "params.yaml")
# Lists that say which generate stages exist (dvc.yaml's matrices); the stages that read them check them only.
MATRIX_LISTS = {"img2img_sets", "prompt_sets"}


def leaves(tree, prefix: str = "") -> dict[str, object]:
    """Dotted key -> value of every leaf (an empty mapping or a list is a leaf)."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    return {k: v for key, value in tree.items() for k, v in leaves(value, f"{prefix}.{key}" if prefix else str(key)).items()}


def defaulted_keys(raw: dict) -> list[str]:
    """Keys whose value a run takes from a code default: in the validated config's dump, not in the YAML. A mixture
    without `filter:` is unfiltered (no value of a setting), and LEVERS change no byte."""
    dumped = leaves(TypeAdapter(Config).dump_python(parse_config(copy.deepcopy(raw)), by_alias=True))
    written = leaves(raw)
    unfiltered = {f"mixtures.{m}.filter" for m, spec in raw["mixtures"].items() if "filter" not in spec}
    return [k for k in dumped if k not in written and k not in unfiltered and k not in LEVERS]


def test_params_yaml_writes_every_key_that_can_change_a_number():
    assert defaulted_keys(RAW) == []


def test_a_key_left_to_its_code_default_is_found():
    raw = copy.deepcopy(RAW)
    del raw["train"]["recipes"]["paper"]["epochs"], raw["train"]["precision"], raw["dataset"]["test"]
    assert defaulted_keys(raw) == ["dataset.test", "train.precision", "train.recipes.paper.epochs"]


def test_every_lever_is_a_key_of_the_schema_that_params_yaml_leaves_out():
    dumped = leaves(TypeAdapter(Config).dump_python(parse_config(copy.deepcopy(RAW)), by_alias=True))
    assert set(LEVERS) <= set(dumped) and not set(LEVERS) & set(leaves(RAW))


def stage_params(folder: Path, params: dict) -> dict[str, set[str]]:
    """Each stage's param keys as dvc resolves dvc.yaml against `params`."""
    from dvc.repo import Repo

    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (folder / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    stages = Repo.init(folder, no_scm=True, force=True).index.stages
    return {s.name: {p for d in s.deps if hasattr(d, "params") for p in d.params} for s in stages}


@pytest.mark.parametrize("recipe", list(RAW["train"]["recipes"]))
def test_every_written_key_is_a_param_of_a_stage(tmp_path, monkeypatch, recipe):
    """So dvc.lock records it and a change reruns what it changes. The train cells depend on the recipe they use."""
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    params = copy.deepcopy(RAW)
    params["train"]["recipe"] = recipe
    deps = stage_params(tmp_path, params)
    tracked = set().union(*deps.values())
    covered = lambda key: any(key == p or key.startswith(f"{p}.") for p in tracked)  # noqa: E731
    other_recipes = tuple(f"train.recipes.{r}." for r in params["train"]["recipes"] if r != recipe)
    untracked = [k for k in leaves(params) if not covered(k) and not k.startswith(other_recipes) and k not in MATRIX_LISTS]
    assert untracked == []
    assert {f"train.recipes.{recipe}", "train.precision", "evaluate.batch_size"} <= deps[f"train@{params['model']}-orig100"]


def test_a_changed_value_shows_in_dvc_params_diff(tmp_path):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    run = lambda *cmd: subprocess.run(cmd, cwd=tmp_path, env=env, check=True, capture_output=True, text=True).stdout  # noqa: E731
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    run("git", "init", "-q")
    run("dvc", "init", "-q")
    run("git", "add", "-A")
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "params")
    text = (tmp_path / "params.yaml").read_text()
    for old, new in (("  precision: bf16 ", "  precision: fp32 "), ("      momentum: 0.9\n", "      momentum: 0.8\n")):
        text = text.replace(old, new, 1)  # the first recipe's momentum: the default recipe's
    (tmp_path / "params.yaml").write_text(text)
    diff = json.loads(run("dvc", "params", "diff", "--json"))["params.yaml"]
    assert diff == {"train.precision": {"old": "bf16", "new": "fp32"},
                    "train.recipes.default.momentum": {"old": 0.9, "new": 0.8, "diff": pytest.approx(-0.1)}}
