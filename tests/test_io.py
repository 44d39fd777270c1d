"""organseg.io: reading every format with its geometry, validation at the boundary, mask writing."""

from __future__ import annotations

import functools
import gzip
import json
import os
import tracemalloc
import zipfile
from pathlib import Path

import conftest
import nibabel as nib
import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import oblique_affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from organseg import io
from organseg.config import LabelMap
from organseg.errors import InputError, OutputError
from organseg.geometry import resample_volume

PROPERTY = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# --------------------------------------------------------------------------------------- helpers


#: The shared writer with scanner qform and sform codes (1), as scanners write them.
save_nifti = functools.partial(conftest.save_nifti, qcode=1, scode=1)


def ramp(shape=(6, 5, 4), dtype=np.int16) -> np.ndarray:
    """Every voxel a different value, so any index mix-up changes the array."""
    return (np.arange(np.prod(shape)).reshape(shape) - 50).astype(dtype)


def rotation_lps(angle_deg: float = 20.0) -> np.ndarray:
    """A proper rotation (det +1) about an oblique axis, as an ITK direction matrix."""
    axis = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)
    a = np.deg2rad(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def write_dicom_series(
    folder: Path,
    array_ijk: np.ndarray,
    uid: str,
    description: str = "test series",
    direction: np.ndarray | None = None,
    spacing=(0.8, 0.9, 2.5),
    origin=(10.0, -20.0, 30.0),
) -> sitk.Image:
    """Write a CT series slice by slice with SimpleITK (LPS geometry given directly); returns the 3D image."""
    folder.mkdir(parents=True, exist_ok=True)
    direction = np.eye(3) if direction is None else direction
    image = sitk.GetImageFromArray(array_ijk.transpose(2, 1, 0).astype(np.int16))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple(direction.ravel()))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetImageIO("GDCMImageIO")
    orientation = "\\".join(f"{v:.10f}" for v in (*direction[:, 0], *direction[:, 1]))
    for k in range(image.GetDepth()):
        s = image[:, :, k]
        for tag, value in (
            ("0008|0060", "CT"),
            ("0020|000d", "1.2.826.0.1.3680043.2.1125.9"),
            ("0020|000e", uid),
            ("0008|103e", description),
            ("0020|0037", orientation),
            ("0020|0032", "\\".join(f"{v:.10f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k)))),
            ("0020|0013", str(k + 1)),
            ("0008|0018", f"{uid}.{k + 1}"),
        ):
            s.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{uid[-3:]}_{k:03d}.dcm"))
        writer.Execute(s)
    return image


def lps_to_ras_point(point) -> np.ndarray:
    return np.array([-point[0], -point[1], point[2]])


def assert_one_line_error(excinfo: pytest.ExceptionInfo, path: Path | str, *words: str) -> None:
    message = str(excinfo.value)
    assert str(path) in message
    assert "\n" not in message
    for word in words:
        assert word.lower() in message.lower(), message


# --------------------------------------------------------------------------------------- real data


def test_real_nifti_ct_has_documented_grid(real_ct):
    vol = io.read_image(real_ct, kind="ct")
    assert vol.shape == (122, 101, 30)
    assert vol.spacing_mm == pytest.approx((3.0, 3.0, 3.0))
    assert vol.orientation == "RAS"
    assert vol.array.dtype == np.int16
    assert vol.header is not None
    assert vol.array.min() < -900  # air in HU


def test_real_dicom_series_is_read_in_hu_with_lps_geometry(dicom_dir):
    vol = io.read_image(dicom_dir, kind="ct")
    assert vol.shape == (512, 512, 20)
    assert vol.spacing_mm == pytest.approx((0.9765625, 0.9765625, 2.0))
    assert vol.orientation == "LPS"
    assert vol.array.dtype == np.int16
    # stored values are unsigned 12-bit; only the rescale intercept (-1024) makes air negative
    assert vol.array.min() == -1024
    assert io.list_dicom_series(dicom_dir) == [io.DicomSeries("", 20, "CT Body 3.0")]


def test_real_dicom_label_aligns_only_in_world_space(dicom_dir, dicom_seg):
    """The shared-data trap: the label file is LAS, the series LPS; their arrays are row-flipped."""
    ct = io.read_image(dicom_dir, kind="ct")
    seg = io.read_image(dicom_seg, kind="mask")
    assert ct.shape == seg.shape and not io.same_grid(ct, seg)
    spleen = 1  # TotalSegmentator id
    aligned = resample_volume(seg, like=ct, order=0)
    assert np.median(ct.array[aligned.array == spleen]) > 0  # ~ +80 HU: soft tissue
    naive = np.median(ct.array[seg.array == spleen])  # array-to-array: wrong voxels
    assert naive < 0


def test_header_only_info_matches_full_read(dicom_dir, real_ct):
    for path in (dicom_dir, real_ct):
        info, vol = io.read_image_info(path), io.read_image(path)
        assert info.shape == vol.shape
        np.testing.assert_allclose(info.affine, vol.affine, atol=1e-6)
        assert io.same_grid(info, vol)


# --------------------------------------------------------------------------------------- NIfTI round trips


@st.composite
def affines(draw) -> np.ndarray:
    """Any rotation, spacing 0.5-5 mm, any axis flips (RAS- and LPS-like), origin within +-300 mm."""
    q = np.array([draw(st.floats(-1, 1)) for _ in range(4)])
    if np.linalg.norm(q) < 1e-2:
        q = np.array([1.0, 0, 0, 0])
    w, x, y, z = q / np.linalg.norm(q)
    rot = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    flips = np.diag([draw(st.sampled_from([-1.0, 1.0])) for _ in range(3)])
    spacing = np.diag([draw(st.floats(0.5, 5.0)) for _ in range(3)])
    affine = np.eye(4)
    affine[:3, :3] = flips @ rot @ spacing
    affine[:3, 3] = [draw(st.floats(-300, 300)) for _ in range(3)]
    return affine


@PROPERTY
@given(affine=affines())
def test_any_affine_survives_a_nifti_round_trip(tmp_path, affine):
    array = ramp()
    path = tmp_path / "vol.nii.gz"
    io.write_nifti(array, io.Volume(array, affine), path)
    vol = io.read_image(path)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-4)
    np.testing.assert_array_equal(vol.array, array)


@PROPERTY
@given(affine=affines())
def test_any_affine_survives_an_mha_file_written_in_lps(tmp_path, affine):
    """SimpleITK writes LPS; reading must give back the RAS affine and the (i, j, k) array."""
    array = ramp()
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    image = sitk.GetImageFromArray(array.transpose(2, 1, 0))
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps / spacing).ravel().tolist())
    image.SetOrigin([-affine[0, 3], -affine[1, 3], affine[2, 3]])
    path = tmp_path / "vol.mha"
    sitk.WriteImage(image, str(path))
    vol = io.read_image(path)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-6)
    np.testing.assert_array_equal(vol.array, array)


