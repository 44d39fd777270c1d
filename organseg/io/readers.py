"""``read_image`` for every supported input, header-only ``read_image_info``, and ``validate_volume``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import numpy as np

from organseg.errors import InputError
from organseg.fastgzip import GunzipAhead
from organseg.io.checks import check_file, check_shape, checked_affine, sniff
from organseg.io.dicom import dicom_folder_info, read_dicom_folder, read_dicom_zip
from organseg.io.itk import itk_dtype, itk_info, ras_affine, read_itk_file
from organseg.io.nifti import open_nifti, read_nifti_file
from organseg.io.volume import IMAGE_SUFFIXES, ITK_SUFFIXES, ImageInfo, Volume, is_nifti

ImageKind = Literal["image", "ct", "mask"]


def read_image(
    path: str | Path,
    series_uid: str | None = None,
    kind: ImageKind = "image",
    prefetched: GunzipAhead | None = None,
) -> Volume:
    """Read a 3D image from NIfTI, NRRD/NHDR, MHA/MHD, a DICOM series folder or a zip of one series.

    Args:
        path: a file (``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``, ``.zip``) or a
            folder holding DICOM files (subfolders are searched too).
        series_uid: the SeriesInstanceUID to read when a DICOM folder or zip holds several series.
        kind: ``"image"`` (any scalar 3D volume), ``"ct"`` (HU; warns when values do not look like HU)
            or ``"mask"`` (non-negative integer labels; float files holding integers are converted to
            the smallest unsigned type).
        prefetched: a ``GunzipAhead`` of this ``.nii.gz`` started earlier: its inflated bytes are used
            instead of reading the file again (same array; any problem falls back to the ordinary read).

    Returns:
        A ``Volume``: array in index order (i, j, k), affine voxel -> RAS+ mm. CT arrays are int16 or
        float32 with the rescale slope/intercept applied; no array is float64. A 4D file whose extra
        dimensions are all 1 is squeezed to 3D.

    Raises:
        InputError: ``"<path>: <problem>"`` for anything the user can fix.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    lower = path.name.lower()
    if path.is_dir():
        vol = read_dicom_folder(path, series_uid, shown=str(path))
    elif lower.endswith(".zip"):
        vol = read_dicom_zip(path, series_uid)
    else:
        if series_uid is not None:
            raise InputError(f"{path}: a series UID only applies to a DICOM folder or zip")
        check_file(path)
        if is_nifti(path):
            vol = read_nifti_file(path, prefetched)
        elif lower.endswith(ITK_SUFFIXES):
            vol = read_itk_file(path)
        else:
            what = sniff(path)
            if what == "a DICOM file":
                raise InputError(f"{path}: a single DICOM file; pass the folder that holds the whole series")
            raise InputError(
                f"{path}: unsupported file type ({what}); expected one of {', '.join(IMAGE_SUFFIXES)} "
                "or a DICOM folder"
            )
    return validate_volume(vol, kind)


def read_nifti(path: str | Path) -> Volume:
    """Read a NIfTI image as a 3D ``Volume`` (scaled values, original header kept, no kind checks)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    check_file(path)
    return validate_volume(read_nifti_file(path), "image")


def read_image_info(path: str | Path, series_uid: str | None = None) -> ImageInfo:
    """Shape, affine (RAS) and stored dtype of an image from its header only: cheap, no voxels read.

    Use it to compare grids of many files (datasets). A zip is read in full (there is no header).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        return dicom_folder_info(path, series_uid)
    if path.name.lower().endswith(".zip"):
        vol = read_image(path, series_uid)
        return ImageInfo(vol.shape, vol.affine, vol.array.dtype, str(path))
    check_file(path)
    if is_nifti(path):
        img = open_nifti(path)
        shape = check_shape(path, img.shape)
        return ImageInfo(shape, checked_affine(path, img.affine), img.get_data_dtype(), str(path))
    if path.name.lower().endswith(ITK_SUFFIXES):
        reader = itk_info(path)
        shape = check_shape(path, tuple(reader.GetSize()))
        affine = ras_affine(path, reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
        return ImageInfo(shape, affine, itk_dtype(path, reader), str(path))
    raise InputError(
        f"{path}: unsupported file type ({sniff(path)}); expected one of {', '.join(IMAGE_SUFFIXES)}"
    )


def validate_volume(vol: Volume, kind: ImageKind = "image") -> Volume:
    """Check a volume at the boundary and return it ready for use (mask dtype narrowed).

    Checks: 3D with no empty or single-voxel axis; a finite, invertible affine; finite voxels (float
    arrays); for ``kind="mask"`` integer, non-negative values. Raises ``InputError`` naming
    ``vol.source``.
    """
    if kind not in ("image", "ct", "mask"):
        raise ValueError(f"kind must be 'image', 'ct' or 'mask', got {kind!r}")
    src = vol.source
    shape = check_shape(src, vol.array.shape)
    checked_affine(src, vol.affine)
    array = vol.array if vol.array.ndim == 3 else vol.array.reshape(shape)
    if array.dtype.kind not in "biuf":
        raise InputError(f"{src}: voxel type {array.dtype} is not a scalar number (RGB or complex image?)")
    low, high = array.min(), array.max()  # NaN propagates and infinities show up here: no temporaries
    if array.dtype.kind == "f" and not (np.isfinite(low) and np.isfinite(high)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InputError(f"{src}: {bad} voxels are NaN or infinite")
    if kind == "mask":
        array = _as_label_array(src, array, low, high)
    elif kind == "ct":
        _warn_if_not_hu(src, float(low), float(high))
    if array is vol.array:
        return vol
    return Volume(array=array, affine=vol.affine, source=vol.source, header=vol.header)


def _as_label_array(source: str, array: np.ndarray, low: float, high: float) -> np.ndarray:
    """Labels as a non-negative integer array; an intensity image passed as a mask is refused."""
    if array.dtype.kind == "b":
        return array.astype(np.uint8)
    if low < 0:
        raise InputError(
            f"{source}: has negative values (min {low:g}); a mask holds label ids >= 0 (is this a CT image?)"
        )
    if array.dtype.kind == "f":
        # Slab by slab, so a 200 M-voxel float mask needs no full-size temporary.
        for k in range(array.shape[2]):
            slab = array[:, :, k]
            if not np.array_equal(slab, np.round(slab)):
                raise InputError(
                    f"{source}: has non-integer values (e.g. in slice {k}); a mask holds integer label ids "
                    "(is this an intensity image or a probability map?)"
                )
        target = np.uint8 if high <= 255 else np.uint16 if high <= 65535 else np.uint32
        return array.astype(target)
    return array


def _warn_if_not_hu(source: str, low: float, high: float) -> None:
    """CT should hold air (about -1000 HU); values that never go below zero suggest a missing rescale."""
    if low >= 0 and high > 1:
        warnings.warn(
            f"{source}: values range {low:g}..{high:g} with nothing below 0: not Hounsfield units? "
            "(a missing rescale intercept, or not a CT)",
            stacklevel=3,
        )
    elif high <= 1.0 and low >= -1.0:
        warnings.warn(
            f"{source}: values range {low:g}..{high:g}: looks normalized, not Hounsfield units", stacklevel=3
        )
