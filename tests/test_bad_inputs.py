"""Every reader turns every way its file can be broken into one UserError line naming the file.

Broken-file classes, for each format: missing, empty, truncated, bit-flipped, wrong type (text,
random bytes, pickled objects, wrong keys/dtypes). Plus params that used to pass silently: non-finite
numbers, duplicate keys, seeds, labels and class names that cannot be right.
"""
import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from diffaug.config import load_config, parse_config
from diffaug.errors import ConfigError, UserError
from diffaug.formats.classifier import ImageClassifier, load_trained, save_trained
from diffaug.formats.mixture import MixtureIndex, read_mixture, write_mixture
from diffaug.formats.splits import Split, load_split, read_classes, save_split, write_classes
from diffaug.io import save_npz_atomic
from diffaug.models import build_model
from diffaug.prepare import load_source
from diffaug.prepare import main as prepare_main

REPO = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
CLASSES = ["cat", "dog", "owl"]


def one_line(err: pytest.ExceptionInfo, path: Path | str) -> str:
    message = str(err.value)
    assert "\n" not in message and str(path) in message, message
    return message


# ----------------------------------------------------------------------------- how files break
def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10  # the middle of the file: array or tensor bytes, covered by a checksum
    path.write_bytes(bytes(data))


BREAKAGES = {
    "missing": lambda p: p.unlink(),
    "empty": lambda p: p.write_bytes(b""),
    "truncated": truncate,
    "bit-flipped": flip_bit,
    "text": lambda p: p.write_text("images,labels\n1,2\n"),
    "random bytes": lambda p: p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()),
}


def a_split(n_per_class: int = 4, size: int = 8) -> Split:
    labels = np.repeat(np.arange(len(CLASSES)), n_per_class)
    images = np.random.default_rng(0).integers(0, 256, (len(labels), size, size, 3), dtype=np.uint8)
    return Split(images, labels, CLASSES)


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_split_reader(tmp_path, breakage):
    path = tmp_path / "train.npz"
    save_split(path, a_split())
    BREAKAGES[breakage](path)
    with pytest.raises(UserError) as err:
        load_split(path)
    assert "rerun the prepare stage" in one_line(err, path)


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_user_npz_dataset(tmp_path, breakage):
    path = tmp_path / "mine.npz"
    split = a_split()
    save_npz_atomic(path, images=split.images, labels=split.labels, classes=np.array(CLASSES))
    BREAKAGES[breakage](path)
    with pytest.raises(UserError) as err:
        load_source(f"npz:{path}", "dataset.name", tmp_path)
    assert one_line(err, path).startswith("dataset.name: ")


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_mixture_reader(tmp_path, breakage):
    path = tmp_path / "orig100.npz"
    write_mixture(path, MixtureIndex(np.zeros(3, np.uint8), np.arange(3), np.arange(3), ["orig"], CLASSES, ["orig"], ["d"]))
    assert read_mixture(path).row.tolist() == [0, 1, 2]
    BREAKAGES[breakage](path)
    with pytest.raises(UserError) as err:
        read_mixture(path)
    assert "build_mixtures" in one_line(err, path)


@pytest.mark.parametrize("breakage", ["missing", "empty", "truncated", "text"])
def test_classes_json_reader(tmp_path, breakage):
    path = tmp_path / "classes.json"
    write_classes(path, CLASSES, (8, 8))
    assert read_classes(path) == (CLASSES, (8, 8))
    BREAKAGES[breakage](path)
    with pytest.raises(UserError) as err:
        read_classes(path)
    one_line(err, path)


@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory):
    torch.manual_seed(0)
    model = ImageClassifier(build_model("resnet18", "cifar", 3), torch.zeros(3), torch.ones(3))
    path = tmp_path_factory.mktemp("models") / "seed-0.pt"
    save_trained(path, model, {"model": "resnet18", "variant": "cifar", "num_classes": 3, "classes": CLASSES,
                               "epochs": 1, "settings": {"channels_last": False}})
    return path


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_classifier_reader(classifier_file, tmp_path, breakage):
    path = tmp_path / "seed-0.pt"
    path.write_bytes(classifier_file.read_bytes())
    load_trained(path)  # intact: loads
    BREAKAGES[breakage](path)
    with pytest.raises(UserError) as err:
        load_trained(path)
    one_line(err, path)


