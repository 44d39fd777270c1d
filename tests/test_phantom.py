"""Synthetic abdomens: determinism, anatomy (sides, volumes, kidney heights), HU by phase, geometry, dataset.

Cases are generated at 4-5 mm to keep the suite fast; the properties checked do not depend on it.
World positions go through the affine (RAS+: +x is the patient's right), never through array indices.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from organseg.config import LabelMap
from organseg.errors import ConfigError, OutputError
from organseg.phantom import (
    STRUCTURES,
    Grid,
    Tissue,
    generate_case,
    generate_phantom,
    rasterize,
    render,
    sample_anatomy,
    synthesize,
)

LIVER, KIDNEY_RIGHT, KIDNEY_LEFT, SPLEEN = (
    LabelMap().id_of(n) for n in ("liver", "kidney_right", "kidney_left", "spleen")
)


def centroid_world(volume, value: int) -> np.ndarray:
    idx = np.argwhere(volume.array == value)
    assert len(idx), f"label {value} absent"
    return (idx @ volume.affine[:3, :3].T + volume.affine[:3, 3]).mean(axis=0)


def eroded(mask: np.ndarray) -> np.ndarray:
    """Interior voxels only: partial volume at organ borders is not what we measure."""
    return ndimage.binary_erosion(mask)


@pytest.fixture(scope="module")
def portal_cases():
    """Three whole-abdomen portal-venous phantoms at 4 mm, alternately RAS and LPS."""
    return [
        generate_phantom(s, spacing_mm=4.0, fov="abdomen", phase="portal", orientation=o)
        for s, o in ((0, "RAS"), (1, "LPS"), (2, "RAS"))
    ]


def test_same_seed_same_case_and_different_seeds_differ():
    a_img, a_lab = generate_case(11, spacing_mm=6.0, fov="abdomen")
    b_img, b_lab = generate_case(11, spacing_mm=6.0, fov="abdomen")
    assert np.array_equal(a_img.array, b_img.array) and np.array_equal(a_lab.array, b_lab.array)
    assert np.array_equal(a_img.affine, b_img.affine)
    c_img, c_lab = generate_case(12, spacing_mm=6.0, fov="abdomen")
    assert c_img.shape != a_img.shape or not np.array_equal(c_lab.array, a_lab.array)


def test_generator_argument_is_deterministic_too():
    a, _ = generate_case(np.random.default_rng(5), spacing_mm=6.0, fov="upper")
    b, _ = generate_case(np.random.default_rng(5), spacing_mm=6.0, fov="upper")
    assert np.array_equal(a.array, b.array)


def test_organ_sides_in_world_space_for_ras_and_lps(portal_cases):
    """RAS+ world: the liver and right kidney lie at x > 0 (patient right), spleen and left kidney at x < 0."""
    codes = set()
    for p in portal_cases:
        codes.add("".join(nib.aff2axcodes(p.image.affine)))
        assert centroid_world(p.label, LIVER)[0] > 0
        assert centroid_world(p.label, KIDNEY_RIGHT)[0] > 0
        assert centroid_world(p.label, SPLEEN)[0] < 0
        assert centroid_world(p.label, KIDNEY_LEFT)[0] < 0
        assert centroid_world(p.label, LIVER)[1] > centroid_world(p.label, KIDNEY_RIGHT)[1]  # liver anterior
    assert codes == {"RAS", "LPS"}


def test_real_ct_uses_the_same_side_convention(real_seg):
    """Anchor the convention to real data: TotalSegmentator's liver (5) is at world x > 0, its spleen (1) at x < 0."""
    img = nib.load(str(real_seg))
    seg = np.asarray(img.dataobj)
    world = {
        v: (np.argwhere(seg == v) @ img.affine[:3, :3].T + img.affine[:3, 3]).mean(axis=0)
        for v in (1, 2, 3, 5)
    }
    assert world[5][0] > 0 and world[2][0] > 0
    assert world[1][0] < 0 and world[3][0] < 0


