"""Ink scores: F-beta (beta 0.5, the competition's metric), precision, recall and Dice.

F0.5 weighs precision twice as much as recall: a few confident ink strokes score better than ink
smeared over the papyrus. Scores are over all pixels of the (rows, columns) image; a prediction is
expected to be zero outside the fragment's mask (inference multiplies by it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion(pred: np.ndarray, ref: np.ndarray) -> tuple[int, int, int]:
    """True positives, false positives and false negatives of two bool masks of the same shape."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} differ in shape")
    tp = int(np.count_nonzero(pred & ref))
    return tp, int(np.count_nonzero(pred)) - tp, int(np.count_nonzero(ref)) - tp


def scores_from_counts(tp: int, fp: int, fn: int, beta: float = 0.5) -> dict[str, float]:
    """Precision, recall, Dice and F-beta from counts; all 1.0 when both masks are empty."""
    if tp + fp + fn == 0:
        return {"precision": 1.0, "recall": 1.0, "dice": 1.0, "fbeta": 1.0, "tp": 0, "fp": 0, "fn": 0}
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    b2 = beta * beta
    denom = b2 * precision + recall
    fbeta = (1 + b2) * precision * recall / denom if denom else 0.0
    dice = 2 * tp / (2 * tp + fp + fn)
    return {
        "precision": precision,
        "recall": recall,
        "dice": dice,
        "fbeta": fbeta,
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def ink_scores(pred: np.ndarray, ref: np.ndarray, beta: float = 0.5) -> dict[str, float]:
    """Scores of a bool prediction against bool ink labels (see ``scores_from_counts``)."""
    return scores_from_counts(*confusion(pred, ref), beta=beta)


def threshold_sweep(
    prob: np.ndarray,
    ref: np.ndarray,
    mask: np.ndarray | None = None,
    thresholds: Sequence[float] | None = None,
    beta: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """F-beta of ``prob > t`` for each threshold ``t``, from one histogram pass (no mask per threshold).

    Args:
        prob: ink probabilities in [0, 1], (rows, columns).
        ref: bool ink labels of the same shape.
        mask: pixels that count (the fragment); default all.
        thresholds: default 0.05, 0.06, ..., 0.95.
    Returns:
        ``(thresholds, fbeta)`` arrays. Pixels outside ``mask`` are predicted 0 (as inference does)
        but labelled ink outside it still counts as missed.
    """
    t = np.asarray(thresholds if thresholds is not None else np.round(np.arange(0.05, 0.951, 0.01), 2))
    sel = np.ones(prob.shape, bool) if mask is None else np.asarray(mask, bool)
    p, r = prob[sel], np.asarray(ref, bool)[sel]
    missed_outside = int(np.count_nonzero(np.asarray(ref, bool) & ~sel))
    bins = 1000
    idx = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    pos = np.bincount(idx[r], minlength=bins)
    neg = np.bincount(idx[~r], minlength=bins)
    # pixels with prob > t: bins strictly above floor(t * bins) (t on the bin grid)
    pos_above = np.concatenate((np.cumsum(pos[::-1])[::-1], [0]))
    neg_above = np.concatenate((np.cumsum(neg[::-1])[::-1], [0]))
    cut = np.clip(np.floor(t * bins + 1e-9).astype(np.int64) + 1, 0, bins)
    tp, fp = pos_above[cut], neg_above[cut]
    fn = int(pos.sum()) - tp + missed_outside
    out = np.array([scores_from_counts(int(a), int(b), int(c), beta)["fbeta"] for a, b, c in zip(tp, fp, fn)])
    return t, out


def best_threshold(
    prob: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None, beta: float = 0.5
) -> tuple[float, float]:
    """The threshold with the highest F-beta on validation data, and that F-beta."""
    t, f = threshold_sweep(prob, ref, mask, beta=beta)
    i = int(np.argmax(f))
    return float(t[i]), float(f[i])
