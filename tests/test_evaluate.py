"""evaluate: cells from params (never globbed), mean ± std over seeds, per class, confusion, synthetic quality."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import diffaug.evaluate as evaluate
from diffaug.config import parse_config
from diffaug.errors import UserError
from diffaug.io import save_npz_atomic
from diffaug.metrics import clip_similarities, load_clip

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "dog", "ship"]


def config(mixes, seeds):
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["mixes"], p["train"]["seeds"] = mixes, seeds
    p["evaluate"]["device"] = "cpu"
    p["dataset"]["label_names"] = {}  # the toy classes have no automobile, and evaluate refuses a name for no class
    return parse_config(copy.deepcopy(p))


@pytest.fixture
def layout(tmp_path):
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    save_npz_atomic(tmp_path / "prepared" / "test.npz", images=np.zeros((8, 4, 4, 3), np.uint8), labels=labels, classes=np.array(CLASSES))
    train_images = np.random.default_rng(0).integers(0, 256, (30, 4, 4, 3), dtype=np.uint8)
    save_npz_atomic(tmp_path / "prepared" / "train.npz", images=train_images, labels=np.repeat(np.arange(3), 10), classes=np.array(CLASSES))
    for mix in ("orig100", "syn1_100", "orig50", "leftover"):
        for seed in (0, 1):
            (tmp_path / "models" / mix).mkdir(parents=True, exist_ok=True)
            (tmp_path / "models" / mix / f"seed-{seed}.pt").write_bytes(b"stand-in; predict is replaced")
    return tmp_path, labels


@pytest.fixture
def models_are_paths(monkeypatch):
    """Loading a trained cell gives its file's path, which the fake inference below reads its plan from."""
    monkeypatch.setattr(evaluate, "load_trained", lambda path, device: (path, {}))


def fake_predictions(plan):
    """Replace model inference: `plan[(mix, seed)]` is the predicted class of each image."""
    def predict(path, images, batch_size, device):
        pred = plan[(path.parent.name, int(path.stem.split("-")[1]))]
        if len(pred) != len(images):  # synthetic images: a fixed pattern
            pred = np.arange(len(images)) % len(CLASSES)
        logits = np.full((len(images), len(CLASSES)), -5.0, np.float32)
        logits[np.arange(len(images)), pred] = 5.0
        return logits
    return predict


def fake_features(path, images, batch_size, device):
    """Stand-in (penultimate features, logits): the first 8 pixel values of each image."""
    return images.reshape(len(images), -1)[:, :8].astype(np.float32), None


