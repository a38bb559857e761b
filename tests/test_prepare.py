"""prepare: splits from npz / imagefolder / CIFAR archives, seeded hold-outs, clear errors offline."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from diffaug.config import parse_config
from diffaug.errors import ConfigError, UserError
from diffaug.formats.splits import Split, load_split
from diffaug.io import load_npz, save_npz_atomic
from diffaug.prepare import hold_out, make_splits

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "cifar10-5k-train.npz"


def dataset_cfg(**kw):
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    base["dataset"].update({"label_names": {}, **kw})
    return parse_config(base).dataset


def toy(path: Path, per_class=(12, 9, 15), size=8):
    rng = np.random.default_rng(0)
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(per_class)])
    images = rng.integers(0, 256, (len(labels), size, size, 3), dtype=np.uint8)
    save_npz_atomic(path, images=images, labels=labels, classes=np.array(["cat", "dog", "maple_tree"]))
    return images, labels


def test_npz_holds_out_test_and_val_per_class_seeded(tmp_path):
    images, labels = toy(tmp_path / "toy.npz")
    cfg = dataset_cfg(name=f"npz:{tmp_path / 'toy.npz'}", test_per_class=3, val_per_class=2)
    train, val, test = make_splits(cfg, tmp_path)
    assert np.bincount(test.labels).tolist() == [3, 3, 3]
    assert np.bincount(val.labels).tolist() == [2, 2, 2]
    assert np.bincount(train.labels).tolist() == [7, 4, 10]
    # disjoint and complete: every original image is in exactly one split
    all_rows = np.concatenate([s.images.reshape(len(s.labels), -1) for s in (train, val, test)])
    assert len(np.unique(all_rows, axis=0)) == len(images)
    again = make_splits(cfg, tmp_path)
    assert all(np.array_equal(a.images, b.images) for a, b in zip((train, val, test), again))
    other = make_splits(dataset_cfg(name=f"npz:{tmp_path / 'toy.npz'}", test_per_class=3, val_per_class=2, split_seed=1), tmp_path)
    assert not np.array_equal(other[2].images, test.images)


def test_hold_out_larger_than_a_class_is_a_clear_error():
    split = Split(np.zeros((5, 2, 2, 3), np.uint8), np.array([0, 0, 0, 1, 1]), ["a", "b"])
    with pytest.raises(UserError, match=r"dataset.test_per_class: 2 leaves no training images of class 'b' \(2 in all\)"):
        hold_out(split, 2, 0, "test")


def test_imagefolder_and_separate_test_split(tmp_path):
    for root, n in (("train", 4), ("test", 2)):
        for c, colour in (("ant", (255, 0, 0)), ("bee", (0, 0, 255))):
            (tmp_path / root / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (6, 6), colour).save(tmp_path / root / c / f"{i}.png")
    cfg = dataset_cfg(name=f"imagefolder:{tmp_path / 'train'}", test=f"imagefolder:{tmp_path / 'test'}")
    train, val, test = make_splits(cfg, tmp_path)
    assert train.classes == ["ant", "bee"] and train.images.shape == (8, 6, 6, 3) and len(val.labels) == 0
    assert test.images.shape == (4, 6, 6, 3)
    assert (train.images[train.labels == 1][..., 2] == 255).all()
    Image.new("RGB", (7, 6)).save(tmp_path / "train" / "bee" / "odd.png")
    with pytest.raises(UserError, match=r"odd.png is 7x6, the first image 6x6"):
        make_splits(cfg, tmp_path)


def test_npz_with_wrong_content_is_rejected_without_unpickling(tmp_path):
    np.savez(tmp_path / "obj.npz", images=np.array([object()], dtype=object), labels=np.zeros(1), classes=np.array(["a"]))
    with pytest.raises(UserError, match="holds pickled Python objects, which are never loaded"):
        make_splits(dataset_cfg(name=f"npz:{tmp_path / 'obj.npz'}"), tmp_path)
    save_npz_atomic(tmp_path / "nolabels.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(UserError, match="lacks labels, classes"):
        make_splits(dataset_cfg(name=f"npz:{tmp_path / 'nolabels.npz'}"), tmp_path)
    with pytest.raises(UserError, match="missing.npz not found"):
        make_splits(dataset_cfg(name=f"npz:{tmp_path / 'missing.npz'}"), tmp_path)


def test_cifar_offline_without_archive_says_where_to_put_it(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    def no_network(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(tvu, "download_url", no_network)
    with pytest.raises(UserError) as err:
        make_splits(dataset_cfg(name="cifar10"), tmp_path / "raw")
    archive, md5 = "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"  # the official archive
    assert f"place the official archive {archive} (md5 {md5}) at {tmp_path / 'raw' / archive}" in str(err.value)
    assert not (tmp_path / "raw").exists()  # a failed download leaves no empty folder behind
    (tmp_path / "raw").mkdir(exist_ok=True)
    (tmp_path / "raw" / archive).write_bytes(b"not the archive")
    with pytest.raises(UserError, match="md5 does not match the official cifar10 archive"):
        make_splits(dataset_cfg(name="cifar10"), tmp_path / "raw")


def test_label_names_must_name_real_classes(tmp_path):
    toy(tmp_path / "toy.npz")
    with pytest.raises(ConfigError, match=r"dataset.label_names.automobile: names no class .*; allowed: cat, dog, maple_tree"):
        make_splits(dataset_cfg(name=f"npz:{tmp_path / 'toy.npz'}", test_per_class=2, label_names={"automobile": "car"}), tmp_path)


@pytest.mark.skipif(not SHARED.exists(), reason="shared CIFAR-10 subset not present")
def test_stage_cli_on_real_cifar_subset(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["dataset"].update({"name": f"npz:{SHARED}", "test_per_class": 100, "val_per_class": 50})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run([sys.executable, "-m", "diffaug.prepare", "--params", "params.yaml", "--out", "data/prepared"],
                   cwd=tmp_path, check=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    out = tmp_path / "data" / "prepared"
    assert json.loads((out / "classes.json").read_text()) == {
        "classes": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"], "image_size": [32, 32]}
    train, test = load_split(out / "train.npz"), load_split(out / "test.npz")
    assert len(train.labels) == 5085 - 1000 - 500 and len(test.labels) == 1000
    assert load_npz(out / "train.npz")["images"].dtype == np.uint8
    splits = json.loads((out / "splits.json").read_text())
    assert splits["source_digest"] == "c5c737b914702698cdece5783088b04be87eaa08947c142cf881032d51a1343e"
