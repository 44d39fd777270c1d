"""Body outline and wall: skin, subcutaneous fat, abdominal wall muscle, torso fat, back muscles, table.

The cross-section at height z is two half-superellipses joined at the widest line ``y = y_widest``
(patient frame, mm): half-width ``a(z)``, anterior and posterior semi-axes ``front(z)``/``back(z)``,
with a flatter back (the patient lies on the table). Layer thicknesses (skin, fat, muscle) depend on
direction (front, side, back) and scale with girth, from thin (girth 0) to obese (girth 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from organseg.phantom.canvas import Canvas
from organseg.phantom.fields import Box, coarse_box, smooth_polyline, upsample
from organseg.phantom.skeleton import Skeleton
from organseg.phantom.tissues import Tissue, sid, side_name

_CHUNK_VOXELS = 2_000_000


@dataclass(frozen=True)
class Body:
    """Body habitus. Lengths in mm; ``*_ctrl`` arrays are values at heights ``z_ctrl`` (patient z)."""

    girth: float
    muscle: float
    visceral_fat: float
    z_ctrl: np.ndarray
    half_width: np.ndarray
    front: np.ndarray
    back: np.ndarray
    fat_scale: np.ndarray
    y_widest: float
    p_front: float
    p_back: float
    skin_mm: float
    fat_front_mm: float
    fat_side_mm: float
    fat_back_mm: float
    wall_front_mm: float
    wall_side_mm: float
    wall_back_mm: float
    linea_alba_mm: float
    table: dict | None

    def profile(self, z):
        """(half_width, front, back, fat_scale) at heights ``z`` (float32 arrays)."""
        z = np.asarray(z, np.float32)
        return tuple(
            np.interp(z, self.z_ctrl, v).astype(np.float32)
            for v in (self.half_width, self.front, self.back, self.fat_scale)
        )

    def _layers(self, dx, dy, fat_scale):
        """Skin+fat and wall thickness (mm) along unit direction (dx, dy)."""
        fat_y = np.where(dy > 0, self.fat_front_mm, self.fat_back_mm)
        wall_y = np.where(dy > 0, self.wall_front_mm, self.wall_back_mm)
        fat = fat_scale * (self.fat_side_mm * dx * dx + fat_y * dy * dy)
        wall = self.wall_side_mm * dx * dx + wall_y * dy * dy
        return self.skin_mm + fat, wall

    def wall_point(self, z: float, phi_deg: float, side: float, inset_mm: float = 0.0) -> np.ndarray:
        """Point (x, y, z) ``inset_mm`` inside the inner surface of the abdominal wall.

        ``phi_deg`` is the direction seen from the body axis: 0 = straight back, 90 = the patient's
        ``side`` (+1 right, -1 left), 180 = straight front. ``inset_mm`` < 0 lies inside the wall.
        """
        a, front, back, fs = (float(v) for v in self.profile(z))
        phi = np.deg2rad(phi_deg)
        dx, dy = side * np.sin(phi), -np.cos(phi)
        p, b = (self.p_front, front) if dy > 0 else (self.p_back, back)
        radius = ((abs(dx) / a) ** p + (abs(dy) / b) ** p) ** (-1.0 / p)
        outer, wall = self._layers(dx, dy, fs)
        r = radius - float(outer) - float(wall) - inset_mm
        return np.array([dx * r, self.y_widest + dy * r, z])

    def inner_half_width(self, z: float) -> float:
        return float(-self.wall_point(z, 90.0, -1.0)[0])


def sample_body(rng: np.random.Generator, sk: Skeleton) -> Body:
    """Draw a habitus: girth (0 thin .. 1 obese), outline at control heights tied to the levels of ``sk``,
    skin, fat and wall thicknesses (mm), and a CT table under the back in 75 % of patients."""
    g = float(rng.beta(1.5, 1.7))
    muscle = float(rng.uniform(0.75, 1.25))
    z = np.array(
        [sk.z("T6") + 40, sk.z("T9"), sk.z("T11"), sk.z("L1"), sk.z("L3"), sk.z("L5"), sk.z("S1") - 60]
    )
    z = np.concatenate([z[::-1], [sk.z("S1") - 200]])[::-1]  # increasing heights, one far below
    chest = 135 + 45 * g + rng.normal(0, 8)
    waist = 120 + 90 * g + rng.normal(0, 10)
    hip = waist + rng.uniform(5, 35) - 15 * g
    half_width = np.array(
        [hip, hip, waist + 0.3 * (hip - waist), waist, 0.5 * (waist + chest), chest, chest, chest]
    )
    front_chest = 122 + 55 * g + rng.normal(0, 6)
    belly = 100 + 125 * g + rng.normal(0, 10)
    front = np.array(
        [
            belly * 0.8,
            belly * 0.85,
            belly,
            belly,
            0.5 * (belly + front_chest),
            front_chest,
            front_chest,
            front_chest,
        ]
    )
    back = np.full(8, 80 + rng.uniform(0, 12) + 40 * g)
    back[:2] += rng.uniform(0, 25)  # buttocks
    jitter = rng.uniform(0.95, 1.05, size=(3, 8))
    y_widest = float(rng.uniform(0, 30))
    fat = 1.0 + 0.25 * np.linspace(-1, 1, 8)[::-1] * rng.uniform(0, 1)  # more fat low, less on the chest
    return Body(
        girth=g,
        muscle=muscle,
        visceral_fat=float(np.clip(0.1 + 0.65 * g + rng.normal(0, 0.12), 0.03, 0.95)),
        z_ctrl=z.astype(np.float32),
        half_width=(half_width * jitter[0]).astype(np.float32),
        front=(front * jitter[1] - y_widest).astype(np.float32),
        back=(back * jitter[2] + y_widest).astype(np.float32),
        fat_scale=fat.astype(np.float32),
        y_widest=y_widest,
        p_front=float(rng.uniform(2.0, 2.5)),
        p_back=float(rng.uniform(2.4, 3.4)),
        skin_mm=float(rng.uniform(1.5, 3.0)),
        fat_front_mm=float(max(3.0, 4 + 60 * g**1.3 + rng.normal(0, 4))),
        fat_side_mm=float(max(2.0, 3 + 45 * g**1.3 + rng.normal(0, 3))),
        fat_back_mm=float(max(3.0, 4 + 35 * g**1.3 + rng.normal(0, 3))),
        wall_front_mm=float(rng.uniform(7, 13) * muscle),
        wall_side_mm=float(rng.uniform(8, 15) * muscle),
        wall_back_mm=float(rng.uniform(4, 7)),
        linea_alba_mm=float(rng.uniform(4, 12) + 20 * g * rng.uniform(0, 1)),
        table=_sample_table(rng) if rng.random() < 0.75 else None,
    )


def _sample_table(rng: np.random.Generator) -> dict:
    """Table geometry (mm): gap under the back, shell and foam thickness, half-width, curvature (1/mm)."""
    return {
        "gap_mm": float(rng.uniform(0, 10)),
        "shell_mm": float(rng.uniform(2, 4)),
        "foam_mm": float(rng.uniform(15, 45)),
        "half_width_mm": float(rng.uniform(200, 260)),
        "curve": float(rng.uniform(0, 1 / 900)),
    }


def paint_body(canvas: Canvas, body: Body) -> None:
    """Skin, subcutaneous fat, abdominal wall and torso fat over the whole grid (in z chunks)."""
    grid = canvas.grid
    x, y = grid.axis(0), grid.axis(1)
    step = max(1, _CHUNK_VOXELS // (len(x) * len(y)))
    ids = np.array(
        [sid(n) for n in ("background", "skin", "subcutaneous_fat", "abdominal_wall", "torso_fat")], np.uint8
    )
    tissues = np.array(
        [Tissue.AIR, Tissue.SKIN, Tissue.SUBCUT_FAT, Tissue.MUSCLE, Tissue.VISCERAL_FAT], np.uint8
    )
    fine = Box((slice(None),) * 3, x, y, grid.axis(2)[:1])
    coarse = coarse_box(fine, 2.0, axes=(0, 1)) or fine  # the depth map is smooth: compute in-plane at 2 mm
    for k0 in range(0, grid.shape[2], step):
        z = grid.axis(2)[k0 : k0 + step]
        a, front, back, fat_scale = body.profile(z)
        X = coarse.x1[:, None, None]
        Y = (coarse.y1 - body.y_widest)[None, :, None]
        ant = Y > 0
        r = np.sqrt(X * X + Y * Y) + np.float32(1e-3)
        sx = np.where(ant, np.abs(X / a) ** body.p_front, np.abs(X / a) ** body.p_back)
        sy = np.abs(Y / np.where(ant, front, back)) ** np.where(ant, body.p_front, body.p_back)
        rho = np.exp(np.log(sx + sy + np.float32(1e-12)) / np.where(ant, body.p_front, body.p_back))
        depth = r / rho - r
        dx, dy = X / r, Y / r
        outer, wall = body._layers(dx, dy, fat_scale)
        # the two recti part at the linea alba: a thin wall at the anterior midline
        wall = wall * (1 - 0.75 * np.exp(-((X / body.linea_alba_mm) ** 2)) * (dy > 0.8))
        if coarse is not fine:
            src = Box(fine.slices, coarse.x1, coarse.y1, z)
            dst = Box(fine.slices, x, y, z)
            depth, outer, wall = (
                upsample(np.broadcast_to(v, (len(coarse.x1), len(coarse.y1), len(z))), src, dst)
                for v in (depth, outer, wall)
            )
        layer = (
            (depth >= 0).astype(np.uint8)
            + (depth >= body.skin_mm)
            + (depth >= outer)
            + (depth >= outer + wall)
        )
        canvas.structure[:, :, k0 : k0 + step] = ids[layer]
        canvas.tissue[:, :, k0 : k0 + step] = tissues[layer]


def psoas_path(body: Body, sk: Skeleton, params: dict, side: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre line (m, 3) mm and radii (m,) mm of one iliopsoas, T12 down into the pelvis."""
    m = body.muscle
    pts, radii = [], []
    for lvl, extra, dy, r in (
        ("T12", 2, -2, 3),
        ("L1", 7, -2, 8),
        ("L2", 11, 0, 12),
        ("L3", 14, 2, 16),
        ("L4", 17, 6, 19),
        ("L5", 22, 14, 20),
    ):
        cx, cy = sk.center(sk.z(lvl))
        pts.append([cx + side * (sk.rx(lvl) + extra + r * m * 0.5), cy + dy, sk.z(lvl)])
        radii.append(r * m)
    _, cy = sk.center(sk.z("S1"))
    x = params["psoas_pelvis_x"]
    pts += [[side * x, cy + 40, sk.z("S1") - 35], [side * (x + 12), cy + 65, sk.z("S1") - 85]]
    radii += [19 * m, 16 * m]
    path = smooth_polyline(np.column_stack([pts, radii]), 1)
    return path[:, :3], path[:, 3]


