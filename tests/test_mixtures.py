"""build_mixtures: exact class-balanced counts, seeded and nested draws, index files, digests."""
import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

import diffaug.mixtures as mixtures
from diffaug.config import parse_config
from diffaug.formats.mixture import load_mixture
from diffaug.io import load_npz, save_npz_atomic, sha256_file

REPO = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
REAL_PER_CLASS, SYN_PER_CLASS, CLASSES = 40, 30, ["airplane", "automobile", "bird"]


@pytest.fixture
def sources(tmp_path, monkeypatch):
    """A prepared train split and two fake synthetic sets whose pixels encode (source, row)."""
    prepared = tmp_path / "prepared"
    labels = np.repeat(np.arange(len(CLASSES)), REAL_PER_CLASS)
    rng = np.random.default_rng(0)
    labels = labels[rng.permutation(len(labels))]  # real data is not sorted by class
    images = rng.integers(0, 100, (len(labels), 8, 8, 3), dtype=np.uint8)  # < 100: syn markers are 100, 101
    save_npz_atomic(prepared / "train.npz", images=images, labels=labels, classes=np.array(CLASSES))
    synthetic = {}
    for k, name in enumerate(("syn1", "syn2")):
        syn_labels = np.repeat(np.arange(len(CLASSES)), SYN_PER_CLASS)
        syn_images = np.full((len(syn_labels), 8, 8, 3), 0, np.uint8)
        syn_images[:, 0, 0, 0] = 100 + k
        syn_images[:, 0, 0, 1] = np.arange(len(syn_labels)) % 256
        synthetic[name] = [syn_images, syn_labels, f"digest-{name}"]
    monkeypatch.setattr("diffaug.formats.synthetic.load_synthetic", lambda d: tuple(synthetic[Path(d).name][:2]))
    monkeypatch.setattr("diffaug.formats.synthetic.synthetic_digest", lambda d: synthetic[Path(d).name][2])
    return {"prepared": prepared, "images": images, "labels": labels, "synthetic": synthetic, "tmp": tmp_path}


def build(sources, params=PARAMS, out="mixtures"):
    cfg = parse_config(copy.deepcopy(params))
    return mixtures.build(cfg, sources["prepared"], sources["tmp"] / "synthetic", sources["tmp"] / out), sources["tmp"] / out


def test_counts_per_source_and_class_are_exact_for_every_default_mixture(sources):
    summary, out = build(sources)
    assert set(summary) == set(PARAMS["mixtures"])
    for mix, fractions in PARAMS["mixtures"].items():
        comp = json.loads((out / f"{mix}.json").read_text())
        for src, frac in fractions.items():
            n = REAL_PER_CLASS if src in ("orig", "rot90", "vflip") else SYN_PER_CLASS
            assert comp["per_class"][src] == {c: round(frac * n) for c in CLASSES}, (mix, src)
        index = load_npz(out / f"{mix}.npz")
        assert len(index["row"]) == comp["total"] == sum(round(f * (REAL_PER_CLASS if s in ("orig", "rot90", "vflip") else SYN_PER_CLASS)) * len(CLASSES)
                                                        for s, f in fractions.items())
        # labels stored in the index are the labels of the rows they point at
        assert [str(n) for n in index["source_names"]] == list(mixtures.PAPER_SOURCES)  # the paper's mixtures: the old code table
        for code in np.unique(index["source"]):
            src = mixtures.PAPER_SOURCES[code]
            sel = index["source"] == code
            pool = sources["labels"] if src in ("orig", "rot90", "vflip") else sources["synthetic"][src][1]
            assert np.array_equal(index["label"][sel], pool[index["row"][sel]])
            assert len(np.unique(index["row"][sel])) == sel.sum()  # no image drawn twice from one source


