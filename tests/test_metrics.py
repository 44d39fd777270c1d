"""Tests of organseg.metrics: physical-space comparison, agreement with SimpleITK, empty-mask conventions,
label maps, folder mode and writers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from organseg import io
from organseg.config import LabelMap
from organseg.errors import ConfigError, InputError
from organseg.metrics import (
    evaluate,
    evaluate_folder,
    format_table,
    organ_scores,
    parse_label_map,
    write_metrics,
)

ORGANS = LabelMap().organs


def flipped_to_lps(vol: io.Volume) -> io.Volume:
    """The same labels at the same world positions, stored with axes 0 and 1 reversed (LPS storage)."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [vol.shape[0] - 1, vol.shape[1] - 1]
    return io.Volume(np.ascontiguousarray(vol.array[::-1, ::-1, :]), vol.affine @ flip, "lps-copy")


def blobs(shape=(30, 26, 18), seed=0) -> np.ndarray:
    """A label mask with liver, both kidneys and spleen as noisy ellipsoids."""
    rng = np.random.default_rng(seed)
    ii, jj, kk = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    mask = np.zeros(shape, np.uint8)
    centres = {1: (10, 12, 9, 6), 2: (6, 20, 8, 3), 3: (22, 20, 8, 3), 4: (23, 8, 9, 4)}
    for label, (ci, cj, ck, r) in centres.items():
        d = ((ii - ci) ** 2 + (jj - cj) ** 2 + (kk - ck) ** 2) / r**2
        mask[d + rng.normal(0, 0.15, shape) < 1] = label
    return mask


# --------------------------------------------------------------------------------------- geometry


def test_real_seg_against_itself_on_an_lps_grid(real_seg: Path) -> None:
    seg = io.read_image(real_seg, kind="mask")
    lps = flipped_to_lps(seg)
    assert lps.orientation == "LPS"
    result = evaluate(seg, lps, ref_map="totalsegmentator", pred_map="totalsegmentator")
    for organ in ORGANS:
        assert result[organ]["dice"] == 1.0
        assert result[organ]["hd95_mm"] == 0.0
        assert result[organ]["nsd"] == 1.0
        assert result[organ]["volume_diff_ml"] == pytest.approx(0.0, abs=1e-9)
    assert result["liver"]["volume_ref_ml"] == pytest.approx(1043, rel=0.01)


def test_real_seg_against_itself_on_a_shifted_grid(real_seg: Path) -> None:
    """A reference stored on a larger grid (padded, origin moved) is resampled in world space."""
    seg = io.read_image(real_seg, kind="mask")
    padded = np.zeros((seg.shape[0] + 7, seg.shape[1] + 4, seg.shape[2] + 3), np.uint8)
    padded[5 : 5 + seg.shape[0], 2 : 2 + seg.shape[1], 1 : 1 + seg.shape[2]] = seg.array
    shift = np.eye(4)
    shift[:3, 3] = [-5, -2, -1]
    ref = io.Volume(padded, seg.affine @ shift, "padded")
    with pytest.warns(UserWarning, match="partially"):
        result = evaluate(seg, ref, ref_map="totalsegmentator", pred_map="totalsegmentator")
    assert all(result[o]["dice"] == 1.0 for o in ORGANS)


def test_arrays_are_not_compared_by_index(real_seg: Path) -> None:
    """Flipping the array without its affine moves the organs in world space: scores must drop."""
    seg = io.read_image(real_seg, kind="mask")
    wrong = io.Volume(np.ascontiguousarray(seg.array[::-1]), seg.affine, "flipped-array-only")
    result = evaluate(seg, wrong, ref_map="totalsegmentator", pred_map="totalsegmentator")
    assert result["liver"]["dice"] < 0.5


def test_dicom_label_trap(dicom_seg: Path) -> None:
    """The DICOM label file is stored L-A-S: compared with itself re-stored L-P-S it still scores 1."""
    seg = io.read_image(dicom_seg, kind="mask")
    flip = np.diag([1.0, -1.0, 1.0, 1.0])
    flip[1, 3] = seg.shape[1] - 1
    rows_flipped = io.Volume(np.ascontiguousarray(seg.array[:, ::-1, :]), seg.affine @ flip, "rows-flipped")
    result = evaluate(seg, rows_flipped, ref_map="totalsegmentator", pred_map="totalsegmentator")
    assert result["liver"]["dice"] == 1.0 and result["spleen"]["dice"] == 1.0
    assert result["kidney_left"]["dice"] == 1.0 and result["kidney_left"]["volume_ref_ml"] == 0.0


def test_disjoint_grids_are_an_input_error() -> None:
    mask = blobs()
    far = np.eye(4)
    far[:3, 3] = [500.0, 0.0, 0.0]
    with pytest.raises(InputError, match="do not overlap"):
        evaluate(io.Volume(mask, np.eye(4)), io.Volume(mask, far))


