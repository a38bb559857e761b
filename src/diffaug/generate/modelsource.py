"""Check `diffusion.model` and fingerprint its weights before anything heavy is imported or loaded.

`diffusion.model` is a hub id (CompVis/stable-diffusion-v1-4) or a directory written by
`save_pretrained`; both are loaded by the same `StableDiffusionPipeline.from_pretrained` call. The
fingerprint is part of the settings hash, so swapping the weights behind an unchanged name still
invalidates old shards: a local directory is hashed by content, a hub model by its cached snapshot
commit (None when it is not downloaded yet; the caller fingerprints again after loading).
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Optional

from diffaug.config import DiffusionConfig
from diffaug.errors import UserError
from diffaug.io import sha256_file

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_OFF_HINT = "set diffusion.safety_checker: false (e.g. dvc exp run -S diffusion.safety_checker=false) to generate without it"


def local_model_dir(model: str) -> Optional[Path]:
    """The directory `model` names, or None when it is a hub id; a path-like name that is absent fails."""
    path = Path(model).expanduser()
    if path.exists():
        return path
    if not _HUB_ID.match(model):  # "/x", "./x", "~/x", "a/b/c": a path, and it is not there
        raise UserError(f"diffusion.model: directory {model!r} not found; allowed: a hub id such as "
                        "CompVis/stable-diffusion-v1-4 or a directory written by save_pretrained")
    return None


def check_model_source(dif: DiffusionConfig) -> Optional[Path]:
    """Fail early (one line) on a model directory that cannot work with these params; return it."""
    path = local_model_dir(dif.model)
    if path is None:
        return None
    index = path / "model_index.json"
    if not path.is_dir() or not index.is_file():
        raise UserError(f"diffusion.model: {model_label(dif)} has no model_index.json; allowed: a directory written "
                        "by StableDiffusionPipeline.save_pretrained, or a hub id")
    try:
        components = json.loads(index.read_text())
    except ValueError as e:
        raise UserError(f"{index}: not valid JSON ({e})") from None
    if dif.safety_checker and not _has_component(components, "safety_checker"):
        raise UserError(f"diffusion.safety_checker: true, but {model_label(dif)} has no safety checker weights; {_OFF_HINT}")
    if dif.variant is not None:
        unet = path / "unet"
        if not any(f".{dif.variant}." in p.name for p in unet.glob("*")):
            raise UserError(f"diffusion.variant: no {dif.variant!r} weights in {unet}; set diffusion.variant: null "
                            "to load the default weight files")
    return path


def _has_component(components: dict, name: str) -> bool:
    entry = components.get(name)
    return isinstance(entry, list) and len(entry) == 2 and all(entry)


def missing_safety_checker_error(dif: DiffusionConfig) -> UserError:
    return UserError(f"diffusion.safety_checker: true, but {model_label(dif)} has no safety checker weights; {_OFF_HINT}")


def model_label(dif: DiffusionConfig) -> str:
    return f"model {dif.model!r}" + (f" (revision {dif.revision})" if dif.revision else "")


def model_fingerprint(dif: DiffusionConfig) -> Optional[str]:
    path = local_model_dir(dif.model)
    if path is not None:
        return "sha256:" + directory_digest(path)
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    cached = try_to_load_from_cache(dif.model, "model_index.json", revision=dif.revision)
    if isinstance(cached, str):  # .../snapshots/<commit>/model_index.json
        return "hub-commit:" + Path(cached).parent.name
    return None


def directory_digest(root: Path) -> str:
    """sha256 over (relative path, file sha256) of every file under `root`, hidden ones excepted."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if any(part.startswith(".") for part in rel.split("/")):
            continue  # .cache/ and editor droppings are not weights
        h.update(f"{rel}\0{sha256_file(path)}\n".encode())
    return h.hexdigest()
