"""The pilot: its images are the full set's first images through generate's own sampler, kept in a cache
whose damaged entries are made again; bad candidates and output folders are one line before any model loads."""
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
from diffaug.generate.sampler import Sampler
from diffaug.io import save_npz_atomic
from test_generate import CLASSES
from test_generate import write_inputs as generate_inputs

PER_CLASS, PER_SHARD, BATCH = 6, 4, 3

pytestmark = pytest.mark.usefixtures("one_thread")


def write_inputs(folder: Path, model: Path) -> tuple[Path, Path]:
    return generate_inputs(folder, model, diffusion={"steps": 3, "batch_size": BATCH},
                           synthetic={"images_per_class": PER_CLASS, "images_per_shard": PER_SHARD})


def count_sampled(monkeypatch) -> list[int]:
    """Record how many images each real sampler call makes."""
    calls: list[int] = []
    original = Sampler.run_batch

    def run_batch(self, seeds, prompts, **kwargs):
        calls.append(len(seeds))
        return original(self, seeds, prompts, **kwargs)

    monkeypatch.setattr(Sampler, "run_batch", run_batch)
    return calls


class _Quiet:
    def print(self, *args, **kwargs) -> None:
        pass


DAMAGE = {"flipped byte": lambda b: b[:len(b) // 2] + bytes([b[len(b) // 2] ^ 0xFF]) + b[len(b) // 2 + 1:],
          "truncated": lambda b: b[:len(b) // 2], "empty": lambda b: b""}


def test_pilot_images_are_the_sets_first_images_and_a_damaged_cache_entry_is_made_again(tiny_sd, tmp_path, monkeypatch, capsys):
    params, classes = write_inputs(tmp_path, tiny_sd)
    assert generate_main(["syn1", "--params", str(params), "--classes", str(classes), "--out", str(tmp_path / "set")]) == 0
    pilot.main(["syn1", "--per-class", "2", "--params", str(params), "--classes", str(classes),
                "--prepared", str(tmp_path / "no-data"), "--out", str(tmp_path / "pilot")])
    (row,) = json.loads((tmp_path / "pilot" / "pilot.json").read_text())["candidates"]
    assert row["images"] == 6 and row["full_set_images"] == 18 and row["images_per_s"] > 0 and not row["cached"]
    assert "probe" not in row and "missing" in capsys.readouterr().err  # no classifier here: speed and samples only

    def again():
        cand = pilot.parse_candidates(["syn1"], yaml.safe_load(params.read_text()), "p")[0]
        return pilot.make_pilot(cand, CLASSES, (32, 32), 2, tmp_path / "pilot", tmp_path, _Quiet())

    calls = count_sampled(monkeypatch)
    first = again()
    assert first.cached and calls == [] and first.rate == row["images_per_s"]
    images, labels = storage.load_synthetic(tmp_path / "set")  # other batches: within 1 uint8 level
    wanted = np.concatenate([np.flatnonzero(labels == c)[:2] for c in range(3)])
    assert np.abs(first.images.astype(int) - images[wanted]).max() <= 1 and np.array_equal(first.labels, labels[wanted])
    (entry,) = (tmp_path / "pilot" / "cache").glob("*.npz")
    for damage in DAMAGE.values():
        entry.write_bytes(damage(entry.read_bytes()))
        calls.clear()
        remade = again()
        assert not remade.cached and sum(calls) == 6 and np.array_equal(remade.images, first.images)
        assert again().cached  # and stored again


def bad_run(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_code:
        pilot.main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_code.value.code == 2 and "\n" not in err, err
    return err


def test_an_output_folder_that_cannot_be_written_is_one_line_before_the_model_loads(tiny_sd, tmp_path, capsys, monkeypatch):
    params, classes = write_inputs(tmp_path, tiny_sd)
    monkeypatch.setattr(pilot, "make_pilot", lambda *a, **k: pytest.fail("generated before checking --out"))
    (tmp_path / "a-file").write_text("x")
    for out in (tmp_path / "a-file", tmp_path / "a-file" / "pilot"):
        err = bad_run(capsys, ["syn1", "--params", str(params), "--classes", str(classes), "--out", str(out)])
        assert err.startswith(f"error: --out: {out}: cannot write") and "is a file, not a folder" in err
    assert (tmp_path / "a-file").read_text() == "x"


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
    """Before any model loads: an unknown set, a wrong type, no YAML, an empty value, a key given twice."""
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
    for text, says in (("syn1@steps=", "'steps=' is not key=value with a value"), ("syn1@=3", "'=3' is not key=value"),
                       ("syn1@steps=2,steps=3", "steps given twice; allowed: each key once"),
                       ("syn1@guidance_scale=high", "diffusion.guidance_scale")):
        err = bad_run(capsys, [text, "--params", str(params), "--classes", str(classes)])
        assert err.startswith(f"error: candidate {text!r}: {says}") or says in err, err
