"""Try candidate synthetic sets on a few images per class before paying for the whole set.

    python -m diffaug.pilot syn1 syn2 'syn2@steps=20,scheduler=dpmsolver++' --per-class 20

Each candidate (a set under synthetic.sets, diffusion settings changed after `@`) makes the first
--per-class images of every class with generate's own code; they are scored in the real-only
classifier's feature space and ranked by probe, then fd, into <out>/pilot.md and pilot.json, with a
sample grid in <out>/samples.png; images are cached in <out>/cache. Details: docs/worth.md.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffaug.cli import human_duration, stage_parser
from diffaug.config import Config, Img2ImgSet, parse_config, parse_yaml, read_params
from diffaug.errors import UserError, exit_on_error
from diffaug.formats.splits import Split, load_split, read_classes
from diffaug.formats.synthetic import write_image_grid
from diffaug.io import ensure_writable_dir, load_npz, save_npz_atomic, sha256_json, write_json_atomic

PROBE_STEPS = 300
SAMPLES_PER_CLASS = 4  # the pilot's sample grid: this many images of each class per candidate
REAL_PER_CLASS = 100  # real images per class for the metrics' reference and the probe's test


@dataclass
class Candidate:
    label: str      # as given on the command line
    set_name: str
    cfg: Config


@dataclass
class PilotImages:
    images: np.ndarray     # uint8 NHWC, the images that the safety checker let through
    labels: np.ndarray
    flagged: int           # images the safety checker flagged (the full run regenerates them)
    rate: float            # measured images/s (every pilot image is generated, none read back)
    cached: bool           # read back from <out>/cache, not made now
    full_set: int          # images of the full set
    device: str


# ----------------------------------------------------------------------------- candidates
def parse_candidates(texts: list[str], raw: dict[str, Any], source: str) -> list[Candidate]:
    """Each `set[@key=value,...]` as a validated Config (one line naming the bad part otherwise)."""
    out = []
    for text in texts:
        name, _, changes = text.partition("@")
        sets = (raw.get("synthetic") or {}).get("sets") or {}
        if name not in sets:
            raise UserError(f"candidate {text!r}: no set {name!r} under synthetic.sets in {source}; "
                            f"allowed: {', '.join(sets) or 'a declared set'}")
        data, changed = copy.deepcopy(raw), set()
        for pair in filter(None, changes.split(",")):
            key, eq, value = (part.strip() for part in pair.partition("="))
            if not (eq and key and value):
                raise UserError(f"candidate {text!r}: {pair!r} is not key=value with a value; e.g. syn1@steps=20,scheduler=ddim")
            if key in changed:
                raise UserError(f"candidate {text!r}: {key} given twice; allowed: each key once")
            changed.add(key)
            data.setdefault("diffusion", {})[key] = parse_yaml(value, f"candidate {text!r}: {key}")  # as params.yaml is read
        out.append(Candidate(text, name, parse_config(data, f"{source} (candidate {text})")))
    if len({c.label for c in out}) != len(out):
        raise UserError("candidates: one is named twice")
    return out


# ----------------------------------------------------------------------------- generation (the generate stage's own code)
def make_pilot(cand: Candidate, classes: list[str], image_size: tuple[int, int], per_class: int, out: Path,
               prepared: Path, console) -> PilotImages:
    """The first `per_class` images of every class of the candidate's set, through generate's own sampler."""
    from diffaug.generate.__main__ import plan_set
    from diffaug.generate.model import choose_levers
    from diffaug.generate.plan import check_cpu_cost
    from diffaug.generate.runner import AUTO_CPU_BATCH, open_sampler, pick_device, provenance, sample_batch

    cfg = cand.cfg
    train = str(prepared / "train.npz") if isinstance(cfg.synthetic.sets[cand.set_name], Img2ImgSet) else None
    source, info, plan = plan_set(cfg, cand.set_name, train, classes, image_size)
    dif = plan.diffusion  # the family's defaults filled in
    n = min(per_class, plan.images_per_class)
    wanted = [c * plan.images_per_class + i for c in range(len(classes)) for i in range(n)]
    device = pick_device(dif)
    levers = choose_levers(dif, device.type, plan.num_images)
    batch = AUTO_CPU_BATCH if levers.batch_size == "auto" else int(levers.batch_size)  # a pilot is too small to size
    key = sha256_json({"settings": plan.settings_hash, "images": wanted, "batch": batch, "made_with": provenance(levers, device, dif.dtype)})
    entry = out / "cache" / f"{key[:32]}.npz"
    found = read_cached(entry, key, plan.num_images, str(device))
    if found is not None:
        console.print(f"pilot {cand.label}: {len(wanted)} images read back from {entry}")
        return found
    check_cpu_cost(plan, device.type, wanted)
    sampler, _ = open_sampler(source, info, device, levers, plan)
    small, flagged, times = [], [], []
    for start in range(0, len(wanted), batch):
        chunk = wanted[start:start + batch]
        began = time.perf_counter()
        result = sample_batch(sampler, plan, [(g, 0) for g in chunk])
        times.append((len(chunk), time.perf_counter() - began))
        if not result.all_finite:
            raise UserError(f"{cand.label}: non-finite (NaN/inf) pixels in a pilot batch; check diffusion.guidance_scale "
                            "and the model, or use diffusion.dtype: float32 or bfloat16")
        small.append(result.small)
        flagged.extend(result.flagged)
    keep = ~np.array(flagged, bool)
    timed = times[1:] or times  # after the first (warm-up) batch when there are several
    rate = sum(n for n, _ in timed) / max(sum(t for _, t in timed), 1e-9)
    console.print(f"pilot {cand.label}: {len(wanted)} images in batches of {batch}, {rate:.3g} images/s on {device}")
    labels = np.array([plan.class_and_index(g)[0] for g in wanted], np.int64)[keep]
    made = PilotImages(np.concatenate(small)[keep], labels, int((~keep).sum()), rate, False, plan.num_images, str(device))
    save_npz_atomic(entry, key=np.array(key), images=made.images, labels=made.labels, flagged=np.array(made.flagged),
                    rate=np.array(rate))
    return made


def read_cached(entry: Path, key: str, full_set: int, device: str) -> PilotImages | None:
    """The pilot stored under `entry` for `key`; None when absent, damaged (any way) or another key's."""
    try:
        z = load_npz(entry)
        if str(z["key"]) == key:
            return PilotImages(z["images"], z["labels"], int(z["flagged"]), float(z["rate"]), True, full_set, device)
    except (UserError, KeyError, ValueError, TypeError):  # absent, truncated, a flipped byte, empty: made again
        pass
    return None


