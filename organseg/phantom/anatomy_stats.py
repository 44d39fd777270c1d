"""Anatomy statistics of a label map in world coordinates: where organs sit relative to each other.

Used to hold the phantoms against real anatomy (``benchmarks/bench_anatomy.py``, ``tests/test_anatomy.py``).
Every statistic is measured the same way on a phantom's structure map and on a real TotalSegmentator label
map, through the affine (voxel -> RAS+ world mm: +x patient right, +y anterior, +z superior), never through
array indices, so LPS phantoms and RAS label maps are measured alike.

The diaphragm is not labelled in TotalSegmentator maps, so its dome is measured from the lungs: in each
5 mm column (x, y) the lowest lung voxel lies on the diaphragm; columns count only where an abdominal organ
lies within 30 mm below it (not the heart or great vessels), and a dome's height is the highest such column
on its side of the spine.

Vertebral levels are continuous numbers with **T12 = 0**, L1 = 1, L2 = 2, T11 = -1, ... (interpolated between
vertebral-body centroids), so "the right kidney's upper pole at level 0.4" means 40 % of the way from the T12
to the L1 centroid.

Reference ranges (``REFERENCE``) are approximate adult ranges from standard anatomy and radiology texts (Gray's
Anatomy; Moore, Clinically Oriented Anatomy; CT volumetry series), quoted from memory as rough bounds, then
widened to hold the real label maps measured here (TotalSegmentator dataset v2.0.1, Wasserthal et al., Radiology:
AI 2023, Zenodo 10047292, CC BY 4.0: subject s0011; and the TotalSegmentator example CT).

Example:
    >>> stats = measure(label_array, affine, names)   # names: {label value: structure name}
    >>> stats["spleen_above_kidney_left_mm"]
    47.5
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from organseg.phantom.variants import Variants

#: Structures pooled under one name (TotalSegmentator splits the lungs into lobes; the phantom does not).
GROUPS: dict[str, tuple[str, ...]] = {
    "lung_right": ("lung_right", "lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"),
    "lung_left": ("lung_left", "lung_upper_lobe_left", "lung_lower_lobe_left"),
}
#: What may lie under the diaphragm in a column that counts for the dome.
_ABDOMINAL = ("liver", "spleen", "stomach", "kidney_right", "kidney_left", "colon", "adrenal_gland_left")
_LEVELS = tuple(f"T{i}" for i in range(1, 13)) + tuple(f"L{i}" for i in range(1, 6))
_T12 = _LEVELS.index("T12")
_COLUMN_MM = 5.0


@dataclass(frozen=True)
class Reference:
    """An approximate real range ``[lo, hi]`` of one statistic and what it means (units in the name)."""

    lo: float
    hi: float
    meaning: str


#: Real ranges: published anatomy (approximate), widened to hold the two real label maps (see module doc).
REFERENCE: dict[str, Reference] = {
    "liver_top_above_kidney_right_top_mm": Reference(90, 135, "liver dome above right kidney upper pole"),
    "spleen_above_kidney_left_mm": Reference(35, 65, "spleen centroid above left kidney centroid"),
    "kidney_left_top_above_right_top_mm": Reference(5, 90, "left kidney upper pole above the right's"),
    "dome_right_above_left_mm": Reference(-5, 35, "right hemidiaphragm dome above the left"),
    "liver_top_below_dome_mm": Reference(-5, 25, "right dome minus liver top"),
    "spleen_top_below_dome_mm": Reference(0, 60, "left dome minus spleen top"),
    "liver_top_level": Reference(-5.0, -1.5, "liver top, vertebral level (T12=0, T10=-2, T8=-4)"),
    "spleen_center_level": Reference(-2.0, 1.0, "spleen centroid, vertebral level (ribs 9-11: T10-L1)"),
    "kidney_right_top_level": Reference(-1.0, 1.5, "right kidney upper pole, level (T12=0, L1=1)"),
    "kidney_right_bottom_level": Reference(2.0, 4.3, "right kidney lower pole, level (L2=2, L3=3)"),
    "kidney_left_top_level": Reference(-2.0, 1.0, "left kidney upper pole, level (T11=-1, T12=0)"),
    "kidney_left_bottom_level": Reference(1.5, 4.0, "left kidney lower pole, level"),
    "spleen_behind_spine_mm": Reference(
        -55, 15, "spleen centroid behind the T12 body centroid (+: posterior)"
    ),
    "spleen_lateral_mm": Reference(60, 130, "spleen centroid left of the spine"),
    "spleen_rib_number": Reference(8.5, 11.5, "mean number of the left ribs within 10 mm of the spleen"),
    "stomach_between": Reference(0.1, 0.9, "stomach x between spleen (0) and liver (1)"),
    "stomach_before_spleen_mm": Reference(30, 110, "stomach centroid anterior to the spleen's"),
    "liver_ml": Reference(900, 2700, "liver volume"),
    "spleen_ml": Reference(80, 500, "spleen volume"),
    "kidney_right_ml": Reference(90, 260, "right kidney volume"),
    "kidney_left_ml": Reference(90, 260, "left kidney volume"),
}


class _Points:
    """World coordinates (n, 3) mm of each named structure's voxels, computed on demand."""

    def __init__(self, labels: np.ndarray, affine: np.ndarray, names: Mapping[int, str]):
        self.labels, self.affine = labels, np.asarray(affine, float)
        self.by_name: dict[str, list[int]] = {}
        for value, name in names.items():
            group = next((g for g, members in GROUPS.items() if name in members), name)
            self.by_name.setdefault(group, []).append(int(value))
        present = np.zeros(int(labels.max()) + 1, bool)
        present[np.unique(labels)] = True
        self.present, self.objects = present, ndimage.find_objects(labels)
        self.voxel_ml = abs(float(np.linalg.det(self.affine[:3, :3]))) / 1000.0
        self._cache: dict[str, np.ndarray] = {}
        # slabs that touch the first or last slice along the world-z axis: an organ there is cut off
        self.z_axis = int(np.argmax(np.abs(self.affine[2, :3])))

    def __call__(self, name: str) -> np.ndarray:
        if name not in self._cache:
            chunks = []
            for v in self.by_name.get(name, []):
                if v < len(self.present) and self.present[v] and self.objects[v - 1] is not None:
                    sl = self.objects[v - 1]
                    idx = np.argwhere(self.labels[sl] == v) + [s.start for s in sl]
                    chunks.append(idx)
            idx = np.concatenate(chunks) if chunks else np.zeros((0, 3), int)
            self._cache[name] = idx @ self.affine[:3, :3].T + self.affine[:3, 3]
        return self._cache[name]

    def cut_off(self, name: str) -> bool:
        """True when the structure touches the volume's top or bottom slice (its extent is unknown)."""
        n = self.labels.shape[self.z_axis]
        values = self.by_name.get(name, [])
        first = np.take(self.labels, [0, n - 1], axis=self.z_axis)
        return bool(np.isin(first, values).any())


