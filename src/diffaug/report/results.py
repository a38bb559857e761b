"""Results from DVC: every experiment's metrics/summary.json in `dvc exp show --json`, one row per config.

The JSON shape (DVC 3.x, checked against real output in tests/test_report.py): a list of baseline
entries, the workspace first,

    {"rev": "workspace" | <sha>, "name": <branch> | null, "error": null | {...},
     "data": {"rev", "timestamp", "params": {"params.yaml": {"data": {...}}},
              "metrics": {"metrics/summary.json": {"data": {...}} | {"error": {...}}}, "deps", "outs", "meta"},
     "experiments": null | [{"name", "executor": null | {"state": "queued"|"running"|"success"|"failed", ...},
                             "revs": [{"rev", "name", "data": {...}, "error", "experiments": null}]}]}

A queued experiment lists no metrics; a failed one lists the summary.json it started from (its
baseline's numbers, not its own) with error {"msg": "Experiment run failed"}.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
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
    timestamp: datetime | None  # commit/experiment time; workspace: summary.json's mtime, if known
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


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        return None
    return ts.astimezone().replace(tzinfo=None) if ts.tzinfo else ts  # naive local, like file mtimes


def _numbers(obj: Any) -> dict[str, float]:
    if not isinstance(obj, dict):
        return {}
    return {str(k): float(v) for k, v in obj.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _summary_of(metrics: Any) -> tuple[str | None, dict | None]:
    """(path, data) of the summary.json among a rev's metrics files, or (None, None)."""
    if not isinstance(metrics, dict):
        return None, None
    paths = sorted(metrics, key=lambda p: (p.replace("\\", "/") != SUMMARY, p))  # the canonical path first
    for path in paths:
        entry = metrics[path]
        if Path(path).name == "summary.json" and isinstance(entry, dict) and isinstance(entry.get("data"), dict) \
                and isinstance(entry["data"].get("test_acc"), dict):
            return path, entry["data"]
    return None, None


def _params_of(params: Any) -> dict:
    """The rev's params.yaml values ({} when dvc listed none)."""
    if not isinstance(params, dict):
        return {}
    for path in sorted(params, key=lambda p: Path(p).name != "params.yaml"):
        data = params[path].get("data") if isinstance(params[path], dict) else None
        if isinstance(data, dict):
            return data
    return {}


def _iter_revs(exp_show: Any) -> Iterable[tuple[dict, str, str | None, str | None]]:
    """(rev entry, kind, executor state, experiment name) for every rev (shape: the module docstring)."""
    if not isinstance(exp_show, list):
        raise UserError("dvc exp show --json: expected a JSON list of baselines; is this its output?")
    for top in exp_show:
        if not isinstance(top, dict):
            continue
        yield top, "workspace" if top.get("rev") == "workspace" else "commit", None, None
        for exp in top.get("experiments") or []:
            if not isinstance(exp, dict):
                continue
            state = (exp.get("executor") or {}).get("state") if isinstance(exp.get("executor"), dict) else None
            for rev in exp.get("revs") or []:
                if isinstance(rev, dict):
                    yield rev, "experiment", state, exp.get("name")


def parse_exp_show(exp_show: Any, workspace_root: Path | None = None) -> tuple[list[Result], list[str]]:
    """Every usable summary in `dvc exp show --json` output, and a note per experiment left out.

    Left out: queued, running and failed experiments (a failed run still lists the summary.json it
    started from, i.e. someone else's numbers), revs with an error, and summaries whose `model`
    differs from the rev's own params `model` (stale: evaluate has not rerun since the change).
    Commits without a summary.json (before the first run) are skipped silently.
    `workspace_root`: where the workspace's metrics file lies, to date it by its mtime.
    """
    results, notes = [], []
    for rev, kind, state, exp_name in _iter_revs(exp_show):
        sha = str(rev.get("rev") or "")
        name = rev.get("name") or exp_name or ("workspace" if kind == "workspace" else sha[:7])
        label = name if kind != "commit" else f"commit {name}"
        if state in SKIP_STATES:
            notes.append(f"{label}: {SKIP_STATES[state]}; left out")
            continue
        data: dict[str, Any] = rev["data"] if isinstance(rev.get("data"), dict) else {}
        if rev.get("error"):
            err = rev["error"].get("msg") if isinstance(rev["error"], dict) else rev["error"]
            notes.append(f"{label}: dvc reports an error ({err}); left out")
            continue
        path, summary = _summary_of(data.get("metrics"))
        if summary is None:
            if kind == "experiment":
                notes.append(f"{label}: no {SUMMARY} with test_acc; left out")
            continue
        assert path is not None  # _summary_of gives both or neither
        params = _params_of(data.get("params"))
        model = str(summary.get("model", params.get("model", "?")))
        if "model" in params and "model" in summary and str(params["model"]) != str(summary["model"]):
            notes.append(f"{label}: {path} is for {summary['model']} but its params say model {params['model']} "
                         "(stale summary); left out")
            continue
        train: dict[str, Any] = params["train"] if isinstance(params.get("train"), dict) else {}
        acc = _numbers(summary.get("test_acc"))
        if not acc:
            continue
        timestamp = _parse_time(data.get("timestamp"))
        if kind == "workspace" and workspace_root is not None and (workspace_root / path).is_file():
            timestamp = datetime.fromtimestamp((workspace_root / path).stat().st_mtime)
        mixtures = params.get("mixtures")
        results.append(Result(
            name=str(name), rev=sha, kind=kind, timestamp=timestamp, model=model,
            variant=str(summary.get("variant", train.get("variant", "?"))),
            recipe=str(summary.get("recipe", train.get("recipe", "?"))),
            seeds=int(summary.get("seeds", 1)) if isinstance(summary.get("seeds"), int) else 1,
            acc=acc, std={m: s for m, s in _numbers(summary.get("test_acc_std")).items() if m in acc},
            mixtures={str(k): _numbers(v) for k, v in mixtures.items()} if isinstance(mixtures, dict) else None,
            summary=summary))
    return results, notes


