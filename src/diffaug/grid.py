"""The training grid on a Ray cluster: every out-of-date train cell at once, one GPU each.

    python -m diffaug.grid            # in the repository, on a machine of the cluster (docs/scale.md)
    python -m diffaug.grid --dry-run  # only list the cells

Each cell whose inputs are up to date runs its stage's own command as a Ray task, on a filesystem every
node sees; a cell whose worker died is retried and resumes from its checkpoint. Only this process
touches DVC: it `dvc commit`s each finished cell, so `dvc repro` afterwards runs only what follows.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from diffaug.errors import UserError, exit_on_error

CELL_PREFIXES = ("train@", "train_filtered@")
PREEMPTION_RETRIES = 3  # a cell's worker or node dying; a cell that fails by itself is not retried


def out_of_date_cells(root: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(stage name, command) of the cells to train now, and the out-of-date cells that wait for another
    (train_filtered@ cells behind a filter@ stage, which reads the orig100 cell's classifier)."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        stale = set(repo.status())
        ready, waiting, blockers = [], [], set()
        for stage in repo.index.stages:
            if not stage.addressing.startswith(CELL_PREFIXES) or stage.addressing not in stale:
                continue
            upstream = {s.addressing for s in nx.descendants(repo.index.graph, stage)} & stale
            if not upstream:
                ready.append((stage.addressing, stage.cmd))
            else:
                waiting.append(stage.addressing)
                blockers |= {name for name in upstream if not name.startswith((*CELL_PREFIXES, "filter@"))}
    if blockers:
        names = " ".join(sorted(blockers))
        raise UserError(f"{names}: out of date, and train cells read their outputs; run `dvc repro {names}` first "
                        "(generation on Ray: DIFFAUG_ENGINE=ray dvc repro ...)")
    return ready, waiting


def run_cell(cmd: str, cwd: str) -> int:
    """A cell's stage command on this Ray worker, with this worker's interpreter first on PATH; the
    command dies with the worker (Linux), so a retried cell never races a survivor of its first try."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    die_with_parent = None
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        die_with_parent = lambda: libc.prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    # No shell between the worker and the command: the signal would reach the shell, not the command.
    return subprocess.run(shlex.split(cmd), cwd=cwd, env=env, preexec_fn=die_with_parent).returncode


def train_on_ray(root: Path, cells: list[tuple[str, str]]) -> list[str]:
    """Run the cells; commit each that succeeds as it finishes. Returns the cells that failed."""
    import ray

    if not ray.is_initialized():
        ray.init()
    gpus = ray.cluster_resources().get("GPU", 0) >= 1
    task = ray.remote(run_cell).options(num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1, max_retries=PREEMPTION_RETRIES,
                                        retry_exceptions=False, runtime_env={"env_vars": {"DVC_NO_ANALYTICS": "1"}})
    print(f"grid: {len(cells)} cells on Ray, one {'GPU' if gpus else 'CPU'} each: {' '.join(name for name, _ in cells)}", flush=True)
    running = {task.remote(cmd, str(root)): name for name, cmd in cells}
    failed = []
    while running:
        (ref,), _ = ray.wait(list(running), num_returns=1)
        name = running.pop(ref)
        code = ray.get(ref)
        if code:
            failed.append(name)
            print(f"grid: {name} failed (exit code {code}; its output is above)", flush=True)
            continue
        subprocess.run([sys.executable, "-m", "dvc", "commit", "--force", "--quiet", name], cwd=root, check=True)
        print(f"grid: {name} done and committed to dvc.lock", flush=True)
    return failed


@exit_on_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffaug.grid", description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="list the cells, run nothing")
    args = parser.parse_args(argv)
    from dvc.repo import Repo

    try:
        root = Path(Repo.find_root()).resolve()
    except Exception as e:  # dvc's NotDvcRepoError: no .dvc/ here or above
        raise UserError(f"{Path.cwd()}: {e}; run python -m diffaug.grid inside the repository") from None
    os.chdir(root)  # dvc names stages relative to the working directory
    cells, waiting = out_of_date_cells(root)
    if waiting:
        print(f"grid: after this grid, `dvc repro` makes {' '.join(waiting)} (they read a classifier this grid trains)")
    if not cells or args.dry_run:
        print("grid: " + (" ".join(name for name, _ in cells) if cells else "every train cell is up to date"))
        return 0
    failed = train_on_ray(root, cells)
    if failed:
        raise UserError(f"{' '.join(failed)}: failed (output above); rerun `python -m diffaug.grid`: finished cells are "
                        "committed, a failed one resumes from its checkpoint")
    print("grid: every cell committed; `dvc repro` now runs only what follows the grid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
