"""Synthetic CT from label maps (``organseg.phantom.labelmaps``): reading, rendering, CLI, training mix.

The real map is subject s0011 of the TotalSegmentator dataset v2.0.1 (Wasserthal et al., Radiology: AI
2023, Zenodo 10047292, CC BY 4.0), read from ../shared/data and shrunk to 6 mm here to stay fast.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import SHARED_DATA, require_shared_data

from organseg.cli import main
from organseg.config import config_from_dict, config_to_dict, load_config
from organseg.errors import ConfigError, InputError
from organseg.phantom.labelmaps import render_label_map
from organseg.phantom.labelmaps_io import read_label_map

S0011 = SHARED_DATA / "anatomy" / "totalseg-s0011" / "labels.nii.gz"
CLASSES = SHARED_DATA / "anatomy" / "classes_totalsegmentator_v2.json"
ORGANS = ("liver", "kidney_right", "kidney_left", "spleen")
#: Structures kept in the small test maps (TotalSegmentator v2 ids): organs, gut, spine, aorta, lungs, ribs.
KEEP = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver", 6: "stomach", 20: "colon",
        31: "vertebrae_L1", 32: "vertebrae_T12", 52: "aorta", 11: "lung_lower_lobe_left",
        14: "lung_lower_lobe_right", 101: "rib_left_10", 113: "rib_right_10", 87: "autochthon_right"}  # fmt: skip


@pytest.fixture(scope="module")
def small_map(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(multilabel file, its class table, a folder of binary masks): s0011 at 6 mm, a few structures."""
    require_shared_data(S0011)
    root = tmp_path_factory.mktemp("labelmap")
    img = nib.load(S0011)
    full = np.asarray(img.dataobj)
    small = full[::4, ::4, ::4]
    small = np.where(np.isin(small, list(KEEP)), small, 0).astype(np.uint8)
    affine = img.affine.copy()
    affine[:3, :3] *= 4
    nib.save(nib.Nifti1Image(small, affine), root / "labels.nii.gz")
    (root / "classes.json").write_text(json.dumps({str(k): v for k, v in KEEP.items()}))
    folder = root / "masks"
    folder.mkdir()
    for i, name in KEEP.items():
        nib.save(nib.Nifti1Image((small == i).astype(np.uint8), affine), folder / f"{name}.nii.gz")
    return root / "labels.nii.gz", root / "classes.json", folder


def centroid_world(label, value: int) -> np.ndarray:
    idx = np.argwhere(label.array == value).mean(axis=0)
    return label.affine[:3, :3] @ idx + label.affine[:3, 3]


def test_the_real_map_has_the_liver_at_plus_x_in_ras(small_map):
    """RAS+: +x is the patient's right, so the liver (id 5) lies at larger x than the spleen (id 1)."""
    src = read_label_map(small_map[0], small_map[1], ORGANS)
    liver, spleen = src.boxes_mm[5], src.boxes_mm[1]
    assert (liver[0][0] + liver[1][0]) / 2 > 0 > (spleen[0][0] + spleen[1][0]) / 2


def test_same_seed_same_case_and_another_seed_another(small_map):
    src = read_label_map(small_map[0], small_map[1], ORGANS)
    a_img, a_lab, a_info = render_label_map(src, 7, spacing_mm=4.0, fov="abdomen")
    b_img, b_lab, b_info = render_label_map(src, 7, spacing_mm=4.0, fov="abdomen")
    c_img, _, _ = render_label_map(src, 8, spacing_mm=4.0, fov="abdomen")
    assert np.array_equal(a_img.array, b_img.array) and np.array_equal(a_lab.array, b_lab.array)
    assert np.array_equal(a_img.affine, b_img.affine) and a_info == b_info
    assert a_img.shape != c_img.shape or not np.array_equal(a_img.array, c_img.array)


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "LAS"])
def test_labels_on_the_image_grid_and_organs_on_their_side(small_map, orientation):
    src = read_label_map(small_map[0], small_map[1], ORGANS)
    image, label, info = render_label_map(src, 3, spacing_mm=4.0, fov="abdomen", orientation=orientation)
    assert image.shape == label.shape and np.array_equal(image.affine, label.affine)
    assert image.orientation == orientation and image.array.dtype == np.int16
    assert set(np.unique(label.array)) == {0, 1, 2, 3, 4}
    liver, k_right, k_left, spleen = (centroid_world(label, v) for v in (1, 2, 3, 4))
    assert liver[0] > 0 > spleen[0] and k_right[0] > 0 > k_left[0]  # RAS: +x is the patient's right
    # the same case in any orientation: organs at the same world places
    _, ras, _ = render_label_map(src, 3, spacing_mm=4.0, fov="abdomen", orientation="RAS")
    assert np.allclose(centroid_world(ras, 1), liver, atol=1e-3)
    # the image shows the anatomy the labels say: soft tissue in the liver, air outside the body
    hu = image.array
    assert -60 < np.median(hu[label.array == 1]) < 260
    assert np.median(hu[label.array == 0]) < np.median(hu[label.array == 1]) - 100
    assert info["volumes_ml"]["liver"] > 500