def test_lps_case_is_the_ras_case_flipped_with_the_same_world_positions():
    ras_img, ras_lab = generate_case(4, spacing_mm=6.0, fov="abdomen", orientation="RAS")
    lps_img, lps_lab = generate_case(4, spacing_mm=6.0, fov="abdomen", orientation="LPS")
    assert nib.aff2axcodes(lps_img.affine) == ("L", "P", "S")
    assert np.array_equal(lps_lab.array, ras_lab.array[::-1, ::-1, :])
    assert np.array_equal(lps_img.array, ras_img.array[::-1, ::-1, :])
    n = np.array(ras_img.shape) - 1
    corner_ras = ras_img.affine @ [n[0], n[1], 0, 1]
    assert np.allclose(lps_img.affine @ [0, 0, 0, 1], corner_ras)


def test_volumes_within_anatomical_ranges(portal_cases):
    for p in portal_cases:
        ml = {
            v: float((p.label.array == v).sum()) * p.label.voxel_volume_ml
            for v in (LIVER, SPLEEN, KIDNEY_RIGHT, KIDNEY_LEFT)
        }
        assert 850 <= ml[LIVER] <= 2700, ml
        assert 60 <= ml[SPLEEN] <= 550, ml
        assert 80 <= ml[KIDNEY_RIGHT] <= 280, ml
        assert 80 <= ml[KIDNEY_LEFT] <= 280, ml


def test_right_kidney_usually_lower():
    grid = Grid((-150.0, -100.0, -150.0), (5.0, 5.0, 5.0), (61, 41, 51))  # the renal region, patient mm
    dz = []
    for seed in range(6):
        _, structure = rasterize(sample_anatomy(np.random.default_rng(seed)), grid)
        z = {
            name: np.argwhere(structure == STRUCTURES.index(name))[:, 2].mean() * 5.0
            for name in ("kidney_right", "kidney_left")
        }
        dz.append(z["kidney_left"] - z["kidney_right"])
    assert sum(d > 0 for d in dz) >= 5, dz
    assert np.median(dz) > 5, dz


def test_kidneys_lie_in_perirenal_fat_apart_from_liver_and_spleen():
    """Most of a kidney's surroundings are fat (real CT here: 71 % right, 84 % left within 3 mm), not liver."""
    grid = Grid((-150.0, -110.0, -160.0), (3.0, 3.0, 3.0), (101, 61, 81))  # the renal region, patient mm
    for seed in range(3):
        tissue, structure = rasterize(sample_anatomy(np.random.default_rng(seed), perirenal_fat=True), grid)
        fat = np.isin(tissue, [Tissue.VISCERAL_FAT, Tissue.SUBCUT_FAT, Tissue.RENAL_SINUS_FAT])
        for name in ("kidney_right", "kidney_left"):
            kidney = structure == STRUCTURES.index(name)
            shell = ndimage.binary_dilation(kidney) & ~kidney
            assert fat[shell].mean() > 0.65, (seed, name, fat[shell].mean())  # 0.19-0.55 without the layer
            organs = np.isin(structure[shell], [STRUCTURES.index(n) for n in ("liver", "spleen")])
            assert organs.mean() < 0.05, (seed, name, organs.mean())
        assert (structure == STRUCTURES.index("perirenal_fat")).any()


def test_perirenal_fat_is_an_option_that_changes_only_that_layer():
    plain = generate_phantom(3, spacing_mm=4.0, fov="abdomen", phase="noncontrast")
    fat = generate_phantom(3, spacing_mm=4.0, fov="abdomen", phase="noncontrast", perirenal_fat=True)
    layer = fat.structure == STRUCTURES.index("perirenal_fat")
    assert layer.any() and not (plain.structure == STRUCTURES.index("perirenal_fat")).any()
    assert plain.image.array.shape == fat.image.array.shape
    np.testing.assert_array_equal(plain.structure[~layer], fat.structure[~layer])
    kidneys = np.isin(plain.label.array, [KIDNEY_RIGHT, KIDNEY_LEFT])
    np.testing.assert_array_equal(plain.label.array[kidneys], fat.label.array[kidneys])


