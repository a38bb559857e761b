"""The package's shape, read from its import graph: stages side by side, formats below them, and
dvc.yaml deps that cover the code every stage runs (a missed dep means stale results DVC cannot see).
"""
import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = SRC / "diffaug"

STAGES = ("diffaug.prepare", "diffaug.generate", "diffaug.mixtures", "diffaug.filtering", "diffaug.train", "diffaug.evaluate",
          "diffaug.report", "diffaug.export")
# Imported by stages but deliberately not dvc.yaml deps: none of them decides a result's bytes.
UNLISTED = {
    "diffaug": "the package marker: a docstring and a version string",
    "diffaug.config": "params are deps of their own (each stage lists the params it reads); the schema "
                      "only validates them, and listing it would retrain the grid on every new knob",
    "diffaug.formats": "the formats package marker: a docstring",
    "diffaug.cli": "the shared --params/--prepared/--synthetic arguments: paths, never results",
    "diffaug.errors": "one-line error types: they decide messages, never outputs",
    "diffaug.io": "atomic writes and hashes: they decide how a file is written, never what is in it",
    "diffaug.devices": "picks cpu/cuda from the params' device value, which the stages record",
}


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """diffaug modules imported anywhere in `name` (top level or inside functions), as module names."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in MODULES)
    # importing a.b.c runs a/__init__ and a/b/__init__ first
    return {parent for t in found for parent in _with_parents(t)} - {name}


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in MODULES]


def closure(start: str) -> set[str]:
    seen, todo = set(), [m for m in _with_parents(start)]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(imports_of(m))
    return seen


def stage_of(module: str) -> str | None:
    return next((s for s in STAGES if module == s or module.startswith(s + ".")), None)


def test_no_stage_imports_another_stage():
    offenders = [(m, i) for m in MODULES for i in imports_of(m)
                 if stage_of(m) and stage_of(i) and stage_of(m) != stage_of(i)]
    assert not offenders, f"stage modules importing other stages: {offenders}"


@pytest.mark.parametrize("layer", ["diffaug.formats", "diffaug.models", "diffaug.config"])
def test_lower_layers_import_no_stage(layer):
    offenders = [(m, i) for m in MODULES if m.startswith(layer) for i in imports_of(m) if stage_of(i)]
    assert not offenders, f"{layer} reaches up into a stage: {offenders}"


def test_no_stage_depends_on_the_sandbox():
    for stage in STAGES:
        assert not [m for m in closure(stage) if m.startswith("diffaug.sandbox")], stage


def dvc_stages() -> dict[str, dict]:
    """dvc.yaml's stages with the `python -m diffaug.X` module each runs (matrix stages once)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        words = stage["cmd"].split()
        module = words[words.index("-m") + 1]
        if f"{module}.__main__" in MODULES:  # `python -m package` runs package/__main__.py
            module = f"{module}.__main__"
        out[name] = {"module": module, "deps": [str(d) for d in stage.get("deps", [])]}
    return out


@pytest.mark.parametrize("stage", list(dvc_stages()))
def test_dvc_deps_cover_the_code_each_stage_runs(stage):
    info = dvc_stages()[stage]
    deps = [REPO / d for d in info["deps"] if d.startswith("src/")]
    missing = []
    for module in sorted(closure(info["module"])):
        if module in UNLISTED or module.startswith("diffaug.config."):
            continue
        path = MODULES[module]
        if not any(path == d or d in path.parents for d in deps):
            missing.append(str(path.relative_to(REPO)))
    assert not missing, f"dvc.yaml stage {stage} runs {missing} but does not list them in its deps"


def test_the_deps_check_catches_a_missing_dep(monkeypatch):
    """Remove one dep the train stage needs and the check must fail: it is not vacuous."""
    real = dvc_stages()
    broken = {k: dict(v) for k, v in real.items()}
    broken["train"]["deps"] = [d for d in real["train"]["deps"] if d != "src/diffaug/formats/mixture.py"]
    monkeypatch.setattr(__import__(__name__), "dvc_stages", lambda: broken)
    with pytest.raises(AssertionError, match="formats/mixture.py"):
        test_dvc_deps_cover_the_code_each_stage_runs("train")


def test_every_unlisted_helper_exists():
    assert set(UNLISTED) <= set(MODULES)


def test_shared_stage_bodies_resolve_to_each_stages_own_paths_and_params(tmp_path, monkeypatch):
    """dvc.yaml writes the generate and train bodies once (YAML merge keys, stage `vars`); dvc's own resolver
    must still give every stage its own set, mixture file and params, as if each were written out."""
    from dvc.repo import Repo

    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["synthetic"]["sets"].update(syn3={"prompt": "a sketch of a {label}"}, i2i={"kind": "img2img"})
    params["mixtures"]["conf"] = {"orig": 0.5, "syn1": 0.5, "filter": {"keep_fraction": 0.5}}
    params.update(prompt_sets=["syn3"], img2img_sets=["i2i"], filtered_mixes=["conf"])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    stages = {s.name: s for s in Repo.init(tmp_path, no_scm=True).index.stages}
    deps = {name: {d.def_path for d in s.deps if not hasattr(d, "params")} for name, s in stages.items()}
    params_of = {name: {p for d in s.deps if hasattr(d, "params") for p in d.params} for name, s in stages.items()}
    for name, set_name in (("generate_syn1", "syn1"), ("generate_syn2", "syn2"), ("generate_prompt@syn3", "syn3"), ("generate_img2img@i2i", "i2i")):
        assert stages[name].cmd.startswith(f"python -m diffaug.generate {set_name} ") and f"synthetic.sets.{set_name}" in params_of[name]
        assert [o.def_path for o in stages[name].outs] == [f"data/synthetic/{set_name}"] and stages[name].outs[0].persist
    assert "data/prepared/train.npz" in deps["generate_img2img@i2i"] and "data/prepared/train.npz" not in deps["generate_syn1"]
    assert "synthetic.images_per_class" in params_of["generate_syn1"] and "synthetic.images_per_class" not in params_of["generate_img2img@i2i"]
    assert "data/mixtures/orig100.npz" in deps["train@resnet18-orig100"] and "--mixture data/mixtures/orig100.npz" in stages["train@resnet18-orig100"].cmd
    assert "data/filtered/conf.npz" in deps["train_filtered@resnet18-conf"] and "--mixture data/filtered/conf.npz" in stages["train_filtered@resnet18-conf"].cmd
    assert deps["train@resnet18-orig100"] - {"data/mixtures/orig100.npz"} == deps["train_filtered@resnet18-conf"] - {"data/filtered/conf.npz"}
    assert {n.split("@")[0] for n in stages} == {"prepare", "generate_syn1", "generate_syn2", "generate_prompt", "generate_img2img",
                                                 "build_mixtures", "filter", "train", "train_filtered", "evaluate"}