def test_scaled_nifti_is_float32_hu(tmp_path):
    raw = ramp().astype(np.int16)
    img = nib.Nifti1Image(raw, oblique_affine())
    img.header.set_slope_inter(0.5, -1024.0)
    path = tmp_path / "scaled.nii.gz"
    nib.save(img, path)
    vol = io.read_image(path, kind="ct")
    assert vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.array, raw * 0.5 - 1024.0)


def test_float64_nifti_is_narrowed_to_float32(tmp_path):
    path = save_nifti(tmp_path / "f64.nii.gz", ramp().astype(np.float64) + 0.25, oblique_affine())
    vol = io.read_image(path)
    assert vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.array, ramp() + 0.25)


def test_4d_with_trailing_singleton_is_squeezed(tmp_path):
    array = ramp()[..., np.newaxis]
    path = save_nifti(tmp_path / "t1.nii.gz", array, oblique_affine())
    vol = io.read_image(path)
    assert vol.shape == (6, 5, 4) and vol.array.ndim == 3
    np.testing.assert_array_equal(vol.array, ramp())


# --------------------------------------------------------------------------------------- bad inputs


def test_missing_path(tmp_path):
    path = tmp_path / "nope.nii.gz"
    with pytest.raises(InputError) as excinfo:
        io.read_image(path)
    assert_one_line_error(excinfo, path, "no such file")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.nii.gz"
    path.touch()
    with pytest.raises(InputError) as excinfo:
        io.read_image(path)
    assert_one_line_error(excinfo, path, "empty")


