"""CLI (see the package docstring). Everything that can be checked (params, --out, classes.json, --train,
model files and family, levers, class ids, CPU cost) is checked before torch is imported or a model
loaded: one line, exit code 2, nothing written.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from rich.console import Console

from diffaug.cli import stage_parser
from diffaug.config import Config, Img2ImgSet, load_config
from diffaug.errors import UserError, exit_on_error
from diffaug.formats import synthetic as storage
from diffaug.formats.splits import Split, load_split, read_classes
from diffaug.generate.families import ModelInfo, check_levers
from diffaug.generate.model import ModelSource, check_model_files, choose_levers, resolve_model
from diffaug.generate.plan import Plan, build_plan, check_cpu_cost, steps_note
from diffaug.generate.ray_engine import ENGINE_ENV, ENGINES, choose_engine, generate_on_ray
from diffaug.io import ensure_writable_dir, sha256_file

TRAIN_SPLIT = "train.npz"  # the prepare stage's name for the training split


def parse_args(argv):
    parser = stage_parser("python -m diffaug.generate", "Generate a synthetic image set with a diffusers model.")
    parser.add_argument("set", help="which set: a name under synthetic.sets in params.yaml")
    parser.add_argument("--classes", default="data/prepared/classes.json", help="written by the prepare stage")
    parser.add_argument("--out", required=True, help="output directory (kept between runs: resume)")
    parser.add_argument("--train", help="img2img sets only: the training split, data/prepared/train.npz")
    parser.add_argument("--engine", choices=ENGINES, help="local: this process (or each torchrun process); ray: the shards "
                        f"go to a Ray cluster's workers (docs/scale.md); default: ${ENGINE_ENV}, else local")
    return parser.parse_args(argv)


def world_from_env() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) of this torchrun/multi-node worker: shard k is made by rank k % WORLD_SIZE."""
    rank, size = os.environ.get("RANK") or "0", os.environ.get("WORLD_SIZE") or "1"
    if not (rank.isdigit() and size.isdigit() and int(rank) < int(size)):
        raise UserError(f"RANK={rank!r}, WORLD_SIZE={size!r}: allowed: integers with 0 <= RANK < WORLD_SIZE")
    return int(rank), int(size)


def read_train_split(path_arg: str) -> tuple[Split, str]:
    """The training split img2img starts from, and its file's sha256; refuses any other split."""
    path = Path(path_arg)
    if path.name != TRAIN_SPLIT:
        raise UserError(f"--train: got {path}; allowed: the training split data/prepared/{TRAIN_SPLIT} "
                        "(img2img never starts from val or test images)")
    split = load_split(path)  # a missing or broken file: one line naming it
    digest = sha256_file(path)
    for held_out in ("val.npz", "test.npz"):
        other = path.parent / held_out
        if other.is_file() and sha256_file(other) == digest:
            raise UserError(f"--train: {path} has the same bytes as {other}; allowed: the training split only "
                            "(img2img never starts from val or test images); rerun the prepare stage")
    return split, digest


def plan_set(cfg: Config, set_name: str, train_arg: str | None, classes: list[str],
             image_size: tuple[int, int], download: bool = True) -> tuple[ModelSource, ModelInfo, Plan]:
    """The set's model source, family and plan, after every check that needs no torch (also the pilot's)."""
    spec = cfg.synthetic.sets[set_name]
    train, train_sha256 = None, None
    if isinstance(spec, Img2ImgSet):
        if train_arg is None:
            raise UserError(f"--train: {set_name} is an img2img set; give its real source images, "
                            f"--train data/prepared/{TRAIN_SPLIT}")
        train, train_sha256 = read_train_split(train_arg)
    elif train_arg is not None:
        raise UserError(f"--train: {set_name} is a {spec.kind} set, which reads no real images; leave --train out")
    source = resolve_model(cfg.diffusion, download)  # a hub id is pinned to one snapshot (downloaded if not cached)
    info = check_model_files(source.folder, cfg.diffusion)  # the family, from its model_index.json
    check_levers(cfg.diffusion, info, spec.kind, f"synthetic.sets.{set_name}",
                 has_class_ids=getattr(spec, "class_ids", None) is not None, negative_prompt=spec.negative_prompt)
    return source, info, build_plan(cfg, set_name, classes, image_size, source.fingerprint, train, train_sha256, info)


