"""Synthetic CT from real label maps: real anatomy, the phantoms' randomized appearance.

The phantoms' anatomy is drawn from shape templates; a label map (TotalSegmentator-style, see
``labelmaps_io``) brings real anatomy: where the spleen sits under the left dome, how far the liver
reaches up. ``render_label_map`` turns one map into a new training case each seed (SynthSeg-style
domain randomization):

1. a random output grid in world RAS mm at the training spacing: a field of view (``FOVS``: whole
   abdomen, upper abdomen, a thin slab of 20..60 mm, the whole map) and sometimes an in-plane field
   smaller than the body;
2. one nearest-neighbour pull-back of the structure ids onto that grid (never a full-resolution float
   copy) through a smooth random deformation: small rotation and global scaling (no mirroring:
   left stays left in world space), a per-organ scaling of the output organs and a B-spline elastic
   field (``fields.SmoothField``);
3. tissues: each structure drawn as its tissue class (bone shell and marrow, kidney cortex and
   medulla, gut wall and content, ...), and what the map lacks added procedurally: the body outline
   (per-slice convex hull of all structures), visceral fat with soft-tissue strands, a muscle wall,
   subcutaneous fat of random thickness and skin;
4. CT appearance by ``appearance.render`` (HU per contrast phase, texture, blur, noise, artefacts).

Labels are the output ``LabelMap``'s organs looked up by structure name (TotalSegmentator ids 5, 2, 3,
1 -> organseg 1 liver, 2 kidney_right, 3 kidney_left, 4 spleen), on the image's grid.

Real example: ``../shared/data/anatomy/totalseg-s0011`` is subject s0011 of the TotalSegmentator dataset
v2.0.1 (Wasserthal et al., Radiology: AI 2023, Zenodo 10047292, CC BY 4.0); models trained with it must
cite it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform
from scipy import ndimage

from organseg import io
from organseg.config import Config, LabelMap
from organseg.errors import ConfigError
from organseg.phantom import appearance
from organseg.phantom.fields import Grid, SmoothField, rotation
from organseg.phantom.labelmaps_io import KINDS, SourceMap, load_label_map, structure_kind
from organseg.phantom.tissues import Tissue

T = Tissue
#: Fields of view and how often ``fov="random"`` draws each.
FOVS: dict[str, float] = {"abdomen": 0.45, "upper": 0.2, "slab": 0.2, "full": 0.15}
DEFAULT_MAX_VOXELS = 16_000_000
#: Base tissue of each structure kind (``labelmaps_io.KIND_RULES``); shells and interiors are refined.
KIND_TISSUES: dict[str, int] = {
    "none": T.AIR, "liver": T.LIVER, "spleen": T.SPLEEN, "kidney": T.KIDNEY_CORTEX, "cyst": T.KIDNEY_CYST,
    "bile": T.BILE, "pancreas": T.PANCREAS, "gut": T.GI_WALL, "gi_wall": T.GI_WALL,
    "bladder": T.BLADDER_URINE, "lung": T.LUNG, "gas": T.GAS, "bone": T.BONE_CORTICAL,
    "cartilage": T.CARTILAGE, "disc": T.DISC, "artery": T.ARTERIAL_BLOOD, "vein": T.VENOUS_BLOOD,
    "portal": T.PORTAL_BLOOD, "heart": T.MYOCARDIUM, "muscle": T.MUSCLE, "soft": T.MUSCLE, "cord": T.CSF,
    "skin": T.SKIN, "fat": T.VISCERAL_FAT, "metal": T.METAL,
}  # fmt: skip
_KIND_ID = {k: i for i, k in enumerate(KINDS)}


def _fov_z(rng: np.random.Generator, src: SourceMap, organ_ids: list[int], fov: str) -> tuple[float, float]:
    """World z range (mm) of the field of view, within the map's extent."""
    all_lo = min(b[0][2] for b in src.boxes_mm.values())
    all_hi = max(b[1][2] for b in src.boxes_mm.values())
    lo = min(src.boxes_mm[i][0][2] for i in organ_ids)
    hi = max(src.boxes_mm[i][1][2] for i in organ_ids)
    if fov == "full":
        z0, z1 = all_lo, all_hi
    elif fov == "abdomen":
        z0, z1 = lo - rng.uniform(10, 80), hi + rng.uniform(5, 60)
    elif fov == "upper":
        z1 = hi + rng.uniform(0, 30)
        z0 = z1 - rng.uniform(80, 160)
    else:  # a thin slab through the organs
        thick = rng.uniform(20, 60)
        mid = rng.uniform(lo + thick / 2, max(lo + thick / 2, hi - thick / 2))
        z0, z1 = mid - thick / 2, mid + thick / 2
    return max(z0, all_lo), min(z1, all_hi)


