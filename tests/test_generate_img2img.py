"""img2img sets (SDEdit / DA-Fusion) on the tiny random Stable Diffusion pipeline (CPU, seconds).

Determinism and resume, provenance back to the real source image (and parity with diffusers'
StableDiffusionImg2ImgPipeline on the same components), no val/test image as a source, strength lists
cycling, only int(steps * strength) steps run and the cost estimate says so, one-line errors.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from PIL import Image

from diffaug.config import load_config, parse_config
from diffaug.formats import synthetic as storage
from diffaug.formats.splits import Split, load_split, save_split
from diffaug.generate.__main__ import main
from diffaug.generate.plan import build_plan, check_cpu_cost, image_flops, steps_note
from diffaug.generate.sampler import upsample
from diffaug.io import sha256_file
from diffaug.sandbox.tiny import tiny_diffusion_params

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["airplane", "automobile", "bird"]
REAL_PER_CLASS = 5  # training images per class; img2img makes one per real image by default
STRENGTHS = [0.5, 1.0]

pytestmark = pytest.mark.usefixtures("one_thread")


def real_splits(folder: Path) -> Path:
    """data/prepared-like train/val/test splits whose images are all distinct, and classes.json."""
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True, exist_ok=True)
    for name, per_class in (("train", REAL_PER_CLASS), ("val", 2), ("test", 3)):
        labels = np.repeat(np.arange(len(CLASSES)), per_class)[rng.permutation(len(CLASSES) * per_class)]
        images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
        save_split(folder / f"{name}.npz", Split(images, labels, CLASSES))
    (folder / "classes.json").write_text(json.dumps({"classes": CLASSES, "image_size": [32, 32]}))
    return folder


def write_params(folder: Path, model: Path, *, spec: dict | None = None, diffusion: dict | None = None,
                 synthetic: dict | None = None) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["diffusion"] = {**tiny_diffusion_params(model), "steps": 8, "batch_size": 3, **(diffusion or {})}
    params["synthetic"].update({"images_per_shard": 4, **(synthetic or {})})
    params["synthetic"]["sets"]["i2i"] = {"kind": "img2img", "strength": STRENGTHS, "prompt": "a photo of a {label}",
                                          **(spec or {})}
    params["img2img_sets"] = ["i2i"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    return folder / "params.yaml"


def args(params: Path, prepared: Path, out: Path, train: str | None = "train.npz", set_name: str = "i2i") -> list[str]:
    extra = ["--train", str(prepared / train)] if train is not None else []
    return [set_name, "--params", str(params), "--classes", str(prepared / "classes.json"), "--out", str(out), *extra]


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def digest(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()[:16]


@pytest.fixture(scope="module")
def world(tiny_sd, tmp_path_factory):
    """An uninterrupted img2img run: {params, prepared, out}."""
    root = tmp_path_factory.mktemp("img2img")
    prepared = real_splits(root / "prepared")
    params = write_params(root, tiny_sd)
    out = root / "out"
    assert main(args(params, prepared, out)) == 0
    return {"params": params, "prepared": prepared, "out": out, "root": root, "model": tiny_sd}


# ----------------------------------------------------------------------------- syn1 / syn2 unchanged
def test_syn1_and_syn2_keep_their_settings_hash_and_seeds():
    """Computed with the code before sets had names and kinds (commit 0385e9e), default params.yaml:
    the paper's sets keep their bytes, so no finished shard of theirs is thrown away."""
    cfg = load_config(REPO / "params.yaml")
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    fingerprint = "hub-commit:133a221b8aa7292a167afc5127cb63fb5005638b"
    expected = {
        "syn1": ("88130d58cbd196a06ff231b6f5b08d38a54920694621d483a49a8f69b763bce8",
                 12227265591354761317, 2681500710518422399, 8147900244753082109, "car"),
        "syn2": ("b0d6d7f03397a72a0444ad6d964a292b69d604aa08df6d3d14bcced38cd461b4",
                 5490960349371238916, 15821937227666828660, 5689879541457027022, "a photo of a car"),
    }
    for name, (settings_hash, first, last, regenerated, prompt) in expected.items():
        plan = build_plan(cfg, name, classes, (32, 32), fingerprint)
        assert plan.settings_hash == settings_hash, name
        assert (plan.seed(0), plan.seed(49_999), plan.seed(12_345, 1), plan.prompt(5000)) == (first, last, regenerated, prompt)
        assert plan.num_shards == 50 and plan.kind == "prompt" and plan.image_extras() is None


