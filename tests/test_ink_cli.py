"""``organseg ink``: synth -> train -> resume -> infer -> evaluate through the real command, on tiny fragments."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from organseg.cli import main
from organseg.errors import ConfigError
from organseg.ink.config import ink_config_from_dict, load_ink_config

TINY = """
task: ink
data: {z_start: 24, z_stop: 40}
model: {stem_channels: 2, features: [4, 4, 8, 8, 16, 4]}
train: {tile: 32, stride: 16, batch_size: 2, epochs: 1, steps_per_epoch: 2, val_every: 1}
infer: {tta: flip, min_component_px: 4, batch_size: 8, band_rows: 1}
"""


@pytest.fixture
def ink(capsys: pytest.CaptureFixture):
    """Run ``organseg ink ...`` in this process (the real entry point, without paying torch's import per call)."""

    def run(*args: str) -> subprocess.CompletedProcess:
        code = 0
        try:
            main(["ink", *args])
        except SystemExit as err:
            code = int(err.code or 0)
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

    return run


def test_shipped_configs_load_and_unknown_keys_are_refused() -> None:
    assert load_ink_config("ink").depth == 32 and load_ink_config("ink-demo").train.tile == 64
    with pytest.raises(ConfigError, match="train.tiles: unknown key"):
        ink_config_from_dict({"train": {"tiles": 3}})
    with pytest.raises(ConfigError, match="data.z_start"):
        ink_config_from_dict({"data": {"z_start": 40, "z_stop": 30}})


def test_synth_train_resume_infer_evaluate(tmp_path: Path, ink) -> None:
    (tmp_path / "tiny.yaml").write_text(TINY)
    done = ink(
        "synth", "--out", str(tmp_path / "train"), "--n", "2", "--size", "64x96", "--difficulty", "easy"
    )
    assert done.returncode == 0, done.stderr
    done = ink(
        "train",
        "--config",
        str(tmp_path / "tiny.yaml"),
        "--data",
        str(tmp_path / "train"),
        "--run",
        str(tmp_path / "run"),
        "--device",
        "cpu",
    )
    assert done.returncode == 0, done.stderr
    assert "held-out F0.5" in done.stdout
    run = tmp_path / "run"
    assert json.loads((run / "run.json").read_text())["task"] == "ink"
    for k in (0, 1):
        assert (run / f"fold_{k}" / "checkpoint_best.pt").is_file() and (
            run / f"fold_{k}" / "curves.png"
        ).is_file()
    ckpt = torch.load(run / "fold_0" / "checkpoint_best.pt", weights_only=True)
    assert 0 < ckpt["threshold"] < 1 and ckpt["task"] == "ink"
    # resume: two more epochs continue from epoch 1 of the same folds
    done = ink(
        "train",
        "--config",
        str(tmp_path / "tiny.yaml"),
        "--data",
        str(tmp_path / "train"),
        "--run",
        str(run),
        "--resume",
        "--epochs",
        "2",
        "--fold",
        "0",
    )
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader((run / "fold_0" / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    # a test fragment (no labels), predicted by the 2-fold ensemble
    done = ink(
        "synth",
        "--out",
        str(tmp_path / "test"),
        "--n",
        "1",
        "--seed",
        "9",
        "--size",
        "64x96",
        "--difficulty",
        "easy",
        "--no-labels",
    )
    assert done.returncode == 0, done.stderr
    sub = tmp_path / "sub.csv"
    done = ink(
        "infer",
        "--input",
        str(tmp_path / "test"),
        "--model",
        str(run),
        "--out",
        str(tmp_path / "pred"),
        "--submission",
        str(sub),
        "--probabilities",
    )
    assert done.returncode == 0, done.stderr
    pred = np.asarray(Image.open(tmp_path / "pred" / "1.png"))
    mask = np.asarray(Image.open(tmp_path / "test" / "1" / "mask.png")) > 0
    assert pred.shape == (64, 96) and not pred[~mask].any()
    lines = sub.read_text().splitlines()
    assert lines[0] == "Id,Predicted" and lines[1].startswith("1,") and len(lines[1]) > 2
    # outputs are not replaced without --overwrite
    again = ink(
        "infer",
        "--input",
        str(tmp_path / "test"),
        "--model",
        str(run),
        "--out",
        str(tmp_path / "pred"),
        "--submission",
        str(sub),
    )
    assert again.returncode != 0 and "already exists" in again.stderr
    # the scorer: a submission against the labels of the training fragments (2 of them)
    done = ink(
        "infer",
        "--input",
        str(tmp_path / "train"),
        "--model",
        str(run / "fold_0" / "checkpoint_best.pt"),
        "--out",
        str(tmp_path / "p2"),
        "--submission",
        str(tmp_path / "s2.csv"),
        "--tta",
        "none",
    )
    assert done.returncode == 0, done.stderr
    done = ink(
        "evaluate",
        "--pred",
        str(tmp_path / "s2.csv"),
        "--labels",
        str(tmp_path / "train"),
        "--out",
        str(tmp_path / "scores.json"),
    )
    assert done.returncode == 0, done.stderr
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert set(scores["fragments"]) == {"1", "2"} and 0 <= scores["pooled"]["fbeta"] <= 1
    by_png = ink("evaluate", "--pred", str(tmp_path / "p2"), "--labels", str(tmp_path / "train"))
    assert by_png.returncode == 0 and f"{scores['pooled']['fbeta']:.4f}" in by_png.stdout