@exit_on_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.params)
    spec = cfg.synthetic.sets.get(args.set)
    if spec is None:
        raise UserError(f"set: {args.set!r} is not declared under synthetic.sets in {args.params}; "
                        f"allowed: {', '.join(cfg.synthetic_sets) or 'a declared set'}")
    rank, size = world_from_env()
    # Before a model is fetched or loaded. torchrun workers keep the folder they probe: one removing it while
    # another probes would fail that one.
    ensure_writable_dir(args.out, "--out", keep=size > 1)
    source, info, plan = plan_set(cfg, args.set, args.train, *read_classes(args.classes))
    generator = generator_record(cfg, plan, info)
    out_dir = Path(args.out)
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    label = args.set if size == 1 else f"{args.set} rank {rank}/{size}"
    owned = [k for k in range(plan.num_shards) if k % size == rank]
    todo = [k for k in owned if storage.valid_shard(out_dir, plan, k) is None]
    if todo and choose_engine(args.engine, size) == "ray":  # workers make shards, this process writes them
        generate_on_ray(plan, source, info, out_dir, todo, console=console, label=label)
    elif todo:
        make_shards(plan, source, info, out_dir, todo, rank == 0, console, label, generator)
    else:
        console.print(f"{label}: all {len(owned)} shards of this process are valid; nothing to generate")

    prompts = [plan.prompt(g) for g in range(plan.num_images)]
    manifest = storage.assemble(out_dir, plan, prompts, lone_process=size == 1, extras=plan.image_extras(), generator=generator)
    if manifest is not None:
        groups = len(manifest["provenance"]["groups"])
        console.print(f"{label}: {out_dir / storage.MANIFEST}: {manifest['num_images']} images, "
                      f"{manifest['regenerations']} safety regenerations, digest {manifest['digest']}"
                      + (f"; shards made under {groups} different provenances (see its 'provenance')" if groups > 1 else ""))
    elif size > 1:
        console.print(f"{label}: my shards are done; the process that finishes the last shard writes manifest.json")
    else:
        raise UserError(f"{out_dir}: a shard failed validation right after it was written (disk full, or another "
                        "process writing the same directory?); rerun to make it again")
    return 0


def generator_record(cfg: Config, plan: Plan, info: ModelInfo) -> dict:
    """What made the set, for the manifest: family, pipeline, which settings were the family's defaults."""
    checker = (f"none: {info.class_name} ships no safety checker, images are not filtered"
               if not info.family.safety_checker and cfg.diffusion.safety_checker
               else "on" if plan.diffusion.safety_checker else "off (diffusion.safety_checker: false)")
    return {"family": info.family.name + (f" ({info.variant})" if info.variant else ""), "pipeline": info.class_name,
            "family_defaults": [k for k in ("steps", "guidance_scale", "resolution") if getattr(cfg.diffusion, k) is None],
            "safety_checker": checker}


def make_shards(plan: Plan, source: ModelSource, info: ModelInfo, out_dir: Path, todo: list[int], show_bar: bool,
                console: Console, label: str, generator: dict) -> None:
    """Cost check, lever choice, model load, generation."""
    # torch (several seconds to import) only now that params, classes and the model source checked out.
    from diffaug.devices import check_generation
    from diffaug.generate.runner import generate_shards, open_sampler, pick_device

    dif = plan.diffusion  # the family's defaults filled in
    device = pick_device(dif)
    images = [g for k in todo for g in plan.shard_range(k)]
    n_images, flops = len(images), check_cpu_cost(plan, device.type, images)  # img2img: only int(steps * strength) steps
    for note in check_generation(dif, device):  # dtype and levers against this GPU, before minutes of loading
        console.print(f"{label}: note: {note}")
    levers = choose_levers(dif, device.type, n_images)
    defaults = generator["family_defaults"]
    console.print(f"{label}: {n_images} images to make ({len(todo)} of {plan.num_shards} shards) on {device}, "
                  f"{generator['pipeline']} (family {generator['family']}), {dif.resolution}² x "
                  f"{steps_note(plan, images)} ({dif.scheduler}), guidance {dif.guidance_scale:g}"
                  + (f" ({', '.join(defaults)}: the family's defaults)" if defaults else "")
                  + (f", ~{flops / 1e12:.4g} TFLOP at SD-v1.4's cost per step" if info.family.name == "sd" else "")
                  + f"; loading {dif.model}")
    if generator["safety_checker"].startswith("none"):
        console.print(f"{label}: safety checker: {generator['safety_checker']} (recorded in the manifest)")
    console.print(f"{label}: {levers.reason}; batch {levers.batch_size}, fused QKV {levers.fuse_qkv}, "
                  f"channels_last {levers.channels_last}, attention {levers.attention}"
                  + (", model CPU offload" if dif.cpu_offload else "")
                  + (f", approximate: cache {dif.cache}" if dif.cache != "none" else "")
                  + (", approximate: fp8" if dif.fp8 else ""))
    sampler, made_with = open_sampler(source, info, device, levers, plan)
    generate_shards(sampler, made_with, levers, plan, out_dir, todo, console=console, show_bar=show_bar, label=label)


if __name__ == "__main__":
    sys.exit(main())
