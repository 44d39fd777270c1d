"""Solid organs: liver, spleen, kidneys, gallbladder, pancreas.

Each organ is a template implicit shape (``f < 1`` inside) in a local frame, not a plain ellipsoid:
the liver is a wedge (large right lobe, thin anterior edge) smoothly joined to a tapering left lobe
that crosses the midline; the spleen is a bent ellipsoid (crescent, concave towards its hilum); a
kidney is a bean with a hilar notch, cortex, medullary pyramids, sinus fat and a renal pelvis, optionally
in a layer of perirenal fat (its own template grown by 15-40 %). Each
case draws template parameters, a volume (ml), an orientation and a smooth random warp; the scale
that gives the drawn volume is solved on a coarse grid before rasterization. Organs whose height matters
are placed by where their poles fall as painted (warp and diaphragm included: ``painted_z_range_mm``); the
kidneys' placement lives in ``kidneys``.

Local frames: ``u`` lateral/towards the hilum, ``v`` anterior-ish, ``w`` superior-ish, in mm.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from organseg.phantom.body import Body
from organseg.phantom.canvas import Canvas
from organseg.phantom.fields import (
    Grid,
    Warp,
    coarse_box,
    ellipsoid,
    ellipsoid_half_extent,
    local_coords,
    rotation,
    smooth_min,
    upsample,
)
from organseg.phantom.skeleton import Skeleton
from organseg.phantom.thorax import Dome
from organseg.phantom.tissues import Tissue, sid

#: Drawn liver volumes are inflated by this factor: the dome, ribs, kidney and vessels take some back.
LIVER_LOSS = 1.25
SPLEEN_LOSS = 1.2
KIDNEY_LOSS = 1.08


@dataclass(frozen=True)
class Organ:
    """A placed, scaled, warped template. ``center`` (mm) and ``axes`` (columns = local u, v, w) in the
    patient frame; ``shape`` holds template parameters in mm at ``scale`` 1."""

    kind: str
    structure: str
    center: np.ndarray
    axes: np.ndarray
    scale: float
    shape: dict
    warp: Warp | None = None
    extras: dict = field(default_factory=dict)

    def to_patient(self, local_mm) -> np.ndarray:
        """Patient-frame point of a template-space point (template mm, before scaling)."""
        return self.center + self.axes @ (np.asarray(local_mm, float) * self.scale)

    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) corners (x, y, z) mm of a patient-frame box that holds the organ."""
        lo, hi = (np.asarray(b, float) * self.scale for b in _BOUNDS[self.kind](self.shape))
        corners = np.array([[c[0], c[1], c[2]] for c in np.array(np.meshgrid(*zip(lo, hi))).reshape(3, -1).T])
        world = self.center + corners @ self.axes.T
        pad = 3 * (self.warp.amplitude_mm if self.warp else 0) + 2
        return world.min(axis=0) - pad, world.max(axis=0) + pad

    @property
    def half_size_mm(self) -> np.ndarray:
        """Half-size (x, y, z) mm of a box centred on ``center`` that holds the organ."""
        lo, hi = self.bounds_mm()
        return np.maximum(self.center - lo, hi - self.center)


# --------------------------------------------------------------------------------------- templates


def _liver(u, v, w, p):
    c_r = p["cR"] * (1 - p["wedge"] * np.clip(v / p["bR"], -1, 1))
    f_r = ellipsoid(u, v, w + p["shear"] * u, p["aR"], p["bR"], c_r)
    du = u - p["uL"]
    t = np.clip(1 + p["taper"] * du / p["aL"], 0.25, 1.6)
    f_l = ellipsoid(du, v - p["vL"], w - p["wL"], p["aL"], p["bL"] * t, p["cL"] * t)
    f = smooth_min(f_r, f_l, 0.35)
    if p["riedel"]:
        f = smooth_min(f, ellipsoid(u - 0.55 * p["aR"], v - 0.2 * p["bR"], w + p["cR"], 22, 28, 45), 0.3)
    # renal impression: the posterior-inferior right lobe is hollowed where the right kidney sits
    kidney = ellipsoid(
        u - p["kU"] * p["aR"],
        v + 0.75 * p["bR"],
        w + 0.75 * p["cR"],
        0.45 * p["aR"],
        0.45 * p["bR"],
        0.55 * p["cR"],
    )
    return np.maximum(f, 2 - kidney)


