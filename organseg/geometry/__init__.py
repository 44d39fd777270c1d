"""World-space geometry: grids, voxel <-> world maps and resampling between grids.

Every function here works in the organseg convention: arrays in voxel index order **(i, j, k)**,
affines 4x4 voxel index -> **RAS+ mm** (what ``io.read_image`` returns).

- ``grid``: ``Grid`` (shape + affine), ``same_grid``, ``lr_axis``, ``voxel_to_world``/``world_to_voxel``,
  ``voxel_to_voxel``/``voxel_map``, ``axis_reordering``, ``same_voxel_centres``, ``map_box``,
  ``bounding_box`` (numpy and nibabel only: ``io`` builds on it);
- ``resample``: ``resample_to_grid`` / ``resample_volume`` (scipy; exact copies for reordered grids);
- ``slabs``: ``sample_slabs`` / ``resample_region``, trilinear and slab by slab (torch; import it
  explicitly, ``from organseg.geometry.slabs import sample_slabs``, so this package stays light).

Example:
    >>> label_on_ct = resample_volume(label_vol, like=ct_vol, order=0)   # nearest, keeps uint8
    >>> ct_on_grid = resample_to_grid(ct.array, ct.affine, dst_affine, (64, 64, 64), order=1)
"""

from organseg.geometry.grid import (
    REORDER_TOL_VOXELS,
    AxisReordering,
    Grid,
    GridGeometry,
    axis_reordering,
    bounding_box,
    lr_axis,
    map_box,
    same_grid,
    same_voxel_centres,
    voxel_map,
    voxel_to_voxel,
    voxel_to_world,
    world_to_voxel,
)
from organseg.geometry.resample import resample_to_grid, resample_volume

__all__ = [
    "REORDER_TOL_VOXELS",
    "AxisReordering",
    "Grid",
    "GridGeometry",
    "axis_reordering",
    "bounding_box",
    "lr_axis",
    "map_box",
    "resample_to_grid",
    "resample_volume",
    "same_grid",
    "same_voxel_centres",
    "voxel_map",
    "voxel_to_voxel",
    "voxel_to_world",
    "world_to_voxel",
]
