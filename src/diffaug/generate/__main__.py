"""CLI: python -m diffaug.generate <set> --params params.yaml --classes data/prepared/classes.json
                                 --out data/synthetic/<set> [--train data/prepared/train.npz]

<set> is a name under synthetic.sets. An img2img set also takes --train: the training split, the
only real images it may start from. Anything else is refused in one line: a file not named
train.npz, or one whose bytes equal the val.npz or test.npz beside it (no val/test image can leak
into a synthetic set by construction); a prompt set takes no --train.

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

from diffaug.cli import human_duration, stage_parser
from diffaug.config import Config, Img2ImgSet, load_config
from diffaug.errors import UserError, exit_on_error
from diffaug.formats import synthetic as storage
from diffaug.formats.splits import Split, load_split, read_classes
from diffaug.generate.model import ModelSource, apply_fp8, choose_levers, fp8_unavailable_reason, load_pipeline, resolve_model
from diffaug.generate.plan import Plan, build_plan, check_cpu_cost, gpu_seconds, plan_flops, steps_note
from diffaug.io import sha256_file

TRAIN_SPLIT = "train.npz"  # the prepare stage's name for the training split
HELD_OUT_SPLITS = ("val.npz", "test.npz")


def parse_args(argv):
    parser = stage_parser("python -m diffaug.generate", "Generate a synthetic image set with Stable Diffusion.")
    parser.add_argument("set", help="which set: a name under synthetic.sets in params.yaml")
    parser.add_argument("--classes", default="data/prepared/classes.json", help="written by the prepare stage")
    parser.add_argument("--out", required=True, help="output directory (kept between runs: resume)")
    parser.add_argument("--train", help="img2img sets only: the training split, data/prepared/train.npz")
    return parser.parse_args(argv)


def read_train_split(path_arg: str) -> tuple[Split, str]:
    """The training split img2img starts from, and its file's sha256; refuses any other split."""
    path = Path(path_arg)
    if path.name != TRAIN_SPLIT:
        raise UserError(f"--train: got {path}; allowed: the training split data/prepared/{TRAIN_SPLIT} "
                        "(img2img never starts from val or test images)")
    digest = sha256_file(path) if path.is_file() else None
    split = load_split(path)  # a missing or broken file: one line naming it
    for held_out in HELD_OUT_SPLITS:
        other = path.parent / held_out
        if other.is_file() and sha256_file(other) == digest:
            raise UserError(f"--train: {path} has the same bytes as {other}; allowed: the training split only "
                            "(img2img never starts from val or test images); rerun the prepare stage")
    assert digest is not None
    return split, digest


@exit_on_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.params)
    spec = cfg.synthetic.sets.get(args.set)
    if spec is None:
        raise UserError(f"set: {args.set!r} is not declared under synthetic.sets in {args.params}; "
                        f"allowed: {', '.join(cfg.synthetic_sets) or 'a declared set'}")
    train, train_sha256 = None, None
    if isinstance(spec, Img2ImgSet):
        if args.train is None:
            raise UserError(f"--train: {args.set} is an img2img set; give its real source images, "
                            f"--train data/prepared/{TRAIN_SPLIT}")
        train, train_sha256 = read_train_split(args.train)
    elif args.train is not None:
        raise UserError(f"--train: {args.set} is a {spec.kind} set, which reads no real images; leave --train out")
    classes, image_size = read_classes(args.classes)
    source = resolve_model(cfg.diffusion)  # a hub id is pinned to one snapshot (downloaded if not cached)
    plan = build_plan(cfg, args.set, classes, image_size, source.fingerprint, train, train_sha256)

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

    manifest = storage.assemble(out_dir, plan, plan.prompts, lone_process=world.size == 1, extras=plan.image_extras())
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
    images = [g for k in todo for g in plan.shard_range(k)]
    n_images = len(images)
    flops = plan_flops(plan, dif, images)  # img2img: only int(steps * strength) steps per image
    check_cpu_cost(dif, device.type, n_images, flops)
    if dif.fp8 and (reason := fp8_unavailable_reason(device)):
        raise UserError(f"{reason}; or set diffusion.fp8: false")
    levers = choose_levers(dif, device.type, n_images)
    estimate = ""
    if device.type == "cuda":
        seconds = gpu_seconds(dif, n_images, compiled=levers.compile, mode=levers.inductor_mode, flops=flops)
        estimate = (f", ~{human_duration(seconds)} on one H100 at measured rates"
                    + (" (compile included)" if levers.compile else ""))
    console.print(f"{label}: {n_images} images to make ({len(todo)} of {plan.num_shards} shards) on {device}, "
                  f"{dif.resolution}² x {steps_note(plan, dif, images)} ({dif.scheduler}), "
                  f"~{flops / 1e12:.4g} TFLOP{estimate}; loading {dif.model}")
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
