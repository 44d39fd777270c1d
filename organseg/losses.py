"""The training loss, built from ``cfg.loss``: weighted Dice + Focal, plus an optional Tversky term.

Dice + Focal is MONAI's ``DiceFocalLoss`` (softmax Dice, one-hot targets); per-class weights scale
both terms. ``class_weights`` is

- ``auto``: inverse square root of each label's voxel frequency, normalised to mean 1, so that small
  organs (kidneys) count more than the liver and background without the instability of plain
  inverse-frequency weights;
- ``none``: every class weighs 1;
- a list with one weight per label value.

Example:
    >>> counts = labels.label_voxel_counts(label_batch, num_classes=5)
    >>> loss_fn = build_loss(cfg, label_frequencies=counts)
    >>> loss = loss_fn(logits, labels)       # logits (N, C, X, Y, Z), labels (N, 1, X, Y, Z)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.losses import DiceFocalLoss, TverskyLoss
from torch import nn

from organseg.config import Config


def class_weights_from_frequencies(frequencies: Sequence[float] | np.ndarray) -> tuple[float, ...]:
    """Inverse-sqrt-frequency weights normalised to mean 1.

    ``frequencies`` are voxel counts or fractions per label id. A class never seen gets the weight of
    the rarest seen class (it cannot be weighted by a frequency of zero).

    Example:
        >>> class_weights_from_frequencies([900, 90, 9, 1])    # background, then rarer organs
        (0.05..., 0.17..., 0.52..., 1.65...) (roughly; mean 1, ratio sqrt of frequency ratio)
    """
    freq = np.asarray(frequencies, dtype=np.float64)
    if freq.ndim != 1 or freq.size == 0 or np.any(freq < 0) or not np.any(freq > 0):
        raise ValueError(
            f"expected non-negative label frequencies with at least one > 0, got {freq.tolist()}"
        )
    freq = freq / freq.sum()
    seen = freq > 0
    w = np.empty_like(freq)
    w[seen] = 1.0 / np.sqrt(freq[seen])
    w[~seen] = w[seen].max()
    w /= w.mean()
    return tuple(float(v) for v in w)


def resolve_class_weights(
    cfg: Config, label_frequencies: Sequence[float] | np.ndarray | None = None
) -> tuple[float, ...] | None:
    """The per-class weights ``cfg.loss.class_weights`` asks for; ``None`` means unweighted.

    ``auto`` without ``label_frequencies`` falls back to unweighted (there is nothing to count yet).
    """
    cw = cfg.loss.class_weights
    if isinstance(cw, tuple):
        return tuple(float(v) for v in cw)
    if cw == "auto" and label_frequencies is not None:
        freq = np.asarray(label_frequencies, dtype=np.float64)
        if freq.size != cfg.labels.num_classes:
            raise ValueError(f"expected {cfg.labels.num_classes} label frequencies, got {freq.size}")
        return class_weights_from_frequencies(freq)
    return None


class SegmentationLoss(nn.Module):
    """``dice_focal(logits, label) + tversky_weight * tversky(logits, label)``.

    Args:
        dice_focal: MONAI ``DiceFocalLoss`` (softmax, one-hot targets, class weights).
        tversky: MONAI ``TverskyLoss`` or ``None``.
        tversky_weight: factor of the Tversky term.
        class_weights: the weights used, kept for logging.
    """

    def __init__(
        self,
        dice_focal: nn.Module,
        tversky: nn.Module | None = None,
        tversky_weight: float = 0.0,
        class_weights: tuple[float, ...] | None = None,
    ):
        super().__init__()
        self.dice_focal = dice_focal
        self.tversky = tversky
        self.tversky_weight = float(tversky_weight)
        self.class_weights = class_weights

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Scalar loss. ``logits``: (N, C, X, Y, Z) raw network output; ``label``: (N, 1, X, Y, Z) ids."""
        label = label.long() if label.is_floating_point() else label
        loss = self.dice_focal(logits.float(), label)
        if self.tversky is not None:
            loss = loss + self.tversky_weight * self.tversky(logits.float(), label)
        return loss


def build_loss(
    cfg: Config, label_frequencies: Sequence[float] | np.ndarray | None = None
) -> SegmentationLoss:
    """The loss ``cfg.loss`` describes; ``label_frequencies`` (voxels per label id) feed ``class_weights: auto``."""
    lc = cfg.loss
    weights = resolve_class_weights(cfg, label_frequencies)
    dice_focal = DiceFocalLoss(
        include_background=True,
        to_onehot_y=True,
        softmax=True,
        batch=True,  # Dice over the whole batch: stable when a patch misses an organ
        gamma=lc.focal_gamma,
        weight=torch.tensor(weights, dtype=torch.float32) if weights is not None else None,
        lambda_dice=lc.dice_weight,
        lambda_focal=lc.focal_weight,
    )
    tversky = None
    if lc.tversky_weight > 0:
        tversky = TverskyLoss(
            include_background=True,
            to_onehot_y=True,
            softmax=True,
            batch=True,
            alpha=lc.tversky_alpha,
            beta=lc.tversky_beta,
        )
    return SegmentationLoss(dice_focal, tversky, lc.tversky_weight, weights)
