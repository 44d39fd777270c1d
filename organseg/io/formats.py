"""NIfTI and NRRD/MetaImage file readers, and the file, shape and geometry checks shared with DICOM.

Every size a header declares is checked against the bytes on disk before any voxel is read.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from organseg.errors import InputError
from organseg.io.volume import Volume

#: Largest volume we agree to read (2e9 voxels is a 1260^3 cube, far beyond any CT).
MAX_VOXELS = 2_000_000_000
#: Deflate cannot compress better than about 1032:1, so a gzip/zlib stream of n bytes never holds more.
_DEFLATE_MAX_RATIO = 1032
#: SimpleITK (ITK) geometry is LPS; flipping the sign of the first two world rows gives RAS.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: not readable (permission denied)")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")


def _check_shape(source: str | Path, shape: tuple[int, ...]) -> tuple[int, int, int]:
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


def _checked_affine(source: str | Path, affine: np.ndarray) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise InputError(f"{source}: invalid geometry (affine is not a finite 4x4 matrix)")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(f"{source}: invalid geometry (zero voxel size or degenerate axes)")
    return affine


def _narrow(array: np.ndarray) -> np.ndarray:
    """float64 -> float32, and integers wider than int16 that fit int16 -> int16 (memory)."""
    if array.dtype == np.float64:
        return array.astype(np.float32)
    if array.dtype.kind in "iu" and array.dtype.itemsize > 2 and array.size:
        low, high = array.min(), array.max()
        if -32768 <= low and high <= 32767:
            return array.astype(np.int16)
    return array


def _sniff(path: Path) -> str:
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


# --------------------------------------------------------------------------------------- NIfTI


def _open_nifti(path: Path) -> nib.Nifti1Image:
    """Load a NIfTI header (no voxels) with messages that say what the file really is."""
    what = _sniff(path)
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
        raise InputError(f"{path}: not a readable NIfTI file ({_first_line(err)})") from None
    if not isinstance(img, nib.Nifti1Image):  # Nifti2Image subclasses Nifti1Image
        raise InputError(f"{path}: not a NIfTI image ({type(img).__name__})")
    return img


def _read_nifti_file(path: Path) -> Volume:
    img = _open_nifti(path)
    _check_shape(path, img.shape)
    dtype = img.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise InputError(f"{path}: voxel type {dtype} is not a scalar number (RGB or complex image?)")
    proxy = img.dataobj
    declared = proxy.offset + math.prod(img.shape) * dtype.itemsize
    _check_declared_size(path, declared, compressed=path.name.lower().endswith(".gz"))
    affine = _checked_affine(path, img.affine)
    try:
        raw = np.asanyarray(proxy.get_unscaled())
    except MemoryError:
        raise InputError(f"{path}: too large to load into memory (shape {img.shape})") from None
    except Exception as err:  # EOFError, zlib.error, OSError on truncated or corrupt data
        raise InputError(f"{path}: truncated or corrupt voxel data ({_first_line(err)})") from None
    raw = raw[(slice(None),) * 3 + (0,) * (raw.ndim - 3)]  # drop trailing singleton axes (a view)
    slope, inter = float(proxy.slope), float(proxy.inter)
    if slope == 1.0 and inter == 0.0:
        array = _narrow(raw)
    else:
        # Scale in float32 in place: nibabel's own scaling would make a float64 copy (8 bytes/voxel).
        array = raw.astype(np.float32)
        array *= np.float32(slope)
        array += np.float32(inter)
    return Volume(array=array, affine=affine, source=str(path), header=img.header)


def _check_declared_size(path: Path, declared_bytes: int, compressed: bool) -> None:
    """Refuse a header that declares more data than the file can hold, before allocating anything."""
    size = path.stat().st_size
    limit = size * _DEFLATE_MAX_RATIO + 65536 if compressed else size
    if declared_bytes > limit:
        raise InputError(
            f"{path}: header declares {declared_bytes:,} bytes of voxel data but the file is only {size:,} bytes "
            "(truncated file or corrupt header)"
        )


# --------------------------------------------------------------------------------------- NRRD / MHA (SimpleITK)

_ITK_DTYPES = {
    sitk.sitkInt8: np.int8,
    sitk.sitkUInt8: np.uint8,
    sitk.sitkInt16: np.int16,
    sitk.sitkUInt16: np.uint16,
    sitk.sitkInt32: np.int32,
    sitk.sitkUInt32: np.uint32,
    sitk.sitkInt64: np.int64,
    sitk.sitkUInt64: np.uint64,
    sitk.sitkFloat32: np.float32,
    sitk.sitkFloat64: np.float64,
}


def _itk_info(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise InputError(f"{path}: not a readable {_format_name(path)} file ({_itk_message(err)})") from None
    if reader.GetNumberOfComponents() != 1:
        raise InputError(
            f"{path}: has {reader.GetNumberOfComponents()} components per voxel (RGB or vector image); "
            "expected one value per voxel"
        )
    return reader


def _itk_dtype(path: Path, reader: sitk.ImageFileReader) -> np.dtype:
    pixel = reader.GetPixelID()
    if pixel not in _ITK_DTYPES:
        raise InputError(f"{path}: voxel type {sitk.GetPixelIDValueAsString(pixel)} is not supported")
    return np.dtype(_ITK_DTYPES[pixel])


def _read_itk_file(path: Path) -> Volume:
    reader = _itk_info(path)
    size = tuple(reader.GetSize())
    _check_shape(path, size)
    dtype = _itk_dtype(path, reader)
    _check_itk_data_size(path, math.prod(size) * dtype.itemsize)
    affine = _ras_affine(path, reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise InputError(f"{path}: truncated or corrupt voxel data ({_itk_message(err)})") from None
    array = sitk.GetArrayFromImage(image)  # (..., z, y, x)
    array = array.reshape(array.shape[array.ndim - 3 :])  # extra leading axes are all 1 (checked)
    return Volume(array=_narrow(array.transpose(2, 1, 0)), affine=affine, source=str(path))


def _ras_affine(source: str | Path, spacing, origin, direction) -> np.ndarray:
    """Voxel -> RAS+ affine from ITK's LPS geometry (first three axes of an N-D image)."""
    n = len(spacing)
    direction = np.asarray(direction, dtype=np.float64).reshape(n, n)[:3, :3]
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag(np.asarray(spacing, dtype=np.float64)[:3])
    lps[:3, 3] = np.asarray(origin, dtype=np.float64)[:3]
    return _checked_affine(source, LPS_TO_RAS @ lps)