def test_resampling_onto_a_finer_prediction_grid() -> None:
    """Reference at 2 mm, prediction at 1 mm on the same extent: nearest resampling keeps the organs."""
    coarse = blobs()
    fine = np.repeat(np.repeat(np.repeat(coarse, 2, 0), 2, 1), 2, 2)
    fine_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    fine_affine[:3, 3] = -0.5  # voxel centres of the 2 mm grid sit between pairs of 1 mm voxels
    result = evaluate(io.Volume(fine, fine_affine), io.Volume(coarse, np.diag([2.0, 2.0, 2.0, 1.0])))
    for organ in ORGANS:
        assert result[organ]["dice"] == 1.0
        assert result[organ]["volume_pred_ml"] == pytest.approx(result[organ]["volume_ref_ml"])


# --------------------------------------------------------------------------------------- scores


def test_dice_agrees_with_simpleitk() -> None:
    pred, ref = blobs(seed=1), blobs(seed=2)
    result = evaluate(
        io.Volume(pred, np.diag([0.8, 0.8, 2.5, 1.0])), io.Volume(ref, np.diag([0.8, 0.8, 2.5, 1.0]))
    )
    f = sitk.LabelOverlapMeasuresImageFilter()
    f.Execute(sitk.GetImageFromArray(ref), sitk.GetImageFromArray(pred))
    for label, organ in enumerate(ORGANS, start=1):
        assert result[organ]["dice"] == pytest.approx(f.GetDiceCoefficient(label), abs=1e-6)
        assert result[organ]["iou"] == pytest.approx(f.GetJaccardCoefficient(label), abs=1e-6)
        assert 0.3 < result[organ]["dice"] < 1.0  # the pair differs, so this is not a trivial 1.0


def test_overlap_scores_from_counts() -> None:
    ref = np.zeros((10, 10, 10), bool)
    pred = np.zeros_like(ref)
    ref[2:6, 2:6, 2:6] = True  # 64 voxels
    pred[2:6, 2:6, 2:4] = True  # 32 voxels, all inside ref
    pred[8, 8, 8] = True  # 1 false positive
    s = organ_scores(pred, ref, (1.0, 1.0, 1.0), beta=0.5)
    p, r = 32 / 33, 32 / 64
    assert s["precision"] == pytest.approx(p)
    assert s["recall"] == pytest.approx(r)
    assert s["dice"] == pytest.approx(2 * 32 / (33 + 64))
    assert s["iou"] == pytest.approx(32 / (33 + 64 - 32))
    assert s["fbeta"] == pytest.approx(1.25 * p * r / (0.25 * p + r))


def test_surface_scores_use_spacing_and_tolerance() -> None:
    ref = np.zeros((40, 40, 40), bool)
    ref[10:30, 10:30, 10:30] = True
    shifted = np.roll(ref, 2, axis=0)  # 2 voxels along axis 0
    fine = organ_scores(shifted, ref, (1.0, 1.0, 1.0), nsd_tolerance_mm=3.0)
    coarse = organ_scores(shifted, ref, (2.0, 1.0, 1.0), nsd_tolerance_mm=3.0)
    assert fine["hd95_mm"] == pytest.approx(2.0)
    assert coarse["hd95_mm"] == pytest.approx(4.0)  # the same shift is 4 mm at 2 mm spacing
    assert fine["nsd"] == pytest.approx(1.0)  # within 3 mm everywhere
    assert coarse["nsd"] < 1.0


def test_empty_mask_conventions() -> None:
    empty = np.zeros((8, 8, 8), bool)
    full = empty.copy()
    full[2:5, 2:5, 2:5] = True
    both = organ_scores(empty, empty, (1, 1, 1))
    assert both["dice"] == 1.0 and both["nsd"] == 1.0 and both["hd95_mm"] == 0.0
    missed = organ_scores(empty, full, (1, 1, 1))
    extra = organ_scores(full, empty, (1, 1, 1))
    for s in (missed, extra):
        assert s["dice"] == 0.0 and s["nsd"] == 0.0 and math.isinf(s["hd95_mm"])


