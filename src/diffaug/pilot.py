"""Try candidate synthetic sets on a few images per class before paying for the whole set.

    python -m diffaug.pilot syn1 syn2 'syn2@steps=20,scheduler=dpmsolver++' --per-class 20

A candidate is a set under synthetic.sets, optionally with diffusion settings changed for it after `@`
(key=value pairs, comma-separated: steps, scheduler, guidance_scale, model, ...; checked as params.yaml
is). For each candidate the pilot makes the first --per-class images of every class, exactly as the
full set's generate stage would make them, and reports:

  fd, kid ± se, precision, recall   against the real training images, in the feature space of the
                                    real-only classifier (models/<model>/orig100/seed-<s>.pt; diffaug.metrics)
  recognised                        how often that classifier gives a pilot image its class
  probe                             train on synthetic, test on real: a linear classifier fitted on
                                    the pilot images' features, scored on real images it never saw
                                    (val.npz when the split has one, else a seeded draw of train.npz)
  images/s, full-set ETA, cost      measured here, for the rest of the full set at that rate

Candidates are ranked by probe accuracy (then by fd); a table goes to the terminal and to
<out>/pilot.md (and pilot.json), and a sample grid (one row of images per candidate) to <out>/samples.png.
Without the classifier the pilot still measures speed and draws the grid, and says what is missing.

The pilot wastes nothing: it makes whole batches of the full run (the batches holding the wanted images,
with the full run's batch size and speed levers) and keeps each batch's output under
<out>/<set>/batches (diffaug.generate.reuse). The generate stage reads them back (`--reuse`, default
data/pilot), so those images are not made again and the full set is byte-identical to one made
without a pilot. Reuse needs the same settings, batch size, levers, device and software; anything else
is a miss and is simply generated.
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
from diffaug.io import write_json_atomic

PROBE_STEPS = 300
REAL_PER_CLASS = 100  # real images per class for the metrics' reference and the probe's test


@dataclass
class Candidate:
    label: str      # as given on the command line
    set_name: str
    cfg: Config


@dataclass
class PilotImages:
    """What one candidate's pilot made."""

    images: np.ndarray     # uint8 NHWC, the wanted images that the safety checker let through
    labels: np.ndarray
    flagged: int           # wanted images the safety checker flagged (the full run regenerates them)
    made: int              # images generated or read back (whole batches: may exceed the wanted ones)
    reused: int            # of those, read back from an earlier pilot
    rate: float | None     # measured images/s (None when every batch was read back)
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
        data = copy.deepcopy(raw)
        for pair in filter(None, changes.split(",")):
            key, eq, value = pair.partition("=")
            if not eq:
                raise UserError(f"candidate {text!r}: {pair!r} is not key=value; e.g. syn1@steps=20,scheduler=ddim")
            data.setdefault("diffusion", {})[key.strip()] = parse_yaml(value, f"candidate {text!r}: {key.strip()}")  # as params.yaml is read
        out.append(Candidate(text, name, parse_config(data, f"{source} (candidate {text})")))
    if len({c.label for c in out}) != len(out):
        raise UserError("candidates: one is named twice")
    return out


