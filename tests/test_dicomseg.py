"""DICOM-SEG output, checked by real readers (highdicom, pydicom, dciodvfy) on the shared DICOM series.

The reference for every frame is the NIfTI mask that the same run wrote, sampled at the world position
of each DICOM pixel (ImagePositionPatient + row/column directions), so frame order, row/column order and
the LPS/RAS conversion are all checked through physical space, not through array order.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import SHARED_DATA, require_shared_data

from organseg.cli import main
from organseg.config import LabelMap
from organseg.errors import InputError, OutputError
from organseg.io.dicomseg import check_dicom_seg_request, write_series_seg

SHARED = SHARED_DATA
SERIES = SHARED / "totalseg-dicom" / "dicom"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@pytest.fixture(scope="module", autouse=True)
def _shared_series() -> None:
    """Skip without the shared DICOM series (fail under CI=true, as conftest's fixtures do)."""
    require_shared_data(SERIES)


def organseg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "organseg.cli", *args], capture_output=True, encoding="utf-8", timeout=600
    )


@pytest.fixture(scope="module")
def series_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared series as a zip, in a subfolder as users zip it."""
    path = tmp_path_factory.mktemp("zip") / "series.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for file in sorted(SERIES.iterdir()):
            archive.write(file, f"CT/{file.name}")
    return path


@pytest.fixture(scope="module")
def zip_run(series_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """``organseg infer`` on the zip writing both outputs: (seg.dcm, seg.nii.gz, stdout+stderr)."""
    out = tmp_path_factory.mktemp("run")
    proc = organseg(
        "infer", "--input", str(series_zip), "--output", str(out / "seg.dcm"),
        "--output-type", "dicom-seg", "--output-type", "nifti", "--no-tta",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out / "seg.dcm", out / "seg.nii.gz", proc.stdout + proc.stderr


def expected_frames(nifti: Path, sources: list[pydicom.Dataset], label: int) -> np.ndarray:
    """(slices, rows, cols) booleans: the NIfTI mask sampled at each DICOM pixel's world position."""
    img = nib.load(nifti)
    data = np.asarray(img.dataobj)
    inverse = np.linalg.inv(img.affine)
    out = []
    for ds in sources:
        rows, cols = int(ds.Rows), int(ds.Columns)
        row_dir, col_dir = np.asarray(ds.ImageOrientationPatient, float).reshape(2, 3)
        dr, dc = (float(v) for v in ds.PixelSpacing)
        r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        lps = (
            np.asarray(ds.ImagePositionPatient, float)
            + c[..., None] * dc * row_dir
            + r[..., None] * dr * col_dir
        )
        ijk = (lps @ LPS_TO_RAS.T) @ inverse[:3, :3].T + inverse[:3, 3]
        idx = np.rint(ijk).astype(int)
        assert np.abs(ijk - idx).max() < 1e-3  # every DICOM pixel is a voxel centre of the NIfTI grid
        out.append(data[idx[..., 0], idx[..., 1], idx[..., 2]] == label)
    return np.stack(out)


def sop_uid(ds: pydicom.Dataset) -> str:
    # The shared series is anonymised with an empty SOPInstanceUID; its file meta keeps the value.
    return str(ds.get("SOPInstanceUID") or ds.file_meta.MediaStorageSOPInstanceUID)


