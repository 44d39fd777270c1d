"""Diaphragm dome, lung bases, heart and oesophagus: the top of an abdominal CT.

The diaphragm is the upper envelope of two paraboloid domes (the right one higher, over the liver),
falling steeply towards the back (posterior costophrenic recesses) and gently towards the front.
Everything inside the body wall above it is lung, except what outranks lung (heart, aorta, bones).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from organseg.phantom.body import Body
from organseg.phantom.canvas import Canvas
from organseg.phantom.fields import (
    SmoothField,
    box_around,
    ellipsoid,
    ellipsoid_half_extent,
    local_coords,
    shrink_box,
    smooth_polyline,
)
from organseg.phantom.skeleton import Skeleton
from organseg.phantom.tissues import Tissue, sid


@dataclass(frozen=True)
class Dome:
    """Diaphragm: right, left and central-tendon peaks (x, y, z) mm; curvatures (1/mm) sideways, front, back."""

    right_peak: np.ndarray
    left_peak: np.ndarray
    center_peak: np.ndarray
    k_side: float
    k_front: float
    k_back: float
    thickness_mm: float

    def height(self, x, y):
        """z of the diaphragm's upper surface above (x, y); broadcasts."""
        out = None
        for p in (self.right_peak, self.left_peak, self.center_peak):
            dy = y - np.float32(p[1])
            k_y = np.where(dy > 0, np.float32(self.k_front), np.float32(self.k_back))
            h = np.float32(p[2]) - np.float32(self.k_side) * (x - np.float32(p[0])) ** 2 - k_y * dy * dy
            out = h if out is None else np.maximum(out, h)
        return out


@dataclass(frozen=True)
class Thorax:
    """Above the diaphragm: heart (centre, axes, semi-axes mm), lung vessel field, oesophagus path (mm)."""

    dome: Dome
    heart_center: np.ndarray
    heart_axes: np.ndarray
    heart_size: tuple[float, float, float]
    myocardium_mm: float
    epicardial_fat_mm: float
    lung_vessels: SmoothField
    lung_vessel_width: float
    esophagus: np.ndarray
    esophagus_radius: float
    esophagus_gas: bool


def sample_dome(rng: np.random.Generator, sk: Skeleton, body: Body) -> Dome:
    """Peaks near T9-T10 (right) and 1-2 cm lower (left); recess depths (mm) set at the body wall."""
    u = rng.uniform
    # breath-hold depth moves the dome several cm; the right dome's peak sits near T9-T10 on CT (inspiration;
    # s0011: ~20 mm above T10), high enough for the liver's top to lie 90-135 mm above the right kidney's
    # (bench_anatomy.py: real label maps)
    z_right = sk.z("T10") + u(15, 45)
    right = np.array([u(40, 70), u(0, 30), z_right])
    side = body.inner_half_width(z_right - 40) - right[0]
    front = body.wall_point(z_right - 40, 180, 1.0)[1] - right[1]
    back = right[1] + 90  # the posterior recess bottoms out at the back wall, ~9 cm behind the spine
    return Dome(
        right_peak=right,
        left_peak=np.array([-u(40, 70), u(-5, 25), z_right - u(10, 30)]),
        # the central tendon under the heart: a lower, more anterior peak between the two domes
        center_peak=np.array([-u(0, 20), u(35, 60), z_right - u(15, 30)]),
        k_side=float(u(25, 50) / max(side, 30) ** 2),
        k_front=float(u(20, 45) / max(front, 40) ** 2),
        k_back=float(u(45, 75) / max(back, 40) ** 2),
        thickness_mm=float(u(3, 6)),
    )


