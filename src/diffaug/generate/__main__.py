"""CLI: python -m diffaug.generate <syn1|syn2> --params params.yaml --classes data/prepared/classes.json
                                 --out data/synthetic/<set>

Checks everything it can (params, classes.json, model directory, safety checker, CPU cost) before it
imports diffusers or loads a model; a problem is one line on stderr and exit code 2, with nothing
written. Then it makes the shards this process owns, and the process that completes the set writes
manifest.json and samples.png. Rerunning resumes: valid shards are kept, others are made again.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from diffaug.config import SYNTHETIC_SETS, load_config
from diffaug.errors import UserError, exit_on_error


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's default is usage + message on two lines
        raise UserError(f"{self.prog}: {message}")


def parse_args(argv):
    parser = _OneLineParser(prog="python -m diffaug.generate", description="Generate a synthetic image set with Stable Diffusion.")
    parser.add_argument("set", choices=SYNTHETIC_SETS, help="which prompt set (synthetic.<set> in params.yaml)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--classes", default="data/prepared/classes.json", help="written by the prepare stage")
    parser.add_argument("--out", required=True, help="output directory (kept between runs: resume)")
    return parser.parse_args(argv)


@exit_on_error
def main(argv: list[str] | None = None) -> int:
    from diffaug.formats import synthetic as storage
    from diffaug.generate.modelsource import check_model_source, model_fingerprint
    from diffaug.generate.plan import build_plan, read_classes
    from diffaug.generate.world import World, shards_to_make

    args = parse_args(argv)
    cfg = load_config(args.params)
    classes, image_size = read_classes(args.classes)
    world = World.from_env()
    check_model_source(cfg.diffusion)
    plan = build_plan(cfg, args.set, classes, image_size, model_fingerprint(cfg.diffusion))
    out_dir = Path(args.out)
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    label = args.set if world.size == 1 else f"{args.set} rank {world.rank}/{world.size}"
    todo = shards_to_make(out_dir, plan, world)
    if todo:
        plan = make_shards(cfg, plan, out_dir, todo, world, console, label)
    else:
        owned = sum(world.owns(k) for k in range(plan.num_shards))
        console.print(f"{label}: all {owned} shards of this process are valid; nothing to generate")

    manifest = storage.assemble(out_dir, plan, lone_process=world.size == 1)
    if manifest is not None:
        console.print(f"{label}: {out_dir / storage.MANIFEST}: {manifest['num_images']} images, "
                      f"{manifest['regenerations']} safety regenerations, digest {manifest['digest']}")
    elif world.size > 1:
        console.print(f"{label}: my shards are done; the process that finishes the last shard writes manifest.json")
    else:
        raise UserError(f"{out_dir}: a shard failed validation right after it was written (disk full, or another "
                        "process writing the same directory?); rerun to make it again")
    return 0


def make_shards(cfg, plan, out_dir: Path, todo: list[int], world, console: Console, label: str):
    """Cost check, model load, generation; returns the plan (re-made if the hub snapshot changed)."""
    from diffaug.generate.cost import check_cpu_cost, image_flops
    from diffaug.generate.modelsource import local_model_dir, model_fingerprint
    from diffaug.generate.plan import build_plan
    from diffaug.generate.runner import pick_device  # the first torch import
    from diffaug.generate.world import shards_to_make

    dif = cfg.diffusion
    device = pick_device(dif, world)
    n_images = sum(len(plan.shard_range(k)) for k in todo)
    check_cpu_cost(dif, device.type, n_images)
    console.print(f"{label}: {n_images} images to make ({len(todo)} of {plan.num_shards} shards) on {device}, "
                  f"{dif.resolution}² x {dif.steps} steps ({dif.scheduler}), "
                  f"~{image_flops(dif) * n_images / 1e12:.4g} TFLOP; loading {dif.model}")

    from diffaug.generate.pipeline import load_pipeline
    from diffaug.generate.runner import generate_shards

    pipe = load_pipeline(dif, device)
    fingerprint = plan.settings["diffusion"]["model_fingerprint"]
    if local_model_dir(dif.model) is None and model_fingerprint(dif) != fingerprint:
        # The hub snapshot now loaded is not the one cached before (a first download, or a newer commit).
        plan = build_plan(cfg, plan.set_name, list(plan.classes), plan.image_size, model_fingerprint(dif))
        todo = shards_to_make(out_dir, plan, world)
    generate_shards(pipe, dif, plan, out_dir, todo, save_full=cfg.synthetic.save_full_resolution,
                    console=console, show_bar=world.rank == 0, label=label)
    return plan


if __name__ == "__main__":
    sys.exit(main())
