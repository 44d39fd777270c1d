"""Write a segmentation as a DICOM Segmentation object (DICOM-SEG) that references its source series.

PACS viewers, OHIF and 3D Slicer take segmentations as DICOM-SEG. The object is built by ``highdicom``
(which copies patient, study and frame-of-reference attributes from the source slices and writes the
per-frame functional groups); this module only decides what goes in it:

- **binary** segmentation, one segment per organ that was found (an organ with no voxel is left out and a
  warning names it: an empty segment tells a viewer nothing and some refuse it);
- **codes**: SNOMED CT codes from pydicom's code dictionary (``codes.SCT``), category "Organ"; the kidneys
  are ``Kidney`` with the laterality modifier ``Right`` / ``Left`` (SNOMED's ``Kidney`` + modifier, as
  DICOM's CID 7151 and 3D Slicer's terminology spell them), so no code value is typed by hand;
- **algorithm identification**: name ``organseg``, its version, and the model file and task as parameters;
- **frames aligned with the source slices**: each source slice is placed on the mask's grid through world
  coordinates (its ImagePositionPatient and ImageOrientationPatient), never by file order, and the frame
  is the mask's slice there. A slice that does not fall on the grid is a bug and raises.

Axis conventions: ``mask`` is in organseg's voxel order (i, j, k) with ``affine`` voxel -> RAS+ mm (as
``io.read_image`` returns a DICOM series: i = column, j = row, k = slice). DICOM positions are LPS mm.

Example:
    >>> with source_datasets("ct_dicom/", series_uid=None) as sources:
    ...     write_dicom_seg(mask, vol.affine, sources, "seg.dcm", cfg.labels, model_name="abdomen_synth")
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from organseg.errors import InputError, OutputError
from organseg.io.atomic import atomic_path
from organseg.io.checks import LPS_TO_RAS, first_line
from organseg.io.dicom import choose_series, safe_members
from organseg.io.volume import IMAGE_SUFFIXES
from organseg.io.writers import organseg_version
from organseg.labels import LabelMap

__all__ = ["ORGAN_CODES", "check_dicom_seg_request", "source_datasets", "write_dicom_seg", "write_series_seg"]

#: organ -> (SNOMED CT keyword in ``pydicom.sr.codedict.codes.SCT``, laterality modifier keyword or None).
ORGAN_CODES: dict[str, tuple[str, str | None]] = {
    "liver": ("Liver", None),
    "kidney_right": ("Kidney", "Right"),
    "kidney_left": ("Kidney", "Left"),
    "spleen": ("Spleen", None),
}
#: Distance (in voxels) within which a source slice must fall on the mask's grid.
_GRID_TOL = 1e-2


def check_dicom_seg_request(input_path: str | Path, output_path: str | Path) -> None:
    """Refuse a DICOM-SEG request that cannot work, before any inference is run.

    The input must be a DICOM series (a folder or a ``.zip``): a NIfTI/NRRD/MHA file has no series to
    reference. The output must be one ``.dcm`` file.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.suffix.lower() != ".dcm":
        raise OutputError(f"{output_path}: a DICOM-SEG output must be a file ending in .dcm")
    name = input_path.name.lower()
    if input_path.is_file() and not name.endswith(".zip"):
        raise InputError(
            f"{input_path}: DICOM-SEG needs a DICOM series (folder or zip) to reference; "
            "this is not DICOM (use --output-type nifti)"
        )
    if input_path.is_dir() and any(
        p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES) for p in input_path.iterdir()
    ):
        raise InputError(
            f"{input_path}: a folder of CT files; DICOM-SEG is written for one DICOM series (folder or zip)"
        )


@contextlib.contextmanager
def source_datasets(path: str | Path, series_uid: str | None = None) -> Iterator[list]:
    """The pydicom datasets (headers only, no pixel data) of the series ``io.read_image`` reads.

    The series is chosen by the same discovery as ``io.read_image`` (GDCM's grouping, ``series_uid`` when
    several series are present), so the DICOM-SEG references exactly the slices that were segmented. A
    zip is extracted (with the same safety checks) into a temporary folder that lives for the block.
    """
    import pydicom

    path = Path(path)
    with contextlib.ExitStack() as stack:
        root = path
        if path.is_file() and path.name.lower().endswith(".zip"):
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="organseg-seg-")))
            _extract(path, root)
        series, _ = choose_series(root, str(path), series_uid)
        datasets = []
        for file in series.files:
            try:
                datasets.append(pydicom.dcmread(file, stop_before_pixels=True))
            except Exception as err:  # pydicom raises many types for a damaged file
                raise InputError(
                    f"{path}: {Path(file).name}: not readable as DICOM ({first_line(err)})"
                ) from None
        for ds in datasets:
            if int(ds.get("NumberOfFrames", 1) or 1) > 1 or "ImagePositionPatient" not in ds:
                raise InputError(
                    f"{path}: {Path(ds.filename).name}: a multi-frame (enhanced) image or one without "
                    "ImagePositionPatient; DICOM-SEG output needs a series of single-frame slices"
                )
        _fill_missing_uids(datasets, str(path))
        yield datasets


