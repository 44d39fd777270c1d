"""The real ``organseg`` command: help for every command, and a synth -> evaluate -> export round trip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from organseg.cli import cli, main

COMMANDS = sorted(cli.commands)


def organseg(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "organseg.cli", *args],
        capture_output=True,
        encoding="utf-8",  # the table and progress bars are UTF-8 whatever this process's locale is
        cwd=cwd,
        timeout=300,
    )


def test_every_command_is_listed_and_has_help_with_an_example(capsys: pytest.CaptureFixture) -> None:
    assert {"synth", "train", "infer", "evaluate", "render", "demo", "models", "export"} <= set(COMMANDS)
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([name, "--help"], prog_name="organseg")
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert f"Usage: organseg {name}" in text
        if name != "models":
            assert "Example:" in text and f"organseg {name}" in text.split("Example:")[1]


def test_synth_then_evaluate_a_label_against_itself(tmp_path: Path) -> None:
    done = organseg("synth", "--out", str(tmp_path / "ds"), "--n", "2", "--seed", "3")
    assert done.returncode == 0, done.stderr
    dataset = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    label = tmp_path / "ds" / dataset["training"][1]["label"]
    done = organseg("evaluate", "--pred", str(label), "--ref", str(label), "--out", str(tmp_path / "s.json"))
    assert done.returncode == 0, done.stderr
    scores = json.loads((tmp_path / "s.json").read_text())
    assert {o: scores[o]["dice"] for o in ("liver", "kidney_right", "kidney_left", "spleen")} == {
        "liver": 1.0,
        "kidney_right": 1.0,
        "kidney_left": 1.0,
        "spleen": 1.0,
    }
    assert "liver" in done.stdout  # the table on screen


def test_set_overrides_are_validated_like_yaml(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", "demo", "--set", "train.epochs=many", "--dry-run"])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("organseg: error:") and "train.epochs" in err[-1]
    with pytest.raises(SystemExit):
        main(["train", "--config", "demo", "--set", "no_equals_sign", "--dry-run"])
    assert "KEY=VALUE" in capsys.readouterr().err


def test_dry_run_reports_model_size(capsys: pytest.CaptureFixture) -> None:
    main(["train", "--config", "abdomen", "--dry-run"])
    out = capsys.readouterr().out
    assert "4306021" in out.replace(",", "")  # the design card's VNet: 4.3 M parameters


def test_models_lists_the_builtin_model(tmp_path: Path) -> None:
    done = organseg("models", "--runs", str(tmp_path / "none"))
    assert done.returncode == 0, done.stderr
    assert "built-in" in done.stdout and "abdomen_synth.safetensors" in done.stdout
