"""organseg.datasets: layouts, label remapping, per-case checks, k-fold splits."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import SHARED_DATA, oblique_affine, require_shared_data
from hypothesis import given, settings
from hypothesis import strategies as st

from organseg import datasets, io
from organseg.config import Config, replace_path
from organseg.datasets import (
    Case,
    check_case,
    find_cases,
    kfold_splits,
    label_mapping,
    load_dataset,
    read_case,
)
from organseg.errors import ConfigError, InputError
from organseg.labels import remap_labels

SHAPE = (12, 10, 8)
AFFINE = oblique_affine()


def organs_mask(ids=(1, 2, 3, 4)) -> np.ndarray:
    """Four blocks labelled with the given ids (in organseg order: liver, kidney_right, kidney_left, spleen)."""
    mask = np.zeros(SHAPE, np.uint8)
    mask[1:5, 1:5, 1:4] = ids[0]
    mask[6:9, 1:4, 1:4] = ids[1]
    mask[6:9, 6:9, 1:4] = ids[2]
    mask[1:4, 6:9, 5:7] = ids[3]
    return mask


def expected_mask() -> np.ndarray:
    return organs_mask((1, 2, 3, 4))


def save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def ct() -> np.ndarray:
    return (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 200 - 100).astype(np.int16)


@pytest.fixture
def cfg() -> Config:
    return Config()


# --------------------------------------------------------------------------------------- layouts


def test_msd_layout_with_dataset_json_names_and_nnunet_file_names(tmp_path, cfg):
    labels = {
        "0": "background",
        "1": "Liver",
        "2": "right kidney",
        "3": "Kidney_L",
        "4": "spleen",
        "5": "tumour",
    }
    training = [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in ("b", "a")]
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": labels, "training": training}))
    for name in ("a", "b"):
        save(tmp_path / "imagesTr" / f"{name}_0000.nii.gz", ct())  # listed without _0000
        save(
            tmp_path / "labelsTr" / f"{name}.nii.gz",
            np.where(organs_mask() == 1, 5, organs_mask()).astype(np.uint8),
        )
    (tmp_path / "imagesTr" / "._a_0000.nii.gz").write_bytes(b"\x00\x05\x16\x07")  # macOS junk
    cases = find_cases(tmp_path)
    assert [c.name for c in cases] == ["a", "b"]
    assert all(c.layout == "msd" and c.image.name.endswith("_0000.nii.gz") for c in cases)
    image, label = read_case(cases[0], cfg)
    expected = expected_mask()
    expected[expected == 1] = 0  # the label file holds 'tumour' (5) where the liver would be
    np.testing.assert_array_equal(label.array, expected)
    assert label.array.dtype == np.uint8 and io.same_grid(image, label)


def test_msd_layout_without_training_list(tmp_path, cfg):
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "x"}))
    save(tmp_path / "imagesTr" / "c1_0000.nii.gz", ct())
    save(tmp_path / "imagesTr" / "c1_0001.nii.gz", ct())  # a second channel is not a case
    save(tmp_path / "labelsTr" / "c1.nii.gz", organs_mask())
    assert [(c.name, c.label.name) for c in find_cases(tmp_path)] == [("c1", "c1.nii.gz")]


def test_flare22_layout_with_its_preset(tmp_path, cfg):
    save(tmp_path / "images" / "FLARE22_001_0000.nii.gz", ct())
    save(tmp_path / "labels" / "FLARE22_001.nii.gz", organs_mask((1, 2, 13, 3)))
    cases = find_cases(tmp_path)
    assert [(c.name, c.layout) for c in cases] == [("FLARE22_001", "flare22")]
    flare = replace_path(cfg, "data.label_preset", "flare22")
    _, label = read_case(cases[0], flare)
    np.testing.assert_array_equal(label.array, expected_mask())
    report = load_dataset(tmp_path, cfg)  # no preset: values taken as organseg ids, with a warning
    assert any("label_preset" in w for w in report.warnings)


def test_totalsegmentator_layout_with_per_organ_masks(tmp_path, cfg):
    case = tmp_path / "s0001"
    save(case / "ct.nii.gz", ct())
    mask = expected_mask()
    for organ_id, organ in enumerate(cfg.labels.names):
        if organ_id and organ != "kidney_left":  # one organ file missing
            save(case / "segmentations" / f"{organ}.nii.gz", (mask == organ_id).astype(np.uint8))
    save(case / "segmentations" / "aorta.nii.gz", np.ones(SHAPE, np.uint8))  # not ours: ignored
    cases = find_cases(tmp_path)
    assert [(c.name, c.label.name) for c in cases] == [("s0001", "segmentations")]
    _, label = read_case(cases[0], cfg)
    np.testing.assert_array_equal(label.array, np.where(mask == 3, 0, mask))
    assert any("kidney_left" in note for note in check_case(cases[0], cfg))


def test_totalsegmentator_layout_with_multilabel_file_uses_its_ids(tmp_path, cfg):
    save(tmp_path / "s1" / "ct.nii.gz", ct())
    totalseg = organs_mask((5, 2, 3, 1))
    totalseg[0, 0, 0] = 52  # another structure: background for us, and expected
    save(tmp_path / "s1" / "seg_totalsegmentator.nii.gz", totalseg)
    (case,) = find_cases(tmp_path)
    _, label = read_case(case, cfg)
    np.testing.assert_array_equal(label.array, expected_mask())
    assert check_case(case, cfg) == []


def test_plain_layout_reports_unpaired_files(tmp_path, cfg):
    save(tmp_path / "images" / "good.nii.gz", ct())
    save(tmp_path / "labels" / "good.nii.gz", organs_mask())
    save(tmp_path / "images" / "lonely.nii.gz", ct())
    save(tmp_path / "labels" / "orphan.nii.gz", organs_mask())
    cases = {c.name: c for c in find_cases(tmp_path)}
    assert {c.layout for c in cases.values()} == {"plain"}
    assert check_case(cases["good"], cfg) == []
    assert check_case(cases["lonely"], cfg) == ["no label file"]
    assert "has no image" in check_case(cases["orphan"], cfg)[0]
    report = load_dataset(tmp_path, cfg)
    assert [c.name for c in report.cases] == ["good"]
    assert set(report.problems) == {"lonely", "orphan"}
    assert "lonely" in report.summary()


def test_nothing_found_names_folder_and_layouts(tmp_path, cfg):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError) as excinfo:
        load_dataset(tmp_path, cfg)
    message = str(excinfo.value)
    assert (
        str(tmp_path) in message
        and "MSD" in message
        and "TotalSegmentator" in message
        and "FLARE22" in message
    )


def test_no_usable_pair_is_an_error_that_names_the_folder(tmp_path, cfg):
    save(tmp_path / "images" / "a.nii.gz", ct())
    (tmp_path / "labels").mkdir()
    with pytest.raises(InputError) as excinfo:
        load_dataset(tmp_path, cfg)
    assert str(tmp_path) in str(excinfo.value) and "no usable" in str(excinfo.value)


# --------------------------------------------------------------------------------------- per-case checks


def test_label_on_another_grid_is_a_problem_but_a_flipped_copy_is_fine(tmp_path, cfg):
    save(tmp_path / "images" / "shifted.nii.gz", ct())
    shifted = AFFINE.copy()
    shifted[:3, 3] += 1.7
    save(tmp_path / "labels" / "shifted.nii.gz", organs_mask(), shifted)
    save(tmp_path / "images" / "flipped.nii.gz", ct())
    flip = np.diag([1.0, -1.0, 1.0, 1.0])
    flip[1, 3] = SHAPE[1] - 1  # same voxel centres, j axis reversed (the DICOM-trap situation)
    save(tmp_path / "labels" / "flipped.nii.gz", organs_mask()[:, ::-1, :], AFFINE @ flip)
    cases = {c.name: c for c in find_cases(tmp_path)}
    problems = check_case(cases["shifted"], cfg)
    assert len(problems) == 1 and "grid differs" in problems[0]
    assert check_case(cases["flipped"], cfg) == []
    _, label = read_case(cases["flipped"], cfg)
    np.testing.assert_array_equal(label.array, expected_mask())
    with pytest.raises(InputError):
        read_case(cases["shifted"], cfg)
    report = load_dataset(tmp_path, cfg)
    assert [c.name for c in report.cases] == ["flipped"] and list(report.problems) == ["shifted"]


def test_grid_check_reads_headers_only(tmp_path, cfg, monkeypatch):
    save(tmp_path / "images" / "a.nii.gz", ct())
    save(tmp_path / "labels" / "a.nii.gz", organs_mask())

    def no_voxels(*args, **kwargs):
        raise AssertionError("voxel data was read")

    monkeypatch.setattr(io, "read_image", no_voxels)
    report = load_dataset(tmp_path, cfg)
    assert [c.name for c in report.cases] == ["a"]


def test_unexpected_values_and_empty_labels_are_reported(tmp_path, cfg):
    save(tmp_path / "images" / "odd.nii.gz", ct())
    save(tmp_path / "labels" / "odd.nii.gz", np.where(organs_mask() == 4, 9, organs_mask()).astype(np.uint8))
    save(tmp_path / "images" / "empty.nii.gz", ct())
    save(tmp_path / "labels" / "empty.nii.gz", np.zeros(SHAPE, np.uint8))
    cases = {c.name: c for c in find_cases(tmp_path)}
    assert any("unexpected label values 9" in p for p in check_case(cases["odd"], cfg))
    assert any("none of the organs" in p for p in check_case(cases["empty"], cfg))
    assert check_case(cases["odd"], cfg, check_values=False) == []
    report = load_dataset(tmp_path, cfg, check_values=True)
    assert len(report.cases) == 2  # notes, not reasons to drop a case
    assert any(w.startswith("odd: unexpected") for w in report.warnings)


def test_one_policy_for_unexpected_values_check_warns_training_refuses(tmp_path, cfg):
    """The same rule and wording in both places; a preset makes other values expected (background)."""
    from organseg.training.data import count_case_labels

    save(tmp_path / "images" / "odd.nii.gz", ct())
    save(tmp_path / "labels" / "odd.nii.gz", np.where(organs_mask() == 4, 9, organs_mask()).astype(np.uint8))
    (case,) = find_cases(tmp_path)
    (note,) = [p for p in check_case(case, cfg) if "unexpected" in p]
    with pytest.raises(InputError, match=r"label values \[9\] are not in the label map") as err:
        count_case_labels([case], cfg)
    assert note.split(": ", 1)[1].split(" (training")[0] in str(err.value) and "odd" in str(err.value)
    preset = replace_path(cfg, "data.label_preset", "organseg")
    counts = count_case_labels([case], preset)["odd"]
    assert counts[4] == 0 and counts[1] == int((organs_mask() == 1).sum())


def test_a_ct_given_as_label_is_reported(tmp_path, cfg):
    save(tmp_path / "images" / "a.nii.gz", ct())
    save(tmp_path / "labels" / "a.nii.gz", ct())
    (case,) = find_cases(tmp_path)
    assert any("negative" in p for p in check_case(case, cfg))


# --------------------------------------------------------------------------------------- remapping


def test_remap_priority_and_background(cfg):
    source = np.array([[[0, 1, 2, 3, 5, 13, 200]]], dtype=np.uint8)
    with_preset = replace_path(cfg, "data.label_preset", "totalsegmentator")
    np.testing.assert_array_equal(remap_labels(source, label_mapping(with_preset)), [[[0, 4, 2, 3, 1, 0, 0]]])
    explicit = replace_path(with_preset, "data.label_map", {13: "kidney_left", 200: "liver"})
    np.testing.assert_array_equal(remap_labels(source, label_mapping(explicit)), [[[0, 0, 0, 0, 0, 3, 1]]])
    identity = remap_labels(source, label_mapping(cfg))
    np.testing.assert_array_equal(identity, [[[0, 1, 2, 3, 0, 0, 0]]])
    assert identity.dtype == np.uint8
    named = remap_labels(source, label_mapping(cfg, names={2: "Spleen", 13: "left_kidney"}))
    np.testing.assert_array_equal(named, [[[0, 0, 4, 0, 0, 3, 0]]])


# --------------------------------------------------------------------------------------- splits


@settings(max_examples=40, deadline=None)
@given(
    names=st.lists(
        st.text("abcdefghij0123456789_", min_size=1, max_size=8), min_size=2, max_size=40, unique=True
    ),
    k=st.integers(2, 10),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_kfold_is_a_deterministic_partition_independent_of_order(names, k, seed, data):
    if k > len(names):
        with pytest.raises(ConfigError):
            kfold_splits(names, k, seed)
        return
    splits = kfold_splits(names, k, seed)
    assert len(splits) == k
    vals = [n for s in splits for n in s["val"]]
    assert sorted(vals) == sorted(names)  # every case in exactly one val fold
    for s in splits:
        assert set(s["train"]) == set(names) - set(s["val"])
    sizes = [len(s["val"]) for s in splits]
    assert max(sizes) - min(sizes) <= 1
    shuffled = data.draw(st.permutations(names))
    assert kfold_splits(shuffled, k, seed) == splits


def test_kfold_depends_on_seed_and_rejects_bad_k():
    names = [f"case_{i:02d}" for i in range(20)]
    assert kfold_splits(names, 5, 0) != kfold_splits(names, 5, 1)
    with pytest.raises(ConfigError):
        kfold_splits(names, 1, 0)
    with pytest.raises(ValueError):
        kfold_splits(["a", "a", "b"], 2, 0)


# --------------------------------------------------------------------------------------- real data


def test_shared_data_reads_as_a_totalsegmentator_dataset(cfg):
    require_shared_data(SHARED_DATA / "totalseg-dicom")
    report = load_dataset(SHARED_DATA, cfg, check_values=True)
    assert report.layout == "totalsegmentator"
    # totalseg-example-full: the same patient down to the pelvis, TotalSegmentator --fast labels (seg_*.nii.gz)
    assert [c.name for c in report.cases] == ["totalseg-dicom", "totalseg-example", "totalseg-example-full"]
    assert report.problems == {} and report.warnings == []
    dicom_case, nifti_case, _full_case = report.cases
    image, label = read_case(dicom_case, cfg)  # LAS label onto the LPS series, in world space
    assert np.median(image.array[label.array == cfg.labels.id_of("spleen")]) > 0
    image, label = read_case(nifti_case, cfg)
    liver_ml = np.count_nonzero(label.array == cfg.labels.id_of("liver")) * image.voxel_volume_ml
    assert liver_ml == pytest.approx(1043, rel=0.02)


def test_read_case_without_label(tmp_path, cfg):
    with pytest.raises(InputError):
        read_case(Case("x", tmp_path / "x.nii.gz", None), cfg)
    assert datasets.LAYOUTS == ("msd", "flare22", "totalsegmentator", "plain")