# ----------------------------------------------------------------------------- scores
def real_reference(prepared: Path, per_class: int) -> tuple[Split, Split]:
    """(reference for the metrics: a seeded class-balanced draw of train.npz, test set for the probe)."""
    train = load_split(prepared / "train.npz")
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.permutation(np.flatnonzero(train.labels == c))[:per_class] for c in range(len(train.classes))])
    reference = train.take(np.sort(rows))
    val_path = prepared / "val.npz"
    val = load_split(val_path) if val_path.is_file() else None
    return reference, val if val is not None and len(val.labels) else reference


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, num_classes: int) -> float:
    """Accuracy on (test_x, test_y) of a softmax regression fitted on (train_x, train_y); deterministic."""
    import torch

    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    x, y = torch.from_numpy((train_x - mean) / std).float(), torch.from_numpy(train_y).long()
    weight = (torch.randn(num_classes, x.shape[1], generator=torch.Generator().manual_seed(0)) * 0.01).requires_grad_()
    bias = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.Adam([weight, bias], lr=0.01, weight_decay=1e-3)
    for _ in range(PROBE_STEPS):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(x @ weight.T + bias, y).backward()
        opt.step()
    with torch.no_grad():
        pred = (torch.from_numpy((test_x - mean) / std).float() @ weight.T + bias).argmax(1).numpy()
    return float((pred == test_y).mean())


def scorer(classifier, prepared: Path, batch_size: int, device) -> tuple[Any, bool]:
    """score(pilot) against the real images, whose features are computed once; and whether the probe tests on val.npz."""
    from diffaug.metrics import K_NEIGHBOURS, penultimate_features, set_quality

    reference, probe_test = real_reference(prepared, REAL_PER_CLASS)
    real_feats = penultimate_features(classifier, reference.images, batch_size, device)[0]
    test_feats = real_feats if probe_test is reference else penultimate_features(classifier, probe_test.images, batch_size, device)[0]

    def score(pilot: PilotImages) -> dict[str, Any]:
        if len(pilot.images) <= K_NEIGHBOURS:
            return {"note": f"only {len(pilot.images)} usable images; the metrics need more than {K_NEIGHBOURS}"}
        feats, logits = penultimate_features(classifier, pilot.images, batch_size, device)
        q = set_quality(real_feats, reference.labels, feats, pilot.labels, reference.classes)
        return {**q["overall"], "per_class": q["per_class"], "recognised": float((logits.argmax(1) == pilot.labels).mean()),
                "probe": linear_probe(feats, pilot.labels, test_feats, probe_test.labels, len(reference.classes))}

    return score, probe_test is not reference


