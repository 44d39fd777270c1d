"""The painting surface for rasterizing anatomy: tissue and structure label arrays on one grid.

Structures resolve overlaps by priority (``tissues.overwrite_table``), so the painting order of
independent organs does not matter and organs cannot leave the abdominal cavity. Inner detail
(renal cortex vs medulla, vessels inside the liver, gas in the stomach) is added with ``retint``,
which changes the tissue only where the voxel already belongs to the given structure.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from organseg.phantom.fields import Box, Grid, capsule, resample_polyline
from organseg.phantom.tissues import overwrite_table, sid

TissueSpec = int | np.ndarray | Callable[[Box, np.ndarray], np.ndarray]


class Canvas:
    """Tissue and structure maps (uint8, index order x, y, z) on a patient-frame ``Grid``."""

    def __init__(self, grid: Grid):
        self.grid = grid
        self.tissue = np.zeros(grid.shape, np.uint8)
        self.structure = np.zeros(grid.shape, np.uint8)
        self._may_overwrite = overwrite_table()

    def paint(
        self, box: Box | None, mask: np.ndarray, structure: str, tissue: TissueSpec, force: bool = False
    ):
        """Give ``structure`` every masked voxel it outranks (``force``: every masked voxel)."""
        if box is None:
            return
        s = sid(structure)
        cur = self.structure[box.slices]
        mask = np.broadcast_to(mask, box.shape)
        ok = mask if force else mask & self._may_overwrite[s][cur]
        if not ok.any():
            return
        cur[ok] = s
        self._set_tissue(box, ok, tissue)

    def retint(self, box: Box | None, mask: np.ndarray, structure: str, tissue: TissueSpec):
        """Change the tissue of masked voxels that belong to ``structure``."""
        if box is None:
            return
        ok = np.broadcast_to(mask, box.shape) & (self.structure[box.slices] == sid(structure))
        if ok.any():
            self._set_tissue(box, ok, tissue)

    def _set_tissue(self, box: Box, ok: np.ndarray, tissue: TissueSpec):
        view = self.tissue[box.slices]
        if callable(tissue):
            tissue = tissue(box, ok)
        if np.ndim(tissue) == 0:
            view[ok] = int(tissue)
        else:
            view[ok] = np.broadcast_to(tissue, box.shape)[ok]

    def tube(
        self,
        points,
        radii,
        structure: str,
        tissue: TissueSpec,
        core: tuple[float, TissueSpec] | None = None,
        step_mm: float | None = None,
        ripple: tuple[float, float] | None = None,
    ):
        """Paint a tube along a polyline (patient mm) with radius per point (mm).

        ``core = (fraction, tissue)`` retints the inner part (q < fraction) of the tube: marrow in a
        rib, lumen in a bowel loop. Each segment is evaluated only on its own bounding box; a voxel
        already owned by this structure is not repainted, so walls never cover earlier lumens.
        ``ripple = (period_mm, amplitude)`` modulates the radius along the path (colonic haustra).
        """
        points, radii = np.asarray(points, float), np.asarray(radii, float)
        if step_mm:
            points, radii, _ = resample_polyline(points, radii, step_mm)
        lengths = np.linalg.norm(np.diff(points, axis=0), axis=1)
        starts = np.concatenate([[0.0], np.cumsum(lengths)])
        grow = 1 + (ripple[1] if ripple else 0.0)
        for a, b, ra, rb, s0, n in zip(points[:-1], points[1:], radii[:-1], radii[1:], starts, lengths):
            pad = max(ra, rb) * grow + 1.0
            box = self.grid.box(np.minimum(a, b) - pad, np.maximum(a, b) + pad)
            if box is None:
                continue
            q, t = capsule(box, a, b, ra * grow, rb * grow)
            if ripple:
                q = (
                    q
                    * np.float32(grow)
                    / (1 + np.float32(ripple[1]) * np.cos((s0 + t * n) * np.float32(2 * np.pi / ripple[0])))
                )
            self.paint(box, q < 1, structure, tissue)
            if core is not None:
                self.retint(box, q < core[0], structure, core[1])
