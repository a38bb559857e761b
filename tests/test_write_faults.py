"""A fault on a write is one line naming the path and the cause, exit 2, nothing half-written, no traceback,
and every stage finds an unwritable output folder before its expensive work.

The tests may run as root, whom no chmod stops: a folder that cannot be made is one under a regular file,
and read-only, full or size-limited file systems are simulated by making the system call raise the OSError
the kernel gives. Where this process may mount a tmpfs, the same faults are also met for real.
"""
from __future__ import annotations

import errno
import importlib
import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from diffaug.errors import UserError, exit_on_error
from diffaug.formats import synthetic as storage
from diffaug.formats.classifier import ImageClassifier, save_trained
from diffaug.io import atomic_path, ensure_writable_dir, write_bytes_atomic

REPO = Path(__file__).resolve().parents[1]
CAUSES = {errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on the device",
          errno.EFBIG: "file too large for this file system", errno.EACCES: "permission denied"}


def failing(code: int):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return fail


def one_line_exit_2(capsys, run, progress_before: bool = False) -> str:
    """The error line of `run`, which must exit 2 with it alone (after its progress lines, if it had work to do)."""
    with pytest.raises(SystemExit) as exit_info:
        run()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    last = err.splitlines()[-1] if err else ""
    assert err.endswith("\n") and last.startswith("error: ") and "Traceback" not in err, err
    assert progress_before or err.count("\n") == 1, err
    return last


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*"))


# ----------------------------------------------------------------------------- the probe
def test_a_folder_that_can_be_written_is_probed_without_a_trace(tmp_path):
    ensure_writable_dir(tmp_path / "a" / "b" / "c", "--out")
    assert leftovers(tmp_path) == [], "the probe leaves neither the folders it made nor its probe file"
    ensure_writable_dir(tmp_path / "a" / "b", "--out", keep=True)
    assert leftovers(tmp_path) == ["a", "b"]


@pytest.mark.parametrize("case", ["a file", "under a file"])
def test_a_file_where_the_folder_should_be(tmp_path, case):
    blocker = tmp_path / "taken"
    blocker.write_text("keep me")
    out = blocker if case == "a file" else blocker / "sub" / "out"
    with pytest.raises(UserError) as e:
        ensure_writable_dir(out, "--out")
    expected = "it is a file, not a folder" if case == "a file" else f"{blocker} is a file, not a folder"
    assert str(e.value) == f"--out: {out}: cannot write: {expected}"
    assert leftovers(tmp_path) == ["taken"] and blocker.read_text() == "keep me"


@pytest.mark.parametrize("code", sorted(CAUSES))
def test_a_folder_that_refuses_files(tmp_path, monkeypatch, code):
    monkeypatch.setattr(tempfile, "TemporaryFile", failing(code))
    with pytest.raises(UserError) as e:
        ensure_writable_dir(tmp_path / "out", "--out")
    assert str(e.value) == f"--out: {tmp_path / 'out'}: cannot write: {CAUSES[code]}"
    assert leftovers(tmp_path) == []


def test_a_parent_that_cannot_be_created(tmp_path, monkeypatch):
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):  # a read-only file system under tmp_path
        if str(path).startswith(str(tmp_path)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    with pytest.raises(UserError) as e:
        ensure_writable_dir(tmp_path / "new" / "out", "--out")
    assert str(e.value).startswith(f"--out: {tmp_path / 'new' / 'out'}: cannot write: read-only file system")
    assert leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- atomic writes
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG])
def test_a_write_cut_short_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, code):
    target = tmp_path / "result.json"
    target.write_text("old")
    with pytest.raises(UserError) as e, atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise OSError(code, os.strerror(code))
    assert str(e.value) == f"{target}: cannot write: {CAUSES[code]}"
    assert leftovers(tmp_path) == ["result.json"] and target.read_text() == "old"


