"""Fields of view and bodies that users meet, as optional phantom variants.

Real scans are not all a whole abdomen centred in the field of view: a 20-60 mm slab, arms beside the chest, the
CT table under the back, a body wider than the reconstruction circle, a patient lying a few degrees rotated,
positive oral contrast in the bowel beside the spleen, small or very large livers and spleens, fluid-filled bowel
packed under the liver in a lean patient. ``Variants`` says
how often each happens (a probability per phantom, 0 = never, 1 = always); ``Variants.draw`` decides, for one
phantom, from that phantom's own random stream (``dataset.case_streams``), so each seed still gives one fixed phantom,
and every parameter is drawn whether or not its variant is on (switching one variant never changes another).

Geometry is in the patient frame (mm, RAS axes: +x the patient's right, +y anterior, +z superior). With every
probability 0 (the default) phantoms are exactly what they were without variants.

Example:
    >>> from organseg.phantom import generate_case
    >>> image, label = generate_case(3, spacing_mm=3.0, variants=Variants(thin_slab=1.0))
    >>> 20 <= image.shape[2] * 3.0 <= 63
    True
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from scipy import ndimage

from organseg.phantom.canvas import Canvas
from organseg.phantom.tissues import Tissue, sid, side_name

#: Liver and spleen volumes (ml) of the ``extreme_organs`` variant: (small range, large range).
EXTREME_LIVER_ML = ((650.0, 950.0), (2700.0, 3800.0))
EXTREME_SPLEEN_ML = ((45.0, 90.0), (500.0, 1400.0))


@dataclass(frozen=True)
class Variants:
    """How often each variant happens: probabilities in [0, 1] per phantom (``rotation_deg``: the largest angle).

    Attributes:
        thin_slab: a 20-60 mm slab (head-foot) somewhere through the four organs (fields of view without a
            fixed ``shape`` only).
        arms: both arms beside the body (humerus in muscle and fat), in the field of view.
        table: the CT table under the back, always in the field of view (otherwise 75 % of phantoms have a
            table, which a tight training field of view often leaves out).
        truncation: the body wider than the field of view: 78-95 % of its width (arms included) in view, cut
            more on one side than the other.
        rotation_deg: every phantom turned by an angle drawn in [-rotation_deg, rotation_deg] about the z axis
            (head-foot), patient and table together; 0: none.
        bowel_contrast: positive oral contrast (200-600 HU) in bowel loops and colon beside the spleen.
        extreme_organs: a small or very large liver and spleen (volumes ``EXTREME_*_ML``) instead of a normal one.
        fluid_bowel: fluid-filled, nearly gas-free small bowel and colon (water to chyme, 0-35 HU), loops packed with
            little fat between them and reaching up under the liver: in a non-contrast scan they are close to the
            liver's grey and touch it, where the phantoms' usual gas- and fat-speckled bowel never does.
    """

    thin_slab: float = 0.0
    arms: float = 0.0
    table: float = 0.0
    truncation: float = 0.0
    rotation_deg: float = 0.0
    bowel_contrast: float = 0.0
    extreme_organs: float = 0.0
    fluid_bowel: float = 0.0

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "rotation_deg":
                if not 0 <= v <= 45:
                    raise ValueError(f"rotation_deg: expected 0-45 degrees, got {v}")
            elif not 0 <= v <= 1:
                raise ValueError(f"{f.name}: expected a probability in [0, 1], got {v}")

    @property
    def any(self) -> bool:
        return any(getattr(self, f.name) > 0 for f in fields(self))

    def draw(self, rng: np.random.Generator) -> Draw:
        """What one phantom gets. Always makes the same draws from ``rng``, whatever the probabilities."""
        on = rng.random(7) < np.array(
            [
                self.thin_slab,
                self.arms,
                self.table,
                self.truncation,
                1.0,
                self.bowel_contrast,
                self.extreme_organs,
            ]
        )
        u = rng.uniform
        slab = (float(u(20, 60)), float(u(0, 1)))
        arms = {
            "gap_mm": float(u(0, 25)),
            "radius_mm": float(u(38, 55)),
            "humerus_mm": float(u(9, 13)),
            "dy_mm": float(u(-25, 35)),
            "fat": float(u(0.08, 0.35)),
            "elbow_mm": float(u(-60, 20)),  # relative to L2
            "forearm_dy_mm": float(u(0, 60)),
        }
        table = {
            "gap_mm": float(u(0, 10)),
            "shell_mm": float(u(2, 4)),
            "foam_mm": float(u(15, 45)),
            "half_width_mm": float(u(200, 260)),
            "curve": float(u(0, 1 / 900)),
        }
        truncation = (float(u(0.78, 0.95)), float(u(-1, 1)))
        angle = float(u(-1, 1)) * self.rotation_deg
        contrast = {"hu": float(u(200, 600)), "radius_mm": float(u(70, 120)), "loop_mm": float(u(9, 14))}
        small = rng.random(2) < 0.5
        liver_ml = float(u(*EXTREME_LIVER_ML[0 if small[0] else 1]))
        spleen_ml = float(np.exp(u(*np.log(EXTREME_SPLEEN_ML[0 if small[1] else 1]))))
        # drawn after everything above, so adding this variant changed no other variant's draws
        fluid_on = bool(rng.random() < self.fluid_bowel)
        fluid = {
            "hu": float(u(0, 35)),
            "fat": float(u(0.0, 0.25)),
            "gas": float(u(2.6, 3.5)),
            "top_mm": float(u(0, 40)),
            "width": float(u(1.4, 1.9)),  # loops fill 1 - exp(-width**2 / 2) of the free space: 62-85 %
        }
        return Draw(
            thin_slab=slab if on[0] else None,
            arms=arms if on[1] else None,
            table=table if on[2] else None,
            truncation=truncation if on[3] else None,
            rotation_deg=angle if on[4] else 0.0,
            bowel_contrast=contrast if on[5] else None,
            liver_ml=liver_ml if on[6] else None,
            spleen_ml=spleen_ml if on[6] else None,
            fluid_bowel=fluid if fluid_on else None,
        )


@dataclass(frozen=True)
class Draw:
    """The variants one phantom got (``None``/0: not this one), with their parameters (mm, degrees, HU)."""

    thin_slab: tuple[float, float] | None = None  # (thickness mm, position 0-1 through the organs)
    arms: dict | None = None
    table: dict | None = None
    truncation: tuple[float, float] | None = None  # (share of the width in view, which side is cut more)
    rotation_deg: float = 0.0
    bowel_contrast: dict | None = None
    liver_ml: float | None = None
    spleen_ml: float | None = None
    fluid_bowel: dict | None = None  # content HU, fat between loops, gas threshold, loops' top above L1 (mm), loop width

    def summary(self) -> dict:
        """JSON-friendly: which variants are on, with their main number."""
        out: dict = {}
        if self.thin_slab:
            out["thin_slab_mm"] = round(self.thin_slab[0], 1)
        if self.arms:
            out["arms"] = True
        if self.table:
            out["table"] = True
        if self.truncation:
            out["truncation"] = round(self.truncation[0], 3)
        if self.rotation_deg:
            out["rotation_deg"] = round(self.rotation_deg, 2)
        if self.bowel_contrast:
            out["bowel_contrast_hu"] = round(self.bowel_contrast["hu"], 1)
        if self.liver_ml:
            out["extreme_organs_ml"] = {"liver": round(self.liver_ml), "spleen": round(self.spleen_ml)}
        if self.fluid_bowel:
            out["fluid_bowel_hu"] = round(self.fluid_bowel["hu"], 1)
        return out


NONE = Draw()


def arm_reach_mm(body, z_lo: float, z_hi: float, arms: dict | None) -> float:
    """How far (|x|, mm) the arms reach beyond the body's half-width over [z_lo, z_hi]; 0 without arms."""
    if arms is None:
        return 0.0
    return arms["gap_mm"] + 2 * arms["radius_mm"] + 5.0


