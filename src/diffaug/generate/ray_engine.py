"""Generation on a Ray cluster: `--engine ray` or DIFFAUG_ENGINE=ray (neither is in the settings hash).

One actor per GPU (per CPU without GPUs) loads the pipeline once and makes whole shards; the driver
writes them as a single process would, so workers need no shared filesystem, but the model must be on
every node (docs/scale.md). A lost worker's shard goes to another worker; a user error stops the run.
"""
from __future__ import annotations

import os
import uuid
from collections import deque
from pathlib import Path
from typing import Any

from rich.console import Console

from diffaug.errors import ConfigError, UserError
from diffaug.formats import synthetic as storage
from diffaug.generate.families import ModelInfo
from diffaug.generate.model import Levers, ModelSource
from diffaug.generate.plan import Plan

ENGINE_ENV = "DIFFAUG_ENGINE"
ENGINES = ("local", "ray")
ACTOR_PREFIX = "diffaug-generate"  # actor names: <prefix>-<run id>-<i>, so a test or operator can find them


def choose_engine(flag: str | None, world_size: int) -> str:
    """--engine, else $DIFFAUG_ENGINE, else local."""
    engine = flag or os.environ.get(ENGINE_ENV) or "local"
    if engine not in ENGINES:
        raise UserError(f"environment variable {ENGINE_ENV}={engine!r}: allowed: {', '.join(ENGINES)}")
    if engine == "ray" and world_size > 1:
        raise UserError(f"--engine ray: run one process (WORLD_SIZE={world_size} here); Ray places the shards on its workers")
    return engine


class ShardWorker:
    """A Ray actor's state: the pipeline, loaded on the first call (again after Ray restarts the actor)."""

    def __init__(self, levers: Levers, plan: Plan, source: ModelSource, info: ModelInfo):
        self.args = levers, plan, source, info
        self.maker: Any = None

    def ready(self) -> bool:
        if self.maker is None:
            from rich.progress import Progress

            from diffaug.generate.runner import ShardMaker, open_sampler, pick_device

            levers, plan, source, info = self.args
            if source.revision is None and not Path(source.load_from).is_dir():
                raise UserError(f"diffusion.model: {source.load_from} is not on Ray node {os.uname().nodename}; copy the "
                                "model folder to the same path on every node (or use a hub id cached on every node)")
            sampler, made_with = open_sampler(source, info, pick_device(plan.diffusion), levers, plan)
            self.full: dict[int, Any] = {}
            # Progress is the driver's, which counts shards as they arrive: the worker's bar is off.
            self.maker = ShardMaker(sampler, made_with, levers, plan, console=Console(stderr=True), label=plan.set_name,
                                    progress=Progress(disable=True), on_full=self.full.__setitem__)
        return True

    def make(self, k: int) -> tuple[dict[str, Any], dict[int, Any]]:
        """Shard k's arrays, and its full-resolution images by global index (save_full_resolution only)."""
        self.ready()
        self.full.clear()
        # The worker's own count, for its one rate-and-ETA line: the shards it was given so far.
        task = self.maker.progress.tasks[self.maker.task]
        self.maker.progress.update(self.maker.task, total=(task.total or 0) + len(self.maker.plan.shard_range(k)))
        arrays = self.maker.make(k)
        return arrays, dict(self.full)


def generate_on_ray(plan: Plan, source: ModelSource, info: ModelInfo, out_dir: Path, todo: list[int], *,
                    console: Console, label: str) -> None:
    """Make the shards `todo` on the Ray cluster (ray.init's: RAY_ADDRESS, a local `ray start`, or a new
    local one) and write each as it arrives."""
    import ray
    from ray.exceptions import RayTaskError

    from diffaug.generate.model import choose_levers
    from diffaug.generate.plan import check_cpu_cost

    if not ray.is_initialized():
        ray.init(log_to_driver=True)
    dif = plan.diffusion
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if dif.device != "cpu" else 0
    if dif.device.startswith("cuda") and not gpus:
        raise ConfigError(f"diffusion.device: {dif.device!r}, but the Ray cluster has no GPU; use auto or cpu")
    device_type = "cuda" if gpus else "cpu"
    images = [g for k in todo for g in plan.shard_range(k)]
    check_cpu_cost(plan, device_type, images)
    levers = choose_levers(dif, device_type, len(images))  # the driver's choice: every worker's shards alike
    n_workers = min(len(todo), gpus or int(resources.get("CPU", 1)))
    console.print(f"{label}: {len(images)} images ({len(todo)} of {plan.num_shards} shards) on {n_workers} Ray "
                  f"{'GPU' if gpus else 'CPU'} workers, loading {dif.model} offline on each; {levers.reason}")
    # Restarted without end (a lost node's actors come back when resources do); a failed call is not
    # retried by Ray but by the driver, which gives the shard to a worker that is up.
    options = dict(num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1, max_restarts=-1, max_task_retries=0,
                   runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}})
    run_id = uuid.uuid4().hex[:8]
    workers: list[Any] = [ray.remote(ShardWorker).options(name=f"{ACTOR_PREFIX}-{run_id}-{i}", **options)
               .remote(levers, plan, source, info) for i in range(n_workers)]
    try:
        _feed(workers, todo, plan, out_dir, console, label)
    except RayTaskError as e:  # a worker's one-line error as the driver's own; anything else (a bug) keeps Ray's traceback
        cause = getattr(e, "cause", None)
        raise (type(cause)(str(cause)) if isinstance(cause, (UserError, ConfigError)) else e) from None
    finally:
        for worker in workers:
            ray.kill(worker, no_restart=True)


def _feed(workers: list, todo: list[int], plan: Plan, out_dir: Path, console: Console, label: str) -> None:
    """Each free worker gets the next shard; a lost one's shard goes back to the queue, and the worker is
    used again once Ray has restarted it (its `ready` call returns)."""
    import ray
    from ray.exceptions import ObjectLostError, RayActorError

    pending, free = deque(todo), list(workers)
    running: dict[Any, tuple[Any, int]] = {}
    restarting: dict[Any, Any] = {}
    storage.remove_outdated_summary(out_dir)
    done = 0
    while pending or running:
        while pending and free:
            worker, k = free.pop(), pending.popleft()
            running[worker.make.remote(k)] = (worker, k)
        if not running and not restarting:
            raise UserError(f"{label}: every Ray worker is gone ({len(pending)} shards left); rerun: written shards are kept")
        (ref,), _ = ray.wait([*running, *restarting], num_returns=1)
        if ref in restarting:
            worker = restarting.pop(ref)
            try:
                ray.get(ref)
                free.append(worker)
            except RayActorError:
                pass  # out of restarts: the others carry on
            continue
        worker, k = running.pop(ref)
        try:
            arrays, full = ray.get(ref)
        except (RayActorError, ObjectLostError) as e:
            console.print(f"{label}: {storage.shard_name(k)}: its Ray worker was lost ({type(e).__name__}); "
                          "another worker makes it")
            pending.append(k)
            restarting[worker.ready.remote()] = worker
            continue
        storage.prepare_shard_slot(out_dir, k)
        for g, image in full.items():
            storage.write_full_png(out_dir, plan, g, image)
        storage.write_shard(out_dir, k, plan, **arrays)
        done += 1
        console.print(f"{label}: {storage.shard_name(k)} written ({done} of {len(todo)})")
        free.append(worker)