def _fill_missing_uids(datasets: list, shown: str) -> None:
    """Fill UIDs that anonymisation blanked, so the DICOM-SEG can still reference the slices.

    An empty SOPClassUID / SOPInstanceUID is taken from the file meta header (MediaStorageSOPClassUID /
    MediaStorageSOPInstanceUID), which DICOM requires to hold the same values. An empty
    StudyInstanceUID / SeriesInstanceUID cannot be recovered: a stable UID is derived from the slices'
    SOP Instance UIDs (the same series always gets the same one) and a warning says so, because a PACS
    will then not file the DICOM-SEG under the original study.
    """
    from pydicom.uid import generate_uid

    for ds in datasets:
        meta = getattr(ds, "file_meta", None)
        for key, meta_key in (
            ("SOPClassUID", "MediaStorageSOPClassUID"),
            ("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
        ):
            if not str(ds.get(key, "") or "") and meta is not None and str(meta.get(meta_key, "") or ""):
                setattr(ds, key, meta.get(meta_key))
        if not str(ds.get("SOPInstanceUID", "") or ""):
            raise InputError(
                f"{shown}: a slice has no SOPInstanceUID (not in the file meta either): a DICOM-SEG cannot reference it"
            )
    instances = sorted(str(ds.SOPInstanceUID) for ds in datasets)
    for key in ("StudyInstanceUID", "SeriesInstanceUID"):
        if any(not str(ds.get(key, "") or "") for ds in datasets):
            values = {str(ds.get(key, "") or "") for ds in datasets} - {""}
            uid = values.pop() if len(values) == 1 else generate_uid(entropy_srcs=[key, *instances])
            for ds in datasets:
                setattr(ds, key, uid)
            warnings.warn(
                f"{shown}: the series has no {key} (anonymised?); the DICOM-SEG uses the derived UID {uid} "
                "and references the slices by their SOP Instance UIDs",
                stacklevel=3,
            )


def _extract(path: Path, root: Path) -> None:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(f"{path}: not a readable zip file ({first_line(err)})") from None
    with archive:
        for info, parts in safe_members(path, archive):
            target = root.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1024 * 1024)


def _slice_index(ds, inverse: np.ndarray, affine: np.ndarray, shape: Sequence[int]) -> int:
    """Index k of the mask slice that source slice ``ds`` is, checked through world coordinates.

    The slice's first pixel must map to voxel (0, 0, k) and its row/column directions and spacings to the
    grid's i and j axes: then frame[r, c] == mask[c, r, k] holds for every pixel.
    """
    ipp_ras = LPS_TO_RAS[:3, :3] @ np.asarray(ds.ImagePositionPatient, dtype=np.float64)
    ijk = inverse[:3, :3] @ ipp_ras + inverse[:3, 3]
    k = int(round(ijk[2]))
    row_dir, col_dir = np.asarray(ds.ImageOrientationPatient, dtype=np.float64).reshape(2, 3)
    dr, dc = (float(v) for v in ds.PixelSpacing)  # (between rows, between columns) in mm
    axis_i = LPS_TO_RAS[:3, :3] @ (row_dir * dc)
    axis_j = LPS_TO_RAS[:3, :3] @ (col_dir * dr)
    on_grid = (
        np.allclose(ijk, [0, 0, k], atol=_GRID_TOL)
        and 0 <= k < shape[2]
        and (int(ds.Columns), int(ds.Rows)) == tuple(shape[:2])
        and np.allclose(affine[:3, 0], axis_i, atol=1e-3)
        and np.allclose(affine[:3, 1], axis_j, atol=1e-3)
    )
    if not on_grid:  # the mask was computed on this very series: this is a bug, not user input
        raise AssertionError(f"source slice {ds.SOPInstanceUID} is not on the mask grid (voxel {ijk})")
    return k


