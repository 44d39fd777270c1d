"""Trilinear resampling slab by slab, with torch: bounded memory for whole CTs and probability maps.

``sample_slabs`` fills a destination box from a source array through a voxel -> voxel map
(``grid.voxel_map``), one slab at a time, so no temporary exceeds a few hundred MB. When the grids' axes
are parallel (any flips, permutations and spacings: nearly every CT) trilinear interpolation is done as
three 1D interpolations with precomputed indices and weights, several times faster than
``torch.grid_sample``, which handles oblique grids. Inference uses it both ways: the CT onto the model's
grid (``infer.preprocess``) and the probabilities back onto the input grid (``infer.invert``).

Conventions: voxel indices (i, j, k); a 3D source ``(X, Y, Z)`` or a channel source ``(C, X, Y, Z)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from organseg.geometry.grid import Grid, voxel_map

#: Output voxels per resampling slab (bounds temporaries: coordinates + values, ~20 bytes per voxel).
SLAB_VOXELS = 4_000_000


def sample_slabs(
    source: np.ndarray | torch.Tensor,
    matrix: np.ndarray,
    dst_lo: np.ndarray,
    dst_hi: np.ndarray,
    consume: Callable[[tuple[slice, slice, slice], torch.Tensor], None],
    *,
    padding: str = "border",
    clamp: tuple[np.ndarray, np.ndarray] | None = None,
    slab_voxels: int = SLAB_VOXELS,
) -> None:
    """Trilinear samples of ``source`` at the destination voxels ``dst_lo <= index < dst_hi``, slab by slab.

    Args:
        source: ``(X, Y, Z)`` or ``(C, X, Y, Z)`` array/tensor, any numeric dtype; each slab reads only the
            block of it that the slab needs, converted to float32.
        matrix: destination voxel index -> source voxel index (``voxel_map``).
        dst_lo, dst_hi: the destination box to fill (``hi`` exclusive).
        consume: called as ``consume(region, values)`` for each slab: ``region`` the slab's absolute
            destination index slices along (i, j, k), ``values`` its samples ``(C, *slab shape)`` float32
            (``C = 1`` for 3D sources). Slabs tile the destination box.
        padding: ``"border"`` (outside the source repeats its edge, like ``Spacingd``) or ``"zeros"``.
        clamp: optional ``(lo, hi)`` in source coordinates to clamp sample positions into before sampling
            (border behaviour of a larger grid the source is a zero-padded crop of).
    """
    dst_lo, dst_hi = np.asarray(dst_lo, int), np.asarray(dst_hi, int)
    if np.any(dst_hi - dst_lo <= 0):
        return
    if axis_aligned(matrix) is not None:
        _separable_slabs(source, matrix, dst_lo, dst_hi, consume, padding, clamp, slab_voxels)
        return
    if isinstance(source, np.ndarray) and any(st < 0 for st in source.strides):
        source = np.ascontiguousarray(source)
    src = torch.as_tensor(source)  # shares memory with a numpy array: nothing is copied here
    _grid_sample_slabs(
        src if src.ndim == 4 else src[None], matrix, dst_lo, dst_hi, consume, padding, clamp, slab_voxels
    )


def axis_aligned(matrix: np.ndarray) -> list[int] | None:
    """``src_axis_of[dst_axis]`` when each destination axis runs along one source axis (flips, permutations
    and scaling, no rotation), else ``None``."""
    lin = np.asarray(matrix[:3, :3], float)
    nonzero = np.abs(lin) > 1e-9 * max(1.0, float(np.abs(lin).max()))
    if not (nonzero.sum(0) == 1).all() or not (nonzero.sum(1) == 1).all():
        return None
    return [int(np.flatnonzero(nonzero[:, d])[0]) for d in range(3)]


def _clamped(c: np.ndarray, axis: int, n: int, padding: str, clamp) -> np.ndarray:
    if clamp is not None:
        return np.clip(c, float(clamp[0][axis]), float(clamp[1][axis]))
    if padding == "border":
        return np.clip(c, 0.0, float(n - 1))
    return c


def linear_taps(
    matrix: np.ndarray,
    dst_lo: np.ndarray,
    dst_hi: np.ndarray,
    n_src: tuple[int, ...],
    src_axis_of: list[int],
    padding: str = "border",
    clamp: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per destination axis ``d``: the two source indices and weights ``(i0, i1, w0, w1)`` of linear
    interpolation along source axis ``src_axis_of[d]`` (an axis-aligned ``matrix``, see ``axis_aligned``).

    Weights are 0 for an index outside a zero-padded source; indices are clipped into the source.
    """
    taps = []
    for d, r in enumerate(src_axis_of):
        idx = np.arange(dst_lo[d], dst_hi[d], dtype=np.float64)
        c = _clamped(matrix[r, d] * idx + matrix[r, 3], r, n_src[r], padding, clamp)
        i0 = np.floor(c)
        w = c - i0
        i0 = i0.astype(np.int64)
        i1 = i0 + 1
        w0 = np.where((i0 >= 0) & (i0 < n_src[r]), 1.0 - w, 0.0).astype(np.float32)
        w1 = np.where((i1 >= 0) & (i1 < n_src[r]), w, 0.0).astype(np.float32)
        taps.append((np.clip(i0, 0, n_src[r] - 1), np.clip(i1, 0, n_src[r] - 1), w0, w1))
    return taps