def test_classifier_with_non_finite_weights_is_neither_saved_nor_loaded(classifier_file, tmp_path):
    model, meta = load_trained(classifier_file)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(ValueError, match="nan/inf"):
        save_trained(tmp_path / "nan.pt", model, meta)
    assert not (tmp_path / "nan.pt").exists()
    # a file written by other means (no content hash) is still refused when it holds nan
    saved = torch.load(classifier_file, weights_only=True)
    saved["state_dict"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in saved["state_dict"].items()}
    del saved["state_sha256"]
    torch.save(saved, tmp_path / "nan.pt")
    with pytest.raises(UserError, match=r"hold nan/inf \(first: \S+\); the run diverged"):
        load_trained(tmp_path / "nan.pt")


def test_pickled_objects_are_refused_without_unpickling(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, images=np.array([object()], dtype=object), labels=np.zeros(1), classes=np.array(CLASSES))
    with pytest.raises(UserError, match="holds pickled Python objects, which are never loaded"):
        load_split(path)


@pytest.mark.parametrize("labels, message", [
    (np.array(["cat", "dog", "owl"] * 4), "'labels' are <U3; allowed: integer class indices 0..2"),
    (np.repeat(np.arange(3.0), 4), "'labels' are float64; allowed: integer class indices 0..2"),
    (np.repeat(np.arange(3), 4) + 1, "'labels' must lie in 0..2 (3 classes); got 1..3"),
    (np.zeros(5, np.int64), "'labels' has shape (5,); allowed: (12,), one per image"),
])
def test_labels_that_cannot_be_class_indices(tmp_path, labels, message):
    path = tmp_path / "mine.npz"
    np.savez(path, images=a_split().images, labels=labels, classes=np.array(CLASSES))
    with pytest.raises(UserError) as err:
        load_source(f"npz:{path}", "dataset.name", tmp_path)
    assert message in one_line(err, path)


def test_duplicate_class_names(tmp_path):
    path = tmp_path / "mine.npz"
    np.savez(path, images=a_split().images, labels=a_split().labels, classes=np.array(["cat", "dog", "cat"]))
    with pytest.raises(UserError, match="'classes' lists 'cat' more than once; allowed: distinct class names"):
        load_source(f"npz:{path}", "dataset.name", tmp_path)


def test_image_folder_with_an_empty_class_or_an_unreadable_image(tmp_path):
    root = tmp_path / "folder"
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / name / "a.png")
    (root / "zebra").mkdir()
    with pytest.raises(UserError) as err:
        load_source(f"imagefolder:{root}", "dataset.name", tmp_path)
    assert "zebra holds no image" in one_line(err, root / "zebra")
    (root / "zebra").rmdir()
    (root / "owl" / "b.png").write_text("not a png")
    with pytest.raises(UserError) as err:
        load_source(f"imagefolder:{root}", "dataset.name", tmp_path)
    assert "is not a readable image" in one_line(err, root / "owl" / "b.png")


# ----------------------------------------------------------------------------- params
@pytest.mark.parametrize("key, value", [
    ("diffusion.guidance_scale", float("inf")), ("diffusion.guidance_scale", float("nan")),
    ("train.recipes.default.lr", float("inf")), ("train.recipes.default.weight_decay", float("inf")),
    ("train.recipes.default.momentum", float("nan")), ("mixtures.orig50.orig", float("nan")),
])
def test_non_finite_numbers_are_rejected(key, value):
    params = copy.deepcopy(PARAMS)
    *path, leaf = key.split(".")
    target = params
    for part in path:
        target = target[part]
    target[leaf] = value
    with pytest.raises(ConfigError, match=re.escape(f"{key}: Input should be a finite number (got {value!r})")):
        parse_config(params)