def _spleen(u, v, w, p):
    return ellipsoid(u - p["bend"] * (v * v / p["b"] + 0.5 * w * w / p["c"]), v, w, p["a"], p["b"], p["c"])


def _kidney(u, v, w, p):
    bean = ellipsoid(u + p["bend"] * w * w / p["c"], v, w, p["a"], p["b"], p["c"])
    notch = ellipsoid(u + 0.95 * p["a"], v, w, 0.5 * p["a"], 0.45 * p["b"], 0.32 * p["c"])
    return np.maximum(bean, 2 - notch)


def _gallbladder(u, v, w, p):
    t = 0.5 + 0.5 * np.clip((w / p["c"] + 1) / 2, 0, 1)  # narrow neck (w < 0), wide fundus (w > 0)
    return ellipsoid(u / t, v / t, w, p["a"], p["a"], p["c"])


TEMPLATES = {"liver": _liver, "spleen": _spleen, "kidney": _kidney, "gallbladder": _gallbladder}
#: Local (u, v, w) bounds (lo, hi) of each template at scale 1, mm.
_BOUNDS = {
    "liver": lambda p: (
        (p["uL"] - 1.3 * p["aL"], -p["bR"], -1.6 * p["cR"] - 50 * p["riedel"]),
        (p["aR"] * 1.1, max(p["bR"], p["vL"] + 1.3 * p["bL"]), 1.2 * p["cR"]),
    ),
    "spleen": lambda p: ((-p["a"], -p["b"], -p["c"]), (p["a"] + p["bend"] * p["b"] * 1.5, p["b"], p["c"])),
    "kidney": lambda p: ((-p["a"] - p["bend"] * p["c"], -p["b"], -p["c"]), (p["a"], p["b"], p["c"])),
    "gallbladder": lambda p: ((-p["a"], -p["a"], -p["c"]), (p["a"], p["a"], p["c"])),
}


def template_volume_ml(kind: str, shape: dict) -> float:
    """Volume of a template at scale 1, counted on a coarse grid (no warp)."""
    lo, hi = (np.asarray(b, float) for b in _BOUNDS[kind](shape))
    step_mm = float((hi - lo).max()) / 40
    grid = Grid(tuple(lo), (step_mm,) * 3, tuple(int(n) for n in np.ceil((hi - lo) / step_mm) + 1))
    box = grid.full()
    f = TEMPLATES[kind](box.X, box.Y, box.Z, shape)
    return float((f < 1).sum()) * grid.voxel_ml


def _placed(
    rng: np.random.Generator,
    kind: str,
    structure: str,
    shape: dict,
    volume_ml: float,
    axes,
    center_fn,
    warp_step: float,
    warp_mm: float,
    **extras,
) -> Organ:
    """Scale ``shape`` to ``volume_ml``, place it at ``center_fn(scale)`` and give it a smooth random warp."""
    scale = float((volume_ml / template_volume_ml(kind, shape)) ** (1 / 3))
    center = np.asarray(center_fn(scale), float)
    radius = float(np.abs(np.asarray(_BOUNDS[kind](shape))).max()) * scale
    warp = Warp.random(rng, center, radius + 10, warp_step, warp_mm) if warp_mm > 0 else None
    return Organ(kind, structure, center, np.asarray(axes, float), scale, shape, warp, extras)


def inside_voxels(box, organ: Organ) -> np.ndarray:
    """Is each voxel of ``box`` inside the organ (its warp included), as ``paint_organ`` paints it?"""
    u, v, w = local_coords(box, organ.center, organ.axes, organ.warp)
    s = np.float32(organ.scale)
    return np.broadcast_to(TEMPLATES[organ.kind](u / s, v / s, w / s, organ.shape) < 1, box.shape)


