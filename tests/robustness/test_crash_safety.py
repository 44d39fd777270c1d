"""Crashes never leave a half-written output: SIGKILL mid-epoch, mid-mask, mid-video; a disk that fills up.

The kill tests run the real ``organseg`` in a child process and SIGKILL it while it works; ``tests/
test_train.py`` checks the exactness of resume through the API, here the whole round trip goes through the
CLI (``organseg train`` killed, then ``organseg train --resume``).
"""

from __future__ import annotations

import csv
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import organseg.io.writers

from .conftest import (
    EXIT,
    assert_one_error_line,
    cli_env,
    run_cli,
    run_subprocess,
    snapshot,
    temp_files,
)

#: ``organseg train --config demo`` shrunk with --set to seconds per epoch on a busy CPU.
TINY_TRAIN = [
    "--set", "model.filters=[4,8]",
    "--set", "model.bottleneck=8",
    "--set", "preprocess.spacing_mm=[4,4,4]",
    "--set", "preprocess.margin_mm=4",
    "--set", "train.patch_size=[16,16,16]",
    "--set", "train.batch_size=2",
    "--set", "train.samples_per_volume=2",
    "--set", "train.steps_per_epoch=3",
    "--set", "train.warmup_epochs=0",
    "--set", "train.val_every=1000",
    "--set", "train.folds=2",
    "--set", "infer.overlap=0.0",
]  # fmt: skip


def _start(args: list[object], cwd: Path, code: str | None = None) -> subprocess.Popen:
    """``organseg <args>`` (or ``python -c code <args>``) in its own session, so its children die with it."""
    head = [sys.executable, "-c", code] if code else [sys.executable, "-m", "organseg.cli"]
    return subprocess.Popen(
        [*head, *map(str, args)],
        cwd=cwd,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        encoding="utf-8",
        errors="replace",  # not the locale: reading DICOM (GDCM) sets the "C" locale here
        start_new_session=True,
    )


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"organseg ended (exit {proc.returncode}) before the kill:\n{proc.stderr.read()}")
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the process to get to work")
        time.sleep(0.02)


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the organseg process (as the OOM killer would), then its helpers (ffmpeg)."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.stderr.close()


def _epochs(run: Path) -> list[int]:
    with (run / "fold_0" / "metrics.csv").open() as fh:
        return [int(row["epoch"]) for row in csv.DictReader(fh)]


# --------------------------------------------------------------------------------------- train


def test_train_killed_mid_epoch_resumes_losing_only_that_epoch(assets, tmp_path):
    import torch

    from organseg.checkpoint import load_checkpoint

    run = tmp_path / "run"
    last = run / "fold_0" / "checkpoint_last.pt"
    args = ["train", "--config", "demo", "--data", assets / "dataset", "--run", run, "--fold", 0]
    proc = _start([*args, "--device", "cpu", "--epochs", 200, *TINY_TRAIN], tmp_path)
    try:
        _wait_for(last.exists, proc)  # epoch 1 is saved; epoch 2 (or later) is under way
        time.sleep(0.15)
    finally:
        _kill(proc)
    saved = load_checkpoint(last)  # a kill never leaves a torn checkpoint: writes are atomic
    k, steps_per_epoch = saved["epoch"], 3
    assert k >= 1 and saved["step"] == k * steps_per_epoch and not saved["finished"]
    assert _epochs(run)[:k] == list(range(1, k + 1))  # a row for epoch k+1 may exist: resume drops it

    result = run_subprocess("train", "--resume", run, "--epochs", k + 1, "--device", "cpu", cwd=tmp_path)
    assert result.code == 0, result.stderr
    resumed = load_checkpoint(last)
    assert resumed["epoch"] == k + 1 and resumed["finished"]
    assert resumed["step"] == (k + 1) * steps_per_epoch  # the killed epoch is redone once, nothing else
    assert _epochs(run) == list(range(1, k + 2))  # no epoch missing or repeated
    assert f"resumed from {last} at epoch {k}" in (run / "fold_0" / "train.log").read_text()
    assert not any(torch.equal(resumed["model"][n], saved["model"][n]) for n in saved["model"] if "conv" in n)


# --------------------------------------------------------------------------------------- infer

