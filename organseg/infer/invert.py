"""Map class probabilities from the network's grid back onto the input's exact grid, then argmax.

This is what ``monai.transforms.Invertd`` does for ``infer_transforms`` -- undo the crop (zeros
outside it), undo ``Spacingd`` (trilinear, edge values repeated beyond the grid), undo
``Orientationd`` -- done in world coordinates and slab by slab: every input voxel's position is mapped
into the probability grid, the C channels are interpolated there (``torch.grid_sample``), and only the
argmax (uint8) is kept. No full-resolution float copy of all channels is ever made unless probability
maps are asked for, and input voxels whose position falls outside the body crop are background without
any interpolation.

Speed (issue 19): when the two grids are axis-aligned (flips, permutations and scaling: every CT
whose direction cosines are axis-aligned), the input region is cut into blocks of a few network voxels
on a side. Where every network voxel a block interpolates between has the same argmax label, every
trilinear mix of them has that label too (a convex combination keeps ``p_c >= p_k``), so the block is
filled with it -- or left as background -- without interpolating; only blocks along organ borders and
the crop's edge are interpolated, with exactly the arithmetic of the full path. ``method="reference"``
interpolates everything; ``tests/test_speed_paths.py`` checks that both give the same labels.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from organseg.geometry import Grid, map_box, voxel_map
from organseg.geometry.slabs import axis_aligned, linear_taps, sample_slabs
from organseg.infer.preprocess import Prepared

#: Block edge of the fast path, in network voxels (coarse cells) along each axis.
BLOCK_CELLS = 6


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
    probs: torch.Tensor,
    prep: Prepared,
    native: Grid,
    *,
    keep_probabilities: bool = False,
    method: Literal["fast", "reference"] = "fast",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Argmax labels (uint8, ``native.shape``) and optionally probabilities on the input grid.

    Args:
        probs: ``(C, X, Y, Z)`` probabilities on ``prep.crop`` (float32; float16 works too).
        prep: the preprocessing result that defines the crop inside the full target grid.
        native: the input grid.
        keep_probabilities: also return the probabilities on the input grid, ``(X, Y, Z, C)`` float32
            (channels last, as NIfTI stores 4D maps; this is the only full-size float array).
        method: ``"fast"`` skips interpolation inside blocks of one label (axis-aligned grids, labels
            only); ``"reference"`` interpolates every voxel of the region. Same labels either way.

    Within the crop the result equals ``Invertd`` + argmax. Outside it ``Invertd`` pads with zeros for
    every class, which makes the band of input voxels within one network voxel of the crop's edge take
    the label of the edge voxel; here the missing probability mass is background's instead (the network
    never saw that band), so probabilities sum to 1 everywhere and the labels are their argmax.
    """
    # MONAI's inferer returns a MetaTensor, whose per-op metadata handling costs more than the
    # arithmetic on the many small slabs below: work on a plain view of the same memory.
    probs = probs.as_subclass(torch.Tensor)
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

    matrix = voxel_map(prep.crop, native)
    if method == "fast" and prob_map is None and axis_aligned(matrix) is not None:
        _blockwise(probs, matrix, lo, hi, clamp, put, mask)
    else:
        sample_slabs(probs, matrix, lo, hi, put, padding="zeros", clamp=clamp)
    return mask, prob_map


def _blockwise(probs, matrix, lo, hi, clamp, put, mask) -> None:
    """Fill ``mask[lo:hi]`` block by block: one-label blocks directly, the others through ``put``.

    A destination index along axis ``d`` mixes source cells ``i0`` and ``i1 = i0 + 1`` of its source axis
    ``r`` (``geometry.slabs.linear_taps``). A block is "simple" when all its cells lie inside the crop (no zero padding mixed
    in) and the coarse argmax over them holds one label. Other blocks are interpolated from the block of
    ``probs`` they need, with the operations of ``sample_slabs``' separable path in its order (the
    slowest-varying source axis first, then the innermost), so each voxel gets the same float32 values.
    """
    coarse = argmax_channels(probs).numpy()
    n_src = coarse.shape
    src_axis_of = axis_aligned(matrix)
    taps = linear_taps(matrix, lo, hi, n_src, src_axis_of, "zeros", clamp)
    spans = []  # per destination axis: (a, b, first cell, last cell, every cell inside)
    for d, r in enumerate(src_axis_of):
        i0, i1 = taps[d][0], taps[d][1]
        # both cells inside the source: clipping would have made them equal otherwise
        inside = i1 == i0 + 1
        step = max(1, int(round(BLOCK_CELLS / max(abs(float(matrix[r, d])), 1e-9))))
        spans.append(
            [
                (a, b, int(i0[a:b].min()), int(i1[a:b].max()), bool(inside[a:b].all()))
                for a, b in ((a, min(a + step, len(i0))) for a in range(0, len(i0), step))
            ]
        )
    # sample_slabs' order: the source axis of largest stride, then the other two, the last one first
    slab = max(range(3), key=lambda q: abs(probs.stride()[1 + q]))
    order = [slab] + sorted((q for q in range(3) if q != slab), reverse=True)
    dst_of = {src_axis_of[d]: d for d in range(3)}
    for sx in spans[0]:
        for sy in spans[1]:
            for sz in spans[2]:
                block = (sx, sy, sz)
                src = [slice(0, 0)] * 3
                for d, s in enumerate(block):
                    src[src_axis_of[d]] = slice(s[2], s[3] + 1)
                region = tuple(slice(int(lo[d]) + s[0], int(lo[d]) + s[1]) for d, s in enumerate(block))
                if all(s[4] for s in block):
                    sub = coarse[tuple(src)]
                    first = sub.flat[0]
                    if (sub == first).all():
                        if first:
                            mask[region] = first
                        continue
                values = probs[(slice(None), *src)]
                for q in order:
                    d = dst_of[q]
                    a, b, first_cell = block[d][0], block[d][1], block[d][2]
                    i0, i1, w0, w1 = (t[a:b] for t in taps[d])
                    shape = [1, 1, 1, 1]
                    shape[1 + q] = -1
                    i0 = torch.from_numpy(i0 - first_cell)
                    i1 = torch.from_numpy(i1 - first_cell)
                    w0, w1 = torch.from_numpy(w0).view(shape), torch.from_numpy(w1).view(shape)
                    if q == order[0]:
                        low = values.index_select(1 + q, i0).to(torch.float32).mul_(w0)
                        values = low.add_(values.index_select(1 + q, i1).to(torch.float32).mul_(w1))
                    else:
                        low = values.index_select(1 + q, i0).mul_(w0)
                        values = low.addcmul_(values.index_select(1 + q, i1), w1)
                put(region, values.permute(0, *[1 + src_axis_of[d] for d in range(3)]))
