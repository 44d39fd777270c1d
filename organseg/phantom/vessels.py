"""Vessels: aorta (with calcified plaque) and branches, IVC, portal system, renal vessels, ureters, and
the portal and hepatic-vein trees inside the liver.

Extrahepatic vessels are structures of their own (the intrahepatic IVC is not liver, as in
TotalSegmentator). Intrahepatic branches only change the tissue of liver voxels, so the liver label
keeps its vessels while the image shows them (bright in portal phase, dark in arterial phase).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from organseg.phantom.body import Body
from organseg.phantom.canvas import Canvas
from organseg.phantom.fields import Box, capsule, smooth_polyline
from organseg.phantom.organs import Organ
from organseg.phantom.skeleton import Skeleton
from organseg.phantom.thorax import Thorax
from organseg.phantom.tissues import Tissue


@dataclass(frozen=True)
class Vessel:
    """A polyline (m, 3) mm with radii (m,) mm, painted as ``structure`` with ``tissue``.

    ``inside`` set: only retint voxels of that structure (intrahepatic branches), never claim new ones.
    """

    points: np.ndarray
    radii: np.ndarray
    structure: str
    tissue: int
    inside: str | None = None


@dataclass(frozen=True)
class Vessels:
    """Every vessel of one patient, and calcified plaques ((centre mm, radius mm)) in the aorta."""

    items: list[Vessel] = field(default_factory=list)
    plaques: list[tuple[np.ndarray, float]] = field(default_factory=list)


def _tree(
    rng: np.random.Generator,
    root: np.ndarray,
    direction: np.ndarray,
    radius: float,
    length: float,
    depth: int,
    structure: str,
    tissue: int,
    inside: str | None,
) -> list[Vessel]:
    """A random branching tree: each branch bends a little and splits in two thinner children."""
    direction = np.asarray(direction, float) / np.linalg.norm(direction)
    bend = rng.normal(0, 0.25, 3)
    mid = root + direction * length * 0.5 + bend * length * 0.2
    end = root + (direction + bend * 0.3) * length
    out = [
        Vessel(
            np.array([root, mid, end]),
            np.array([radius, radius * 0.9, radius * 0.8]),
            structure,
            tissue,
            inside,
        )
    ]
    if depth > 0 and radius > 1.5:
        heading = (end - mid) / np.linalg.norm(end - mid)
        for sign in (1, -1):
            axis = np.cross(heading, rng.normal(size=3))
            axis /= np.linalg.norm(axis)
            angle = np.deg2rad(rng.uniform(20, 45)) * sign
            child = heading * np.cos(angle) + np.cross(axis, heading) * np.sin(angle)
            out += _tree(
                rng,
                end,
                child,
                radius * rng.uniform(0.6, 0.8),
                length * rng.uniform(0.6, 0.85),
                depth - 1,
                structure,
                tissue,
                inside,
            )
    return out


def _v(points, radii, structure: str, tissue: int, inside: str | None = None, smooth: int = 1) -> Vessel:
    """A vessel through ``points`` (mm) with ``radii`` (mm), its polyline smoothed ``smooth`` times."""
    p = smooth_polyline(np.column_stack([np.asarray(points, float), np.asarray(radii, float)]), smooth)
    return Vessel(p[:, :3], p[:, 3], structure, tissue, inside)


@dataclass(frozen=True)
class VesselAnchors:
    """What the vessels attach to: the sampled skeleton, body, thorax and organs (patient-frame mm).

    Attributes:
        sk: vertebral levels (the aorta lies on the bodies, bifurcates at L4; renal vessels at the hila).
        body: habitus (unused by the vessels today; kept so that the anchors describe the whole patient).
        thorax: the diaphragm dome (hepatic veins and the IVC's entry into the right atrium).
        liver: the liver (porta hepatis, intrahepatic portal and hepatic-vein trees).
        kidneys: ``{"kidney_right": Organ, "kidney_left": Organ}`` (renal arteries, veins, ureters).
        spleen: the spleen (splenic hilum: splenic artery and vein).
        pancreas: ``gut.sample_pancreas`` output (the splenic vein runs behind it; the confluence behind its neck).
        top_mm: top of the modelled trunk (the thoracic aorta starts above it).
    """

    sk: Skeleton
    body: Body
    thorax: Thorax
    liver: Organ
    kidneys: dict[str, Organ]
    spleen: Organ
    pancreas: dict
    top_mm: float


def sample_vessels(rng: np.random.Generator, anchors: VesselAnchors) -> Vessels:
    """Draw the aorta and its branches, the IVC, the portal system, renal vessels and ureters for one patient.

    Deterministic for a given generator state; the draws are made in a fixed order (aorta, IVC, hepatic veins,
    portal system, arteries, then per kidney), so the same ``rng`` always gives the same vessels.
    """
    items: list[Vessel] = []
    aorta, aorta_r, plaques = _sample_aorta(rng, anchors, items)
    ivc = _sample_ivc(rng, anchors, items)
    porta, hilum_s = _sample_portal(rng, anchors, items)
    _sample_arteries(rng, anchors, aorta, aorta_r, ivc, porta, hilum_s, items)
    return Vessels(items, plaques)


def _sample_aorta(rng, a: VesselAnchors, items: list[Vessel]) -> tuple[np.ndarray, np.ndarray, list]:
    """Aorta (T6 to the L4 bifurcation, sometimes an infrarenal aneurysm), iliac arteries, calcified plaque.

    Appends to ``items``; returns the aorta's centre line (5, 3), its radii (5,) and the plaques
    ((centre, radius) mm).
    """
    u, sk = rng.uniform, a.sk
    aorta_r = np.array([u(10, 14), u(9, 12), u(8, 11), u(7.5, 10), u(7, 9.5)])
    if rng.random() < 0.03:  # infrarenal aneurysm
        aorta_r[3] = u(15, 28)
    aorta = []
    for (z, lvl), dx in zip(
        (
            (a.top_mm + 20, "T6"),
            (sk.z("T10"), "T10"),
            (sk.z("L1"), "L1"),
            (sk.z("L3"), "L3"),
            (sk.z("L4") - 5, "L4"),
        ),
        (u(18, 28), u(12, 22), u(6, 15), u(4, 12), u(0, 8)),
    ):
        cx, cy = sk.center(z)
        aorta.append([cx - dx, cy + sk.ry(lvl) * (0.5 if lvl in ("T6", "T10") else 1.0) + u(2, 5), z])
    aorta = np.array(aorta)
    aorta[:, 1] += np.array([0, 0, 1, 1, 1]) * aorta_r  # abdominal aorta lies on the vertebral bodies
    items.append(_v(aorta, aorta_r, "aorta", Tissue.ARTERIAL_BLOOD))
    bif = aorta[-1]
    cx, cy = sk.center(sk.z("S1"))
    for side in (1.0, -1.0):
        iliac = [
            bif,
            [side * u(30, 45), cy + u(20, 35), sk.z("S1") - u(0, 20)],
            [side * u(55, 75), cy + u(45, 65), sk.z("S1") - u(60, 90)],
        ]
        items.append(_v(iliac, [aorta_r[-1] * 0.7, u(5, 7), u(4.5, 6)], "artery", Tissue.ARTERIAL_BLOOD))
    plaques = []
    if rng.random() < 0.35:
        for _ in range(int(rng.integers(2, 12))):
            i = rng.uniform(1.5, len(aorta) - 1.001)
            p = aorta[int(i)] + (aorta[int(i) + 1] - aorta[int(i)]) * (i % 1)
            d = rng.normal(size=3)
            d[2] = 0
            plaques.append((p + d / np.linalg.norm(d) * aorta_r[int(i)] * 0.9, float(u(1.5, 3.5))))
    return aorta, aorta_r, plaques


def _sample_ivc(rng, a: VesselAnchors, items: list[Vessel]) -> list:
    """IVC (iliac confluence, right of the spine, behind the caudate lobe, right atrium), iliac veins and the
    three hepatic-vein trees. Appends to ``items``; returns the IVC's control points."""
    u, sk = rng.uniform, a.sk
    ivc_r = u(9, 13)
    ivc = []
    for z, lvl, dx, dy in (
        (sk.z("L5"), "L5", u(12, 22), u(5, 12)),
        (sk.z("L3"), "L3", u(15, 25), u(5, 12)),
        (sk.z("L1"), "L1", u(18, 30), u(8, 18)),
    ):
        cx, cy = sk.center(z)
        ivc.append([cx + sk.rx(lvl) * 0.3 + dx, cy + sk.ry(lvl) + dy, z])
    z_atrium = a.thorax.dome.right_peak[2] + u(10, 25)
    ivc += [[u(15, 30), u(20, 35), sk.z("T11")], [u(5, 20), u(30, 50), z_atrium]]
    items.append(_v(ivc, np.full(len(ivc), ivc_r), "inferior_vena_cava", Tissue.VENOUS_BLOOD))
    for side in (1.0, -1.0):
        vein = [
            ivc[0],
            [side * u(25, 40), cy + u(10, 25), sk.z("S1") - u(0, 20)],  # cy: the spine's y at L1
            [side * u(50, 70), cy + u(35, 55), sk.z("S1") - u(60, 90)],
        ]
        items.append(_v(vein, [ivc_r * 0.7, u(6, 8), u(5, 7)], "inferior_vena_cava", Tissue.VENOUS_BLOOD))
    # hepatic veins: three trees fanning from the IVC just below the dome
    hv_root = np.array([ivc[3][0], ivc[3][1] + 5, a.thorax.dome.right_peak[2] - u(10, 25)])
    for d in ((1, 0.2, -0.5), (0.1, 1, -0.4), (-0.7, 0.7, -0.3)):
        items += _tree(
            rng, hv_root, np.array(d) + rng.normal(0, 0.15, 3), u(4.5, 7), u(45, 70), 2, "liver",
            Tissue.VENOUS_BLOOD, "liver",
        )  # fmt: skip
    return ivc


def _sample_portal(rng, a: VesselAnchors, items: list[Vessel]) -> tuple[np.ndarray, np.ndarray]:
    """Portal system: splenic vein and SMV join behind the pancreatic neck; the portal vein runs to the liver
    hilum and branches inside the liver. Appends to ``items``; returns the porta hepatis and the splenic
    hilum (mm)."""
    u, sk, liver, pancreas = rng.uniform, a.sk, a.liver, a.pancreas
    neck = pancreas["points"][1]
    confluence = neck + [u(-5, 5), -u(10, 16), u(-5, 5)]
    porta = liver.to_patient([-0.15 * liver.shape["aR"], 0.05 * liver.shape["bR"], -0.35 * liver.shape["cR"]])
    pv_r = u(6, 8)
    items.append(
        _v(
            [confluence, 0.5 * (confluence + porta) + [0, 0, 10], porta],
            [pv_r] * 3,
            "portal_vein_and_splenic_vein",
            Tissue.PORTAL_BLOOD,
        )
    )
    for d in ((1, -0.3, 0.3), (-1, 0.5, 0.2)):
        items += _tree(
            rng, porta, np.array(d) + rng.normal(0, 0.15, 3), pv_r * 0.8, u(40, 60), 3, "liver",
            Tissue.PORTAL_BLOOD, "liver",
        )  # fmt: skip
    hilum_s = a.spleen.to_patient([a.spleen.shape["a"], 0, 0])
    behind = pancreas["points"][2:] - [0, 1, 0] * (pancreas["radii"][2:, None] * 0.8 + 3)
    items.append(
        _v(
            [confluence, *behind, hilum_s],
            [u(4, 5.5)] * (len(behind) + 2),
            "portal_vein_and_splenic_vein",
            Tissue.PORTAL_BLOOD,
        )
    )
    items.append(
        _v(
            [
                confluence,
                confluence + [u(0, 8), u(0, 10), -40],
                [confluence[0] + u(-5, 10), confluence[1] + u(5, 20), sk.z("L4")],
            ],
            [u(4, 6)] * 3,
            "portal_vein_and_splenic_vein",
            Tissue.PORTAL_BLOOD,
        )
    )
    return porta, hilum_s


def _sample_arteries(rng, a: VesselAnchors, aorta, aorta_r, ivc, porta, hilum_s, items: list[Vessel]) -> None:
    """Celiac trunk (hepatic and splenic arteries), SMA, and per kidney its artery, vein and ureter."""
    u, sk = rng.uniform, a.sk

    def on_aorta(z, ahead=0.0):
        i = np.clip(np.searchsorted(-aorta[:, 2], -z), 1, len(aorta) - 1)
        p0, p1 = aorta[i - 1], aorta[i]
        p = p0 + (p1 - p0) * (p0[2] - z) / max(p0[2] - p1[2], 1e-6)
        return p + [0, ahead, 0]

    celiac = on_aorta(sk.z("T12") + u(-5, 5), aorta_r[2])
    split = celiac + [u(-3, 3), u(12, 20), u(-3, 3)]
    items.append(
        _v([celiac, split, porta + [-5, 5, -10]], [u(3, 4), 3, 2.5], "artery", Tissue.ARTERIAL_BLOOD)
    )
    wiggle = np.linspace(split, hilum_s, 7) + np.concatenate(
        [[0, 0, 0]] + [rng.normal(0, 6, 3) for _ in range(5)] + [[0, 0, 0]]
    ).reshape(7, 3)
    items.append(_v(wiggle, np.full(7, u(2.5, 3.5)), "artery", Tissue.ARTERIAL_BLOOD))
    sma = on_aorta(sk.z("L1") - u(5, 15), aorta_r[2])
    items.append(
        _v(
            [sma, sma + [0, 15, -10], sma + [u(-5, 5), 18, -80]],
            [u(3, 4.5)] * 3,
            "artery",
            Tissue.ARTERIAL_BLOOD,
        )
    )
    for name, kidney in a.kidneys.items():
        side = 1.0 if name.endswith("right") else -1.0
        hilum = kidney.to_patient([-kidney.shape["a"] * 0.9, 0, 0])
        items.append(
            _v(
                [on_aorta(hilum[2] + u(0, 10), 0), hilum],
                [u(2.5, 3.5)] * 2,
                "artery",
                Tissue.ARTERIAL_BLOOD,
                smooth=0,
            )
        )
        ivc_pt = np.array([ivc[2][0], ivc[2][1], hilum[2]])
        path = [hilum, ivc_pt] if side > 0 else [hilum, on_aorta(hilum[2], aorta_r[2] + 6), ivc_pt]
        items.append(_v(path, [u(4, 6)] * len(path), "renal_vein", Tissue.VENOUS_BLOOD, smooth=1))
        pelvis = kidney.to_patient([-kidney.shape["a"] * 0.6, 0, -0.05 * kidney.shape["c"]])
        ux, uy = sk.center(sk.z("L3"))
        ureter = [
            pelvis,
            [side * u(35, 50), uy + u(15, 25), sk.z("L3")],
            [side * u(40, 55), uy + u(40, 55), sk.z("S1") - 40],
        ]
        items.append(_v(ureter, [u(2, 3)] * 3, "ureter", Tissue.URINE))


def paint_vessels(canvas: Canvas, vessels: Vessels) -> None:
    for v in vessels.items:
        if v.inside is None:
            canvas.tube(v.points, v.radii, v.structure, v.tissue)
        else:
            _retint_tube(canvas, v)
    for center, radius in vessels.plaques:
        box = canvas.grid.box(center - radius, center + radius)
        if box is not None:
            d2 = (box.X - center[0]) ** 2 + (box.Y - center[1]) ** 2 + (box.Z - center[2]) ** 2
            canvas.retint(box, d2 < radius**2, "aorta", Tissue.BONE_CORTICAL)


def _retint_tube(canvas: Canvas, v: Vessel) -> None:
    for a, b, ra, rb in zip(v.points[:-1], v.points[1:], v.radii[:-1], v.radii[1:]):
        pad = max(ra, rb) + 1
        box: Box | None = canvas.grid.box(np.minimum(a, b) - pad, np.maximum(a, b) + pad)
        if box is not None:
            q, _ = capsule(box, a, b, ra, rb)
            canvas.retint(box, q < 1, v.inside, v.tissue)