# ----------------------------------------------------------------------------- report
def rank(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """By probe accuracy (higher first), then Fréchet distance (lower first); unscored rows last, in given order."""
    scored = [r for r in rows if "probe" in r]
    return sorted(scored, key=lambda r: (-r["probe"], r["fd"])) + [r for r in rows if "probe" not in r]


def _cell(value: Any, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def table_markdown(rows: list[dict[str, Any]]) -> str:
    head = "| rank | candidate | probe | recognised | FD | KID ± se | precision | recall | flagged | images/s | full set: ETA | cost |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for i, r in enumerate(rows, 1):
        kid = f"{r['kid']:.4f} ± {r['kid_se']:.4f}" if "kid" in r else "n/a"
        lines.append(f"| {i if 'probe' in r else '-'} | {r['candidate']} | {_cell(r.get('probe'), '.3f')} | "
                     f"{_cell(r.get('recognised'), '.3f')} | {_cell(r.get('fd'), '.2f')} | {kid} | {_cell(r.get('precision'), '.3f')} | "
                     f"{_cell(r.get('recall'), '.3f')} | {r['flagged']} | {_cell(r.get('images_per_s'), '.3g')} | "
                     f"{r.get('eta', 'n/a')} | {r.get('cost', 'n/a')} |")
    return "\n".join(lines)


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    ap = stage_parser("python -m diffaug.pilot", __doc__.splitlines()[0], data_dirs=True)
    ap.add_argument("candidates", nargs="+", help="set[@key=value,...]: a set under synthetic.sets, with diffusion settings changed")
    ap.add_argument("--per-class", type=int, default=20, help="images per class of each candidate (default 20)")
    ap.add_argument("--classes", type=Path, default=Path("data/prepared/classes.json"))
    ap.add_argument("--classifier", type=Path, help="the real-only classifier (default models/<model>/orig100/seed-<first seed>.pt)")
    ap.add_argument("--out", type=Path, default=Path("data/pilot"), help="the report, and the candidates' images (a cache)")
    ap.add_argument("--gpu-hour-price", type=float, help="price of one device-hour, for the cost column")
    args = ap.parse_args(argv)
    if args.per_class < 1:
        raise UserError(f"--per-class: got {args.per_class}; allowed: an integer >= 1")
    raw = read_params(args.params) or {}
    candidates = parse_candidates(args.candidates, raw, str(args.params))
    classes, image_size = read_classes(args.classes)
    candidates[0].cfg.dataset.words(classes)  # refuses a label_names key that names no class, before any output
    ensure_writable_dir(args.out, "--out")
    base = candidates[0].cfg
    classifier_path = args.classifier or Path("models") / base.model / "orig100" / f"seed-{base.train.seeds[0]}.pt"

    from rich.console import Console

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    missing = [p for p in (classifier_path, args.prepared / "train.npz") if not p.is_file()]
    if missing:
        console.print(f"pilot: {' and '.join(map(str, missing))} missing: speed and samples only, no metrics "
                      f"(dvc repro train@{base.model}-orig100 makes the classifier)")
    pilots = [(c, make_pilot(c, classes, image_size, args.per_class, args.out, args.prepared, console)) for c in candidates]

    rows, score, on_val = [], None, False
    if not missing:
        from diffaug.devices import resolve_device
        from diffaug.formats.classifier import load_trained

        device = resolve_device(base.evaluate.device, "evaluate.device")
        score, on_val = scorer(load_trained(classifier_path, device)[0], args.prepared, base.evaluate.batch_size, device)
    for cand, pilot in pilots:
        row: dict[str, Any] = {"candidate": cand.label, "set": cand.set_name, "images": int(len(pilot.images)),
                               "flagged": pilot.flagged, "cached": pilot.cached, "device": pilot.device,
                               "images_per_s": pilot.rate, "full_set_images": pilot.full_set}
        seconds = pilot.full_set / pilot.rate
        row.update(eta_s=seconds, eta=human_duration(seconds), device_hours=seconds / 3600,
                   cost=f"{seconds / 3600 * args.gpu_hour_price:.2f}" if args.gpu_hour_price else f"{seconds / 3600:.3g} device-h")
        if score is not None:
            row.update(score(pilot))
        rows.append(row)
    ranked = rank(rows)
    write_json_atomic(args.out / "pilot.json", {"per_class": args.per_class, "classifier": str(classifier_path) if score else None,
                                                "probe_test": "val.npz" if on_val else "train.npz draw", "candidates": ranked})
    table = table_markdown(ranked)
    (args.out / "pilot.md").write_text(f"# Pilot: {args.per_class} images per class of each candidate\n\n{table}\n")
    write_image_grid(args.out / "samples.png", [(c.label, [image for k in range(len(classes))
                                                             for image in p.images[p.labels == k][:SAMPLES_PER_CLASS]])
                                                for c, p in pilots])
    print(table)
    print(f"pilot: {args.out / 'pilot.md'}, {args.out / 'samples.png'}")


if __name__ == "__main__":
    main()