#: Write a partial temp file, then die by SIGKILL: a kill in the middle of saving the mask (masks are
#: deflated by ``fastgzip.write_gzip`` into the open temp file; other maps go through ``nib.save``).
_DIE_WHILE_SAVING = """
import os, signal, sys
import nibabel as nib
import organseg.io.writers as writers

def dying_write(data, fh, *args, **kwargs):
    fh.write(b"\\x1f\\x8b partial mask")
    fh.flush()
    os.fsync(fh.fileno())
    os.kill(os.getpid(), signal.SIGKILL)

def dying_save(img, filename, *args, **kwargs):
    with open(filename, "wb") as fh:
        dying_write(None, fh)

writers.write_gzip = dying_write
nib.save = dying_save
os.cpu_count = lambda: 1  # see conftest.one_inference_thread
from organseg.cli import main
main(sys.argv[1:])
"""


def test_infer_killed_while_writing_leaves_the_earlier_mask_intact(assets, tmp_path, out_dir, capsys):
    mask = out_dir / "mask.nii.gz"
    mask.write_bytes((assets / "mask.nii.gz").read_bytes())  # an earlier result, replaced with --overwrite
    before = mask.read_bytes()
    args = ["infer", "--input", assets / "ct.nii.gz", "--output", mask, "--model", assets / "model.pt"]
    proc = _start([*args, "--device", "cpu", "--overwrite"], tmp_path, code=_DIE_WHILE_SAVING)
    proc.wait(timeout=120)
    stderr = proc.stderr.read()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, stderr
    assert mask.read_bytes() == before  # the output path never holds a partial mask
    leftovers = temp_files(out_dir)
    assert [p.read_bytes() for p in leftovers] == [b"\x1f\x8b partial mask"]  # it died mid-write
    assert not (out_dir / "mask.json").exists()  # sidecars come after the mask

    # the next run is not confused by the dead run's temp file
    result = run_cli(capsys, *args, "--device", "cpu", "--overwrite")
    assert result.code == 0, result.stderr
    assert nib.load(mask).shape == nib.load(assets / "ct.nii.gz").shape


def test_infer_on_a_full_disk_fails_cleanly(assets, tmp_path, out_dir, capsys, monkeypatch):
    mask = out_dir / "mask.nii.gz"
    mask.write_bytes((assets / "mask.nii.gz").read_bytes())

    def full_disk_write(data, fh, *args, **kwargs):  # masks: deflated into the open temp file
        fh.write(b"\x1f\x8b partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full_disk(img, filename, *args, **kwargs):  # other maps: nibabel
        Path(filename).write_bytes(b"\x1f\x8b partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(organseg.io.writers, "write_gzip", full_disk_write)
    monkeypatch.setattr(nib, "save", full_disk)
    monkeypatch.chdir(tmp_path)
    before = snapshot(out_dir)
    args = ["infer", "--input", assets / "ct.nii.gz", "--output", mask, "--model", assets / "model.pt"]
    result = run_cli(capsys, *args, "--device", "cpu", "--overwrite")
    assert_one_error_line(result, EXIT["output"], mask, "No space left on device")
    assert snapshot(out_dir) == before  # earlier mask intact, temp file removed


# --------------------------------------------------------------------------------------- render


def test_render_killed_mid_video_leaves_no_partial_video(assets, tmp_path, out_dir):
    video = out_dir / "organs.mp4"
    args = [
        "render",
        "--input",
        assets / "mask.nii.gz",
        "--output",
        video,
        "--frames",
        2000,
        "--size",
        "64x64",
    ]
    proc = _start(args, tmp_path)
    try:
        _wait_for(lambda: any(p.stat().st_size > 0 for p in temp_files(out_dir)), proc)  # frames flowing
    finally:
        _kill(proc)
    assert not video.exists()
    assert len(temp_files(out_dir)) == 1  # the dead run's hidden temp file, never the output name
    assert sorted(p.name for p in out_dir.iterdir() if not p.name.startswith(".")) == ["earlier.txt"]


def test_render_on_a_full_disk_fails_cleanly(assets, tmp_path, out_dir, capsys, monkeypatch):
    import organseg.rendering

    still = out_dir / "organs.png"
    still.write_bytes(b"an earlier picture")

    def full_disk(frame: np.ndarray, path: Path) -> None:
        Path(path).write_bytes(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(organseg.rendering, "_write_png", full_disk)
    monkeypatch.chdir(tmp_path)
    before = snapshot(out_dir)
    args = ["render", "--input", assets / "mask.nii.gz", "--output", still, "--size", "64x64", "--overwrite"]
    result = run_cli(capsys, *args)
    assert_one_error_line(result, EXIT["output"], still, "No space left on device")
    assert snapshot(out_dir) == before