def _check_itk_data_size(path: Path, declared_bytes: int) -> None:
    """Header vs. data-file size for NRRD and MetaImage, read from the text header (detached files too)."""
    header = _text_header(path)
    lower = path.name.lower()
    data_file: Path | None = path
    compressed = False
    if lower.endswith((".mha", ".mhd")):
        fields = dict(_split_field(line, "=") for line in header)
        compressed = fields.get("compresseddata", "false").lower() == "true"
        element_file = fields.get("elementdatafile", "LOCAL")
        if element_file.upper() == "LOCAL":
            data_file = path
        elif element_file.upper().startswith("LIST") or "%" in element_file or " " in element_file:
            data_file = None  # one file per slice: the voxel cap is the only cheap check
        else:
            data_file = path.parent / element_file
    else:
        fields = dict(_split_field(line, ":") for line in header)
        encoding = fields.get("encoding", "raw").lower()
        if encoding not in ("raw", "gzip", "gz"):
            data_file = None  # text, hex or bzip2: sizes say little
        compressed = encoding in ("gzip", "gz")
        detached = fields.get("data file") or fields.get("datafile")
        if detached is not None:
            if detached.upper().startswith("LIST") or " " in detached or "%" in detached:
                data_file = None
            elif data_file is not None:
                data_file = path.parent / detached
    if data_file is None:
        return
    if not data_file.is_file():
        raise InputError(f"{path}: its voxel data file {data_file.name} is missing")
    _check_declared_size_of(path, data_file, declared_bytes, compressed)


def _check_declared_size_of(path: Path, data_file: Path, declared_bytes: int, compressed: bool) -> None:
    size = data_file.stat().st_size
    limit = size * _DEFLATE_MAX_RATIO + 65536 if compressed else size
    if declared_bytes > limit:
        raise InputError(
            f"{path}: header declares {declared_bytes:,} bytes of voxel data but {data_file.name} holds only "
            f"{size:,} bytes (truncated file or corrupt header)"
        )


def _text_header(path: Path) -> list[str]:
    with open(path, "rb") as f:
        head = f.read(65536)
    lines = []
    for raw in head.split(b"\n"):
        line = raw.decode("latin-1").strip()
        if not line and lines:
            break  # NRRD: a blank line ends the header
        lines.append(line)
        if line.lower().startswith("elementdatafile"):
            break  # MetaImage: the last header field
    return lines


def _split_field(line: str, sep: str) -> tuple[str, str]:
    key, _, value = line.partition(sep)
    return key.strip().lower(), value.strip()


def _format_name(path: Path) -> str:
    return {".nrrd": "NRRD", ".nhdr": "NRRD", ".mha": "MetaImage", ".mhd": "MetaImage"}.get(
        path.suffix.lower(), path.suffix
    )


def _itk_message(err: BaseException) -> str:
    """The useful line of a SimpleITK exception (they carry source paths and object addresses)."""
    text = str(err)
    for marker in ("ITK ERROR:", "sitk::ERROR:"):
        if marker in text:
            text = text.split(marker, 1)[1]
    text = re.sub(r"^\s*\w+\s*\(0x[0-9a-f]+\):\s*", "", text.strip())
    return _first_line(text) or type(err).__name__


def _first_line(err: BaseException | str) -> str:
    text = str(err).strip()
    return text.splitlines()[0].strip() if text else type(err).__name__
