"""Fixtures shared by several test files, safe under pytest-xdist (`make test` runs `-n auto`).

tiny_pipelines   session: family -> a tiny random pipeline folder, built once per run for every worker
tiny_sd          session: tiny_pipelines("sd"), with its never-flagging safety checker
e2e_repo         session: the real dvc.yaml in a scratch repository, `dvc repro`-ed once per run
e2e_copy         function: a copy of e2e_repo to change, sharing its DVC cache (the run-cache then
                 restores every stage the change leaves alone)
one_thread       module: torch on one thread
tiny_clip_cache  function: a random CLIP where the Hugging Face cache keeps openai/clip-vit-base-patch32

Whatever a session fixture builds is shared by all workers: tests read it and never change it.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# CI and developers have the shared data folder beside the checkout.
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10-5k-train.npz"

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    # Workers share the cores: one worker's torch (and the stage subprocesses it starts, which inherit
    # this) on more threads than its share only adds contention. Set before torch is imported.
    workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    # torch.compile's inductor otherwise starts a pool of compile processes in every worker
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

# The end-to-end repository: every stage of dvc.yaml with one tiny setting that all its tests share.
E2E_MIXES = ["orig100", "orig50_syn1_50", "syn2_100", "orig50_rot50"]


def run_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """`build(folder)` once per test run, whichever xdist worker asks first; the others wait for it.

    Under xdist every worker's base temp folder sits in one folder per run, which holds the result."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if "PYTEST_XDIST_WORKER" in os.environ else base
    folder, done = shared / name, shared / f"{name}.done"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():
            if folder.exists():  # a build that failed in another worker
                shutil.rmtree(folder)
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def tiny_pipelines(tmp_path_factory) -> Callable[..., Path]:
    """tiny_pipelines(family, safety_checker=True) -> the folder of that family's tiny random pipeline
    (diffaug.sandbox.tiny.build_tiny_pipeline), built on first use, once per test run."""
    from diffaug.sandbox.tiny import build_tiny_pipeline

    def get(family: str = "sd", *, safety_checker: bool = True) -> Path:
        name = f"tiny-{family}" + ("" if safety_checker or family != "sd" else "-nochecker")
        return run_once(tmp_path_factory, name, lambda out: build_tiny_pipeline(out, family, safety_checker=safety_checker))
    return get


@pytest.fixture(scope="session")
def tiny_sd(tiny_pipelines) -> Path:
    """A tiny random-weight Stable Diffusion pipeline saved with save_pretrained."""
    return tiny_pipelines("sd")


@pytest.fixture(scope="module")
def one_thread():
    """Two shared cores; a fixed thread count also keeps CPU float results identical across runs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def e2e_repo(tmp_path_factory) -> Path:
    """A sandbox (diffaug.sandbox.demo.make_sandbox: the real dvc.yaml, a tiny SD, toy shapes) with every
    stage run by `dvc repro` and the result committed, once per test run. Read it; change a copy (e2e_copy,
    copy_repo). e2e_log(e2e_repo) is what its `dvc repro` printed."""
    from diffaug.sandbox.demo import make_sandbox, run

    def build(folder: Path) -> None:
        make_sandbox(folder, mixes=E2E_MIXES, epochs=1, images_per_class=4, per_class_real=30)
        for cmd in (["dvc", "repro"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "baseline: dvc repro"]):
            proc = run(cmd, folder, check=False)
            assert proc.returncode == 0, f"{' '.join(cmd)} failed in {folder}:\n{proc.stdout}"
            if cmd[:2] == ["dvc", "repro"]:
                e2e_log_file(folder).write_text(proc.stdout)
    return run_once(tmp_path_factory, "e2e", build)


def e2e_log_file(repo: Path) -> Path:
    return repo.parent / f"{repo.name}-repro.log"


def e2e_log(repo: Path) -> str:
    """What the shared repository's `dvc repro` printed."""
    return e2e_log_file(repo).read_text()


def copy_repo(repo: Path, to: Path) -> Path:
    """A working copy of a sandbox (git history, outputs, dvc.lock) at `to` that uses `repo`'s DVC cache, so
    its run-cache too, and its inputs and default remote. The copy's own DVC state (.dvc/tmp) starts empty."""
    from diffaug.sandbox.demo import STORAGE, run

    def dvc_state(folder: str, names: list[str]) -> set[str]:
        if Path(folder) == repo:  # git-ignored: inputs are named by absolute path, the remote is shared too
            return {"inputs", "checkpoints", STORAGE} & set(names)
        return {"cache", "tmp"} & set(names) if Path(folder) == repo / ".dvc" else set()

    shutil.copytree(repo, to, symlinks=True, ignore=dvc_state)
    run(["dvc", "cache", "dir", "--local", str((repo / ".dvc" / "cache").resolve())], to)
    return to


@pytest.fixture
def e2e_copy(e2e_repo, tmp_path) -> Path:
    """A copy of e2e_repo to change (copy_repo), at tmp_path / "repo"."""
    return copy_repo(e2e_repo, tmp_path / "repo")


@pytest.fixture
def tiny_clip_cache(tmp_path, monkeypatch) -> Path:
    """A random-weight CLIP saved where the Hugging Face cache keeps openai/clip-vit-base-patch32, with the
    cache pointed there: the same local_files_only loading as real weights. Returns its snapshot folder."""
    import huggingface_hub.constants
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from diffaug.sandbox.tiny import TINY_CLIP, byte_level_tokenizer

    tokenizer = byte_level_tokenizer()
    text = dict(vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513, **TINY_CLIP)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=dict(image_size=32, patch_size=8, **TINY_CLIP), projection_dim=16))
    cache, commit = tmp_path / "hf", "0" * 40
    snapshot = cache / "models--openai--clip-vit-base-patch32" / "snapshots" / commit
    model.save_pretrained(snapshot)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(snapshot)
    (cache / "models--openai--clip-vit-base-patch32" / "refs").mkdir()
    (cache / "models--openai--clip-vit-base-patch32" / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return snapshot