def test_summary_is_keyed_by_mixture_with_mean_and_std_over_seeds(layout, monkeypatch, models_are_paths):
    root, labels = layout
    monkeypatch.setattr(evaluate, "penultimate_features", fake_features)
    wrong_one = labels.copy()
    wrong_one[0] = 1
    plan = {("orig100", 0): labels, ("orig100", 1): wrong_one, ("syn1_100", 0): np.zeros(8, int), ("syn1_100", 1): np.zeros(8, int)}
    monkeypatch.setattr(evaluate, "logits_of", fake_predictions(plan))
    syn_labels = np.repeat(np.arange(3), 4)
    syn_images = np.random.default_rng(1).integers(0, 256, (12, 4, 4, 3), dtype=np.uint8)
    monkeypatch.setattr("diffaug.formats.synthetic.load_synthetic", lambda d: (syn_images, syn_labels))
    summary = evaluate.evaluate(config(["orig100", "syn1_100"], [0, 1]), root / "prepared", root / "synthetic",
                                root / "models", root / "out", root / "summary.json")
    assert summary["test_acc"] == {"orig100": pytest.approx((1 + 7 / 8) / 2), "syn1_100": pytest.approx(3 / 8)}
    assert summary["test_acc_std"]["orig100"] == pytest.approx(np.std([1, 7 / 8], ddof=1), abs=1e-6)
    assert summary["test_acc_std"]["syn1_100"] == 0.0
    assert json.loads((root / "summary.json").read_text()) == summary
    per_class = json.loads((root / "out" / "per_class.json").read_text())
    assert per_class["syn1_100"] == {"cat": 1.0, "dog": 0.0, "ship": 0.0}
    assert per_class["orig100"]["cat"] == pytest.approx((1 + 2 / 3) / 2)
    confusion = json.loads((root / "out" / "confusion.json").read_text())
    assert confusion[0] == {"actual": "cat", "predicted": "cat"} and len(confusion) == 8
    quality = json.loads((root / "out" / "synthetic_quality.json").read_text())
    # the real-only classifier (orig100) labels synthetic image i as class i % 3; syn labels are 0000 1111 2222
    assert quality["recognisability"]["syn1"]["classifier"] == "resnet18-orig100"
    assert quality["recognisability"]["syn1"]["acc"] == pytest.approx(np.mean(np.arange(12) % 3 == syn_labels))
    assert quality["train_on_synthetic"] == {"syn1_100": {"acc": pytest.approx(3 / 8), "per_class": {"cat": 1.0, "dog": 0.0, "ship": 0.0}}}
    assert summary["syn_recognised"] == {"syn1": pytest.approx(np.mean(np.arange(12) % 3 == syn_labels), abs=1e-6)}
    assert [row["mixture"] for row in json.loads((root / "out" / "accuracy.json").read_text())] == ["orig100", "syn1_100"]
    dist = quality["distribution"]["syn1"]
    assert dist["overall"]["n_real"] == 30 and dist["overall"]["n_synthetic"] == 12 and set(dist["per_class"]) == set(CLASSES)
    for key in ("fd", "kid", "kid_se", "precision", "recall"):
        assert summary[f"syn_{key}"]["syn1"] == pytest.approx(dist["overall"][key], abs=1e-4)
    assert summary["syn_fd"]["syn1"] > 0 and "real_equiv" not in summary  # real_curve mixtures not trained here


def test_cells_come_from_params_not_from_leftover_files(layout, monkeypatch, models_are_paths):
    root, labels = layout
    seen = []

    def predict(path, images, batch_size, device):
        seen.append(path.parent.name)
        return fake_predictions({(path.parent.name, 0): labels})(path, images, batch_size, device)

    monkeypatch.setattr(evaluate, "logits_of", predict)
    summary = evaluate.evaluate(config(["orig50"], [0]), root / "prepared", root / "synthetic", root / "models",
                                root / "out", root / "summary.json")
    assert set(seen) == {"orig50"} and set(summary["test_acc"]) == {"orig50"}
    assert "test_acc_std" not in summary and "syn_recognised" not in summary  # one seed; no real-only reference trained


def test_a_missing_cell_fails_before_any_output(layout):
    root, _ = layout
    with pytest.raises(UserError, match=r"seed-2.pt: trained model not found; train@resnet18-orig100 has not run"):
        evaluate.evaluate(config(["orig100"], [0, 2]), root / "prepared", root / "synthetic", root / "models",
                          root / "out", root / "summary.json")
    assert not (root / "out").exists() and not (root / "summary.json").exists()


def test_a_cell_is_loaded_and_run_on_uint8_pixels(tmp_path):
    from diffaug.formats.classifier import ImageClassifier, load_trained, save_trained
    from diffaug.models import build_model

    torch.manual_seed(0)
    model = ImageClassifier(build_model("resnet18", "cifar", 3), torch.full((3,), 120.0), torch.full((3,), 60.0)).eval()
    meta = {"model": "resnet18", "variant": "cifar", "num_classes": 3, "classes": CLASSES, "epochs": 1, "settings": {}}
    save_trained(tmp_path / "seed-0.pt", model, meta)
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    loaded, _ = evaluate.load_trained(tmp_path / "seed-0.pt", torch.device("cpu"))
    logits = evaluate.logits_of(loaded, images, batch_size=2, device=torch.device("cpu"))
    with torch.no_grad():
        expected = model(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    assert logits.shape == (5, 3)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    reloaded, _ = load_trained(tmp_path / "seed-0.pt")
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), model.state_dict().values()))


