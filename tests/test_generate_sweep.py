"""`benchmarks/generate.py --sweep --tiny`: the whole lever sweep on the tiny pipeline, on a CPU, in seconds."""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def load_benchmark():
    spec = importlib.util.spec_from_file_location("bench_generate_sweep", REPO / "benchmarks" / "generate.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.slow  # the whole benchmark, torch.compile included
def test_sweep_tiny_runs_end_to_end_and_writes_only_where_told(tmp_path):
    bench = load_benchmark()
    repo_results = (REPO / "benchmarks" / "RESULTS.md").read_bytes()
    results_dir = sorted((REPO / "benchmarks" / "results").glob("*")) if (REPO / "benchmarks" / "results").exists() else []
    results_md, out_json = tmp_path / "RESULTS.md", tmp_path / "sweep.json"
    result = bench.main(["--sweep", "--tiny", "--device", "cpu", "--results", str(results_md), "--json", str(out_json)])

    saved = json.loads(out_json.read_text())
    assert result["json"] == str(out_json) and saved["configs"] == json.loads(json.dumps(result["configs"]))
    rows = {r["name"]: r for r in saved["configs"]}
    assert [r["name"] for r in saved["configs"]] == [c.name for c in bench.sweep_configs(bench.parse_args(["--tiny"]))]
    plain = rows["plain diffusers (PNDM, PIL output)"]
    exact = rows["ours eager, no levers"]
    assert plain["status"] == "ok" and plain["images_per_s"] > 0
    assert exact["status"] == "ok" and exact["images_per_s"] > 0 and exact["diff_max"] == 0
    compiled = rows["ours compiled, fused QKV (default on CUDA)"]
    assert compiled["status"] == "ok" and compiled["compile_s"] > 0 and compiled["diff_max"] <= 1
    # Exact levers keep the images within a level; every approximate lever measurably changes them.
    for r in saved["configs"]:
        if r["status"] == "ok" and r["kind"] == "exact" and r["dtype"] == exact["dtype"]:
            assert r["diff_max"] <= 1, r["name"]
        if r["status"] == "ok" and r["kind"] == "approximate":
            assert r["diff_mean"] > 0, r["name"]
    assert any(r["kind"] == "approximate" and r["status"] == "ok" for r in saved["configs"])
    assert all(r["status"].startswith("skipped: diffusion.fp8") for r in saved["configs"] if r["fp8"])
    assert rows["ours compiled + CUDA graphs (reduce-overhead)"]["status"].startswith("skipped")
    assert "recognition score not measured" in saved["recognition"]

    text = results_md.read_text()
    assert f"## {bench.SWEEP_SECTION}" in text and "--sweep --tiny" in text
    assert sum(line.startswith("| ") for line in text.splitlines()) == len(saved["configs"]) + 1  # + the header
    # The repository's own results are untouched.
    assert (REPO / "benchmarks" / "RESULTS.md").read_bytes() == repo_results
    assert (sorted((REPO / "benchmarks" / "results").glob("*")) if (REPO / "benchmarks" / "results").exists() else []) == results_dir


def test_family_runs_another_family_at_its_defaults(tmp_path):
    bench = load_benchmark()
    results_md = tmp_path / "RESULTS.md"
    results = bench.main(["--family", "dit", "--tiny", "--device", "cpu", "--steps", "2", "--results", str(results_md)])
    assert set(results) == {"ours", "ours fast"} and all(v > 0 for v in results.values())
    row = [line for line in results_md.read_text().splitlines() if line.startswith("| 20")]
    assert len(row) == 1 and "dit 64² 2 steps" in row[0] and "--family dit" in row[0]


def test_a_second_sweep_appends_a_block_to_the_same_section(tmp_path):
    bench = load_benchmark()
    md = tmp_path / "RESULTS.md"
    md.write_text("# Benchmark results\n\n## Training epoch time\n\n| a |\n|---|\n| 1 |\n")
    bench.record_sweep(md, ["### run 1", "", "| x |"])
    bench.record_sweep(md, ["### run 2", "", "| y |"])
    text = md.read_text()
    assert text.index("## Training epoch time") < text.index(bench.SWEEP_SECTION) < text.index("### run 1") < text.index("### run 2")
    assert text.count(f"## {bench.SWEEP_SECTION}") == 1


def test_the_gpu_sweep_drops_configurations_when_time_runs_out(tmp_path):
    bench = load_benchmark()
    out_json = tmp_path / "sweep.json"
    bench.main(["--sweep", "--tiny", "--device", "cpu", "--budget-s", "0", "--results", str(tmp_path / "R.md"),
                "--json", str(out_json)])
    rows = json.loads(out_json.read_text())["configs"]
    assert all(r["status"].startswith("skipped") for r in rows)
    assert any("time budget" in r["status"] for r in rows)


def test_family_benchmarks_take_the_generate_stages_defaults_distilled_variants_included(tiny_pipelines, tmp_path):
    """`--family flux` on a FLUX.1-schnell layout times its 4 steps without guidance, as the generate stage runs it."""
    import argparse
    import json

    from diffaug.generate.families import FAMILIES
    bench = load_benchmark()
    path = shutil.copytree(tiny_pipelines("flux"), tmp_path / "flux")  # a copy: this test edits its config
    args = argparse.Namespace(family="flux", model_dir=str(path), tiny=True, steps=None, guidance=None, resolution=None)
    bench.settings_for(args)
    assert (args.steps, args.guidance, args.resolution) == (FAMILIES["flux"].steps, FAMILIES["flux"].guidance_scale, 64)
    config = json.loads((path / "transformer" / "config.json").read_text())
    (path / "transformer" / "config.json").write_text(json.dumps({**config, "guidance_embeds": False}))  # schnell
    args = argparse.Namespace(family="flux", model_dir=str(path), tiny=True, steps=None, guidance=None, resolution=None)
    bench.settings_for(args)
    assert (args.steps, args.guidance) == (4, 0.0)