def test_an_atomic_write_under_a_file_names_the_file_in_the_way(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(UserError) as e:
        write_bytes_atomic(tmp_path / "f" / "x.json", b"{}")
    assert str(e.value) == f"{tmp_path / 'f' / 'x.json'}: cannot write: {tmp_path / 'f'} is a file, not a folder"


def test_any_oserror_reaching_a_stage_entry_point_is_one_line(capsys):
    @exit_on_error
    def stage():  # e.g. a library writing its own log file
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/logs/run.log")

    assert one_line_exit_2(capsys, stage) == "error: /logs/run.log: permission denied"


# ----------------------------------------------------------------------------- real file systems, where allowed
@pytest.fixture
def small_tmpfs(tmp_path):
    """A 64 KiB tmpfs (needs the right to mount; skipped elsewhere)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=True)  # lazy: a writer torch left open must not fail the test


def test_a_classifier_on_a_full_disk_is_one_line_and_leaves_nothing(small_tmpfs):
    net = torch.nn.Linear(4096, 64)  # 1 MiB of weights on a 64 KiB disk
    model = ImageClassifier(net, torch.zeros(3), torch.ones(3))
    meta = {"model": "linear", "variant": "cifar", "num_classes": 64, "classes": [], "epochs": 1, "settings": {}}
    with pytest.raises(UserError) as e:  # torch.save to a path would raise an opaque RuntimeError here
        save_trained(small_tmpfs / "seed-0.pt", model, meta)
    assert str(e.value) == f"{small_tmpfs / 'seed-0.pt'}: cannot write: no space left on the device"
    assert leftovers(small_tmpfs) == []


def test_a_read_only_file_system_is_found_by_the_probe(small_tmpfs):
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    with pytest.raises(UserError) as e:
        ensure_writable_dir(small_tmpfs / "out", "--out")
    assert str(e.value) == f"--out: {small_tmpfs / 'out'}: cannot write: read-only file system"


# ----------------------------------------------------------------------------- every stage, before its work
def _export_set(tmp: Path) -> str:
    (tmp / "set").mkdir()
    (tmp / "set" / storage.MANIFEST).write_text("{}")
    return str(tmp / "set")


# stage module, its arguments (OUT: the unwritable folder), the function that does its expensive work
STAGES = {
    "prepare": ("diffaug.prepare", lambda t: ["--out", "OUT", "--raw", str(t / "raw")], "make_splits"),
    "generate": ("diffaug.generate.__main__", lambda t: ["syn1", "--out", "OUT", "--classes", str(t / "c.json")], "plan_set"),
    "mixtures": ("diffaug.mixtures", lambda t: ["--out", "OUT"], "build"),
    "filtering": ("diffaug.filtering", lambda t: ["--mix", "orig100", "--classifier", "c.pt", "--out", "OUT"], "filter_mixture"),
    "train": ("diffaug.train.stage", lambda t: ["--model", "resnet18", "--mix", "orig100", "--mixture", "m.npz", "--prepared",
                                                "p", "--synthetic", "s", "--out", "OUT", "--metrics", str(t / "metrics"),
                                                "--checkpoints", str(t / "ckpt")], "load_training_data"),
    "evaluate": ("diffaug.evaluate", lambda t: ["--models", "models", "--out", "OUT", "--summary", str(t / "s.json")], "evaluate"),
    "export": ("diffaug.export", lambda t: [_export_set(t), "--format", "imagefolder", "--out", "OUT/export"], "export"),
}


@pytest.mark.parametrize("fault", ["--out under a file", "--out is a file", "read-only"])
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_refuses_an_unwritable_output_before_its_work(stage, fault, tmp_path, monkeypatch, capsys):
    module_name, argv, work = STAGES[stage]
    module = importlib.import_module(module_name)
    if stage == "export":  # its folder is made beside --out; the probe comes before any shard is read
        monkeypatch.setattr(storage, "read_manifest", failing(errno.EIO))
    else:
        monkeypatch.setattr(module, work, failing(errno.EIO))  # reaching the work would be a different line
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    out, (probed, cause) = {
        "--out under a file": (blocker / "out", (blocker / "out", f"{blocker} is a file, not a folder")),
        "--out is a file": (blocker, (blocker, "it is a file, not a folder")),
        "read-only": (tmp_path / "ro", (tmp_path / "ro", "read-only file system")),
    }[fault]
    if fault == "read-only":
        monkeypatch.setattr(tempfile, "TemporaryFile", failing(errno.EROFS))
    args = [a.replace("OUT", str(out)) for a in argv(tmp_path)]  # export: --out OUT/export, whose folder OUT is probed
    args += ["--params", str(REPO / "params.yaml")] if stage != "export" else []
    err = one_line_exit_2(capsys, lambda: module.main(args))
    assert err == f"error: --out: {probed}: cannot write: {cause}"
    assert leftovers(tmp_path) == sorted(["blocker", *(["set", storage.MANIFEST] if stage == "export" else [])])


# ----------------------------------------------------------------------------- a full disk mid-generation
@pytest.mark.usefixtures("one_thread")
def test_a_disk_full_after_the_first_shard_is_one_line_and_the_shard_stays_whole(tiny_sd, tmp_path, monkeypatch, capsys):
    from diffaug.generate.__main__ import main
    from test_generate import cli_args, write_inputs

    params, classes = write_inputs(tmp_path / "in", tiny_sd, synthetic={"images_per_class": 2})
    out = tmp_path / "out"
    real_write_array, calls = np.lib.format.write_array, []

    def write_array(f, array, *args, **kwargs):  # the disk fills up while the second shard is written
        calls.append(1)
        if len(calls) > len(storage._ARRAYS) + 1:  # shard 0's arrays and its meta went through
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write_array(f, array, *args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", write_array)
    err = one_line_exit_2(capsys, lambda: main(cli_args(params, classes, out)), progress_before=True)
    assert err == f"error: {out / storage.shard_name(1)}: cannot write: no space left on the device"
    assert leftovers(out) == [storage.shard_name(0)], "no temp file, no half shard, no manifest"
    monkeypatch.undo()
    assert main(cli_args(params, classes, out)) == 0  # once there is room: resumed from the whole shard
    assert json.loads((out / storage.MANIFEST).read_text())["num_images"] == 6


@pytest.mark.usefixtures("one_thread")
def test_a_disk_full_when_the_weights_are_saved_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    import yaml

    import diffaug.train.stage as stage

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(device="cpu", seeds=[0])
    params["train"]["recipes"]["default"].update(epochs=1, batch_size=4, warmup_epochs=0)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    images, labels = np.zeros((8, 8, 8, 3), np.uint8), np.arange(8) % 3
    monkeypatch.setattr(stage, "load_mixture", lambda *paths: (images, labels, ["a", "b", "c"]))
    monkeypatch.setattr(stage, "load_validation", lambda *args: (images[:0], labels[:0]))
    (tmp_path / "mix.npz").write_bytes(b"stands for the mixture's index file")
    real_write_bytes, out = Path.write_bytes, tmp_path / "out"

    def write_bytes(path: Path, data) -> int:  # the disk fills up halfway through the final weights
        if path.parent == out and path.name.startswith(".seed-0.pt."):
            real_write_bytes(path, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write_bytes(path, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    argv = ["--params", str(tmp_path / "params.yaml"), "--model", "resnet18", "--mix", "orig100", "--mixture",
            str(tmp_path / "mix.npz"), "--prepared", "p", "--synthetic", "s", "--out", str(out),
            "--metrics", str(tmp_path / "metrics"), "--checkpoints", str(tmp_path / "ckpt")]
    err = one_line_exit_2(capsys, lambda: stage.main(argv), progress_before=True)
    assert err == f"error: {out / 'seed-0.pt'}: cannot write: no space left on the device"
    assert not out.exists() or leftovers(out) == [], "no weights, no temp file, no train.json"
    assert leftovers(tmp_path / "ckpt") == ["seed-0.pt"], "the last checkpoint stays: a rerun resumes from it"
