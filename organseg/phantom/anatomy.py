"""A whole synthetic abdomen: sample its anatomy (pure data, mm) and rasterize it onto any grid.

``sample_anatomy(rng)`` draws one patient: skeleton, habitus, diaphragm, organs, gut, vessels,
implants. The result is resolution-free; ``rasterize(anatomy, grid)`` paints it on a patient-frame
grid and returns the tissue and structure maps. Sampling and painting are separate so the same
patient can be rendered at 3 mm for training and at 0.8 mm for a dataset, or re-rendered with new
contrast and noise (``appearance.render``) at no anatomy cost.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from organseg.phantom import body as body_mod
from organseg.phantom import gut as gut_mod
from organseg.phantom import kidneys as kidneys_mod
from organseg.phantom import organs as organs_mod
from organseg.phantom import skeleton as skel_mod
from organseg.phantom import thorax as thorax_mod
from organseg.phantom import variants as variants_mod
from organseg.phantom import vessels as vessels_mod
from organseg.phantom.canvas import Canvas
from organseg.phantom.fields import Grid
from organseg.phantom.tissues import Tissue

#: Fields of view along z. ``random`` draws one with the weights below.
FOVS: dict[str, float] = {"upper": 0.15, "abdomen": 0.45, "abdomen_pelvis": 0.25, "thoracoabdominal": 0.15}


@dataclass(frozen=True)
class Anatomy:
    """One sampled patient, in patient-frame millimetres (RAS axes, origin at the L1 body centre)."""

    skeleton: skel_mod.Skeleton
    body: body_mod.Body
    muscles: dict
    thorax: thorax_mod.Thorax
    organs: dict[str, organs_mod.Organ]
    gallbladder: organs_mod.Organ | None
    pancreas: dict
    gut: gut_mod.Gut
    vessels: vessels_mod.Vessels
    implants: list[tuple[np.ndarray, np.ndarray, float]]
    top_mm: float
    bottom_mm: float
    variant: variants_mod.Draw = variants_mod.NONE  # arms, table, oral contrast, organ sizes (``variants``)

    def organ_z_range(self) -> tuple[float, float]:
        """Lowest and highest z (mm) of the four target organs (templates, before warps and clipping)."""
        ranges = np.array([organs_mod.z_range_mm(o) for o in self.organs.values()])
        return float(ranges[:, 0].min()), float(min(ranges[:, 1].max(), self.thorax.dome.right_peak[2]))


def sample_anatomy(
    rng: np.random.Generator, perirenal_fat: bool = False, variant: variants_mod.Draw = variants_mod.NONE
) -> Anatomy:
    """Draw one patient. Deterministic for a given generator state.

    ``perirenal_fat``: wrap each kidney in a layer of fat (``organs.paint_perirenal_fat``). Its thickness is
    drawn either way, after everything else, so the option changes nothing but that layer.
    ``variant``: what ``variants.Variants.draw`` gave this phantom (organ volumes, arms, table, oral contrast);
    it takes nothing from ``rng``.
    """
    sk = skel_mod.sample_skeleton(rng)
    body = body_mod.sample_body(rng, sk)
    if variant.table is not None and body.table is None:
        body = replace(body, table=variant.table)
    muscles = body_mod.sample_muscle_params(rng)
    dome = thorax_mod.sample_dome(rng, sk, body)
    top = sk.z("T6") + 30
    bottom = sk.z("S1") - 140
    thorax = thorax_mod.sample_thorax(rng, sk, dome, top)
    liver = organs_mod.sample_liver(rng, sk, body, dome, volume_ml=variant.liver_ml)
    spleen = organs_mod.sample_spleen(rng, sk, body, dome, volume_ml=variant.spleen_ml)
    kidneys = kidneys_mod.sample_kidneys(rng, sk, body, spleen, muscles, liver, dome)
    gallbladder = organs_mod.sample_gallbladder(rng, liver)
    pancreas = gut_mod.sample_pancreas(rng, sk, spleen)
    gut = gut_mod.with_fluid_bowel(gut_mod.sample_gut(rng, sk, body, dome, spleen), sk, variant.fluid_bowel)
    anchors = vessels_mod.VesselAnchors(sk, body, thorax, liver, kidneys, spleen, pancreas, top)
    vessels = vessels_mod.sample_vessels(rng, anchors)
    implants = _sample_implants(rng, sk, liver, gallbladder is None)
    for kidney in kidneys.values():  # drawn last, so every draw above is what it was without them
        growth = float(rng.uniform(*organs_mod.PERIRENAL_FAT_GROWTH))
        kidney.extras["perirenal_fat"] = growth if perirenal_fat else 0.0
    organs = {"liver": liver, "spleen": spleen, **kidneys}
    return Anatomy(
        sk, body, muscles, thorax, organs, gallbladder, pancreas, gut, vessels, implants, top, bottom, variant
    )


def _sample_implants(
    rng: np.random.Generator, sk: skel_mod.Skeleton, liver: organs_mod.Organ, cholecystectomy: bool
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Rare metal: surgical clips in the gallbladder fossa, or pedicle screws and rods in the spine."""
    out = []
    if rng.random() < (0.5 if cholecystectomy else 0.02):
        fossa = liver.to_patient(
            [-0.3 * liver.shape["aR"], 0.35 * liver.shape["bR"], -0.6 * liver.shape["cR"]]
        )
        for _ in range(int(rng.integers(2, 6))):
            a = fossa + rng.normal(0, 8, 3)
            out.append((a, a + rng.normal(0, 1, 3) * 3, 1.0))
    if rng.random() < 0.015:
        levels = ["L2", "L3", "L4", "L5"]
        i = int(rng.integers(0, 3))
        for side in (1.0, -1.0):
            tops = []
            for lvl in levels[i : i + 2]:
                cx, cy = sk.center(sk.z(lvl))
                head = np.array([cx + side * 28, cy - 45, sk.z(lvl)])
                out.append((head, np.array([cx + side * 8, cy, sk.z(lvl)]), 3.0))
                tops.append(head)
            out.append((tops[0] + [0, 0, 10], tops[-1] - [0, 0, 10], 3.0))
    return out


