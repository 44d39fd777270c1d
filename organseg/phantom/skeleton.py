"""Spine (vertebral bodies, discs, arches, processes, canal), ribs with costal cartilages, sternum, pelvis.

Vertebral levels anchor every other structure: the patient frame's origin is the centre of the L1
body, and organs are placed relative to levels (kidney hilum near L1, aortic bifurcation at L4). Bone
is painted as a cortical shell (bright) around cancellous bone; thin processes are cortical only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from organseg.phantom.canvas import Canvas
from organseg.phantom.fields import box_around, ellipsoid, local_coords, rotation, smooth_polyline
from organseg.phantom.tissues import RIB_NUMBERS, VERTEBRAE, Tissue

LEVELS: tuple[str, ...] = VERTEBRAE + ("S1",)
# Ribs fall steeply along their course: at the posterior axillary line ribs 9-11 lie 1.5-2.5 vertebral levels below
# their heads and rib 10 ends near L2 (TotalSegmentator s0011, both sides; bench_anatomy.py), so the spleen lies
# against ribs 9-11. Height (mm) a rib falls from its angle to its tip (linear in the angle around the body) ...
_RIB_DROP = {6: 120, 7: 130, 8: 135, 9: 125, 10: 130, 11: 95, 12: 45}
# ... and the lower ribs' extra fall between the tubercle and the angle (mm)
_RIB_NECK = {9: 10, 10: 20, 11: 28, 12: 32}
_RIB_END = {6: 168, 7: 160, 8: 150, 9: 140, 10: 128, 11: 105, 12: 78}  # tip angle, deg from posterior
# tip -> (x, rise) mm: the cartilages of ribs 6-7 climb back to the sternum, those of 8-10 make the costal margin
_CARTILAGE = {6: (12, 45), 7: (22, 60), 8: (40, 30), 9: (56, 36), 10: (70, 40)}


@dataclass(frozen=True)
class Skeleton:
    """Per-level geometry (mm, patient frame). Arrays are indexed like ``LEVELS`` (T6 ... L5, S1)."""

    z_mm: np.ndarray
    height_mm: np.ndarray
    rx_mm: np.ndarray
    ry_mm: np.ndarray
    canal_mm: float
    arch_mm: float
    spinous_mm: np.ndarray
    transverse_mm: np.ndarray
    curve_z: np.ndarray
    curve_x: np.ndarray
    curve_y: np.ndarray
    cortex_mm: float
    rib_radius_mm: float
    rib_jitter: np.ndarray
    pelvis: dict = field(default_factory=dict)

    def index(self, level: str) -> int:
        return LEVELS.index(level)

    def z(self, level: str) -> float:
        return float(self.z_mm[self.index(level)])

    def rx(self, level: str) -> float:
        return float(self.rx_mm[self.index(level)])

    def ry(self, level: str) -> float:
        return float(self.ry_mm[self.index(level)])

    def level_z(self, level: float) -> float:
        """z (mm) of a continuous vertebral level, T12 = 0, L1 = 1, T11 = -1 (``anatomy_stats``' convention)."""
        return float(np.interp(LEVELS.index("T12") + level, np.arange(len(LEVELS)), self.z_mm))

    def center(self, z: float) -> tuple[float, float]:
        """(x, y) of the vertebral-body centre line at height ``z``."""
        return float(np.interp(z, self.curve_z, self.curve_x)), float(
            np.interp(z, self.curve_z, self.curve_y)
        )


def sample_skeleton(rng: np.random.Generator) -> Skeleton:
    """Draw T6-S1: body heights, disc gaps and widths (mm), the spine's sagittal curve, ribs and pelvis.

    The L1 body's centre is the patient frame's origin; the other levels stack from it with their discs.
    """
    n_t, n_l = 7, 5
    scale = rng.uniform(0.9, 1.1)
    # T6-T12 centroids 25-31 mm apart, L1-L5 31-37 mm (TotalSegmentator maps; bench_anatomy.py)
    height = np.concatenate([np.linspace(18.5, 24.5, n_t), np.linspace(26, 29, n_l), [30]]) * scale
    height *= rng.uniform(0.96, 1.04, size=height.shape)
    disc = np.concatenate([np.linspace(4.5, 6.5, n_t), np.linspace(8, 12, n_l), [0]]) * scale
    # centres: L1 at z = 0, levels stacked upward and downward with the disc below each level
    z = np.zeros(len(LEVELS))
    i1 = LEVELS.index("L1")
    for i in range(i1 - 1, -1, -1):
        z[i] = z[i + 1] + height[i + 1] / 2 + disc[i] + height[i] / 2
    for i in range(i1 + 1, len(LEVELS)):
        z[i] = z[i - 1] - height[i - 1] / 2 - disc[i - 1] - height[i] / 2
    size = rng.uniform(0.9, 1.1)
    rx = np.concatenate([np.linspace(15, 20, n_t), np.linspace(21, 25, n_l), [24]]) * size
    ry = np.concatenate([np.linspace(13, 15, n_t), np.linspace(15.5, 17, n_l), [16]]) * size
    curve_z = np.array(
        [
            z[-1] - 60,
            z[-1],
            z[LEVELS.index("L4")],
            z[LEVELS.index("L2")],
            z[i1],
            z[LEVELS.index("T10")],
            z[0] + 40,
        ]
    )
    curve_y = np.array([-45, -12, 10, 8, 0, -12, -30]) * rng.uniform(0.6, 1.4)
    curve_y[4] = 0.0
    curve_x = rng.normal(0, 3, size=curve_z.shape)
    curve_x[4] = 0.0
    sacrum = {
        "tilt_deg": float(rng.uniform(30, 50)),
        "half_width": float(rng.uniform(45, 55)),
        "half_depth": float(rng.uniform(15, 21)),
        "half_length": float(rng.uniform(50, 60)),
    }
    ilium = {
        "x": float(rng.uniform(55, 75)),  # middle of the wing, mm from the midline
        "y": float(rng.uniform(5, 30)),  # ... and in front of the S1 body
        "angle_deg": float(rng.uniform(45, 65)),  # wing direction in the axial plane, from the x axis
        "half_length": float(rng.uniform(65, 85)),  # half the crest, SI joint to ASIS
        "above": float(rng.uniform(30, 45)),  # crest above the wing's middle
        "below": float(rng.uniform(55, 75)),  # acetabulum roof below it
        "bow": float(rng.uniform(0.002, 0.005)),  # concave towards the pelvis (1/mm)
        "thickness": float(rng.uniform(7, 12)),
        "crest": float(z[LEVELS.index("L4")] + rng.uniform(-12, 10)),
    }
    return Skeleton(
        z_mm=z,
        height_mm=height,
        rx_mm=rx,
        ry_mm=ry,
        canal_mm=float(rng.uniform(8, 10.5)),
        arch_mm=float(rng.uniform(5, 8)),
        spinous_mm=np.concatenate([np.linspace(38, 34, n_t), np.linspace(33, 28, n_l), [18]])
        * rng.uniform(0.85, 1.15),
        transverse_mm=np.concatenate([np.full(n_t, 22.0), [18, 24, 30, 26, 22], [0]])
        * rng.uniform(0.85, 1.15),
        curve_z=curve_z,
        curve_x=curve_x,
        curve_y=curve_y,
        cortex_mm=float(rng.uniform(1.2, 2.2)),
        rib_radius_mm=float(rng.uniform(4.5, 6.5)),
        rib_jitter=rng.uniform(0.85, 1.15, size=(2, len(RIB_NUMBERS), 3)),
        pelvis={"sacrum": sacrum, "ilium": ilium},
    )


def paint_spine(canvas: Canvas, sk: Skeleton) -> None:
    for i, level in enumerate(LEVELS[:-1]):
        _paint_vertebra(canvas, sk, i, level)
    _paint_sacrum(canvas, sk)


def _paint_vertebra(canvas: Canvas, sk: Skeleton, i: int, level: str) -> None:
    zc, h = float(sk.z_mm[i]), float(sk.height_mm[i])
    xc, yc = sk.center(zc)
    rx, ry, rc, arch, t = float(sk.rx_mm[i]), float(sk.ry_mm[i]), sk.canal_mm, sk.arch_mm, sk.cortex_mm
    thoracic = level.startswith("T")
    gap_below = float(sk.z_mm[i] - sk.z_mm[i + 1] - sk.height_mm[i] / 2 - sk.height_mm[i + 1] / 2)
    reach = rc * 2 + arch + float(sk.spinous_mm[i]) + ry + 5
    box = canvas.grid.box(
        [xc - rx - float(sk.transverse_mm[i]) - rc - 10, yc - reach, zc - h / 2 - gap_below - 25],
        [xc + rx + float(sk.transverse_mm[i]) + rc + 10, yc + ry + 2, zc + h / 2 + 2],
    )
    if box is None:
        return
    name = f"vertebrae_{level}"
    dx, dy, dz = box.X - xc, box.Y - yc, box.Z - zc
    waist = 1 - 0.08 * (1 - np.clip((2 * dz / h) ** 2, 0, 1))
    ry_side = np.where(dy > 0, ry, 0.85 * ry)
    e_out = (dx / (rx * waist)) ** 2 + (dy / ry_side) ** 2
    e_in = (dx / (rx * waist - t)) ** 2 + (dy / (ry_side - t)) ** 2
    body = (e_out < 1) & (np.abs(dz) < h / 2)
    canvas.paint(box, body, name, Tissue.BONE_CORTICAL)
    canvas.retint(box, (e_in < 1) & (np.abs(dz) < h / 2 - t), name, Tissue.BONE_CANCELLOUS)
    disc = (e_out < 1) & (dz < -h / 2) & (dz > -h / 2 - gap_below)
    canvas.paint(box, disc, "intervertebral_discs", Tissue.DISC)
    # canal (cord + CSF) through the full level, ring-shaped arch behind it, then the processes
    ycan = -0.85 * ry - rc - 1.0
    dcan = np.sqrt(dx**2 + (dy - ycan) ** 2)
    level_span = (dz < h / 2 + 3) & (dz > -h / 2 - gap_below - 3)
    canvas.paint(box, (dcan < rc) & level_span, "spinal_cord", Tissue.CSF)
    arch_z = np.abs(dz) < h / 2 - 1
    # the arch: pedicles from the body, laminae behind the canal (a ring; its front merges with the body)
    ring = (dcan >= rc) & (dcan < rc + arch) & arch_z
    ring_core = (dcan >= rc + 1.5) & (dcan < rc + arch - 1.5) & arch_z
    sp_slope = 0.7 if thoracic else 0.15
    depth = ycan - rc - dy  # mm behind the canal's posterior edge
    sp_z = np.abs(dz + sp_slope * depth)
    sp_len = float(sk.spinous_mm[i])
    sp_half = 7 if thoracic else 10
    spinous = (np.abs(dx) < 3.5) & (depth > 0) & (depth < sp_len) & (sp_z < sp_half)
    spinous_core = (np.abs(dx) < 2.0) & (depth > 0) & (depth < sp_len - 1.5) & (sp_z < sp_half - 1.5)
    lateral = np.abs(dx) - rc - arch / 2
    tp_slope = 0.6 if thoracic else 0.1
    tp_y = np.abs(dy - ycan - 2 + tp_slope * lateral)
    tp_len = float(sk.transverse_mm[i])
    transverse = (lateral > -2) & (lateral < tp_len) & (tp_y < 4.5) & (np.abs(dz) < 6)
    transverse_core = (lateral > 0) & (lateral < tp_len - 1.5) & (tp_y < 3.0) & (np.abs(dz) < 4.5)
    canvas.paint(box, ring | spinous | transverse, name, Tissue.BONE_CORTICAL)
    canvas.retint(box, ring_core | spinous_core | transverse_core, name, Tissue.BONE_CANCELLOUS)


def _paint_sacrum(canvas: Canvas, sk: Skeleton) -> None:
    p = sk.pelvis["sacrum"]
    top = sk.z("S1") + sk.height_mm[-1] / 2
    xc, yc = sk.center(sk.z("S1"))
    axes = rotation(rx_deg=p["tilt_deg"])
    center = np.array([xc, yc - 5, top]) + axes @ np.array([0, 0, -p["half_length"]])
    box = box_around(canvas.grid, center, p["half_width"] + p["half_length"])
    if box is None:
        return
    u, v, w = local_coords(box, center, axes)
    taper = 0.45 + 0.55 * np.clip((w / p["half_length"] + 1) / 2, 0, 1)
    e = ellipsoid(u / taper, v, w, p["half_width"], p["half_depth"], p["half_length"])
    e_in = ellipsoid(u / taper, v, w, p["half_width"] - 3, p["half_depth"] - 2.5, p["half_length"] - 3)
    canvas.paint(box, e < 1, "sacrum", Tissue.BONE_CORTICAL)
    canvas.retint(box, e_in < 1, "sacrum", Tissue.BONE_CANCELLOUS)


def paint_ilium(canvas: Canvas, sk: Skeleton) -> None:
    """Iliac wings: curved fan-shaped plates from the sacroiliac joint to the anterior superior spine."""
    p = sk.pelvis["ilium"]
    _, yc = sk.center(sk.z("S1"))
    a = np.deg2rad(p["angle_deg"])
    length, above, below, t = p["half_length"], p["above"], p["below"], p["thickness"]
    for side in (1.0, -1.0):
        center = np.array([side * p["x"], yc + p["y"], p["crest"] - above])
        along = np.array([side * np.cos(a), np.sin(a), 0.0])  # posteromedial -> anterolateral
        normal = np.array([side * np.sin(a), -np.cos(a), 0.0])  # outward (gluteal) surface
        box = canvas.grid.box(
            center - [length + t, length + t, below], center + [length + t, length + t, above + 2]
        )
        if box is None:
            continue
        axes = np.stack([along, normal, [0.0, 0.0, 1.0]], axis=1)
        s_, n, h = local_coords(box, center, axes)
        offset = np.abs(n + p["bow"] * s_ * s_)  # distance from the bowed mid-surface
        crest = above * np.sqrt(np.clip(1 - (s_ / length) ** 2, 0, 1))
        width = length * (
            0.25 + 0.75 * np.clip((h + below) / (below + above), 0, 1)
        )  # narrows to the acetabulum
        fan = (
            (h < crest)
            & (h > -below)
            & (np.abs(s_ + 0.2 * length * (1 - np.clip((h + below) / below, 0, 1))) < width)
        )
        name = "hip_right" if side > 0 else "hip_left"
        canvas.paint(box, fan & (offset < t / 2), name, Tissue.BONE_CORTICAL)
        canvas.retint(box, fan & (offset < t / 2 - 1.8), name, Tissue.BONE_CANCELLOUS)


def rib_paths(sk: Skeleton, body) -> list[tuple[str, float, int, np.ndarray, np.ndarray | None]]:
    """Per rib: (side name, side, number, rib polyline (m, 3), cartilage polyline or None)."""
    out = []
    for si, side in enumerate((1.0, -1.0)):
        for ni, n in enumerate(RIB_NUMBERS):
            jit = sk.rib_jitter[si, ni]
            level = f"T{n}"
            z0 = sk.z(level) + 4
            xc, yc = sk.center(z0)
            head = [xc + side * (sk.rx(level) + 3), yc - 4, z0]
            tubercle = [xc + side * (sk.canal_mm + sk.arch_mm + 20), yc - 22, z0 - 2]
            phi0, phi1 = 52.0, _RIB_END[n] * (0.96 + 0.04 * jit[0])
            pts = [head, tubercle]
            for f in np.linspace(0, 1, 7):
                phi = phi0 + f * (phi1 - phi0)
                z = z0 - 6 - (_RIB_NECK.get(n, 0) + _RIB_DROP[n] * f) * jit[1]
                pts.append(body.wall_point(z, phi, side, inset_mm=-4.0))
            pts = smooth_polyline(np.asarray(pts), 1)
            cart = None
            if n in _CARTILAGE:
                cx, rise = _CARTILAGE[n]
                tip = pts[-1]
                front = body.wall_point(tip[2] + rise * jit[2], 178, side, inset_mm=-4.0)
                mid = 0.5 * (tip + np.array([side * cx, front[1], tip[2] + rise * jit[2]]))
                cart = smooth_polyline(np.array([tip, mid, [side * cx, front[1], tip[2] + rise * jit[2]]]), 2)
            out.append(("right" if side > 0 else "left", side, n, pts, cart))
    return out


def paint_ribs(canvas: Canvas, sk: Skeleton, body) -> None:
    r = sk.rib_radius_mm
    for side_name_, _, n, pts, cart in rib_paths(sk, body):
        canvas.tube(
            pts,
            np.full(len(pts), r),
            f"rib_{side_name_}_{n}",
            Tissue.BONE_CORTICAL,
            core=(0.6, Tissue.BONE_CANCELLOUS),
        )
        if cart is not None:
            canvas.tube(cart, np.full(len(cart), r * 0.95), "costal_cartilages", Tissue.CARTILAGE)
    _paint_sternum(canvas, sk, body)


def _paint_sternum(canvas: Canvas, sk: Skeleton, body) -> None:
    z_xiphoid = sk.z("T10") - 10
    top = sk.z("T6") + 60
    y_front = body.wall_point(z_xiphoid, 180, 1.0, inset_mm=-6.0)[1]
    box = canvas.grid.box([-20, y_front - 8, z_xiphoid - 45], [20, y_front + 8, top])
    if box is None:
        return
    below = np.clip((z_xiphoid - box.Z) / 45.0, 0, 1)  # 0 at the sternum, 1 at the xiphoid tip
    half_w = 16 * (1 - below) + 4 * below
    inside = (np.abs(box.X) < half_w) & (np.abs(box.Y - y_front) < 6 - 3 * below)
    canvas.paint(box, inside, "sternum", Tissue.BONE_CORTICAL)
    canvas.retint(
        box,
        (np.abs(box.X) < half_w - 2) & (np.abs(box.Y - y_front) < 3.5) & (below == 0),
        "sternum",
        Tissue.BONE_CANCELLOUS,
    )
