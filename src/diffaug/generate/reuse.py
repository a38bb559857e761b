"""Batches made ahead of the full run (by `python -m diffaug.pilot`), reused by it: the one seam between them.

An image's bytes depend on the batch it was made in (batch size, the images beside it, padding), so what
is stored is the sampler's whole output for one exact batch, keyed by everything that decides those
bytes: the plan's settings hash, the batch as run ([[g, attempt], ...], padding included), want_full and
runner.provenance (levers, device, GPU, torch, diffusers). The full run (runner.sample_batch) looks each
batch up first and uses a hit as if the sampler had just returned it, so a set made after a pilot is
byte-identical to one made without; a miss is simply generated. The full run never deletes entries.

A shard's queue is `plan.work_order(span)` cut into batch_size chunks and regenerations go to its end,
so every chunk but the last is the full run's batch whatever the safety checker flags (pilot_batches).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from diffaug.generate.plan import Plan
from diffaug.io import save_npz_atomic, sha256_json

Run = list[tuple[int, int]]  # (global index, attempt) per row of a batch, padding included


def batch_run(batch: Run, batch_size: int, pad: bool) -> Run:
    """The batch as the sampler runs it: with torch.compile the last batch is filled with repeats (one shape)."""
    return batch + [batch[-1]] * (batch_size - len(batch)) if pad else batch


def pilot_batches(plan: Plan, wanted: set[int], batch_size: int) -> list[Run]:
    """The first-pass batches of the full run (attempt 0, unpadded) that hold any image of `wanted`."""
    out: list[Run] = []
    for k in sorted({g // plan.images_per_shard for g in wanted}):
        order = plan.work_order(plan.shard_range(k))
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            if wanted.intersection(chunk):
                out.append([(g, 0) for g in chunk])
    return out


class BatchCache:
    """Sampler outputs of whole batches under `root`, one .npz per batch key."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @staticmethod
    def key(plan: Plan, run: Run, want_full: bool, made_with: dict[str, Any]) -> str:
        return sha256_json({"settings": plan.settings_hash, "run": [[int(g), int(a)] for g, a in run],
                            "want_full": bool(want_full), "made_with": made_with})

    def path(self, key: str) -> Path:
        return self.root / f"{key[:32]}.npz"

    def get(self, key: str):
        """The stored BatchOutput for `key`, or None."""
        from diffaug.generate.sampler import BatchOutput

        try:
            with np.load(self.path(key), allow_pickle=False) as z:
                if str(z["key"]) != key:
                    return None
                return BatchOutput(small=z["small"], full=z["full"] if "full" in z.files else None,
                                   flagged=[bool(f) for f in z["flagged"]], finite=z["finite"], read_back=True)
        except (OSError, ValueError, KeyError):  # absent, truncated or foreign: a miss, never an image
            return None

    def put(self, key: str, out) -> None:
        arrays: dict[str, Any] = {"key": np.array(key), "small": out.small, "flagged": np.asarray(out.flagged, bool),
                                  "finite": out.finite}
        if out.full is not None:
            arrays["full"] = out.full
        save_npz_atomic(self.path(key), **arrays)
