"""Hollow organs (stomach, duodenum, colon, small-bowel loops, urinary bladder) and the pancreas.

Stomach, duodenum and colon are tubes along randomized paths (colon with haustra), with a wall and
a lumen holding fluid or stool and gas; gas sits anteriorly (the patient lies supine). Small-bowel
loops fill the free peritoneal cavity: they are the voxels near the zero-crossing curves of two
smooth random fields (``f1 ** 2 + f2 ** 2 < T ** 2`` traces tubes), thinned where a third field says
"mesenteric fat" - more fat in heavier patients. Thin vessels run through all torso fat.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from statistics import NormalDist

import numpy as np

from organseg.phantom.body import Body
from organseg.phantom.canvas import Canvas
from organseg.phantom.fields import (
    SmoothField,
    box_around,
    ellipsoid,
    resample_polyline,
    shrink_box,
    smooth_polyline,
)
from organseg.phantom.organs import Organ
from organseg.phantom.skeleton import Skeleton
from organseg.phantom.thorax import Dome
from organseg.phantom.tissues import Tissue, sid


@dataclass(frozen=True)
class Gut:
    """Hollow organs: tube paths ``(m, 4)`` = x, y, z, radius (mm), contents fields, small-bowel fields, bladder."""

    stomach: np.ndarray  # (m, 4): x, y, z, radius
    stomach_wall_mm: float
    stomach_gas_y: float
    duodenum: np.ndarray
    colon: np.ndarray
    haustra_mm: float
    colon_contents: SmoothField
    colon_gas: float
    bowel_box: tuple[np.ndarray, np.ndarray]
    bowel_fields: SmoothField
    bowel_width: float
    bowel_fat: float
    bowel_gas: float
    bladder: tuple[np.ndarray, tuple[float, float, float]] | None
    mesentery: SmoothField
    mesentery_width: float
    colon_fluid: bool = False  # colon lumen holds fluid (``Tissue.BOWEL_CONTENT``) instead of stool


def sample_gut(rng: np.random.Generator, sk: Skeleton, body: Body, dome: Dome, spleen: Organ) -> Gut:
    """Stomach (fundus under the left dome, between liver and spleen, in front of the spleen), duodenum, colon,
    small-bowel loops, bladder and mesenteric vessels for one patient."""
    u = rng.uniform
    z_l1, z_l2, z_l3, z_s1 = sk.z("L1"), sk.z("L2"), sk.z("L3"), sk.z("S1")
    distension = u(0.6, 1.25)
    # between the liver and the spleen, in front of the spleen: real stomachs' centroids lie ~80-90 mm anterior
    # to the spleen's and ~110 mm in front of the spine (TotalSegmentator maps; bench_anatomy.py)
    stomach = np.array(
        [
            [-u(40, 65), u(25, 50), dome.left_peak[2] - u(22, 35), u(28, 42) * distension],
            [-u(45, 65), u(70, 100), sk.z("T12") + u(-10, 10), u(25, 38) * distension],
            [-u(25, 45), u(85, 110), z_l1 + u(-15, 10), u(22, 32) * distension],
            [-u(0, 20), u(75, 100), z_l1 + u(-25, 0), u(15, 24) * distension],
            [u(15, 32), u(40, 60), z_l1 + u(-15, 10), u(8, 12)],
        ]
    )
    # the fundus lies against the spleen's gastric surface, anteromedial to it (real maps: its upper slices
    # 40-50 mm in front of the spleen's centroid), never behind it
    stomach[0, 1] = max(stomach[0, 1], spleen.center[1] + 40.0)
    for point in stomach[:4]:  # inside the anterior wall however thin the patient
        point[1] = min(point[1], body.wall_point(point[2], 180, 1.0)[1] - 0.6 * point[3])
    y_lo, y_hi = (stomach[:, 1] - stomach[:, 3]).min(), (stomach[:, 1] + stomach[:, 3]).max()
    duodenum = np.array(
        [
            stomach[-1, :3].tolist() + [u(9, 12)],
            [u(25, 40), u(20, 40), z_l1 + u(-10, 5), u(11, 15)],
            [u(38, 55), u(0, 25), z_l2 - u(0, 20), u(10, 14)],
            [u(-5, 10), u(10, 30), z_l3 + u(-10, 10), u(10, 14)],
            [-u(15, 30), u(25, 40), z_l2 + u(-5, 10), u(10, 13)],
        ]
    )

    def lateral(z, r, side, slack):
        return side * (body.inner_half_width(z) - r - slack)

    r_asc, r_tr, r_desc = u(22, 32), u(18, 28), u(15, 22)
    front = lambda z, r: body.wall_point(z, 180, 1.0)[1] - r - u(5, 25)  # noqa: E731
    z_tr = z_l2 + u(-35, 10)
    colon = np.array(
        [
            [u(40, 65), u(20, 50), z_s1 + u(-10, 25), r_asc],
            [lateral(z_l3, r_asc, 1, u(0, 15)), u(0, 30), z_l3, r_asc],
            [lateral(z_l1 - 20, r_asc, 1, u(10, 30)), u(30, 60), z_l1 - u(10, 30), r_tr],
            [u(10, 30), min(front(z_tr, r_tr), u(60, 110)), z_tr, r_tr],
            [-u(10, 30), min(front(z_tr, r_tr), u(60, 100)), z_tr + u(-10, 15), r_tr],
            [lateral(sk.z("T12"), r_tr, -1, u(15, 35)), u(10, 40), sk.z("T12") + u(-25, 5), r_tr],
            [lateral(z_l3, r_desc, -1, u(0, 10)), u(-10, 20), z_l3, r_desc],
            [-u(30, 50), u(20, 50), z_s1 - u(20, 40), u(14, 20)],
            [0, sk.center(z_s1)[1] + u(-5, 15), z_s1 - u(70, 100), u(14, 20)],
        ]
    )
    cavity = (np.array([-260.0, -120.0, z_s1 - 140]), np.array([260.0, 260.0, dome.right_peak[2]]))
    lo = np.array([-body.inner_half_width(z_l3), 5.0, z_s1 - 110])
    hi = np.array([body.inner_half_width(z_l3), body.wall_point(z_l3, 180, 1.0)[1], z_l1 - 5])
    bladder = None
    if rng.random() < 0.8:
        fill = u(0.6, 1.3)
        bladder = (
            np.array([0, sk.center(z_s1)[1] + u(55, 80), z_s1 - u(65, 95)]),
            tuple(fill * rng.uniform([30, 25, 25], [50, 40, 40])),
        )
    return Gut(
        stomach=stomach,
        stomach_wall_mm=u(3, 6) / distension,
        stomach_gas_y=float(y_lo + (y_hi - y_lo) * u(0.45, 1.05)),
        duodenum=duodenum,
        colon=colon,
        haustra_mm=u(25, 40),
        colon_contents=SmoothField.random(rng, colon[:, :3].min(0) - 40, colon[:, :3].max(0) + 40, u(6, 10)),
        colon_gas=u(-0.5, 1.5),
        bowel_box=(lo, hi),
        bowel_fields=SmoothField.random(rng, lo, hi, u(14, 20), k=4),
        bowel_width=u(0.8, 1.1),
        bowel_fat=body.visceral_fat,
        bowel_gas=u(0.8, 2.5),
        bladder=bladder,
        mesentery=SmoothField.random(rng, *cavity, u(8, 14), k=2),
        mesentery_width=u(0.1, 0.2),
    )


def with_fluid_bowel(gut: Gut, sk: Skeleton, fluid: dict | None) -> Gut:
    """``gut`` with the ``fluid_bowel`` variant (``variants.Draw.fluid_bowel``): fluid colon, hardly any gas,
    wide loops with little fat between them, from ``top_mm`` above L1 down (they fill only fat, never an organ)."""
    if fluid is None:
        return gut
    lo, hi = gut.bowel_box
    hi = np.array(hi, float)
    hi[2] = max(hi[2], sk.z("L1") + fluid["top_mm"])
    return replace(
        gut,
        colon_fluid=True,
        colon_gas=fluid["gas"],
        bowel_gas=fluid["gas"],
        bowel_fat=min(gut.bowel_fat, fluid["fat"]),
        bowel_width=fluid["width"],
        bowel_box=(lo, hi),
    )


def _tube_with_lumen(canvas: Canvas, path: np.ndarray, structure: str, wall_mm: float, lumen, haustra_mm=0.0):
    p = smooth_polyline(path, 2)
    core = max(0.2, 1 - wall_mm / float(np.mean(p[:, 3])))
    ripple = (haustra_mm, 0.12) if haustra_mm else None
    canvas.tube(p[:, :3], p[:, 3], structure, Tissue.GI_WALL, core=(core, lumen), ripple=ripple)


def paint_gut(canvas: Canvas, gut: Gut) -> None:
    gas_y = np.float32(gut.stomach_gas_y)

    def stomach_lumen(box, ok):
        return np.where(box.Y > gas_y, np.uint8(Tissue.GAS), np.uint8(Tissue.STOMACH_CONTENT))

    _tube_with_lumen(canvas, gut.stomach, "stomach", gut.stomach_wall_mm, stomach_lumen)
    _tube_with_lumen(canvas, gut.duodenum, "duodenum", 2.5, Tissue.BOWEL_CONTENT)

    content = np.uint8(Tissue.BOWEL_CONTENT if gut.colon_fluid else Tissue.STOOL)

    def colon_lumen(box, ok):
        gas = gut.colon_contents(box) + np.float32(0.02) * box.Y > np.float32(gut.colon_gas)
        return np.where(gas, np.uint8(Tissue.GAS), content)

    _tube_with_lumen(canvas, gut.colon, "colon", 2.5, colon_lumen, haustra_mm=gut.haustra_mm)
    _paint_small_bowel(canvas, gut)
    _paint_fat_vessels(canvas, gut)
    if gut.bladder is not None:
        center, (a, b, c) = gut.bladder
        box = box_around(canvas.grid, center, max(a, b, c) + 1)
        if box is not None:
            e = ellipsoid(box.X - center[0], box.Y - center[1], box.Z - center[2], a, b, c)
            canvas.paint(box, e < 1, "urinary_bladder", Tissue.GI_WALL)
            canvas.retint(
                box,
                ellipsoid(box.X - center[0], box.Y - center[1], box.Z - center[2], a - 3, b - 3, c - 3) < 1,
                "urinary_bladder",
                Tissue.BLADDER_URINE,
            )


def _paint_small_bowel(canvas: Canvas, gut: Gut) -> None:
    box = canvas.grid.box(*gut.bowel_box)
    if box is None:
        return
    free = canvas.structure[box.slices] == sid("torso_fat")  # loops only displace fat
    if not free.any():
        return
    f = gut.bowel_fields(box)
    g = f[0] ** 2 + f[1] ** 2
    width = np.float32(gut.bowel_width)
    # fat fraction: a smooth "mesentery" field thresholded at a quantile set by visceral fat
    dense = f[2] > np.float32(_normal_quantile(0.8 * gut.bowel_fat))
    loops = (g < width**2) & dense & free
    canvas.paint(box, loops, "small_bowel", Tissue.GI_WALL)
    gas = f[3] + np.float32(0.015) * box.Y > np.float32(gut.bowel_gas)
    lumen = np.where(gas, np.uint8(Tissue.GAS), np.uint8(Tissue.BOWEL_CONTENT))
    canvas.retint(box, g < (0.6 * width) ** 2, "small_bowel", lumen)


def _paint_fat_vessels(canvas: Canvas, gut: Gut) -> None:
    """Small mesenteric and retroperitoneal vessels: thin tubes through the torso fat (tissue only)."""
    box = canvas.grid.box(gut.mesentery.origin_mm, np.array(gut.mesentery.origin_mm) + 1e4)
    if box is None:
        return
    sub = shrink_box(box, canvas.structure[box.slices] == sid("torso_fat"))
    if sub is None:
        return
    f = gut.mesentery(sub)
    canvas.retint(
        sub, f[0] ** 2 + f[1] ** 2 < np.float32(gut.mesentery_width**2), "torso_fat", Tissue.PORTAL_BLOOD
    )


def _normal_quantile(p: float) -> float:
    return NormalDist().inv_cdf(float(np.clip(p, 0.001, 0.999)))


def sample_pancreas(rng: np.random.Generator, sk: Skeleton, spleen: Organ) -> dict:
    """Head at L2 by the duodenum, neck and body over the spine at L1, tail to the splenic hilum.

    Returns ``{"points": (4, 3) mm, "radii": (4,) mm, "lobulation": (12,)}``.
    """
    hilum = spleen.to_patient([spleen.shape["a"], 0, 0])
    body_pt = np.array([-rng.uniform(20, 40), rng.uniform(45, 62), sk.z("L1") + rng.uniform(-5, 12)])
    pts = np.array(
        [
            [rng.uniform(22, 38), rng.uniform(35, 50), sk.z("L2") + rng.uniform(-5, 10)],
            [rng.uniform(0, 12), rng.uniform(55, 72), sk.z("L1") + rng.uniform(-15, 0)],
            body_pt,
            hilum + (body_pt - hilum) * rng.uniform(0.12, 0.3),
        ]
    )
    atrophy = rng.uniform(0.75, 1.1)
    radii = (
        np.array([rng.uniform(13, 19), rng.uniform(8, 11), rng.uniform(8, 12), rng.uniform(7, 10)]) * atrophy
    )
    return {"points": pts, "radii": radii, "lobulation": rng.uniform(0.85, 1.15, size=12)}


def paint_pancreas(canvas: Canvas, pancreas: dict) -> None:
    path = smooth_polyline(np.column_stack([pancreas["points"], pancreas["radii"]]), 3)
    pts, radii, _ = resample_polyline(path[:, :3], path[:, 3], 10.0)
    lob = np.interp(
        np.linspace(0, 1, len(radii)), np.linspace(0, 1, len(pancreas["lobulation"])), pancreas["lobulation"]
    )
    canvas.tube(pts, radii * lob, "pancreas", Tissue.PANCREAS)
