"""The model store: where trained models live on disk and how one is found and loaded.

This module owns the **run-folder layout** that ``organseg train`` writes and ``organseg segment`` reads,
so both sides agree on one set of names (training writes through ``training.runfolder.RunWriter``,
inference reads through ``resolve_model_files``)::

    run_dir/run.json                      marker {"organseg_run": 1, "task", "folds", "created"}
    run_dir/fold_<k>/checkpoint_best.pt   best validation Dice of fold k
    run_dir/fold_<k>/checkpoint_last.pt   end of the last finished epoch (resume point)

A model is one of:

- a **run folder** (it has a ``run.json`` marker): every ``fold_<k>/checkpoint_best.pt`` (or
  ``checkpoint_last.pt`` when a fold has no best yet) is loaded, or only the folds asked for; several folds
  form an ensemble whose probabilities are averaged;
- a **fold folder** holding ``checkpoint_best.pt`` / ``checkpoint_last.pt``;
- a checkpoint file (``.pt``/``.pth``), loaded with ``weights_only=True``;
- a ``.safetensors`` model (weights + config in its metadata, no pickle at all).

``model=None`` picks ``default_model()``: the built-in model in ``organseg/models/``.

Example:
    >>> resolve_model_files("runs/demo", folds=[0])
    [PosixPath('runs/demo/fold_0/checkpoint_best.pt')]
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from organseg.errors import ModelError

if TYPE_CHECKING:
    from organseg.config import Config
    from organseg.vnet import VNet

logger = logging.getLogger(__name__)

#: The file that marks a folder as an organseg run, and the format number it carries.
RUN_MARKER = "run.json"
RUN_FORMAT = 1
#: Checkpoint names inside ``fold_<k>/``: the best validation epoch and the resume point.
BEST, LAST = "checkpoint_best.pt", "checkpoint_last.pt"
CHECKPOINT_SUFFIXES = (".pt", ".pth")
#: The built-in model: the card VNet (16-128 filters, float16 weights) trained only on synthetic
#: abdomens (see organseg/models/README.md).
BUILTIN_MODEL = Path(__file__).resolve().parent / "models" / "abdomen_synth.safetensors"
HOW_TO_GET_A_MODEL = (
    "train one with `organseg train --config abdomen --data <dataset> --run runs/<name>` "
    "(or `organseg demo` for a small model trained on synthetic phantoms in minutes), "
    "then pass --model runs/<name>"
)


def is_run_dir(path: str | Path) -> bool:
    """True when ``path`` holds a ``run.json`` marker written by organseg."""
    marker = Path(path) / RUN_MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("organseg_run") == RUN_FORMAT
    except (json.JSONDecodeError, OSError, AttributeError):
        return False


def fold_dir(run_dir: str | Path, fold: int) -> Path:
    """The folder of fold ``fold`` inside a run folder (``run_dir/fold_<k>``)."""
    return Path(run_dir) / f"fold_{fold}"


def default_model() -> Path:
    """The model used when none is given: the built-in model shipped inside the package.

    It was trained only on organseg's synthetic abdomens (``configs/abdomen-synth.yaml``) and is
    loaded from safetensors, with no pickle; see ``organseg/models/README.md``. This is the one place
    that decides the default.

    Raises:
        ModelError: the file is missing from this installation; the message says how to get a model.
    """
    if not BUILTIN_MODEL.is_file():
        raise ModelError(
            f"{BUILTIN_MODEL}: the built-in model is missing from this installation; {HOW_TO_GET_A_MODEL}"
        )
    logger.info("no model given: using the built-in model %s", BUILTIN_MODEL)
    return BUILTIN_MODEL


def _created(run: Path) -> float:
    """When a run was created (run.json's ``created``, else the marker's modification time)."""
    marker = run / RUN_MARKER
    try:
        text = json.loads(marker.read_text(encoding="utf-8")).get("created", "")
        return datetime.fromisoformat(str(text)).timestamp()
    except (ValueError, OSError, AttributeError, TypeError):
        return marker.stat().st_mtime


def fold_checkpoints(run: Path) -> dict[int, Path]:
    """``{fold: checkpoint}`` of a run folder: the best checkpoint of each fold, else its last one."""
    found = {}
    for path in sorted(run.glob("fold_*")):
        suffix = path.name[len("fold_") :]
        if not (path.is_dir() and suffix.isdigit()):
            continue
        for name in (BEST, LAST):
            if (path / name).is_file():
                found[int(suffix)] = path / name
                break
    return found


def resolve_model_files(model: str | Path | None, folds: Sequence[int] | None = None) -> list[Path]:
    """The checkpoint / safetensors files that ``model`` names (one per ensemble member).

    Args:
        model: run folder, fold folder, checkpoint, ``.safetensors`` file, or ``None`` (``default_model()``).
        folds: folds of a run folder to use (``None``: all that have a checkpoint).
    """
    path = default_model() if model is None else Path(model)
    if not path.exists():
        raise ModelError(
            f"{path}: model not found (expected a run folder, a .pt checkpoint or a .safetensors file)"
        )
    if path.is_dir():
        if is_run_dir(path):
            available = fold_checkpoints(path)
            if not available:
                raise ModelError(f"{path}: run folder has no checkpoint yet (fold_*/{BEST} or {LAST})")
            if folds is None:
                return [available[k] for k in sorted(available)]
            missing = [k for k in folds if k not in available]
            if missing:
                raise ModelError(
                    f"{path}: no checkpoint for fold(s) {', '.join(map(str, missing))} "
                    f"(available: {', '.join(map(str, sorted(available)))})"
                )
            return [available[k] for k in dict.fromkeys(folds)]
        for name in (BEST, LAST):
            if (path / name).is_file():
                return [path / name]
        raise ModelError(f"{path}: not a model folder (no {RUN_MARKER}, {BEST} or {LAST})")
    if folds is not None and list(folds) != [0]:
        raise ModelError(f"{path}: folds apply to a run folder; a single model file has none")
    if path.suffix.lower() == ".safetensors" or path.suffix.lower() in CHECKPOINT_SUFFIXES:
        return [path]
    raise ModelError(f"{path}: unknown model format (expected a run folder, .pt/.pth or .safetensors)")


def load_model_file(path: str | Path, device: str = "cpu") -> tuple[VNet, Config]:
    """One model and its embedded config, in eval mode on ``device``.

    Every checkpoint carries its resolved config, so preprocessing is replayed from the model, never
    from a YAML file.
    """
    from organseg.checkpoint import load_checkpoint, load_safetensors_model, model_from_checkpoint

    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        net, cfg, _extra = load_safetensors_model(path)
    else:
        net, cfg = model_from_checkpoint(load_checkpoint(path), str(path))
    return net.to(device).eval(), cfg


def list_models(runs_dir: str | Path = "runs") -> list[str]:
    """Lines describing the models available: the built-in model (when shipped) and local runs."""
    runs_dir = Path(runs_dir)
    lines = []
    if BUILTIN_MODEL.is_file():
        lines.append(f"built-in  {BUILTIN_MODEL}  (default when --model is not given)")
    else:
        lines.append(f"built-in  missing: {BUILTIN_MODEL}")
    runs = (
        [r for r in sorted(runs_dir.iterdir()) if r.is_dir() and is_run_dir(r)] if runs_dir.is_dir() else []
    )
    for run in sorted(runs, key=_created, reverse=True):
        folds = fold_checkpoints(run)
        task = json.loads((run / RUN_MARKER).read_text(encoding="utf-8")).get("task", "?")
        lines.append(f"run       {run}  task={task}  folds with a checkpoint: {sorted(folds) or 'none'}")
    if not runs:
        lines.append(f"run       none under {runs_dir} ({HOW_TO_GET_A_MODEL})")
    return lines
