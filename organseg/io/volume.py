"""3D images with their grids (``Volume``, ``ImageInfo``), image file suffixes and case names.

Grid geometry (spacing, orientation, ``same_grid``) lives in ``organseg.geometry.grid``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from organseg.geometry.grid import GridGeometry

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
#: Suffixes ``read_image`` accepts as files (a folder is read as a DICOM series).
IMAGE_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES + (".zip",)


@dataclass
class Volume(GridGeometry):
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
class ImageInfo(GridGeometry):
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


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def strip_image_suffix(name: str) -> str:
    """``'case_01.nii.gz'`` -> ``'case_01'`` (the suffixes ``read_image`` knows, case-insensitive)."""
    lower = name.lower()
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def case_name(path: str | Path) -> str:
    """The case a CT path stands for: a file without its image suffix (``case_01.nii.gz`` -> ``case_01``),
    a folder (a DICOM series) by its own name. Batch outputs, metrics rows and datasets all use this."""
    path = Path(path)
    return path.name if path.is_dir() else strip_image_suffix(path.name)
