"""benchmarks/train.py --smoke and --sweep --smoke: run on a CPU without dvc/dvclive and append their rows to a
RESULTS.md given on the command line (a tmp file here, never the repository's). The whole-benchmark runs, each a
subprocess of a minute or so, are marked slow (`make test-all`)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED_CIFAR

REPO = Path(__file__).resolve().parents[1]

# Importing dvc or dvclive raises ImportError here, as on a GPU box where they are not installed.
WITHOUT_DVC = ("import runpy, sys; sys.modules['dvclive'] = None; sys.modules['dvc'] = None; "
               "sys.argv = ['benchmarks/train.py'] + sys.argv[1:]; runpy.run_path('benchmarks/train.py', run_name='__main__')")


def run_benchmark(*args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1"}  # quicker on a shared CPU
    done = subprocess.run([sys.executable, "-c", WITHOUT_DVC, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_smoke_times_both_recipes_and_all_architectures(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmarks\n\n## Someone else's table\n\n| a |\n|---|\n| 1 |\n")
    out = run_benchmark("--smoke", "--results", str(results))
    for model in ("resnet18", "resnet34", "resnet50", "vgg16", "densenet121"):
        assert f"ours {model}" in out
    assert "ResNet-18: usual" in out and "x faster" in out
    text = results.read_text()
    assert "## Someone else's table\n\n| a |\n|---|\n| 1 |\n" in text  # other sections are left alone
    rows = [line for line in text.splitlines() if "benchmarks/train.py --smoke" in line]
    assert len(rows) == 1 and rows[0].count("|") == 12 and "smoke" in rows[0]


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CIFAR.is_file(), reason="needs the 5085 real CIFAR-10 images")
def test_smoke_real_check(tmp_path):
    out = run_benchmark("--smoke", "--real-check", "--results", str(tmp_path / "RESULTS.md"))
    assert "real check: ResNet-18 (cifar), default, seed 0, 64 train / 100 val real images, 1 epochs: val acc" in out
    assert "| default | 0 | 64 | 100 | 1 |" in (tmp_path / "RESULTS.md").read_text()


@pytest.mark.slow
def test_sweep_smoke_times_everything_in_one_run(tmp_path):
    results, report = tmp_path / "RESULTS.md", tmp_path / "results" / "train-x.json"
    results.write_text("# Benchmarks\n\n## Someone else's table\n\n| a |\n|---|\n| 1 |\n")
    out = run_benchmark("--sweep", "--smoke", "--results", str(results), "--json-out", str(report))
    data = json.loads(report.read_text())
    rows = data["rows"]
    assert rows[0]["measurement"] == "usual DataLoader + PIL"
    ours = {(r["batch"], r["step"]) for r in rows if r["measurement"] == "ours"}
    assert ours == {(b, s) for b in (4, 8, 16) for s in ("eager", "static path, uncaptured (CPU)")}  # smoke batches
    assert {r["model"] for r in rows if r["measurement"] == "ours, default batch"} == \
        {"resnet18", "resnet34", "resnet50", "vgg16", "densenet121"}
    assert [c["cells"] for c in data["cells"]] == [1, 2] and all(c["images_per_s"] > 0 for c in data["cells"])
    assert all(r["vs_usual"] > 0 for r in rows)
    text = results.read_text()
    assert "## Someone else's table\n\n| a |\n|---|\n| 1 |\n" in text  # other sections are left alone
    sweep_rows = [line for line in text.splitlines() if "benchmarks/train.py --sweep --smoke" in line]
    assert len(sweep_rows) == len(rows) + len(data["cells"]) + len(data["skipped"]) + len(data["real_check"])
    if SHARED_CIFAR.is_file():
        assert len(data["real_check"]) == 1 and "real check: ResNet-18 (cifar), default, seed 0" in out
    else:
        assert any("--real-check" in note for note in data["skipped"])
    assert "sweep done in" in out


@pytest.mark.slow
def test_sweep_time_guard_skips_with_a_note_instead_of_overrunning(tmp_path):
    report = tmp_path / "train.json"
    out = run_benchmark("--sweep", "--smoke", "--budget-s", "0", "--json-out", str(report))
    data = json.loads(report.read_text())
    assert data["rows"] == [] and data["cells"] == [] and data["real_check"] == []
    assert any(note.startswith("skipped the usual recipe: ") for note in data["skipped"])
    assert "skipped ours resnet18 batch 4 eager" in out


DECODER = REPO.parent / "shared" / "data" / "cifar10_jpeg.py"


def tiny_jpeg_set(folder: Path, per_class: int = 15, classes: int = 3) -> Path:
    """The layout of cifar10-50k-train-jpeg.npz (one byte buffer, offsets, labels, classes), small, with the
    real decoder copied beside it."""
    import io
    import shutil

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(classes), per_class)
    blobs = []
    for _ in labels:
        out = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(out, format="JPEG", quality=95)
        blobs.append(np.frombuffer(out.getvalue(), dtype=np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])])
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "cifar10-50k-train-jpeg.npz", jpeg=np.concatenate(blobs), offsets=offsets, labels=labels,
             classes=np.array([f"c{i}" for i in range(classes)]))
    shutil.copy(DECODER, folder / "cifar10_jpeg.py")
    return folder / "cifar10-50k-train-jpeg.npz"


@pytest.mark.skipif(not DECODER.is_file(), reason="needs ../shared/data/cifar10_jpeg.py")
def test_the_jpeg_set_is_decoded_once_and_used_whole(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_train", REPO / "benchmarks" / "train.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    jpeg = tiny_jpeg_set(tmp_path / "data")
    decoded = bench.decoded_50k(jpeg, tmp_path / "cache")
    assert decoded.parent == tmp_path / "cache" and decoded.is_file()
    stamp = decoded.stat().st_mtime_ns
    assert bench.decoded_50k(jpeg, tmp_path / "cache") == decoded and decoded.stat().st_mtime_ns == stamp  # cached
    images, labels, source = bench.benchmark_images(decoded, 45)
    assert images.shape == (45, 32, 32, 3) and source == f"all 45 real images of {decoded.name}"  # not tiled
    assert bench.decoded_50k(tmp_path / "absent.npz", tmp_path / "cache") is None


@pytest.mark.slow
@pytest.mark.skipif(not DECODER.is_file(), reason="needs ../shared/data/cifar10_jpeg.py")
def test_real_check_full_trains_on_the_jpeg_set_minus_a_stratified_holdout(tmp_path):
    jpeg = tiny_jpeg_set(tmp_path / "data")
    out = run_benchmark("--smoke", "--real-check", "--full", "--jpeg", str(jpeg), "--cache-dir", str(tmp_path / "cache"),
                        "--results", str(tmp_path / "RESULTS.md"))
    # smoke: 10 held out per class (500 without --smoke), the rest trains: 3 x 15 - 30
    assert "real check: ResNet-18 (cifar), default, seed 0, 15 train / 30 val real images, 1 epochs: val acc" in out
    assert "| default | 0 | 15 | 30 | 1 |" in (tmp_path / "RESULTS.md").read_text()
