"""The fixed-slice baseline: ink = (one slice, scaled) above a threshold, both chosen on training fragments.

It is the honesty check of the synthetic data: on real fragments the surface is warped, so no single
slice holds the ink, and a baseline like this stays near chance. If it did well on the synthetic
``realistic`` level, the generator would be too easy. Chance for F0.5 is what "everything is ink"
scores: ``1.25 p / (0.25 p + 1)`` for an ink share ``p`` of the mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from organseg.ink.config import InkConfig
from organseg.ink.data import intensity_scale, scale_tile
from organseg.ink.metrics import ink_scores, threshold_sweep
from organseg.ink.reader import open_fragment


def _slice_and_labels(path: Path, z: int, cfg: InkConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with open_fragment(path, require_labels=True) as frag:
        mask = frag.read_mask()
        scale = intensity_scale(frag, cfg, mask)
        img = np.clip(scale_tile(frag.read_rows(z, z + 1, 0, frag.height)[0], scale), 0, 1)
        return img, frag.read_labels() & mask, mask


def fit_fixed_slice(
    train: list[Path], cfg: InkConfig, slices: range | None = None
) -> tuple[int, float, float]:
    """The (slice, threshold) with the best pooled F0.5 over the training fragments, and that F0.5."""
    best = (0, 0.5, -1.0)
    for z in slices or range(cfg.data.z_start, cfg.data.z_stop):
        data = [_slice_and_labels(p, z, cfg) for p in train]
        img = np.concatenate([d[0][d[2]] for d in data])
        ref = np.concatenate([d[1][d[2]] for d in data])
        t, f = threshold_sweep(img, ref)
        i = int(np.argmax(f))
        if f[i] > best[2]:
            best = (z, float(t[i]), float(f[i]))
    return best


def fixed_slice_scores(train: list[Path], held_out: Path, cfg: InkConfig) -> dict[str, float]:
    """Fit on ``train``, score on ``held_out``: F0.5 etc., the slice and threshold, and chance F0.5."""
    z, t, f_train = fit_fixed_slice(train, cfg)
    img, ref, mask = _slice_and_labels(held_out, z, cfg)
    s = ink_scores((img > t) & mask, ref)
    p = ref[mask].mean() if mask.any() else 0.0
    return {
        **s,
        "slice": z,
        "threshold": t,
        "train_fbeta": f_train,
        "chance_fbeta": float(1.25 * p / (0.25 * p + 1)),
    }