def _levels(pts: _Points) -> tuple[np.ndarray, np.ndarray] | None:
    """(z of vertebral-body centroids, level numbers with T12 = 0), ascending z; None without two levels."""
    zs, nums = [], []
    for i, lvl in enumerate(_LEVELS):
        p = pts(f"vertebrae_{lvl}")
        if len(p) and not pts.cut_off(f"vertebrae_{lvl}"):
            zs.append(float(p[:, 2].mean()))
            nums.append(float(i - _T12))
    if len(zs) < 2:
        return None
    order = np.argsort(zs)
    return np.asarray(zs)[order], np.asarray(nums)[order]


def level_of(z_mm: float, levels: tuple[np.ndarray, np.ndarray]) -> float:
    """Continuous vertebral level (T12 = 0) of height ``z_mm``, extrapolated linearly beyond the ends."""
    z, n = levels
    if z[0] <= z_mm <= z[-1]:
        return float(np.interp(z_mm, z, n))
    i = (0, 1) if z_mm < z[0] else (-2, -1)
    slope = (n[i[1]] - n[i[0]]) / (z[i[1]] - z[i[0]])
    return float(n[i[0]] + (z_mm - z[i[0]]) * slope)


def dome_heights(pts: _Points, spine_x: float) -> tuple[float | None, float | None]:
    """(right, left) hemidiaphragm dome heights (world z, mm), from the lung bases (see module doc)."""
    lung = np.concatenate([pts("lung_right"), pts("lung_left")])
    below = np.concatenate([pts(n) for n in _ABDOMINAL])
    if not len(lung) or not len(below):
        return None, None
    keys = np.floor(lung[:, :2] / _COLUMN_MM).astype(np.int64)
    lo = keys.min(axis=0)
    span = keys.max(axis=0) - lo + 1
    flat = (keys[:, 0] - lo[0]) * span[1] + (keys[:, 1] - lo[1])
    floor = np.full(int(span.prod()), np.inf)
    np.minimum.at(floor, flat, lung[:, 2])
    bk = np.floor(below[:, :2] / _COLUMN_MM).astype(np.int64) - lo
    ok = (bk >= 0).all(axis=1) & (bk < span).all(axis=1)
    bflat = bk[ok, 0] * span[1] + bk[ok, 1]
    bz = below[ok, 2]
    under = bz < floor[bflat]
    top_below = np.full_like(floor, -np.inf)
    np.maximum.at(top_below, bflat[under], bz[under])
    good = np.isfinite(floor) & (floor - top_below < 30.0)
    if not good.any():
        return None, None
    cx = (np.arange(int(span.prod())) // span[1] + lo[0] + 0.5) * _COLUMN_MM
    right = good & (cx > spine_x)
    left = good & (cx < spine_x)
    return (
        float(floor[right].max()) if right.any() else None,
        float(floor[left].max()) if left.any() else None,
    )


def _rib_number(pts: _Points, organ: str, side: str, within_mm: float = 10.0) -> float | None:
    """Mean rib number (1-12) of the ``side`` rib voxels within ``within_mm`` of ``organ`` (None: no rib near)."""
    values = pts.by_name.get(organ, [])
    boxes = [
        pts.objects[v - 1] for v in values if v - 1 < len(pts.objects) and pts.objects[v - 1] is not None
    ]
    if not boxes:
        return None
    spacing = np.linalg.norm(pts.affine[:3, :3], axis=0)
    pad = np.ceil(within_mm / spacing).astype(int) + 1
    sl = tuple(
        slice(max(min(b[d].start for b in boxes) - pad[d], 0), max(b[d].stop for b in boxes) + pad[d])
        for d in range(3)
    )
    crop = pts.labels[sl]
    near = ndimage.distance_transform_edt(~np.isin(crop, values), sampling=spacing) < within_mm
    ribs = {n: pts.by_name.get(f"rib_{side}_{n}", []) for n in range(1, 13)}
    counts = {n: int((near & np.isin(crop, v)).sum()) for n, v in ribs.items() if v}
    total = sum(counts.values())
    return sum(n * k for n, k in counts.items()) / total if total else None


def measure(labels: np.ndarray, affine: np.ndarray, names: Mapping[int, str]) -> dict[str, float | None]:
    """Every statistic of ``REFERENCE`` for one label map; ``None`` where it cannot be measured.

    Args:
        labels: integer label array (any axis order; the affine says where each voxel is).
        affine: voxel -> RAS+ world mm.
        names: label value -> structure name (TotalSegmentator v2 names; phantom structure names match).

    An organ cut off by the top or bottom slice has no top (or bottom) statistics; its volume is ``None`` too.
    """
    pts = _Points(np.asarray(labels), affine, names)
    out: dict[str, float | None] = dict.fromkeys(REFERENCE)
    organs = ("liver", "spleen", "kidney_right", "kidney_left", "stomach")
    c = {o: pts(o).mean(axis=0) if len(pts(o)) else None for o in organs}
    whole = {o: c[o] is not None and not pts.cut_off(o) for o in organs}
    top = {o: float(pts(o)[:, 2].max()) if whole[o] else None for o in organs}
    bottom = {o: float(pts(o)[:, 2].min()) if whole[o] else None for o in organs}

    def diff(a, b):
        return None if a is None or b is None else float(a - b)

    out["liver_top_above_kidney_right_top_mm"] = diff(top["liver"], top["kidney_right"])
    if c["spleen"] is not None and c["kidney_left"] is not None and whole["spleen"] and whole["kidney_left"]:
        out["spleen_above_kidney_left_mm"] = float(c["spleen"][2] - c["kidney_left"][2])
    out["kidney_left_top_above_right_top_mm"] = diff(top["kidney_left"], top["kidney_right"])
    spine = [pts(f"vertebrae_{v}") for v in ("T11", "T12", "L1", "L2")]
    spine = np.concatenate(spine)
    spine_x = float(spine[:, 0].mean()) if len(spine) else 0.0
    dome_r, dome_l = dome_heights(pts, spine_x)
    # a dome over an organ cut off by the top slice may itself lie above the volume: unknown
    dome_r = None if pts.cut_off("liver") else dome_r
    dome_l = None if pts.cut_off("spleen") else dome_l
    out["dome_right_above_left_mm"] = diff(dome_r, dome_l)
    out["liver_top_below_dome_mm"] = diff(dome_r, top["liver"])
    out["spleen_top_below_dome_mm"] = diff(dome_l, top["spleen"])
    levels = _levels(pts)
    if levels is not None:
        for key, z in (
            ("liver_top_level", top["liver"]),
            ("spleen_center_level", c["spleen"][2] if whole["spleen"] else None),
            ("kidney_right_top_level", top["kidney_right"]),
            ("kidney_right_bottom_level", bottom["kidney_right"]),
            ("kidney_left_top_level", top["kidney_left"]),
            ("kidney_left_bottom_level", bottom["kidney_left"]),
        ):
            out[key] = None if z is None else level_of(float(z), levels)
    t12 = pts("vertebrae_T12")
    if c["spleen"] is not None and len(t12):
        out["spleen_behind_spine_mm"] = float(t12[:, 1].mean() - c["spleen"][1])
        out["spleen_lateral_mm"] = float(spine_x - c["spleen"][0])
    out["spleen_rib_number"] = _rib_number(pts, "spleen", "left") if whole["spleen"] else None
    if all(c[o] is not None for o in ("stomach", "liver", "spleen")):
        out["stomach_between"] = float((c["stomach"][0] - c["spleen"][0]) / (c["liver"][0] - c["spleen"][0]))
        out["stomach_before_spleen_mm"] = float(c["stomach"][1] - c["spleen"][1])
    for o in ("liver", "spleen", "kidney_right", "kidney_left"):
        out[f"{o}_ml"] = len(pts(o)) * pts.voxel_ml if whole[o] else None
    return out


def inside(stats: Mapping[str, float | None]) -> dict[str, bool]:
    """Per measured statistic: does it fall inside its ``REFERENCE`` range?"""
    return {
        k: REFERENCE[k].lo <= v <= REFERENCE[k].hi
        for k, v in stats.items()
        if v is not None and k in REFERENCE
    }


def phantom_structure(
    seed: int | np.random.Generator,
    *,
    spacing_mm=4.0,
    fov: str | None = "whole",
    perirenal_fat: bool = False,
    variants: Variants | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A phantom's structure map (uint8, RAS array order, ids index ``STRUCTURES``) and its voxel -> RAS+ mm affine.

    The same patient as ``generate_phantom(seed, ...)``, without rendering the CT: what the anatomy statistics
    (``anatomy_stats``) need, at a fraction of the cost. ``fov="whole"`` (default) covers the whole modelled
    trunk (T6 to below the pelvis) so that no organ is cut off; any other value picks the grid
    ``generate_phantom`` would.
    """
    from organseg.phantom.anatomy import rasterize, sample_anatomy
    from organseg.phantom.dataset import (
        DEFAULT_MAX_VOXELS,
        build_scene,
        case_streams,
        check_options,
        draw_variants,
    )
    from organseg.phantom.fields import Grid

    whole = fov == "whole"
    check_options("random", "RAS", None if whole else fov)
    anat_rng, geom_rng, _, _, var_rng = case_streams(seed)
    draw = draw_variants(var_rng, variants)
    if not whole:
        scene = build_scene(
            anat_rng, geom_rng, spacing_mm, None, fov, DEFAULT_MAX_VOXELS, perirenal_fat, draw
        )
        grid, offset, structure = scene.grid, scene.world_offset_mm, scene.structure
    else:
        anatomy = sample_anatomy(anat_rng, perirenal_fat=perirenal_fat, variant=draw)
        spacing = tuple(float(v) for v in np.broadcast_to(np.asarray(spacing_mm, float), (3,)))
        z = np.linspace(anatomy.bottom_mm, anatomy.top_mm, 32)
        half_width, front, back, _ = anatomy.body.profile(z)
        y0, y1 = (
            anatomy.body.y_widest - float(back.max()) - 10,
            anatomy.body.y_widest + float(front.max()) + 10,
        )
        x0 = -float(half_width.max()) - 10
        dims = (
            int(np.ceil(-2 * x0 / spacing[0])) + 1,
            int(np.ceil((y1 - y0) / spacing[1])) + 1,
            int(np.ceil((anatomy.top_mm - anatomy.bottom_mm) / spacing[2])) + 1,
        )
        grid = Grid((x0, y0, anatomy.bottom_mm), spacing, dims)
        _, structure = rasterize(anatomy, grid)
        offset = np.zeros(3)
    affine = np.diag([*grid.spacing_mm, 1.0])
    affine[:3, 3] = np.asarray(grid.origin_mm) + offset
    return structure, affine


def measure_phantom(structure: np.ndarray, affine: np.ndarray) -> dict[str, float | None]:
    """``measure`` on a phantom's structure map (``Phantom.structure`` with the image's affine)."""
    from organseg.phantom.tissues import STRUCTURES

    return measure(structure, affine, dict(enumerate(STRUCTURES)))


__all__ = [
    "REFERENCE",
    "Reference",
    "dome_heights",
    "inside",
    "level_of",
    "measure",
    "measure_phantom",
    "phantom_structure",
]