def psoas_edge_mm(body: Body, sk: Skeleton, params: dict, z: float) -> float:
    """|x| of the psoas's lateral edge at height ``z`` (0 above its origin)."""
    pts, radii = psoas_path(body, sk, params, 1.0)
    order = np.argsort(pts[:, 2])
    edge = pts[order, 0] + radii[order]
    return float(np.interp(z, pts[order, 2], edge, left=edge[0], right=0.0))


def paint_muscles(canvas: Canvas, body: Body, sk: Skeleton, params: dict) -> None:
    """Psoas, quadratus lumborum and the erector spinae (autochthon) on both sides."""
    m = body.muscle
    for side in (1.0, -1.0):
        s = "right" if side > 0 else "left"
        canvas.tube(*psoas_path(body, sk, params, side), f"iliopsoas_{s}", Tissue.MUSCLE)
        ql = []
        for lvl, dx, r in (("T12", 32, 4), ("L2", 40, 9), ("L4", 44, 10), ("L5", 50, 5)):
            cx, cy = sk.center(sk.z(lvl))
            ql.append(([cx + side * (sk.rx(lvl) + dx), cy - 30, sk.z(lvl)], r * m))
        canvas.tube([q[0] for q in ql], [q[1] for q in ql], f"quadratus_lumborum_{s}", Tissue.MUSCLE)
        _paint_autochthon(canvas, body, sk, side, params)


