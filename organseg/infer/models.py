"""Load the model(s) a segmentation runs with, and check that ensemble members fit together.

Finding a model (run folder, fold folder, checkpoint, ``.safetensors``, the built-in default) is the
model store's job (``organseg.modelstore``); this module loads every member and checks them.

Example:
    >>> [(net, cfg)] = load_models("runs/demo", folds=[0])
    >>> cfg.preprocess.spacing_mm
    (3.0, 3.0, 3.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from organseg.config import Config, LabelMap
from organseg.errors import ModelError
from organseg.modelstore import load_model_file, resolve_model_files
from organseg.vnet import VNet


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
