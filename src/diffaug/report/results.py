"""Results from DVC: every experiment's metrics/summary.json, read from `dvc.api.exp_show()` rows.

`dvc.api.exp_show()` (DVC 3.x) returns the table `dvc exp show` prints, one flat dict per row:
"Experiment" (an experiment's name, "" for a baseline), "rev" ("workspace", a branch name or a short
sha), "typ" ("baseline" | "branch_base" | "branch_commit"), "Created", "State" ("Queued" |
"Running" | "Success" | "Failed", for queue runs), then a column per flattened metric and param
(`test_acc.orig100`, `mixtures.orig50_syn1_50.syn1`, ...). A name found in both a metrics and a
params file is prefixed with its file (`metrics/summary.json:model`, `params.yaml:model`). Numbers
come back as floats, a file dvc could not read as "!" and a missing value as None.

A queued experiment lists no metrics; a failed one lists the summary.json it started from (its
baseline's numbers, not its own).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from diffaug.config import ARCHITECTURES, json_schema
from diffaug.errors import UserError

SUMMARY = "metrics/summary.json"
KIND_RANK = {"workspace": 0, "commit": 1, "experiment": 2}
SKIP_STATES = {"queued": "queued, not run yet", "running": "still running", "failed": "failed"}
# Top-level keys of params.yaml, from the config's own schema: an unprefixed column under one of them is a
# param, any other a summary field.
PARAM_SECTIONS = frozenset(json_schema()["properties"])
DEP_HASH = re.compile(r"[0-9a-f]{32}(\.dir)?")  # a dependency column's value: dvc's md5 of the file or folder
ROW_HEADERS = frozenset({"Experiment", "rev", "typ", "Created", "parent", "State", "Executor"})  # dvc's own columns


@dataclass
class Result:
    """One experiment's (or commit's, or the workspace's) metrics/summary.json."""

    name: str                      # experiment name, branch name or short sha, or "workspace"
    rev: str                       # short sha (a branch name for a baseline commit), or "workspace"
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