def test_truncated_nifti_gz(tmp_path):
    rng = np.random.default_rng(0)
    path = save_nifti(
        tmp_path / "cut.nii.gz", rng.normal(size=(40, 40, 40)).astype(np.float32), oblique_affine()
    )
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as excinfo:
        io.read_image(path)
    assert_one_line_error(excinfo, path, "truncated")


def test_text_file_named_nifti(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_text("patient 12, liver looks fine\n")
    with pytest.raises(InputError) as excinfo:
        io.read_image(path)
    assert_one_line_error(excinfo, path, "text file")


def test_png_renamed_nifti(tmp_path):
    path = tmp_path / "photo.nii.gz"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(200))
    with pytest.raises(InputError) as excinfo:
        io.read_image(path)
    assert_one_line_error(excinfo, path, "PNG")


def test_uncompressed_nifti_named_gz_suggests_rename(tmp_path):
    plain = save_nifti(tmp_path / "vol.nii", ramp(), oblique_affine())
    path = tmp_path / "vol.nii.gz"
    plain.rename(path)
    with pytest.raises(InputError) as excinfo:
        io.read_image(path)
    assert_one_line_error(excinfo, path, "rename it to .nii")


@pytest.mark.parametrize(
    ("shape", "words"),
    [
        ((8, 9), ("2D",)),
        ((8, 9, 1), ("2D", "single slice")),
        ((6, 5, 4, 3), ("4D", "3 volumes")),
        ((6, 5, 4, 1, 2), ("5D",)),
    ],
)
def test_wrong_dimensionality(tmp_path, shape, words):
    path = tmp_path / "dims.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(shape, np.int16), np.eye(4)), path)
    with pytest.raises(InputError) as excinfo:
        io.read_image(path)
    assert_one_line_error(excinfo, path, *words)


