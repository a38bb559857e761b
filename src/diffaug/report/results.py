"""Results from DVC: every experiment's metrics/summary.json, read from `dvc exp show --json`.

That JSON (DVC 3.x) is a list of baselines (the workspace, then commits), each {"rev", "name", "data":
{"timestamp", "params": {file: {"data"}}, "metrics": {file: {"data"} or {"error"}}}, "experiments": [{"revs":
[<the same shape>], "executor": {"state"}}]}: numbers stay numbers, nothing is parsed back from display text.
"""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from diffaug.config import ARCHITECTURES
from diffaug.errors import UserError

SUMMARY = "metrics/summary.json"
KIND_RANK = {"workspace": 0, "commit": 1, "experiment": 2}
SKIP_STATES = {"queued": "queued, not run yet", "running": "still running", "failed": "failed"}


@dataclass
class Result:
    """One experiment's (or commit's, or the workspace's) metrics/summary.json."""

    name: str                      # experiment name, branch name or short sha, or "workspace"
    rev: str                       # full sha, or "workspace"
    kind: str                      # "experiment" | "commit" | "workspace"
    timestamp: datetime | None     # commit/experiment time; workspace: summary.json's mtime, if known
    model: str
    variant: str
    recipe: str
    seeds: int
    acc: dict[str, float]
    std: dict[str, float] = field(default_factory=dict)
    mixtures: dict[str, dict[str, float]] | None = None  # the run's own params.yaml `mixtures`, if listed
    summary: dict[str, Any] = field(default_factory=dict)  # the whole summary.json (quality and exchange-rate columns)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.model, self.variant, self.recipe)

    @property
    def display(self) -> str:
        if self.kind == "workspace":
            return "workspace"
        short = self.rev[:7]
        return f"{self.name} ({short})" if self.name != short else short

    def same_numbers(self, other: Result) -> bool:
        return (self.key, self.seeds, self.acc, self.std) == (other.key, other.seeds, other.acc, other.std)


def _numbers(values: Any) -> dict[str, float]:
    """The finite numbers of a {name: value} dict (None, text and booleans left out)."""
    if not isinstance(values, dict):
        return {}
    return {k: float(v) for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def _revs(exp_show: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], str, str]]:
    """(rev entry, kind, executor state) of every baseline and experiment."""
    for baseline in exp_show:
        yield baseline, "workspace" if baseline.get("rev") == "workspace" else "commit", ""
        for exp in baseline.get("experiments") or []:
            if exp.get("revs"):
                yield exp["revs"][0], "experiment", str((exp.get("executor") or {}).get("state") or "")


def _file(files: Any, name: str) -> dict[str, Any]:
    """One file's entry of a rev's "params" or "metrics" (the canonical path first, then any */<name>)."""
    files = files if isinstance(files, dict) else {}
    paths = sorted((p for p in files if Path(p).name == name), key=lambda p: (p.replace("\\", "/") != SUMMARY, p))
    return files[paths[0]] if paths else {}