def painted_voxels(organ: Organ, dome: Dome | None, carved_by: tuple[Organ, ...], step_mm: float, z_mm=None):
    """(box, inside): the organ's voxels on a ``step_mm`` grid over its box (between heights ``z_mm`` = (lo, hi)
    if given), as ``paint_organ`` would paint them, less what the lung and diaphragm above ``dome`` and the
    higher-ranked organs ``carved_by`` take."""
    lo, hi = organ.bounds_mm()
    if z_mm is not None:
        lo[2], hi[2] = max(lo[2], z_mm[0]), min(hi[2], z_mm[1])
    grid = Grid(tuple(lo), (step_mm,) * 3, tuple(int(v) for v in np.ceil((hi - lo) / step_mm) + 1))
    box = grid.full()
    inside = inside_voxels(box, organ).copy()
    for other in carved_by:
        inside &= ~inside_voxels(box, other)
    if dome is not None:
        inside &= box.Z < dome.height(box.X, box.Y) - np.float32(dome.thickness_mm)
    return box, inside


def painted_z_range_mm(
    organ: Organ, dome: Dome | None = None, step_mm: float = 3.0, top_only: bool = False
) -> tuple[float, float]:
    """Lowest and highest z (patient mm) of the organ as painted: its warp included (a warp can move a pole by
    more than its amplitude) and, with ``dome``, cut where the diaphragm and the lung above it outrank it.

    On a ``step_mm`` grid (about a step of error); the samplers place organs by these poles, which
    ``anatomy_stats`` measures. ``top_only``: find the top on an 8 mm grid first, then at ``step_mm`` only near
    it (faster for the liver; the first value is then not the organ's bottom).
    """
    window = None
    if top_only:
        _, top = painted_z_range_mm(organ, dome, 8.0)
        window = (top - 12.0, top + 12.0)
    box, inside = painted_voxels(organ, dome, (), step_mm, window)
    k = np.flatnonzero(inside.any(axis=(0, 1)))
    if not len(k):
        return float(organ.center[2]), float(organ.center[2])
    return float(box.z1[k[0]]), float(box.z1[k[-1]])


def centroid_z(box, inside: np.ndarray, default: float) -> float:
    """Mean z (mm) of the ``inside`` voxels of ``box`` (``default`` when there are none)."""
    counts = inside.sum(axis=(0, 1))
    return float((counts * box.z1).sum() / counts.sum()) if counts.sum() else default


def placed_moved(rng: np.random.Generator, move, *args, rounds: int = 1, **extras) -> Organ:
    """``_placed(rng, *args, **extras)``, placed again ``move(organ)`` mm higher with the same draws (the same
    scale and warp, which moves with it), ``rounds`` times: how an organ is placed by where its painted poles
    fall."""
    state = rng.bit_generator.state
    organ, dz = _placed(rng, *args, **extras), 0.0
    kind, structure, shape, volume_ml, axes, center_fn, *rest = args
    for _ in range(rounds):
        dz += float(move(organ))
        rng.bit_generator.state = state
        moved = lambda s, dz=dz: np.add(center_fn(s), [0.0, 0.0, dz])  # noqa: E731
        organ = _placed(rng, kind, structure, shape, volume_ml, axes, moved, *rest, **extras)
    return organ


# --------------------------------------------------------------------------------------- sampling