def test_a_folder_of_masks_renders_like_the_multilabel_file(small_map):
    multi = read_label_map(small_map[0], small_map[1], ORGANS)
    folder = read_label_map(small_map[2], required=ORGANS)
    a_img, a_lab, _ = render_label_map(multi, 5, spacing_mm=4.0)
    b_img, b_lab, _ = render_label_map(folder, 5, spacing_mm=4.0)
    assert np.array_equal(a_img.array, b_img.array) and np.array_equal(a_lab.array, b_lab.array)


def organseg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "organseg.cli", *args], capture_output=True, encoding="utf-8", timeout=300
    )


def test_synth_from_labels_writes_an_msd_dataset(small_map, tmp_path):
    out = tmp_path / "ds"
    done = organseg("synth", "--from-labels", str(small_map[2]), "--out", str(out), "-n", "2", "--seed", "4",
                    "--spacing", "4")  # fmt: skip
    assert done.returncode == 0, done.stderr
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == 2 and meta["labels"]["1"] == "liver"
    for entry in meta["training"]:
        image, label = nib.load(out / entry["image"]), nib.load(out / entry["label"])
        assert image.shape == label.shape and np.allclose(image.affine, label.affine)
        assert np.asarray(label.dataobj).max() >= 1
    again = organseg("synth", "--from-labels", str(small_map[2]), "--out", str(out), "-n", "2", "--seed", "4")
    assert again.returncode != 0 and "--overwrite" in again.stderr


def _break(kind: str, folder: Path, multi: Path) -> tuple[list[str], str, str]:
    """Damage a copy of the mask folder; return CLI input args, the file the error names, its problem."""
    mask = folder / "liver.nii.gz"
    img = nib.load(mask)
    data = np.asarray(img.dataobj).copy()
    if kind == "missing":
        (folder / "spleen.nii.gz").unlink()
        return [str(folder)], str(folder), "missing mask spleen.nii.gz"
    if kind == "empty":
        nib.save(nib.Nifti1Image(np.zeros_like(data), img.affine), mask)
        return [str(folder)], str(mask), "empty mask"
    if kind == "non-binary":
        data[data > 0] = 2
        nib.save(nib.Nifti1Image(data, img.affine), mask)
        return [str(folder)], str(mask), "not a binary mask"
    if kind == "grid":
        affine = img.affine.copy()
        affine[0, 3] += 6.0
        nib.save(nib.Nifti1Image(data, affine), mask)
        return [str(folder)], str(mask), "grid differs"
    if kind == "overlap":
        spleen = folder / "spleen.nii.gz"
        nib.save(nib.Nifti1Image(np.maximum(data, np.asarray(nib.load(spleen).dataobj)), img.affine), spleen)
        return [str(folder)], str(spleen), "overlaps liver.nii.gz"
    if kind == "unknown":
        shutil.copy(mask, folder / "livr.nii.gz")
        return [str(folder)], str(folder / "livr.nii.gz"), "unknown structure name 'livr'"
    if kind == "no-classes":
        return [str(multi)], str(multi), "needs its class table"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["missing", "empty", "non-binary", "grid", "overlap", "unknown", "no-classes"]
)
def test_bad_label_maps_are_one_line_errors_and_nothing_is_written(small_map, tmp_path, kind, capsys):
    folder = tmp_path / "masks"
    shutil.copytree(small_map[2], folder)
    args, where, problem = _break(kind, folder, small_map[0])
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:  # the CLI's entry point, in process (fast)
        main(["synth", "--from-labels", *args, "--out", str(out), "-n", "1"])
    assert exit_info.value.code == InputError.exit_code
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"organseg: error: {where}: ") and problem in lines[0]
    assert not out.exists()


def test_unknown_class_name_in_the_table_is_refused(small_map, tmp_path):
    table = json.loads(small_map[1].read_text())
    table["6"] = "stomack"
    (tmp_path / "classes.json").write_text(json.dumps(table))
    with pytest.raises(InputError, match=r"classes.json: unknown class name \(id 6\) 'stomack'"):
        read_label_map(small_map[0], tmp_path / "classes.json", ORGANS)


