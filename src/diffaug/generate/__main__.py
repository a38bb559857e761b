"""CLI: python -m diffaug.generate <syn1|syn2> --params params.yaml --classes data/prepared/classes.json
                                 --out data/synthetic/<set>

Checks everything it can (params, classes.json, model directory, safety checker, CPU cost) before it
imports torch or diffusers or loads a model; a problem is one line on stderr and exit code 2, with
nothing written. The model is pinned (local directory by content, hub id by snapshot commit) before
the plan is built, once. Then it makes the shards this process owns, and the process that completes
the set writes manifest.json and samples.png. Rerunning resumes: valid shards are kept, others are
made again.
"""
from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

from diffaug.config import SYNTHETIC_SETS, Config, load_config
from diffaug.errors import OneLineParser, UserError, exit_on_error
from diffaug.formats import synthetic as storage
from diffaug.formats.splits import read_classes
from diffaug.generate.model import ModelSource, apply_fp8, choose_levers, fp8_unavailable_reason, load_pipeline, resolve_model
from diffaug.generate.plan import Plan, build_plan, check_cpu_cost, gpu_seconds, human_duration, image_flops


def parse_args(argv):
    parser = OneLineParser(prog="python -m diffaug.generate", description="Generate a synthetic image set with Stable Diffusion.")
    parser.add_argument("set", choices=SYNTHETIC_SETS, help="which prompt set (synthetic.<set> in params.yaml)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--classes", default="data/prepared/classes.json", help="written by the prepare stage")
    parser.add_argument("--out", required=True, help="output directory (kept between runs: resume)")
    return parser.parse_args(argv)


@exit_on_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.params)
    classes, image_size = read_classes(args.classes)
    source = resolve_model(cfg.diffusion)  # a hub id is pinned to one snapshot (downloaded if not cached)
    plan = build_plan(cfg, args.set, classes, image_size, source.fingerprint)

    # torch (several seconds to import) only now that params, classes and the model source checked out.
    from diffaug.generate.runner import World, shards_to_make

    world = World.from_env()
    out_dir = Path(args.out)
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    label = args.set if world.size == 1 else f"{args.set} rank {world.rank}/{world.size}"
    todo = shards_to_make(out_dir, plan, world)
    if todo:
        make_shards(cfg, plan, source, out_dir, todo, world, console, label)
    else:
        owned = sum(world.owns(k) for k in range(plan.num_shards))
        console.print(f"{label}: all {owned} shards of this process are valid; nothing to generate")

    manifest = storage.assemble(out_dir, plan, plan.prompts, lone_process=world.size == 1)
    if manifest is not None:
        groups = len(manifest["provenance"]["groups"])
        console.print(f"{label}: {out_dir / storage.MANIFEST}: {manifest['num_images']} images, "
                      f"{manifest['regenerations']} safety regenerations, digest {manifest['digest']}"
                      + (f"; shards made with {groups} different speed settings (see its 'provenance')" if groups > 1 else ""))
    elif world.size > 1:
        console.print(f"{label}: my shards are done; the process that finishes the last shard writes manifest.json")
    else:
        raise UserError(f"{out_dir}: a shard failed validation right after it was written (disk full, or another "
                        "process writing the same directory?); rerun to make it again")
    return 0


def make_shards(cfg: Config, plan: Plan, source: ModelSource, out_dir: Path, todo: list[int], world, console: Console,
                label: str) -> None:
    """Cost check, lever choice, model load, generation."""
    from diffaug.generate.runner import generate_shards, pick_device  # torch: see main()

    dif = cfg.diffusion
    device = pick_device(dif, world)
    n_images = sum(len(plan.shard_range(k)) for k in todo)
    check_cpu_cost(dif, device.type, n_images)
    if dif.fp8 and (reason := fp8_unavailable_reason(device)):
        raise UserError(f"{reason}; or set diffusion.fp8: false")
    levers = choose_levers(dif, device.type, n_images)
    estimate = ""
    if device.type == "cuda":
        seconds = gpu_seconds(dif, n_images, compiled=levers.compile, mode=levers.inductor_mode)
        estimate = (f", ~{human_duration(seconds)} on one H100 at measured rates"
                    + (" (compile included)" if levers.compile else ""))
    console.print(f"{label}: {n_images} images to make ({len(todo)} of {plan.num_shards} shards) on {device}, "
                  f"{dif.resolution}² x {dif.steps} steps ({dif.scheduler}), "
                  f"~{image_flops(dif) * n_images / 1e12:.4g} TFLOP{estimate}; loading {dif.model}")
    console.print(f"{label}: {levers.reason}; batch {levers.batch_size}, fused QKV {levers.fuse_qkv}, "
                  f"channels_last {levers.channels_last}, attention {levers.attention}"
                  + (f", approximate: deep_cache {dif.deep_cache}" if dif.deep_cache else "")
                  + (", approximate: fp8" if dif.fp8 else ""))
    pipe = load_pipeline(dif, source, device)
    if dif.fp8:
        apply_fp8(pipe)
    generate_shards(pipe, dif, levers, plan, out_dir, todo, save_full=cfg.synthetic.save_full_resolution,
                    console=console, show_bar=world.rank == 0, label=label)


if __name__ == "__main__":
    sys.exit(main())