def sample_thorax(rng: np.random.Generator, sk: Skeleton, dome: Dome, top_mm: float) -> Thorax:
    """Heart on the central tendon, lung vessels up to ``top_mm``, and the oesophagus down to the cardia."""
    size = tuple(float(v) for v in rng.uniform([45, 38, 42], [60, 50, 55]))
    xy = np.array([-rng.uniform(10, 35), rng.uniform(45, 75)])
    apex = np.array([-0.55, 0.6, -0.55]) + rng.normal(0, 0.1, 3)
    apex /= np.linalg.norm(apex)
    u = np.cross([0.0, 0.0, 1.0], apex)
    u /= np.linalg.norm(u)
    axes = np.stack([apex, u, np.cross(apex, u)], axis=1)
    # the heart rests on the central tendon: its lowest point at the dome
    half_z = ellipsoid_half_extent(axes, size)[2]
    center = np.array([*xy, float(dome.height(xy[0], xy[1])) + half_z * rng.uniform(0.95, 1.05)])
    lo = np.array([-200.0, -150.0, float(dome.height(0, -120)) - 20])
    hi = np.array([200.0, 200.0, top_mm + 20])
    cx, cy = sk.center(top_mm)
    z_gej = dome.left_peak[2] - rng.uniform(15, 35)
    esophagus = np.array(
        [
            [cx - rng.uniform(0, 10), cy + sk.ry("T8") + rng.uniform(15, 25), top_mm + 20],
            [cx - rng.uniform(5, 15), cy + sk.ry("T10") + rng.uniform(18, 30), sk.z("T10")],
            [-rng.uniform(20, 35), rng.uniform(25, 40), z_gej],
        ]
    )
    return Thorax(
        dome=dome,
        heart_center=center,
        heart_axes=axes,
        heart_size=size,
        myocardium_mm=float(rng.uniform(8, 14)),
        epicardial_fat_mm=float(rng.uniform(2, 9)),
        lung_vessels=SmoothField.random(rng, lo, hi, float(rng.uniform(5, 8)), k=2),
        lung_vessel_width=float(rng.uniform(0.18, 0.3)),
        esophagus=esophagus,
        esophagus_radius=float(rng.uniform(7, 10)),
        esophagus_gas=bool(rng.random() < 0.3),
    )


def paint_thorax(canvas: Canvas, th: Thorax) -> None:
    grid = canvas.grid
    full = grid.full()
    dome = th.dome
    h = dome.height(full.x1[:, None], full.y1[None, :])  # (nx, ny)
    z_lo = float(h.min()) - dome.thickness_mm - 1
    box = grid.box([-1e6, -1e6, z_lo], [1e6, 1e6, 1e6])
    if box is not None:
        hb = h[:, :, None]
        above = box.Z > hb
        canvas.paint(box, above & (box.X > 0), "lung_right", Tissue.LUNG)
        canvas.paint(box, above & (box.X <= 0), "lung_left", Tissue.LUNG)
        canvas.paint(box, (box.Z <= hb) & (box.Z > hb - dome.thickness_mm), "diaphragm", Tissue.MUSCLE)
        _paint_lung_vessels(canvas, th, box)
    _paint_heart(canvas, th)
    tissue_core = Tissue.GAS if th.esophagus_gas else Tissue.GI_WALL
    path = smooth_polyline(th.esophagus, 2)
    canvas.tube(
        path, np.full(len(path), th.esophagus_radius), "esophagus", Tissue.GI_WALL, core=(0.4, tissue_core)
    )


def _paint_lung_vessels(canvas: Canvas, th: Thorax, box) -> None:
    s = canvas.structure[box.slices]
    sub = shrink_box(box, (s == sid("lung_right")) | (s == sid("lung_left")))
    if sub is None:
        return
    f = th.lung_vessels(sub)
    vessel = f[0] ** 2 + f[1] ** 2 < np.float32(th.lung_vessel_width**2)
    canvas.retint(sub, vessel, "lung_right", Tissue.LUNG_VESSEL)
    canvas.retint(sub, vessel, "lung_left", Tissue.LUNG_VESSEL)


def _paint_heart(canvas: Canvas, th: Thorax) -> None:
    a, b, c = th.heart_size
    fat = th.epicardial_fat_mm
    box = box_around(canvas.grid, th.heart_center, max(th.heart_size) + fat + 2)
    if box is None:
        return
    u, v, w = local_coords(box, th.heart_center, th.heart_axes)
    canvas.paint(box, ellipsoid(u, v, w, a + fat, b + fat, c + fat) < 1, "pericardium", Tissue.VISCERAL_FAT)
    canvas.paint(box, ellipsoid(u, v, w, a, b, c) < 1, "heart", Tissue.MYOCARDIUM)
    t = th.myocardium_mm
    chambers = (ellipsoid(u, v, w, a - t, b - t, c - t) < 1) & (np.abs(v + 0.15 * b) > 0.5 * t)  # septum
    canvas.retint(box, chambers, "heart", Tissue.CARDIAC_BLOOD)