def test_same_seed_same_bytes_other_seed_other_draw(sources):
    _, a = build(sources, out="a")
    _, b = build(sources, out="b")
    for mix in PARAMS["mixtures"]:
        assert sha256_file(a / f"{mix}.npz") == sha256_file(b / f"{mix}.npz")
    other = copy.deepcopy(PARAMS)
    other["mixture_seed"] = 1
    _, c = build(sources, other, out="c")
    assert not np.array_equal(load_npz(a / "orig50.npz")["row"], load_npz(c / "orig50.npz")["row"])


def test_draws_nest_and_copies_are_of_the_same_real_images(sources):
    _, out = build(sources)
    rows = lambda mix, src: set(load_npz(out / f"{mix}.npz")["row"][load_npz(out / f"{mix}.npz")["source"] == mixtures.PAPER_SOURCES.index(src)])
    assert rows("orig50", "orig") == rows("orig50_syn1_50", "orig") == rows("orig50_rot50", "orig")
    assert rows("orig50", "orig") < rows("orig100", "orig")
    assert rows("orig50_rot50", "rot90") == rows("orig50_rot50", "orig")
    assert rows("orig50_rot50_vflip50", "vflip") == rows("orig50_rot50_vflip50", "orig")
    assert rows("syn1_50", "syn1") < rows("syn1_100", "syn1")


def test_changing_one_mixture_leaves_the_other_files_byte_identical(sources):
    _, a = build(sources, out="a")
    changed = copy.deepcopy(PARAMS)
    changed["mixtures"]["orig50_syn1_50"] = {"orig": 0.5, "syn1": 0.25}
    _, b = build(sources, changed, out="b")
    differ = [m for m in PARAMS["mixtures"] if sha256_file(a / f"{m}.npz") != sha256_file(b / f"{m}.npz")]
    assert differ == ["orig50_syn1_50"]


def test_a_synthetic_set_change_touches_only_the_mixtures_that_use_it(sources):
    _, a = build(sources, out="a")
    sources["synthetic"]["syn2"][2] = "digest-syn2-regenerated"
    _, b = build(sources, out="b")
    differ = {m for m in PARAMS["mixtures"] if sha256_file(a / f"{m}.npz") != sha256_file(b / f"{m}.npz")}
    assert differ == {m for m, f in PARAMS["mixtures"].items() if "syn2" in f}


def test_load_mixture_returns_the_pixels_with_copies_transformed(sources):
    _, out = build(sources)
    images, labels, classes = load_mixture(out / "orig50_rot50_vflip50.npz", sources["prepared"], sources["tmp"] / "synthetic")
    index = load_npz(out / "orig50_rot50_vflip50.npz")
    real = sources["images"]
    for src, expected in (("orig", real), ("rot90", np.rot90(real, 1, axes=(1, 2))), ("vflip", real[:, ::-1])):
        sel = index["source"] == mixtures.PAPER_SOURCES.index(src)
        assert np.array_equal(images[sel], expected[index["row"][sel]])
    assert classes == CLASSES and labels.dtype == np.int64 and images.dtype == np.uint8
    syn, syn_labels, _ = load_mixture(out / "orig100_syn1_100_syn2_100.npz", sources["prepared"], sources["tmp"] / "synthetic")
    assert (syn[:, 0, 0, 0] == 100).sum() == SYN_PER_CLASS * 3 and (syn[:, 0, 0, 0] == 101).sum() == SYN_PER_CLASS * 3
    assert np.bincount(syn_labels).tolist() == [REAL_PER_CLASS + 2 * SYN_PER_CLASS] * 3


# Content of the paper's mixture files built by the code before synthetic sets had names (commit 0385e9e)
# from the `sources` fixture: naming the sets must not change one array of them (else every cell of the
# grid retrains). Hashed array by array, not as file bytes: the .npz container's bytes depend on the
# Python version's zipfile (3.11.2 and 3.11.7 write different bytes for the same arrays).
BEFORE_NAMED_SETS = {
    "orig100": "b99da386108912cb1be26d5c295238031eb4cb63dc013d5fd1194cbacfbacbf3",
    "orig100_syn1_100_syn2_100": "5c0d26a7b9d99ae01548e342fc53e43f1ff391cb8e072a484d43a95e8b4a4b93",
    "orig50_rot50_vflip50": "a67fa88df8026af70651925f4e59256392e528b7b5ed2e7751c11d6c9050aa03",
    "orig50_syn2_50": "280bcec4165d0ace867bc492297711f5e08560e6d91264d4bc9ebd4e466830b8",
    "syn1_50": "0edc464ff7535bb646b01a96d60850bba594ed20344c9aa44aded534d14b7fad",
}