def _separable_slabs(source, matrix, dst_lo, dst_hi, consume, padding, clamp, slab_voxels) -> None:
    """Trilinear interpolation as three 1D linear interpolations (exact for axis-aligned maps).

    Each destination axis ``d`` samples source axis ``r``: per destination index, two source indices
    and two weights (a weight is 0 where its source index lies outside a zero-padded source). Slabs are
    cut along the destination axis whose source axis varies slowest in memory, so every gathered source
    row is one contiguous block whatever the array's order (NIfTI arrays are Fortran-ordered).
    """
    src_axis_of = axis_aligned(matrix)
    lead = 1 if source.ndim == 4 else 0
    strides = source.strides if isinstance(source, np.ndarray) else source.stride()
    n_src = source.shape[lead:]
    taps = linear_taps(matrix, dst_lo, dst_hi, n_src, src_axis_of, padding, clamp)
    slab_axis = max(range(3), key=lambda d: abs(strides[lead + src_axis_of[d]]))
    rest = [d for d in range(3) if d != slab_axis]
    size = dst_hi - dst_lo
    other_src = [n_src[src_axis_of[d]] for d in rest]
    per_row = max(
        int(size[rest[0]] * size[rest[1]]), other_src[0] * other_src[1], size[rest[0]] * other_src[1]
    )
    rows = max(1, int(slab_voxels // max(1, per_row)))
    for a in range(0, int(size[slab_axis]), rows):
        b = min(a + rows, int(size[slab_axis]))
        i0, i1, w0, w1 = taps[slab_axis]
        r = src_axis_of[slab_axis]
        # (C, rows, other source axes in source order); then move ``rows`` to its destination position
        values = _rows(source, i0[a:b], lead + r, w0[a:b])
        values.add_(_rows(source, i1[a:b], lead + r, w1[a:b]))
        src_dims = [r] + [q for q in range(3) if q != r]  # source axis held by each values dim 1..3
        # The innermost dim first, while the data is small: index_select gathers single elements along
        # it but copies whole contiguous runs along outer dims (its output is C-contiguous).
        for d in sorted(rest, key=lambda d: -src_dims.index(src_axis_of[d])):
            i0, i1, w0, w1 = taps[d]
            dim = 1 + src_dims.index(src_axis_of[d])
            shape = [1, 1, 1, 1]
            shape[dim] = -1
            lo = values.index_select(dim, torch.from_numpy(i0)).mul_(torch.from_numpy(w0).view(shape))
            values = lo.addcmul_(
                values.index_select(dim, torch.from_numpy(i1)), torch.from_numpy(w1).view(shape)
            )
        dst_dims = [slab_axis if q == r else next(d for d in rest if src_axis_of[d] == q) for q in src_dims]
        values = values.permute(0, *[1 + dst_dims.index(d) for d in range(3)])
        region = [slice(int(dst_lo[d]), int(dst_hi[d])) for d in range(3)]
        region[slab_axis] = slice(int(dst_lo[slab_axis]) + a, int(dst_lo[slab_axis]) + b)
        consume(tuple(region), values)


def _rows(
    source: np.ndarray | torch.Tensor, index: np.ndarray, axis: int, weight: np.ndarray
) -> torch.Tensor:
    """``weight``-scaled rows ``index`` of ``axis``, float32, as ``(C, rows, remaining axes in order)``.

    numpy rows are copied one block at a time into an array laid out like the source (a CT read from
    NIfTI is Fortran-ordered: ``np.take`` into a C-ordered result would crawl, and torch's
    ``index_select`` is very slow for int16, the usual CT type).
    """
    if isinstance(source, np.ndarray):
        moved = np.moveaxis(source, axis, 0)
        # laid out like the source, with len(index) rows along ``axis`` (more than the source has when
        # upsampling, e.g. 5 mm slices onto a 3 mm grid)
        shape = list(source.shape)
        shape[axis] = len(index)
        order = "F" if source.flags.f_contiguous and not source.flags.c_contiguous else "C"
        out = np.moveaxis(np.empty(shape, dtype=np.float32, order=order), axis, 0)
        for j, i in enumerate(index):
            out[j] = moved[i]
        rows = torch.from_numpy(out)
        rows = rows[None] if source.ndim == 3 else rows.movedim(1, 0)
    else:
        rows = source.index_select(axis, torch.from_numpy(index)).to(torch.float32)
        if source.ndim == 3:
            rows, axis = rows[None], axis + 1
        rows = rows.movedim(axis, 1)
    return rows.mul_(torch.from_numpy(weight).view(1, -1, 1, 1))


def _grid_sample_slabs(src, matrix, dst_lo, dst_hi, consume, padding, clamp, slab_voxels) -> None:
    """Trilinear interpolation with ``torch.grid_sample`` for oblique maps, slab by slab."""
    n_src = np.array(src.shape[1:])
    size = dst_hi - dst_lo
    rows = max(1, int(slab_voxels // max(1, size[1] * size[2])))
    lin = matrix[:3, :3].astype(np.float32)
    jj = torch.arange(dst_lo[1], dst_hi[1], dtype=torch.float32)
    kk = torch.arange(dst_lo[2], dst_hi[2], dtype=torch.float32)
    for a in range(int(dst_lo[0]), int(dst_hi[0]), rows):
        b = min(a + rows, int(dst_hi[0]))
        ii = torch.arange(a, b, dtype=torch.float32)
        region = (slice(a, b), slice(int(dst_lo[1]), int(dst_hi[1])), slice(int(dst_lo[2]), int(dst_hi[2])))
        coords = []
        for axis in range(3):
            c = (
                lin[axis, 0] * ii[:, None, None]
                + lin[axis, 1] * jj[None, :, None]
                + lin[axis, 2] * kk[None, None, :]
                + float(matrix[axis, 3])
            )
            if clamp is not None:
                c = c.clamp_(float(clamp[0][axis]), float(clamp[1][axis]))
            elif padding == "border":
                c = c.clamp_(0.0, float(n_src[axis] - 1))
            coords.append(c)
        lo = np.array([math.floor(float(c.min())) for c in coords])
        hi = np.array([math.floor(float(c.max())) + 1 for c in coords])
        lo_c, hi_c = np.maximum(lo, 0), np.minimum(hi, n_src - 1)
        shape = (src.shape[0], b - a, int(size[1]), int(size[2]))
        if np.any(hi_c < lo_c):  # the slab lies wholly outside a zero-padded source
            consume(region, torch.zeros(shape, dtype=torch.float32))
            continue
        block = src[:, lo_c[0] : hi_c[0] + 1, lo_c[1] : hi_c[1] + 1, lo_c[2] : hi_c[2] + 1].to(torch.float32)
        # grid_sample with align_corners needs >= 2 voxels per axis: pad single-voxel axes (the padded
        # voxel only ever gets weight 0 or stands for the zero/border outside, which is what it holds).
        pads = []
        for axis in (2, 1, 0):
            pads += [0, 1 if block.shape[axis + 1] == 1 else 0]
        if any(pads):
            block = F.pad(block[None], pads, mode="constant" if padding == "zeros" else "replicate")[0]
        grid = torch.stack(
            [
                2.0 * (coords[axis] - float(lo_c[axis])) / float(block.shape[axis + 1] - 1) - 1.0
                for axis in (2, 1, 0)
            ],
            dim=-1,
        )
        values = F.grid_sample(
            block[None], grid[None], mode="bilinear", padding_mode=padding, align_corners=True
        )[0]
        consume(region, values)


def resample_region(array: np.ndarray, src: Grid, dst: Grid, lo: np.ndarray, hi: np.ndarray) -> torch.Tensor:
    """Float32 tensor ``(hi - lo)`` of ``array`` (on ``src``) resampled trilinearly onto ``dst[lo:hi]``."""
    out = torch.empty(tuple(int(v) for v in np.asarray(hi) - np.asarray(lo)), dtype=torch.float32)

    def put(region: tuple[slice, ...], values: torch.Tensor) -> None:
        out[tuple(slice(r.start - o, r.stop - o) for r, o in zip(region, lo))] = values[0]

    sample_slabs(array, voxel_map(src, dst), lo, hi, put, padding="border")
    return out