# ----------------------------------------------------------------------------- generation (the generate stage's own code)
def make_pilot(cand: Candidate, classes: list[str], image_size: tuple[int, int], per_class: int, out: Path,
               prepared: Path, console) -> PilotImages:
    """The first `per_class` images of every class of the candidate's set, as whole batches of the full run."""
    from diffaug.generate.__main__ import plan_set
    from diffaug.generate.model import choose_levers, load_pipeline
    from diffaug.generate.plan import check_cpu_cost
    from diffaug.generate.reuse import BatchCache, batch_run, pilot_batches
    from diffaug.generate.runner import BatchSize, build_sampler, pick_device, sample_batch

    cfg = cand.cfg
    train = str(prepared / "train.npz") if isinstance(cfg.synthetic.sets[cand.set_name], Img2ImgSet) else None
    source, info, plan = plan_set(cfg, cand.set_name, train, classes, image_size)
    dif = plan.diffusion  # the family's defaults filled in
    n = min(per_class, plan.images_per_class)
    wanted = {c * plan.images_per_class + i for c in range(len(classes)) for i in range(n)}
    device = pick_device(dif)
    levers = choose_levers(dif, device.type, plan.num_images)  # the full run's levers: its batches, its bytes
    sizer = BatchSize(levers.batch_size, device, console, f"pilot {cand.label}")
    if sizer.probing:
        console.print(f"pilot {cand.label}: diffusion.batch_size auto sizes a GPU run's batches from measured memory, so the "
                      "full run cannot reuse these images; set the same -S diffusion.batch_size=N for the pilot and the full run")
    batch_size = sizer.size
    batches = pilot_batches(plan, wanted, batch_size)
    check_cpu_cost(dif, device.type, sum(len(b) for b in batches))
    pipe = load_pipeline(dif, source, info, device, img2img=plan.kind == "img2img")
    sampler, made_with = build_sampler(pipe, dif, levers, plan, sizer)  # as the full run: made_with is part of the key
    cache = BatchCache(out / cand.set_name / "batches")
    got: dict[int, tuple[np.ndarray, bool]] = {}
    times: list[tuple[int, float]] = []
    reused = 0
    for batch in batches:
        run = batch_run(batch, batch_size, levers.compile)
        start = time.perf_counter()
        result = sample_batch(sampler, plan, run, want_full=cfg.synthetic.save_full_resolution, made_with=made_with,
                              reuse=cache, keep=True)
        if result.read_back:
            reused += len(batch)
        else:
            times.append((len(batch), time.perf_counter() - start))
        if not result.all_finite:
            raise UserError(f"{cand.label}: non-finite (NaN/inf) pixels in a pilot batch; check diffusion.guidance_scale "
                            "and the model, or use diffusion.dtype: float32 or bfloat16")
        for j, (g, _) in enumerate(batch):
            got[g] = (result.small[j], bool(result.flagged[j]))
    keep = sorted(g for g in wanted if not got[g][1])
    rate = _rate(times)
    console.print(f"pilot {cand.label}: {len(wanted)} images wanted, {sum(len(b) for b in batches)} made in whole batches "
                  f"of {batch_size} ({reused} read back)" + (f", {rate:.3g} images/s on {device}" if rate else ""))
    h, w = plan.image_size
    images = np.stack([got[g][0] for g in keep]) if keep else np.zeros((0, h, w, 3), np.uint8)
    return PilotImages(images=images, labels=np.array([plan.class_and_index(g)[0] for g in keep], np.int64),
                       flagged=len(wanted) - len(keep), made=sum(len(b) for b in batches), reused=reused, rate=rate,
                       full_set=plan.num_images, device=str(device))


def _rate(times: list[tuple[int, float]]) -> float | None:
    """images/s after the first (warm-up) batch when there are several, else including it."""
    if not times:
        return None
    use = times[1:] if len(times) > 1 else times
    return sum(n for n, _ in use) / max(sum(t for _, t in use), 1e-9)


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
    x = torch.from_numpy((train_x - mean) / std).float()
    y = torch.from_numpy(train_y).long()
    g = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * 0.01)
        layer.bias.zero_()
    opt = torch.optim.Adam(layer.parameters(), lr=0.01, weight_decay=1e-3)
    for _ in range(PROBE_STEPS):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(layer(x), y).backward()
        opt.step()
    with torch.no_grad():
        pred = layer(torch.from_numpy((test_x - mean) / std).float()).argmax(1).numpy()
    return float((pred == test_y).mean())


@dataclass
class Scoring:
    """The real-only classifier and the real images every candidate is scored against, their features computed once."""
    classifier: Any
    reference: Split
    probe_test: Split
    real_feats: np.ndarray
    test_feats: np.ndarray
    batch_size: int
    device: Any

    @classmethod
    def build(cls, classifier, reference: Split, probe_test: Split, batch_size: int, device) -> Scoring:
        from diffaug.metrics import penultimate_features

        real_feats = penultimate_features(classifier, reference.images, batch_size, device)[0]
        test_feats = real_feats if probe_test is reference else penultimate_features(classifier, probe_test.images, batch_size, device)[0]
        return cls(classifier, reference, probe_test, real_feats, test_feats, batch_size, device)


def score(pilot: PilotImages, s: Scoring) -> dict[str, Any]:
    from diffaug.metrics import K_NEIGHBOURS, penultimate_features, set_quality

    reference, probe_test, real_feats, test_feats = s.reference, s.probe_test, s.real_feats, s.test_feats
    num_classes = len(reference.classes)
    if len(pilot.images) <= K_NEIGHBOURS:
        return {"note": f"only {len(pilot.images)} usable images; the metrics need more than {K_NEIGHBOURS}"}
    feats, logits = penultimate_features(s.classifier, pilot.images, s.batch_size, s.device)
    q = set_quality(real_feats, reference.labels, feats, pilot.labels, reference.classes)
    return {**q["overall"], "per_class": q["per_class"],
            "recognised": float((logits.argmax(1) == pilot.labels).mean()),
            "probe": linear_probe(feats, pilot.labels, test_feats, probe_test.labels, num_classes)}


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


