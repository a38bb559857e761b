"""The pilot: its images are the full set's first images, byte for byte, and the full run does not make them again."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import diffaug.pilot as pilot
from diffaug.formats import synthetic as storage
from diffaug.generate.__main__ import main as generate_main
from diffaug.generate.plan import build_plan
from diffaug.generate.reuse import pilot_batches
from diffaug.generate.sampler import Sampler
from diffaug.io import save_npz_atomic
from diffaug.sandbox.tiny import tiny_diffusion_params

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["airplane", "automobile", "bird"]
PER_CLASS, PER_SHARD, BATCH = 6, 4, 3  # classes straddle shards and batches: the hard case for reuse

pytestmark = pytest.mark.usefixtures("one_thread")


def write_inputs(folder: Path, model: Path) -> tuple[Path, Path]:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["diffusion"] = {**tiny_diffusion_params(model), "batch_size": BATCH}
    params["synthetic"].update({"images_per_class": PER_CLASS, "images_per_shard": PER_SHARD})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    (folder / "classes.json").write_text(json.dumps({"classes": CLASSES, "image_size": [32, 32]}))
    return folder / "params.yaml", folder / "classes.json"


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def count_sampled(monkeypatch) -> list[int]:
    """Record how many images each real sampler call makes."""
    calls: list[int] = []
    original = Sampler.run_batch

    def run_batch(self, seeds, prompts, **kwargs):
        calls.append(len(seeds))
        return original(self, seeds, prompts, **kwargs)

    monkeypatch.setattr(Sampler, "run_batch", run_batch)
    return calls


def test_pilot_batches_are_the_full_runs_first_batches(tiny_sd, tmp_path):
    from diffaug.config import load_config

    params, _ = write_inputs(tmp_path, tiny_sd)
    plan = build_plan(load_config(params), "syn1", CLASSES, (32, 32), "fingerprint")
    wanted = {c * PER_CLASS + i for c in range(3) for i in range(2)}  # 0, 1, 6, 7, 12, 13
    # shards [0-3] [4-7] [8-11] [12-15] [16-17], cut into batches of 3 from each shard's start
    assert pilot_batches(plan, wanted, BATCH) == [[(0, 0), (1, 0), (2, 0)], [(4, 0), (5, 0), (6, 0)], [(7, 0)],
                                                  [(12, 0), (13, 0), (14, 0)]]


def test_a_pilot_then_the_full_set_equals_the_full_set_alone(tiny_sd, tmp_path, monkeypatch, capsys):
    params, classes = write_inputs(tmp_path, tiny_sd)
    common = ["syn1", "--params", str(params), "--classes", str(classes)]
    assert generate_main([*common, "--out", str(tmp_path / "alone"), "--reuse", str(tmp_path / "no-pilot")]) == 0

    pilot.main(["syn1", "--per-class", "2", "--params", str(params), "--classes", str(classes),
                "--prepared", str(tmp_path / "no-data"), "--out", str(tmp_path / "pilot")])
    report = json.loads((tmp_path / "pilot" / "pilot.json").read_text())
    (row,) = report["candidates"]
    assert row["made"] == 10 and row["images"] == 6 and row["full_set_images"] == 18 and row["images_per_s"] > 0
    assert "probe" not in row and "missing" in capsys.readouterr().err  # no classifier here: speed and samples only

    calls = count_sampled(monkeypatch)
    assert generate_main([*common, "--out", str(tmp_path / "after"), "--reuse", str(tmp_path / "pilot")]) == 0
    assert sum(calls) == 18 - 10  # only the images the pilot did not make
    assert files(tmp_path / "after") == files(tmp_path / "alone")

    # and the pilot's images are the set's first images of each class, byte for byte
    images, labels = storage.load_synthetic(tmp_path / "alone")
    first = np.concatenate([np.flatnonzero(labels == c)[:2] for c in range(3)])
    cached = pilot.make_pilot(pilot.parse_candidates(["syn1"], yaml.safe_load(params.read_text()), "p")[0], CLASSES, (32, 32),
                              2, tmp_path / "pilot", tmp_path, _Quiet())
    assert cached.reused == 10 and np.array_equal(cached.images, images[first])


class _Quiet:
    def print(self, *args, **kwargs) -> None:
        pass


def test_a_batch_made_with_other_levers_is_not_reused(tiny_sd, tmp_path, monkeypatch):
    params, classes = write_inputs(tmp_path, tiny_sd)
    pilot.main(["syn1", "--per-class", "1", "--params", str(params), "--classes", str(classes),
                "--prepared", str(tmp_path / "no-data"), "--out", str(tmp_path / "pilot")])
    data = yaml.safe_load(params.read_text())
    data["diffusion"]["batch_size"] = 2  # other batches: other bytes, so nothing may be read back
    params.write_text(yaml.safe_dump(data))
    calls = count_sampled(monkeypatch)
    assert generate_main(["syn1", "--params", str(params), "--classes", str(classes), "--out", str(tmp_path / "out"),
                          "--reuse", str(tmp_path / "pilot")]) == 0
    assert sum(calls) == 18


def test_candidates_are_scored_and_ranked(tiny_sd, tmp_path):
    from diffaug.formats.classifier import ImageClassifier, save_trained
    from diffaug.models import build_model

    params, classes = write_inputs(tmp_path, tiny_sd)
    rng = np.random.default_rng(0)
    save_npz_atomic(tmp_path / "prepared" / "train.npz", images=rng.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8),
                    labels=np.repeat(np.arange(3), 20), classes=np.array(CLASSES))
    torch.manual_seed(0)
    model = ImageClassifier(build_model("resnet18", "cifar", 3), torch.full((3,), 120.0), torch.full((3,), 60.0))
    save_trained(tmp_path / "orig100.pt", model, {"model": "resnet18", "variant": "cifar", "num_classes": 3, "classes": CLASSES,
                                                  "epochs": 1, "settings": {}})
    pilot.main(["syn1", "syn2@guidance_scale=2.0", "--per-class", "5", "--params", str(params), "--classes", str(classes),
                "--prepared", str(tmp_path / "prepared"), "--classifier", str(tmp_path / "orig100.pt"),
                "--out", str(tmp_path / "pilot"), "--gpu-hour-price", "2.5"])
    report = json.loads((tmp_path / "pilot" / "pilot.json").read_text())
    rows = report["candidates"]
    assert {r["candidate"] for r in rows} == {"syn1", "syn2@guidance_scale=2.0"}
    for r in rows:
        assert r["images"] == 15 and 0 <= r["probe"] <= 1 and 0 <= r["recognised"] <= 1 and r["fd"] > 0
        assert {"kid", "kid_se", "precision", "recall", "per_class", "eta", "cost"} <= set(r)
    assert [r["probe"] for r in rows] == sorted((r["probe"] for r in rows), reverse=True)
    assert "| 1 | " in (tmp_path / "pilot" / "pilot.md").read_text()
    assert (tmp_path / "pilot" / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_bad_candidate_is_one_line(tmp_path, capsys):
    params, classes = write_inputs(tmp_path, tmp_path / "no-model")
    with pytest.raises(SystemExit) as exit_code:
        pilot.main(["syn9", "--params", str(params), "--classes", str(classes)])
    assert exit_code.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "candidate 'syn9': no set 'syn9' under synthetic.sets" in err
    with pytest.raises(SystemExit):
        pilot.main(["syn1@steps=many", "--params", str(params), "--classes", str(classes)])
    assert "diffusion.steps" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_code:  # a value that is no YAML at all
        pilot.main(["syn1@steps=[", "--params", str(params), "--classes", str(classes)])
    err = capsys.readouterr().err.strip()
    assert exit_code.value.code == 2 and "\n" not in err and err.startswith("error: candidate 'syn1@steps=[': steps: not valid YAML"), err
