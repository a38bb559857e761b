"""Generation on Ray (generate/ray_engine.py) on the tiny pipeline, on this machine's CPUs: the set is
byte-identical to a single-process run after a worker is killed mid-shard and after a node of a
two-node cluster is removed mid-run; a rerun makes nothing again; a worker's user error stops the run."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster
from rich.console import Console

from diffaug.config import load_config
from diffaug.errors import UserError
from diffaug.formats import synthetic as storage
from diffaug.formats.splits import read_classes
from diffaug.generate.__main__ import main, plan_set
from diffaug.generate.model import ModelSource
from diffaug.generate.ray_engine import ACTOR_PREFIX, generate_on_ray
from test_generate import cli_args, files, generate, write_inputs

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
OBJECT_STORE = 100 * 2**20  # Ray's default is 30% of RAM; the shards here are kilobytes
SLOW_SHARDS = {"steps": 30, "batch_size": 2}  # 6 shards of 2 images, each long enough to be caught mid-shard


@pytest.fixture(scope="module")
def reference(tiny_sd, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    params, classes = write_inputs(folder, tiny_sd, diffusion=SLOW_SHARDS)
    return params, classes, files(generate(params, classes, folder / "out"))


@pytest.fixture
def local_ray():
    ray.init(num_cpus=2, object_store_memory=OBJECT_STORE, include_dashboard=False)
    yield
    ray.shutdown()


def run_in_thread(args: list[str]) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(main(args)))
    thread.start()
    return thread, result


def wait_for_first_shard(out: Path, thread: threading.Thread) -> None:
    deadline = time.monotonic() + 240
    while not list(out.glob("shard-*.npz")):
        assert thread.is_alive() and time.monotonic() < deadline, "no shard appeared"
        time.sleep(0.01)


def test_a_killed_worker_s_shard_is_made_elsewhere_and_the_set_is_byte_identical(reference, local_ray, tmp_path, capfd):
    params, classes, expected = reference
    out = tmp_path / "out"
    thread, result = run_in_thread([*cli_args(params, classes, out), "--engine", "ray"])
    wait_for_first_shard(out, thread)
    victim = next(name for name in ray.util.list_named_actors() if name.startswith(ACTOR_PREFIX))
    ray.kill(ray.get_actor(victim), no_restart=False)  # the process dies as in a crash; Ray restarts it
    thread.join(300)
    assert result == [0]
    assert "its Ray worker was lost" in capfd.readouterr().err, "the kill must land while a shard is being made"
    assert files(out) == expected

    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.npz")}
    assert main([*cli_args(params, classes, out), "--engine", "ray"]) == 0
    assert "nothing to generate" in capfd.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.npz")} == before


def test_a_removed_node_s_shards_go_to_the_other_node(reference, tmp_path, capfd, monkeypatch):
    params, classes, expected = reference
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": OBJECT_STORE,
                                                            "include_dashboard": False})
    second = cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE)
    try:
        ray.init(address=cluster.address)
        monkeypatch.setenv("DIFFAUG_ENGINE", "ray")  # the environment variable, as `dvc repro` would pass it
        out = tmp_path / "out"
        thread, result = run_in_thread(cli_args(params, classes, out))
        wait_for_first_shard(out, thread)
        cluster.remove_node(second)
        thread.join(300)
        assert result == [0]
        assert "its Ray worker was lost" in capfd.readouterr().err
        assert files(out) == expected
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_worker_s_user_error_stops_the_run_without_retrying(tiny_sd, local_ray, tmp_path):
    params, classes = write_inputs(tmp_path, tiny_sd)
    cfg = load_config(params)
    _, info, plan = plan_set(cfg, "syn1", None, *read_classes(classes))
    missing = ModelSource(str(tmp_path / "not-on-this-node"), None, "sha256:0", tmp_path / "not-on-this-node")
    console = Console(file=open(tmp_path / "log.txt", "w"))  # noqa: SIM115 - closed with the test's tmp_path
    started = time.monotonic()
    with pytest.raises(UserError, match=r"is not on Ray node .*copy the model folder") as error:
        generate_on_ray(plan, missing, info, tmp_path / "out", list(range(plan.num_shards)), console=console, label="syn1")
    assert "\n" not in str(error.value) and time.monotonic() - started < 60
    assert not list((tmp_path / "out").glob("shard-*.npz"))
    assert "was lost" not in (tmp_path / "log.txt").read_text()
    assert storage.MANIFEST not in [p.name for p in tmp_path.rglob("*")]