def test_portal_phase_hu(portal_cases):
    for p in portal_cases:
        img, lab, t = p.image.array.astype(float), p.label.array, p.tissue
        steatosis = p.info.get("fatty_liver_hu", 0.0)
        assert 90 - steatosis <= np.median(img[eroded(lab == LIVER)]) <= 140 - steatosis
        assert 95 <= np.median(img[eroded(lab == SPLEEN)]) <= 145
        cortex, medulla = (
            np.median(img[t == Tissue.KIDNEY_CORTEX]),
            np.median(img[t == Tissue.KIDNEY_MEDULLA]),
        )
        assert cortex > medulla + 5, (cortex, medulla)
        fat = (t == Tissue.SUBCUT_FAT) | (
            t == Tissue.VISCERAL_FAT
        )  # thin patients have little subcutaneous fat
        assert -125 <= np.median(img[eroded(fat)]) <= -75
        assert 30 <= np.median(img[eroded(t == Tissue.MUSCLE)]) <= 75


def test_noncontrast_and_arterial_hu():
    p = generate_phantom(3, spacing_mm=4.0, fov="abdomen", phase="noncontrast")
    img, lab = p.image.array.astype(float), p.label.array
    steatosis = p.info.get("fatty_liver_hu", 0.0)
    assert 40 - steatosis <= np.median(img[eroded(lab == LIVER)]) <= 75 - steatosis
    assert 33 <= np.median(img[eroded(lab == SPLEEN)]) <= 60
    a = generate_phantom(3, spacing_mm=4.0, fov="abdomen", phase="arterial")
    cortex = np.median(a.image.array[a.tissue == Tissue.KIDNEY_CORTEX])
    medulla = np.median(a.image.array[a.tissue == Tissue.KIDNEY_MEDULLA])
    assert cortex > medulla + 40, (cortex, medulla)
    aorta = np.median(a.image.array[eroded(a.tissue == Tissue.ARTERIAL_BLOOD)])
    assert aorta > 180


def test_image_is_noisy_ct_with_air_outside(portal_cases):
    for p in portal_cases:
        img = p.image.array
        assert img.dtype == np.int16 and p.label.array.dtype == np.uint8
        assert img.any() and img.min() <= -900 and img.max() >= 300  # air and bone
        assert np.std(img[eroded(p.label.array == LIVER)]) > 3  # texture and noise, not a flat fill
        air = p.tissue == Tissue.AIR
        assert -1030 <= np.median(img[air & (img > -1500)]) <= -970  # ignores padding outside the scan circle


def test_appearance_redraw_keeps_the_anatomy():
    anatomy = sample_anatomy(np.random.default_rng(8))
    grid = Grid((-200.0, -160.0, -120.0), (5.0, 5.0, 5.0), (80, 70, 50))
    tissue, structure = rasterize(anatomy, grid)
    a, info_a = render(tissue, grid.spacing_mm, np.random.default_rng(1), "portal")
    b, _ = render(tissue, grid.spacing_mm, np.random.default_rng(2), "portal")
    assert a.shape == tissue.shape and not np.allclose(a, b)
    assert info_a["phase"] == "portal"
    again, _ = rasterize(anatomy, grid)
    assert np.array_equal(again, tissue)


def test_labels_follow_the_label_map_by_name():
    custom = LabelMap(names=("background", "spleen", "liver", "pancreas"))
    _, default = generate_case(6, spacing_mm=6.0, fov="abdomen")
    _, other = generate_case(6, spacing_mm=6.0, fov="abdomen", labels=custom)
    assert np.array_equal(other.array == 2, default.array == LIVER)
    assert np.array_equal(other.array == 1, default.array == SPLEEN)
    assert (other.array == 3).any()  # the phantom models the pancreas too
    assert set(np.unique(other.array)) <= {0, 1, 2, 3}


