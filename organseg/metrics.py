"""Per-organ segmentation metrics, computed in physical space.

``evaluate(pred, ref)`` returns, for every organ of the label map, the overlap scores (Dice, IoU,
precision, recall, F-beta), the surface scores (HD95 in mm, NSD) and the volumes in ml::

    >>> evaluate("mask.nii.gz", "seg_totalsegmentator.nii.gz", ref_map="totalsegmentator")["liver"]
    {'dice': 0.97, 'iou': 0.94, 'precision': ..., 'recall': ..., 'fbeta': ..., 'hd95_mm': 3.1, 'nsd': 0.93,
     'volume_pred_ml': 1041.2, 'volume_ref_ml': 1043.0, 'volume_diff_ml': -1.8}

Geometry: masks are compared in world space, never array to array. When the two grids differ, the
**reference** is resampled (nearest neighbour, through world RAS coordinates) onto the prediction's grid,
so every score is measured on the voxels the prediction was made on. Grids whose physical extents do
not overlap at all are an ``InputError`` (different patients, or a wrong file); a partial overlap warns.

Label ids: the prediction uses ``labels`` (organseg's ids) unless ``pred_map`` says otherwise; the
reference may use another convention: ``ref_map="totalsegmentator"`` (or ``flare22``, ``organseg``, see
``labels.LABEL_PRESETS``), an explicit ``"5:liver,1:spleen"`` / ``"5:1,1:4"``, or a dict. Ids that the map
does not name count as background.

Conventions for empty masks (per organ):

- both empty: every overlap score and NSD is 1.0, HD95 is 0.0 (a correct "not present").
- one empty, the other not: every overlap score and NSD is 0.0, and HD95 is ``inf`` (there is no
  surface to measure a distance to). ``inf`` stays ``inf`` in Python; JSON output writes it as ``null``
  and CSV as ``inf``; folder summaries average HD95 over the cases where it is finite and say how many.

Surface metrics use MONAI (``compute_hausdorff_distance(percentile=95)``, ``compute_surface_dice``) with
the voxel spacing of the prediction grid. NSD tolerances follow the FLARE22 evaluator: liver 5 mm,
kidneys and spleen 3 mm (``NSD_TOLERANCE_MM``); other organs default to 3 mm.
"""

from __future__ import annotations

import csv
import io as _io
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from organseg import io
from organseg.errors import ConfigError, InputError, OutputError
from organseg.geometry import bounding_box
from organseg.labels import LABEL_PRESETS, LabelMap, parse_label_map, remap_labels

#: NSD tolerance per organ, in mm, as in the FLARE22 evaluation code.
NSD_TOLERANCE_MM: dict[str, float] = {"liver": 5.0, "kidney_right": 3.0, "kidney_left": 3.0, "spleen": 3.0}
DEFAULT_NSD_TOLERANCE_MM = 3.0

#: Metric keys in the order tables and CSV files show them.
METRIC_KEYS: tuple[str, ...] = (
    "dice",
    "iou",
    "precision",
    "recall",
    "fbeta",
    "hd95_mm",
    "nsd",
    "volume_pred_ml",
    "volume_ref_ml",
    "volume_diff_ml",
)

#: A partial overlap below this fraction of either grid's voxels warns.
PARTIAL_OVERLAP_WARN = 0.99

_NOT_MASKS = ("_probabilities", ".run", ".stats")

VolumeLike = str | Path | io.Volume


# --------------------------------------------------------------------------------------- geometry


