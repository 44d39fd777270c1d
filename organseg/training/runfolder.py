"""The run folder: its marker, splits, per-fold metrics, curves, log and the cross-validation summary.

Every file a training run writes goes through one ``RunWriter``; under distributed training only
rank 0 gets an enabled writer (``RunWriter(run_dir, enabled=is_main)``), the others get one whose
writes do nothing, so the loop itself never asks which rank it is.

Layout (the marker, fold folders and checkpoint names are defined once, in ``organseg.modelstore``)::

    run_dir/run.json          {"organseg_run": 1, "task", "folds", "created"}
    run_dir/config.yaml       resolved config
    run_dir/splits.json       case-level k-fold splits
    run_dir/fold_<k>/checkpoint_last.pt, checkpoint_best.pt, metrics.csv, curves.png, train.log
    run_dir/cv_summary.json   per-organ Dice mean +- sd over folds
"""

from __future__ import annotations

import csv
import io as _io
import json
import math
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from organseg.config import Config, save_config
from organseg.errors import InputError, OutputError
from organseg.io import atomic_path, atomic_write_json, atomic_write_text
from organseg.modelstore import RUN_FORMAT, RUN_MARKER, fold_dir, is_run_dir


def check_run_dir(path: str | Path) -> Path:
    """``path`` if it is a run folder, else ``InputError`` naming it (used by ``--resume``)."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: run folder not found")
    if not is_run_dir(path):
        raise InputError(f"{path}: not an organseg run folder (no valid {RUN_MARKER}); cannot resume it")
    return path


def metric_columns(organs: Sequence[str]) -> list[str]:
    return ["epoch", "lr", "train_loss"] + [f"dice_{o}" for o in organs] + ["dice_mean", "time_s"]


def read_metrics(path: Path) -> list[dict[str, str]]:
    """Rows of a ``metrics.csv`` (empty list when it does not exist)."""
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


class RunWriter:
    """All file output of a training run; with ``enabled=False`` (non-zero ranks) every write is a no-op.

    Args:
        run_dir: the run folder.
        enabled: write files (rank 0) or not.
        echo: also print log lines (through ``tqdm.write`` so progress bars stay intact).
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True, echo: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.echo = echo

    # ------------------------------------------------------------------ run level

    def create(self, cfg: Config, folds: Sequence[int], resume: bool, extra: dict | None = None) -> None:
        """Create the run folder (or refuse a non-empty one) and write ``run.json`` and ``config.yaml``.

        ``extra`` adds keys to ``run.json`` (e.g. the dataset folder, so ``--resume`` finds it).
        """
        if not self.enabled:
            return
        run = self.run_dir
        if resume:
            check_run_dir(run)
        elif run.exists() and any(run.iterdir()):
            what = "a training run" if is_run_dir(run) else "not empty"
            raise OutputError(
                f"{run}: run folder is {what} (pass --resume to continue it, or choose another --run)"
            )
        try:
            run.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"{run}: cannot create the run folder ({err.strerror})") from None
        marker = run / RUN_MARKER
        info = json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else {}
        done = sorted(set(info.get("folds", [])) | set(folds))
        atomic_write_json(
            marker,
            {
                "organseg_run": RUN_FORMAT,
                "task": cfg.task,
                "folds": done,
                "created": info.get("created", datetime.now(timezone.utc).isoformat(timespec="seconds")),
                **(extra or {}),
            },
        )
        save_config(cfg, run / "config.yaml")

    def write_json(self, name: str, data: object) -> None:
        if self.enabled:
            atomic_write_json(self.run_dir / name, data)

    # ------------------------------------------------------------------ fold level

    def fold_dir(self, fold: int) -> Path:
        path = fold_dir(self.run_dir, fold)
        if self.enabled:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def log(self, fold: int, message: str) -> None:
        """Append a timestamped line to ``fold_<k>/train.log`` (append-only by nature, so not atomic)."""
        if self.echo:
            from tqdm import tqdm

            tqdm.write(f"[fold {fold}] {message}")
        if not self.enabled:
            return
        stamp = datetime.now().isoformat(timespec="seconds")
        with (self.fold_dir(fold) / "train.log").open("a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {message}\n")

    def save_checkpoint(self, fold: int, name: str, state: dict) -> Path:
        from organseg.checkpoint import save_checkpoint

        path = fold_dir(self.run_dir, fold) / name
        if self.enabled:
            save_checkpoint(self.fold_dir(fold) / name, state)
        return path

    def write_metrics(self, fold: int, rows: list[dict], organs: Sequence[str]) -> None:
        """Rewrite ``metrics.csv`` atomically with ``rows`` (one per epoch)."""
        if not self.enabled:
            return
        buf = _io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=metric_columns(organs), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(v) for k, v in row.items()})
        atomic_write_text(self.fold_dir(fold) / "metrics.csv", buf.getvalue())

    def plot_curves(self, fold: int, rows: list[dict], cfg: Config) -> None:
        """``curves.png``: training loss and per-organ validation Dice against epoch."""
        if not self.enabled or not rows:
            return
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        fig = Figure(figsize=(10, 4), dpi=100)
        ax_loss, ax_dice = fig.subplots(1, 2)
        epochs = [int(r["epoch"]) for r in rows]
        ax_loss.plot(epochs, [_num(r["train_loss"]) for r in rows], color="black")
        ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
        for organ in cfg.labels.organs:
            pts = [(int(r["epoch"]), _num(r.get(f"dice_{organ}"))) for r in rows]
            pts = [(e, v) for e, v in pts if not math.isnan(v)]
            if pts:
                color = np.asarray(cfg.labels.color_of(organ)) / 255.0
                ax_dice.plot(*zip(*pts, strict=True), marker="o", ms=3, label=organ, color=color)
        ax_dice.set(xlabel="epoch", ylabel="validation Dice", title="Dice", ylim=(0, 1))
        if ax_dice.lines:
            ax_dice.legend(loc="best", fontsize=8)
        for ax in (ax_loss, ax_dice):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.suptitle(f"{cfg.task} fold {fold}")
        fig.tight_layout()
        with atomic_path(self.fold_dir(fold) / "curves.png") as tmp:
            fig.savefig(tmp, format="png")


def write_cv_summary(writer: RunWriter, organs: Sequence[str], per_fold: dict[int, dict[str, float]]) -> dict:
    """``cv_summary.json``: per-organ best-validation Dice over folds (mean, sd, per fold)."""
    summary: dict = {"folds": sorted(per_fold), "organs": {}, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for organ in list(organs) + ["mean"]:
        values = [per_fold[f].get(organ, float("nan")) for f in sorted(per_fold)]
        finite = [v for v in values if v is not None and not math.isnan(v)]
        summary["organs"][organ] = {
            "mean": float(np.mean(finite)) if finite else None,
            "sd": float(np.std(finite, ddof=1)) if len(finite) > 1 else (0.0 if finite else None),
            "per_fold": [None if v is None or math.isnan(v) else float(v) for v in values],
        }
    writer.write_json("cv_summary.json", summary)
    return summary


def _fmt(value: object) -> object:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def _num(text: object) -> float:
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")
