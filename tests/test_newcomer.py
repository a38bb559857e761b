"""The newcomer path: every command the README and the docs pages show works as written.

The README and the docs pages in PAGES are parsed: every line of their ```bash blocks and every inline
`dvc ...` span. Each command must be listed in COMMANDS below with what this test does with it, so the
test fails when a page gains, loses or changes a command. The README's "Reproduce the paper" block
runs as written, in order, in a fresh sandbox with the demo's tiny settings (1 epoch, a few images);
the other runnable commands run as written, in page order, from inside a demo repository built by the
same function as `make demo`. Both run in `bash` with the venv activated exactly as the README says
(`source .venv/bin/activate`) and with the venv's bin/ taken off PATH first, so nothing works by accident.
"""
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from diffaug.sandbox.demo import DEMO_FILTERED, STORAGE, build_demo, make_sandbox, run, tool_env

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = ("generators", "generator-memory", "training", "experiments", "sharing", "beyond-the-paper", "scale", "gpu", "speed", "worth")
PAGES = [README] + [REPO / "docs" / f"{name}.md" for name in DOCS]  # in the order the README links them
PAPER = "Reproduce the paper"  # the README's first section: its block runs in test_reproduce_the_paper_...
VENV = Path(sys.prefix)  # the venv the tests run in: the one `make test` created
MIXES = ["orig100", "orig50_syn1_50"]  # what the docs' narrowed grid names; few cells keep this test short
CELLS = MIXES + DEMO_FILTERED["filtered_mixes"]  # make demo adds its confidence-filtered mixture to the trained cells
ARCHITECTURES = ["resnet18", "resnet34", "resnet50", "vgg16", "densenet121"]
PAPER_MIXES = ["orig100"]  # the paper's block trains all five architectures: one cell each keeps it short
QUEUE_TIMEOUT_S = 600