def test_zero_sized_dimension(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_shape((8, 0, 4))
    header.set_data_dtype(np.int16)
    path = tmp_path / "zero.nii"
    path.write_bytes(header.binaryblock + bytes(4))
    with pytest.raises(InputError) as excinfo:
        io.read_image(path)
    assert_one_line_error(excinfo, path, "zero-sized")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels(tmp_path, bad):
    array = ramp().astype(np.float32)
    array[2, 3, 1] = bad
    path = save_nifti(tmp_path / "nan.nii.gz", array, oblique_affine())
    with pytest.raises(InputError) as excinfo:
        io.read_image(path)
    assert_one_line_error(excinfo, path, "1 voxels are NaN or infinite")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_huge_declared_size_is_refused_without_allocating(tmp_path, suffix):
    """A 400^3 int16 header (128 MB) over a 1 kB payload: refused from sizes alone, nothing allocated."""
    header = nib.Nifti1Header()
    header.set_data_shape((400, 400, 400))
    header.set_data_dtype(np.int16)
    header.set_sform(np.eye(4), code=1)
    blob = header.binaryblock + bytes(4) + bytes(range(256)) * 4
    path = tmp_path / f"huge{suffix}"
    path.write_bytes(gzip.compress(blob) if suffix == ".nii.gz" else blob)
    tracemalloc.start()
    try:
        with pytest.raises(InputError) as excinfo:
            io.read_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert_one_line_error(excinfo, path, "declares")
    assert peak < 16 * 1024**2


def test_voxel_count_cap(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_shape((2000, 2000, 1000))
    header.set_data_dtype(np.uint8)
    path = tmp_path / "cap.nii"
    path.write_bytes(header.binaryblock + bytes(4))
    with pytest.raises(InputError) as excinfo:
        io.read_image(path)
    assert_one_line_error(excinfo, path, "4,000,000,000 voxels")


def test_ct_passed_as_mask_is_refused(tmp_path):
    ct = save_nifti(tmp_path / "ct.nii.gz", ramp(), oblique_affine())  # int16 with negative values
    with pytest.raises(InputError) as excinfo:
        io.read_image(ct, kind="mask")
    assert_one_line_error(excinfo, ct, "negative")
    fractional = save_nifti(tmp_path / "prob.nii.gz", np.full((6, 5, 4), 0.25, np.float32), oblique_affine())
    with pytest.raises(InputError) as excinfo:
        io.read_image(fractional, kind="mask")
    assert_one_line_error(excinfo, fractional, "non-integer")


def test_float_mask_with_integer_values_becomes_uint8(tmp_path):
    labels = (np.arange(120).reshape(6, 5, 4) % 5).astype(np.float32)
    path = save_nifti(tmp_path / "m.nii.gz", labels, oblique_affine())
    vol = io.read_image(path, kind="mask")
    assert vol.array.dtype == np.uint8
    np.testing.assert_array_equal(vol.array, labels)


def test_unsupported_and_single_dicom_file(tmp_path):
    other = tmp_path / "scan.png"
    other.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(InputError) as excinfo:
        io.read_image(other)
    assert_one_line_error(excinfo, other, "unsupported")
    write_dicom_series(tmp_path / "s", ramp(), "1.2.3.111")
    single = next((tmp_path / "s").iterdir())
    with pytest.raises(InputError) as excinfo:
        io.read_image(single)
    assert_one_line_error(excinfo, single, "whole series")


# --------------------------------------------------------------------------------------- NRRD / MHA


@pytest.mark.parametrize("space", ["right-anterior-superior", "left-posterior-superior"])
def test_nrrd_geometry_in_either_space(tmp_path, space):
    affine = oblique_affine()
    flip = np.diag([1.0, 1.0, 1.0]) if space.startswith("right") else np.diag([-1.0, -1.0, 1.0])
    header = {
        "space": space,
        "space directions": (flip @ affine[:3, :3]).T,  # one row per array axis
        "space origin": flip @ affine[:3, 3],
    }
    path = tmp_path / "vol.nrrd"
    nrrd.write(str(path), ramp(), header, index_order="F")
    vol = io.read_image(path)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-6)
    np.testing.assert_array_equal(vol.array, ramp())


def test_detached_nhdr_and_header_only_info(tmp_path):
    affine = oblique_affine()
    header = {
        "space": "right-anterior-superior",
        "space directions": affine[:3, :3].T,
        "space origin": affine[:3, 3],
    }
    path = tmp_path / "vol.nhdr"
    nrrd.write(str(path), ramp(), header, detached_header=True, index_order="F")
    vol, info = io.read_image(path), io.read_image_info(path)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-6)
    np.testing.assert_array_equal(vol.array, ramp())
    assert io.same_grid(info, vol) and info.dtype == np.int16


def test_nrrd_declaring_more_than_it_holds(tmp_path):
    path = tmp_path / "lie.nrrd"
    path.write_bytes(
        b"NRRD0004\ntype: int16\ndimension: 3\nsizes: 400 400 400\nencoding: raw\nendian: little\n\n"
        + bytes(1000)
    )
    with pytest.raises(InputError) as excinfo:
        io.read_image(path)
    assert_one_line_error(excinfo, path, "declares")


def test_mhd_with_missing_data_file(tmp_path):
    path = tmp_path / "vol.mhd"
    sitk.WriteImage(sitk.GetImageFromArray(ramp().transpose(2, 1, 0)), str(path))
    (tmp_path / "vol.raw").unlink()
    with pytest.raises(InputError) as excinfo:
        io.read_image(path)
    assert_one_line_error(excinfo, path, "missing")


