"""What the Ray engine costs: `python -m diffaug.generate --engine ray` against the single process, same
model, same device type, same shards, in one run.

    python benchmarks/ray_generate.py                          # tiny pipeline, 2 CPU workers, 4 shards of 1,000 images
    python benchmarks/ray_generate.py --images-per-shard 100   # a quicker look

    # a GPU cluster (RAY_ADDRESS set, or run on its head node; one worker per GPU; the model cached on every node):
    python benchmarks/ray_generate.py --model CompVis/stable-diffusion-v1-4 --device cuda --steps 50 \\
        --images-per-shard 1000 --shards 16 --baseline-shards 1

overhead = (Ray's seconds per image x its workers) / (the single process's seconds per image): 1.0 is
perfect scaling; what is above it is Ray's share (worker start, model load per worker, transfers, the
driver's writes) plus uneven shards at the end. The single process runs first, one thread on a CPU
(as each CPU worker does), on `--baseline-shards` of the same shards. Prints one row for
benchmarks/RESULTS.md (device, date, command).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import yaml

try:
    import diffaug  # noqa: F401
except ImportError:  # the repository without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from diffaug.generate.__main__ import main as generate  # noqa: E402
from diffaug.sandbox.tiny import build_tiny_pipeline, tiny_diffusion_params  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["airplane", "automobile"]


def write_inputs(folder: Path, args, shards: int) -> list[str]:
    """params.yaml and classes.json for `shards` shards; the generate CLI's arguments."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    model = args.model or str(build_tiny_pipeline(folder.parent / "tiny-sd"))
    params["diffusion"] = {**params["diffusion"], **tiny_diffusion_params(model), "device": args.device, "allow_cpu": True,
                           **({} if args.model is None else {"resolution": None, "dtype": "float16"}),
                           "steps": args.steps, "batch_size": args.batch_size}
    per_class = args.images_per_shard * shards // len(CLASSES)
    params["synthetic"].update({"images_per_class": per_class, "images_per_shard": args.images_per_shard})
    folder.mkdir(parents=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    (folder / "classes.json").write_text(json.dumps({"classes": CLASSES, "image_size": [32, 32]}))
    return ["syn1", "--params", str(folder / "params.yaml"), "--classes", str(folder / "classes.json"), "--out", str(folder / "out")]


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    assert generate(argv) == 0
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a hub id or folder (default: the tiny random pipeline)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--workers", type=int, default=2, help="CPU workers of the local Ray started here (no RAY_ADDRESS)")
    parser.add_argument("--images-per-shard", type=int, default=1000)
    parser.add_argument("--shards", type=int, help="default: 2 per worker (a set has many shards per worker; with 1 each, "
                        "the workers' start is not spread over anything)")
    parser.add_argument("--baseline-shards", type=int, help="shards the single process makes (default: all)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    import ray
    import torch

    # Ray runs workers at nice 15: on a machine shared with other work that starves them; 0 as the single process.
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(**({} if args.device == "cuda" else {"num_cpus": args.workers, "object_store_memory": 2**30}))
    workers = int(ray.cluster_resources().get("GPU" if args.device == "cuda" else "CPU", 1))
    shards = args.shards or 2 * workers
    torch.set_num_threads(1)  # on a CPU: as each Ray worker runs (Ray sets OMP_NUM_THREADS=1 for a 1-CPU actor)
    with tempfile.TemporaryDirectory() as tmp:
        local_argv = write_inputs(Path(tmp) / "local", args, args.baseline_shards or shards)
        local_s = timed([*local_argv, "--engine", "local"]) / ((args.baseline_shards or shards) * args.images_per_shard)
        ray_s = timed([*write_inputs(Path(tmp) / "ray", args, shards), "--engine", "ray"]) / (shards * args.images_per_shard)
    ratio = ray_s * workers / local_s
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({workers} Ray workers x 1 thread)"
    command = "python benchmarks/ray_generate.py " + shlex.join(sys.argv[1:])
    print(f"single process: {1 / local_s:.1f} images/s; Ray, {workers} workers: {1 / ray_s:.1f} images/s; overhead {ratio:.2f}x")
    print(f"| {datetime.date.today()} | {device} | {shards} x {args.images_per_shard} | {1 / local_s:.1f} | "
          f"{1 / ray_s:.1f} | {ratio:.2f}x | `{command.strip()}` |")


if __name__ == "__main__":
    main()
