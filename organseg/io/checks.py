"""File, shape, size and geometry checks shared by every reader (NIfTI, NRRD/MetaImage, DICOM).

Every size a header declares is checked against the bytes on disk before any voxel is read. These are the
io package's own building blocks (public names, so readers import them openly); ``organseg.io`` exports
only ``LPS_TO_RAS`` and ``MAX_VOXELS`` from here.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from organseg.errors import InputError

#: Largest volume we agree to read (2e9 voxels is a 1260^3 cube, far beyond any CT).
MAX_VOXELS = 2_000_000_000
#: Deflate cannot compress better than about 1032:1, so a gzip/zlib stream of n bytes never holds more.
_DEFLATE_MAX_RATIO = 1032
#: SimpleITK (ITK) geometry is LPS; flipping the sign of the first two world rows gives RAS.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def check_file(path: Path) -> None:
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: not readable (permission denied)")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")


def check_shape(source: str | Path, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The 3D shape of ``shape`` (trailing singleton axes dropped), or an ``InputError``."""
    shape = tuple(int(s) for s in shape)
    dims = "x".join(str(s) for s in shape)
    if any(s == 0 for s in shape):
        raise InputError(f"{source}: has a zero-sized dimension (shape {dims})")
    if len(shape) < 3:
        raise InputError(f"{source}: is a {len(shape)}D image (shape {dims}); expected a 3D volume")
    if len(shape) > 3 and any(s != 1 for s in shape[3:]):
        raise InputError(
            f"{source}: is a {len(shape)}D image (shape {dims}, {math.prod(shape[3:])} volumes or channels); "
            "expected a single 3D volume"
        )
    spatial = shape[:3]
    if 1 in spatial:
        raise InputError(f"{source}: is a 2D image (shape {dims}, a single slice); expected a 3D volume")
    if math.prod(spatial) > MAX_VOXELS:
        raise InputError(
            f"{source}: declares {math.prod(spatial):,} voxels (shape {dims}), more than {MAX_VOXELS:,}"
        )
    return spatial  # type: ignore[return-value]


def checked_affine(source: str | Path, affine: np.ndarray) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise InputError(f"{source}: invalid geometry (affine is not a finite 4x4 matrix)")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(f"{source}: invalid geometry (zero voxel size or degenerate axes)")
    return affine


def narrow(array: np.ndarray) -> np.ndarray:
    """float64 -> float32, and integers wider than int16 that fit int16 -> int16 (memory)."""
    if array.dtype == np.float64:
        return array.astype(np.float32)
    if array.dtype.kind in "iu" and array.dtype.itemsize > 2 and array.size:
        low, high = array.min(), array.max()
        if -32768 <= low and high <= 32767:
            return array.astype(np.int16)
    return array


def sniff(path: Path) -> str:
    """What a file looks like from its first bytes, for messages about misnamed files."""
    with open(path, "rb") as f:
        head = f.read(1024)
    if head[:2] == b"\x1f\x8b":
        return "gzip-compressed data"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "a PNG image"
    if head[:3] == b"\xff\xd8\xff":
        return "a JPEG image"
    if head[:4] == b"PK\x03\x04":
        return "a zip archive"
    if head[128:132] == b"DICM":
        return "a DICOM file"
    if len(head) >= 348 and (
        int.from_bytes(head[:4], "little") in (348, 540) or int.from_bytes(head[:4], "big") in (348, 540)
    ):
        return "an uncompressed NIfTI file"
    if head[:4] == b"NRRD":
        return "an NRRD file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "binary data of unknown format"
    return "a text file" if text.isprintable() or text.strip() else "unknown data"


def check_declared_size(
    path: Path, declared_bytes: int, compressed: bool, data_file: Path | None = None
) -> None:
    """Refuse a header that declares more voxel data than the file (or its detached ``data_file``) can hold,
    before allocating anything; a compressed stream holds at most ``_DEFLATE_MAX_RATIO`` times its size."""
    data_file = path if data_file is None else data_file
    size = data_file.stat().st_size
    limit = size * _DEFLATE_MAX_RATIO + 65536 if compressed else size
    if declared_bytes > limit:
        holder = "the file is only" if data_file == path else f"{data_file.name} holds only"
        raise InputError(
            f"{path}: header declares {declared_bytes:,} bytes of voxel data but {holder} {size:,} bytes "
            "(truncated file or corrupt header)"
        )


def first_line(err: BaseException | str) -> str:
    text = str(err).strip()
    return text.splitlines()[0].strip() if text else type(err).__name__