# --------------------------------------------------------------------------------------- DICOM


def test_oblique_dicom_series_maps_voxels_to_the_right_world_points(tmp_path):
    array = ramp((7, 6, 5))
    image = write_dicom_series(tmp_path / "series", array, "1.2.3.111", direction=rotation_lps())
    vol = io.read_image(tmp_path / "series", kind="image")
    np.testing.assert_array_equal(vol.array, array)  # (i, j, k) order, values as written
    for ijk in [(0, 0, 0), (6, 0, 0), (3, 5, 4), (6, 5, 4)]:
        expected = lps_to_ras_point(image.TransformIndexToPhysicalPoint(ijk))
        np.testing.assert_allclose(vol.affine @ [*ijk, 1], [*expected, 1], atol=1e-4)
    info = io.read_image_info(tmp_path / "series")
    np.testing.assert_allclose(info.affine, vol.affine, atol=1e-4)


def test_several_series_in_one_folder_need_a_choice(tmp_path):
    folder = tmp_path / "study"
    write_dicom_series(folder, ramp(), "1.2.3.111", description="abdomen")
    write_dicom_series(folder, ramp((6, 5, 3)) + 7, "1.2.3.222", description="scout")
    with pytest.raises(InputError) as excinfo:
        io.read_image(folder)
    assert_one_line_error(
        excinfo, folder, "2 DICOM series", "--series", "1.2.3.111 (4 slices", "1.2.3.222 (3 slices"
    )
    assert sorted(io.list_dicom_series(folder)) == [("1.2.3.111", 4, "abdomen"), ("1.2.3.222", 3, "scout")]
    chosen = io.read_image(folder, series_uid="1.2.3.222")
    np.testing.assert_array_equal(chosen.array, ramp((6, 5, 3)) + 7)
    with pytest.raises(InputError) as excinfo:
        io.read_image(folder, series_uid="9.9.9")
    assert_one_line_error(excinfo, folder, "9.9.9")


