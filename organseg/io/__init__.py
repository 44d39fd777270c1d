"""Read and write volumes without losing their geometry; atomic writes.

Convention used everywhere in organseg: a ``Volume`` holds a numpy array in **voxel index order
(i, j, k)** and a 4x4 ``affine`` mapping voxel indices to **RAS+ world millimetres** (the nibabel
convention). Files stored in LPS (DICOM, NRRD, MHA via SimpleITK) are converted on read, never by
flipping arrays. Two grids are the same only when shape and affine agree (``same_grid``).

Inputs are validated once, here: every problem a user can cause (missing, empty, truncated or
mislabelled file, 2D or 4D image, NaN voxels, an intensity image passed as a mask, several DICOM
series in one folder, an unsafe zip) raises ``InputError("<path>: <problem>")``. Header sizes are
checked against the bytes on disk before any voxel is read, so a corrupt header never makes us
allocate gigabytes.

Example:
    >>> vol = read_image("ct.nii.gz", kind="ct")
    >>> vol.spacing_mm, vol.orientation
    ((0.8, 0.8, 1.5), 'RAS')
    >>> write_mask(mask_uint8, vol, "mask.nii.gz", cfg.labels)   # same grid, atomic, + sidecars

Modules, lowest first (each imports only those above it): ``volume`` (grids, suffixes), ``atomic``
(atomic writes), ``formats`` (NIfTI and NRRD/MHA files, shared checks), ``dicom`` (folders, zips),
``readers`` (``read_image`` and friends), ``writers`` (masks, maps, sidecars). Import from
``organseg.io``; the limits (``MAX_VOXELS``, ``MAX_ZIP_BYTES``, ...) are looked up in the module that
defines them, so a test that lowers one patches it there (e.g. ``organseg.io.dicom.MAX_ZIP_BYTES``).
"""

from organseg.geometry.grid import same_grid
from organseg.io.atomic import atomic_path, atomic_write_json, atomic_write_text, check_writable, json_safe
from organseg.io.checks import LPS_TO_RAS, MAX_VOXELS
from organseg.io.dicom import MAX_ZIP_BYTES, MAX_ZIP_MEMBERS, DicomSeries, list_dicom_series
from organseg.io.readers import ImageKind, read_image, read_image_info, read_nifti, validate_volume
from organseg.io.volume import (
    IMAGE_SUFFIXES,
    ITK_SUFFIXES,
    NIFTI_SUFFIXES,
    ImageInfo,
    Volume,
    case_name,
    is_nifti,
    strip_image_suffix,
)
from organseg.io.writers import organseg_version, write_mask, write_nifti, write_volume

__all__ = [
    "IMAGE_SUFFIXES",
    "ITK_SUFFIXES",
    "LPS_TO_RAS",
    "MAX_VOXELS",
    "MAX_ZIP_BYTES",
    "MAX_ZIP_MEMBERS",
    "NIFTI_SUFFIXES",
    "DicomSeries",
    "ImageInfo",
    "ImageKind",
    "Volume",
    "atomic_path",
    "atomic_write_json",
    "json_safe",
    "atomic_write_text",
    "check_writable",
    "is_nifti",
    "list_dicom_series",
    "organseg_version",
    "read_image",
    "read_image_info",
    "read_nifti",
    "same_grid",
    "case_name",
    "strip_image_suffix",
    "validate_volume",
    "write_mask",
    "write_nifti",
    "write_volume",
]
