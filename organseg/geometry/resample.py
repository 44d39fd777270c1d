"""Resampling arrays between grids through world (RAS) coordinates, with scipy.

Resampling never matches arrays by index: for each destination voxel centre it finds the world point,
then the source voxel at that point, through ``voxel_to_voxel(src_affine, dst_affine)``. Two grids that
hold the same voxel centres in another axis order or direction (an LAS label file for an LPS DICOM
series) are resampled by exact index reordering, so labels survive a round trip bit for bit.

Example:
    >>> label_on_ct = resample_volume(label_vol, like=ct_vol, order=0)   # nearest, keeps uint8
    >>> ct_on_grid = resample_to_grid(ct.array, ct.affine, dst_affine, (64, 64, 64), order=1)
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from organseg.geometry.grid import AxisReordering, axis_reordering, voxel_to_voxel

if TYPE_CHECKING:
    from organseg.io import Volume


def resample_to_grid(
    array: np.ndarray,
    src_affine: np.ndarray,
    dst_affine: np.ndarray,
    dst_shape: tuple[int, int, int],
    order: int = 0,
    cval: float = 0.0,
) -> np.ndarray:
    """Resample ``array`` from its grid onto another grid through world (RAS) coordinates.

    Args:
        array: source voxels, index order (i, j, k); or ``(C, i, j, k)`` to resample C channels alike.
        src_affine: 4x4 voxel -> RAS+ mm of ``array``.
        dst_affine: 4x4 voxel -> RAS+ mm of the destination grid.
        dst_shape: destination voxels along (i, j, k).
        order: 0 nearest neighbour (labels; keeps the dtype), 1 trilinear (images; float32, or float64 for
            float64 input).
        cval: value for destination voxels outside the source grid.

    Returns:
        An array of shape ``dst_shape`` (``(C, *dst_shape)`` for channel input). When the destination
        voxel centres are source voxel centres (same grid, flipped or permuted axes, crops) the result is
        an exact copy of those voxels, without interpolation.
    """
    if order not in (0, 1):
        raise ValueError(f"order must be 0 (nearest, labels) or 1 (linear, images), got {order}")
    dst_shape = tuple(int(s) for s in dst_shape)
    if array.ndim == 4:
        return np.stack([resample_to_grid(c, src_affine, dst_affine, dst_shape, order, cval) for c in array])
    if array.ndim != 3 or len(dst_shape) != 3:
        raise ValueError(f"expected a 3D array and a 3D shape, got {array.shape} and {dst_shape}")
    out_dtype = array.dtype if order == 0 else (np.float64 if array.dtype == np.float64 else np.float32)
    reordering = axis_reordering(src_affine, dst_affine)
    if reordering is not None:
        return _reorder(array, reordering, dst_shape, cval, out_dtype)
    from scipy import ndimage  # here, so that importing organseg.io (which needs Grid) stays light

    matrix = voxel_to_voxel(src_affine, dst_affine)
    output = np.empty(dst_shape, dtype=out_dtype)
    source = array if array.dtype != np.bool_ else array.view(np.uint8)
    target = output if output.dtype != np.bool_ else output.view(np.uint8)
    ndimage.affine_transform(
        source,
        matrix[:3, :3],
        offset=matrix[:3, 3],
        output_shape=dst_shape,
        output=target,
        order=order,
        # Nearest neighbour: a voxel owns the half voxel around its centre, so points a rounding error
        # outside the first or last centre still take its label ("constant" would give cval there).
        mode="grid-constant" if order == 0 else "constant",
        cval=cval,
        prefilter=False,
    )
    return output


def _reorder(
    array: np.ndarray, reordering: AxisReordering, dst_shape: tuple[int, ...], cval: float, dtype: np.dtype
) -> np.ndarray:
    """Copy source voxels to their places on a reordered grid (slices only: exact and fast)."""
    out = np.full(dst_shape, cval, dtype=dtype)
    dst_slices, src_slices = [], []
    for n in range(3):
        axis, sign, offset = reordering.axes[n], reordering.signs[n], reordering.offsets[n]
        size = array.shape[axis]
        # destination indices d with 0 <= sign * d + offset < size
        lo, hi = (-offset, size - 1 - offset) if sign > 0 else (offset - size + 1, offset)
        lo, hi = max(lo, 0), min(hi, dst_shape[n] - 1)
        if lo > hi:
            return out
        start = sign * lo + offset
        stop = sign * hi + offset + sign
        dst_slices.append(slice(lo, hi + 1))
        src_slices.append(slice(start, stop if stop >= 0 else None, sign))
    source = np.transpose(array, reordering.axes)
    out[tuple(dst_slices)] = source[tuple(src_slices)]
    return out


def resample_volume(vol: Volume, like: Volume, order: int = 0, cval: float = 0.0) -> Volume:
    """``vol`` resampled onto ``like``'s grid (world space); the result carries ``like``'s affine and header."""
    array = resample_to_grid(vol.array, vol.affine, like.affine, like.shape, order=order, cval=cval)
    return dataclasses.replace(like, array=array, affine=like.affine.copy(), source=vol.source)