def content_sha256(path: Path) -> str:
    """sha256 over every array of a mixture file but `digests` (which hold the source files' own sha256s)."""
    data = load_npz(path)
    h = hashlib.sha256()
    for key in sorted(data):
        if key != "digests":
            a = np.ascontiguousarray(data[key])
            h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def with_set(params: dict, name: str = "i2i", **mixes) -> dict:
    p = copy.deepcopy(params)
    p["synthetic"]["sets"][name] = {"kind": "img2img", "strength": 0.5}
    p["img2img_sets"] = [name]
    p["mixtures"].update(mixes)
    return p


def test_paper_mixture_files_keep_their_bytes_and_a_new_set_changes_none(sources):
    _, a = build(sources, out="a")
    assert {m: content_sha256(a / f"{m}.npz") for m in BEFORE_NAMED_SETS} == BEFORE_NAMED_SETS
    digests = {str(u): str(d) for u, d in zip(load_npz(a / "orig100_syn1_100_syn2_100.npz")["used"],
                                               load_npz(a / "orig100_syn1_100_syn2_100.npz")["digests"])}
    assert digests == {"orig": sha256_file(sources["prepared"] / "train.npz"), "syn1": "digest-syn1", "syn2": "digest-syn2"}
    labels = np.repeat(np.arange(len(CLASSES)), 7)
    images = np.zeros((len(labels), 8, 8, 3), np.uint8)
    images[:, 0, 0, 0] = 150
    sources["synthetic"]["i2i"] = [images, labels, "digest-i2i"]
    _, b = build(sources, with_set(PARAMS, orig50_i2i50={"orig": 0.5, "i2i": 0.5}, i2i_syn1={"i2i": 1.0, "syn1": 0.5}), out="b")
    assert all(sha256_file(b / f"{m}.npz") == sha256_file(a / f"{m}.npz") for m in PARAMS["mixtures"])
    index = load_npz(b / "orig50_i2i50.npz")
    assert [str(n) for n in index["source_names"]] == [*mixtures.PAPER_SOURCES, "i2i"]
    sel = index["source"] == len(mixtures.PAPER_SOURCES)
    assert sel.sum() == round(0.5 * 7) * 3 and set(index["row"][sel]) <= set(range(len(labels)))
    got, got_labels, _ = load_mixture(b / "i2i_syn1.npz", sources["prepared"], sources["tmp"] / "synthetic")
    assert (got[:, 0, 0, 0] == 150).sum() == 21 and (got[:, 0, 0, 0] == 100).sum() == 15 * 3
    comp = json.loads((b / "i2i_syn1.json").read_text())
    assert comp["per_source"] == {"syn1": 45, "i2i": 21} and comp["source_digests"]["i2i"] == "digest-i2i"


def test_a_mixture_drawing_from_an_undeclared_set_is_one_line():
    from diffaug.errors import ConfigError

    p = copy.deepcopy(PARAMS)
    p["mixtures"]["orig50_i2i50"] = {"orig": 0.5, "i2i": 0.5}
    with pytest.raises(ConfigError) as err:
        parse_config(p)
    message = str(err.value)
    assert message.startswith("params.yaml: mixtures.orig50_i2i50.i2i: unknown source; allowed: orig, rot90, vflip, syn1, syn2 "
                              "(the sets under synthetic.sets) (got 0.5)")
    assert "allowed: orig, rot90, vflip, syn1, syn2" in message and "\n" not in message
    assert parse_config(with_set(p)).mixtures["orig50_i2i50"] == {"orig": 0.5, "i2i": 0.5}