def check_round_trip(seg_path: Path, nifti: Path) -> None:
    """highdicom reads the SEG; each segment's frames equal the NIfTI mask on the series grid."""
    import highdicom as hd

    seg = hd.seg.segread(seg_path)
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(SERIES.iterdir())]
    uids = [sop_uid(ds) for ds in sources]
    referenced = {
        item.ReferencedSOPInstanceUID
        for series in seg.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    assert referenced == set(uids)
    labels = LabelMap()
    found = [s.SegmentLabel for s in seg.SegmentSequence]
    # the run found liver and spleen (the series shows no kidney): one segment each, kidneys left out
    assert found == ["liver", "spleen"]
    pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=[1, 2])
    assert pixels.shape == (len(uids), 512, 512, 2)
    for s, organ in enumerate(found):
        expected = expected_frames(nifti, sources, labels.names.index(organ))
        assert expected.sum() > 1000  # a real organ, not an empty check
        np.testing.assert_array_equal(pixels[..., s].astype(bool), expected, err_msg=organ)
    # As a viewer places it: highdicom's volume from the SEG's own plane positions (LPS affine), compared
    # with the NIfTI in world space; no source UID or file order is involved here.
    volume = seg.get_volume(segment_numbers=[1, 2])
    img = nib.load(nifti)
    to_nifti = np.linalg.inv(img.affine) @ np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine
    idx = np.indices(volume.shape[:3]).reshape(3, -1)
    ijk = to_nifti[:3, :3] @ idx + to_nifti[:3, 3:]
    assert np.abs(ijk - np.rint(ijk)).max() < 1e-3
    ijk = np.rint(ijk).astype(int)
    sampled = np.asarray(img.dataobj)[ijk[0], ijk[1], ijk[2]].reshape(volume.shape[:3])
    for s, organ in enumerate(found):
        np.testing.assert_array_equal(
            volume.array[..., s] > 0, sampled == labels.names.index(organ), err_msg=organ
        )


def test_zip_run_writes_a_dicom_seg_whose_frames_equal_the_nifti_mask(
    zip_run: tuple[Path, Path, str],
) -> None:
    seg_path, nifti, log = zip_run
    check_round_trip(seg_path, nifti)
    assert "left out of the DICOM-SEG: kidney_right, kidney_left" in log


def test_segments_carry_snomed_codes_and_the_algorithm(zip_run: tuple[Path, Path, str]) -> None:
    ds = pydicom.dcmread(zip_run[0])  # pydicom reads it, pixel data included
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert ds.SegmentationType == "BINARY"
    assert ds.pixel_array.shape[-2:] == (512, 512)
    liver, spleen = ds.SegmentSequence
    # SNOMED CT: 10200004 Liver, 78961009 Spleen, category 91772007 Organ (pydicom's codes.SCT)
    assert (liver.SegmentedPropertyTypeCodeSequence[0].CodeValue, liver.SegmentLabel) == ("10200004", "liver")
    assert spleen.SegmentedPropertyTypeCodeSequence[0].CodeValue == "78961009"
    assert {s.SegmentedPropertyCategoryCodeSequence[0].CodeValue for s in ds.SegmentSequence} == {"91772007"}
    algorithm = liver.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "organseg"
    assert "abdomen_synth" in algorithm.AlgorithmParameters and ds.ManufacturerModelName == "abdomen_synth"
    assert ds.FrameOfReferenceUID == pydicom.dcmread(next(SERIES.iterdir())).FrameOfReferenceUID


def test_folder_source_and_kidney_codes(zip_run: tuple[Path, Path, str], tmp_path: Path) -> None:
    """The folder path of ``write_series_seg``, with every organ present: kidneys are Kidney + laterality."""
    import highdicom as hd

    img = nib.load(zip_run[1])
    mask = np.asarray(img.dataobj).astype(np.uint8)
    liver = mask == 1
    i = np.indices(mask.shape)[0]
    lo, hi = np.percentile(i[liver], [30, 70])
    mask[liver & (i < lo)] = 2  # paint parts of the liver as the kidneys
    mask[liver & (i > hi)] = 3
    out = tmp_path / "all.dcm"
    written, notes = write_series_seg(mask, img.affine, SERIES, None, out, LabelMap(), model_name="m")
    assert written == out and not any("left out" in n for n in notes)
    seg = hd.seg.segread(out)
    codes = [
        (s.SegmentLabel, s.SegmentedPropertyTypeCodeSequence[0].CodeValue,
         [m.CodeValue for m in s.get("SegmentedPropertyTypeModifierCodeSequence", [])])
        for s in seg.SegmentSequence
    ]  # fmt: skip
    # 64033007 Kidney with 24028007 Right / 7771000 Left
    assert codes == [
        ("liver", "10200004", []),
        ("kidney_right", "64033007", ["24028007"]),
        ("kidney_left", "64033007", ["7771000"]),
        ("spleen", "78961009", []),
    ]
    nifti = tmp_path / "all.nii.gz"
    nib.save(nib.Nifti1Image(mask, img.affine), nifti)
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(SERIES.iterdir())]
    pixels = seg.get_pixels_by_source_instance([sop_uid(ds) for ds in sources])
    for s in range(4):
        np.testing.assert_array_equal(pixels[..., s].astype(bool), expected_frames(nifti, sources, s + 1))
    with pytest.raises(OutputError, match="exists"):
        write_series_seg(mask, img.affine, SERIES, None, out, LabelMap(), model_name="m")