def write_dicom_seg(
    mask: np.ndarray,
    affine: np.ndarray,
    sources: Sequence,
    path: str | Path,
    labels: LabelMap,
    *,
    model_name: str,
    task: str = "",
    overwrite: bool = False,
) -> tuple[Path, list[str]]:
    """Write ``mask`` as a binary DICOM-SEG referencing ``sources``; return the path and organs left out.

    Args:
        mask: uint8 label ids on the series grid, voxel order (i, j, k) = (column, row, slice).
        affine: the mask's voxel -> RAS+ mm affine (``io.read_image`` of the series).
        sources: the series' pydicom datasets (``source_datasets``), any order.
        path: the ``.dcm`` file to write (atomically: temporary file, then rename).
        labels: the label map (id -> organ); organs need an entry in ``ORGAN_CODES``.
        model_name: the model's name (e.g. the model file's stem) for the algorithm identification.
        task: the model's task, recorded as an algorithm parameter.
        overwrite: replace an existing file.

    Raises:
        OutputError: the file exists (without ``overwrite``) or cannot be written; no organ was found.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    path = Path(path)
    affine = np.asarray(affine, dtype=np.float64)
    inverse = np.linalg.inv(affine)
    ks = [_slice_index(ds, inverse, affine, mask.shape) for ds in sources]
    found = [(i, name) for i, name in enumerate(labels.names) if i > 0 and np.any(mask == i)]
    missing = [name for i, name in enumerate(labels.names) if i > 0 and (i, name) not in found]
    if not found:
        raise OutputError(f"{path}: no organ was found, so there is no segment to write as DICOM-SEG")
    if missing:
        warnings.warn(f"{path}: not found, left out of the DICOM-SEG: {', '.join(missing)}", stacklevel=2)
    version = organseg_version()
    algorithm = hd.AlgorithmIdentificationSequence(
        name="organseg",
        family=codes.cid7162.ArtificialIntelligence,
        version=version,
        parameters={"model": model_name, **({"task": task} if task else {})},
    )
    descriptions = []
    for number, (_label_id, organ) in enumerate(found, start=1):
        if organ not in ORGAN_CODES:
            raise OutputError(f"{path}: no SNOMED CT code known for organ {organ!r}")
        keyword, modifier = ORGAN_CODES[organ]
        desc = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=organ,
            segmented_property_category=codes.SCT.Organ,
            segmented_property_type=getattr(codes.SCT, keyword),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=hd.UID(),
            tracking_id=organ,
            display_color=hd.color.CIELabColor.from_rgb(*labels.color_of(organ))
            if hasattr(hd.color.CIELabColor, "from_rgb")
            else None,
        )
        if modifier is not None:
            desc.SegmentedPropertyTypeModifierCodeSequence = [
                hd.sr.CodedConcept.from_code(getattr(codes.SCT, modifier))
            ]
        descriptions.append(desc)
    # frames[n, r, c, s]: source slice n, row r, column c, segment s (mask[c, r, k] with k from geometry)
    frames = np.zeros((len(sources), int(sources[0].Rows), int(sources[0].Columns), len(found)), bool)
    for n, k in enumerate(ks):
        plane = mask[:, :, k].T
        for s, (label_id, _organ) in enumerate(found):
            frames[n, :, :, s] = plane == label_id
    seg = hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="organseg",
        manufacturer_model_name=model_name[:64],
        software_versions=version,
        device_serial_number="none",
        series_description=f"organseg {model_name}"[:64],
        content_label="ORGANSEG",
        content_description="Abdominal organs (organseg)",
    )
    with atomic_path(path, overwrite=overwrite) as tmp:
        seg.save_as(tmp)
    return path, missing


def write_series_seg(
    mask: np.ndarray,
    affine: np.ndarray,
    series: str | Path,
    series_uid: str | None,
    path: str | Path,
    labels: LabelMap,
    *,
    model_name: str,
    task: str = "",
    overwrite: bool = False,
) -> tuple[Path, list[str]]:
    """``write_dicom_seg`` for the series at ``series`` (folder or zip); returns the path and the warnings.

    The warnings (organs left out, UIDs derived for an anonymised series) are returned rather than only
    emitted, so ``segment`` records them in the run manifest.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with source_datasets(series, series_uid) as sources:
            written, _missing = write_dicom_seg(
                mask, affine, sources, path, labels, model_name=model_name, task=task, overwrite=overwrite
            )
    return written, [str(w.message) for w in caught]