def sample_grid(path: Path, rows: list[tuple[str, PilotImages]], num_classes: int, per_class: int = 4) -> None:
    """One row per candidate: the first `per_class` images of each class, the candidate's name on the left."""
    from PIL import Image, ImageDraw

    if not rows or not any(len(p.images) for _, p in rows):
        return
    h, w = next(p.images.shape[1:3] for _, p in rows if len(p.images))
    label_w = 8 * max(len(name) for name, _ in rows) + 8
    grid = Image.new("RGB", (label_w + num_classes * per_class * w, len(rows) * h), "white")
    draw = ImageDraw.Draw(grid)
    for r, (name, pilot) in enumerate(rows):
        draw.text((4, r * h + h // 2 - 6), name, fill="black")
        for c in range(num_classes):
            for j, img in enumerate(pilot.images[pilot.labels == c][:per_class]):
                grid.paste(Image.fromarray(img), (label_w + (c * per_class + j) * w, r * h))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    ap = stage_parser("python -m diffaug.pilot", __doc__.splitlines()[0], data_dirs=True)
    ap.add_argument("candidates", nargs="+", help="set[@key=value,...]: a set under synthetic.sets, with diffusion settings changed")
    ap.add_argument("--per-class", type=int, default=20, help="images per class of each candidate (default 20)")
    ap.add_argument("--classes", type=Path, default=Path("data/prepared/classes.json"))
    ap.add_argument("--classifier", type=Path, help="the real-only classifier (default models/<model>/orig100/seed-<first seed>.pt)")
    ap.add_argument("--out", type=Path, default=Path("data/pilot"), help="report and reusable batches (generate reads them back)")
    ap.add_argument("--gpu-hour-price", type=float, help="price of one device-hour, for the cost column")
    args = ap.parse_args(argv)
    if args.per_class < 1:
        raise UserError(f"--per-class: got {args.per_class}; allowed: an integer >= 1")
    raw = read_params(args.params) or {}
    candidates = parse_candidates(args.candidates, raw, str(args.params))
    classes, image_size = read_classes(args.classes)
    candidates[0].cfg.dataset.words(classes)  # refuses a label_names key that names no class, before any output
    base = candidates[0].cfg
    classifier_path = args.classifier or Path("models") / base.model / "orig100" / f"seed-{base.train.seeds[0]}.pt"

    from rich.console import Console

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    missing = [p for p in (classifier_path, args.prepared / "train.npz") if not p.is_file()]
    if missing:
        console.print(f"pilot: {' and '.join(map(str, missing))} missing: speed and samples only, no metrics "
                      f"(dvc repro train@{base.model}-orig100 makes the classifier)")
    pilots = [(c, make_pilot(c, classes, image_size, args.per_class, args.out, args.prepared, console)) for c in candidates]

    rows = []
    scoring: Scoring | None = None
    if not missing:
        from diffaug.devices import resolve_device
        from diffaug.formats.classifier import load_trained

        device = resolve_device(base.evaluate.device, "evaluate.device")
        classifier, _ = load_trained(classifier_path, device)
        scoring = Scoring.build(classifier, *real_reference(args.prepared, REAL_PER_CLASS), base.evaluate.batch_size, device)
    for cand, pilot in pilots:
        row: dict[str, Any] = {"candidate": cand.label, "set": cand.set_name, "images": int(len(pilot.images)),
                               "flagged": pilot.flagged, "made": pilot.made, "reused": pilot.reused, "device": pilot.device,
                               "images_per_s": pilot.rate, "full_set_images": pilot.full_set}
        if pilot.rate:
            seconds = (pilot.full_set - pilot.made) / pilot.rate
            row["eta_s"] = seconds
            row["eta"] = human_duration(seconds)
            row["device_hours"] = seconds / 3600
            row["cost"] = f"{seconds / 3600 * args.gpu_hour_price:.2f}" if args.gpu_hour_price else f"{seconds / 3600:.3g} device-h"
        if scoring is not None:
            row.update(score(pilot, scoring))
        rows.append(row)
    ranked = rank(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "pilot.json", {"per_class": args.per_class, "classifier": str(classifier_path) if scoring else None,
                                                "probe_test": "val.npz" if scoring and scoring.probe_test is not scoring.reference else "train.npz draw",
                                                "candidates": ranked})
    table = table_markdown(ranked)
    (args.out / "pilot.md").write_text(f"# Pilot: {args.per_class} images per class of each candidate\n\n{table}\n")
    sample_grid(args.out / "samples.png", [(c.label, p) for c, p in pilots], len(classes))
    print(table)
    print(f"pilot: {args.out / 'pilot.md'}, {args.out / 'samples.png'}; the full sets reuse these batches "
          f"(python -m diffaug.generate ... --reuse {args.out})")


if __name__ == "__main__":
    main()