def sample_liver(
    rng: np.random.Generator, sk: Skeleton, body: Body, dome: Dome, volume_ml: float | None = None
) -> Organ:
    """The liver under the right dome, its lateral edge at the body wall (``volume_ml``: instead of the drawn one)."""
    a_r = rng.uniform(62, 75)
    shape = {
        "aR": a_r,
        "bR": rng.uniform(75, 95),
        "cR": rng.uniform(72, 90),
        "wedge": rng.uniform(0.2, 0.45),
        "shear": rng.uniform(0.0, 0.3),
        "uL": -rng.uniform(0.85, 1.25) * a_r,
        "vL": rng.uniform(0.35, 0.6) * 85,
        "wL": rng.uniform(0.0, 0.25) * 80,
        "aL": rng.uniform(50, 75),
        "bL": rng.uniform(35, 50),
        "cL": rng.uniform(25, 38),
        "taper": rng.uniform(0.2, 0.6),
        "riedel": float(rng.random() < 0.1),
        "kU": rng.uniform(-0.1, 0.3),
    }
    volume = rng.uniform(1150, 2500) * LIVER_LOSS  # painted: 900-2600 ml (real 1000-2500)
    if volume_ml is not None:  # drawn anyway above, so the draws that follow stay the same
        volume = volume_ml * LIVER_LOSS
    above = rng.uniform(-10, 5)
    overshoot = rng.uniform(0, 8)
    fill = rng.uniform(0.92, 1.05)
    y_shift = rng.uniform(-5, 15)
    axes = rotation(rng.normal(0, 5), rng.normal(0, 5), rng.normal(0, 8))
    # fit the right lobe between the front and back walls: shrink its depth, let the rest grow
    z = dome.right_peak[2] - 60
    back = -rng.uniform(30, 45)  # the front of the paraspinal muscles (patient frame: spine at y = 0)
    front = body.wall_point(z, 165, 1.0)[1]
    for _ in range(3):
        s = (volume / template_volume_ml("liver", shape)) ** (1 / 3)
        if shape["bR"] * s > fill * (front - back) / 2:
            shape["bR"] = fill * (front - back) / 2 / s
    y = (front + back) / 2 + y_shift

    def center(s):
        # the right lobe's top meets the dome above it, and fills it (its top within ~12 mm of the peak, where
        # the lung above clips it: real 9 mm); the lateral edge meets the body wall
        z = dome.right_peak[2] - shape["cR"] * s
        for _ in range(2):
            x = body.inner_half_width(z) - shape["aR"] * s + overshoot
            z = max(float(dome.height(x, y)), dome.right_peak[2] - 12.0) + above - shape["cR"] * s
        return [x, y, z]

    lesions = []
    for _ in range(rng.poisson(0.6) if rng.random() < 0.3 else 0):
        lesions.append(
            (
                rng.uniform([-0.6, -0.5, -0.5], [0.6, 0.5, 0.3]) * [a_r, shape["bR"], shape["cR"]],
                rng.uniform(4, 22),
            )
        )

    def move(liver: Organ) -> float:
        # a warp can lower the top by more than its amplitude: keep the top where the unwarped template has it
        unwarped = painted_z_range_mm(replace(liver, warp=None), step_mm=4.0, top_only=True)[1]
        return unwarped - painted_z_range_mm(liver, step_mm=4.0, top_only=True)[1]

    return placed_moved(
        rng,
        move,
        "liver",
        "liver",
        shape,
        volume,
        axes,
        center,
        rng.uniform(35, 55),
        rng.uniform(4, 10),
        lesions=lesions,
    )


def sample_spleen(
    rng: np.random.Generator, sk: Skeleton, body: Body, dome: Dome, volume_ml: float | None = None
) -> Organ:
    """The spleen posterolateral under the left dome (``volume_ml``: instead of the drawn one)."""
    shape = {
        "a": rng.uniform(18, 26),
        "b": rng.uniform(38, 52),
        "c": rng.uniform(40, 56),
        "bend": rng.uniform(0.15, 0.45),
    }
    volume = float(np.exp(rng.uniform(np.log(100), np.log(410)))) * SPLEEN_LOSS  # painted: 85-490 ml
    if volume_ml is not None:
        volume = volume_ml * SPLEEN_LOSS
    phi = rng.uniform(70, 94)  # around the posterior axillary line
    tilt = rng.uniform(30, 55)  # its long axis follows ribs 9-11: real spleens span ~80-90 mm head-foot
    inward = np.array([np.sin(np.deg2rad(phi)), np.cos(np.deg2rad(phi))])
    axes = rotation(rx_deg=tilt, rz_deg=np.rad2deg(np.arctan2(inward[1], inward[0])))
    depth = rng.uniform(0.85, 1.0)
    below = rng.uniform(0.85, 1.0)
    top = ellipsoid_half_extent(axes, [shape["a"], shape["b"], shape["c"]])[2]  # half-height when tilted

    def center(s):
        # against the posterolateral wall, its upper pole just under the dome at that spot
        p = body.wall_point(dome.left_peak[2] - top * s, phi, -1.0, inset_mm=depth * shape["a"] * s)
        for _ in range(2):
            z = float(dome.height(p[0], p[1])) - below * top * s
            # its centre between T11 and L1's upper half (real: T10-L1; a long spleen under a low dome would
            # hang lower), beside ribs 9-11 and well above the left kidney's centre
            z = float(np.clip(z, sk.level_z(0.4), sk.level_z(-1.0)))
            # in a deep belly the posterior axillary line lies far forward: keep the centre within ~20 mm in
            # front of the vertebral bodies (real: 5-15 mm), further round towards the back
            for angle in np.arange(phi, 59.0, -4.0):
                p = body.wall_point(z, angle, -1.0, inset_mm=depth * shape["a"] * s)
                if p[1] <= sk.center(z)[1] + 20.0:
                    break
        return p

    return _placed(
        rng, "spleen", "spleen", shape, volume, axes, center, rng.uniform(35, 50), rng.uniform(2, 4.5)
    )