def test_folder_without_dicom(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(InputError) as excinfo:
        io.read_image(tmp_path)
    assert_one_line_error(excinfo, tmp_path, "no DICOM series")
    save_nifti(tmp_path / "ct.nii.gz", ramp(), oblique_affine())
    with pytest.raises(InputError) as excinfo:
        io.read_image(tmp_path)
    assert_one_line_error(excinfo, tmp_path, "pass that file")


def test_corrupt_slice_is_named(tmp_path):
    folder = tmp_path / "series"
    write_dicom_series(folder, ramp((6, 5, 6)), "1.2.3.111")
    bad = sorted(folder.iterdir())[2]
    bad.write_bytes(bad.read_bytes()[:-20])  # truncated pixel data: GDCM silently drops the file
    with pytest.raises(InputError) as excinfo:
        io.read_image(folder)
    assert_one_line_error(excinfo, folder, bad.name, "corrupt")


def test_missing_slice_is_an_error(tmp_path):
    folder = tmp_path / "series"
    write_dicom_series(folder, ramp((6, 5, 6)), "1.2.3.111")
    sorted(folder.iterdir())[3].unlink()
    with pytest.raises(InputError) as excinfo:
        io.read_image(folder)
    assert_one_line_error(excinfo, folder, "uneven slice spacing", "missing slices")


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_zip_of_a_series_reads_like_the_folder(tmp_path):
    folder = tmp_path / "series"
    write_dicom_series(folder, ramp(), "1.2.3.111", direction=rotation_lps(35))
    archive = make_zip(
        tmp_path / "series.zip", {f"export/{p.name}": p.read_bytes() for p in folder.iterdir()}
    )
    from_zip, from_folder = io.read_image(archive), io.read_image(folder)
    np.testing.assert_array_equal(from_zip.array, from_folder.array)
    np.testing.assert_allclose(from_zip.affine, from_folder.affine)
    assert from_zip.source == str(archive)


@pytest.mark.parametrize("member", ["../../x", "ok/../../evil.dcm", "/etc/x", "C:\\x.dcm"])
def test_zip_path_traversal_is_refused(tmp_path, member):
    archive = make_zip(tmp_path / "evil.zip", {"fine.dcm": b"x", member: b"payload"})
    with pytest.raises(InputError) as excinfo:
        io.read_image(archive)
    assert_one_line_error(excinfo, archive, repr(member), "path traversal")
    assert not (tmp_path.parent / "x").exists()


def test_zip_size_limit(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "big.zip", {"a.dcm": bytes(5000), "b.dcm": bytes(5000)})
    monkeypatch.setattr(io.dicom, "MAX_ZIP_BYTES", 8000)  # looked up where it is defined
    with pytest.raises(InputError) as excinfo:
        io.read_image(archive)
    assert_one_line_error(excinfo, archive, "exceed")


def test_not_a_zip(tmp_path):
    path = tmp_path / "fake.zip"
    path.write_text("hello")
    with pytest.raises(InputError) as excinfo:
        io.read_image(path)
    assert_one_line_error(excinfo, path, "zip")


# --------------------------------------------------------------------------------------- writing masks

CODES = [(1, 1), (2, 2), (0, 2), (1, 0), (2, 4)]


@PROPERTY
@given(affine=affines(), codes=st.sampled_from(CODES))
def test_write_mask_keeps_grid_and_codes(tmp_path, affine, codes):
    qcode, scode = codes
    like = io.read_image(save_nifti(tmp_path / "ct.nii.gz", ramp(), affine, qcode=qcode, scode=scode))
    mask = (np.arange(120).reshape(6, 5, 4) % 5).astype(np.uint8)
    written = io.write_mask(mask, like, tmp_path / "mask.nii.gz", LabelMap())
    assert [p.name for p in written] == ["mask.nii.gz", "mask.json", "mask.label.txt"]
    img = nib.load(written[0])
    assert img.shape == like.shape
    assert img.get_data_dtype() == np.uint8
    assert int(img.header["qform_code"]) == qcode and int(img.header["sform_code"]) == scode
    np.testing.assert_allclose(img.affine, like.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), mask)


def test_write_mask_sidecars_name_labels_and_colours(tmp_path):
    like = io.Volume(ramp(), oblique_affine(), source="ct.nii.gz")
    labels = LabelMap()
    paths = io.write_mask(np.zeros((6, 5, 4), np.uint8), like, tmp_path / "out.nii.gz", labels)
    sidecar = json.loads(paths[1].read_text())
    assert sidecar["labels"]["4"] == {"name": "spleen", "color": list(labels.color_of("spleen"))}
    assert sidecar["labels"]["0"]["name"] == "background"
    assert "organseg_version" in sidecar
    rows = [line.split() for line in paths[2].read_text().splitlines() if not line.startswith("#")]
    assert [r[-1] for r in rows] == [f'"{n}"' for n in labels.names]
    assert [int(v) for v in rows[1][1:4]] == list(labels.color_of("liver"))


def test_mask_for_a_dicom_input_gets_the_ras_affine(tmp_path):
    write_dicom_series(tmp_path / "s", ramp(), "1.2.3.111", direction=rotation_lps())
    like = io.read_image(tmp_path / "s")
    assert like.header is None
    out = io.write_mask(np.ones(like.shape, np.uint8), like, tmp_path / "m.nii.gz", LabelMap())[0]
    img = nib.load(out)
    np.testing.assert_allclose(img.affine, like.affine, atol=1e-4)
    assert (int(img.header["qform_code"]), int(img.header["sform_code"])) == (1, 1)


def test_sheared_affine_is_kept_exactly_even_without_an_sform(tmp_path):
    """A header with only a qform (which cannot hold shears) must not lose a sheared grid on writing."""
    header = io.read_image(
        save_nifti(tmp_path / "ct.nii.gz", ramp(), oblique_affine(), qcode=1, scode=0)
    ).header
    sheared = oblique_affine()
    sheared[0, 2] += 0.4  # gantry-tilt-like shear
    like = io.Volume(ramp(), sheared, header=header)
    out = io.write_mask(np.zeros(like.shape, np.uint8), like, tmp_path / "m.nii.gz", LabelMap())[0]
    np.testing.assert_allclose(nib.load(out).affine, sheared, atol=1e-4)