def select_rows(results: list[Result]) -> tuple[list[Result], list[str]]:
    """One row per (model, variant, recipe): the most recent result; notes on what was dropped.

    How the row is chosen:
      1. The workspace is dropped when its numbers equal any experiment's or commit's (after
         `dvc exp run` / `exp apply` / a commit it is a copy of that one, which has a name).
      2. Otherwise every candidate is ranked by time: an experiment's or commit's timestamp, the
         workspace's summary.json mtime (unknown with --exp-json: then it ranks below them all).
         The latest wins; on a tie (DVC's timestamps are to the second) an experiment beats a
         commit beats the workspace, then the first listed by dvc wins.
    Rows come out ordered by architecture (config.ARCHITECTURES order), variant, recipe.
    """
    named = [r for r in results if r.kind != "workspace"]
    candidates, notes = [], []
    for r in results:
        if r.kind == "workspace":
            twin = next((n for n in named if r.same_numbers(n)), None)
            if twin is not None:
                continue  # the workspace is a copy of a named result
        candidates.append(r)
    groups: dict[tuple, list[Result]] = {}
    for r in candidates:
        groups.setdefault(r.key, []).append(r)
    rows = []
    for group in groups.values():
        ranked = sorted(enumerate(group), key=lambda ir: (ir[1].timestamp or datetime.min, KIND_RANK[ir[1].kind], -ir[0]),
                        reverse=True)
        best = ranked[0][1]
        rows.append(best)
        if len(ranked) > 1:
            notes.append(f"{best.model} ({best.variant}, {best.recipe}): {best.display} is the most recent of "
                         f"{len(group)}; older: " + ", ".join(r.display for _, r in ranked[1:]))
    return sorted(rows, key=lambda r: (model_order(r.model), r.variant, r.recipe)), notes


def model_order(model: str) -> tuple[int, str]:
    return (ARCHITECTURES.index(model), "") if model in ARCHITECTURES else (len(ARCHITECTURES), model)


def find_dvc() -> list[str] | None:
    """The command that runs dvc: `dvc` on PATH, else this interpreter's dvc module, else None."""

    exe = shutil.which("dvc")
    if exe:
        return [exe]
    if importlib.util.find_spec("dvc") is not None:
        return [sys.executable, "-m", "dvc"]
    return None


def run_exp_show(all_commits: bool = False) -> tuple[Any, str]:
    """(parsed output, the command line) of `dvc exp show --json` in the current directory."""
    dvc = find_dvc()
    if dvc is None:
        raise UserError("dvc is not available (not on PATH, not importable); install it or pass --exp-json FILE")
    args = ["exp", "show", "--json"] + (["--all-commits"] if all_commits else [])
    shown = "dvc " + " ".join(args)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(dvc + args, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        err = next((ln for ln in lines if ln.startswith("ERROR")), lines[-1] if lines else f"exit code {proc.returncode}")
        raise UserError(f"`{shown}` failed in {Path.cwd()}: {err}")
    try:
        return json.loads(proc.stdout), shown
    except json.JSONDecodeError as e:
        raise UserError(f"`{shown}` did not print JSON ({e})") from None

