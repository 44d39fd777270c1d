"""Map class probabilities from the network's grid back onto the input's exact grid, then argmax.

This is what ``monai.transforms.Invertd`` does for ``infer_transforms`` -- undo the crop (zeros
outside it), undo ``Spacingd`` (trilinear, edge values repeated beyond the grid), undo
``Orientationd`` -- done in world coordinates and slab by slab: every input voxel's position is mapped
into the probability grid, the C channels are interpolated there (``torch.grid_sample``), and only the
argmax (uint8) is kept. No full-resolution float copy of all channels is ever made unless probability
maps are asked for, and input voxels whose position falls outside the body crop are background without
any interpolation.
"""

from __future__ import annotations

import numpy as np
import torch

from organseg.infer.preprocess import Grid, Prepared, map_box, sample_slabs, voxel_map


def argmax_channels(values: torch.Tensor) -> torch.Tensor:
    """uint8 argmax over dim 0 (first maximum wins, as ``torch.argmax``), one channel at a time.

    ``torch.argmax`` over the outer dimension of a large tensor is several times slower on CPU than
    these C passes of elementwise comparisons.
    """
    best = values[0].clone()
    labels = torch.zeros(values.shape[1:], dtype=torch.uint8)
    for c in range(1, values.shape[0]):
        better = values[c] > best
        labels.masked_fill_(better, c)
        torch.maximum(best, values[c], out=best)
    return labels


def probabilities_to_input(
    probs: torch.Tensor, prep: Prepared, native: Grid, *, keep_probabilities: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Argmax labels (uint8, ``native.shape``) and optionally probabilities on the input grid.

    Args:
        probs: ``(C, X, Y, Z)`` probabilities on ``prep.crop`` (float32; float16 works too).
        prep: the preprocessing result that defines the crop inside the full target grid.
        native: the input grid.
        keep_probabilities: also return the probabilities on the input grid, ``(X, Y, Z, C)`` float32
            (channels last, as NIfTI stores 4D maps; this is the only full-size float array).

    Within the crop the result equals ``Invertd`` + argmax. Outside it ``Invertd`` pads with zeros for
    every class, which makes the band of input voxels within one network voxel of the crop's edge take
    the label of the edge voxel; here the missing probability mass is background's instead (the network
    never saw that band), so probabilities sum to 1 everywhere and the labels are their argmax.
    """
    n_crop = np.array(prep.crop.shape)
    n_full = np.array(prep.grid.shape)
    mask = np.zeros(native.shape, dtype=np.uint8)
    prob_map = None
    if keep_probabilities:
        prob_map = np.zeros((*native.shape, probs.shape[0]), dtype=np.float32)
        prob_map[..., 0] = 1.0  # outside the network's crop: background
    # Input voxels that can receive a non-zero probability: the crop grown by one voxel (the
    # interpolation band against the zero padding), mapped into the input grid.
    lo_f, hi_f = map_box(np.full(3, -1.0), n_crop.astype(float), voxel_map(native, prep.crop))
    lo = np.clip(np.floor(lo_f).astype(int) - 1, 0, np.array(native.shape))
    hi = np.clip(np.ceil(hi_f).astype(int) + 2, 0, np.array(native.shape))
    # Positions beyond the full target grid take its edge values (Spacingd's border padding).
    clamp = (-prep.crop_lo.astype(float), (n_full - 1 - prep.crop_lo).astype(float))

    def put(region: tuple[slice, ...], values: torch.Tensor) -> None:
        # Near the crop's edge interpolation mixes in the zeros outside it: the probability mass the
        # network did not give goes to background, so probabilities sum to 1 and labels are their argmax.
        values[0] += 1.0 - values.sum(dim=0)
        mask[region] = argmax_channels(values).numpy()
        if prob_map is not None:
            prob_map[region] = values.permute(1, 2, 3, 0).numpy()

    sample_slabs(probs, voxel_map(prep.crop, native), lo, hi, put, padding="zeros", clamp=clamp)
    return mask, prob_map
