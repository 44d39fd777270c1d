"""Read and write volumes without losing their geometry; atomic writes.

Convention used everywhere in organseg: a ``Volume`` holds a numpy array in **voxel index order
(i, j, k)** and a 4x4 ``affine`` mapping voxel indices to **RAS+ world millimetres** (the nibabel
convention). Files stored in LPS (DICOM, NRRD, MHA via SimpleITK) are converted on read, never by
flipping arrays. Two grids are the same only when shape and affine agree (``same_grid``).

Example:
    >>> vol = read_image("ct.nii.gz")
    >>> vol.spacing_mm, vol.orientation
    ((0.8, 0.8, 1.5), 'RAS')
    >>> write_mask(mask_uint8, vol, "mask.nii.gz", cfg.labels)   # same grid, atomic, + sidecar
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from organseg.errors import InputError, OutputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class Volume:
    """A 3D image or mask with its grid.

    Attributes:
        array: voxel values, index order (i, j, k).
        affine: 4x4 float64, voxel index -> RAS+ mm.
        source: where it came from (used in error messages).
        header: the original NIfTI header when read from NIfTI, so a mask keeps its qform/sform codes.
    """

    array: np.ndarray
    affine: np.ndarray
    source: str = "<memory>"
    header: nib.Nifti1Header | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape[:3])

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))

    @property
    def orientation(self) -> str:
        """Axis codes of the voxel axes in RAS terms, e.g. ``'RAS'`` or ``'LPS'``."""
        return "".join(nib.aff2axcodes(self.affine))

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0


def same_grid(a: Volume, b: Volume, atol_mm: float = 1e-3) -> bool:
    """True when both volumes have the same shape and the same voxel -> world mapping."""
    return a.shape == b.shape and bool(np.allclose(a.affine, b.affine, atol=atol_mm))


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


# --------------------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched, so a crash never
    leaves a half-written output. The temporary name keeps the suffix (``.nii.gz``, ``.mp4``) so
    writers that dispatch on it work.
    """
    path = Path(path)
    check_writable(path, overwrite=overwrite)
    name = path.name
    suffix = "".join(path.suffixes[-2:]) if name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def check_writable(path: str | Path, overwrite: bool = True) -> None:
    """Raise ``OutputError`` unless ``path`` can be created in an existing, writable folder."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{path}: output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{path}: output folder {parent} is not writable")
    if path.is_dir():
        raise OutputError(f"{path}: is a folder, expected a file path")
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: already exists (pass --overwrite to replace it)")


def atomic_write_text(path: str | Path, text: str, overwrite: bool = True) -> None:
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, data: object, overwrite: bool = True) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n", overwrite=overwrite)


# --------------------------------------------------------------------------------------- NIfTI


def read_nifti(path: str | Path) -> Volume:
    """Read a NIfTI image as a 3D ``Volume`` (scaled values, original header kept)."""
    path = Path(path)
    try:
        img = nib.load(str(path))
        array = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel raises many types for corrupt files
        raise InputError(f"{path}: not a readable NIfTI file ({_first_line(err)})") from None
    return Volume(array=array, affine=np.asarray(img.affine, dtype=np.float64), source=str(path), header=img.header)


def write_nifti(array: np.ndarray, like: Volume, path: str | Path, overwrite: bool = True) -> None:
    """Write ``array`` on ``like``'s exact grid (shape, affine, qform/sform codes), atomically."""
    if tuple(array.shape[:3]) != like.shape:
        raise ValueError(f"array shape {array.shape} does not match the grid {like.shape} of {like.source}")
    if like.header is not None:
        header = like.header.copy()
        header.set_data_dtype(array.dtype)
        img = nib.Nifti1Image(array, like.affine, header=header)
        qform, qcode = like.header.get_qform(coded=True)
        sform, scode = like.header.get_sform(coded=True)
        img.set_qform(like.affine if qform is None else qform, code=int(qcode) if qform is not None else 1)
        img.set_sform(like.affine if sform is None else sform, code=int(scode) if sform is not None else 1)
        img.header["scl_slope"] = 1.0
        img.header["scl_inter"] = 0.0
    else:
        img = nib.Nifti1Image(array, like.affine)
        img.set_qform(like.affine, code=1)
        img.set_sform(like.affine, code=1)
    with atomic_path(path, overwrite=overwrite) as tmp:
        nib.save(img, str(tmp))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