def _choose_grid(
    rng: np.random.Generator, src: SourceMap, organ_ids: list[int], spacing, fov: str, max_voxels: int
) -> tuple[Grid, dict]:
    """An axis-aligned RAS output grid (world mm): the field of view, the body and a margin."""
    z0, z1 = _fov_z(rng, src, organ_ids, fov)
    in_view = [b for b in src.boxes_mm.values() if b[1][2] >= z0 and b[0][2] <= z1]
    lo = np.min([b[0] for b in in_view], axis=0)
    hi = np.max([b[1] for b in in_view], axis=0)
    margin = rng.uniform(50, 80, size=2)  # room for the procedural wall and fat
    xy_lo, xy_hi = lo[:2] - margin, hi[:2] + margin
    info: dict = {"fov": fov}
    if rng.random() < 0.15:  # a body larger than the field of view: cut around the organs' middle
        organs_lo = np.min([src.boxes_mm[i][0][:2] for i in organ_ids], axis=0)
        organs_hi = np.max([src.boxes_mm[i][1][:2] for i in organ_ids], axis=0)
        centre = 0.5 * (organs_lo + organs_hi) + rng.normal(0, 10, 2)
        half = 0.5 * (xy_hi - xy_lo) * rng.uniform(0.6, 0.85)
        xy_lo, xy_hi = centre - half, centre + half
        info["cut_body"] = True
    dims = [max(8, int(np.ceil((xy_hi[d] - xy_lo[d]) / spacing[d])) + 1) for d in range(2)]
    nz = max(1, int(round((z1 - z0) / spacing[2])) + 1)
    cap = max(1, max_voxels // (dims[0] * dims[1]))
    if nz > cap:
        mid = 0.5 * (z0 + z1)
        nz, z0 = cap, mid - (cap - 1) * spacing[2] / 2
    grid = Grid((float(xy_lo[0]), float(xy_lo[1]), float(z0)), tuple(spacing), (dims[0], dims[1], nz))
    info.update(spacing_mm=[round(float(s), 4) for s in spacing], shape=list(grid.shape))
    return grid, info


def _pull_back(
    rng: np.random.Generator, src: SourceMap, grid: Grid, organ_ids: list[int]
) -> tuple[np.ndarray, dict]:
    """Structure ids on ``grid`` through a random smooth deformation (nearest neighbour), and what was drawn.

    Output world point p is traced back to the map: p + elastic(p), then the inverse of a small
    rotation and scaling about the organs' centre, then the inverse of each organ's scaling, blended
    in with a plateau weight around the organ (so the map stays smooth and one-to-one).
    """
    box = grid.full()
    lo, hi = (
        np.array(grid.origin_mm),
        np.array(grid.origin_mm) + np.array(grid.spacing_mm) * (np.array(grid.shape) - 1),
    )
    amp = rng.uniform(2, 8)
    step = rng.uniform(40, 90)
    d = SmoothField.random(rng, lo, hi, step, k=3)(box) * np.float32(amp)
    q = [
        (box.X + d[0]).astype(np.float32),
        (box.Y + d[1]).astype(np.float32),
        (box.Z + d[2]).astype(np.float32),
    ]
    del d
    centre = np.mean([0.5 * (src.boxes_mm[i][0] + src.boxes_mm[i][1]) for i in organ_ids], axis=0)
    angles = rng.normal(0, [3.0, 3.0, 6.0])
    scale = np.exp(rng.uniform(np.log(0.92), np.log(1.08), 3))
    inv = np.linalg.inv(rotation(*angles) @ np.diag(scale)).astype(np.float32)
    rel = [q[k] - np.float32(centre[k]) for k in range(3)]
    q = [sum(inv[r, k] * rel[k] for k in range(3)) + np.float32(centre[r]) for r in range(3)]
    del rel
    organ_scales = {}
    for i in organ_ids:
        name = src.names[i]
        s = float(np.exp(rng.uniform(*np.log((0.8, 1.35) if name == "spleen" else (0.87, 1.15)))))
        organ_scales[name] = round(s, 3)
        c = 0.5 * (src.boxes_mm[i][0] + src.boxes_mm[i][1])
        half = 0.65 * (src.boxes_mm[i][1] - src.boxes_mm[i][0]) * max(s, 1.0) + 5.0
        rel = [q[k] - np.float32(c[k]) for k in range(3)]
        r2 = sum((rel[k] / np.float32(half[k])) ** 2 for k in range(3))
        w = np.exp(-(r2**2)) * np.float32(1.0 / s - 1.0)
        q = [q[k] + w * rel[k] for k in range(3)]
        del rel, r2, w
    inv_aff = np.linalg.inv(src.affine).astype(np.float32)
    out = np.zeros(grid.shape, src.classes.dtype)
    idx = [
        np.rint(sum(inv_aff[r, k] * q[k] for k in range(3)) + inv_aff[r, 3]).astype(np.int32)
        for r in range(3)
    ]
    del q
    inside = np.ones(grid.shape, bool)
    for r in range(3):
        inside &= (idx[r] >= 0) & (idx[r] < src.classes.shape[r])
    out[inside] = src.classes[idx[0][inside], idx[1][inside], idx[2][inside]]
    info = {
        "rotation_deg": [round(float(a), 2) for a in angles],
        "scale": [round(float(s), 3) for s in scale],
        "elastic_mm": round(float(amp), 2),
        "organ_scale": organ_scales,
    }
    return out, info


def _shell(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def _smooth(rng: np.random.Generator, grid: Grid, step_mm: float) -> np.ndarray:
    """A smooth random field (about unit variance) on ``grid``, B-spline lattice ``step_mm`` apart."""
    local = Grid((0.0, 0.0, 0.0), grid.spacing_mm, grid.shape)
    extent = np.array(grid.spacing_mm) * (np.array(grid.shape) - 1)
    return SmoothField.random(rng, (0, 0, 0), extent, step_mm)(local.full())


def _body(fg: np.ndarray, grid: Grid, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Cavity, muscle wall, subcutaneous fat and skin masks around the labelled structures (per slice)."""
    from skimage.morphology import convex_hull_image

    hull = np.zeros_like(fg)
    for k in np.flatnonzero(fg.any(axis=(0, 1))):
        hull[:, :, k] = convex_hull_image(fg[:, :, k])
    # distance in-plane only: a huge z sampling keeps every slice's nearest hull voxel in that slice
    dist = ndimage.distance_transform_edt(~hull, sampling=(*grid.spacing_mm[:2], 1e6)).astype(np.float32)
    gap, wall = rng.uniform(0, 6), rng.uniform(4, 15)
    # subcutaneous fat varies slowly around the body (thicker flanks or belly), never to nothing
    varying = np.clip(1 + rng.uniform(0.1, 0.35) * _smooth(rng, grid, rng.uniform(80, 140)), 0.4, None)
    fat = np.float32(np.exp(rng.uniform(np.log(5), np.log(45)))) * varying
    skin = max(1.5, 0.6 * min(grid.spacing_mm[:2]))
    cavity = hull | (dist <= gap)
    muscle = ~cavity & (dist <= gap + wall)
    subcut = ~cavity & ~muscle & (dist <= gap + wall + fat)
    outer = ~cavity & ~muscle & ~subcut & (dist <= gap + wall + fat + skin)
    return (
        cavity,
        muscle,
        subcut,
        outer,
        {"wall_mm": round(wall, 1), "fat_mm": round(float(np.median(fat)), 1)},
    )


def _table(tissue: np.ndarray, body: np.ndarray, grid: Grid, rng: np.random.Generator) -> bool:
    """A patient table under the back (world -y), in place: a dense shell over foam, where it fits the grid."""
    per_slice = body.any(axis=0)  # (y, z)
    slices = np.flatnonzero(per_slice.any(axis=0))
    if slices.size == 0 or rng.random() < 0.35:
        return False
    y = grid.axis(1)
    # the back lies on the table: its top just under most slices' posterior-most body voxel
    back = np.percentile([y[np.argmax(per_slice[:, k])] for k in slices], 10)
    top = back - rng.uniform(0, 6)
    shell_mm, foam_mm = rng.uniform(2, 6), rng.uniform(20, 50)
    x = grid.axis(0)
    centre = x[np.flatnonzero(body.any(axis=(1, 2)))].mean()
    across = (np.abs(x - centre) <= rng.uniform(180, 260))[:, None, None]
    shell = ((y <= top) & (y > top - shell_mm))[None, :, None]
    foam = ((y <= top - shell_mm) & (y > top - shell_mm - foam_mm))[None, :, None]
    air = tissue == T.AIR
    tissue[air & across & shell] = T.TABLE_SHELL
    tissue[air & across & foam] = T.TABLE_FOAM
    return True


def _liver_inside(tissue: np.ndarray, liver: np.ndarray, grid: Grid, rng: np.random.Generator) -> None:
    """Hepatic and portal vessel branches (where two smooth fields both cross zero: tubes) and, sometimes, lesions."""
    if not liver.any():
        return
    f1, f2 = _smooth(rng, grid, rng.uniform(25, 45)), _smooth(rng, grid, rng.uniform(25, 45))
    width = rng.uniform(0.15, 0.3)
    tubes = liver & (np.abs(f1) < width) & (np.abs(f2) < width)
    tissue[tubes] = rng.choice([T.PORTAL_BLOOD, T.VENOUS_BLOOD])
    if rng.random() < 0.2:
        tissue[liver & (f1 * f2 > rng.uniform(0.8, 1.5))] = T.LIVER_LESION


def _tissues(
    classes: np.ndarray, names: dict[int, str], grid: Grid, rng: np.random.Generator
) -> tuple[np.ndarray, dict]:
    """Tissue map (``Tissue`` ids) from structure ids plus the procedural body."""
    kind_lut = np.zeros(int(max(names, default=0)) + 1 if names else 1, np.uint8)
    for i, n in names.items():
        kind_lut[i] = _KIND_ID[structure_kind(n)]
    kind = kind_lut[classes]
    tissue_lut = np.array([KIND_TISSUES[k] for k in KINDS], np.uint8)
    tissue = tissue_lut[kind]
    field = _smooth(rng, grid, rng.uniform(20, 40))
    cavity, muscle, subcut, skin, info = _body(classes > 0, grid, rng)
    empty = classes == 0
    soft_share = rng.uniform(0.1, 0.5)  # mesentery, bowel loops and vessels the map does not name
    strands = field > np.quantile(field, 1 - soft_share)
    tissue[empty & cavity] = T.VISCERAL_FAT
    tissue[empty & cavity & strands] = T.GI_WALL
    tissue[empty & muscle] = T.MUSCLE
    tissue[empty & subcut] = T.SUBCUT_FAT
    tissue[empty & skin] = T.SKIN

    def interior(name: str) -> np.ndarray:
        m = kind == _KIND_ID[name]
        return m & ~_shell(m)

    if rng.random() < 0.7:  # perirenal fat: real kidneys sit in fat, which the maps do not label
        reach = max(1, int(round(rng.uniform(3, 10) / min(grid.spacing_mm))))
        near = ndimage.binary_dilation(kind == _KIND_ID["kidney"], iterations=reach)
        tissue[near & empty & cavity] = T.VISCERAL_FAT
    _liver_inside(tissue, interior("liver"), grid, rng)
    tissue[interior("bone")] = T.BONE_CANCELLOUS
    tissue[interior("heart")] = T.CARDIAC_BLOOD
    kid = interior("kidney")
    tissue[kid & (field < rng.uniform(-0.3, 0.6))] = T.KIDNEY_MEDULLA
    tissue[kid & ~_shell(kid) & (field > 0.5)] = T.RENAL_SINUS_FAT
    gut = interior("gut")
    content = rng.choice([T.BOWEL_CONTENT, T.STOMACH_CONTENT, T.GAS], p=[0.5, 0.3, 0.2])
    tissue[gut] = content
    tissue[gut & (field > rng.uniform(0.3, 1.2))] = T.GAS
    info["table"] = _table(tissue, cavity | muscle | subcut | skin, grid, rng)
    info["visceral_soft_share"] = round(float(soft_share), 2)
    return tissue, info


def _reorient(arrays: list[np.ndarray], affine: np.ndarray, orientation: str):
    ornt = ornt_transform(axcodes2ornt(tuple("RAS")), axcodes2ornt(tuple(orientation)))
    new_affine = affine @ inv_ornt_aff(ornt, arrays[0].shape)
    return [np.ascontiguousarray(apply_orientation(a, ornt)) for a in arrays], new_affine


def render_label_map(
    src: SourceMap,
    seed: int | np.random.Generator,
    *,
    spacing_mm=3.0,
    labels: LabelMap = LabelMap(),
    fov: str | None = None,
    phase: str = "random",
    orientation: str = "RAS",
    artefacts: bool = True,
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> tuple[io.Volume, io.Volume, dict]:
    """A synthetic CT and its labels from one label map: ``(image int16 HU, label uint8, info)``.

    Args:
        src: a validated map (``labelmaps_io.read_label_map`` / ``load_label_map``); it must hold
            every organ of ``labels``.
        seed: an int or ``numpy.random.Generator``; the same seed and map give the same case.
        spacing_mm: output voxel size (x, y, z) mm, or one number (training uses 3.0).
        labels: output label values by organ name (default 1 liver, 2 kidney_right, 3 kidney_left, 4 spleen).
        fov: one of ``FOVS`` or ``None``/``"random"``.
        phase: contrast phase (``appearance.PHASE_CHOICES``).
        orientation: axis codes of the output arrays; the affine always maps voxels to RAS+ world mm,
            so organs keep their side in world space whatever the codes.
        max_voxels: a taller field of view loses slices at both ends.
    """
    if fov in (None, "random"):
        fov = None
    elif fov not in FOVS:
        raise ConfigError(f"label-map synthesis: fov: expected one of random, {', '.join(FOVS)}, got {fov!r}")
    if phase not in appearance.PHASE_CHOICES:
        raise ConfigError(
            f"label-map synthesis: phase: expected one of {', '.join(appearance.PHASE_CHOICES)}"
        )
    root = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    geom_rng, warp_rng, tissue_rng, app_rng = root.spawn(4)
    spacing = tuple(float(v) for v in np.broadcast_to(np.asarray(spacing_mm, float), (3,)))
    organ_ids = [src.id_of(n) for n in labels.organs]
    organ_ids = [i for i in organ_ids if i is not None and i in src.boxes_mm]
    if not organ_ids:
        raise ConfigError(f"{src.source}: the label map holds none of the organs {', '.join(labels.organs)}")
    if fov is None:
        fov = str(geom_rng.choice(list(FOVS), p=list(FOVS.values())))
    grid, info = _choose_grid(geom_rng, src, organ_ids, spacing, fov, max_voxels)
    classes, warp_info = _pull_back(warp_rng, src, grid, organ_ids)
    tissue, tissue_info = _tissues(classes, src.names, grid, tissue_rng)
    hu, app_info = appearance.render(tissue, spacing, app_rng, phase, artefacts=artefacts)
    image = np.clip(np.rint(hu), -3024 if app_info.get("padding") else -1024, 3071).astype(np.int16)
    del hu
    label_lut = np.zeros(int(classes.max()) + 1 if classes.size else 1, np.uint8)
    for i, name in src.names.items():
        if name in labels.names and i < len(label_lut):
            label_lut[i] = labels.id_of(name)
    label = label_lut[classes]
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = grid.origin_mm
    (image, label), affine = _reorient([image, label], affine, orientation.upper())
    volumes = {n: round(float((label == labels.id_of(n)).sum()) * grid.voxel_ml, 1) for n in labels.organs}
    info = {"source": src.source, **info, **warp_info, **tissue_info, **app_info, "volumes_ml": volumes}
    return io.Volume(image, affine), io.Volume(label, affine.copy()), info


def training_sample(seed: int, cfg: Config) -> dict:
    """One label-map case for the phantom pool: ``{"image", "label", "name"}`` at the training spacing.

    Which map (of ``train.synthetic.label_maps``) is chosen from the seed alone; module level and
    reading the map through a per-process cache, so the parallel pool's spawned workers can call it.
    """
    syn = cfg.train.synthetic
    pick = np.random.default_rng([int(seed), 31])
    path = syn.label_maps[int(pick.integers(len(syn.label_maps)))]
    src = load_label_map(Path(path).expanduser(), syn.label_map_classes or None, cfg.labels.organs)
    wild = syn.wild_fraction > 0 and pick.random() < syn.wild_fraction
    image, label, _ = render_label_map(
        src,
        np.random.default_rng([int(seed), 37]),
        spacing_mm=tuple(cfg.preprocess.spacing_mm),
        labels=cfg.labels,
        phase="wild" if wild else "random",
    )
    return {"image": image, "label": label, "name": f"labelmap_{seed}"}


def check_training_label_maps(cfg: Config) -> None:
    """Read every ``train.synthetic.label_maps`` entry once, so bad maps fail before training starts."""
    syn = cfg.train.synthetic
    if syn.label_map_fraction <= 0:
        return
    if not syn.label_maps:
        raise ConfigError("train.synthetic.label_map_fraction: > 0 needs train.synthetic.label_maps")
    for path in syn.label_maps:
        load_label_map(Path(path).expanduser(), syn.label_map_classes or None, cfg.labels.organs)


__all__ = [
    "FOVS",
    "KIND_TISSUES",
    "check_training_label_maps",
    "render_label_map",
    "training_sample",
]