def _paint_autochthon(canvas: Canvas, body: Body, sk: Skeleton, side: float, p: dict) -> None:
    grid = canvas.grid
    lo = grid.origin_mm[2]
    hi = lo + grid.spacing_mm[2] * (grid.shape[2] - 1)
    x0, x1 = sorted((0.0, side * 110.0))  # one side of the midline, behind the spine
    box = grid.box([x0, -220, lo], [x1, 20, hi])
    if box is None:
        return
    cx = np.array([sk.center(z)[0] for z in box.z1], np.float32)[None, None, :]
    cy = np.array([sk.center(z)[1] for z in box.z1], np.float32)[None, None, :]
    # thinner over the sacrum, fuller in the lumbar spine
    taper = np.clip((box.Z - (sk.z("S1") - 60)) / 60.0, 0.3, 1.0).astype(np.float32)
    ax, ay = p["erector_ax"] * body.muscle * taper, p["erector_ay"] * body.muscle * taper
    inside = ((box.X - cx - side * p["erector_x"]) / ax) ** 2 + ((box.Y - cy + p["erector_y"]) / ay) ** 2 < 1
    canvas.paint(box, inside, side_name("autochthon", side), Tissue.MUSCLE)


def sample_muscle_params(rng: np.random.Generator) -> dict:
    """Psoas and erector spinae geometry (mm): where the psoas enters the pelvis, the erectors' offsets and radii."""
    return {
        "psoas_pelvis_x": float(rng.uniform(45, 58)),
        "erector_x": float(rng.uniform(26, 36)),
        "erector_y": float(rng.uniform(48, 58)),
        "erector_ax": float(rng.uniform(24, 32)),
        "erector_ay": float(rng.uniform(16, 22)),
    }


