"""Atomic file writes and content hashes, shared by every stage.

A stage that is killed mid-write must leave either the old file or the new one, never half of one:
everything is written to a temporary file in the same directory, fsync'ed, then renamed into place.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from diffaug.errors import UserError, os_fault

_UMASK = os.umask(0)
os.umask(_UMASK)


def ensure_writable_dir(path: str | Path, key: str, keep: bool = False) -> None:
    """Check, before any expensive work, that `path` is (or can become) a folder this process can write in.
    Unless `keep`, the folders it created are removed again: a stage that stops on a bad input leaves nothing."""
    path = Path(path)
    created: list[Path] = []
    try:
        created = [folder for folder in (path, *path.parents) if not folder.exists()]
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path) as probe:
            probe.write(b"\0")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as e:
        raise UserError(f"{key}: {os_fault(e, path)}") from None
    finally:
        for folder in created if not keep else ():  # innermost first
            with contextlib.suppress(OSError):
                folder.rmdir()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path` atomically. On any OSError
    the temporary file is removed (the old file stays, or none) and the error is one UserError line."""
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise os_fault(e, path) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, data: bytes | memoryview) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def save_torch_atomic(path: str | Path, obj: Any) -> None:
    """torch.save, atomically. Serialised in memory first: torch's writer turns a full disk into an opaque
    RuntimeError ("unexpected pos"), where a plain write raises the OSError that names the cause."""
    import torch  # here: the numpy-only readers of this module do not pay for importing torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomic(path, buffer.getbuffer())


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def save_npz_atomic(path: str | Path, **arrays: np.ndarray) -> None:
    """Uncompressed .npz (pixels barely compress), atomically, with a fixed timestamp per entry: np.savez
    stamps the current time, so the same arrays would hash differently and DVC would see a changed output."""
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, array in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with zf.open(info, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)


def load_npz(path: str | Path, fix: str = "", label: str | None = None) -> dict[str, np.ndarray]:
    """Every array of an .npz, never unpickling; any way the file can be broken is one UserError line
    starting with `label` (default: the path) and ending with `fix` (e.g. "rerun the prepare stage")."""
    path = Path(path)
    hint = f"; {fix}" if fix else ""
    name = label or str(path)
    if not path.is_file():
        raise UserError(f"{name}: not found{hint}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":  # not a zip: np.load would take any other bytes for a pickle and say so, wrongly
        raise UserError(f"{name}: not an .npz archive ({f'it starts with {magic!r}' if magic else 'an empty file'}){hint}")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # truncated zip, bad CRC, broken array headers: all mean "damaged file"
        why = ("holds pickled Python objects, which are never loaded" if "allow_pickle" in str(e)
               else f"truncated or corrupt .npz ({type(e).__name__}: {str(e)[:120]})")
        raise UserError(f"{name}: {why}{hint}") from None


def read_json(path: str | Path, missing: str, suffix: str = "") -> Any:
    """Parsed JSON at `path`; a missing (`missing` says so) or unparsable file is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {missing}")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({str(e)[:120]}){suffix}") from None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()  # chunk by chunk: hashlib.file_digest is Python 3.11+, and the project supports 3.10
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Stable hash of a JSON-able settings object (key order does not matter)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
