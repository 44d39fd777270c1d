"""NIfTI files: the header with messages that say what a misnamed file really is, and the voxels in RAS."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np

from organseg.errors import InputError
from organseg.fastgzip import GunzipAhead
from organseg.io.checks import check_declared_size, check_shape, checked_affine, first_line, narrow, sniff
from organseg.io.volume import Volume


def open_nifti(path: Path) -> nib.Nifti1Image:
    """Load a NIfTI header (no voxels) with messages that say what the file really is."""
    what = sniff(path)
    gz = path.name.lower().endswith(".gz")
    if gz and what != "gzip-compressed data":
        hint = "; rename it to .nii" if what == "an uncompressed NIfTI file" else ""
        raise InputError(f"{path}: not a gzip-compressed NIfTI file: it is {what}{hint}")
    if not gz and what != "an uncompressed NIfTI file":
        hint = "; rename it to .nii.gz" if what == "gzip-compressed data" else ""
        raise InputError(f"{path}: not a NIfTI file: it is {what}{hint}")
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises many types (HeaderDataError, ImageFileError, EOFError, ...)
        raise InputError(f"{path}: not a readable NIfTI file ({first_line(err)})") from None
    if not isinstance(img, nib.Nifti1Image):  # Nifti2Image subclasses Nifti1Image
        raise InputError(f"{path}: not a NIfTI image ({type(img).__name__})")
    return img


def read_nifti_file(path: Path, prefetched: GunzipAhead | None = None) -> Volume:
    """Read a NIfTI file; ``prefetched``: its bytes already being inflated in the background (optional)."""
    img = open_nifti(path)
    check_shape(path, img.shape)
    dtype = img.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise InputError(f"{path}: voxel type {dtype} is not a scalar number (RGB or complex image?)")
    proxy = img.dataobj
    declared = proxy.offset + math.prod(img.shape) * dtype.itemsize
    check_declared_size(path, declared, compressed=path.name.lower().endswith(".gz"))
    affine = checked_affine(path, img.affine)
    data = prefetched.take(path) if prefetched is not None else None
    try:
        if data is not None and data.size >= declared:
            # The same view of the same bytes that nibabel's reader builds (``array_from_file``).
            raw = data[proxy.offset : declared].view(dtype).reshape(img.shape, order="F")
        else:
            raw = np.asanyarray(proxy.get_unscaled())
    except MemoryError:
        raise InputError(f"{path}: too large to load into memory (shape {img.shape})") from None
    except Exception as err:  # EOFError, zlib.error, OSError on truncated or corrupt data
        raise InputError(f"{path}: truncated or corrupt voxel data ({first_line(err)})") from None
    raw = raw[(slice(None),) * 3 + (0,) * (raw.ndim - 3)]  # drop trailing singleton axes (a view)
    slope, inter = float(proxy.slope), float(proxy.inter)
    if slope == 1.0 and inter == 0.0:
        array = narrow(raw)
    else:
        # Scale in float32 in place: nibabel's own scaling would make a float64 copy (8 bytes/voxel).
        array = raw.astype(np.float32)
        array *= np.float32(slope)
        array += np.float32(inter)
    return Volume(array=array, affine=affine, source=str(path), header=img.header)