@pytest.mark.skipif(
    shutil.which("dciodvfy") is None, reason="dciodvfy not installed (Debian package dicom3tools)"
)
def test_dciodvfy_reports_no_errors(zip_run: tuple[Path, Path, str]) -> None:
    proc = subprocess.run(["dciodvfy", str(zip_run[0])], capture_output=True, text=True, timeout=120)
    report = proc.stdout + proc.stderr
    assert "Segmentation" in report  # it recognised the IOD
    assert [line for line in report.splitlines() if line.startswith("Error")] == [], report


def test_bad_requests_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    nifti = SHARED / "totalseg-example" / "ct.nii.gz"
    with pytest.raises(InputError, match="DICOM-SEG needs a DICOM series"):
        check_dicom_seg_request(nifti, tmp_path / "seg.dcm")
    with pytest.raises(OutputError, match=r"ending in \.dcm"):
        check_dicom_seg_request(SERIES, tmp_path / "seg.nii.gz")
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "infer",
                "--input",
                str(nifti),
                "--output",
                str(tmp_path / "s.dcm"),
                "--output-type",
                "dicom-seg",
            ]
        )
    err = capsys.readouterr().err
    assert exit_info.value.code != 0 and err.count("\n") == 1
    assert err.startswith("organseg: error: ") and "DICOM-SEG needs a DICOM series" in err
    with pytest.raises(SystemExit):  # a .dcm name without asking for DICOM-SEG: not a folder named seg.dcm
        main(["infer", "--input", str(SERIES), "--output", str(tmp_path / "s.dcm")])
    assert "add --output-type dicom-seg" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_several_series_need_series_uid(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A folder with two series: the existing 'choose one with --series' error, before inference."""
    for n, uid in enumerate(("1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2")):
        folder = tmp_path / "in" / f"s{n}"
        folder.mkdir(parents=True)
        for file in sorted(SERIES.iterdir())[:4]:
            ds = pydicom.dcmread(file)
            ds.SeriesInstanceUID = uid
            ds.SOPInstanceUID = f"{uid}.{ds.InstanceNumber}"
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds.save_as(folder / file.name)
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "infer",
                "--input",
                str(tmp_path / "in"),
                "--output",
                str(tmp_path / "seg.dcm"),
                "--output-type",
                "dicom-seg",
            ]
        )
    err = capsys.readouterr().err
    assert exit_info.value.code != 0 and "choose one with --series" in err, err
    assert not (tmp_path / "seg.dcm").exists()


def test_slices_without_a_position_are_refused(tmp_path: Path) -> None:
    """A source slice the SEG cannot be placed on (no ImagePositionPatient) is a one-line InputError."""
    from organseg.io.dicomseg import source_datasets

    for n, file in enumerate(sorted(SERIES.iterdir())[:3]):
        ds = pydicom.dcmread(file)
        if n == 1:
            del ds.ImagePositionPatient
        ds.save_as(tmp_path / file.name)
    with pytest.raises(InputError, match="needs a series of single-frame slices"):
        with source_datasets(tmp_path):
            pass
