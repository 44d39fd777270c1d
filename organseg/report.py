"""One self-contained HTML report of a segmentation: 3D organs, a table with reference ranges, slices.

Why plotly: its offline HTML export inlines plotly.js (about 4.7 MB, MIT licence) into the page, so the file
opens with no network and no CDN, and its ``Mesh3d`` trace gives rotate/zoom/hover on WebGL in any current
browser. pyvista's HTML export needs trame and a running server (or a ~20 MB vtk.js bundle per scene), and
a static image would not turn. Everything else (slices, table, run details) is plain HTML with PNG images
as ``data:`` URIs.

The report holds:

- the organs as decimated meshes in world RAS+ mm, first seen from the front (patient's right on the
  viewer's left), coloured as the mask's label sidecar says (``<stem>.json``; ``config.DEFAULT_COLORS``
  otherwise);
- a table per organ: volume (ml), mean and sd of HU, bounding box (RAS+ mm), with adult reference ranges
  (``infer.confidence.REFERENCE_ML`` / ``REFERENCE_HU``, sources cited there) and flags outside them, and the
  per-organ confidence when the run manifest has it (least confident first);
- axial, coronal and sagittal slices through each organ, mask outlined on the CT (window -175..250 HU);
- model, device, timings and warnings from the run manifest (``<stem>.run.json`` beside the mask).

Example:
    >>> build_report("out/ct_mask.nii.gz", "ct.nii.gz", "out/report.html")
    PosixPath('out/report.html')
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage

from organseg import io
from organseg.config import DEFAULT_COLORS, UNKNOWN_COLOR, LabelMap
from organseg.errors import InputError, OutputError
from organseg.infer.confidence import REFERENCE_HU, REFERENCE_ML, rank_organs
from organseg.infer.outputs import organ_stats, stem_of
from organseg.report_figures import organ_figure, organ_slices, ras_box, to_ras

#: Triangles per organ mesh in the report (keeps a 512x512x300 report well under 10 MB).
REPORT_MAX_FACES = 12_000
#: Smoothed-field voxels per organ for the report's meshes (decimated to REPORT_MAX_FACES anyway).
REPORT_FIELD_VOXELS = 400_000
#: Voxels resampled around the organs when the CT is on another grid (mm of margin).
_RESAMPLE_MARGIN_MM = 30.0


def _read_labels(mask_path: Path | None) -> tuple[LabelMap, dict[str, tuple[int, int, int]]]:
    """Label names and colours from the mask's JSON sidecar, else the defaults."""
    default = LabelMap()
    if mask_path is None:
        return default, {n: default.color_of(n) for n in default.names}
    sidecar = stem_of(mask_path).with_name(stem_of(mask_path).name + ".json")
    if not sidecar.is_file():
        return default, {n: default.color_of(n) for n in default.names}
    try:
        entries = json.loads(sidecar.read_text(encoding="utf-8"))["labels"]
        ids = sorted(int(i) for i in entries)
        names = tuple(entries[str(i)]["name"] for i in range(ids[-1] + 1))
        colors = {entries[str(i)]["name"]: tuple(int(c) for c in entries[str(i)]["color"]) for i in ids}
    except (KeyError, ValueError, TypeError, json.JSONDecodeError) as err:
        warnings.warn(
            f"{sidecar}: unreadable label sidecar ({err!r}); using the default labels", stacklevel=3
        )
        return default, {n: default.color_of(n) for n in default.names}
    return LabelMap(names), colors


