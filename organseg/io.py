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
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from organseg.errors import InputError, OutputError

if TYPE_CHECKING:
    from organseg.config import LabelMap

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
#: Suffixes ``read_image`` accepts as files (a folder is read as a DICOM series).
IMAGE_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES + (".zip",)

ImageKind = Literal["image", "ct", "mask"]

#: Largest volume we agree to read (2e9 voxels is a 1260^3 cube, far beyond any CT).
MAX_VOXELS = 2_000_000_000
#: Largest total uncompressed size of a DICOM zip.
MAX_ZIP_BYTES = 16 * 1024**3
MAX_ZIP_MEMBERS = 200_000
#: Deflate cannot compress better than about 1032:1, so a gzip/zlib stream of n bytes never holds more.
_DEFLATE_MAX_RATIO = 1032
#: SimpleITK (ITK) geometry is LPS; flipping the sign of the first two world rows gives RAS.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


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


class DicomSeries(NamedTuple):
    """One series found in a DICOM folder (``list_dicom_series``)."""

    uid: str
    n_slices: int
    description: str


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
        # mkstemp creates 0600 files; give the output the permissions a plain open() would.
        os.chmod(tmp_path, 0o666 & ~_current_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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


# --------------------------------------------------------------------------------------- reading


def read_image(path: str | Path, series_uid: str | None = None, kind: ImageKind = "image") -> Volume:
    """Read a 3D image from NIfTI, NRRD/NHDR, MHA/MHD, a DICOM series folder or a zip of one series.

    Args:
        path: a file (``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``, ``.zip``) or a
            folder holding DICOM files (subfolders are searched too).
        series_uid: the SeriesInstanceUID to read when a DICOM folder or zip holds several series.
        kind: ``"image"`` (any scalar 3D volume), ``"ct"`` (HU; warns when values do not look like HU)
            or ``"mask"`` (non-negative integer labels; float files holding integers are converted to
            the smallest unsigned type).

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
        vol = _read_dicom_folder(path, series_uid, shown=str(path))
    elif lower.endswith(".zip"):
        vol = _read_dicom_zip(path, series_uid)
    else:
        if series_uid is not None:
            raise InputError(f"{path}: a series UID only applies to a DICOM folder or zip")
        _check_file(path)
        if is_nifti(path):
            vol = _read_nifti_file(path)
        elif lower.endswith(ITK_SUFFIXES):
            vol = _read_itk_file(path)
        else:
            what = _sniff(path)
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
    _check_file(path)
    return validate_volume(_read_nifti_file(path), "image")


def read_image_info(path: str | Path, series_uid: str | None = None) -> ImageInfo:
    """Shape, affine (RAS) and stored dtype of an image from its header only: cheap, no voxels read.

    Use it to compare grids of many files (datasets). A zip is read in full (there is no header).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        return _dicom_folder_info(path, series_uid)
    if path.name.lower().endswith(".zip"):
        vol = read_image(path, series_uid)
        return ImageInfo(vol.shape, vol.affine, vol.array.dtype, str(path))
    _check_file(path)
    if is_nifti(path):
        img = _open_nifti(path)
        shape = _check_shape(path, img.shape)
        return ImageInfo(shape, _checked_affine(path, img.affine), img.get_data_dtype(), str(path))
    if path.name.lower().endswith(ITK_SUFFIXES):
        reader = _itk_info(path)
        shape = _check_shape(path, tuple(reader.GetSize()))
        affine = _ras_affine(path, reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
        return ImageInfo(shape, affine, _itk_dtype(path, reader), str(path))
    raise InputError(
        f"{path}: unsupported file type ({_sniff(path)}); expected one of {', '.join(IMAGE_SUFFIXES)}"
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
    shape = _check_shape(src, vol.array.shape)
    _checked_affine(src, vol.affine)
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


# --------------------------------------------------------------------------------------- DICOM


@dataclass(frozen=True)
class _Series:
    uid: str
    folder: Path
    files: tuple[str, ...]
    description: str


@contextlib.contextmanager
def _quiet_itk() -> Iterator[None]:
    """Silence ITK's stderr warnings ("No Series were found", "Non uniform sampling"): we check and
    report those conditions ourselves. ITK's switch is process-wide, so it is restored afterwards."""
    before = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(before)


def list_dicom_series(folder: str | Path) -> list[DicomSeries]:
    """The DICOM series in ``folder`` and its subfolders: (SeriesInstanceUID, slice count, description).

    Series are grouped by GDCM, by SeriesInstanceUID (an anonymised series may have an empty UID).
    Returns an empty list when there is no DICOM.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    return [DicomSeries(s.uid, len(s.files), s.description) for s in _scan_dicom(folder)]


def _scan_dicom(root: Path, max_depth: int = 4) -> list[_Series]:
    found = []
    with _quiet_itk():
        for folder, dirs, files in os.walk(root):
            depth = len(Path(folder).relative_to(root).parts)
            dirs[:] = sorted(
                d for d in dirs if not d.startswith(".") and d != "__MACOSX" and depth < max_depth
            )
            if not files:
                continue
            for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder):
                names = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid))
                if names:
                    found.append(_Series(uid, Path(folder), names, _dicom_tag(names[0], "0008|103e")))
    return found


def _dicom_tag(file: str, tag: str) -> str:
    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return ""
    return reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else ""


def _choose_series(root: Path, shown: str, series_uid: str | None) -> tuple[_Series, list[_Series]]:
    """The one series to read, and every series found (to spot slices that belong to none)."""
    found = _scan_dicom(root)
    if not found:
        n_files = sum(len(files) for _, _, files in os.walk(root))
        images = sorted(p.name for p in root.iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES))
        hint = (
            f"; it holds {images[0]}{' and others' if len(images) > 1 else ''}: pass that file"
            if images
            else ""
        )
        raise InputError(
            f"{shown}: no DICOM series found ({n_files} files, none readable as DICOM images){hint}; "
            "expected a folder of DICOM slices, a NIfTI/NRRD/MHA file or a zip of one DICOM series"
        )
    candidates = found
    if series_uid is not None:
        candidates = [s for s in found if s.uid == series_uid]
        if not candidates:
            raise InputError(
                f"{shown}: no DICOM series with UID {series_uid!r}; found {_describe(found, root)}"
            )
    if len(candidates) > 1:
        raise InputError(
            f"{shown}: holds {len(candidates)} DICOM series, choose one with --series UID: {_describe(candidates, root)}"
        )
    return candidates[0], found


def _describe(series: list[_Series], root: Path) -> str:
    parts = []
    for s in series:
        where = s.folder.relative_to(root)
        place = f" in {where}/" if str(where) != "." else ""
        uid = s.uid if s.uid else "(empty UID)"
        parts.append(f"{uid} ({len(s.files)} slices{place}, {s.description or 'no description'!r})")
    return "; ".join(parts)


def _read_dicom_folder(root: Path, series_uid: str | None, shown: str) -> Volume:
    """Read one series. Policy: a corrupt or missing slice is an error naming the file, never skipped,
    because a volume with a gap has a wrong geometry that nothing downstream could detect."""
    series, found = _choose_series(root, shown, series_uid)
    _refuse_unplaced_slices(series, found, root, shown)
    first = sitk.ImageFileReader()
    first.SetFileName(series.files[0])
    first.ReadImageInformation()
    if first.GetNumberOfComponents() != 1:
        raise InputError(f"{shown}: a colour (RGB) DICOM series; expected a greyscale CT")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(series.files))
    reader.MetaDataDictionaryArrayUpdateOn()
    if first.GetPixelID() == sitk.sitkFloat64:
        reader.SetOutputPixelType(sitk.sitkFloat32)  # rescaled values need no float64 precision
    try:
        with _quiet_itk():
            image = reader.Execute()
    except RuntimeError as err:
        bad = _first_unreadable(series.files)
        where = f"slice {_rel(bad, root)} is corrupt or truncated" if bad else "cannot read the series"
        raise InputError(f"{shown}: {where} ({_itk_message(err)})") from None
    _check_slice_positions(reader, image, series, root, shown)
    affine = _ras_affine(shown, image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    array = sitk.GetArrayFromImage(image)  # (z, y, x), a copy owned by numpy
    if array.ndim == 2:
        array = array[np.newaxis]
    return Volume(array=_narrow(array.transpose(2, 1, 0)), affine=affine, source=shown)


def _refuse_unplaced_slices(series: _Series, found: list[_Series], root: Path, shown: str) -> None:
    """A file that says it is DICOM but that GDCM placed in no series is a corrupt slice (GDCM drops
    truncated files silently, and the series would then be read with a gap)."""
    placed = {os.path.abspath(f) for s in found if s.folder == series.folder for f in s.files}
    for name in sorted(os.listdir(series.folder)):
        file = series.folder / name
        if name.upper() == "DICOMDIR" or not file.is_file() or os.path.abspath(file) in placed:
            continue
        with open(file, "rb") as f:
            head = f.read(132)
        if head[128:132] == b"DICM":
            raise InputError(
                f"{shown}: slice {_rel(str(file), root)} is a DICOM file that cannot be read (corrupt or "
                "truncated); remove or replace it: a series with a missing slice has a wrong geometry"
            )


def _check_slice_positions(
    reader: sitk.ImageSeriesReader, image: sitk.Image, series: _Series, root: Path, shown: str
) -> None:
    """Slices must be evenly spaced along the slice normal: a gap means a missing slice."""
    n = len(series.files)
    if n < 3:
        return
    normal = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)[:, 2]
    positions = []
    for i in range(n):
        if not reader.HasMetaDataKey(i, "0020|0032"):
            return  # no ImagePositionPatient: nothing to check against
        positions.append([float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")])
    steps = np.diff(np.asarray(positions) @ normal)
    step = float(np.median(steps))
    for i, s in enumerate(steps):
        a, b = _rel(series.files[i], root), _rel(series.files[i + 1], root)
        if abs(s) < 1e-3:
            raise InputError(
                f"{shown}: slices {a} and {b} are at the same position (several acquisitions in one series?)"
            )
        if abs(s - step) > 0.1 * abs(step):
            raise InputError(
                f"{shown}: uneven slice spacing: {abs(s):.3g} mm between {a} and {b}, {abs(step):.3g} mm elsewhere "
                "(missing slices?)"
            )


def _first_unreadable(files: tuple[str, ...]) -> str | None:
    for file in files:
        try:
            sitk.ReadImage(file)
        except RuntimeError:
            return file
    return None


def _rel(file: str, root: Path) -> str:
    try:
        return str(Path(file).relative_to(root))
    except ValueError:
        return str(file)


def _dicom_folder_info(root: Path, series_uid: str | None) -> ImageInfo:
    """Grid of a DICOM series from the headers of its first and last slices (voxels not read)."""
    series, _ = _choose_series(root, str(root), series_uid)
    readers = []
    for file in (series.files[0], series.files[-1]):
        reader = sitk.ImageFileReader()
        reader.SetFileName(file)
        try:
            reader.ReadImageInformation()
        except RuntimeError as err:
            raise InputError(
                f"{root}: slice {_rel(file, root)} is unreadable ({_itk_message(err)})"
            ) from None
        readers.append(reader)
    first, last = readers
    n = len(series.files)
    size = first.GetSize()
    affine = _ras_affine(root, first.GetSpacing(), first.GetOrigin(), first.GetDirection())
    if n > 1:
        step_lps = (np.asarray(last.GetOrigin()) - np.asarray(first.GetOrigin())) / (n - 1)
        affine[:3, 2] = LPS_TO_RAS[:3, :3] @ step_lps
    shape = _check_shape(root, (size[0], size[1], n))
    return ImageInfo(shape, _checked_affine(root, affine), _itk_dtype(root, first), str(root))


def _read_dicom_zip(path: Path, series_uid: str | None) -> Volume:
    """Extract a zip of DICOM slices to a private temporary folder, refusing unsafe members, and read it."""
    _check_file(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(f"{path}: not a readable zip file ({_first_line(err)})") from None
    with archive, tempfile.TemporaryDirectory(prefix="organseg-zip-") as tmp:
        root = Path(tmp)
        members = _safe_members(path, archive)
        for info, parts in members:
            target = root.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, length=1024 * 1024)
            except (
                zipfile.BadZipFile,
                RuntimeError,
                OSError,
                EOFError,
            ) as err:  # CRC, encryption, truncation
                raise InputError(
                    f"{path}: member {info.filename!r} cannot be extracted ({_first_line(err)})"
                ) from None
        return _read_dicom_folder(root, series_uid, shown=str(path))


def _safe_members(path: Path, archive: zipfile.ZipFile) -> list[tuple[zipfile.ZipInfo, list[str]]]:
    infos = archive.infolist()
    if len(infos) > MAX_ZIP_MEMBERS:
        raise InputError(f"{path}: holds {len(infos):,} members, more than {MAX_ZIP_MEMBERS:,}")
    total = 0
    members = []
    for info in infos:
        name = info.filename
        parts = re.split(r"[/\\]", name)
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
            raise InputError(f"{path}: refusing member {name!r}: absolute path or '..' (path traversal)")
        total += info.file_size
        if total > MAX_ZIP_BYTES:
            raise InputError(f"{path}: uncompressed contents exceed {MAX_ZIP_BYTES / 1024**3:.0f} GiB")
        parts = [p for p in parts if p not in ("", ".")]
        if info.is_dir() or not parts or parts[0] == "__MACOSX" or parts[-1].startswith("._"):
            continue
        members.append((info, parts))
    return members


# --------------------------------------------------------------------------------------- writing


def _nifti_like(array: np.ndarray, like: Volume) -> nib.Nifti1Image:
    """A NIfTI image of ``array`` on ``like``'s grid: its affine, and its qform/sform codes when it has a header.

    When ``like.header`` describes another affine than ``like.affine`` (the volume was resampled or built
    by hand), ``like.affine`` wins: the codes are kept, the matrices replaced.
    """
    affine = np.asarray(like.affine, dtype=np.float64)
    header = like.header
    if header is None:
        img = nib.Nifti1Image(array, affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        return img
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    header = header.copy()
    header.set_data_dtype(array.dtype)
    img = image_class(array, affine, header=header)
    qform, qcode = header.get_qform(coded=True)
    sform, scode = header.get_sform(coded=True)
    qcode, scode = int(qcode), int(scode)
    if qcode == 0 and scode == 0:
        qcode = scode = 1  # uncoded input: nibabel guessed its affine from pixdim; store it explicitly
    img.set_qform(
        qform if qform is not None and np.allclose(qform, affine, atol=1e-4) else affine, code=qcode
    )
    img.set_sform(
        sform if sform is not None and np.allclose(sform, affine, atol=1e-4) else affine, code=scode
    )
    if qcode == 0:
        img.set_qform(None, code=0)
    if scode == 0:
        img.set_sform(None, code=0)
        if not np.allclose(img.header.get_best_affine(), affine, atol=1e-4):
            img.set_sform(
                affine, code=qcode
            )  # a qform cannot hold shears: keep the exact affine in the sform
    img.header["scl_slope"] = 1.0
    img.header["scl_inter"] = 0.0
    return img


def write_nifti(array: np.ndarray, like: Volume, path: str | Path, overwrite: bool = True) -> None:
    """Write ``array`` on ``like``'s exact grid (shape, affine, qform/sform codes), atomically."""
    if tuple(array.shape[:3]) != like.shape:
        raise ValueError(f"array shape {array.shape} does not match the grid {like.shape} of {like.source}")
    img = _nifti_like(array, like)
    with atomic_path(path, overwrite=overwrite) as tmp:
        nib.save(img, str(tmp))


def write_volume(array: np.ndarray, like: Volume, path: str | Path, overwrite: bool = True) -> Path:
    """Write a float or integer map (probabilities, distances) on ``like``'s grid as NIfTI, atomically.

    NIfTI has no float16: float16 arrays are stored as float32; bool as uint8.
    """
    path = _nifti_path(path)
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8)
    write_nifti(array, like, path, overwrite=overwrite)
    return path


def write_mask(
    mask: np.ndarray, like: Volume, path: str | Path, labels: LabelMap, overwrite: bool = True
) -> list[Path]:
    """Write a label mask on ``like``'s exact grid as uint8 NIfTI, with a JSON and an ITK-SNAP sidecar.

    Files (all atomic): ``<stem>.nii.gz`` (or ``.nii``), ``<stem>.json`` (label id -> name and RGB colour,
    organseg version, source image) and ``<stem>.label.txt`` (ITK-SNAP label description: File > Load
    label descriptions). Before saving, the image's shape and affine are asserted equal to the input's.

    Args:
        mask: label ids, index order (i, j, k), values in ``0..labels.num_classes-1``.
        like: the input volume whose grid the mask lives on (NIfTI header kept when it has one; for
            DICOM/NRRD/MHA inputs the RAS affine is stored with qform/sform code 1).
        path: ``.nii.gz`` or ``.nii`` output path.
        labels: the label map (names and colours).

    Returns:
        The paths written: mask, JSON sidecar, ITK-SNAP label file.
    """
    path = _nifti_path(path)
    if mask.dtype.kind not in "biu":
        raise ValueError(f"mask must hold integer label ids, got dtype {mask.dtype}")
    if mask.size and int(mask.max()) >= labels.num_classes:
        raise ValueError(
            f"mask holds label {int(mask.max())}, but the label map has ids 0..{labels.num_classes - 1}"
        )
    mask = mask.astype(np.uint8, copy=False)
    stem = path.parent / strip_image_suffix(path.name)
    json_path, snap_path = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".label.txt")
    for p in (path, json_path, snap_path):
        check_writable(p, overwrite=overwrite)
    if mask.shape != like.shape:
        raise ValueError(f"mask shape {mask.shape} does not match the grid {like.shape} of {like.source}")
    img = _nifti_like(mask, like)
    img.header["cal_min"], img.header["cal_max"] = 0, labels.num_classes - 1
    img.header.set_intent("label")
    stored = img.header.get_best_affine()
    if img.shape != like.shape or not np.allclose(stored, like.affine, atol=1e-3, rtol=1e-5):
        raise OutputError(
            f"{path}: refusing to save: the mask's grid differs from the input grid of {like.source}"
        )
    with atomic_path(path, overwrite=overwrite) as tmp:
        nib.save(img, str(tmp))
    atomic_write_json(json_path, _label_sidecar(labels, like), overwrite=overwrite)
    atomic_write_text(snap_path, _itksnap_labels(labels), overwrite=overwrite)
    return [path, json_path, snap_path]


def _nifti_path(path: str | Path) -> Path:
    path = Path(path)
    if not is_nifti(path):
        raise OutputError(f"{path}: masks and maps are written as NIfTI; use a .nii.gz or .nii file name")
    return path


def _label_sidecar(labels: LabelMap, like: Volume) -> dict:
    return {
        "organseg_version": organseg_version(),
        "image": like.source,
        "labels": {
            str(i): {"name": name, "color": list(labels.color_of(name))}
            for i, name in enumerate(labels.names)
        },
    }


def _itksnap_labels(labels: LabelMap) -> str:
    lines = [
        "################################################",
        "# ITK-SnAP Label Description File (written by organseg)",
        "# IDX  -R-  -G-  -B-  -A--  VIS MSH  LABEL",
        "################################################",
    ]
    for i, name in enumerate(labels.names):
        r, g, b = labels.color_of(name)
        visible = 0 if i == 0 else 1
        lines.append(f'{i:5d} {r:4d} {g:4d} {b:4d} {visible:5d} {visible:3d} {visible:3d}    "{name}"')
    return "\n".join(lines) + "\n"


def organseg_version() -> str:
    """The installed organseg version, or ``'unknown'`` when running from a source tree."""
    import importlib.metadata

    try:
        return importlib.metadata.version("organseg")
    except importlib.metadata.PackageNotFoundError:
        import organseg

        return str(getattr(organseg, "__version__", "unknown"))


def _first_line(err: BaseException | str) -> str:
    text = str(err).strip()
    return text.splitlines()[0].strip() if text else type(err).__name__
