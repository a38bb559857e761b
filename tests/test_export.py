"""Sharing outside the pipeline: `python -m diffaug.export` round-trips through torchvision's ImageFolder
and Hugging Face `datasets`, and `diffaug.load_classifier` gives a ready model."""
import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffaug.errors import UserError
from diffaug.export import export, main, resolve_set
from diffaug.formats import synthetic
from synthetic_sets import write_fake_set

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["airplane", "automobile", "bird"]


@pytest.fixture
def fake_set(tmp_path):
    return write_fake_set(tmp_path / "synthetic" / "syn1", classes=CLASSES, per_class=5, per_shard=4)


def test_imagefolder_round_trip_through_torchvision_with_provenance(fake_set, tmp_path):
    from torchvision.datasets import ImageFolder

    out = export(fake_set, "imagefolder", tmp_path / "export")
    images, labels = synthetic.load_synthetic(fake_set)
    manifest = synthetic.read_manifest(fake_set)
    ds = ImageFolder(str(out))
    assert ds.classes == CLASSES and len(ds) == len(images)
    # ImageFolder sorts files within a class; the file names keep (class, index) order
    for i, (path, label) in enumerate(ds.samples):
        assert label == labels[i]
        assert np.array_equal(np.asarray(ds.loader(path)), images[i])
    with open(out / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["file_name"] for r in rows] == [str(Path(p).relative_to(out)) for p, _ in ds.samples]
    for row, entry in zip(rows, manifest["images"]):
        assert (row["class"], int(row["index"]), row["prompt"], int(row["seed"], 16), int(row["regenerations"])) == \
            (entry["class"], entry["index"], entry["prompt"], entry["seed"], entry["regenerations"])
        assert row["set"] == "syn1" and row["settings_hash"] == manifest["settings_hash"]


def test_parquet_round_trip_through_hugging_face_datasets(tmp_path):
    import datasets

    # real seeds span all of uint64 (they are derived by hashing): these exceed int64
    fake_set = write_fake_set(tmp_path / "synthetic" / "syn1", classes=CLASSES, per_class=5, per_shard=4, first_seed=2**64 - 20)
    out = export(fake_set, "parquet", tmp_path / "export")
    images, labels = synthetic.load_synthetic(fake_set)
    manifest = synthetic.read_manifest(fake_set)
    ds = datasets.load_dataset("parquet", data_files=str(out / "syn1.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds.features["label"].names == CLASSES
    assert len(ds) == len(images)
    for i, row in enumerate(ds):
        assert np.array_equal(np.asarray(row["image"].convert("RGB")), images[i])
        entry = manifest["images"][i]
        assert row["label"] == labels[i] and row["class"] == entry["class"] == CLASSES[labels[i]]
        assert (row["index"], row["prompt"], row["seed"], row["regenerations"], row["flagged"]) == \
            (entry["index"], entry["prompt"], entry["seed"], entry["regenerations"], entry["flagged"])
        assert row["set"] == "syn1" and row["settings_hash"] == manifest["settings_hash"]
    assert ds.features["seed"] == datasets.Value("uint64") and ds[0]["seed"] == 2**64 - 20


def test_imagefolder_export_also_loads_in_hugging_face_imagefolder(tmp_path):
    import datasets

    # real seeds span all of uint64 (they are derived by hashing): these exceed the int64 CSV readers assume
    fake_set = write_fake_set(tmp_path / "synthetic" / "syn1", classes=CLASSES, per_class=5, per_shard=4, first_seed=2**64 - 20)
    out = export(fake_set, "imagefolder", tmp_path / "export")
    ds = datasets.load_dataset("imagefolder", data_dir=str(out), split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert len(ds) == 15 and {"image", "prompt", "seed", "settings_hash"} <= set(ds.column_names)
    assert sorted(int(s, 16) for s in ds["seed"]) == sorted(e["seed"] for e in synthetic.read_manifest(fake_set)["images"])


def test_output_is_all_or_nothing_and_never_overwritten_silently(fake_set, tmp_path, monkeypatch):
    out = tmp_path / "export"
    export(fake_set, "imagefolder", out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(UserError, match=r"export: already exists; pass --force"):
        export(fake_set, "parquet", out)
    # a crash half way leaves the old export and no temporary folder behind
    monkeypatch.setattr("diffaug.export.write_parquet", lambda tmp, *a: ((tmp / "half.parquet").write_bytes(b"PAR1"), 1 / 0))
    with pytest.raises(ZeroDivisionError):
        export(fake_set, "parquet", out, force=True)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    monkeypatch.undo()
    export(fake_set, "parquet", out, force=True)
    assert [p.name for p in out.iterdir()] == ["syn1.parquet"]


def test_unknown_set_and_bad_format_are_one_line_errors(fake_set, tmp_path, capsys):
    assert resolve_set("syn1", fake_set.parent) == fake_set
    with pytest.raises(UserError, match=r"^syn3: unknown set .*; allowed: syn1$"):
        resolve_set("syn3", fake_set.parent)
    for argv in (["syn3", "--synthetic", str(fake_set.parent), "--format", "parquet", "--out", str(tmp_path / "o")],
                 ["syn1", "--synthetic", str(fake_set.parent), "--format", "csv", "--out", str(tmp_path / "o")]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_a_modified_shard_is_refused_before_anything_is_written(fake_set, tmp_path):
    shard = fake_set / "shard-00000.npz"
    data = bytearray(shard.read_bytes())
    data[-100] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError, match="sha256 differs"):
        export(fake_set, "parquet", tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_load_classifier_from_outside_the_pipeline(tmp_path):
    """In a fresh interpreter: import diffaug loads no torch; load_classifier gives an eval-mode module
    that normalises its own uint8 input and matches the training-side model's logits."""
    from diffaug.formats.classifier import ImageClassifier, save_trained
    from diffaug.models import build_model

    torch.manual_seed(0)
    net = build_model("resnet18", "cifar", 3)
    model = ImageClassifier(net, torch.tensor([120.0, 110.0, 100.0]), torch.tensor([60.0, 55.0, 50.0])).eval()
    meta = {"model": "resnet18", "variant": "cifar", "num_classes": 3, "classes": CLASSES, "epochs": 1, "settings": {}}
    save_trained(tmp_path / "seed-0.pt", model, meta)
    pixels = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(pixels)
    torch.save(pixels, tmp_path / "pixels.pt")
    script = f"""
import sys, torch
import diffaug
light = "diffaug.formats.classifier" not in sys.modules
m = diffaug.load_classifier({str(tmp_path / 'seed-0.pt')!r})
assert isinstance(m, torch.nn.Module) and not m.training
with torch.no_grad():
    out = m(torch.load({str(tmp_path / 'pixels.pt')!r}))
torch.save(out, {str(tmp_path / 'out.pt')!r})
print(light, m.classes, m.meta["model"])
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "True" and "['airplane', 'automobile', 'bird'] resnet18" in proc.stdout
    assert torch.allclose(torch.load(tmp_path / "out.pt"), expected, atol=1e-5)
    light = subprocess.run([sys.executable, "-c", "import sys, diffaug; print('torch' in sys.modules)"],
                           capture_output=True, text=True)
    assert light.stdout.strip() == "False"


def test_load_classifier_names_a_broken_file_in_one_line(tmp_path):
    import diffaug

    (tmp_path / "seed-0.pt").write_bytes(b"not a model")
    with pytest.raises(UserError, match=r"seed-0.pt: not a trained-model file"):
        diffaug.load_classifier(tmp_path / "seed-0.pt")
