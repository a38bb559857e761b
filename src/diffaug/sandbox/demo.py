"""Offline demo (`make demo`): the real dvc.yaml, every stage, end to end on a CPU in minutes, no network.

It copies the pipeline into a scratch git+DVC repository (this repository's params.yaml and dvc.lock are
never touched) with tiny settings: a random-weight Stable Diffusion (sandbox.tiny), coloured shapes as
the 32x32 "real" data, a few images per class and mixtures (one img2img, one confidence-filtered). It
runs `dvc repro`, commits the result as the `main` baseline and pushes it to a git-ignored remote inside
it, so the README's `dvc exp`, `dvc queue`, `dvc push` / `dvc pull` and `make report` work there as
written. Its accuracies mean nothing. The integration tests build their sandboxes with the same functions.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from diffaug.config import read_params
from diffaug.io import save_npz_atomic
from diffaug.report.page import exchange_table

REPO_ROOT = Path(__file__).resolve().parents[3]
PIPELINE_FILES = ("dvc.yaml", "params.yaml", "src", ".dvcignore")
SHAPES = ("circle", "square", "cross")
STORAGE = "dvc-storage"  # the sandbox's default DVC remote, a git-ignored folder inside it
DEMO_IMG2IMG = "i2i50"  # the demo's img2img set (tiny_params)
BANNER = ("DEMO ONLY - these numbers mean nothing: a random-weight diffusion model, a toy dataset of "
          "coloured shapes and a few epochs of training. The README's 'Reproduce the paper' commands, on a GPU box, give the paper's numbers.")


def shapes_dataset(per_class: int, size: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """Coloured circles, squares and crosses on noisy backgrounds: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, labels = [], []
    for label, shape in enumerate(SHAPES):
        for _ in range(per_class):
            cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
            r = rng.integers(size // 6, size // 3)
            if shape == "circle":
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            elif shape == "square":
                mask = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
            else:
                mask = ((abs(yy - cy) <= r // 3) & (abs(xx - cx) <= r)) | ((abs(xx - cx) <= r // 3) & (abs(yy - cy) <= r))
            img = rng.integers(0, 80, (size, size, 3))
            img[mask] = rng.integers(120, 256, 3)
            images.append(img.astype(np.uint8))
            labels.append(label)
    return {"images": np.stack(images), "labels": np.array(labels, np.int64), "classes": np.array(SHAPES)}


def tiny_params(base: dict, sd_dir: Path, dataset_path: str, *, mixes: list[str], epochs: int = 2,
                images_per_class: int = 6) -> dict:
    """The committed params.yaml with tiny budgets swapped in; every other value stays as committed."""
    from diffaug.sandbox.tiny import tiny_diffusion_params

    p = yaml.safe_load(yaml.safe_dump(base))  # deep copy
    p["dataset"].update({"name": f"npz:{dataset_path}", "test_per_class": 10, "val_per_class": 4, "label_names": {}})
    p["synthetic"].update({"images_per_class": images_per_class, "images_per_shard": 4})
    # One img2img set (SDEdit / DA-Fusion): a class-balanced draw of the real training images, noised to strength 0.5
    p["synthetic"]["sets"][DEMO_IMG2IMG] = {"kind": "img2img", "strength": 0.5, "prompt": "a photo of a {label}",
                                            "negative_prompt": None, "images_per_class": images_per_class}
    p["img2img_sets"] = [DEMO_IMG2IMG]
    p["mixtures"][f"orig50_{DEMO_IMG2IMG}_50"] = {"orig": 0.5, DEMO_IMG2IMG: 0.5}
    p["diffusion"].update(tiny_diffusion_params(sd_dir))
    p["mixes"] = list(mixes)
    for recipe in p["train"]["recipes"].values():
        # batch 32 for a few dozen images; lr scaled linearly with the batch, or training diverges
        recipe.update({"epochs": epochs, "batch_size": 32, "warmup_epochs": 0, "lr": recipe["lr"] * 32 / recipe["batch_size"]})
    p["train"].update({"checkpoint_every": 1, "precision": "fp32", "compile": False})
    p["evaluate"]["batch_size"] = 256
    return p


def run(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True, quiet: bool = True) -> subprocess.CompletedProcess:
    """`cmd` in `cwd` (default env: tool_env()); its output captured, or with quiet=False streamed to the terminal."""
    return subprocess.run(cmd, cwd=cwd, env=env or tool_env(), check=check, text=True,
                          stdout=subprocess.PIPE if quiet else None, stderr=subprocess.STDOUT if quiet else None)


def tool_env() -> dict:
    """Environment for dvc and stage subprocesses: this interpreter first on PATH, no network calls."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "GIT_AUTHOR_NAME": "diffaug demo", "GIT_AUTHOR_EMAIL": "demo@localhost",
            "GIT_COMMITTER_NAME": "diffaug demo", "GIT_COMMITTER_EMAIL": "demo@localhost"}


def make_sandbox(workdir: Path, *, mixes: list[str], epochs: int = 2, images_per_class: int = 6,
                 per_class_real: int = 40, overrides: dict | None = None) -> Path:
    """A fresh git + DVC repository at `workdir` holding this pipeline with tiny params, committed."""
    from diffaug.sandbox.tiny import build_tiny_pipeline

    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    for name in PIPELINE_FILES:
        src = REPO_ROOT / name
        if src.is_dir():
            shutil.copytree(src, workdir / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif src.exists():
            shutil.copy2(src, workdir / name)
    # Inputs that a real user would have: a dataset file and a diffusion model directory. Kept out of
    # git and DVC here (they are rebuilt identically from seeds) and named by absolute path, because
    # queued experiments run in temporary copies of the repository that hold only committed files.
    inputs = workdir / "inputs"
    inputs.mkdir()
    save_npz_atomic(inputs / "shapes.npz", **shapes_dataset(per_class_real))
    sd_dir = build_tiny_pipeline(inputs / "tiny-sd")
    params = tiny_params(read_params(REPO_ROOT / "params.yaml"), sd_dir.resolve(), str((inputs / "shapes.npz").resolve()),
                         mixes=mixes, epochs=epochs, images_per_class=images_per_class)
    for key, value in (overrides or {}).items():  # dotted keys: "mixtures.<name>"
        *path, leaf = key.split(".")
        functools.reduce(dict.__getitem__, path, params)[leaf] = value
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (workdir / ".gitignore").write_text(f"/inputs/\n/checkpoints/\n/{STORAGE}/\n/data/pilot/\n")
    # `make report` as the README shows it; the interpreter is named by absolute path, so it works
    # with or without the venv activated (the main Makefile also builds the venv, not needed here).
    (workdir / "Makefile").write_text(
        "# The scratch repository's copy of the main Makefile's report target.\n"
        ".PHONY: report\nreport:\n"
        f"\tDVC_NO_ANALYTICS=1 {Path(sys.executable)} -m diffaug.report --out reports\n")
    # The default remote, like the main repository's `local` one: a git-ignored folder inside the sandbox,
    # named by absolute path so that clones and queued runs (temporary copies) reach it too.
    for cmd in (["git", "init", "-q", "-b", "main"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"],
                ["dvc", "remote", "add", "-d", "local", str((workdir / STORAGE).resolve())], ["git", "add", "-A"],
                ["git", "commit", "-q", "-m", "demo pipeline with tiny params"]):
        run(cmd, workdir)
    return workdir


DEMO_MIXES = ["orig100", "orig50_syn1_50", "syn2_100", "orig100_syn1_100_syn2_100", "orig50_rot50_vflip50", "orig50_i2i50_50",
              "orig50", "orig25"]
# The real-data curve the exchange rate reads (docs/worth.md): three sizes, the fewest a 3-parameter curve allows.
DEMO_REAL_CURVE = ["orig25", "orig50", "orig100"]
# Pilot candidates: the two prompt sets, and syn2 with fewer denoising steps (a cheaper generator setting).
DEMO_PILOT = ["syn1", "syn2", "syn2@steps=2"]
# One filtered mixture (ALIA-style): orig50_syn1_50's draw minus the half of its syn1 images per class that the
# orig100 classifier is least confident about; stages filter@<mix>, then train_filtered@resnet18-<mix>.
DEMO_FILTERED_MIX = "orig50_syn1_50_conf"
DEMO_FILTERED = {f"mixtures.{DEMO_FILTERED_MIX}": {"orig": 0.5, "syn1": 0.5, "filter": {"by": "confidence", "keep_fraction": 0.5}},
                 "filtered_mixes": [DEMO_FILTERED_MIX]}


def build_demo(workdir: Path, *, epochs: int, real_per_class: int, mixes: list[str] = DEMO_MIXES,
               images_per_class: int = 6, quiet: bool = False) -> Path:
    """What `make demo` does: the sandbox, `dvc repro`, the results committed as the `main` baseline,
    `dvc push` to the sandbox's own remote. With quiet=False dvc's output streams to the terminal."""
    overrides: dict = dict(DEMO_FILTERED) if "orig100" in mixes else {}
    if set(DEMO_REAL_CURVE) <= set(mixes):
        overrides["real_curve"] = DEMO_REAL_CURVE
    make_sandbox(workdir, mixes=mixes, epochs=epochs, per_class_real=real_per_class, images_per_class=images_per_class,
                 overrides=overrides or None)
    stages = (f"prepare, generate_syn1, generate_syn2, generate_img2img@{DEMO_IMG2IMG}, build_mixtures, train@..., "
              f"filter@{DEMO_FILTERED_MIX}, train_filtered@..., evaluate")
    for cmd in (["dvc", "repro"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "baseline: dvc repro of the tiny pipeline"],
                ["dvc", "push"]):
        if cmd[0] == "dvc" and not quiet:
            print(f"demo: {' '.join(cmd)} ({stages if cmd[1] == 'repro' else f'to {workdir / STORAGE}'})", flush=True)
        proc = run(cmd, workdir, check=False, quiet=quiet)
        if proc.returncode:
            if quiet:
                raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}) in {workdir}:\n{proc.stdout}")
            raise SystemExit(proc.returncode)
    return workdir


def show_worth(workdir: Path) -> None:
    """What `make demo` adds beyond the paper: quality columns, a pilot ranking, the exchange rate."""
    print("demo: synthetic-set quality columns (dvc exp show; docs/worth.md):", flush=True)
    run(["dvc", "exp", "show", "--md", "--drop", ".*", "--keep", "Experiment|syn_(recognised|fd|kid|kid_se|precision|recall)\\."],
        workdir, check=False, quiet=False)
    summary = json.loads((workdir / "metrics" / "summary.json").read_text())
    if summary.get("n_syn"):
        print(f"demo: exchange rate against the real curve {', '.join(DEMO_REAL_CURVE)} (metrics/evaluate/exchange_rate.json):")
        print("\n".join(exchange_table(summary, summary["n_syn"])) + "\n")
    else:
        print("demo: no exchange-rate table this time: the toy real curve did not rise with more real images "
              "(evaluate said so above); `make demo` with its default 10 epochs usually gets one\n")
    print(f"demo: python -m diffaug.pilot {' '.join(DEMO_PILOT)} --per-class 4", flush=True)
    run([sys.executable, "-m", "diffaug.pilot", *DEMO_PILOT, "--per-class", "4"], workdir, check=False, quiet=False)
    print(f"demo: pilot samples in {workdir / 'data' / 'pilot' / 'samples.png'}. {BANNER}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Run the whole pipeline offline on tiny data (numbers mean nothing).")
    ap.add_argument("--workdir", type=Path, default=REPO_ROOT / "demo",
                    help="where the scratch repository goes (replaced if it exists; default: demo/ in this checkout)")
    ap.add_argument("--epochs", type=int, default=10, help="training epochs of every train@ cell (default 10)")
    ap.add_argument("--real-per-class", type=int, default=100, help='toy "real" images per class (default 100)')
    args = ap.parse_args(argv)
    os.environ.update({"DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1"})
    start = time.time()
    print(BANNER, flush=True)
    print(f"demo: building a scratch repository in {args.workdir} (random-weight Stable Diffusion, toy data)", flush=True)
    build_demo(args.workdir, epochs=args.epochs, real_per_class=args.real_per_class)
    run(["dvc", "exp", "show", "--md", "--drop", ".*", "--keep", "Experiment|model$|test_acc\\."], args.workdir, check=False, quiet=False)
    show_worth(args.workdir)
    print(f"demo: done in {time.time() - start:.0f} s; outputs in {args.workdir} (metrics/summary.json, data/synthetic/*/samples.png)")
    where = os.path.relpath(args.workdir)
    venv = os.path.relpath(Path(sys.prefix), args.workdir)
    if venv.startswith(os.path.join(os.pardir, os.pardir)):
        venv = str(Path(sys.prefix))
    print(f"""
Try the README's commands in it (`main` is the committed baseline, `dvc-storage/` its default remote):
  cd {where} && source {venv}/bin/activate
  dvc exp show --md --drop '.*' --keep 'Experiment|test_acc\\.'
  dvc exp run -n resnet34 -S model=resnet34
  dvc exp run --queue -S model=resnet18,vgg16 && dvc queue start -j 2 && dvc queue status
  make report                 # reports/report.md
  dvc plots show              # dvc_plots/index.html
  dvc push; dvc pull""")
    print(BANNER)


if __name__ == "__main__":
    main()