RUN = "run as written in the demo repository"
PAPER_RUN = "run as written, in order, in a fresh sandbox (test_reproduce_the_paper_runs_as_written_in_a_sandbox)"
NEEDS_GPUS = "one worker per GPU: needs GPUs"
COMMANDS = {
    # README: Reproduce the paper
    "make venv && source .venv/bin/activate": "set-up: every command here runs with the test's venv activated",
    "dvc repro build_mixtures": PAPER_RUN,
    "git add -A && git commit -m paper data": PAPER_RUN,
    "dvc exp run --queue -S model=resnet18,resnet34,resnet50,vgg16,densenet121 -S train.recipe=paper "
    "-S train.variant=paper": PAPER_RUN,
    "dvc queue start": PAPER_RUN,
    "dvc queue status": RUN + ", repeated until no task is Queued or Running (also in the paper's block)",
    "make report": RUN + " (its Makefile's report target; also in the paper's block)",
    # README: Set up and test, the demo, what else it does
    "make repro": "test_make_repro_that_fails_leaves_nothing_behind (the pipeline as committed needs a GPU and network)",
    "make test": "this test suite but its end-to-end tests (marked slow)",
    "source .venv/bin/activate": "prefixed to every command run here",
    "make demo": "the `demo` fixture: build_demo(), what `make demo` runs, with 1 epoch",
    "dvc …": "prose, not a command",
    "dvc repro": "prose; `dvc repro` runs after `dvc pull` below",
    "dvc exp run": "prose; the Experiments block's `dvc exp run` lines run",
    "dvc import": "prose",
    "dvc plots": "prose; `dvc plots show` runs",
    "dvc params diff": "prose; tests/test_params_complete.py runs it on a changed params.yaml",
    "dvc push": RUN,
    "dvc pull": RUN + " in a fresh git clone of it, then `dvc repro` must rerun nothing",
    "make test-all": "this test suite, the end-to-end tests included",
    "dvc exp run -S +train.checkpoint_every=5": "the demo's params.yaml leaves the lever train.checkpoint_every out, so `+` adds it "
        "(`+` refuses a key that is already there; plain -S sets it); test_a_plus_override_adds_a_key_params_yaml_leaves_out checks it",
    # docs/experiments.md
    "dvc exp run -n resnet50 -S model=resnet50": RUN,
    "dvc exp run -S mixes=[orig100,orig50_syn1_50]": RUN,
    "dvc exp run -S train.recipe=paper -S train.variant=paper": RUN,
    r"dvc exp show --md --drop .* --keep Experiment|test_acc\.": RUN,
    "dvc exp run --queue -S model=resnet34,vgg16": RUN,
    "dvc queue start -j 2": RUN,
    "CUDA_VISIBLE_DEVICES=0 dvc queue start -j 1": NEEDS_GPUS,
    "CUDA_VISIBLE_DEVICES=1 dvc queue start -j 1": NEEDS_GPUS,
    "dvc exp run -S model=...": "placeholder; the Experiments block's lines run",
    "dvc exp show --json": "prose; what the report reads (`make report` runs it)",
    "dvc exp show --json > exp.json": RUN,
    "python -m diffaug.report --exp-json exp.json --out reports-saved": RUN,
    "dvc plots show": RUN,
    "dvc plots diff <exp> …": RUN + " with <exp> = resnet50",
    "dvc exp show": RUN,
    # docs/scale.md: a Ray cluster, SLURM or Kubernetes; tests/test_ray_generate.py and test_ray_grid.py run
    # the engine and the grid on a local Ray instance
    "DIFFAUG_ENGINE=ray dvc repro generate_syn1 generate_syn2": "needs a Ray cluster with the model on every node",
    "DIFFAUG_ENGINE=ray dvc repro generate_syn1 generate_syn2 && dvc push": "needs a Ray cluster and a remote",
    "bash -c DIFFAUG_ENGINE=ray dvc repro generate_syn1 generate_syn2 build_mixtures && python -m diffaug.grid && dvc repro && dvc push":
        "part of a SLURM batch script",
    "cd /scratch/$USER/diffaug && source .venv/bin/activate": "a cluster's shared filesystem",
    "dvc commit": "prose; python -m diffaug.grid runs it",
    "dvc exp apply": "prose",
    "dvc exp push": "prose",
    "dvc exp run --queue": "prose",
    "dvc pull prepare": "needs a remote holding the prepared splits",
    "dvc queue start -j N": "placeholder N",
    "dvc remote modify --local storage access_key_id ... && dvc remote modify --local storage secret_access_key ...": "placeholder secrets",
    "dvc status": "prose; python -m diffaug.grid reads it",
    "export DVC_NO_ANALYTICS=1 HF_HOME=/scratch/$USER/hf": "a cluster's shared filesystem",
    "git checkout -b vgg16 && sed -i s/^model: .*/model: vgg16/ params.yaml": "part of the cluster walk-through",
    "git clone https://github.com/you/diffaug && cd diffaug": "placeholder URL",
    "head=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1)": "SLURM",
    "helm install kuberay-operator kuberay/kuberay-operator": "Kubernetes",
    "helm repo add kuberay https://ray-project.github.io/kuberay-helm/ && helm repo update": "Kubernetes",
    "kubectl apply -f raycluster.yaml": "Kubernetes",
    "kubectl exec -it <cluster>-head-<id> -- bash": "Kubernetes, placeholder names",
    "kubectl get pods": "Kubernetes",
    "python -c from diffusers import DiffusionPipeline; DiffusionPipeline.download('CompVis/stable-diffusion-v1-4')": "the Hugging Face hub",
    "python -m diffaug.grid": "needs a Ray cluster; tests/test_ray_grid.py runs it on tiny cells",
    "python -m diffaug.grid && dvc repro && git commit -am vgg16 grid && dvc push": "needs a Ray cluster and a remote",
    "sbatch scale.sbatch": "SLURM",
    'srun ray symmetric-run --address "$head:6379" --min-nodes "$SLURM_JOB_NUM_NODES" -- \\': "SLURM",
    # docs/sharing.md
    "dvc pull generate_syn1": RUN + " in another fresh clone",
    "dvc update": "prose",
    "dvc artifacts get": "prose",
    ".venv/bin/pip install dvc-gs": "cloud plugin and account",
    ".venv/bin/pip install dvc-ssh": "a server and account",
    "dvc remote add -d storage gs://my-bucket/diffaug": "cloud plugin and account",
    "dvc remote add -d storage s3://my-bucket/diffaug": "an account; tests/test_s3_remote.py runs this setup against moto's S3 server",
    "dvc remote add -d storage ssh://me@storage.example.org/srv/diffaug": "a server and account",
    "dvc remote modify --local storage access_key_id AKIA...": "placeholder secret",
    "dvc remote modify --local storage secret_access_key ...": "placeholder secret",
    "dvc remote modify --local storage credentialpath ~/keys/diffaug-sa.json": "placeholder key file",
    "dvc remote modify --local storage keyfile ~/.ssh/id_ed25519": "placeholder key file",
    "dvc remote modify storage endpointurl https://minio.example.org": "placeholder server; tests/test_s3_remote.py sets a loopback one",
    "dvc remote modify storage verify true": "tests/test_s3_remote.py sets it (a damaged object is then refused by dvc pull)",
    "dvc import https://github.com/you/diffaug data/synthetic/syn2 -o data/external/syn2":
        "placeholder URL; test_pipeline.py imports from a local copy",
    "dvc update syn2.dvc": "needs an imported set (placeholder URL above)",
    "git tag -a syn1@v1.0.0 -m syn1 v1.0.0 && git push --tags && dvc push": "needs a git remote to push tags to",
    "dvc artifacts get https://github.com/you/diffaug syn1": "placeholder URL; test_pipeline.py gets an artifact from a clone",
    "python -m diffaug.export syn1 --format imagefolder --out exports/syn1": RUN,
    "python -m diffaug.export syn1 --format parquet --out exports/syn1-pq": RUN,
    # docs/generators.md
    "dvc repro generate_syn1": RUN,
    "dvc commit generate_syn1": RUN,
    # docs/gpu.md
    "python -m diffaug.doctor": RUN + " (on a CPU it checks the CPU path)",
    "python -m diffaug.doctor --params my.yaml --json out/doctor.json --budget-s 120": "placeholder params file; the line above runs",
    # docs/speed.md
    "CUDA_VISIBLE_DEVICES=0 dvc queue start -j 3": "several workers per GPU: needs a GPU",
    # docs/worth.md
    "python -m diffaug.pilot syn1 syn2 syn2@steps=20,scheduler=dpmsolver++ --per-class 20": RUN,
    "dvc repro train@<model>-orig100": "prose; the demo trains its orig100 classifier",
}