@pytest.mark.parametrize("key", ["dataset.split_seed", "mixture_seed", "diffusion.seed", "train.seeds"])
@pytest.mark.parametrize("value", [-1, 2**32])
def test_one_rule_for_every_seed(key, value):
    params = copy.deepcopy(PARAMS)
    *path, leaf = key.split(".")
    target = params
    for part in path:
        target = target[part]
    target[leaf] = [value] if leaf == "seeds" else value
    shown = f"{key}[0]" if leaf == "seeds" else key
    bound = "greater than or equal to 0" if value < 0 else "less than or equal to 4294967295"
    with pytest.raises(ConfigError, match=re.escape(f"{shown}: Input should be {bound} (got {value})")):
        parse_config(params)


def test_duplicate_keys_in_params_yaml(tmp_path):
    text = (REPO / "params.yaml").read_text().replace("  steps: 50\n", "  steps: 50\n  steps: 20\n", 1)
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r'params.yaml: not valid YAML at line \d+ \(found duplicate key "steps" with value "20" \(original value: "50"\)\)$'):
        load_config(tmp_path / "params.yaml")


def test_a_broken_dataset_stops_prepare_with_exit_2_and_writes_nothing(tmp_path, monkeypatch, capsys):
    split = a_split()
    data = tmp_path / "mine.npz"
    save_npz_atomic(data, images=split.images, labels=split.labels, classes=np.array(CLASSES))
    truncate(data)
    params = copy.deepcopy(PARAMS)
    params["dataset"].update(name=f"npz:{data}", test_per_class=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        prepare_main(["--params", "params.yaml", "--out", "prepared"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert len(lines) == 1 and lines[0].startswith(f"error: dataset.name: {data}: truncated or corrupt .npz"), lines
    assert not (tmp_path / "prepared").exists()


# ----------------------------------------------------------------------------- synthetic sets
@pytest.fixture
def synthetic_set(tmp_path):
    from diffaug.formats import synthetic

    layout = synthetic.SetLayout(set_name="syn1", classes=tuple(CLASSES), image_size=(8, 8), images_per_class=2,
                                 images_per_shard=4, settings={"save_full_resolution": False}, settings_hash="h")
    out = tmp_path / "syn1"
    out.mkdir()
    rng = np.random.default_rng(0)
    for k in range(layout.num_shards):
        n = len(layout.shard_range(k))
        synthetic.write_shard(out, k, layout, images=rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
                              seeds=np.arange(n, dtype=np.uint64), regenerations=np.zeros(n, np.int64),
                              flagged=np.zeros(n, bool), device="cpu")
    assert synthetic.assemble(out, layout, ["a photo"] * layout.num_images, lone_process=True) is not None
    assert synthetic.load_synthetic(out)[0].shape == (6, 8, 8, 3)
    return out


@pytest.mark.parametrize("breakage", list(BREAKAGES) + ["json without keys"])
def test_synthetic_manifest_reader(synthetic_set, breakage):
    from diffaug.formats.synthetic import load_synthetic, synthetic_digest

    path = synthetic_set / "manifest.json"
    if breakage == "json without keys":
        path.write_text('{"format": "diffaug-synthetic/1"}')
    else:
        BREAKAGES[breakage](path)
    for reader in (load_synthetic, synthetic_digest):
        with pytest.raises(UserError) as err:
            reader(synthetic_set)
        assert "rerun the generate stage" in one_line(err, path)


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_synthetic_shard_reader(synthetic_set, breakage):
    from diffaug.formats.synthetic import load_synthetic

    path = synthetic_set / "shard-00001.npz"
    BREAKAGES[breakage](path)
    with pytest.raises(UserError) as err:
        load_synthetic(synthetic_set)
    assert "rerun the generate stage" in one_line(err, path)