def _world_corners(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """World RAS coordinates (8, 3) of the outer corners of a grid (voxel edges, not centres)."""
    lo, hi = -0.5, np.asarray(shape, float) - 0.5
    idx = np.array([[x, y, z] for x in (lo, hi[0]) for y in (lo, hi[1]) for z in (lo, hi[2])])
    return idx @ affine[:3, :3].T + affine[:3, 3]


def overlap_fraction(
    shape_a: Sequence[int],
    affine_a: np.ndarray,
    shape_b: Sequence[int],
    affine_b: np.ndarray,
    samples: int = 24,
) -> float:
    """Fraction of grid A's physical volume that lies inside grid B (sampled on a lattice of voxel centres)."""
    axes = [np.linspace(0, s - 1, min(int(s), samples)) for s in shape_a]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    world = pts @ affine_a[:3, :3].T + affine_a[:3, 3]
    inv = np.linalg.inv(affine_b)
    vox = world @ inv[:3, :3].T + inv[:3, 3]
    inside = np.all((vox >= -0.5) & (vox <= np.asarray(shape_b) - 0.5), axis=1)
    return float(inside.mean())


def align_reference(ref: io.Volume, pred: io.Volume) -> np.ndarray:
    """The reference labels on the prediction's grid (nearest neighbour through world space).

    Raises ``InputError`` when the grids share no physical space; warns when they overlap partially.
    """
    if io.same_grid(ref, pred):
        return np.asarray(ref.array)
    pred_in_ref = overlap_fraction(pred.shape, pred.affine, ref.shape, ref.affine)
    ref_in_pred = overlap_fraction(ref.shape, ref.affine, pred.shape, pred.affine)
    if pred_in_ref == 0.0 or ref_in_pred == 0.0:
        box_p = _world_corners(pred.shape, pred.affine)
        box_r = _world_corners(ref.shape, ref.affine)
        raise InputError(
            f"{ref.source}: reference and prediction {pred.source} do not overlap in physical space "
            f"(prediction spans {_fmt_box(box_p)} mm, reference {_fmt_box(box_r)} mm RAS); "
            "are they the same patient and scan?"
        )
    if min(pred_in_ref, ref_in_pred) < PARTIAL_OVERLAP_WARN:
        warnings.warn(
            f"{ref.source}: reference and prediction overlap only partially in physical space "
            f"({100 * pred_in_ref:.1f}% of the prediction grid lies inside the reference, "
            f"{100 * ref_in_pred:.1f}% of the reference inside the prediction); "
            "scores cover the shared region only",
            stacklevel=3,
        )
    from organseg.geometry import resample_to_grid

    out = resample_to_grid(np.asarray(ref.array), ref.affine, pred.affine, pred.shape, order=0)
    return np.asarray(out).astype(np.uint8, copy=False)


def _fmt_box(corners: np.ndarray) -> str:
    lo, hi = corners.min(0), corners.max(0)
    return "[" + ", ".join(f"{a:.0f}..{b:.0f}" for a, b in zip(lo, hi)) + "]"


# --------------------------------------------------------------------------------------- scores


def _surface_metrics(
    p: np.ndarray, r: np.ndarray, spacing_mm: Sequence[float], tol_mm: float
) -> tuple[float, float]:
    """(HD95 in mm, NSD) of two non-empty binary masks, via MONAI."""
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    yp = torch.from_numpy(np.ascontiguousarray(p))[None, None]
    yr = torch.from_numpy(np.ascontiguousarray(r))[None, None]
    spacing = [float(s) for s in spacing_mm]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about empty classes; both are non-empty here
        hd95 = compute_hausdorff_distance(yp, yr, include_background=True, percentile=95, spacing=spacing)
        nsd = compute_surface_dice(
            yp, yr, class_thresholds=[tol_mm], include_background=True, spacing=spacing
        )
    return float(hd95.flatten()[0]), float(nsd.flatten()[0])


def organ_scores(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing_mm: Sequence[float],
    *,
    beta: float = 0.5,
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
) -> dict[str, float]:
    """Overlap and surface scores of two binary masks on the same grid (volumes are added by ``evaluate``).

    Args:
        pred, ref: boolean arrays of one shape.
        spacing_mm: voxel size along the array axes (i, j, k).
        beta: F-beta's beta (0.5 weighs precision more than recall).
        nsd_tolerance_mm: the NSD tolerance.
    """
    import torch
    from monai.metrics import compute_dice

    box = bounding_box(pred | ref, pad=1)
    if box is None:  # both empty: a correct "absent"
        return dict(dice=1.0, iou=1.0, precision=1.0, recall=1.0, fbeta=1.0, hd95_mm=0.0, nsd=1.0)
    p, r = pred[box], ref[box]
    tp = float(np.count_nonzero(p & r))
    n_p, n_r = float(np.count_nonzero(p)), float(np.count_nonzero(r))
    if n_p == 0 or n_r == 0:
        return dict(dice=0.0, iou=0.0, precision=0.0, recall=0.0, fbeta=0.0, hd95_mm=math.inf, nsd=0.0)
    dice = compute_dice(
        torch.from_numpy(p)[None, None].float(),
        torch.from_numpy(r)[None, None].float(),
        include_background=True,
    )
    precision, recall = tp / n_p, tp / n_r
    b2 = beta * beta
    fbeta = (1 + b2) * precision * recall / (b2 * precision + recall) if tp > 0 else 0.0
    hd95, nsd = _surface_metrics(p, r, spacing_mm, nsd_tolerance_mm)
    return dict(
        dice=float(dice.flatten()[0]),
        iou=tp / (n_p + n_r - tp),
        precision=precision,
        recall=recall,
        fbeta=fbeta,
        hd95_mm=hd95,
        nsd=nsd,
    )


def _as_volume(x: VolumeLike) -> io.Volume:
    if isinstance(x, io.Volume):
        return x
    return io.read_image(x, kind="mask")


def evaluate(
    pred: VolumeLike,
    ref: VolumeLike,
    *,
    labels: LabelMap = LabelMap(),
    ref_map: str | Mapping | None = None,
    pred_map: str | Mapping | None = None,
    beta: float = 0.5,
    nsd_tolerance_mm: float | Mapping[str, float] | None = None,
) -> dict[str, dict[str, float]]:
    """Per-organ metrics of a predicted mask against a reference, in physical space.

    Args:
        pred: predicted label mask (a path read with ``io.read_image``, or a ``Volume``).
        ref: reference label mask; resampled onto ``pred``'s grid (nearest, world space) when grids differ.
        labels: organseg's label map; its organs are the keys of the result.
        ref_map: the reference's label convention (preset name, ``"src:dst,..."`` or dict); ``None`` means
            it already uses ``labels``' ids.
        pred_map: the same for the prediction.
        beta: F-beta's beta.
        nsd_tolerance_mm: one tolerance for all organs, a dict per organ, or ``None`` for the FLARE22
            values (``NSD_TOLERANCE_MM``).

    Returns:
        ``{organ: {"dice", "iou", "precision", "recall", "fbeta", "hd95_mm", "nsd", "volume_pred_ml",
        "volume_ref_ml", "volume_diff_ml"}}``; ``volume_ref_ml`` is counted on the reference's own grid,
        ``volume_diff_ml`` is prediction minus reference. See the module docstring for empty masks.
    """
    if beta <= 0:
        raise ConfigError(f"beta: must be > 0, got {beta}")
    pred_vol, ref_vol = _as_volume(pred), _as_volume(ref)
    pred_ids = remap_labels(pred_vol.array, parse_label_map(pred_map, labels, "pred_map"), pred_vol.source)
    ref_ids = remap_labels(ref_vol.array, parse_label_map(ref_map, labels, "ref_map"), ref_vol.source)
    for vol, spec, what in ((ref_vol, ref_map, "ref_map"), (pred_vol, pred_map, "pred_map")):
        if spec is None:
            _warn_unknown_ids(vol, labels, what)
    ref_native = io.Volume(ref_ids, ref_vol.affine, ref_vol.source)
    ref_on_pred = align_reference(ref_native, io.Volume(pred_ids, pred_vol.affine, pred_vol.source))
    spacing = pred_vol.spacing_mm
    pred_ml, ref_ml = pred_vol.voxel_volume_ml, ref_vol.voxel_volume_ml
    result: dict[str, dict[str, float]] = {}
    for organ in labels.organs:
        oid = labels.id_of(organ)
        p, r = pred_ids == oid, ref_on_pred == oid
        tol = _tolerance_for(organ, nsd_tolerance_mm)
        scores = organ_scores(p, r, spacing, beta=beta, nsd_tolerance_mm=tol)
        vol_p = float(np.count_nonzero(p)) * pred_ml
        vol_r = float(np.count_nonzero(ref_ids == oid)) * ref_ml
        scores.update(volume_pred_ml=vol_p, volume_ref_ml=vol_r, volume_diff_ml=vol_p - vol_r)
        result[organ] = scores
    return result


def _tolerance_for(organ: str, spec: float | Mapping[str, float] | None) -> float:
    if spec is None:
        return NSD_TOLERANCE_MM.get(organ, DEFAULT_NSD_TOLERANCE_MM)
    if isinstance(spec, Mapping):
        return float(spec.get(organ, NSD_TOLERANCE_MM.get(organ, DEFAULT_NSD_TOLERANCE_MM)))
    return float(spec)


def _warn_unknown_ids(vol: io.Volume, labels: LabelMap, what: str) -> None:
    top = int(np.max(vol.array)) if np.asarray(vol.array).size else 0
    if top >= labels.num_classes:
        presets = ", ".join(LABEL_PRESETS)
        warnings.warn(
            f"{vol.source}: holds label ids up to {top} but the label map has {labels.num_classes - 1} organs; "
            f"ids above {labels.num_classes - 1} count as background. Pass {what} ({presets} or 'src:dst,...') "
            "if this mask uses another convention",
            stacklevel=3,
        )


# --------------------------------------------------------------------------------------- folders


def case_name(path: str | Path) -> str | None:
    """``io.case_name`` of a mask file (``case_01.nii.gz`` -> ``case_01``), or ``None`` if not a mask file."""
    if not Path(path).name.lower().endswith(io.NIFTI_SUFFIXES + io.ITK_SUFFIXES):
        return None
    return io.case_name(path)


def mask_files(folder: Path) -> dict[str, Path]:
    """``{case name: mask file}`` of a folder (not probability maps, run manifests or stats files)."""
    out = {}
    for p in sorted(folder.iterdir()):
        name = case_name(p)
        if p.is_file() and name and not name.startswith(".") and not name.endswith(_NOT_MASKS):
            out[name] = p
    return out


def evaluate_folder(pred_dir: str | Path, ref_dir: str | Path, **kwargs: object) -> dict:
    """Evaluate every case present in both folders (matched by case name); mean and sd per organ/metric.

    Args:
        pred_dir: folder of predicted masks (``<case>.nii.gz``; split masks and probability maps that have
            no counterpart in ``ref_dir`` are ignored).
        ref_dir: folder of reference masks with the same case names.
        **kwargs: passed to ``evaluate`` (``labels``, ``ref_map``, ...).

    Returns:
        ``{"cases": {case: evaluate(...)}, "summary": {organ: {metric: {"mean", "sd", "n"}}},
        "missing": [reference cases without a prediction]}``. ``n`` counts the cases with a finite value
        (an infinite HD95 is left out of its mean and sd; see the module docstring).
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    for d in (pred_dir, ref_dir):
        if not d.is_dir():
            raise InputError(f"{d}: folder not found")
    preds, refs = mask_files(pred_dir), mask_files(ref_dir)
    common = sorted(set(preds) & set(refs))
    if not common:
        raise InputError(
            f"{pred_dir}: no prediction matches a reference case in {ref_dir} by name "
            f"(predictions: {', '.join(list(preds)[:5]) or 'none'}; references: {', '.join(list(refs)[:5]) or 'none'})"
        )
    missing = sorted(set(refs) - set(preds))
    if missing:
        warnings.warn(
            f"{pred_dir}: no prediction for {len(missing)} reference case(s): {', '.join(missing[:10])}",
            stacklevel=2,
        )
    cases = {name: evaluate(preds[name], refs[name], **kwargs) for name in common}
    return {"cases": cases, "summary": summarize(cases), "missing": missing}


def summarize(cases: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict:
    """Mean, sample sd and count of finite values per organ and metric over cases."""
    organs = list(next(iter(cases.values())).keys()) if cases else []
    summary: dict = {}
    for organ in organs:
        summary[organ] = {}
        for key in METRIC_KEYS:
            values = np.array([c[organ][key] for c in cases.values() if key in c[organ]], dtype=float)
            finite = values[np.isfinite(values)]
            summary[organ][key] = {
                "mean": float(finite.mean()) if finite.size else math.nan,
                "sd": float(finite.std(ddof=1)) if finite.size > 1 else 0.0 if finite.size else math.nan,
                "n": int(finite.size),
            }
    return summary


# --------------------------------------------------------------------------------------- writers

_TABLE_COLUMNS = (
    ("dice", "Dice", 3),
    ("iou", "IoU", 3),
    ("precision", "Prec", 3),
    ("recall", "Rec", 3),
    ("fbeta", "Fβ", 3),
    ("hd95_mm", "HD95 mm", 1),
    ("nsd", "NSD", 3),
    ("volume_pred_ml", "Vol pred ml", 1),
    ("volume_ref_ml", "Vol ref ml", 1),
    ("volume_diff_ml", "ΔVol ml", 1),
)


def _fmt(value: float, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def format_table(result: Mapping) -> str:
    """The result of ``evaluate`` (one case) or ``evaluate_folder`` (mean ± sd) as a text table."""
    is_folder = "summary" in result and "cases" in result
    rows = result["summary"] if is_folder else result
    header = ["organ"] + [title for _, title, _ in _TABLE_COLUMNS]
    lines = []
    for organ, metrics in rows.items():
        cells = [organ]
        for key, _, digits in _TABLE_COLUMNS:
            if is_folder:
                m = metrics[key]
                cells.append(f"{_fmt(m['mean'], digits)} ± {_fmt(m['sd'], digits)}")
            else:
                cells.append(_fmt(metrics[key], digits))
        lines.append(cells)
    widths = [max(len(r[i]) for r in [header] + lines) for i in range(len(header))]
    out = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    out.append("  ".join("-" * w for w in widths))
    for cells in lines:
        out.append(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        )
    if is_folder:
        out.append(f"mean ± sd over {len(result['cases'])} case(s)")
        if result.get("missing"):
            out.append(f"no prediction for: {', '.join(result['missing'])}")
    return "\n".join(out)


def _csv_rows(result: Mapping, case: str) -> list[dict]:
    if "summary" in result and "cases" in result:
        rows = []
        for name, res in result["cases"].items():
            rows += _csv_rows(res, name)
        return rows
    return [{"case": case, "organ": organ, **{k: m[k] for k in METRIC_KEYS}} for organ, m in result.items()]


def write_metrics(result: Mapping, path: str | Path, overwrite: bool = False, case: str = "") -> Path:
    """Write ``result`` as JSON (``.json``) or CSV (``.csv``: one row per case and organ), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        io.atomic_write_json(path, result, overwrite=overwrite)
    elif suffix == ".csv":
        buf = _io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["case", "organ", *METRIC_KEYS], lineterminator="\n")
        writer.writeheader()
        for row in _csv_rows(result, case):
            writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
        io.atomic_write_text(path, buf.getvalue(), overwrite=overwrite)
    else:
        check_metrics_format(path)
    return path


def check_metrics_format(path: Path) -> None:
    """``OutputError`` unless ``path`` ends in ``.json`` or ``.csv`` (checked before any work is done)."""
    if path.suffix.lower() not in (".json", ".csv"):
        raise OutputError(f"{path}: unknown metrics format {path.suffix!r} (use .json or .csv)")