def paint_arms(canvas: Canvas, body, sk, arms: dict | None) -> None:
    """Upper arms (humerus in muscle, fat and skin) from above the grid down to the elbow, then forearms.

    Painted only into air, after the body: the arms lie beside the chest wall, ``gap_mm`` away from it.
    """
    if arms is None:
        return
    grid = canvas.grid
    z = grid.axis(2)
    elbow = sk.z("L2") + arms["elbow_mm"]
    half_width, _, _, _ = body.profile(np.maximum(z, elbow))
    x, y = grid.axis(0)[:, None], grid.axis(1)[None, :]
    air = sid("background")
    for side in (1.0, -1.0):
        for k, zk in enumerate(z):
            forearm = zk < elbow
            r = arms["radius_mm"] * (0.72 if forearm else 1.0)
            if zk < elbow - 280:  # below the wrist
                continue
            cx = side * (float(half_width[k]) + arms["gap_mm"] + r)
            cy = body.y_widest + arms["dy_mm"] + (arms["forearm_dy_mm"] if forearm else 0.0)
            d = np.hypot(x - cx, y - cy)
            free = canvas.structure[:, :, k] == air
            if not (free & (d < r)).any():
                continue
            layer = np.full(d.shape, Tissue.MUSCLE, np.uint8)
            layer[d >= r * (1 - arms["fat"])] = Tissue.SUBCUT_FAT
            layer[d >= r - 2.0] = Tissue.SKIN
            inside = free & (d < r)
            canvas.structure[:, :, k][inside] = sid(side_name("arm", side))
            canvas.tissue[:, :, k][inside] = layer[inside]
            # the humerus (one bone) above the elbow; radius and ulna (two thin bones) below it
            bones = [(0.0, arms["humerus_mm"])] if not forearm else [(-0.35 * r, 6.0), (0.3 * r, 6.5)]
            for dy, rb in bones:
                db = np.hypot(x - cx, y - cy - dy)
                bone = inside & (db < rb)
                canvas.structure[:, :, k][bone] = sid(side_name("humerus", side))
                canvas.tissue[:, :, k][bone] = Tissue.BONE_CORTICAL
                canvas.tissue[:, :, k][bone & (db < rb - 2.5)] = Tissue.BONE_CANCELLOUS