def test_clinical_geometry_and_voxel_budget():
    img, lab = generate_case(9, fov="upper", max_voxels=1_500_000)
    dx, dy, dz = img.spacing_mm
    assert 0.7 <= dx <= 1.0 and dx == pytest.approx(dy) and 1.0 <= dz <= 5.0
    assert img.shape[:2] == (512, 512) and np.prod(img.shape) <= 1_500_000
    assert lab.shape == img.shape


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="phase"):
        generate_case(0, spacing_mm=6.0, phase="venous")
    with pytest.raises(ConfigError, match="orientation"):
        generate_case(0, spacing_mm=6.0, orientation="RRS")
    with pytest.raises(ConfigError, match="fov"):
        generate_case(0, spacing_mm=6.0, fov="head")


def test_synthesize_writes_an_msd_dataset(tmp_path: Path):
    out = tmp_path / "phantoms"
    images = synthesize(out, 4, seed=3, progress=False, spacing_mm=5.0)
    assert [p.name for p in images] == [f"phantom_{i:03d}.nii.gz" for i in range(4)]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == 4 and meta["modality"] == {"0": "CT"}
    assert meta["labels"] == {
        "0": "background",
        "1": "liver",
        "2": "kidney_right",
        "3": "kidney_left",
        "4": "spleen",
    }
    codes = set()
    for entry in meta["training"]:
        img = nib.load(str(out / entry["image"]))
        lab = nib.load(str(out / entry["label"]))
        assert img.shape == lab.shape and np.allclose(img.affine, lab.affine)
        assert img.get_data_dtype() == np.int16 and set(np.unique(np.asarray(lab.dataobj))) <= {0, 1, 2, 3, 4}
        codes.add("".join(nib.aff2axcodes(img.affine)))
    assert {"RAS", "LPS"} <= codes
    records = json.loads((out / "phantoms.json").read_text())
    assert [r["index"] for r in records] == [0, 1, 2, 3]


def test_synthesize_refuses_a_non_empty_folder_unless_overwrite(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("keep")
    with pytest.raises(OutputError, match=str(tmp_path)):
        synthesize(tmp_path, 1, progress=False, spacing_mm=8.0)
    synthesize(tmp_path, 1, progress=False, spacing_mm=8.0, overwrite=True)
    assert (tmp_path / "imagesTr" / "phantom_000.nii.gz").exists() and (tmp_path / "notes.txt").exists()


def test_phantom_stream_is_seeded_per_rank_and_batchable():
    from organseg.phantom import PhantomStream

    stream = PhantomStream(spacing_mm=6.0, shape=(40, 36, 30), seed=2, length=2, appearances_per_anatomy=2)
    items = list(stream)
    assert len(items) == 4 and len({i["case"] for i in items}) == 4
    for item in items:
        assert item["image"].shape == (1, 40, 36, 30) and item["image"].dtype == np.float32
        assert item["label"].shape == (1, 40, 36, 30) and item["label"].dtype == np.uint8
        assert item["affine"].shape == (4, 4)
    assert np.array_equal(items[0]["label"], items[1]["label"])  # same anatomy, new appearance
    assert not np.array_equal(items[0]["image"], items[1]["image"])
    again = next(iter(PhantomStream(spacing_mm=6.0, shape=(40, 36, 30), seed=2, length=1)))
    assert np.array_equal(again["image"], items[0]["image"])
    other_rank = next(iter(PhantomStream(spacing_mm=6.0, shape=(40, 36, 30), seed=2, rank=1, length=1)))
    assert not np.array_equal(other_rank["label"], items[0]["label"])