def rasterize(anatomy: Anatomy, grid: Grid, table: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Paint ``anatomy`` on ``grid``: (tissue, structure) uint8 maps, index order (x, y, z).

    Painting order does not decide overlaps (structure priorities do), except that inner detail
    is painted after the structure that holds it. ``table=False`` leaves the table out (to paint it
    after turning the patient: ``variants.rotate_maps``).
    """
    canvas = Canvas(grid)
    a = anatomy
    body_mod.paint_body(canvas, a.body)
    if table:
        body_mod.paint_table(canvas, a.body)
    gut_mod.paint_gut(canvas, a.gut)
    gut_mod.paint_pancreas(canvas, a.pancreas)
    organs_mod.paint_liver(canvas, a.organs["liver"])
    organs_mod.paint_spleen(canvas, a.organs["spleen"])
    organs_mod.paint_kidney(canvas, a.organs["kidney_right"])
    organs_mod.paint_kidney(canvas, a.organs["kidney_left"])
    organs_mod.paint_gallbladder(canvas, a.gallbladder)
    vessels_mod.paint_vessels(canvas, a.vessels)
    organs_mod.paint_perirenal_fat(canvas, a.organs["kidney_right"])
    organs_mod.paint_perirenal_fat(canvas, a.organs["kidney_left"])
    body_mod.paint_muscles(canvas, a.body, a.skeleton, a.muscles)
    thorax_mod.paint_thorax(canvas, a.thorax)
    skel_mod.paint_spine(canvas, a.skeleton)
    skel_mod.paint_ilium(canvas, a.skeleton)
    skel_mod.paint_ribs(canvas, a.skeleton, a.body)
    for p, q, r in a.implants:
        canvas.tube([p, q], [r, r], "implant", Tissue.METAL)
    variants_mod.paint_bowel_contrast(canvas, a.organs["spleen"], a.variant.bowel_contrast)
    variants_mod.paint_arms(canvas, a.body, a.skeleton, a.variant.arms)
    return canvas.tissue, canvas.structure


def sample_fov_z(rng: np.random.Generator, anatomy: Anatomy, fov: str | None) -> tuple[str, float, float]:
    """(name, z_low, z_high) in patient mm for a field-of-view preset (``None``/``random``: drawn)."""
    if fov in (None, "random"):
        names = list(FOVS)
        fov = names[int(rng.choice(len(names), p=np.array(list(FOVS.values())) / sum(FOVS.values())))]
    if fov not in FOVS:
        raise ValueError(f"unknown field of view {fov!r}; expected one of {', '.join(FOVS)} or 'random'")
    lo, hi = anatomy.organ_z_range()
    sk = anatomy.skeleton
    u = rng.uniform
    if fov == "upper":
        center = u(sk.z("L1") - 10, sk.z("T11"))
        half = u(22, 60)
        z0, z1 = center - half, center + half
    elif fov == "abdomen":
        z0, z1 = lo - u(10, 50), hi + u(10, 40)
    elif fov == "abdomen_pelvis":
        z0, z1 = sk.z("S1") - u(60, 110), hi + u(10, 40)
    else:
        z0, z1 = lo - u(5, 30), hi + u(60, 100)
    return fov, max(z0, anatomy.bottom_mm), min(z1, anatomy.top_mm)