def _parse_created(value: Any) -> datetime | None:
    """dvc's "Created" cell: "%I:%M %p" for today, "%b %d, %Y" before (local time), or ISO."""
    if not isinstance(value, str) or not value:
        return None
    for fmt, today in (("%I:%M %p", True), ("%b %d, %Y", False)):
        try:
            parsed = datetime.strptime(value, fmt)
        except ValueError:
            continue
        return datetime.combine(date.today(), parsed.time()) if today else parsed
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        return None
    return ts.astimezone().replace(tzinfo=None) if ts.tzinfo else ts  # naive local, like file mtimes


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _split(row: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """(summary.json's fields, params.yaml's fields, the summary's path) of one row, flattened.

    A prefixed column names its file. An unprefixed one is a param when its first part is a top-level
    key of params.yaml (PARAM_SECTIONS), else a summary field; dvc's own columns and the
    dependency columns (a path, an md5 value) are neither. A name in both files is prefixed by dvc, so `model` is too.
    """
    summary: dict[str, Any] = {}
    params: dict[str, Any] = {}
    paths = sorted({k.split(":", 1)[0] for k in row if ":" in k and Path(k.split(":", 1)[0]).name == "summary.json"},
                   key=lambda p: (p.replace("\\", "/") != SUMMARY, p))  # the canonical path first
    path = paths[0] if paths else None
    for key, value in row.items():
        value = None if value == "None" else value  # dvc prints a value missing from a file as "None"
        if ":" in key:
            where, name = key.split(":", 1)
            if where == path:
                summary[name] = value
            elif Path(where).name == "params.yaml":
                params[name] = value
        elif key in ROW_HEADERS or "/" in key or (isinstance(value, str) and DEP_HASH.fullmatch(value)):
            continue  # dvc's own columns and the dependencies' hashes
        elif key.split(".", 1)[0] in PARAM_SECTIONS:
            params[key] = value
        else:
            summary[key] = value
    return summary, params, path or (SUMMARY if summary else None)


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{"syn_fd": {"syn1": 3.2}} from {"syn_fd.syn1": 3.2} (one level: mixture and set names hold no dots)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if value is None:
            continue
        head, _, rest = key.partition(".")
        if rest:
            slot = out.setdefault(head, {})
            if isinstance(slot, dict):
                slot[rest] = value
        else:
            out[head] = value
    return out


def _group(flat: dict[str, Any], prefix: str) -> dict[str, Any]:
    """{"a": v} from {prefix + "a": v}, leaving out None cells and deeper keys."""
    return {k[len(prefix):]: v for k, v in flat.items()
            if k.startswith(prefix) and "." not in k[len(prefix):] and v is not None}


def _mixtures(params: dict[str, Any]) -> dict[str, dict[str, float]] | None:
    """The row's params.yaml `mixtures` as {mix: {source: fraction}} (a filter's settings left out)."""
    mixes: dict[str, dict[str, float]] = {}
    for key, value in params.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "mixtures" and value is not None:
            number = _number(value)
            if number is not None:
                mixes.setdefault(parts[1], {})[parts[2]] = number
    return mixes or None


def _kind(row: dict[str, Any]) -> str:
    if row.get("typ") == "baseline":
        return "workspace" if row.get("rev") == "workspace" else "commit"
    return "experiment"


def parse_exp_show(rows: Any, workspace_root: Path | None = None) -> tuple[list[Result], list[str]]:
    """Every usable summary in `dvc.api.exp_show()` rows, and a note per experiment left out.

    Left out: queued, running and failed experiments (a failed run still lists the summary.json it
    started from, i.e. someone else's numbers), rows whose summary dvc could not read, and summaries
    whose `model` differs from the row's own params `model` (stale: evaluate has not rerun since the
    change). Commits without a summary.json (before the first run) are skipped silently.
    `workspace_root`: where the workspace's metrics file lies, to date it by its mtime.
    """
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise UserError("exp_show: expected a JSON list of rows as dvc.api.exp_show() returns; is this its output?")
    results, notes = [], []
    for row in rows:
        kind = _kind(row)
        rev = str(row.get("rev") or "")
        name = row.get("Experiment") or rev
        label = name if kind != "commit" else f"commit {name}"
        state = str(row.get("State") or "").lower()
        if state in SKIP_STATES:
            notes.append(f"{label}: {SKIP_STATES[state]}; left out")
            continue
        summary, params, path = _split(row)
        if "!" in summary.values():
            notes.append(f"{label}: dvc could not read {path}; left out")
            continue
        acc = {m: v for m, v in ((m, _number(v)) for m, v in _group(summary, "test_acc.").items()) if v is not None}
        if not acc:
            if kind == "experiment":
                notes.append(f"{label}: no {SUMMARY} with test_acc; left out")
            continue
        model = str(summary.get("model") or params.get("model") or "?")
        if params.get("model") not in (None, model):
            notes.append(f"{label}: {path} is for {model} but its params say model {params['model']} "
                         "(stale summary); left out")
            continue
        timestamp = _parse_created(row.get("Created"))
        if kind == "workspace" and workspace_root is not None and path and (workspace_root / path).is_file():
            timestamp = datetime.fromtimestamp((workspace_root / path).stat().st_mtime)
        seeds = _number(summary.get("seeds"))
        std = {m: v for m, v in ((m, _number(v)) for m, v in _group(summary, "test_acc_std.").items())
               if v is not None and m in acc}
        results.append(Result(
            name=str(name), rev=rev, kind=kind, timestamp=timestamp, model=model,
            variant=str(summary.get("variant") or params.get("train.variant") or "?"),
            recipe=str(summary.get("recipe") or params.get("train.recipe") or "?"),
            seeds=int(seeds) if seeds is not None and seeds.is_integer() and seeds >= 1 else 1,
            acc=acc, std=std, mixtures=_mixtures(params), summary=_nest(summary)))
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


def run_exp_show(all_commits: bool = False) -> tuple[list[dict[str, Any]], str]:
    """(rows, how they were read) of `dvc.api.exp_show()` for the repository around the current directory."""
    try:
        import dvc.api
        from dvc.exceptions import DvcException
    except ImportError:
        raise UserError("dvc is not available (not importable); install it or pass --exp-json FILE") from None
    shown = "dvc.api.exp_show(" + ("num=-1" if all_commits else "") + ")"
    try:
        # num=-1: every first-parent commit of HEAD and its experiments, not only HEAD's
        return dvc.api.exp_show(num=-1 if all_commits else 1), shown
    except DvcException as e:
        raise UserError(f"`{shown}` failed in {Path.cwd()}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
