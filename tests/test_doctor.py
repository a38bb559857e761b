"""`python -m diffaug.doctor`, in-process: it runs params.yaml's model through generate's own code for one
batch (a tiny PixArt here, its family's defaults filled in), one training step, and refuses bad arguments
in one line before doing anything."""
import json
from pathlib import Path

import pytest
import torch
import yaml

from diffaug import doctor
from diffaug.devices import GpuInfo
from diffaug.generate import runner
from diffaug.sandbox.tiny import build_tiny_pipeline, tiny_diffusion_params

REPO = Path(__file__).resolve().parents[1]
TURING = GpuInfo(0, "NVIDIA GeForce RTX 2080 Ti", (7, 5), 11 << 30, ("sm_75",))

pytestmark = pytest.mark.usefixtures("one_thread")


def params_for(folder: Path, **diffusion) -> Path:
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["diffusion"].update(diffusion)
    data["dataset"]["label_names"] = {}  # the repository's names CIFAR-10's classes; these tests prompt for cat and dog
    (folder / "params.yaml").write_text(yaml.safe_dump(data))
    return folder / "params.yaml"


def test_the_doctor_runs_the_configured_familys_pipeline_for_one_batch_and_a_training_step(tmp_path, monkeypatch):
    model = build_tiny_pipeline(tmp_path / "tiny-pixart", "pixart")
    params = params_for(tmp_path, **{**tiny_diffusion_params(model), "resolution": None, "steps": None,
                                     "guidance_scale": None, "safety_checker": False})
    opened = []
    monkeypatch.setattr(runner, "open_sampler", lambda *a, **k: opened.append(a) or runner_open_sampler(*a, **k))
    doctor.main(["--params", str(params), "--json", str(tmp_path / "out" / "doctor.json"), "--budget-s", "120"])
    report = json.loads((tmp_path / "out" / "doctor.json").read_text())
    checks = {(c["area"], c["name"]): c for c in report["checks"]}
    batch = checks[("generation", "batch")]
    assert batch["status"] == "ok" and len(opened) == 1, batch
    # generate's path: the family's pipeline with its defaults (steps, guidance) filled in, at the params' batch size
    assert batch["value"]["pipeline"] == "PixArtSigmaPipeline" and batch["value"]["family"] == "pixart"
    assert batch["value"]["steps"] == 20 and batch["value"]["batch"] == 4 and batch["value"]["images_per_s"] > 0
    dif = opened[0][-1].diffusion  # the plan's settings, which open_sampler loads
    assert type(dif.guidance_scale) is float and dif.resolution == batch["value"]["resolution"]
    step = checks[("training", "resnet18 step")]
    assert step["status"] == "ok" and step["value"]["s_per_step"] > 0 and step["value"]["mixture"] == "orig100_syn1_100_syn2_100"
    assert report["cpu_only"] is True and checks[("machine", "GPU")]["status"] == "no"
    assert not [c for c in report["checks"] if c["status"] == "no" and c["area"] != "machine"], report["checks"]


runner_open_sampler = runner.open_sampler


def test_a_model_that_is_not_cached_is_skipped_not_downloaded(tmp_path, capsys):
    doctor.main(["--params", str(params_for(tmp_path)), "--json", str(tmp_path / "doctor.json"), "--budget-s", "1"])
    checks = {c["name"]: c for c in json.loads((tmp_path / "doctor.json").read_text())["checks"]}
    assert checks["batch"]["status"] == "skipped" and "not in the local Hugging Face cache" in checks["batch"]["detail"]
    assert checks["resnet18 step"]["status"] == "skipped"  # over the 1 s budget


def test_a_model_folder_that_is_not_there_gets_generates_one_line(tmp_path):
    """The doctor resolves the model as generate does: a path-like name that is not there is no hub id."""
    doctor.main(["--params", str(params_for(tmp_path, model="./no-such-model")), "--json", str(tmp_path / "doctor.json"),
                 "--budget-s", "1"])
    checks = {c["name"]: c for c in json.loads((tmp_path / "doctor.json").read_text())["checks"]}
    assert checks["batch"]["status"] == "no"
    assert checks["batch"]["detail"].startswith("UserError: diffusion.model: directory './no-such-model' not found"), checks["batch"]


@pytest.mark.parametrize("argv, says", [
    (["--budget-s", "nan"], "error: --budget-s: got nan; allowed: a number of seconds > 0"),
    (["--budget-s", "inf"], "error: --budget-s: got inf; allowed: a number of seconds > 0"),
    (["--budget-s", "0"], "error: --budget-s: got 0.0; allowed: a number of seconds > 0"),
    (["--json", "{file}/doctor.json"], "error: --json: {file}: cannot write: it is a file, not a folder"),
    (["--json", "{folder}"], "error: --json: {folder}: cannot write (it is a folder)"),
])
def test_bad_arguments_are_one_line_before_any_check(tmp_path, capsys, monkeypatch, argv, says):
    (tmp_path / "a-file").write_text("x")
    names = {"file": tmp_path / "a-file", "folder": tmp_path}
    monkeypatch.setattr(doctor, "run", lambda *a, **k: pytest.fail("checked before refusing"))
    with pytest.raises(SystemExit) as exit_code:
        doctor.main([a.format(**names) for a in argv])
    err = capsys.readouterr().err.strip()
    assert exit_code.value.code == 2 and "\n" not in err and err.startswith(says.format(**names)), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_settings_a_gpu_cannot_run_are_reported_and_fixed_in_the_recommendations():
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["diffusion"].update(fp8=True, attention="flash", dtype="bfloat16")
    report = doctor.Report(100)
    dif = doctor.settings_checks(report, data, "params.yaml", torch.device("cuda", 0), TURING).diffusion
    no = [c for c in report.checks if c["status"] == "no"]
    assert [c["name"] for c in no] == ["diffusion.fp8", "diffusion.attention", "diffusion.dtype"]
    assert all("\n" not in c["detail"] for c in no)
    assert (dif.fp8, dif.attention, dif.dtype) == (False, "auto", "float16")
    assert report.recommend["diffusion"] == {"fp8": False, "attention": "auto", "dtype": "float16"}
    precision = [c for c in report.checks if c["name"] == "train.precision"][0]
    assert precision["status"] == "info" and "fp16 autocast with a GradScaler" in precision["detail"]
    yaml_text = doctor.recommended_yaml(report)
    assert "  fp8: false" in yaml_text and "  dtype: float16" in yaml_text


def test_an_exception_in_a_check_is_its_line_not_a_traceback():
    report = doctor.Report(10)
    with doctor.attempt(report, "generation", "x"):
        raise RuntimeError("No available kernel. Aborting execution.\nsecond line")
    assert (report.checks[-1]["status"], report.checks[-1]["detail"]) == ("no", "RuntimeError: No available kernel. Aborting execution.")
