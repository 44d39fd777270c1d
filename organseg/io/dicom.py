"""DICOM series from a folder or a zip: series listing, slice checks, safe zip extraction."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import SimpleITK as sitk

from organseg.errors import InputError
from organseg.io.checks import LPS_TO_RAS, check_file, check_shape, checked_affine, first_line, narrow
from organseg.io.itk import itk_dtype, itk_message, ras_affine
from organseg.io.volume import IMAGE_SUFFIXES, ImageInfo, Volume

#: Largest total uncompressed size of a DICOM zip.
MAX_ZIP_BYTES = 16 * 1024**3
MAX_ZIP_MEMBERS = 200_000
#: No DICOM compression (JPEG, JPEG 2000, RLE, deflate) shrinks CT pixel data 1000-fold.
_MAX_COMPRESSION_RATIO = 1032


class DicomSeries(NamedTuple):
    """One series found in a DICOM folder (``list_dicom_series``)."""

    uid: str
    n_slices: int
    description: str


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


def choose_series(root: Path, shown: str, series_uid: str | None) -> tuple[_Series, list[_Series]]:
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


def read_dicom_folder(root: Path, series_uid: str | None, shown: str) -> Volume:
    """Read one series. Policy: a corrupt or missing slice is an error naming the file, never skipped,
    because a volume with a gap has a wrong geometry that nothing downstream could detect."""
    series, found = choose_series(root, shown, series_uid)
    _refuse_unplaced_slices(series, found, root, shown)
    first = sitk.ImageFileReader()
    first.SetFileName(series.files[0])
    first.ReadImageInformation()
    if first.GetNumberOfComponents() != 1:
        raise InputError(f"{shown}: a colour (RGB) DICOM series; expected a greyscale CT")
    _check_declared_slices(first, series, root, shown)
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
        raise InputError(f"{shown}: {where} ({itk_message(err)})") from None
    _check_slice_positions(reader, image, series, root, shown)
    affine = ras_affine(shown, image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    array = sitk.GetArrayFromImage(image)  # (z, y, x), a copy owned by numpy
    if array.ndim == 2:
        array = array[np.newaxis]
    return Volume(array=narrow(array.transpose(2, 1, 0)), affine=affine, source=shown)


def _check_declared_slices(first: sitk.ImageFileReader, series: _Series, root: Path, shown: str) -> None:
    """ITK allocates rows x columns x slices from the first header: refuse sizes that no file here could
    hold, even compressed, before anything is allocated (a forged 60000 x 60000 header in a 1 kB file)."""
    cols, rows, frames = (list(first.GetSize()) + [1])[:3]
    check_shape(shown, (cols, rows, max(1, frames) * len(series.files)))
    try:
        bits = int(first.GetMetaData("0028|0100")) if first.HasMetaDataKey("0028|0100") else 16
    except ValueError:
        bits = 16
    declared = cols * rows * max(1, frames) * max(1, bits // 8)
    for file in series.files:
        size = os.path.getsize(file)
        if declared > size * _MAX_COMPRESSION_RATIO + 65536:
            raise InputError(
                f"{shown}: slice {_rel(file, root)} declares {declared:,} bytes of pixel data ({cols}x{rows}) "
                f"but the file holds only {size:,} bytes (truncated file or corrupt header)"
            )


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


def dicom_folder_info(root: Path, series_uid: str | None) -> ImageInfo:
    """Grid of a DICOM series from the headers of its first and last slices (voxels not read)."""
    series, _ = choose_series(root, str(root), series_uid)
    readers = []
    for file in (series.files[0], series.files[-1]):
        reader = sitk.ImageFileReader()
        reader.SetFileName(file)
        try:
            reader.ReadImageInformation()
        except RuntimeError as err:
            raise InputError(
                f"{root}: slice {_rel(file, root)} is unreadable ({itk_message(err)})"
            ) from None
        readers.append(reader)
    first, last = readers
    n = len(series.files)
    size = first.GetSize()
    affine = ras_affine(root, first.GetSpacing(), first.GetOrigin(), first.GetDirection())
    if n > 1:
        step_lps = (np.asarray(last.GetOrigin()) - np.asarray(first.GetOrigin())) / (n - 1)
        affine[:3, 2] = LPS_TO_RAS[:3, :3] @ step_lps
    shape = check_shape(root, (size[0], size[1], n))
    return ImageInfo(shape, checked_affine(root, affine), itk_dtype(root, first), str(root))


def read_dicom_zip(path: Path, series_uid: str | None) -> Volume:
    """Extract a zip of DICOM slices to a private temporary folder, refusing unsafe members, and read it."""
    check_file(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(f"{path}: not a readable zip file ({first_line(err)})") from None
    with archive, tempfile.TemporaryDirectory(prefix="organseg-zip-") as tmp:
        root = Path(tmp)
        members = safe_members(path, archive)
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
                    f"{path}: member {info.filename!r} cannot be extracted ({first_line(err)})"
                ) from None
        return read_dicom_folder(root, series_uid, shown=str(path))


def safe_members(path: Path, archive: zipfile.ZipFile) -> list[tuple[zipfile.ZipInfo, list[str]]]:
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
