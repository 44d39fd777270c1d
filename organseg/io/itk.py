"""NRRD and MetaImage files through SimpleITK; ITK's LPS geometry is converted to RAS on read."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from organseg.errors import InputError
from organseg.io.checks import (
    LPS_TO_RAS,
    check_declared_size,
    check_shape,
    checked_affine,
    first_line,
    narrow,
)
from organseg.io.volume import Volume

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


def itk_info(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise InputError(f"{path}: not a readable {_format_name(path)} file ({itk_message(err)})") from None
    if reader.GetNumberOfComponents() != 1:
        raise InputError(
            f"{path}: has {reader.GetNumberOfComponents()} components per voxel (RGB or vector image); "
            "expected one value per voxel"
        )
    return reader


def itk_dtype(path: Path, reader: sitk.ImageFileReader) -> np.dtype:
    pixel = reader.GetPixelID()
    if pixel not in _ITK_DTYPES:
        raise InputError(f"{path}: voxel type {sitk.GetPixelIDValueAsString(pixel)} is not supported")
    return np.dtype(_ITK_DTYPES[pixel])


def read_itk_file(path: Path) -> Volume:
    reader = itk_info(path)
    size = tuple(reader.GetSize())
    check_shape(path, size)
    dtype = itk_dtype(path, reader)
    check_itk_data_size(path, math.prod(size) * dtype.itemsize)
    affine = ras_affine(path, reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise InputError(f"{path}: truncated or corrupt voxel data ({itk_message(err)})") from None
    array = sitk.GetArrayFromImage(image)  # (..., z, y, x)
    array = array.reshape(array.shape[array.ndim - 3 :])  # extra leading axes are all 1 (checked)
    return Volume(array=narrow(array.transpose(2, 1, 0)), affine=affine, source=str(path))


def ras_affine(source: str | Path, spacing, origin, direction) -> np.ndarray:
    """Voxel -> RAS+ affine from ITK's LPS geometry (first three axes of an N-D image)."""
    n = len(spacing)
    direction = np.asarray(direction, dtype=np.float64).reshape(n, n)[:3, :3]
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag(np.asarray(spacing, dtype=np.float64)[:3])
    lps[:3, 3] = np.asarray(origin, dtype=np.float64)[:3]
    return checked_affine(source, LPS_TO_RAS @ lps)


def check_itk_data_size(path: Path, declared_bytes: int) -> None:
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
    check_declared_size(path, declared_bytes, compressed, data_file)


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


def itk_message(err: BaseException) -> str:
    """The useful line of a SimpleITK exception (they carry source paths and object addresses)."""
    text = str(err)
    for marker in ("ITK ERROR:", "sitk::ERROR:"):
        if marker in text:
            text = text.split(marker, 1)[1]
    text = re.sub(r"^\s*\w+\s*\(0x[0-9a-f]+\):\s*", "", text.strip())
    return first_line(text) or type(err).__name__
