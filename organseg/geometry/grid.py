"""Voxel grids and the maps between them.

Convention everywhere in ``organseg.geometry``: arrays in voxel index order **(i, j, k)**, affines 4x4
voxel index -> **RAS+ mm** (what ``io.read_image`` returns). Grids are compared by physical geometry
(shape + affine), never by shape alone.

Example:
    >>> grid = Grid((64, 64, 40), affine)
    >>> grid.spacing_mm, grid.orientation
    ((0.8, 0.8, 2.5), 'RAS')
    >>> matrix = voxel_map(src_grid, dst_grid)     # dst voxel index -> src voxel index
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

import nibabel as nib
import numpy as np

#: Tolerance (in voxels) for treating a voxel -> voxel map as an exact axis reordering; NIfTI stores
#: affines in float32, so two files of one grid agree to about 1e-5 voxels.
REORDER_TOL_VOXELS = 1e-3


class HasGrid(Protocol):
    """Anything with a ``shape`` (i, j, k) and an ``affine`` (voxel -> RAS+ mm): ``Grid``, ``io.Volume``."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    affine: np.ndarray


class GridGeometry:
    """Physical properties derived from ``affine``; shared by ``Grid``, ``io.Volume`` and ``io.ImageInfo``."""

    affine: np.ndarray

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size along the array axes (i, j, k) in mm."""
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))

    @property
    def orientation(self) -> str:
        """Axis codes of the voxel axes in RAS terms, e.g. ``'RAS'`` or ``'LPS'``."""
        return "".join(nib.aff2axcodes(self.affine))

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0


@dataclass(frozen=True)
class Grid(GridGeometry):
    """A voxel grid without voxels: ``shape`` along (i, j, k) and ``affine`` voxel -> RAS+ mm."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    def crop(self, lo: np.ndarray, hi: np.ndarray) -> Grid:
        """The sub-grid of voxels ``lo <= index < hi`` (same spacing and directions, shifted origin)."""
        lo = np.asarray(lo, dtype=int)
        affine = self.affine.copy()
        affine[:3, 3] = self.affine[:3, :3] @ lo + self.affine[:3, 3]
        return Grid(tuple(int(v) for v in np.asarray(hi) - lo), affine)


def same_grid(a: HasGrid, b: HasGrid, atol_mm: float = 1e-3) -> bool:
    """True when both have the same shape and the same voxel -> world mapping (within ``atol_mm``)."""
    return tuple(a.shape) == tuple(b.shape) and bool(np.allclose(a.affine, b.affine, atol=atol_mm))


def lr_axis(orientation: str) -> int:
    """The voxel axis that runs along the patient's left-right direction (0 for ``RAS``).

    ``orientation`` is a three-letter axis code (``cfg.preprocess.orientation``, ``Grid.orientation``).
    """
    for axis, code in enumerate(orientation.upper()):
        if code in "LR":
            return axis
    raise ValueError(f"orientation {orientation!r} has no left-right axis")


class AxisReordering(NamedTuple):
    """Destination index ``d`` along axis ``n`` reads source axis ``axes[n]`` at ``signs[n] * d + offsets[n]``."""

    axes: tuple[int, int, int]
    signs: tuple[int, int, int]
    offsets: tuple[int, int, int]


def voxel_to_world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """Voxel indices (i, j, k), shape ``(3,)`` or ``(N, 3)``, to RAS+ mm with the same shape."""
    ijk = np.asarray(ijk, dtype=np.float64)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def world_to_voxel(affine: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """RAS+ mm points, shape ``(3,)`` or ``(N, 3)``, to fractional voxel indices (i, j, k)."""
    xyz = np.asarray(xyz, dtype=np.float64)
    inverse = np.linalg.inv(affine)
    return xyz @ inverse[:3, :3].T + inverse[:3, 3]


def voxel_to_voxel(src_affine: np.ndarray, dst_affine: np.ndarray) -> np.ndarray:
    """The 4x4 matrix taking a destination voxel index to the source voxel index at the same world point."""
    return np.linalg.solve(np.asarray(src_affine, dtype=np.float64), np.asarray(dst_affine, dtype=np.float64))


def voxel_map(src: HasGrid, dst: HasGrid) -> np.ndarray:
    """``voxel_to_voxel`` for two grids: ``dst`` voxel indices -> ``src`` voxel indices (through world space)."""
    return voxel_to_voxel(src.affine, dst.affine)


def axis_reordering(src_affine: np.ndarray, dst_affine: np.ndarray) -> AxisReordering | None:
    """How the destination grid's voxel centres index the source grid when that is a pure reordering.

    Returns ``None`` unless every destination voxel centre is a source voxel centre: the voxel -> voxel
    matrix is a signed permutation with integer offsets (within ``REORDER_TOL_VOXELS``). Examples:
    the same grid, an LAS copy of an LPS grid, a transposed or cropped copy.
    """
    matrix = voxel_to_voxel(src_affine, dst_affine)
    rot, shift = matrix[:3, :3], matrix[:3, 3]
    axes, signs = [], []
    for n in range(3):
        column = rot[:, n]
        axis = int(np.argmax(np.abs(column)))
        others = np.delete(column, axis)
        if abs(abs(column[axis]) - 1.0) > REORDER_TOL_VOXELS or np.any(np.abs(others) > REORDER_TOL_VOXELS):
            return None
        axes.append(axis)
        signs.append(1 if column[axis] > 0 else -1)
    if sorted(axes) != [0, 1, 2]:
        return None
    offsets = np.round(shift[axes])
    if np.any(np.abs(shift[axes] - offsets) > REORDER_TOL_VOXELS):
        return None
    return AxisReordering(tuple(axes), tuple(signs), tuple(int(o) for o in offsets))


def same_voxel_centres(
    src_shape: tuple[int, ...], src_affine: np.ndarray, dst_shape: tuple[int, ...], dst_affine: np.ndarray
) -> bool:
    """True when both grids hold exactly the same voxel centres in world space, in any axis order or direction."""
    reordering = axis_reordering(src_affine, dst_affine)
    if reordering is None:
        return False
    for n in range(3):
        size = src_shape[reordering.axes[n]]
        ends = {reordering.offsets[n], reordering.signs[n] * (dst_shape[n] - 1) + reordering.offsets[n]}
        if dst_shape[n] != size or ends != {0, size - 1}:
            return False
    return True


def map_box(box_lo: np.ndarray, box_hi: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float (lo, hi) of the 8 corners of an inclusive voxel box mapped by ``matrix``."""
    corners = np.array(
        [
            [a, b, c]
            for a in (box_lo[0], box_hi[0])
            for b in (box_lo[1], box_hi[1])
            for c in (box_lo[2], box_hi[2])
        ],
        float,
    )
    mapped = corners @ matrix[:3, :3].T + matrix[:3, 3]
    return mapped.min(0), mapped.max(0)


def bounding_box(mask: np.ndarray, pad: int = 0) -> tuple[slice, ...] | None:
    """Index slices of the smallest box holding every true voxel of ``mask``, grown by ``pad`` voxels
    (clipped to the array); ``None`` when the mask is empty. Works in the array's own index order."""
    slices = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        nz = np.flatnonzero(mask.any(axis=other))
        if nz.size == 0:
            return None
        slices.append(slice(max(int(nz[0]) - pad, 0), min(int(nz[-1]) + 1 + pad, mask.shape[axis])))
    return tuple(slices)