# ----------------------------------------------------------------------------- determinism and resume
def test_two_runs_give_identical_bytes(world, tmp_path):
    again = tmp_path / "again"
    assert main(args(world["params"], world["prepared"], again)) == 0
    assert files(again) == files(world["out"])


def test_interrupted_between_shards_then_resumed_equals_uninterrupted(world, tmp_path, monkeypatch):
    out = tmp_path / "out"
    written = []
    real_write = storage.write_shard

    def write_then_die(out_dir, k, *a, **kw):
        real_write(out_dir, k, *a, **kw)
        written.append(k)
        if len(written) == 2:
            raise KeyboardInterrupt  # as a kill between two shards
    monkeypatch.setattr(storage, "write_shard", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        main(args(world["params"], world["prepared"], out))
    monkeypatch.setattr(storage, "write_shard", real_write)
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.npz")}
    assert len(kept) == 2 and not (out / "manifest.json").exists()
    assert main(args(world["params"], world["prepared"], out)) == 0
    assert files(out) == files(world["out"])
    assert all((out / n).stat().st_mtime_ns == t for n, t in kept.items()), "finished shards are not made again"


def test_another_train_split_replaces_every_shard(world, tmp_path):
    prepared = real_splits(tmp_path / "prepared")
    train = load_split(prepared / "train.npz")
    images = train.images.copy()
    images[0, 0, 0] ^= 1  # one value of one real image
    save_split(prepared / "train.npz", Split(images, train.labels, CLASSES))
    old = json.loads((world["out"] / "manifest.json").read_text())
    plan = build_plan(load_config(world["params"]), "i2i", CLASSES, (32, 32), old["settings"]["diffusion"]["model_fingerprint"],
                      load_split(prepared / "train.npz"), sha256_file(prepared / "train.npz"))
    assert plan.settings_hash != old["settings_hash"]
    assert plan.settings["img2img"]["source_sha256"] == sha256_file(prepared / "train.npz")


# ----------------------------------------------------------------------------- provenance
def test_manifest_traces_every_image_to_its_real_training_image(world):
    manifest = json.loads((world["out"] / "manifest.json").read_text())
    train = load_split(world["prepared"] / "train.npz")
    images, labels = storage.load_synthetic(world["out"])
    assert images.shape == (len(CLASSES) * REAL_PER_CLASS, 32, 32, 3)
    assert manifest["settings"]["kind"] == "img2img"
    assert manifest["settings"]["img2img"]["source_sha256"] == sha256_file(world["prepared"] / "train.npz")
    assert manifest["settings"]["img2img"]["source_split"] == "train"
    rows = [e["source_row"] for e in manifest["images"]]
    assert sorted(rows) == list(range(len(train.labels)))  # images_per_class null: every training image once
    for e, label in zip(manifest["images"], labels):
        row = e["source_row"]
        assert e["source_split"] == "train" and CLASSES[train.labels[row]] == e["class"] == CLASSES[label]
        assert e["source_sha256"] == digest(train.images[row])
        assert e["strength"] == STRENGTHS[e["index"] % len(STRENGTHS)]
        assert e["prompt"] == f"a photo of a {'car' if e['class'] == 'automobile' else e['class']}"


def test_an_image_is_diffusers_img2img_of_its_recorded_source(world, tmp_path):
    """Parity: StableDiffusionImg2ImgPipeline built from the same components, given the recorded source
    upsampled to the generation resolution, the recorded prompt, strength and seed, makes the same image."""
    params = write_params(tmp_path, world["model"], synthetic={"save_full_resolution": True})
    out = tmp_path / "out"
    assert main(args(params, world["prepared"], out)) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    train = load_split(world["prepared"] / "train.npz")
    pipe = StableDiffusionPipeline.from_pretrained(str(world["model"]), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    img2img = StableDiffusionImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    for g in (0, 1, 6):  # both strengths, two classes
        e = manifest["images"][g]
        real = torch.from_numpy(train.images[e["source_row"]][None]).permute(0, 3, 1, 2)
        source = Image.fromarray(upsample(real, (64, 64))[0].permute(1, 2, 0).numpy())
        expected = img2img(e["prompt"], image=source, strength=e["strength"], num_inference_steps=8, guidance_scale=7.5,
                           generator=torch.Generator("cpu").manual_seed(e["seed"]), output_type="np").images[0]
        expected = np.round(expected * 255).astype(int)
        k = g // 4
        ours = np.asarray(Image.open(out / "full" / f"shard-{k:05d}" / f"{e['class']}_{e['index']:05d}.png")).astype(int)
        assert np.abs(ours - expected).max() <= 1, g


# ----------------------------------------------------------------------------- no val/test image as a source
def test_no_val_or_test_image_is_a_source(world):
    manifest = json.loads((world["out"] / "manifest.json").read_text())
    held_out = {digest(im) for name in ("val", "test") for im in load_split(world["prepared"] / f"{name}.npz").images}
    train = {digest(im) for im in load_split(world["prepared"] / "train.npz").images}
    sources = {e["source_sha256"] for e in manifest["images"]}
    assert sources <= train and not sources & held_out


@pytest.mark.parametrize("case", ["val split", "test split", "test renamed train.npz", "no --train", "--train for a prompt set"])
def test_the_cli_refuses_any_source_but_the_train_split(world, tmp_path, capsys, case):
    prepared = world["prepared"]
    train, set_name, expected = "train.npz", "i2i", ""
    if case == "val split":
        train, expected = "val.npz", "--train: got " + str(prepared / "val.npz") + "; allowed: the training split"
    elif case == "test split":
        train, expected = "test.npz", "img2img never starts from val or test images"
    elif case == "test renamed train.npz":
        prepared = tmp_path / "prepared"
        prepared.mkdir()
        for name in ("val.npz", "test.npz", "classes.json"):
            (prepared / name).write_bytes((world["prepared"] / name).read_bytes())
        (prepared / "train.npz").write_bytes((prepared / "test.npz").read_bytes())
        expected = "has the same bytes as " + str(prepared / "test.npz")
    elif case == "no --train":
        train, expected = None, "--train: i2i is an img2img set; give its real source images"
    else:
        set_name, expected = "syn1", "--train: syn1 is a prompt set, which reads no real images"
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(args(world["params"], prepared, out, train=train, set_name=set_name))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert not out.exists()


# ----------------------------------------------------------------------------- strengths and steps
def test_strength_lists_cycle_by_image_index_and_only_strength_x_steps_run(world, monkeypatch, tmp_path):
    cfg = load_config(world["params"])
    plan = build_plan(cfg, "i2i", CLASSES, (32, 32), "fp", load_split(world["prepared"] / "train.npz"), "sha")
    assert [plan.strength(g) for g in range(plan.num_images)] == [STRENGTHS[i % 2] for _ in CLASSES for i in range(REAL_PER_CLASS)]
    assert [plan.denoise_steps(g, 8) for g in range(5)] == [4, 8, 4, 8, 4]
    assert plan.work_order(range(0, 4)) == [0, 2, 1, 3]  # batches of one strength where possible

    # DDIM: n steps are n timesteps (PNDM's table has one more), so the count is plain to read
    params = write_params(tmp_path, world["model"], diffusion={"scheduler": "ddim"})
    calls: list[int] = []
    real_step = DDIMScheduler.step

    def counting_step(self, model_output, timestep, sample, *args, **kwargs):
        calls.append(len(sample))
        return real_step(self, model_output, timestep, sample, *args, **kwargs)
    monkeypatch.setattr(DDIMScheduler, "step", counting_step)
    assert main(args(params, world["prepared"], tmp_path / "out")) == 0
    # 15 images: per class indices 0, 2, 4 at strength 0.5 (4 of 8 steps), 1, 3 at 1.0 (all 8)
    assert sum(calls) == 9 * 4 + 6 * 8
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [e["strength"] for e in manifest["images"][:5]] == [0.5, 1.0, 0.5, 1.0, 0.5]


def test_the_cost_estimate_counts_only_the_steps_that_run(world, capsys, tmp_path):
    cfg = parse_config(yaml.safe_load(world["params"].read_text()))
    plan = build_plan(cfg, "i2i", CLASSES, (32, 32), "fp", load_split(world["prepared"] / "train.npz"), "sha")
    dif = cfg.diffusion
    images = list(range(plan.num_images))
    full = image_flops(dif)
    expected = 9 * image_flops(dif, 4, encode=True) + 6 * image_flops(dif, 8, encode=True)
    assert check_cpu_cost(plan, "cuda", images) == pytest.approx(expected)  # the run's FLOPs (no CPU guard on a GPU)
    assert image_flops(dif, 4, encode=True) < 0.6 * full  # half the steps, plus one VAE encode
    note = steps_note(plan, images)
    assert note == "img2img: only strength x steps run, 4 at strength 0.5, 8 at strength 1 of 8 steps (mean 5.6)"
    assert main(args(world["params"], world["prepared"], tmp_path / "out")) == 0
    err = capsys.readouterr().err
    assert "15 images to make (4 of 4 shards)" in err and note in err
    assert f"~{expected / 1e12:.4g} TFLOP" in err


# ----------------------------------------------------------------------------- subsets and errors
def test_a_seeded_class_balanced_subset(world):
    train = load_split(world["prepared"] / "train.npz")
    base = yaml.safe_load(world["params"].read_text())

    def plan_for(n, seed=0):
        p = yaml.safe_load(yaml.safe_dump(base))
        p["synthetic"]["sets"]["i2i"]["images_per_class"] = n
        p["diffusion"]["seed"] = seed
        return build_plan(parse_config(p), "i2i", CLASSES, (32, 32), "fp", train, "sha")

    three = plan_for(3)
    assert three.num_images == 9 and three.images_per_class == 3
    for c in range(3):
        rows = three.source_rows[c * 3:(c + 1) * 3]
        assert len(set(rows)) == 3 and all(train.labels[r] == c for r in rows)
    assert plan_for(3).source_rows == three.source_rows and plan_for(3, seed=1).source_rows != three.source_rows
    seven = plan_for(7)  # more than the class has: its permutation repeats, every source used
    assert {r for r in seven.source_rows[:7]} == set(np.flatnonzero(train.labels == 0).tolist())


@pytest.mark.parametrize("strength,expected", [
    (0, "synthetic.sets.i2i.strength: Input should be greater than 0 (got 0)"),
    (1.2, "synthetic.sets.i2i.strength: Input should be less than or equal to 1 (got 1.2)"),
    ([0.5, -1], "synthetic.sets.i2i.strength[1]: Input should be greater than 0 (got -1)"),
    ([0.5, 0.01], "synthetic.sets.i2i.strength: got 0.01: int(diffusion.steps * strength) = int("),  # at the model's own steps
])
def test_a_strength_that_cannot_run_is_one_line_exit_2_nothing_written(world, tmp_path, capsys, strength, expected):
    params = write_params(tmp_path, world["model"], spec={"strength": strength})
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(args(params, world["prepared"], out))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and expected in err, err
    assert not out.exists()


def test_unbalanced_classes_need_images_per_class(world, tmp_path, capsys):
    prepared = real_splits(tmp_path / "prepared")
    train = load_split(prepared / "train.npz")
    keep = np.flatnonzero(~((train.labels == 2) & (np.cumsum(train.labels == 2) == 1)))  # one bird fewer
    save_split(prepared / "train.npz", train.take(keep))
    with pytest.raises(SystemExit):
        main(args(world["params"], prepared, tmp_path / "out"))
    err = capsys.readouterr().err
    assert "synthetic.sets.i2i.images_per_class: null takes every training image, but the classes have 4..5 images" in err
    assert err.count("\n") == 1