def _key(text: str) -> str:
    try:
        return " ".join(shlex.split(text, comments=True))
    except ValueError:
        return " ".join(text.split())


def page_commands(page: Path) -> list[tuple[str, str, str, bool]]:
    """(section, key, line as written, in a bash block) for every command of one page, in page order."""
    found, section, block = [], "", None
    for line in page.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        if line.startswith("```"):
            block = line[3:].strip() if block is None else None
            continue
        if block == "bash":
            if line.strip() and not line.lstrip().startswith("#"):
                found.append((section, _key(line), line, True))
        elif block is None:
            for span in re.findall(r"`([^`]+)`", line):
                words = span.split()
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    words = words[1:]
                if words[:1] == ["dvc"] and len(words) > 1:
                    found.append((section, _key(span), span, False))
    return found


def commands() -> list[tuple[Path, str, str, str, bool]]:
    """(page, section, key, line, in a block) for every command of every page in PAGES."""
    return [(page, *cmd) for page in PAGES for cmd in page_commands(page)]


def test_every_docs_page_is_checked():
    assert sorted(p.name for p in (REPO / "docs").glob("*.md")) == sorted(f"{name}.md" for name in DOCS)


def test_a_plus_override_adds_a_key_params_yaml_leaves_out(tmp_path):
    """The README's `-S +key=value` for a key params.yaml does not write: dvc's override adds it, and the
    result passes the config's checks."""
    from dvc.utils.hydra import apply_overrides

    from diffaug.config import load_config

    params = tmp_path / "params.yaml"
    shutil.copy2(REPO / "params.yaml", params)
    assert "checkpoint_every" not in yaml.safe_load(params.read_text())["train"]  # the example adds a new key
    apply_overrides(str(params), ["+train.checkpoint_every=5"])
    assert load_config(params).train.checkpoint_every == 5
    with pytest.raises(Exception, match="Invalid `--set-param` value"):  # `+` on a key params.yaml writes
        apply_overrides(str(params), ["+train.checkpoint_every=4"])


def test_every_command_shown_is_known_here():
    shown = {key for *_, key, _, _ in commands()}
    unknown = sorted(shown - set(COMMANDS))
    assert not unknown, f"the README or docs show commands this test does not know; add them to COMMANDS: {unknown}"
    gone = sorted(set(COMMANDS) - shown)
    assert not gone, f"COMMANDS lists commands no page shows any more: {gone}"


def test_the_readme_opens_with_the_papers_commands():
    """The first screen reproduces the paper: the first section is "Reproduce the paper", its block
    queues all five architectures with the paper's recipe and variant, then builds the report."""
    text = README.read_text()
    sections = [line[3:].strip() for line in text.splitlines() if line.startswith("## ")]
    assert sections[0] == PAPER and text.splitlines().index("## " + PAPER) < 20
    block = [key for page, section, key, _, in_block in commands() if page == README and section == PAPER and in_block]
    queue = next(k for k in block if k.startswith("dvc exp run --queue"))
    assert f"-S model={','.join(ARCHITECTURES)}" in queue and "-S train.recipe=paper -S train.variant=paper" in queue
    assert block.index("dvc repro build_mixtures") < block.index(queue) < block.index("make report") == len(block) - 1
    assert len(text.splitlines()) <= 200