def test_exchange_rate_columns_from_the_real_curve(tmp_path, monkeypatch, models_are_paths):
    """Accuracies placed on a known power law: evaluate reports the known real-equivalents."""
    from diffaug.exchange import PowerLaw

    truth = PowerLaw(a=0.95, b=3.0, c=0.5)
    n_test, per_class = 3000, 400
    test_labels = np.arange(n_test) % 3
    save_npz_atomic(tmp_path / "prepared" / "test.npz", images=np.zeros((n_test, 2, 2, 3), np.uint8), labels=test_labels,
                    classes=np.array(CLASSES))
    save_npz_atomic(tmp_path / "prepared" / "train.npz", images=np.zeros((3 * per_class, 2, 2, 3), np.uint8),
                    labels=np.repeat(np.arange(3), per_class), classes=np.array(CLASSES))
    syn_labels = np.repeat(np.arange(3), 200)
    monkeypatch.setattr("diffaug.formats.synthetic.load_synthetic", lambda d: (np.zeros((600, 2, 2, 3), np.uint8), syn_labels))
    monkeypatch.setattr(evaluate, "penultimate_features",
                        lambda p, images, b, d: (np.random.default_rng(len(images)).normal(size=(len(images), 4)), None))
    real = {"orig10": 120, "orig25": 300, "orig50": 600, "orig75": 900, "orig100": 1200}
    target = {**{m: truth.acc(n) for m, n in real.items()}, "orig50_syn1_50": truth.acc(800), "syn1_100": truth.acc(300)}

    def predict(path, images, batch_size, device):
        if len(images) != n_test:  # synthetic images: recognised or not, it does not matter here
            return np.zeros((len(images), 3), np.float32)
        right = int(round(target[path.parent.name] * n_test))
        pred = test_labels.copy()
        pred[right:] = (pred[right:] + 1) % 3
        return np.eye(3, dtype=np.float32)[pred] * 5

    monkeypatch.setattr(evaluate, "logits_of", predict)
    mixes = [*real, "orig50_syn1_50", "syn1_100"]
    for mix in mixes:
        (tmp_path / "models" / mix).mkdir(parents=True)
        (tmp_path / "models" / mix / "seed-0.pt").write_bytes(b"stand-in; predict is replaced")
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["mixes"], p["train"]["seeds"], p["evaluate"]["device"] = mixes, [0], "cpu"
    p["dataset"]["label_names"] = {}  # the toy classes have no automobile
    p["mixtures"]["syn1_100"] = {"syn1": 1.0}
    p["synthetic"]["images_per_class"] = 200
    summary = evaluate.evaluate(parse_config(p), tmp_path / "prepared", tmp_path / "synthetic", tmp_path / "models",
                                tmp_path / "out", tmp_path / "summary.json")
    assert summary["n_real"] == {**real, "orig50_syn1_50": 600, "syn1_100": 0}
    assert summary["n_syn"] == {"orig50_syn1_50": 300, "syn1_100": 600}
    # accuracies are rounded to 1/3000, so the curve is known to about 1e-4: a few percent in n
    assert summary["real_equiv"]["orig50_syn1_50"] == pytest.approx(800, rel=0.05)
    assert summary["syn_per_real"]["orig50_syn1_50"] == pytest.approx(300 / 200, rel=0.25)
    assert summary["real_equiv"]["syn1_100"] == pytest.approx(300, rel=0.05)
    assert summary["equal_budget_acc"]["orig50_syn1_50"] == pytest.approx(truth.acc(900), abs=2e-3)
    saved = json.loads((tmp_path / "out" / "exchange_rate.json").read_text())
    assert saved["curve"]["sizes"] == list(real.values()) and set(saved["mixtures"]) == {"orig50_syn1_50", "syn1_100"}


