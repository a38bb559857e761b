"""The on-disk form of a synthetic set, and its numpy-only reader (no torch, no diffusers).

Layout of `data/synthetic/<set>/`:
  shard-00000.npz ...  uint8 NHWC images at the dataset size, in (class, index) order, with labels, seeds,
                       regeneration counts, and a `meta` JSON string: settings hash, first global index,
                       count, device, provenance (batch size, levers, devices.run_conditions)
  full/shard-00000/    512² PNGs `<class>_<index>.png`, only with synthetic.save_full_resolution
  manifest.json        written last, once every shard exists: settings (+ hash), generator, per shard
                       file/sha256/range/provenance and the provenance groups, per image class/prompt/seed/
                       regenerations (an img2img image also its real source)
  samples.png          a row per class, the first images of each (like the paper's Fig. 8)

Every file is written atomically (diffaug.io), so a killed run leaves whole files or none.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from diffaug.errors import UserError
from diffaug.io import atomic_path, load_npz, read_json, save_npz_atomic, sha256_file, sha256_json, write_bytes_atomic

FORMAT = "diffaug-synthetic/1"
MANIFEST = "manifest.json"
SAMPLES = "samples.png"
FULL_DIR = "full"
SAMPLES_PER_CLASS = 8
_ARRAYS = ("images", "labels", "seeds", "regenerations", "flagged")
_RERUN = "rerun the generate stage to make it again"


@dataclass(frozen=True)
class SetLayout:
    """Image g = c * images_per_class + i is in shard g // images_per_shard; `settings` (and its hash) is
    everything that changes the bytes of a shard."""

    set_name: str
    classes: tuple[str, ...]
    image_size: tuple[int, int]  # (H, W) of the stored images
    images_per_class: int
    images_per_shard: int
    settings: dict[str, Any]
    settings_hash: str

    @property
    def num_images(self) -> int:
        return len(self.classes) * self.images_per_class

    @property
    def num_shards(self) -> int:
        return -(-self.num_images // self.images_per_shard)

    @property
    def save_full_resolution(self) -> bool:
        return bool(self.settings["save_full_resolution"])

    def shard_range(self, k: int) -> range:
        return range(k * self.images_per_shard, min((k + 1) * self.images_per_shard, self.num_images))

    def class_and_index(self, g: int) -> tuple[int, int]:
        return divmod(g, self.images_per_class)


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.npz"


def full_dir(out_dir: Path, k: int) -> Path:
    return out_dir / FULL_DIR / f"shard-{k:05d}"


def write_shard(out_dir: Path, k: int, plan: SetLayout, *, images: np.ndarray, seeds: np.ndarray,
                regenerations: np.ndarray, flagged: np.ndarray, device: str,
                provenance: dict[str, Any] | None = None) -> None:
    first = plan.shard_range(k).start
    labels = np.array([plan.class_and_index(g)[0] for g in plan.shard_range(k)], dtype=np.int64)
    arrays = {"images": images, "labels": labels, "seeds": seeds.astype(np.uint64),
              "regenerations": regenerations.astype(np.int64), "flagged": flagged.astype(bool)}
    meta = {"format": FORMAT, "settings_hash": plan.settings_hash, "first": first, "count": len(labels), "device": device,
            "provenance": provenance or {}}
    save_npz_atomic(out_dir / shard_name(k), meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)


def valid_shard(out_dir: Path, plan: SetLayout, k: int) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """The shard's arrays and meta if shard k exists, is readable (zip CRCs intact, every array present) and
    belongs to exactly this plan (with its full-resolution PNGs, when the plan keeps them), else None."""
    try:
        data = load_npz(out_dir / shard_name(k))
        meta = json.loads(str(data["meta"]))
        arrays = {name: data[name] for name in _ARRAYS}
    except Exception:  # no file, a truncated zip, a missing key, bad JSON: all mean "not a shard"
        return None
    span = plan.shard_range(k)
    h, w = plan.image_size
    if (meta.get("settings_hash") != plan.settings_hash or meta.get("first") != span.start
            or meta.get("count") != len(span) or arrays["images"].shape != (len(span), h, w, 3)
            or arrays["images"].dtype != np.uint8):
        return None
    if plan.save_full_resolution and not all((full_dir(out_dir, k) / full_png_name(plan, g)).is_file() for g in span):
        return None
    return arrays, meta


def full_png_name(plan: SetLayout, g: int) -> str:
    c, i = plan.class_and_index(g)
    return f"{plan.classes[c]}_{i:05d}.png"


def write_full_png(out_dir: Path, plan: SetLayout, g: int, image: np.ndarray) -> None:
    """Image g at the generation resolution (uint8 HWC), written atomically into its shard's folder."""
    path = full_dir(out_dir, g // plan.images_per_shard) / full_png_name(plan, g)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


# ----------------------------------------------------------------------------- cleanup
def remove_outdated_summary(out_dir: Path) -> None:
    """Before new shards are written: the manifest and grid describe an older state of the set."""
    for name in (MANIFEST, SAMPLES):
        for path in (out_dir / name, *out_dir.glob(f".{name}.*.tmp")):
            path.unlink(missing_ok=True)


def prepare_shard_slot(out_dir: Path, k: int) -> None:
    """Remove what a killed or outdated attempt at shard k left: the shard, its temp files, its PNGs."""
    for path in (out_dir / shard_name(k), *out_dir.glob(f".{shard_name(k)}.*.tmp")):
        path.unlink(missing_ok=True)
    shutil.rmtree(full_dir(out_dir, k), ignore_errors=True)


def _remove_strays(out_dir: Path, plan: SetLayout, *, all_temp_files: bool) -> None:
    expected = {shard_name(k) for k in range(plan.num_shards)}
    for path in [*out_dir.glob("shard-*.npz"), *out_dir.glob(".shard-*.tmp")]:
        if path.name not in expected:
            path.unlink(missing_ok=True)
    if all_temp_files:  # only a lone process may: another rank could be writing its manifest copy
        for path in out_dir.glob(".*.tmp"):
            path.unlink(missing_ok=True)
    if not plan.save_full_resolution:
        shutil.rmtree(out_dir / FULL_DIR, ignore_errors=True)
        return
    keep = {full_dir(out_dir, k).name for k in range(plan.num_shards)}  # every one exists: the shards are valid
    for path in (out_dir / FULL_DIR).iterdir():  # another finishing rank may be removing the same strays
        if path.name not in keep and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.name not in keep:
            path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- manifest
def _manifest_text(manifest: dict[str, Any]) -> str:
    """Indented JSON, but one line per image: a 50k-image manifest stays readable and small."""
    head = {k: v for k, v in manifest.items() if k != "images"}
    lines = ",\n".join("    " + json.dumps(entry) for entry in manifest["images"])
    return json.dumps(head, indent=2)[:-2] + ',\n  "images": [\n' + lines + "\n  ]\n}\n"


def provenance_groups(provenances: list[dict[str, Any]]) -> dict[str, Any]:
    """Which shards were made under which provenance, and what that means for their bytes, claiming no more than holds."""
    groups: list[dict[str, Any]] = []
    for k, prov in enumerate(provenances):
        group = next((g for g in groups if g["provenance"] == prov), None)
        if group is None:
            groups.append(group := {"shards": [], "provenance": prov})
        group["shards"].append(k)
    if len(groups) == 1:
        note = ("every shard was made under the same provenance (see groups): batch size, speed levers, device, GPU, "
                "CPU threads, dtype and library versions; only a rerun under all of these can give the same bytes")
    else:
        note = (f"shards were made under {len(groups)} different provenances (see groups): the same seeds and pixel "
                "settings, but the set's bytes match no single run; a rerun gives a shard's bytes only under its "
                "own group's provenance")
    return {"note": note, "groups": groups}


def assemble(out_dir: Path, plan: SetLayout, prompts: Sequence[str], *, lone_process: bool,
             extras: Sequence[dict[str, Any]] | None = None, generator: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Write samples.png and manifest.json if every shard is present and valid; else return None. `extras[g]`
    adds fields to image g's entry. Deterministic: two ranks finishing at once write identical files."""
    found = [valid_shard(out_dir, plan, k) for k in range(plan.num_shards)]
    shards = [s for s in found if s is not None]
    if len(shards) != len(found):
        return None
    _remove_strays(out_dir, plan, all_temp_files=lone_process)
    images, entries, shard_entries = [], [], []
    for k, (arrays, meta) in enumerate(shards):
        shard_entries.append({"file": shard_name(k), "sha256": sha256_file(out_dir / shard_name(k)),
                              "first": meta["first"], "count": meta["count"], "device": meta["device"],
                              "provenance": meta.get("provenance", {})})
        for j, g in enumerate(plan.shard_range(k)):
            c, i = plan.class_and_index(g)
            entries.append({"class": plan.classes[c], "index": i, "prompt": prompts[g],
                            "seed": int(arrays["seeds"][j]), "regenerations": int(arrays["regenerations"][j]),
                            "flagged": bool(arrays["flagged"][j]), **(extras[g] if extras is not None else {})})
        images.append(arrays["images"])
    manifest = {
        "format": FORMAT,
        "set": plan.set_name,
        "settings_hash": plan.settings_hash,
        "digest": _digest(plan.settings_hash, [s["sha256"] for s in shard_entries]),
        "num_images": plan.num_images,
        "classes": list(plan.classes),
        "image_size": list(plan.image_size),
        "regenerations": sum(e["regenerations"] for e in entries),
        "still_flagged_blacked_out": sum(e["flagged"] for e in entries),
        "settings": plan.settings,
        **({"generator": generator} if generator is not None else {}),
        "provenance": provenance_groups([s["provenance"] for s in shard_entries]),
        "shards": shard_entries,
        "images": entries,
    }
    pixels, per_row = np.concatenate(images), min(SAMPLES_PER_CLASS, plan.images_per_class)
    write_image_grid(out_dir / SAMPLES, [(name, pixels[c * plan.images_per_class:][:per_row])
                                         for c, name in enumerate(plan.classes)])
    write_bytes_atomic(out_dir / MANIFEST, _manifest_text(manifest).encode())  # last: it marks completion
    return manifest


def write_image_grid(path: Path, rows: Sequence[tuple[str, Sequence[np.ndarray] | np.ndarray]]) -> None:
    """A row of uint8 HWC tiles per name, upscaled (nearest) to >= 64 px so 32² images are visible, the name
    at the left of each row (like the paper's Fig. 8). Nothing is written without a tile."""
    tiles = [tile for _, row in rows for tile in row]
    if not tiles:
        return
    h, w = tiles[0].shape[:2]
    scale = max(1, -(-64 // min(h, w)))
    pad = 2
    font = ImageFont.load_default()
    label_width = pad + max(int(np.ceil(font.getlength(name))) for name, _ in rows) + 2 * pad
    per_row = max(len(row) for _, row in rows)
    grid = np.full((len(rows) * (h * scale + pad) + pad, label_width + per_row * (w * scale + pad), 3), 255, np.uint8)
    for r, (_, row) in enumerate(rows):
        for i, tile in enumerate(row):
            y, x = pad + r * (h * scale + pad), label_width + i * (w * scale + pad)
            grid[y:y + h * scale, x:x + w * scale] = tile.repeat(scale, 0).repeat(scale, 1)
    picture = Image.fromarray(grid)
    draw = ImageDraw.Draw(picture)
    for r, (name, _) in enumerate(rows):
        draw.text((pad, pad + r * (h * scale + pad) + h * scale // 2), name, fill=(0, 0, 0), font=font, anchor="lm")
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")


# ----------------------------------------------------------------------------- readers for consumers
def _digest(settings_hash: str, shard_hashes: list[str]) -> str:
    return sha256_json({"settings_hash": settings_hash, "shards": shard_hashes})[:16]


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    path = Path(out_dir) / MANIFEST
    manifest = read_json(path, f"not found; the synthetic set is incomplete, {_RERUN}", f"; {_RERUN}")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{path}: not a {FORMAT} manifest; {_RERUN}")
    shard_keys = {"file": str, "sha256": str, "first": int, "count": int}
    size = manifest.get("image_size")
    if not (isinstance(manifest.get("settings_hash"), str) and isinstance(manifest.get("num_images"), int)
            and isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)
            and isinstance(manifest.get("shards"), list)
            and all(isinstance(e, dict) and all(isinstance(e.get(k), t) for k, t in shard_keys.items())
                    for e in manifest["shards"])):
        raise UserError(f"{path}: incomplete manifest (needs settings_hash, num_images, image_size and shards "
                        f"with {', '.join(shard_keys)}); {_RERUN}")
    return manifest


def synthetic_digest(out_dir: str | Path) -> str:
    """A short content hash of a finished set (settings hash + every shard's sha256), from its manifest."""
    manifest = read_manifest(out_dir)
    return _digest(manifest["settings_hash"], [s["sha256"] for s in manifest["shards"]])


def load_synthetic(out_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 NHWC, labels int64) of a finished set; a missing or modified shard is one line naming it."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    h, w = manifest["image_size"]
    expected_first = 0
    images, labels = [], []
    for entry in manifest["shards"]:
        path = out_dir / entry["file"]
        if not path.is_file():
            raise UserError(f"{path}: missing; {_RERUN}")
        if entry["first"] != expected_first:
            raise UserError(f"{out_dir / MANIFEST}: shards do not cover the images contiguously; {_RERUN}")
        if sha256_file(path) != entry["sha256"]:
            raise UserError(f"{path}: sha256 differs from {MANIFEST} (corrupt or modified); {_RERUN}")
        data = load_npz(path)
        if data["images"].shape != (entry["count"], h, w, 3) or data["labels"].shape != (entry["count"],):
            raise UserError(f"{path}: arrays do not have the shapes {MANIFEST} states; {_RERUN}")
        images.append(data["images"])
        labels.append(data["labels"].astype(np.int64))
        expected_first += entry["count"]
    if expected_first != manifest["num_images"]:
        raise UserError(f"{out_dir / MANIFEST}: lists {expected_first} of {manifest['num_images']} images; {_RERUN}")
    return np.concatenate(images), np.concatenate(labels)