def paint_table(canvas: Canvas, body: Body) -> None:
    """A curved CT table under the back: two thin shells around a foam core, only into air."""
    t = body.table
    if t is None:
        return
    _, _, back, _ = body.profile(body.z_ctrl)
    top = body.y_widest - float(back.max()) - t["gap_mm"]
    grid = canvas.grid
    box = grid.box(
        [-t["half_width_mm"], top - 2 * t["shell_mm"] - t["foam_mm"] - 1, -1e6],
        [t["half_width_mm"], top + 80, 1e6],
    )
    if box is None:
        return
    surface = top + np.float32(t["curve"]) * box.X**2  # depth below the table's top surface
    d = np.broadcast_to(surface - box.Y, box.shape)
    air = canvas.structure[box.slices] == 0
    shell = (d >= 0) & (d < t["shell_mm"]) | (d >= t["shell_mm"] + t["foam_mm"]) & (
        d < 2 * t["shell_mm"] + t["foam_mm"]
    )
    foam = (d >= t["shell_mm"]) & (d < t["shell_mm"] + t["foam_mm"])
    canvas.paint(box, shell & air, "table", Tissue.TABLE_SHELL, force=True)
    canvas.paint(box, foam & air, "table", Tissue.TABLE_FOAM, force=True)


__all__ = [
    "Body",
    "paint_body",
    "paint_muscles",
    "paint_table",
    "psoas_edge_mm",
    "sample_body",
    "sample_muscle_params",
]