def test_nsd_tolerances_follow_flare22() -> None:
    """Liver is judged at 5 mm, spleen at 3 mm: a 4 mm shift (2 voxels of 2 mm) passes for the liver only."""
    ref = np.zeros((40, 40, 40), np.uint8)
    ref[4:18, 4:18, 4:18] = 1
    ref[22:36, 22:36, 22:36] = 4
    pred = np.roll(ref, 2, axis=0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    result = evaluate(io.Volume(pred, affine), io.Volume(ref, affine))
    assert result["liver"]["nsd"] == pytest.approx(1.0)
    assert result["spleen"]["nsd"] < 1.0
    assert result["liver"]["hd95_mm"] == pytest.approx(4.0)
    loose = evaluate(io.Volume(pred, affine), io.Volume(ref, affine), nsd_tolerance_mm=5.0)
    assert loose["spleen"]["nsd"] == pytest.approx(1.0)


def test_reference_volume_counts_the_whole_reference(real_seg: Path) -> None:
    """A prediction covering half the scan: scores on the shared half, reference volume from all of it."""
    seg = io.read_image(real_seg, kind="mask")
    half = io.Volume(np.ascontiguousarray(seg.array[:, :, :15]), seg.affine, "half")
    with pytest.warns(UserWarning, match="partially"):
        result = evaluate(half, seg, ref_map="totalsegmentator", pred_map="totalsegmentator")
    whole = float((seg.array == 5).sum()) * seg.voxel_volume_ml
    assert result["liver"]["volume_ref_ml"] == pytest.approx(whole)
    assert result["liver"]["volume_pred_ml"] < whole
    assert result["liver"]["dice"] == 1.0  # within the prediction's grid the two agree


# --------------------------------------------------------------------------------------- label maps


def test_parse_label_map() -> None:
    labels = LabelMap()
    assert parse_label_map("totalsegmentator", labels) == {1: 4, 2: 2, 3: 3, 5: 1}
    assert parse_label_map("5:liver,1:spleen", labels) == {5: 1, 1: 4}
    assert parse_label_map("5:1, 1:4", labels) == {5: 1, 1: 4}
    assert parse_label_map({13: "kidney_left"}, labels) == {13: 3}
    with pytest.raises(ConfigError, match="pancreas"):
        parse_label_map("7:pancreas", labels)
    with pytest.raises(ConfigError, match="preset"):
        parse_label_map("nonsense", labels)


def test_ref_map_changes_the_scores() -> None:
    ours = blobs()
    ts = np.zeros_like(ours)
    for our_id, ts_id in {1: 5, 2: 2, 3: 3, 4: 1}.items():
        ts[ours == our_id] = ts_id
    aff = np.eye(4)
    mapped = evaluate(io.Volume(ours, aff), io.Volume(ts, aff), ref_map="totalsegmentator")
    assert all(mapped[o]["dice"] == 1.0 for o in ORGANS)
    with pytest.warns(UserWarning, match="ref_map"):
        unmapped = evaluate(io.Volume(ours, aff), io.Volume(ts, aff))
    assert unmapped["liver"]["dice"] == 0.0 and unmapped["spleen"]["dice"] == 0.0


# --------------------------------------------------------------------------------------- folders and writers


def _save(mask: np.ndarray, path: Path) -> None:
    nib.save(nib.Nifti1Image(mask, np.diag([1.5, 1.5, 2.0, 1.0])), path)


def test_evaluate_folder_and_writers(tmp_path: Path) -> None:
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir()
    ref_dir.mkdir()
    for name, seed in (("case_a", 1), ("case_b", 2)):
        _save(blobs(seed=0), ref_dir / f"{name}.nii.gz")
        _save(blobs(seed=seed), pred_dir / f"{name}.nii.gz")
    spleenless = blobs(seed=3)
    spleenless[spleenless == 4] = 0
    _save(spleenless, pred_dir / "case_c.nii.gz")
    _save(blobs(seed=0), ref_dir / "case_c.nii.gz")
    _save(blobs(seed=0), ref_dir / "case_missing.nii.gz")
    (pred_dir / "case_a.json").write_text("{}")  # a sidecar is not a case
    with pytest.warns(UserWarning, match="case_missing"):
        result = evaluate_folder(pred_dir, ref_dir)
    assert sorted(result["cases"]) == ["case_a", "case_b", "case_c"]
    assert result["missing"] == ["case_missing"]
    dices = [result["cases"][c]["liver"]["dice"] for c in ("case_a", "case_b", "case_c")]
    assert result["summary"]["liver"]["dice"]["mean"] == pytest.approx(np.mean(dices))
    assert result["summary"]["liver"]["dice"]["sd"] == pytest.approx(np.std(dices, ddof=1))
    assert result["summary"]["spleen"]["hd95_mm"]["n"] == 2  # case_c's inf is left out of the mean
    text = format_table(result)
    assert "liver" in text and "±" in text and "3 case(s)" in text

    write_metrics(result, tmp_path / "m.json")
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["cases"]["case_c"]["spleen"]["hd95_mm"] is None
    write_metrics(result, tmp_path / "m.csv")
    rows = (tmp_path / "m.csv").read_text().splitlines()
    assert rows[0].startswith("case,organ,dice") and len(rows) == 1 + 3 * 4
    with pytest.raises(Exception, match="already exists"):
        write_metrics(result, tmp_path / "m.csv")


def test_evaluate_command_prints_and_writes(tmp_path: Path) -> None:
    from organseg.cli import evaluate_command

    _save(blobs(seed=1), tmp_path / "pred.nii.gz")
    _save(blobs(seed=0), tmp_path / "ref.nii.gz")
    lines: list[str] = []
    result = evaluate_command(
        tmp_path / "pred.nii.gz", tmp_path / "ref.nii.gz", out=tmp_path / "r.json", echo=lines.append
    )
    assert "kidney_right" in lines[0]
    assert json.loads((tmp_path / "r.json").read_text())["liver"]["dice"] == pytest.approx(
        result["liver"]["dice"]
    )
