"""The command line every stage shares: `--params`, the data folders, one-line usage errors, durations."""
from __future__ import annotations

from pathlib import Path

from diffaug.errors import OneLineParser


def stage_parser(prog: str, description: str, *, data_dirs: bool = False) -> OneLineParser:
    """A parser with `--params` (and, with `data_dirs`, `--prepared` / `--synthetic`); usage errors are one line, exit 2."""
    parser = OneLineParser(prog=prog, description=description)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="the pipeline's params.yaml")
    if data_dirs:
        parser.add_argument("--prepared", type=Path, default=Path("data/prepared"), help="the prepare stage's output")
        parser.add_argument("--synthetic", type=Path, default=Path("data/synthetic"), help="one folder per synthetic set")
    return parser


def human_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"
