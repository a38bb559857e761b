"""The newcomer path (issue 9): every command the README shows works as written.

The README is parsed: every line of its ```bash blocks and every inline `dvc ...` span. Each command
must be listed in COMMANDS below with what this test does with it, so the test fails when the
README gains, loses or changes a command. The runnable ones run as written, in README order, from
inside a demo repository built by the same function as `make demo` (1 epoch, a few images), in
`bash` with the venv activated exactly as the Quick start says (`source .venv/bin/activate`) and
with the venv's bin/ taken off PATH first, so nothing works by accident.
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

from diffaug.sandbox.demo import DEMO_FILTERED, STORAGE, build_demo, run, tool_env

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
VENV = Path(sys.prefix)  # the venv the tests run in: the one `make test` created
MIXES = ["orig100", "orig50_syn1_50"]  # what the README's narrowed grid names; few cells keep this test short
CELLS = MIXES + DEMO_FILTERED["filtered_mixes"]  # make demo adds its confidence-filtered mixture to the trained cells
QUEUE_TIMEOUT_S = 480

RUN = "run as written in the demo repository"
COMMANDS = {
    # Quick start
    "make repro": "test_make_repro_that_fails_leaves_nothing_behind (the paper's run needs a GPU and network)",
    "make test": "this test suite",
    "source .venv/bin/activate": "prefixed to every command run here",
    "make demo": "the `demo` fixture: build_demo(), what `make demo` runs, with 1 epoch",
    "dvc …": "prose, not a command",
    "dvc repro": RUN,
    "dvc exp run": "prose; the Experiments block's `dvc exp run` lines run",
    # Generating synthetic data
    "dvc repro generate_syn1": RUN,
    "dvc commit generate_syn1": RUN,
    # Experiments
    "dvc exp run -n resnet50 -S model=resnet50": RUN,
    "dvc exp run -S mixes=[orig100,orig50_syn1_50]": RUN,
    "dvc exp run -S train.recipe=paper -S train.variant=paper": RUN,
    r"dvc exp show --md --drop .* --keep Experiment|test_acc\.": RUN,
    "dvc exp run --queue -S model=resnet18,resnet34,resnet50,vgg16,densenet121": RUN,
    "dvc queue start -j 2": RUN,
    "dvc queue status": RUN + ", repeated until no task is Queued or Running",
    "make report": RUN + " (its Makefile's report target)",
    "CUDA_VISIBLE_DEVICES=0 dvc queue start -j 1": "one worker per GPU: needs GPUs",
    "CUDA_VISIBLE_DEVICES=1 dvc queue start -j 1": "one worker per GPU: needs GPUs",
    "dvc exp run -S model=...": "placeholder; the Experiments block's lines run",
    # Report
    "dvc exp show --json": RUN,
    "dvc plots show": RUN,
    "dvc plots diff <exp> …": RUN + " with <exp> = resnet50",
    "dvc exp show": RUN,
    # Sharing generated data
    "dvc push": RUN,
    "dvc pull": RUN + " in a fresh git clone of it, then `dvc repro` must rerun nothing",
    "dvc pull generate_syn1": RUN + " in another fresh clone",
    ".venv/bin/pip install dvc[s3] && dvc remote add -d storage s3://my-bucket/diffaug": "cloud plugin and account",
    ".venv/bin/pip install dvc[gs] && dvc remote add -d storage gs://my-bucket/diffaug": "cloud plugin and account",
    ".venv/bin/pip install dvc[ssh] && dvc remote add -d storage ssh://user@host/srv/diffaug": "a server and account",
    "dvc remote modify --local storage access_key_id ...": "placeholder secret",
    "dvc import https://github.com/you/diffaug data/synthetic/syn2 -o data/external/syn2":
        "placeholder URL; test_pipeline.py imports from a local copy",
    "dvc import": "prose",
    "dvc update syn2.dvc": "needs an imported set (placeholder URL above)",
    "CUDA_VISIBLE_DEVICES=0 dvc queue start -j 3": "several workers per GPU: needs a GPU",
    "dvc artifacts get": "prose",
    "dvc artifacts get https://github.com/you/diffaug syn1": "placeholder URL; test_pipeline.py gets an artifact from a clone",
    "git tag -a syn1@v1.0.0 -m syn1 v1.0.0 && git push --tags && dvc push": "needs a git remote to push tags to",
    "python -m diffaug.export syn1 --format imagefolder --out exports/syn1": "tests/test_export.py",
    "python -m diffaug.export syn1 --format parquet --out exports/syn1-pq": "tests/test_export.py",
    # Development
    ".venv/bin/python -m pytest -m not slow": "this test suite",
}


def _key(text: str) -> str:
    try:
        return " ".join(shlex.split(text, comments=True))
    except ValueError:
        return " ".join(text.split())


def readme_commands() -> list[tuple[str, str, str]]:
    """(section, key, line as written) for every README command, in README order."""
    found, section, block = [], "", None
    for line in README.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        if line.startswith("```"):
            block = line[3:].strip() if block is None else None
            continue
        if block == "bash":
            if line.strip() and not line.lstrip().startswith("#"):
                found.append((section, _key(line), line))
        elif block is None:
            for span in re.findall(r"`([^`]+)`", line):
                words = span.split()
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    words = words[1:]
                if words[:1] == ["dvc"] and len(words) > 1:
                    found.append((section, _key(span), span))
    return found


def test_every_readme_command_is_known_here():
    shown = {key for _, key, _ in readme_commands()}
    unknown = sorted(shown - set(COMMANDS))
    assert not unknown, f"README shows commands this test does not know; add them to COMMANDS: {unknown}"
    gone = sorted(set(COMMANDS) - shown)
    assert not gone, f"COMMANDS lists commands the README no longer shows: {gone}"


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
def test_readme_commands_work_as_written_in_the_demo_repository(demo):
    path, root = demo["path"], demo["root"]
    done = set()
    for _section, key, line in readme_commands():
        if not COMMANDS.get(key, "").startswith(RUN) or key in done:
            continue
        done.add(key)
        if key == "dvc queue status":
            status = _wait_for_queue(line, path)
            assert status.count("Success") >= 5, status
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
                assert out.count("Queued experiment") == 5, out
            elif key == "make report":
                page = (path / "reports" / "report.md").read_text()
                for model in ("resnet18", "resnet34", "resnet50", "vgg16", "densenet121"):
                    assert model in page, f"{model} missing from the report:\n{page}"
            elif key == "dvc push":
                assert "in sync" in sh("dvc status -c", path)
    assert done == {k for k, v in COMMANDS.items() if v.startswith(RUN)}


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
