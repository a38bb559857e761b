"""Bad params under `dvc repro` reach the user as the project's one line, not as a DVC error."""
from pathlib import Path

import pytest
import yaml

from diffaug.sandbox.demo import run

pytestmark = pytest.mark.slow


def test_an_unknown_mix_added_after_a_run_stops_at_build_mixtures_in_one_line(e2e_copy: Path):
    repo = e2e_copy  # every stage has run
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["mixes"].append("nosuchmix")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    again = run(["dvc", "repro"], repo, check=False)
    assert again.returncode != 0
    assert "Running stage 'build_mixtures'" in again.stdout  # prepare and generation are cached; this stage reads mixes
    index = len(params["mixes"]) - 1
    assert f"error: params.yaml: mixes[{index}]: unknown mixture; allowed: " in again.stdout
    assert "(got 'nosuchmix')" in again.stdout
    assert "No such file" not in again.stdout and "nosuchmix.npz" not in again.stdout