def newcomer_env() -> dict:
    """A shell as a newcomer has it: the venv NOT on PATH (activation puts it there), no network."""
    env = tool_env()
    venv_bin = (VENV / "bin").resolve()
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p and Path(p).resolve() != venv_bin)
    env.pop("VIRTUAL_ENV", None)
    return env


def sh(line: str, cwd: Path, check: bool = True) -> str:
    """`line` exactly as the README writes it, in bash, after `source .venv/bin/activate`."""
    activate = shlex.quote(str(VENV / "bin" / "activate"))
    proc = subprocess.run(["bash", "-c", f"source {activate} && {line}"], cwd=cwd, env=newcomer_env(),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check:
        assert proc.returncode == 0, f"README command failed with exit {proc.returncode} in {cwd}:\n$ {line}\n{proc.stdout}"
    return proc.stdout


def md_rows(table: str) -> dict[str, list[str]]:
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 1 and not set(cells[0]) <= set("-: "):
            rows[cells[0]] = cells[1:]
    return rows


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    if not (VENV / "bin" / "activate").is_file():
        pytest.skip(f"tests are not running in a venv ({VENV}); run them with `make test`")
    root = tmp_path_factory.mktemp("newcomer")
    path = build_demo(root / "demo", epochs=1, real_per_class=20, mixes=MIXES, images_per_class=4, quiet=True)
    yield {"path": path, "root": root}
    run(["dvc", "queue", "stop", "--kill"], path, check=False)


@pytest.mark.slow
def test_demo_repository_has_a_baseline_and_a_remote(demo):
    path = demo["path"]
    assert run(["git", "status", "--porcelain"], path).stdout == "", "make demo leaves its results uncommitted"
    assert run(["git", "log", "--oneline"], path).stdout.count("\n") == 2
    assert "in sync" in sh("dvc status -c", path)  # make demo pushed the baseline to its remote
    assert (path / STORAGE).is_dir() and STORAGE in (path / ".gitignore").read_text()
    main = md_rows(sh("dvc exp show --md --drop '.*' --keep 'Experiment|test_acc'", path))["main"]
    assert len(main) == len(CELLS) and all(re.fullmatch(r"[0-9.]+", c) for c in main), main


def _wait_for_queue(line: str, path: Path) -> str:
    deadline = time.time() + QUEUE_TIMEOUT_S
    while True:
        status = sh(line, path)
        if not re.search(r"\b(Queued|Running)\b", status) or time.time() > deadline:
            break
        time.sleep(5)
    tasks = [ln for ln in status.splitlines()[1:] if ln.strip() and not ln.startswith(("Worker", "No"))]
    if not tasks or not all(ln.split()[-1] == "Success" for ln in tasks if len(ln.split()) > 2):
        logs = "".join(sh(f"dvc queue logs {ln.split()[0]}", path, check=False)[-3000:]
                       for ln in tasks if "Failed" in ln)
        pytest.fail(f"queued experiments did not all succeed within {QUEUE_TIMEOUT_S} s:\n{status}\n{logs}")
    return status


@pytest.mark.slow
def test_reproduce_the_paper_runs_as_written_in_a_sandbox(tmp_path):
    """The README's first block, line by line, in a fresh repository with the demo's tiny settings:
    data and synthetic sets, then the five architectures queued with the paper's recipe and variant,
    then the report with a row for each."""
    if not (VENV / "bin" / "activate").is_file():
        pytest.skip(f"tests are not running in a venv ({VENV}); run them with `make test`")
    path = make_sandbox(tmp_path / "paper", mixes=PAPER_MIXES, epochs=1, images_per_class=4, per_class_real=20)
    block = [(key, line) for page, section, key, line, in_block in commands() if page == README and section == PAPER and in_block]
    try:
        for key, line in block:
            if key == "make venv && source .venv/bin/activate":
                continue  # the sandbox has no Makefile venv target; sh() activates the test's venv
            if key == "dvc queue status":
                assert _wait_for_queue(line, path).count("Success") == len(ARCHITECTURES)
                continue
            out = sh(line, path)
            if key == "dvc repro build_mixtures":
                assert "Running stage 'generate_syn1'" in out and "Running stage 'train" not in out, out
            elif key.startswith("dvc exp run --queue"):
                assert out.count("Queued experiment") == len(ARCHITECTURES), out
    finally:
        run(["dvc", "queue", "stop", "--kill"], path, check=False)
    from diffaug.report.results import parse_exp_show, run_exp_show

    found, _ = parse_exp_show(run_exp_show(cwd=path)[0])
    runs = {r.model: r for r in found if r.kind == "experiment"}
    assert sorted(runs) == sorted(ARCHITECTURES), found
    assert all(r.variant == "paper" and r.recipe == "paper" and set(r.acc) == set(PAPER_MIXES) for r in runs.values()), found
    page = (path / "reports" / "report.md").read_text()
    for model in ARCHITECTURES:
        assert f"| {model} |" in page, f"{model} has no row in the report:\n{page}"


@pytest.mark.slow
def test_commands_of_the_readme_and_docs_work_as_written_in_the_demo_repository(demo):
    path, root = demo["path"], demo["root"]
    done = set()
    for _page, section, key, line, _in_block in commands():
        if section == PAPER or not COMMANDS.get(key, "").startswith(RUN) or key in done:
            continue
        done.add(key)
        if key == "dvc queue status":
            status = _wait_for_queue(line, path)
            assert status.count("Success") >= 2, status
        elif key == "dvc pull":  # "in another clone: fetch everything, then `dvc repro` reruns nothing"
            clone = root / "clone"
            run(["git", "clone", "-q", str(path), str(clone)], root)
            sh(line, clone)
            assert "Data and pipelines are up to date." in sh("dvc status", clone)
            assert "Running stage" not in sh("dvc repro", clone)
            assert len(list((clone / "models").rglob("*.pt"))) == len(CELLS)
        elif key == "dvc pull generate_syn1":
            clone = root / "clone-syn1"
            run(["git", "clone", "-q", str(path), str(clone)], root)
            sh(line, clone)
            assert (clone / "data" / "synthetic" / "syn1" / "manifest.json").is_file()
            assert not (clone / "data" / "synthetic" / "syn2").exists()
        elif key == "dvc plots diff <exp> …":
            out = sh("dvc plots diff resnet50", path)
            assert "index.html" in out, out
        else:
            out = sh(line, path)
            if key.startswith("dvc exp show --md"):
                rows = md_rows(out)
                assert "main" in rows and all(re.fullmatch(r"[0-9.]+", c) for c in rows["main"] if c != "-"), out
                assert any(r.endswith("[resnet50]") for r in rows), out  # e.g. "└── 6f05fe2 [resnet50]"
            elif key.startswith("dvc exp run --queue"):
                assert out.count("Queued experiment") == 2, out
            elif key == "make report":
                page = (path / "reports" / "report.md").read_text()
                for model in ("resnet18", "resnet34", "resnet50", "vgg16"):
                    assert model in page, f"{model} missing from the report:\n{page}"
            elif key.startswith("python -m diffaug.report --exp-json"):
                assert "exp.json" in (path / "reports-saved" / "report.md").read_text()
            elif "--format imagefolder" in key:
                assert (path / "exports" / "syn1" / "metadata.csv").is_file()
            elif "--format parquet" in key:
                assert (path / "exports" / "syn1-pq" / "syn1.parquet").is_file()
            elif key == "dvc push":
                assert "in sync" in sh("dvc status -c", path)
    assert done == {k for k, v in COMMANDS.items() if v.startswith(RUN)}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_repro_that_fails_leaves_nothing_behind(tmp_path):
    """Offline, the prepare stage cannot download CIFAR-10: `make repro` fails with the one-line hint
    and the working tree is as before (no empty data/raw/)."""
    if not (VENV / ".installed").is_file():
        pytest.skip(f"tests are not running in the Makefile's venv ({VENV})")
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("Makefile", "dvc.yaml", "params.yaml", ".dvcignore", "src"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif src.exists():
            shutil.copy2(src, repo / name)
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)

    def tree() -> set[str]:
        return {str(p.relative_to(repo)) for p in repo.rglob("*")
                if not p.relative_to(repo).parts[0] == ".git" and p.relative_to(repo).parts[:2] != (".dvc", "tmp")}

    before = tree()
    env = tool_env()
    for var in ("no_proxy", "NO_PROXY"):
        env.pop(var, None)
    env.update({"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
                "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"})
    # -o: the venv is already built; never let this test reinstall it
    proc = subprocess.run(["make", "-o", f"{VENV}/.installed", "repro", f"VENV={VENV}"], cwd=repo, env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)
    assert proc.returncode != 0, proc.stdout
    assert "could not download" in proc.stdout, proc.stdout
    assert tree() == before, f"left behind: {sorted(tree() - before)}"