def sample_gallbladder(rng: np.random.Generator, liver: Organ) -> Organ | None:
    """A pear in the gallbladder fossa under the liver; ``None`` after cholecystectomy (10 %)."""
    if rng.random() < 0.1:  # cholecystectomy
        return None
    p = liver.shape
    shape = {"a": rng.uniform(11, 18), "c": rng.uniform(25, 42)}
    w = np.array([rng.uniform(-0.2, 0.3), rng.uniform(0.4, 1.0), -rng.uniform(0.4, 1.0)])
    axes = _frame(w / np.linalg.norm(w))
    local = [
        -rng.uniform(0.1, 0.5) * p["aR"],
        rng.uniform(0.2, 0.5) * p["bR"],
        -rng.uniform(0.45, 0.8) * p["cR"],
    ]
    center = liver.to_patient(local)
    return _placed(
        rng,
        "gallbladder",
        "gallbladder",
        shape,
        4 / 3 * np.pi * shape["a"] ** 2 * shape["c"] / 1000 * 0.8,
        axes,
        lambda s: center,
        30,
        2,
    )


def _frame(w: np.ndarray) -> np.ndarray:
    """Orthonormal axes (columns u, v, w) with w given."""
    u = np.cross([0.0, 1.0, 0.0], w)
    u /= np.linalg.norm(u)
    return np.stack([u, np.cross(w, u), w], axis=1)


# --------------------------------------------------------------------------------------- painting


def paint_organ(canvas: Canvas, organ: Organ, tissue: int, detail: bool = False, spare: tuple[str, ...] = ()):
    """Paint the organ's structure; with ``detail`` return (box, local template coords), else None.

    ``spare``: structures whose voxels the organ leaves alone even where it outranks them.
    """
    box = canvas.grid.box(*organ.bounds_mm())
    if box is None:
        return None
    coarse = coarse_box(box)  # fine grids: evaluate the smooth shape at ~1.6 mm, then interpolate
    u, v, w = local_coords(coarse or box, organ.center, organ.axes, organ.warp)
    s = np.float32(organ.scale)
    u, v, w = u / s, v / s, w / s
    f = TEMPLATES[organ.kind](u, v, w, organ.shape)
    if coarse is not None:
        f = upsample(f, coarse, box)
        if detail:
            u, v, w = (upsample(np.broadcast_to(a, coarse.shape), coarse, box) for a in (u, v, w))
    inside = f < 1
    if spare:
        inside = inside & ~np.isin(canvas.structure[box.slices], [sid(n) for n in spare])
    canvas.paint(box, inside, organ.structure, tissue)
    return (box, (u, v, w)) if detail else None


def z_range_mm(organ: Organ) -> tuple[float, float]:
    """Lowest and highest z (patient mm) of the organ, from its unwarped template on a coarse grid."""
    lo, hi = organ.bounds_mm()
    step = float(max((hi - lo).max() / 24, 3.0))
    grid = Grid(tuple(lo), (step,) * 3, tuple(int(v) for v in np.ceil((hi - lo) / step) + 1))
    box = grid.full()
    u, v, w = local_coords(box, organ.center, organ.axes)
    s = np.float32(organ.scale)
    inside = np.broadcast_to(TEMPLATES[organ.kind](u / s, v / s, w / s, organ.shape) < 1, box.shape)
    k = np.flatnonzero(inside.any(axis=(0, 1)))
    pad = organ.warp.amplitude_mm if organ.warp else 0.0
    return float(box.z1[k[0]] - pad), float(box.z1[k[-1]] + pad)


