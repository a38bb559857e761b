"""Filtering as a mixture option: config rules, exact recorded drops on a toy classifier,
one-line errors. The dvc end-to-end rerun is in test_sharing_pipeline.py (slow)."""
import copy
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

import diffaug
import diffaug.mixtures as mixtures
from diffaug.config import parse_config
from diffaug.errors import ConfigError
from diffaug.filtering import filter_mixture, select
from diffaug.filtering import main as filtering_main
from diffaug.formats.classifier import ImageClassifier, load_trained, save_trained
from diffaug.formats.mixture import load_mixture, read_mixture
from diffaug.io import save_npz_atomic
from diffaug.models import build_model
from synthetic_sets import write_fake_set

REPO = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
CLASSES = ["airplane", "automobile", "bird"]
MIX = "orig50_syn1_50_conf"


def params_with(filter_spec, **extra):
    p = copy.deepcopy(PARAMS)
    p["mixtures"][MIX] = {"orig": 0.5, "syn1": 0.5, "filter": filter_spec}
    p["filtered_mixes"] = [MIX]
    p.update(extra)
    return p


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Real images, a fake syn1 set of varied pixels, and a toy classifier trained on nothing (random weights)."""
    root = tmp_path_factory.mktemp("filtering")
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 10)
    save_npz_atomic(root / "prepared" / "train.npz", images=rng.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8),
                    labels=labels, classes=np.array(CLASSES))
    syn_images = rng.integers(0, 256, (3 * 12, 8, 8, 3), dtype=np.uint8)
    for name in ("syn1", "syn2"):
        write_fake_set(root / "synthetic" / name, name=name, classes=CLASSES, per_class=12, per_shard=10, images=syn_images)
    torch.manual_seed(0)
    model = ImageClassifier(build_model("resnet18", "cifar", 3), torch.full((3,), 127.0), torch.full((3,), 70.0)).eval()
    meta = {"model": "resnet18", "variant": "cifar", "num_classes": 3, "classes": CLASSES, "epochs": 1, "settings": {}}
    save_trained(root / "models" / "orig100" / "seed-0.pt", model, meta)
    return {"root": root, "prepared": root / "prepared", "synthetic": root / "synthetic",
            "classifier": root / "models" / "orig100" / "seed-0.pt", "syn_images": syn_images}


def run_filter(world, spec, out="filtered"):
    cfg = parse_config(params_with(spec))
    mixdir = world["root"] / f"mixtures-{out}"
    mixtures.build(cfg, world["prepared"], world["synthetic"], mixdir)
    account = filter_mixture(cfg, MIX, mixdir, world["prepared"], world["synthetic"], world["classifier"],
                             world["root"] / out)
    return cfg, mixdir, account, world["root"] / out


def expected_scores(world, rows, labels):
    model = diffaug.load_classifier(world["classifier"])
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(world["syn_images"][rows]).permute(0, 3, 1, 2)), 1).numpy()
    return probs[np.arange(len(rows)), labels]


def test_keep_fraction_drops_exactly_the_lowest_confidence_per_class_and_records_them(world):
    cfg, mixdir, account, out = run_filter(world, {"by": "confidence", "keep_fraction": 0.5})
    before = read_mixture(mixdir / f"{MIX}.unfiltered.npz")
    assert not (mixdir / f"{MIX}.npz").exists()  # only its filtered version is ever trained on
    after, record = read_mixture(out / f"{MIX}.npz"), read_filter_record(out / f"{MIX}.npz")
    syn = before.source == before.source_names.index("syn1")
    rows, labels = before.row[syn], before.label[syn]
    scores = expected_scores(world, rows, labels)
    dropped = set()
    for c in range(3):  # 6 drawn per class (half of 12): the 3 best stay
        idx = np.flatnonzero(labels == c)
        ranked = idx[np.lexsort((rows[idx], -scores[idx]))]
        dropped |= {int(rows[i]) for i in ranked[3:]}
    assert {int(r) for r in record.dropped_row} == dropped and len(record.dropped_row) == 9
    for r, s, lab in zip(record.dropped_row, record.dropped_score, record.dropped_label):
        i = int(np.flatnonzero(rows == r)[0])
        assert lab == labels[i] and abs(s - scores[i]) < 1e-6
    # real rows untouched, synthetic rows = the draw minus the dropped ones, in the draw's order
    real = before.source == before.source_names.index("orig")
    assert np.array_equal(after.row[after.source == after.source_names.index("orig")], before.row[real])
    kept_syn = after.row[after.source == after.source_names.index("syn1")]
    assert kept_syn.tolist() == [int(r) for r in rows if int(r) not in dropped]
    assert np.isnan(record.score[after.source == 0]).all() and not np.isnan(record.score[after.source != 0]).any()
    assert record.settings["scorer"]["sha256"] and record.settings["filter"]["keep_fraction"] == 0.5
    # the readable account says the same
    text = json.loads((out / f"{MIX}.json").read_text())
    assert text["total"] == len(after.row) == 15 + 9 and text["candidates"] == 15 + 18
    assert text["dropped_per_class"] == {"syn1": {c: 3 for c in CLASSES}}
    assert sorted(d[1] for d in text["dropped"]) == sorted(dropped)
    images, labels_loaded, _ = load_mixture(out / f"{MIX}.npz", world["prepared"], world["synthetic"])
    assert len(images) == 24 and np.bincount(labels_loaded).tolist() == [8, 8, 8]


def test_clip_filter_scores_each_image_against_its_class_text(world, tiny_clip_cache):
    """by: clip loads CLIP from the local cache and scores as CLIP's own forward pass does: the cosine of the image
    and "a photo of a <class word>" (dataset.label_names' word where it has one)."""
    from transformers import CLIPModel, CLIPProcessor

    _, mixdir, account, out = run_filter(world, {"by": "clip", "keep_fraction": 0.5}, out="clip")
    before = read_mixture(mixdir / f"{MIX}.unfiltered.npz")
    syn = before.source == before.source_names.index("syn1")
    rows, labels = before.row[syn], before.label[syn]
    model, processor = CLIPModel.from_pretrained(tiny_clip_cache).eval(), CLIPProcessor.from_pretrained(tiny_clip_cache)
    words = [PARAMS["dataset"]["label_names"].get(c, c) for c in CLASSES]
    with torch.no_grad():
        out_ = model(**processor(text=[f"a photo of a {w}" for w in words], images=list(world["syn_images"][rows]),
                                 return_tensors="pt", padding=True))
    cosines = (out_.logits_per_image / model.logit_scale.exp()).detach().numpy()[np.arange(len(rows)), labels]
    record = read_filter_record(out / f"{MIX}.npz")
    recorded = np.concatenate([record.score[~np.isnan(record.score)], record.dropped_score])
    np.testing.assert_allclose(np.sort(recorded), np.sort(cosines), atol=1e-5)
    assert len(record.dropped_row) == 9 and record.settings["scorer"] == {"clip": "openai/clip-vit-base-patch32", "prompt": "a photo of a {label}"}


def test_threshold_keeps_scores_at_or_above_it(world):
    _, mixdir, account, out = run_filter(world, {"by": "confidence", "threshold": 0.34}, out="thr")
    before = read_mixture(mixdir / f"{MIX}.unfiltered.npz")
    syn = before.source == before.source_names.index("syn1")
    scores = expected_scores(world, before.row[syn], before.label[syn])
    record = read_filter_record(out / f"{MIX}.npz")
    assert sorted(record.dropped_row.tolist()) == sorted(before.row[syn][scores < 0.34].tolist())
    assert (record.dropped_score < 0.34).all()
    assert account["cutoff"]["syn1"] == {c: 0.34 for c in CLASSES}


def read_filter_record(path):
    """What a filter@ stage stored in its filtered mixture file (plain numpy, as any reader sees it)."""
    with np.load(path, allow_pickle=False) as data:
        return SimpleNamespace(settings=json.loads(str(data["filter_settings"])),
                               **{k: data[k] for k in ("score", "dropped_source", "dropped_row", "dropped_label", "dropped_score")})


def test_select_is_exact_on_ties_and_small_groups():
    spec = parse_config(params_with({"keep_fraction": 0.5})).filters[MIX]
    scores = np.array([0.9, 0.5, 0.5, 0.1, 0.7], np.float32)
    keep, cutoffs = select(scores, np.array([0, 0, 0, 0, 1]), np.array([10, 12, 11, 13, 20]), spec)
    assert keep.tolist() == [True, False, True, False, True]  # tie at 0.5: the lower row (11) stays
    assert cutoffs == {0: pytest.approx(0.5), 1: pytest.approx(0.7)}  # ceil(0.5 * 1) = 1: a lone image stays


def test_the_filtered_file_changes_when_the_classifier_changes(world, tmp_path):
    _, _, _, out = run_filter(world, {"keep_fraction": 0.5}, out="a")
    first = (out / f"{MIX}.npz").read_bytes()
    _, _, _, again = run_filter(world, {"keep_fraction": 0.5}, out="b")
    assert (again / f"{MIX}.npz").read_bytes() == first  # deterministic
    model, meta = load_trained(world["classifier"])  # "retrained": another fc bias
    with torch.no_grad():
        model.net.fc.bias += torch.tensor([0.5, 0.0, -0.5])
    other = dict(world, classifier=tmp_path / "seed-0.pt")
    save_trained(other["classifier"], model, meta)
    _, _, _, changed = run_filter(other, {"keep_fraction": 0.5}, out="c")
    assert (changed / f"{MIX}.npz").read_bytes() != first


@pytest.mark.parametrize("spec, extra, message", [
    ({"by": "confidence", "keep_fraction": 0.0}, {}, rf"mixtures\.{MIX}\.filter\.keep_fraction: Input should be greater than 0 \(got 0\.0\)"),
    ({"by": "confidence", "keep_fraction": 1.5}, {}, rf"mixtures\.{MIX}\.filter\.keep_fraction: Input should be less than or equal to 1 \(got 1\.5\)"),
    ({"by": "confidence", "threshold": 1.2}, {}, rf"mixtures\.{MIX}\.filter\.threshold: allowed: a number in \[0, 1\] \(a probability\) \(got 1\.2\)"),
    ({"by": "confidence"}, {}, rf"mixtures\.{MIX}\.filter: set exactly one of threshold or keep_fraction \(got {{'by': 'confidence'}}\)"),
    ({"by": "confidence", "threshold": 0.5, "keep_fraction": 0.5}, {}, rf"mixtures\.{MIX}\.filter: set exactly one"),
    ({"by": "entropy", "threshold": 0.5}, {}, rf"mixtures\.{MIX}\.filter\.by: Input should be 'confidence' or 'clip' \(got 'entropy'\)"),
    ({"keep_fraction": 0.5}, {"mixes": ["orig50", "syn1_100"]},
     rf"mixtures\.{MIX}\.filter: orig100 is not in mixes, so no classifier is trained to filter with"),
    ({"keep_fraction": 0.5}, {"filtered_mixes": []}, None),  # filtered but not listed: checked below
])
def test_bad_filters_are_one_line_config_errors(spec, extra, message):
    params = params_with(spec, **extra)
    if message is None:
        params["mixes"] = params["mixes"] + [MIX]
        message = rf"mixes\[{len(params['mixes']) - 1}\]: {MIX} has a filter; list it under filtered_mixes"
    with pytest.raises(ConfigError, match=message) as e:
        parse_config(params)
    assert "\n" not in str(e.value)


def test_unknown_set_and_a_filter_on_real_images_only_are_one_line_errors():
    p = params_with({"keep_fraction": 0.5})
    p["mixtures"][MIX] = {"orig": 0.5, "syn3": 0.5, "filter": {"keep_fraction": 0.5}}
    with pytest.raises(ConfigError, match=rf"mixtures\.{MIX}\.syn3: unknown source; allowed: orig, rot90, vflip, syn1, syn2 "
                       r"\(the sets under synthetic.sets\) \(got 0\.5\)"):
        parse_config(p)
    p["mixtures"][MIX] = {"orig": 0.5, "filter": {"keep_fraction": 0.5}}
    with pytest.raises(ConfigError, match=rf"mixtures\.{MIX}\.filter: {MIX} draws no synthetic images"):
        parse_config(p)
    p = params_with({"keep_fraction": 0.5}, filtered_mixes=["orig50"])
    with pytest.raises(ConfigError, match=r"filtered_mixes\[0\]: orig50 has no filter; list it under mixes"):
        parse_config(p)


def test_filters_leave_the_fractions_and_existing_params_alone():
    cfg = parse_config(params_with({"keep_fraction": 0.8}))
    assert cfg.mixtures[MIX] == {"orig": 0.5, "syn1": 0.5}
    assert cfg.filters[MIX].keep_fraction == 0.8 and cfg.filters[MIX].by == "confidence"
    assert cfg.trained_mixes == PARAMS["mixes"] + [MIX]
    plain = parse_config(copy.deepcopy(PARAMS))
    assert plain.filters == {} and plain.trained_mixes == PARAMS["mixes"]


def test_missing_classifier_and_clip_without_weights_are_one_line_errors(world, tmp_path, capsys, monkeypatch):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(params_with({"by": "confidence", "keep_fraction": 0.5})))
    cfg = parse_config(params_with({"by": "confidence", "keep_fraction": 0.5}))
    mixtures.build(cfg, world["prepared"], world["synthetic"], tmp_path / "mixtures")
    argv = ["--params", str(params), "--mix", MIX, "--mixtures", str(tmp_path / "mixtures"), "--prepared", str(world["prepared"]),
            "--synthetic", str(world["synthetic"]), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as e:
        filtering_main(argv + ["--classifier", str(tmp_path / "models" / "orig100" / "seed-0.pt")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert "seed-0.pt: trained model not found; the filter of orig50_syn1_50_conf needs train@resnet18-orig100 first" in err
    params.write_text(yaml.safe_dump(params_with({"by": "clip", "threshold": 0.2})))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as e:
        filtering_main(argv + ["--classifier", str(world["classifier"])])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert f"error: mixtures.{MIX}.filter.by: clip needs CLIP weights (openai/clip-vit-base-patch32)" in err
    assert not (tmp_path / "out").exists()
