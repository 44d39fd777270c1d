"""Find and load the model(s) a segmentation runs with.

A model is one of:

- a **run folder** written by ``organseg train`` (it has a ``run.json`` marker): every
  ``fold_<k>/checkpoint_best.pt`` (or ``checkpoint_last.pt`` when a fold has no best yet) is loaded, or
  only the folds asked for; several folds form an ensemble whose probabilities are averaged;
- a **fold folder** holding ``checkpoint_best.pt`` / ``checkpoint_last.pt``;
- a checkpoint file (``.pt``/``.pth``), loaded with ``weights_only=True``;
- a ``.safetensors`` model (weights + config in its metadata, no pickle at all).

Every checkpoint carries its resolved config, so preprocessing is replayed from the model, never from a
YAML file. ``model=None`` picks ``default_model()``: the built-in model in ``organseg/models/``.

Example:
    >>> [(net, cfg)] = load_models("runs/demo", folds=[0])
    >>> cfg.preprocess.spacing_mm
    (3.0, 3.0, 3.0)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from organseg.checkpoint import load_checkpoint, load_safetensors_model, model_from_checkpoint
from organseg.config import Config, LabelMap
from organseg.errors import ModelError
from organseg.training.runfolder import RUN_MARKER, is_run_dir
from organseg.vnet import VNet

logger = logging.getLogger(__name__)

BEST, LAST = "checkpoint_best.pt", "checkpoint_last.pt"
CHECKPOINT_SUFFIXES = (".pt", ".pth")
#: The built-in model: the card VNet (16-128 filters, float16 weights) trained only on synthetic
#: abdomens (see organseg/models/README.md).
BUILTIN_MODEL = Path(__file__).resolve().parent.parent / "models" / "abdomen_synth.safetensors"
HOW_TO_GET_A_MODEL = (
    "train one with `organseg train --config abdomen --data <dataset> --run runs/<name>` "
    "(or `organseg demo` for a small model trained on synthetic phantoms in minutes), "
    "then pass --model runs/<name>"
)


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
        text = json.loads(marker.read_text()).get("created", "")
        return datetime.fromisoformat(str(text)).timestamp()
    except (ValueError, OSError, AttributeError, TypeError):
        return marker.stat().st_mtime


def _fold_checkpoints(run: Path) -> dict[int, Path]:
    """``{fold: checkpoint}`` of a run folder: the best checkpoint of each fold, else its last one."""
    found = {}
    for fold_dir in sorted(run.glob("fold_*")):
        suffix = fold_dir.name[len("fold_") :]
        if not (fold_dir.is_dir() and suffix.isdigit()):
            continue
        for name in (BEST, LAST):
            if (fold_dir / name).is_file():
                found[int(suffix)] = fold_dir / name
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
            available = _fold_checkpoints(path)
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
    """One model and its embedded config, in eval mode on ``device``."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        net, cfg, _extra = load_safetensors_model(path)
    else:
        net, cfg = model_from_checkpoint(load_checkpoint(path), str(path))
    return net.to(device).eval(), cfg


def load_models(
    model: str | Path | None = None,
    folds: Sequence[int] | None = None,
    *,
    expected_labels: LabelMap | None = None,
    device: str = "cpu",
) -> list[tuple[VNet, Config]]:
    """Load every ensemble member of ``model`` (see ``resolve_model_files``) and check they fit together.

    Args:
        model: run folder, fold folder, checkpoint or ``.safetensors``; ``None`` for ``default_model()``.
        folds: folds of a run folder (``None``: all).
        expected_labels: the label map the caller needs; a model trained for other labels is a
            ``ModelError`` (``None`` accepts the model's own labels).
        device: where the networks live.

    Raises:
        ModelError: missing/corrupt/unsafe files, a model for another label map, or ensemble members
            whose labels, preprocessing or patch size differ.
    """
    files = resolve_model_files(model, folds)
    loaded = [load_model_file(f, device) for f in files]
    return check_ensemble(loaded, files, expected_labels)


def check_ensemble(
    loaded: list[tuple[VNet, Config]], sources: Sequence[str | Path], expected_labels: LabelMap | None = None
) -> list[tuple[VNet, Config]]:
    """``loaded`` unchanged when every member segments ``expected_labels`` with the same preprocessing."""
    first_cfg = loaded[0][1]
    want = expected_labels if expected_labels is not None else first_cfg.labels
    for (_net, cfg), src in zip(loaded, sources):
        if tuple(cfg.labels.names) != tuple(want.names):
            raise ModelError(
                f"{src}: model segments {', '.join(cfg.labels.names[1:])} (task {cfg.task!r}), "
                f"expected {', '.join(want.names[1:])}: a model for another task"
            )
        if cfg.preprocess != first_cfg.preprocess or cfg.infer_patch_size != first_cfg.infer_patch_size:
            raise ModelError(
                f"{src}: its preprocessing or patch size differs from {sources[0]}; "
                "an ensemble needs members trained with the same preprocessing"
            )
    return loaded


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
        folds = _fold_checkpoints(run)
        task = json.loads((run / RUN_MARKER).read_text()).get("task", "?")
        lines.append(f"run       {run}  task={task}  folds with a checkpoint: {sorted(folds) or 'none'}")
    if not runs:
        lines.append(f"run       none under {runs_dir} ({HOW_TO_GET_A_MODEL})")
    return lines