def contrast_loops(spleen, contrast: dict | None) -> list[np.ndarray]:
    """Centre lines (m, 4: x, y, z, radius mm) of contrast-filled jejunal loops against the spleen's hilum."""
    if contrast is None:
        return []
    a, b, c = (spleen.shape[k] for k in ("a", "b", "c"))
    r = contrast["loop_mm"]
    pts = [
        spleen.to_patient([1.35 * a + r / spleen.scale, v * b, w * c])
        for v, w in ((0.8, 0.3), (0.3, -0.2), (0.7, -0.7))
    ]
    return [np.column_stack([np.asarray(pts), np.full(len(pts), r)])]


def paint_bowel_contrast(canvas: Canvas, spleen, contrast: dict | None) -> None:
    """Positive oral contrast: a loop beside the spleen, and every bowel lumen within ``radius_mm`` of it."""
    if contrast is None:
        return
    for path in contrast_loops(spleen, contrast):
        canvas.tube(path[:, :3], path[:, 3], "small_bowel", Tissue.GI_WALL, core=(0.7, Tissue.ORAL_CONTRAST))
    center = np.asarray(spleen.center, float)
    radius = contrast["radius_mm"]
    box = canvas.grid.box(center - radius, center + radius)
    if box is None:
        return
    near = (box.X - center[0]) ** 2 + (box.Y - center[1]) ** 2 + (box.Z - center[2]) ** 2 < radius**2
    lumen = np.isin(canvas.tissue[box.slices], [Tissue.STOOL, Tissue.BOWEL_CONTENT, Tissue.STOMACH_CONTENT])
    for name in ("colon", "small_bowel", "stomach", "duodenum"):
        canvas.retint(box, near & lumen, name, Tissue.ORAL_CONTRAST)


def rotate_maps(tissue: np.ndarray, structure: np.ndarray, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Turn both maps by ``angle_deg`` about the grid's central z axis (nearest neighbour; air fills in)."""
    if not angle_deg:
        return tissue, structure
    turn = [
        ndimage.rotate(a, angle_deg, axes=(0, 1), reshape=False, order=0, mode="constant", cval=0)
        for a in (tissue, structure)
    ]
    return turn[0], turn[1]


__all__ = ["Draw", "NONE", "Variants", "arm_reach_mm", "paint_arms", "paint_bowel_contrast", "rotate_maps"]
