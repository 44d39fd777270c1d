"""``organseg ink ...``: the ink task's click commands, in one module registered by ``organseg/cli.py``.

Why a command group of its own rather than ``organseg --task ink``: the ink commands take other
inputs (fragment folders, not CT volumes), other outputs (PNG + RLE submission, not NIfTI) and
another config schema, so sharing the organ commands' options would mean options that only apply
to one task. The group keeps ``organseg infer`` unchanged and makes ``organseg ink --help`` list
exactly what works for ink. Commands only parse options and call the ink API; errors are
``OrgansegError`` lines printed by ``organseg.cli.main``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from organseg.errors import ConfigError


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size: expected ROWSxCOLUMNS like 512x384, got {text!r}") from None
    if h < 64 or w < 64:
        raise ConfigError(f"--size: each side must be at least 64 pixels, got {text!r}")
    return h, w


def _config(name: str, epochs: int | None = None, overrides: tuple[str, ...] = ()):
    import yaml

    from organseg.ink.config import load_ink_config, replace_ink

    cfg = load_ink_config(name)
    if epochs is not None:
        cfg = replace_ink(cfg, "train.epochs", epochs)
    for pair in overrides:
        if "=" not in pair:
            raise ConfigError(f"--set: expected KEY=VALUE like train.epochs=5, got {pair!r}")
        key, value = pair.split("=", 1)
        cfg = replace_ink(cfg, key.strip(), yaml.safe_load(value))
    return cfg


def _device(device: str | None):
    import torch

    from organseg.runtime import cpu_threads, resolve_device

    dev = resolve_device(device)
    if dev.type == "cpu":
        torch.set_num_threads(cpu_threads())
    return dev


def _folds(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(f) for f in text.split(",")]
    except ValueError:
        raise ConfigError(f"--folds: expected comma-separated fold numbers, got {text!r}") from None


@click.group(epilog="\b\nExample:\n  organseg ink demo --out ink-demo")
def ink() -> None:
    """Ink detection on papyrus surface volumes (Vesuvius Challenge layout)."""


@ink.command(epilog="\b\nExample:\n  organseg ink synth --out data/ink --n 3 --difficulty realistic")
@click.option(
    "--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Folder for fragments 1..N."
)
@click.option("--n", default=3, show_default=True, type=click.IntRange(1, 1000), help="Fragments.")
@click.option("--seed", default=0, show_default=True, type=int, help="Same seed, same fragments.")
@click.option("--size", default="512x384", show_default=True, help="ROWSxCOLUMNS of each slice.")
@click.option(
    "--difficulty", type=click.Choice(["easy", "realistic"]), default="realistic", show_default=True
)
@click.option("--no-labels", is_flag=True, help="Leave out inklabels.png (test fragments).")
@click.option("--compress", is_flag=True, help="Write zlib-compressed TIFFs.")
@click.option("--overwrite", is_flag=True, help="Replace existing fragment folders.")
def synth(
    out_dir: Path,
    n: int,
    seed: int,
    size: str,
    difficulty: str,
    no_labels: bool,
    compress: bool,
    overwrite: bool,
) -> None:
    """Write synthetic papyrus fragments (65 16-bit slices, mask, ink labels, IR)."""
    from organseg.ink.synth import synthesize_fragments

    h, w = _size(size)
    paths = synthesize_fragments(out_dir, n, seed, h, w, difficulty, not no_labels, compress, overwrite)
    click.echo(f"wrote {len(paths)} fragments to {out_dir}")


@ink.command(epilog="\b\nExample:\n  organseg ink train --config ink-demo --data data/ink --run runs/ink")
@click.option(
    "--config", "config_name", default="ink", show_default=True, help="Ink config name or YAML path."
)
@click.option(
    "--data", "data_dir", required=True, type=click.Path(path_type=Path), help="Labelled fragments."
)
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path), help="Run folder.")
@click.option("--fold", "fold_list", type=int, multiple=True, help="Train only this fold (repeatable).")
@click.option("--resume", is_flag=True, help="Continue the run from its last checkpoints.")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Override train.epochs.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config field.")
@click.option("--device", default=None, help="cpu, cuda or cuda:N.")
def train(
    config_name: str,
    data_dir: Path,
    run_dir: Path,
    fold_list: tuple[int, ...],
    resume: bool,
    epochs: int | None,
    overrides: tuple[str, ...],
    device: str | None,
) -> None:
    """Train leave-one-fragment-out folds (fold k validates the k-th fragment)."""
    from organseg.ink.train import train_ink

    cfg = _config(config_name, epochs, overrides)
    run = train_ink(cfg, data_dir, run_dir, list(fold_list) or None, resume, _device(device))
    summary = json.loads((run / "cv_summary.json").read_text(encoding="utf-8"))
    click.echo(
        f"held-out F0.5 {summary['mean_val_fbeta']:.3f} (mean of {len(summary['folds'])} folds); run: {run}"
    )


@ink.command(
    epilog="\b\nExample:\n  organseg ink infer --input data/test --model runs/ink --out pred --submission submission.csv"
)
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(path_type=Path),
    help="A fragment or a folder of them.",
)
@click.option("--model", required=True, type=click.Path(path_type=Path), help="Run folder or checkpoint .pt.")
@click.option(
    "--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Folder for <id>.png masks."
)
@click.option(
    "--submission", type=click.Path(path_type=Path), default=None, help="Id,Predicted RLE CSV to write."
)
@click.option("--folds", default=None, help="Folds to ensemble, e.g. 0,1 (default: all).")
@click.option(
    "--tta", type=click.Choice(["none", "flip", "rot90"]), default=None, help="Test-time augmentation."
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    help="Override the validated threshold.",
)
@click.option("--probabilities", is_flag=True, help="Also write <id>_prob.png.")
@click.option(
    "--stride", type=click.IntRange(1), default=None, help="Tile stride in pixels (default: the config's)."
)
@click.option("--device", default=None, help="cpu, cuda or cuda:N.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
def infer(
    input_path: Path,
    model: Path,
    out_dir: Path,
    submission: Path | None,
    folds: str | None,
    tta: str | None,
    threshold: float | None,
    probabilities: bool,
    stride: int | None,
    device: str | None,
    overwrite: bool,
) -> None:
    """Predict ink: tiled, TTA, fold ensemble, validated threshold, small blobs removed."""
    from organseg.ink.infer import detect_ink

    dev = _device(device)
    info = detect_ink(
        input_path,
        model,
        out_dir,
        submission,
        _folds(folds),
        tta,
        threshold,
        probabilities,
        stride,
        dev,
        overwrite,
    )
    for name, i in info.items():
        click.echo(
            f"{name}: {i['ink_px']} ink pixels of {i['mask_px']} (threshold {i['threshold']:.2f}) -> {i['png']}"
        )
    if submission:
        click.echo(f"submission: {submission}")


@ink.command(epilog="\b\nExample:\n  organseg ink evaluate --pred submission.csv --labels data/ink")
@click.option(
    "--pred",
    required=True,
    type=click.Path(path_type=Path),
    help="Ink PNG, folder of <id>.png, or submission CSV.",
)
@click.option(
    "--labels",
    required=True,
    type=click.Path(path_type=Path),
    help="A labelled fragment or a folder of them.",
)
@click.option(
    "--beta", type=click.FloatRange(0, min_open=True), default=0.5, show_default=True, help="F-beta's beta."
)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write the scores as .json.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
def evaluate(pred: Path, labels: Path, beta: float, out: Path | None, overwrite: bool) -> None:
    """F0.5, precision, recall and Dice against inklabels.png (per fragment and pooled)."""
    from organseg.ink.evaluate import evaluate_ink
    from organseg.io import atomic_write_json

    result = evaluate_ink(pred, labels, beta=beta)
    for name, s in result["fragments"].items():
        click.echo(
            f"{name}: F{beta:g} {s['fbeta']:.4f}  precision {s['precision']:.4f}  recall {s['recall']:.4f}  Dice {s['dice']:.4f}"
        )
    p = result["pooled"]
    click.echo(
        f"pooled: F{beta:g} {p['fbeta']:.4f}  precision {p['precision']:.4f}  recall {p['recall']:.4f}  Dice {p['dice']:.4f}"
    )
    if out:
        atomic_write_json(out, result, overwrite=overwrite)


@ink.command(epilog="\b\nExample:\n  organseg ink demo --out ink-demo --difficulty realistic")
@click.option(
    "--out",
    "out_dir",
    default=Path("ink-demo"),
    show_default=True,
    type=click.Path(path_type=Path),
    help="Folder for everything the demo makes.",
)
@click.option(
    "--config", "config_name", default="ink-demo", show_default=True, help="Ink config name or YAML path."
)
@click.option(
    "--difficulty", type=click.Choice(["easy", "realistic"]), default=None, help="Override synth.difficulty."
)
@click.option("--epochs", type=click.IntRange(1), default=None, help="Override train.epochs.")
@click.option("--device", default=None, help="cpu, cuda or cuda:N.")
@click.option("--overwrite", is_flag=True, help="Reuse a non-empty --out folder.")
def demo(
    out_dir: Path,
    config_name: str,
    difficulty: str | None,
    epochs: int | None,
    device: str | None,
    overwrite: bool,
) -> None:
    """Synthesize fragments, train, predict the held-out one, compare with a fixed-slice baseline."""
    from organseg.ink.demo import ink_demo

    cfg = _config(config_name, epochs, () if difficulty is None else (f"synth.difficulty={difficulty}",))
    report = ink_demo(cfg, out_dir, _device(device), overwrite)
    click.echo(
        f"held-out F0.5 {report['model']['fbeta']:.3f} (fixed-slice baseline {report['baseline']['fbeta']:.3f}, chance {report['baseline']['chance_fbeta']:.3f})"
    )
    click.echo(f"picture: {report['picture']}; report: {out_dir / 'report.json'}")
