"""Test-time augmentation: average the network's probabilities over mirrored (and rotated) copies.

Mirror TTA predicts the window as is and mirrored along each spatial axis, one axis at a time, and
averages the four softmax outputs after undoing each mirror. After ``Orientationd(RAS)`` axis 0 runs
left-right: mirroring it turns the patient's right kidney into a left one, so the mirrored prediction's
``*_right``/``*_left`` channels (``LabelMap.lr_swap_pairs``) are swapped back before averaging --
without the swap, TTA would smear each kidney into its partner. Axes 1 (A-P) and 2 (S-I) need no swap.
``rot90`` adds the in-plane (axes 0, 1) rotations by 90 and 270 degrees (no handedness change, no swap).

Cost: ``1 + 3`` (mirror) or ``1 + 3 + 2`` (mirror + rot90) network passes per window; off by default on CPU.

Example:
    >>> predict = tta_predictor(lambda x: torch.softmax(net(x), 1), lr_axis=0, lr_pairs=((2, 3),))
    >>> probs = predict(window)       # (N, C, X, Y, Z), averaged over 4 passes
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Predict = Callable[[torch.Tensor], torch.Tensor]

#: Spatial axes mirrored by mirror TTA (one at a time).
MIRROR_AXES: tuple[int, ...] = (0, 1, 2)


def swap_channels(probs: torch.Tensor, pairs: Sequence[tuple[int, int]]) -> torch.Tensor:
    """``probs`` (N, C, ...) with the channels of each pair exchanged (left <-> right organs)."""
    if not pairs:
        return probs
    perm = list(range(probs.shape[1]))
    for a, b in pairs:
        perm[a], perm[b] = perm[b], perm[a]
    return probs[:, perm]


def parse_tta(tta: bool | str | None) -> tuple[bool, bool]:
    """``(mirror, rot90)`` from ``tta``: ``False``/``None`` off, ``True``/``"mirror"``, ``"mirror+rot90"``."""
    from organseg.errors import ConfigError

    if tta is None or tta is False:
        return False, False
    if tta is True or tta == "mirror":
        return True, False
    if tta in ("mirror+rot90", "rot90+mirror"):
        return True, True
    raise ConfigError(f"tta: expected true/false, 'mirror' or 'mirror+rot90', got {tta!r}")


def tta_predictor(
    predict: Predict,
    *,
    lr_axis: int,
    lr_pairs: Sequence[tuple[int, int]],
    mirror_axes: Sequence[int] = MIRROR_AXES,
    rot90: bool = False,
) -> Predict:
    """Wrap ``predict`` (window ``(N, 1, X, Y, Z)`` -> probabilities ``(N, C, X, Y, Z)``) with mirror TTA.

    Args:
        predict: the plain predictor (softmax of the network).
        lr_axis: the spatial axis (0-2) that runs left-right in the network input (0 for RAS).
        lr_pairs: channel pairs that trade places under a left-right mirror.
        mirror_axes: spatial axes to mirror, one at a time.
        rot90: also average the in-plane rotations by 90 and 270 degrees (axes 0 and 1).
    """

    def predict_tta(x: torch.Tensor) -> torch.Tensor:
        total = predict(x).clone()
        n = 1
        for axis in mirror_axes:
            dims = (axis + 2,)
            p = predict(torch.flip(x, dims)).flip(dims)
            if axis == lr_axis:
                p = swap_channels(p, lr_pairs)
            total += p
            n += 1
        if rot90:
            for k in (1, 3):
                total += torch.rot90(predict(torch.rot90(x, k, (2, 3))), -k, (2, 3))
                n += 1
        return total / n

    return predict_tta
