"""Ink inference: a fold ensemble over fragments -> ink masks (PNG) and an ``Id,Predicted`` submission.

``detect_ink`` is what ``organseg ink infer`` calls. Per fragment: probabilities from
``predict.predict_fragment`` (overlapping gaussian-weighted tiles, TTA, every fold's best
checkpoint averaged), then the threshold (the mean of the folds' validated thresholds unless one is
given), removal of components smaller than ``infer.min_component_px`` (8-connected), and the mask.
Every input is validated before the first output is written; outputs are atomic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from organseg.errors import ModelError, OutputError
from organseg.ink.config import InkConfig
from organseg.ink.model import build_ink_model
from organseg.ink.predict import predict_fragment
from organseg.ink.reader import find_fragments, open_fragment
from organseg.ink.rle import write_submission
from organseg.ink.train import ink_checkpoint
from organseg.io import atomic_path, check_writable


@dataclass
class InkModel:
    """A fold ensemble: networks (eval mode), their config and the threshold to apply."""

    models: list[torch.nn.Module]
    cfg: InkConfig
    threshold: float
    sources: list[Path]


def load_ink_model(
    path: str | Path, folds: list[int] | None = None, device: str | torch.device = "cpu"
) -> InkModel:
    """Load ``checkpoint_best.pt`` of each fold of a run folder (or one ``.pt`` file) as an ensemble."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("fold_*/checkpoint_best.pt"))
        if folds is not None:
            found = [path / f"fold_{k}" / "checkpoint_best.pt" for k in folds]
        if not found:
            raise ModelError(f"{path}: no fold_*/checkpoint_best.pt in this run folder")
    else:
        found = [path]
    models, thresholds, cfg = [], [], None
    for f in found:
        ckpt, c = ink_checkpoint(f)
        if cfg is not None and (c.data != cfg.data or c.model != cfg.model):
            raise ModelError(f"{f}: model or slice window differs from {found[0]} (cannot ensemble)")
        cfg = cfg or c
        net = build_ink_model(c)
        try:
            net.load_state_dict(ckpt["model"])
        except (RuntimeError, KeyError) as err:
            raise ModelError(
                f"{f}: weights do not fit the embedded config ({str(err).splitlines()[0][:160]})"
            ) from None
        models.append(net.to(device).eval())
        thresholds.append(float(ckpt.get("threshold", 0.5)))
    return InkModel(models, cfg, float(np.mean(thresholds)), found)


def postprocess(prob: np.ndarray, mask: np.ndarray, threshold: float, min_component_px: int) -> np.ndarray:
    """``prob > threshold`` inside ``mask``, without 8-connected components under ``min_component_px``."""
    ink = (prob > threshold) & mask
    if min_component_px > 1 and ink.any():
        lab, n = ndimage.label(ink, structure=np.ones((3, 3), bool))
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        keep = sizes >= min_component_px
        keep[0] = False
        ink = keep[lab]
    return ink


def write_png(path: Path, image: np.ndarray, overwrite: bool) -> None:
    from PIL import Image

    with atomic_path(path, overwrite=overwrite) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def detect_ink(
    input_path: str | Path,
    model: str | Path,
    out_dir: str | Path,
    submission: str | Path | None = None,
    folds: list[int] | None = None,
    tta: str | None = None,
    threshold: float | None = None,
    probabilities: bool = False,
    stride: int | None = None,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, dict]:
    """Predict ink for a fragment folder or a folder of fragments (e.g. ``test/``).

    Writes ``<out_dir>/<id>.png`` (ink 255, else 0), optionally ``<id>_prob.png`` (probability x 255),
    and ``submission`` (``Id,Predicted`` RLE CSV, one row per fragment). ``stride`` (pixels) overrides
    the config's tile stride (smaller: more overlap, slower). Returns per-fragment info
    (threshold, ink pixels, paths).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: is a file, expected a folder")
    ens = load_ink_model(model, folds, device)
    cfg = ens.cfg
    thr = threshold or cfg.infer.threshold or ens.threshold
    fragments = find_fragments(input_path)
    for p in fragments:  # all inputs checked before anything is written
        with open_fragment(p) as frag:
            frag.read_mask()
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = [out_dir / f"{p.name}.png" for p in fragments]
    if submission is not None:
        targets.append(Path(submission))
    for t in targets:
        check_writable(t, overwrite=overwrite)
    masks, info = {}, {}
    for p in fragments:
        with open_fragment(p) as frag:
            mask = frag.read_mask()
            prob = predict_fragment(
                frag, ens.models, cfg, mask, tta=tta, stride=stride, device=device, progress=progress
            )
        ink = postprocess(prob, mask, thr, cfg.infer.min_component_px)
        write_png(out_dir / f"{p.name}.png", (ink * 255).astype(np.uint8), overwrite)
        if probabilities:
            write_png(out_dir / f"{p.name}_prob.png", np.round(prob * 255).astype(np.uint8), overwrite)
        masks[p.name] = ink
        info[p.name] = {
            "threshold": thr,
            "ink_px": int(ink.sum()),
            "mask_px": int(mask.sum()),
            "png": str(out_dir / f"{p.name}.png"),
        }
        del prob
    if submission is not None:
        write_submission(submission, masks, overwrite=overwrite)
    return info