def _ct_on_mask_grid(ct: io.Volume, mask: io.Volume, boxes: list, notes: list[str]) -> io.Volume:
    """The CT on the mask's grid: itself when the grids match, else resampled in world space around the
    organs (trilinear; voxels far from every organ are air, -1024 HU)."""
    if io.same_grid(ct, mask):
        return ct
    from organseg.geometry import Grid, map_box, voxel_map
    from organseg.geometry.slabs import resample_region

    lo = np.min([[s.start for s in b] for b in boxes if b is not None], axis=0)
    hi = np.max([[s.stop for s in b] for b in boxes if b is not None], axis=0)
    margin = np.ceil(_RESAMPLE_MARGIN_MM / np.array(mask.spacing_mm)).astype(int)
    lo, hi = np.maximum(lo - margin, 0), np.minimum(hi + margin, mask.shape)
    src, dst = Grid(ct.shape, np.asarray(ct.affine, float)), Grid(mask.shape, np.asarray(mask.affine, float))
    # Where the organs' box lies in the CT's index space: refuse when the CT misses it entirely.
    c_lo, c_hi = map_box(lo.astype(float), (hi - 1).astype(float), voxel_map(dst, src))
    ct_shape = np.array(ct.shape)
    if np.any(c_hi < -0.5) or np.any(c_lo > ct_shape - 0.5):
        raise InputError(
            f"{ct.source}: the CT does not overlap the mask's organs in world space (different scans?); "
            "pass the CT the mask was made from"
        )
    if np.any(c_lo < -0.5) or np.any(c_hi > ct_shape - 0.5):
        notes.append(f"{ct.source}: the CT covers the organs only in part; HU near its edge are extrapolated")
    notes.append(
        f"{ct.source}: CT grid {ct.shape} {ct.orientation} differs from the mask's {mask.shape} "
        f"{mask.orientation}; CT resampled onto the mask grid in world space"
    )
    out = np.full(mask.shape, -1024.0, dtype=np.float32)
    out[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = resample_region(
        np.asarray(ct.array), src, dst, lo, hi
    ).numpy()
    return io.Volume(out, mask.affine, ct.source, None)


def _load_manifest(path: Path | None, mask_path: Path | None, notes: list[str]) -> dict | None:
    if path is None and mask_path is not None:
        guess = stem_of(mask_path).with_name(stem_of(mask_path).name + ".run.json")
        path = guess if guess.is_file() else None
    if path is None:
        return None
    if not Path(path).is_file():
        raise InputError(f"{path}: run manifest not found")
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        notes.append(f"{path}: unreadable run manifest ({err}); run details left out")
        return None


def _range_flag(value: float | None, bounds: tuple[float, float] | None) -> str:
    if value is None or bounds is None:
        return ""
    if value < bounds[0]:
        return "low"
    return "high" if value > bounds[1] else ""


def _cut_off(box: tuple[slice, ...], mask: io.Volume) -> bool:
    """Whether the organ touches the first or last slice along the axis nearest superior-inferior."""
    axis = int(np.argmax(np.abs(np.asarray(mask.affine)[2, :3])))
    return box[axis].start == 0 or box[axis].stop == mask.shape[axis]


def report_rows(
    stats: dict[str, dict], boxes: list, mask: io.Volume, labels: LabelMap, confidence: dict | None
) -> list[dict]:
    """One row per organ present: values, reference ranges and flags (least confident first)."""
    rows = []
    for name, s in stats.items():
        if not s["voxels"]:
            continue
        value = labels.id_of(name)
        ref_ml, ref_hu = REFERENCE_ML.get(name), REFERENCE_HU.get(name)
        cut = _cut_off(boxes[value - 1], mask)
        vol_flag = _range_flag(s["volume_ml"], ref_ml)
        if vol_flag == "low" and cut:
            vol_flag = "partial"  # the scan cuts the organ off: a small volume is expected
        rows.append(
            {
                "organ": name,
                "label": value,
                "volume_ml": round(s["volume_ml"], 1),
                "reference_ml": ref_ml,
                "volume_flag": vol_flag,
                "hu_mean": round(s["hu_mean"], 1),
                "hu_sd": round(s["hu_sd"], 1),
                "reference_hu": ref_hu,
                "hu_flag": _range_flag(s["hu_mean"], ref_hu),
                "bbox_mm": s["bbox_mm"],
                "cut_off": cut,
                "confidence": (confidence or {}).get(name),
            }
        )
    if confidence:
        order = {o: n for n, o in enumerate(rank_organs(confidence))}
        rows.sort(key=lambda r: order.get(r["organ"], len(order)))
    return rows


def build_report(
    mask: str | Path,
    ct: str | Path,
    output: str | Path,
    *,
    manifest: str | Path | None = None,
    label_map: str | None = None,
    overwrite: bool = False,
    title: str | None = None,
    max_faces: int = REPORT_MAX_FACES,
) -> Path:
    """Write the HTML report of ``mask`` over ``ct`` to ``output`` (atomic; ``.html``).

    Args:
        mask: label mask (NIfTI/NRRD/MHA); names and colours from its sidecar ``<stem>.json`` if present.
        ct: the CT it was made from (file or DICOM folder/zip). On another grid it is resampled onto the
            mask's grid in world space; a CT that does not overlap the organs is refused.
        output: ``.html`` path.
        manifest: run manifest JSON; default ``<mask stem>.run.json`` when it exists.
        label_map: the mask's label convention if not organseg's (``totalsegmentator``, ``"5:liver,..."``).
        overwrite: replace an existing output.
        title: heading (default: the mask's file name).
        max_faces: triangles per organ mesh after decimation.

    Raises:
        InputError: unreadable inputs, a mask without organs, a CT that misses the organs.
        OutputError: output not ``.html``, missing folder, existing output without ``overwrite``.
    """
    t0 = time.perf_counter()
    output = Path(output)
    if output.suffix.lower() not in (".html", ".htm"):
        raise OutputError(f"{output}: the report is a web page; use an .html file name")
    io.check_writable(output, overwrite=overwrite)
    notes: list[str] = []
    mask_path = Path(mask)
    mask_vol = io.read_image(mask_path, kind="mask")
    labels, colors = _read_labels(mask_path)
    if label_map is not None:
        from organseg.metrics import parse_label_map, remap_labels

        labels = LabelMap()
        colors = {n: labels.color_of(n) for n in labels.names}
        mapping = parse_label_map(label_map, labels, what="label_map")
        mask_vol = io.Volume(remap_labels(mask_vol.array, mapping, str(mask_path)), mask_vol.affine,
                             mask_vol.source, mask_vol.header)  # fmt: skip
    arr = np.asarray(mask_vol.array)
    if arr.max() >= labels.num_classes:
        extra = sorted(int(v) for v in np.unique(arr[arr >= labels.num_classes]))
        notes.append(f"{mask_path}: label value(s) {extra} not in the label map; left out (see --label-map)")
        arr = np.where(arr < labels.num_classes, arr, 0).astype(np.uint8)
        mask_vol = io.Volume(arr, mask_vol.affine, mask_vol.source, mask_vol.header)
    boxes = ndimage.find_objects(arr, max_label=labels.num_classes - 1)
    if not any(b is not None for b in boxes):
        raise InputError(f"{mask_path}: the mask holds no organ (only background); nothing to report")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ct_vol = io.read_image(Path(ct), kind="ct")
    notes += [str(w.message) for w in caught]
    from organseg.infer import check_ct_intensities

    notes += [f"{ct_vol.source}: {r}" for r in check_ct_intensities(np.asarray(ct_vol.array))]
    ct_vol = _ct_on_mask_grid(ct_vol, mask_vol, boxes, notes)
    run = _load_manifest(Path(manifest) if manifest else None, mask_path, notes)
    confidence = (run or {}).get("confidence")

    stats = organ_stats(arr, io.Volume(ct_vol.array, mask_vol.affine, ct_vol.source, None), labels)
    rows = report_rows(stats, boxes, mask_vol, labels, confidence)

    from organseg.rendering import build_meshes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unknown labels were reported above
        meshes = build_meshes(mask_vol, labels, max_faces=max_faces, field_voxels=REPORT_FIELD_VOXELS)
    figure = organ_figure(meshes, {n: colors.get(n, UNKNOWN_COLOR) for n in meshes})

    mask_ras, spacing = to_ras(arr, mask_vol.affine)
    ct_ras, _ = to_ras(np.asarray(ct_vol.array), mask_vol.affine)
    id_colors = {i: colors.get(n, DEFAULT_COLORS.get(n, UNKNOWN_COLOR)) for i, n in enumerate(labels.names)}
    slices = {
        r["organ"]: organ_slices(
            ct_ras,
            mask_ras,
            spacing,
            r["label"],
            ras_box(boxes[r["label"] - 1], arr.shape, mask_vol.affine),
            id_colors,
        )
        for r in rows
    }
    for w in notes:
        warnings.warn(w, stacklevel=2)

    from organseg.report_html import render_page

    page = render_page(
        title=title or mask_path.name,
        mask=str(mask_path),
        ct=str(ct),
        rows=rows,
        colors=colors,
        figure=figure,
        slices=slices,
        run=run,
        notes=notes,
        seconds=time.perf_counter() - t0,
    )
    io.atomic_write_text(output, page, overwrite=overwrite)
    return output


def check_report_path(path: str | Path, overwrite: bool) -> Path:
    """Refuse a report path that is not ``.html`` or cannot be written, before any long work."""
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise OutputError(f"{path}: the report is a web page; use an .html file name")
    io.check_writable(path, overwrite=overwrite)
    return path


def reports_after_segment(result, report: str | Path, overwrite: bool) -> list[Path]:
    """``infer --report``: one report per case of a ``SegmentResult`` (mask over its input CT).

    A single case writes ``report``; a folder of cases writes ``<mask stem>.report.html`` beside each mask.
    """
    written = []
    for case in result.cases:
        mask = Path(case.mask)
        if not io.is_nifti(mask):  # DICOM-SEG only: the NIfTI mask was not written
            raise OutputError(f"{report}: the report needs the NIfTI mask; add --output-type nifti")
        out = (
            Path(report)
            if len(result.cases) == 1
            else stem_of(mask).with_name(stem_of(mask).name + ".report.html")
        )
        written.append(build_report(mask, case.input, out, overwrite=overwrite, title=case.case))
    return written