def test_write_mask_refuses_to_save_a_different_grid(tmp_path, monkeypatch):
    like = io.Volume(ramp(), oblique_affine(), source="ct.nii.gz")
    real = io.writers._nifti_like
    monkeypatch.setattr(io.writers, "_nifti_like", lambda a, v: real(a, io.Volume(v.array, np.eye(4))))
    with pytest.raises(OutputError) as excinfo:
        io.write_mask(np.zeros((6, 5, 4), np.uint8), like, tmp_path / "m.nii.gz", LabelMap())
    assert "grid differs" in str(excinfo.value)
    assert not (tmp_path / "m.nii.gz").exists()


def test_write_mask_respects_overwrite_and_leaves_no_partial_files(tmp_path):
    like = io.Volume(ramp(), oblique_affine())
    (tmp_path / "m.label.txt").write_text("keep me")
    with pytest.raises(OutputError):
        io.write_mask(np.zeros((6, 5, 4), np.uint8), like, tmp_path / "m.nii.gz", LabelMap(), overwrite=False)
    assert sorted(os.listdir(tmp_path)) == ["m.label.txt"]
    assert (tmp_path / "m.label.txt").read_text() == "keep me"


def test_write_mask_rejects_bad_arrays(tmp_path):
    like = io.Volume(ramp(), oblique_affine())
    with pytest.raises(ValueError):
        io.write_mask(np.zeros((6, 5, 3), np.uint8), like, tmp_path / "m.nii.gz", LabelMap())
    with pytest.raises(ValueError):
        io.write_mask(np.full((6, 5, 4), 9, np.uint8), like, tmp_path / "m.nii.gz", LabelMap())
    with pytest.raises(OutputError):
        io.write_mask(np.zeros((6, 5, 4), np.uint8), like, tmp_path / "m.png", LabelMap())


def test_write_volume_stores_float16_as_float32(tmp_path):
    like = io.Volume(ramp(), oblique_affine())
    probs = np.linspace(0, 1, 120, dtype=np.float16).reshape(6, 5, 4)
    path = io.write_volume(probs, like, tmp_path / "p.nii.gz")
    back = io.read_image(path)
    assert back.array.dtype == np.float32
    np.testing.assert_array_equal(back.array, probs.astype(np.float32))
    np.testing.assert_allclose(back.affine, like.affine, atol=1e-4)


def test_write_volume_accepts_channels_last_maps(tmp_path, tiny_ct_and_mask):
    like = io.read_image(tiny_ct_and_mask[0], kind="ct")
    probs = np.random.default_rng(0).random((*like.shape, 5)).astype(np.float16)
    img = nib.load(io.write_volume(probs, like, tmp_path / "p.nii.gz"))
    assert img.shape == (*like.shape, 5) and img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.affine, like.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), probs.astype(np.float32))


def test_atomic_outputs_get_umask_permissions(tmp_path: Path) -> None:
    """Outputs are created like a plain open() would (not mkstemp's private 0600)."""
    out = tmp_path / "note.txt"
    old = os.umask(0o022)
    try:
        io.atomic_write_text(out, "hello")
    finally:
        os.umask(old)
    assert (out.stat().st_mode & 0o777) == 0o644


def test_atomic_json_is_strict_json(tmp_path: Path) -> None:
    """NaN/inf would make invalid JSON: they are written as null; paths and numpy scalars as plain values."""
    out = tmp_path / "r.json"
    io.atomic_write_json(
        out, {"a": float("nan"), "b": [np.float32(1.5), float("inf")], "c": tmp_path, 3: np.int64(2)}
    )
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.5, None], "c": str(tmp_path), "3": 2}
