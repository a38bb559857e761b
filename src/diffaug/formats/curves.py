"""Training curves: dvclive's per-metric TSVs, and the gathered `metrics/curves/<mix>.tsv`.

The train stage logs each seed with dvclive to `metrics/train/<model>/<mix>/seed-<s>/`, which keeps
one TSV per metric under `plots/metrics/` (columns: timestamp, step, <metric>). `read_live_curves`
joins them into one row per epoch; `write_curves` writes such rows as one TSV with every column,
because DVC plots a directory file by file and warns about a field missing from a file.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

from diffaug.io import write_bytes_atomic

# Column of the gathered TSV -> dvclive metric name (its file is plots/metrics/<name>.tsv).
COLUMNS = {"train_acc": "train/acc", "val_acc": "val/acc", "train_loss": "train/loss", "val_loss": "val/loss", "lr": "lr"}

Row = dict[str, float]


def live_tsv(live_dir: Path, column: str) -> Path:
    return live_dir / "plots" / "metrics" / f"{COLUMNS[column]}.tsv"


def _read_metric(path: Path) -> dict[int, float]:
    """step -> value of one dvclive metric file; unreadable rows are skipped, an absent file is empty."""
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    if len(rows) < 2 or "step" not in rows[0]:
        return {}
    step_at, value_at = rows[0].index("step"), len(rows[0]) - 1
    values: dict[int, float] = {}
    for r in rows[1:]:
        try:
            step, value = int(float(r[step_at])), float(r[value_at])
        except (ValueError, IndexError):
            continue
        if math.isfinite(value):
            values[step] = value
    return values


def read_live_curves(live_dir: Path) -> list[Row]:
    """One row per logged epoch: {"step": s, <column>: value, ...}, in step order."""
    rows: dict[int, Row] = {}
    for column in COLUMNS:
        for step, value in _read_metric(live_tsv(live_dir, column)).items():
            rows.setdefault(step, {"step": float(step)})[column] = value
    return [rows[s] for s in sorted(rows)]


def write_curves(path: Path, rows: list[Row]) -> None:
    columns = ["step", *COLUMNS]
    lines = ["\t".join(columns)]
    for r in rows:
        lines.append("\t".join("" if c not in r else str(int(r[c])) if c == "step" else str(r[c]) for c in columns))
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode())