def test_missing_inception_and_clip_weights_are_named_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch-hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    line = evaluate.cached_weights_note()
    assert "\n" not in line
    assert f"pt_inception-2015-12-05-6726825d.pth not in {tmp_path / 'torch-hub' / 'checkpoints'}" in line
    assert "openai/clip-vit-base-patch32 not in the Hugging Face cache" in line


def test_a_flat_real_curve_gives_no_exchange_rate(tmp_path, monkeypatch, capsys, models_are_paths):
    n_test = 300
    test_labels = np.arange(n_test) % 3
    save_npz_atomic(tmp_path / "prepared" / "test.npz", images=np.zeros((n_test, 2, 2, 3), np.uint8), labels=test_labels,
                    classes=np.array(CLASSES))
    save_npz_atomic(tmp_path / "prepared" / "train.npz", images=np.zeros((120, 2, 2, 3), np.uint8),
                    labels=np.repeat(np.arange(3), 40), classes=np.array(CLASSES))
    monkeypatch.setattr("diffaug.formats.synthetic.load_synthetic", lambda d: (np.zeros((30, 2, 2, 3), np.uint8), np.repeat(np.arange(3), 10)))
    monkeypatch.setattr(evaluate, "penultimate_features",
                        lambda p, images, b, d: (np.random.default_rng(len(images)).normal(size=(len(images), 4)), None))
    falling = {"orig10": 0.6, "orig25": 0.5, "orig50": 0.45, "orig75": 0.4, "orig100": 0.35, "orig50_syn1_50": 0.5}

    def predict(path, images, batch_size, device):
        right = int(round(falling.get(path.parent.name, 0.3) * len(images)))
        labels = np.arange(len(images)) % 3
        labels[right:] = (labels[right:] + 1) % 3
        return np.eye(3, dtype=np.float32)[labels]

    monkeypatch.setattr(evaluate, "logits_of", predict)
    for mix in falling:
        (tmp_path / "models" / mix).mkdir(parents=True)
        (tmp_path / "models" / mix / "seed-0.pt").write_bytes(b"stand-in")
    summary = evaluate.evaluate(config(list(falling), [0]), tmp_path / "prepared", tmp_path / "synthetic", tmp_path / "models",
                                tmp_path / "out", tmp_path / "summary.json")
    assert "real_equiv" not in summary and not (tmp_path / "out" / "exchange_rate.json").exists()
    assert "no exchange rate: accuracy does not rise with real images" in capsys.readouterr().out


def test_clip_score_when_a_clip_model_is_cached(layout, tiny_clip_cache, monkeypatch, models_are_paths):
    root, labels = layout
    snapshot = tiny_clip_cache
    assert evaluate.cached_clip() == snapshot
    assert "CLIP score (syn_clip) with" in evaluate.cached_weights_note(snapshot)
    rng = np.random.default_rng(2)
    images, syn_labels = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8), np.repeat(np.arange(3), 4)
    clip = load_clip(snapshot, "cpu")
    cos = clip_similarities(clip, images, syn_labels, CLASSES, "cpu", batch_size=5)
    np.testing.assert_allclose(clip_similarities(clip, images, syn_labels, CLASSES, "cpu", batch_size=12), cos, atol=1e-5)
    score = 100 * np.clip(cos, 0, None).mean()  # the CLIP score: 100 x max(cos, 0), mean over images
    assert 0 <= score <= 100 and (cos > 0).any()
    monkeypatch.setattr(evaluate, "penultimate_features", fake_features)
    monkeypatch.setattr(evaluate, "logits_of", fake_predictions({(m, s): labels for m in ("orig100", "syn1_100") for s in (0, 1)}))
    monkeypatch.setattr("diffaug.formats.synthetic.load_synthetic", lambda d: (images, syn_labels))
    summary = evaluate.evaluate(config(["orig100", "syn1_100"], [0, 1]), root / "prepared", root / "synthetic",
                                root / "models", root / "out", root / "summary.json")
    assert summary["syn_clip"] == {"syn1": pytest.approx(score, abs=1e-3)}
