"""The kidneys: placed by where their poles fall, below the spleen and the liver, as in real abdomens.

Split from ``organs`` (templates, painting and the other solid organs live there). Heights are patient-frame
mm (+z superior); vertebral levels as in ``anatomy_stats`` (T12 = 0, L1 = 1).
"""

from __future__ import annotations

import numpy as np

from organseg.phantom.body import Body, psoas_edge_mm
from organseg.phantom.fields import mirror_x, rotation
from organseg.phantom.organs import (
    KIDNEY_LOSS,
    Organ,
    centroid_z,
    inside_voxels,
    painted_voxels,
    painted_z_range_mm,
    placed_moved,
)
from organseg.phantom.skeleton import Skeleton
from organseg.phantom.thorax import Dome


def sample_kidneys(
    rng: np.random.Generator,
    sk: Skeleton,
    body: Body,
    spleen: Organ,
    muscles: dict,
    liver: Organ,
    dome: Dome,
) -> dict[str, Organ]:
    """Both kidneys (``kidney_right``, ``kidney_left``): beans with cortex, pyramids and sinus, beside the psoas,
    the left one below the spleen, the right one below the liver and lower than the left; sometimes cysts.

    Placed by their poles as painted (real label maps and anatomy texts; ``bench_anatomy.py``): the left
    kidney's centre 42-60 mm below the spleen's (real 44-52 mm), its upper pole between T11 and L1; the right
    kidney's upper pole 98-122 mm below the liver's top (real 105-122 mm), at least 8-20 mm below the left's
    (real 9-30 mm), between T12 and L1, its lower pole above L4.
    """
    liver_top = painted_z_range_mm(liver, dome, step_mm=4.0, top_only=True)[1]
    # the spleen as painted: where they meet, the liver and the left kidney take part of it (they outrank it)
    spleen_box, spleen_inside = painted_voxels(spleen, dome, (liver,), 4.0)
    below_spleen, below_liver, below_left = rng.uniform(42, 60), rng.uniform(98, 122), rng.uniform(8, 20)
    out: dict[str, Organ] = {}
    for side in (-1.0, 1.0):  # left first: the right kidney's height follows the left's upper pole
        shape = {
            "a": rng.uniform(26, 32),
            "b": rng.uniform(22, 28),
            "c": rng.uniform(40, 46),  # real kidneys: 95-110 mm long (TotalSegmentator maps)
            "bend": rng.uniform(0.1, 0.25),
        }
        shape.update(
            cortex=rng.uniform(5, 8), pyramids=int(rng.integers(4, 7)), phase=rng.uniform(0, 2 * np.pi)
        )
        axes = mirror_x(side) @ rotation(rng.uniform(5, 20), -rng.uniform(8, 20), -rng.uniform(20, 40))
        x, y = rng.uniform(62, 80), rng.uniform(-12, 8)
        overlap = rng.uniform(0.3, 0.6)  # of the half-width: the medial edge may lie on the psoas
        # a first height: the left below the spleen, the right below the liver; moved by its poles below
        z = spleen.center[2] - below_spleen if side < 0 else liver_top - below_liver - 50.0
        psoas = psoas_edge_mm(body, sk, muscles, z)

        def center(s, x=x, y=y, z=z, side=side, psoas=psoas, overlap=overlap, a=shape["a"]):
            return [side * max(x, psoas + (1 - overlap) * a * s), y, z]

        cysts = []
        if rng.random() < 0.12:
            for _ in range(int(rng.integers(1, 3))):
                d = rng.normal(size=3)
                d[0] = abs(d[0])
                cysts.append((d / np.linalg.norm(d), rng.uniform(5, 18)))
        name = "kidney_right" if side > 0 else "kidney_left"
        top_left = painted_z_range_mm(out["kidney_left"], dome)[1] if side > 0 else 0.0

        def move(kidney: Organ, side=side, top_left=top_left) -> float:
            lo, hi = painted_z_range_mm(kidney, dome)
            if side < 0:
                carved = spleen_inside & ~inside_voxels(spleen_box, kidney)
                spleen_z = centroid_z(spleen_box, carved, float(spleen.center[2]))
                return _left_kidney_top(sk, hi, hi - kidney.center[2], spleen_z) - hi
            drawn = min(liver_top - below_liver, top_left - below_left)
            return _right_kidney_top(sk, hi - lo, drawn, liver_top, top_left) - hi

        out[name] = placed_moved(
            rng,
            move,
            "kidney",
            name,
            shape,
            rng.uniform(115, 230) * KIDNEY_LOSS,
            axes,
            center,
            rng.uniform(25, 40),
            rng.uniform(1.5, 3.5),
            cysts=cysts,
            rounds=2 if side < 0 else 1,  # the left kidney's move changes how much of the spleen it takes
        )
    return {"kidney_right": out["kidney_right"], "kidney_left": out["kidney_left"]}


def _left_kidney_top(sk: Skeleton, drawn: float, up: float, spleen_z: float) -> float:
    """Height (mm) of the left kidney's upper pole (``up`` mm above its centre): ``drawn`` moved into what real
    anatomy allows: the upper pole between T10 and L1 first, then the centre 40-62 mm below the spleen's
    (``anatomy_stats.REFERENCE``: 35-65 mm)."""
    lo, hi = sk.level_z(0.55), sk.level_z(-1.5)
    want = float(np.clip(drawn, spleen_z - 62.0 + up, spleen_z - 40.0 + up))
    return float(np.clip(want, lo, hi))


def _right_kidney_top(sk: Skeleton, length: float, drawn: float, liver_top: float, left_top: float) -> float:
    """Height (mm) of the right kidney's upper pole: ``drawn`` moved into what real anatomy allows.

    Upper pole at T12-L1 and lower pole above L4 come first, then at least 8 mm below the left kidney's upper
    pole, then 95-128 mm below the liver's top (``anatomy_stats.REFERENCE``: 90-135 mm).
    """
    floor = max(sk.level_z(1.2), sk.level_z(4.2) + length)  # the lowest the upper pole may sit
    hi = min(sk.level_z(-0.5), left_top - 8.0, liver_top - 95.0)
    lo = max(floor, liver_top - 128.0)
    return float(max(min(max(drawn, lo), hi), floor))
