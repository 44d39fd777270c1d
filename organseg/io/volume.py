"""Grids of 3D images (``Volume``, ``ImageInfo``), grid comparison and image file suffixes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
#: Suffixes ``read_image`` accepts as files (a folder is read as a DICOM series).
IMAGE_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES + (".zip",)


class _Grid:
    """Geometry helpers shared by ``Volume`` and ``ImageInfo`` (both have ``affine``)."""

    affine: np.ndarray

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size along the array axes (i, j, k) in mm."""
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))

    @property
    def orientation(self) -> str:
        """Axis codes of the voxel axes in RAS terms, e.g. ``'RAS'`` or ``'LPS'``."""
        return "".join(nib.aff2axcodes(self.affine))

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0


@dataclass
class Volume(_Grid):
    """A 3D image or mask with its grid.

    Attributes:
        array: voxel values, index order (i, j, k). Never float64 when read by ``read_image``.
        affine: 4x4 float64, voxel index -> RAS+ mm.
        source: where it came from (used in error messages).
        header: the original NIfTI header when read from NIfTI, so a mask keeps its qform/sform codes;
            ``None`` for DICOM, NRRD and MHA inputs (their NIfTI outputs use the RAS affine, codes 1).
    """

    array: np.ndarray
    affine: np.ndarray
    source: str = "<memory>"
    header: nib.Nifti1Header | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape[:3])


@dataclass(frozen=True)
class ImageInfo(_Grid):
    """The grid of an image read from its header only (``read_image_info``): no voxels loaded.

    Attributes:
        shape: voxels along (i, j, k).
        affine: 4x4 float64, voxel index -> RAS+ mm.
        dtype: voxel type as stored (before scaling).
        source: the path, for messages.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    dtype: np.dtype
    source: str


def same_grid(a: Volume | ImageInfo, b: Volume | ImageInfo, atol_mm: float = 1e-3) -> bool:
    """True when both have the same shape and the same voxel -> world mapping (within ``atol_mm``)."""
    return tuple(a.shape) == tuple(b.shape) and bool(np.allclose(a.affine, b.affine, atol=atol_mm))


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def strip_image_suffix(name: str) -> str:
    """``'case_01.nii.gz'`` -> ``'case_01'`` (the suffixes ``read_image`` knows, case-insensitive)."""
    lower = name.lower()
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name