def paint_liver(canvas: Canvas, liver: Organ) -> None:
    out = paint_organ(canvas, liver, Tissue.LIVER, detail=bool(liver.extras.get("lesions")))
    if out is None:
        return
    box, (u, v, w) = out
    for center, radius in liver.extras.get("lesions", []):
        r = radius / liver.scale
        canvas.retint(
            box,
            ellipsoid(u - center[0], v - center[1], w - center[2], r, r, r) < 1,
            "liver",
            Tissue.LIVER_LESION,
        )


def paint_spleen(canvas: Canvas, spleen: Organ) -> None:
    paint_organ(canvas, spleen, Tissue.SPLEEN)


def paint_kidney(canvas: Canvas, kidney: Organ) -> None:
    out = paint_organ(canvas, kidney, Tissue.KIDNEY_CORTEX, detail=True)
    if out is None:
        return
    box, (u, v, w) = out
    p, name = kidney.shape, kidney.structure
    t = p["cortex"] / kidney.scale
    inner = ellipsoid(u + p["bend"] * w * w / p["c"], v, w, p["a"] - t, p["b"] - t, p["c"] - t) < 1
    pyramids = np.cos(p["pyramids"] * np.arctan2(w, v) + p["phase"]) > -0.3
    canvas.retint(box, inner & pyramids, name, Tissue.KIDNEY_MEDULLA)
    sinus = ellipsoid(u + 0.35 * p["a"], v, w, 0.45 * p["a"], 0.5 * p["b"], 0.62 * p["c"]) < 1
    canvas.retint(box, sinus, name, Tissue.RENAL_SINUS_FAT)
    pelvis = (
        ellipsoid(u + 0.62 * p["a"], v, w + 0.05 * p["c"], 0.42 * p["a"], 0.33 * p["b"], 0.3 * p["c"]) < 1
    )
    canvas.retint(box, pelvis, name, Tissue.URINE)
    for direction, radius in kidney.extras.get("cysts", []):
        c = np.asarray(direction) * [p["a"], p["b"], p["c"]] * 0.9
        r = radius / kidney.scale
        cyst = ellipsoid(u - c[0], v - c[1], w - c[2], r, r, r) < 1
        canvas.paint(box, cyst, name, Tissue.KIDNEY_CYST)
        canvas.retint(box, cyst, name, Tissue.KIDNEY_CYST)


#: Perirenal fat: the kidney's template grown by this fraction (about 4-10 mm beside it, more at the poles).
PERIRENAL_FAT_GROWTH = (0.15, 0.4)
_THROUGH_PERIRENAL_FAT = ("artery", "renal_vein", "ureter", "portal_vein_and_splenic_vein")


def paint_perirenal_fat(canvas: Canvas, kidney: Organ) -> None:
    """Fat around the kidney (Gerota's space), painted after the vessels, which keep their course through it.

    Real kidneys lie in fat that separates them from liver, spleen and bowel (on a non-contrast CT that fat
    is what tells a kidney of ~30 HU from a liver of ~55 HU); the liver's renal impression becomes fat.
    """
    grow = float(kidney.extras.get("perirenal_fat", 0.0))
    if grow <= 0:
        return
    outer = Organ(
        kidney.kind, "perirenal_fat", kidney.center, kidney.axes, kidney.scale * (1 + grow), kidney.shape,
        kidney.warp,
    )  # fmt: skip
    paint_organ(canvas, outer, Tissue.VISCERAL_FAT, spare=_THROUGH_PERIRENAL_FAT)


def paint_gallbladder(canvas: Canvas, gb: Organ | None) -> None:
    if gb is not None:
        paint_organ(canvas, gb, Tissue.BILE)
