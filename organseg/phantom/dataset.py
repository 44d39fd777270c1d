"""Whole phantom cases: grid choice, orientation, labels; the MSD dataset writer.

A case is built in four independent random streams spawned from one seed (anatomy, geometry,
appearance, orientation), so changing the orientation or re-drawing the appearance never changes
the patient. Arrays are rendered on a RAS grid and reoriented last: an LPS case holds the same
voxels as its RAS twin, flipped, with an affine that keeps every world position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

from organseg import io
from organseg.config import LabelMap
from organseg.errors import ConfigError, OutputError
from organseg.phantom import appearance
from organseg.phantom import variants as variants_mod
from organseg.phantom.anatomy import FOVS, Anatomy, rasterize, sample_anatomy, sample_fov_z
from organseg.phantom.body import paint_table
from organseg.phantom.canvas import Canvas
from organseg.phantom.fields import Grid
from organseg.phantom.tissues import STRUCTURES, Tissue, sid

ORIENTATIONS_RANDOM: dict[str, float] = {"RAS": 0.4, "LPS": 0.4, "LAS": 0.2}
_SLICE_SPACINGS = np.array([1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0])
_SLICE_WEIGHTS = np.array([0.15, 0.1, 0.1, 0.15, 0.15, 0.15, 0.2])
DEFAULT_MAX_VOXELS = 16_000_000


@dataclass
class Phantom:
    """One synthetic case.

    Attributes:
        image: CT in HU (int16), ``Volume`` with a voxel -> RAS+ mm affine.
        label: ground truth (uint8) on the same grid, values from the ``LabelMap``.
        tissue: ``Tissue`` map (uint8), same array order as ``image``.
        structure: structure map (uint8, ids index ``tissues.STRUCTURES``), same order.
        info: what was drawn (JSON-serializable): seed, field of view, phase, noise, volumes...
        anatomy: the sampled patient (patient-frame mm), for re-rendering.
    """

    image: io.Volume
    label: io.Volume
    tissue: np.ndarray
    structure: np.ndarray
    info: dict = field(default_factory=dict)
    anatomy: Anatomy | None = None


@dataclass
class _Scene:
    anatomy: Anatomy
    grid: Grid
    world_offset_mm: np.ndarray
    tissue: np.ndarray
    structure: np.ndarray
    info: dict
    fixed_hu: dict = field(default_factory=dict)


def case_streams(seed: int | np.random.Generator) -> list[np.random.Generator]:
    root = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return root.spawn(
        5
    )  # anatomy, geometry, appearance, orientation, variants (the first four as with spawn(4))


def draw_variants(rng: np.random.Generator, options: variants_mod.Variants | None) -> variants_mod.Draw:
    return options.draw(rng) if options is not None and options.any else variants_mod.NONE


def check_options(phase: str, orientation: str, fov: str | None) -> None:
    """Raise ``ConfigError`` for an unknown phase, orientation code or field of view."""
    if phase not in appearance.PHASE_CHOICES:
        raise ConfigError(
            f"phantom: phase: expected one of {', '.join(appearance.PHASE_CHOICES)}, got {phase!r}"
        )
    if orientation != "random":
        codes = str(orientation).upper()
        if len(codes) != 3 or {c for c in codes} - set("RLAPSI") or len({_axis_of(c) for c in codes}) != 3:
            raise ConfigError(
                f"phantom: orientation: expected 'random' or three axis codes like RAS or LPS, got {orientation!r}"
            )
    if fov not in (None, "random", *FOVS):
        raise ConfigError(f"phantom: fov: expected one of random, {', '.join(FOVS)}, got {fov!r}")


def _axis_of(code: str) -> int:
    return {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}[code]


def _choose_grid(rng, anatomy: Anatomy, spacing_mm, shape, fov, max_voxels) -> tuple[Grid, dict]:
    """A RAS grid in the patient frame: spacing, then array size, then where it sits.

    The anatomy's variant (``variants.Draw``) narrows z to a thin slab, widens x for the arms, lowers y for
    the table and crops x for truncation; it takes nothing from ``rng``, so without variants the grid is as before.
    """
    fov_name, z0, z1 = sample_fov_z(rng, anatomy, fov)
    var = anatomy.variant
    if var.thin_slab is not None and shape is None:
        thickness, where = var.thin_slab
        lo, hi = anatomy.organ_z_range()
        mid = lo + 10 + where * max(hi - lo - 20, 0.0)
        fov_name, z0, z1 = "thin_slab", mid - thickness / 2, mid + thickness / 2
    body = anatomy.body
    half_width, front, back, _ = body.profile(np.linspace(z0, z1, 16))
    x_half = float(half_width.max()) + variants_mod.arm_reach_mm(body, z0, z1, var.arms)
    y_lo, y_hi = body.y_widest - float(back.max()), body.y_widest + float(front.max())
    if var.table is not None and body.table is not None:
        t = body.table
        y_lo -= t["gap_mm"] + 2 * t["shell_mm"] + t["foam_mm"] + 2

    if spacing_mm is None:  # clinical: 0.7-1.0 mm pixels in a 512 x 512 matrix, 1-5 mm slices
        d_xy = float(rng.uniform(0.7, 1.0))
        spacing = (d_xy, d_xy, float(rng.choice(_SLICE_SPACINGS, p=_SLICE_WEIGHTS)))
        dims = [512, 512]
        center = np.array([rng.normal(0, 8), 0.5 * (y_lo + y_hi) + rng.normal(0, 15)])
        if var.truncation is not None and shape is None:  # a reconstruction circle narrower than the body
            keep, side = var.truncation
            d_xy = 2 * x_half * keep / 512
            spacing = (d_xy, d_xy, spacing[2])
            center[0] = 0.6 * side * x_half * (1 - keep)
    else:  # training: the body and a margin
        spacing = tuple(float(v) for v in np.broadcast_to(np.asarray(spacing_mm, float), (3,)))
        margin = rng.uniform(5, 25, size=2)
        dims = [
            int(np.ceil((2 * x_half + 2 * margin[0]) / spacing[0])),
            int(np.ceil((y_hi - y_lo + 2 * margin[1]) / spacing[1])),
        ]
        center = np.array([0.0, 0.5 * (y_lo + y_hi)])
        if var.truncation is not None and shape is None:  # the body wider than the field of view
            keep, side = var.truncation
            dims[0] = int(np.ceil(2 * x_half * keep / spacing[0]))
            center[0] = 0.6 * side * x_half * (1 - keep)
    if shape is not None:  # a fixed array, centred near the organs, somewhere in the drawn field of view
        dims = [int(shape[0]), int(shape[1])]
        organs = np.array([o.center for o in anatomy.organs.values()])
        center = np.array([rng.normal(0, 10), organs[:, 1].mean() + rng.normal(0, 10)])
        nz = int(shape[2])
        z0 = 0.5 * (z0 + z1) + rng.normal(0, 10) - (nz - 1) * spacing[2] / 2
    else:
        nz = max(1, int(round((z1 - z0) / spacing[2])) + 1)
        cap = max(1, int(max_voxels // (dims[0] * dims[1])))
        if nz > cap:  # keep the organs: shrink the slab around their middle
            lo, hi = anatomy.organ_z_range()
            mid = float(np.clip(0.5 * (lo + hi), z0 + cap * spacing[2] / 2, z1 - cap * spacing[2] / 2))
            nz, z0 = cap, mid - (cap - 1) * spacing[2] / 2
    origin = (center[0] - (dims[0] - 1) * spacing[0] / 2, center[1] - (dims[1] - 1) * spacing[1] / 2, z0)
    grid = Grid(tuple(float(v) for v in origin), spacing, (dims[0], dims[1], nz))
    return grid, {"fov": fov_name, "spacing_mm": [round(v, 4) for v in spacing], "shape": list(grid.shape)}


def build_scene(
    anat_rng, geom_rng, spacing_mm, shape, fov, max_voxels, perirenal_fat=False, variant=variants_mod.NONE
) -> _Scene:
    anatomy = sample_anatomy(anat_rng, perirenal_fat=perirenal_fat, variant=variant)
    grid, info = _choose_grid(geom_rng, anatomy, spacing_mm, shape, fov, max_voxels)
    turn = variant.rotation_deg
    tissue, structure = rasterize(anatomy, grid, table=not turn)
    if turn:  # the patient lies turned on a straight table
        canvas = Canvas(grid)
        canvas.tissue, canvas.structure = variants_mod.rotate_maps(tissue, structure, turn)
        paint_table(canvas, anatomy.body)
        tissue, structure = canvas.tissue, canvas.structure
    # world = patient frame + offset: patients lie near the isocentre, the table moves along z
    offset = np.array(
        [
            geom_rng.uniform(-10, 10),
            geom_rng.uniform(-40, 40) - anatomy.body.y_widest,
            geom_rng.uniform(-1000, 300),
        ]
    )
    info["girth"] = round(anatomy.body.girth, 3)
    fixed_hu = {}
    if variant is not variants_mod.NONE:
        info["variants"] = variant.summary()
        if variant.bowel_contrast is not None:
            fixed_hu[Tissue.ORAL_CONTRAST] = variant.bowel_contrast["hu"]
        if variant.fluid_bowel is not None:
            fixed_hu[Tissue.BOWEL_CONTENT] = variant.fluid_bowel["hu"]
    return _Scene(anatomy, grid, offset, tissue, structure, info, fixed_hu)


def label_lut(labels: LabelMap) -> np.ndarray:
    """Structure id -> label value for ``labels`` (structures it does not name map to 0)."""
    lut = np.zeros(len(STRUCTURES), np.uint8)
    for i, name in enumerate(STRUCTURES):
        if i and name in labels.names:
            lut[i] = labels.id_of(name)
    return lut


def _reorient(arrays: list[np.ndarray], affine: np.ndarray, orientation: str):
    """Flip/permute RAS arrays to ``orientation`` and adjust the affine so world positions stay put."""
    ornt = ornt_transform(axcodes2ornt(tuple("RAS")), axcodes2ornt(tuple(orientation)))
    new_affine = affine @ inv_ornt_aff(ornt, arrays[0].shape)
    return [np.ascontiguousarray(apply_orientation(a, ornt)) for a in arrays], new_affine


def finish_case(
    scene: _Scene, app_rng, orient_rng, orientation: str, phase: str, labels: LabelMap, artefacts: bool
) -> Phantom:
    grid = scene.grid
    hu, app_info = appearance.render(
        scene.tissue, grid.spacing_mm, app_rng, phase, artefacts=artefacts, fixed_hu=scene.fixed_hu
    )
    image = np.clip(np.rint(hu), -1024 if not app_info.get("padding") else -3024, 3071).astype(np.int16)
    label = label_lut(labels)[scene.structure]
    affine = np.diag([*grid.spacing_mm, 1.0])
    affine[:3, 3] = np.asarray(grid.origin_mm) + scene.world_offset_mm
    if orientation == "random":
        codes = list(ORIENTATIONS_RANDOM)
        orientation = codes[int(orient_rng.choice(len(codes), p=list(ORIENTATIONS_RANDOM.values())))]
    orientation = orientation.upper()
    (image, label, tissue, structure), affine = _reorient(
        [image, label, scene.tissue, scene.structure], affine, orientation
    )
    volumes = {
        name: round(float((scene.structure == sid(name)).sum()) * grid.voxel_ml, 1)
        for name in ("liver", "spleen", "kidney_right", "kidney_left")
    }
    info = {**scene.info, "orientation": orientation, **app_info, "volumes_ml": volumes}
    return Phantom(
        io.Volume(image, affine), io.Volume(label, affine.copy()), tissue, structure, info, scene.anatomy
    )


def generate_phantom(
    seed: int | np.random.Generator,
    *,
    spacing_mm=None,
    shape=None,
    fov: str | None = None,
    orientation: str = "RAS",
    phase: str = "random",
    labels: LabelMap = LabelMap(),
    max_voxels: int = DEFAULT_MAX_VOXELS,
    artefacts: bool = True,
    perirenal_fat: bool = False,
    variants: variants_mod.Variants | None = None,
) -> Phantom:
    """One case with everything it was made from (see ``generate_case`` for the arguments)."""
    check_options(phase, orientation, fov)
    anat_rng, geom_rng, app_rng, orient_rng, var_rng = case_streams(seed)
    draw = draw_variants(var_rng, variants)
    scene = build_scene(anat_rng, geom_rng, spacing_mm, shape, fov, max_voxels, perirenal_fat, draw)
    phantom = finish_case(scene, app_rng, orient_rng, orientation, phase, labels, artefacts)
    if not isinstance(seed, np.random.Generator):
        phantom.info["seed"] = int(seed)
    return phantom


def generate_case(
    seed: int | np.random.Generator,
    *,
    spacing_mm=None,
    shape=None,
    fov: str | None = None,
    orientation: str = "RAS",
    phase: str = "random",
    labels: LabelMap = LabelMap(),
    max_voxels: int = DEFAULT_MAX_VOXELS,
    artefacts: bool = True,
    perirenal_fat: bool = False,
    variants: variants_mod.Variants | None = None,
) -> tuple[io.Volume, io.Volume]:
    """A synthetic abdominal CT and its organ labels: ``(image, label)``.

    Args:
        seed: an int or a ``numpy.random.Generator``; the same seed gives the same case.
        spacing_mm: voxel size (x, y, z) in mm, or one number for isotropic voxels. ``None``: a
            clinical geometry (512 x 512 matrix of 0.7-1.0 mm pixels, 1-5 mm slices).
        shape: array shape (x, y, z) in RAS order, centred near the organs within the drawn field of
            view (batchable training crops); ``None``: the whole field of view, cropped to the body
            when ``spacing_mm`` is given.
        fov: ``upper`` (a few slices through liver and kidneys), ``abdomen`` (dome to below the
            kidneys), ``abdomen_pelvis``, ``thoracoabdominal``; ``None`` or ``random``: drawn.
        orientation: axis codes of the output arrays (``RAS``, ``LPS``, ``LAS``...) or ``random``.
            The affine always maps voxels to RAS+ mm, so world positions do not depend on it.
        phase: ``noncontrast``, ``arterial``, ``portal``, ``delayed``, ``random`` or ``wild``.
        labels: label values by organ name; names the phantom does not model stay background.
        max_voxels: a field of view with more voxels loses slices at its ends (the organs are kept).
        artefacts: allow streaks, metal, rings and padding (each drawn with small probability).
        perirenal_fat: wrap the kidneys in fat that parts them from liver and spleen, as on real CT (the
            built-in model's training phantoms have it; off by default so that seeded cases stay as they were).
        variants: how often the fields of view and bodies of ``variants.Variants`` happen (thin slab, arms,
            table, truncation, rotation, oral contrast beside the spleen, extreme liver and spleen sizes), drawn
            from the case's own stream; ``None`` (default): none of them, the case is as without this option.

    Returns:
        ``image`` (int16 HU) and ``label`` (uint8) ``Volume``s on the same grid.

    Example:
        >>> image, label = generate_case(7, spacing_mm=3.0, fov="abdomen")
        >>> image.orientation, image.spacing_mm
        ('RAS', (3.0, 3.0, 3.0))
    """
    p = generate_phantom(
        seed, spacing_mm=spacing_mm, shape=shape, fov=fov, orientation=orientation, phase=phase,
        labels=labels, max_voxels=max_voxels, artefacts=artefacts, perirenal_fat=perirenal_fat,
        variants=variants,
    )  # fmt: skip
    return p.image, p.label


def case_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of case ``index`` of ``synthesize(..., seed=seed)`` (to regenerate one case)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def synthesize(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    *,
    spacing_mm=None,
    fov: str | None = None,
    phase: str = "random",
    labels: LabelMap = LabelMap(),
    max_voxels: int = DEFAULT_MAX_VOXELS,
    perirenal_fat: bool = False,
    variants: variants_mod.Variants | None = None,
) -> list[Path]:
    """Write ``n`` phantoms as a Medical Segmentation Decathlon dataset; return the image paths.

    Layout: ``dataset.json``, ``imagesTr/phantom_000.nii.gz``, ``labelsTr/phantom_000.nii.gz``, ...
    and ``phantoms.json`` (what each case drew). Case ``i`` comes from ``case_rng(seed, i)``, so it
    does not depend on ``n``. Even cases are stored RAS, odd cases LPS (NIfTI affines map both to
    RAS+ mm). A non-empty ``out_dir`` is refused unless ``overwrite``; then older ``phantom_*``
    files that the new set does not include are removed. ``variants``: as in ``generate_case`` (what each case
    got is in ``phantoms.json``).
    """
    check_options(phase, "RAS", fov)
    out = Path(out_dir)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"{out}: number of cases must be a positive integer, got {n!r}")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputError(f"{out}: folder is not empty (pass --overwrite to write into it)")
    for sub in ("imagesTr", "labelsTr"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    names = [f"phantom_{i:03d}" for i in range(n)]
    images, records = [], []
    for i, name in enumerate(tqdm(names, desc="phantoms", unit="case", disable=not progress)):
        orientation = "RAS" if i % 2 == 0 else "LPS"
        p = generate_phantom(
            case_rng(seed, i), spacing_mm=spacing_mm, fov=fov, orientation=orientation, phase=phase,
            labels=labels, max_voxels=max_voxels, perirenal_fat=perirenal_fat, variants=variants,
        )  # fmt: skip
        header = nib.Nifti1Header()
        header.set_xyzt_units("mm")
        header["descrip"] = f"organseg phantom seed={seed} case={i}".encode()[:79]
        for sub, vol in (("imagesTr", p.image), ("labelsTr", p.label)):
            path = out / sub / f"{name}.nii.gz"
            io.write_nifti(
                vol.array, io.Volume(vol.array, vol.affine, str(path), header), path, overwrite=overwrite
            )
        images.append(out / "imagesTr" / f"{name}.nii.gz")
        records.append({"case": name, "seed": seed, "index": i, **p.info})
    if overwrite:
        keep = {f"{name}.nii.gz" for name in names}
        for sub in ("imagesTr", "labelsTr"):
            for stale in (out / sub).glob("phantom_*.nii.gz"):
                if stale.name not in keep:
                    stale.unlink()
    io.atomic_write_json(out / "dataset.json", dataset_json(names, labels, seed), overwrite=True)
    io.atomic_write_json(out / "phantoms.json", records, overwrite=True)
    return images


def dataset_json(names: list[str], labels: LabelMap, seed: int) -> dict:
    return {
        "name": "organseg-phantoms",
        "description": f"Synthetic abdominal CT phantoms (organseg), seed {seed}",
        "reference": "organseg.phantom",
        "licence": "CC0-1.0",
        "release": "1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(i): name for i, name in enumerate(labels.names)},
        "numTraining": len(names),
        "numTest": 0,
        "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in names],
        "test": [],
    }


__all__ = [
    "Phantom",
    "case_rng",
    "check_options",
    "generate_case",
    "generate_phantom",
    "label_lut",
    "synthesize",
]