def parse_exp_show(exp_show: Any, workspace_root: Path | None = None) -> tuple[list[Result], list[str]]:
    """Every usable summary in `dvc exp show --json` output, and a note per experiment left out: queued,
    running and failed ones (a failed run lists the summary.json it started from: someone else's numbers),
    unreadable summaries, and stale ones (their `model` is not the run's params `model`). `workspace_root`
    holds the workspace's summary, dated by its mtime."""
    if not isinstance(exp_show, list) or not all(isinstance(r, dict) for r in exp_show):
        raise UserError("exp show: expected the JSON list that `dvc exp show --json` prints; is this its output?")
    results, notes = [], []
    for entry, kind, state in _revs(exp_show):
        rev = str(entry.get("rev") or "")
        name = str(entry.get("name") or rev[:7])
        label = name if kind != "commit" else f"commit {name}"
        if state in SKIP_STATES:
            notes.append(f"{label}: {SKIP_STATES[state]}; left out")
            continue
        data = entry.get("data") or {}
        params = _file(data.get("params"), "params.yaml").get("data") or {}
        metrics = _file(data.get("metrics"), "summary.json")
        error = (metrics.get("error") or {}).get("type")
        if error not in (None, "FileNotFoundError"):
            notes.append(f"{label}: dvc could not read {SUMMARY} ({error}); left out")
            continue
        summary = metrics.get("data") or {}
        acc = _numbers(summary.get("test_acc"))
        if not acc:
            if kind == "experiment":
                notes.append(f"{label}: no {SUMMARY} with test_acc; left out")
            continue
        model = str(summary.get("model") or params.get("model") or "?")
        if params.get("model") not in (None, model):
            notes.append(f"{label}: {SUMMARY} is for {model} but its params say model {params['model']} "
                         "(stale summary); left out")
            continue
        timestamp = datetime.fromisoformat(data["timestamp"]) if data.get("timestamp") else None
        if kind == "workspace" and workspace_root is not None and (workspace_root / SUMMARY).is_file():
            timestamp = datetime.fromtimestamp((workspace_root / SUMMARY).stat().st_mtime)
        seeds = summary.get("seeds")
        mixtures = {m: _numbers(s) for m, s in params["mixtures"].items()} if isinstance(params.get("mixtures"), dict) else None
        train = params.get("train") or {}
        results.append(Result(
            name=name, rev=rev, kind=kind, timestamp=timestamp, model=model,
            variant=str(summary.get("variant") or train.get("variant") or "?"),
            recipe=str(summary.get("recipe") or train.get("recipe") or "?"),
            seeds=seeds if isinstance(seeds, int) and seeds >= 1 else 1,
            acc=acc, std={m: v for m, v in _numbers(summary.get("test_acc_std")).items() if m in acc},
            mixtures=mixtures, summary=summary))
    return results, notes


def select_rows(results: list[Result]) -> tuple[list[Result], list[str]]:
    """One row per (model, variant, recipe), the most recent, ordered by architecture; notes on what was dropped.

    A workspace whose numbers equal a named result's is a copy of it (after `dvc exp run`, `exp apply` or a
    commit) and is dropped. Ties of time (DVC's timestamps are to the second) go to an experiment, then a
    commit, then the workspace (undated with --exp-json), then the first listed."""
    named = [r for r in results if r.kind != "workspace"]
    candidates = [r for r in results if r.kind != "workspace" or not any(r.same_numbers(n) for n in named)]
    groups: dict[tuple, list[Result]] = {}
    for r in candidates:
        groups.setdefault(r.key, []).append(r)
    rows, notes = [], []
    for group in groups.values():
        ranked = sorted(group, key=lambda r: (r.timestamp or datetime.min, KIND_RANK[r.kind]), reverse=True)  # stable: ties keep list order
        best = ranked[0]
        rows.append(best)
        if len(ranked) > 1:
            notes.append(f"{best.model} ({best.variant}, {best.recipe}): {best.display} is the most recent of "
                         f"{len(group)}; older: " + ", ".join(r.display for r in ranked[1:]))
    return sorted(rows, key=lambda r: (model_order(r.model), r.variant, r.recipe)), notes


def model_order(model: str) -> tuple[int, str]:
    return (ARCHITECTURES.index(model), "") if model in ARCHITECTURES else (len(ARCHITECTURES), model)


def run_exp_show(all_commits: bool = False, cwd: Path | None = None) -> tuple[list[dict[str, Any]], str]:
    """(`dvc exp show --json` output, the command) for the repository around `cwd` (default: the current directory)."""
    if importlib.util.find_spec("dvc") is None:
        raise UserError("dvc is not available (not importable); install it or pass --exp-json FILE")
    args = ["exp", "show", "--json"] + (["--all-commits"] if all_commits else [])
    shown = "dvc " + " ".join(args)
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        why = next((line for line in lines if line.startswith("ERROR")), lines[-1] if lines else f"exit code {done.returncode}")
        raise UserError(f"`{shown}` failed in {cwd or Path.cwd()}: {why}")
    return json.loads(done.stdout), shown