# --------------------------------------------------------------------------------------- training mix


def mix_config(small_map, **synthetic):
    d = config_to_dict(load_config("demo"))
    d["preprocess"].update(spacing_mm=[6.0, 6.0, 6.0], margin_mm=6.0)
    d["model"].update(filters=[4, 8], bottleneck=8)
    d["train"].update(
        patch_size=[16, 16, 16], batch_size=2, samples_per_volume=1, epochs=1, steps_per_epoch=1
    )
    d["train"]["synthetic"].update(
        enabled=True, pool_size=2, refresh_per_epoch=1, cases_per_epoch=1, val_cases=1, seed=40,
        label_maps=[str(small_map[0])], label_map_classes=str(small_map[1]), label_map_fraction=1.0,
    )  # fmt: skip
    d["train"]["synthetic"].update(synthetic)
    d["infer"].update(overlap=0.0)
    return config_from_dict(d, "mix")


def test_label_map_fraction_draws_that_share_from_label_maps(small_map):
    from organseg.training import data as D

    cfg = mix_config(small_map, label_map_fraction=0.5)
    names = [D.generate_phantom(s, cfg)["name"] for s in range(6)]
    assert any(n.startswith("labelmap_") for n in names) and any(n.startswith("phantom_") for n in names)
    again = D.generate_phantom(int(names.index(next(n for n in names if "labelmap" in n))), cfg)
    assert again["name"].startswith("labelmap_")


def test_training_on_label_maps_only_runs_and_workers_give_the_same_samples(small_map, tmp_path):
    from organseg.training import data as D
    from organseg.training import train

    cfg = mix_config(small_map)
    run = train(cfg, None, tmp_path / "run", progress=False, num_threads=1)
    assert (Path(run) / "fold_0" / "checkpoint_last.pt").is_file()
    local, parallel = D.PhantomPool(cfg), D.PhantomPool(mix_config(small_map, workers=1))
    try:
        a, b = local.make_many([41]), parallel.make_many([41])
    finally:
        parallel.close()
    assert np.array_equal(np.asarray(a[0]["image"]), np.asarray(b[0]["image"]))
    assert np.asarray(a[0]["label"]).max() >= 1


def test_bad_label_map_settings_fail_before_training(small_map, tmp_path):
    from organseg.training import train

    with pytest.raises(ConfigError, match="train.synthetic.label_map_fraction"):
        mix_config(small_map, label_map_fraction=1.5)
    with pytest.raises(ConfigError, match="label_map_fraction"):
        train(mix_config(small_map, label_maps=[]), None, tmp_path / "run", progress=False, num_threads=1)
    with pytest.raises(InputError, match="needs its class table"):
        train(
            mix_config(small_map, label_map_classes=""),
            None,
            tmp_path / "run2",
            progress=False,
            num_threads=1,
        )


def test_without_label_maps_the_pool_makes_exactly_the_phantoms_it_made_before(small_map):
    """Default settings (no label maps) leave the phantom path untouched, byte for byte."""
    from organseg import phantom
    from organseg.training import data as D

    cfg = mix_config(small_map, label_maps=[], label_map_classes="", label_map_fraction=0.0)
    got = D.generate_phantom(44, cfg)
    image, label = phantom.generate_case(
        44, spacing_mm=(6.0, 6.0, 6.0), labels=cfg.labels, perirenal_fat=False, phase="random"
    )
    assert got["name"] == "phantom_44"
    assert np.array_equal(got["image"].array, image.array) and np.array_equal(got["label"].array, label.array)


def test_a_map_stored_flipped_renders_the_same_case(small_map, tmp_path):
    """Geometry goes through world coordinates: an LAS copy of the map (x flipped, affine adjusted) is the same map."""
    img = nib.load(small_map[0])
    flipped = np.asarray(img.dataobj)[::-1]
    affine = img.affine @ np.array(
        [[-1, 0, 0, flipped.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    )
    nib.save(nib.Nifti1Image(np.ascontiguousarray(flipped), affine), tmp_path / "las.nii.gz")
    a = read_label_map(small_map[0], small_map[1], ORGANS)
    b = read_label_map(tmp_path / "las.nii.gz", small_map[1], ORGANS)
    assert nib.aff2axcodes(b.affine) == ("L", "A", "S")
    _, la, _ = render_label_map(a, 9, spacing_mm=4.0, fov="abdomen")
    _, lb, _ = render_label_map(b, 9, spacing_mm=4.0, fov="abdomen")
    assert la.shape == lb.shape and np.allclose(la.affine, lb.affine)
    assert np.mean(la.array == lb.array) > 0.999 and (la.array == 1).sum() > 1000
