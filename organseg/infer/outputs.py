"""Extra outputs of a segmentation: per-organ masks, probability maps, statistics, RLE, run manifest.

Every file is written atomically through ``organseg.io`` and refused if it exists unless ``overwrite``.

- ``write_split``: one binary uint8 mask per organ, ``<stem>_<organ>.nii.gz``, on the input grid.
- ``write_probabilities``: a 4D NIfTI ``(X, Y, Z, C)`` (channels last), one channel per label. NIfTI-1
  has no float16, so the maps are stored as float32 (``io.write_volume``). Probability mass outside the
  network's body crop goes to background, so each voxel's probabilities sum to 1.
- ``organ_stats`` / ``write_stats``: per organ volume (ml), voxel count, mean and sd of HU, bounding box
  in voxels (inclusive ``min``/``max`` indices) and in mm (world RAS+ extent of those voxel centres), and
  centroid in mm (world RAS+). ``.json`` or ``.csv``.
- ``rle_encode`` / ``write_rle``: Kaggle-style run-length encoding of each organ mask: space-separated
  ``start length`` pairs, starts **1-indexed**, over the mask flattened in **C order of the (i, j, k)
  array** (k varies fastest). ``rle_decode`` inverts it. ``.json`` (with shape and affine) or ``.csv``.
- ``run manifest`` (``<stem>.run.json``): versions, model files, device, settings, timings per stage,
  outputs, volumes and warnings.
"""

from __future__ import annotations

import csv
import io as _io
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from organseg import io
from organseg.config import LabelMap
from organseg.errors import OutputError


def stem_of(path: str | Path) -> Path:
    """``out/case.nii.gz`` -> ``out/case`` (the base for sibling outputs)."""
    path = Path(path)
    return path.parent / io.strip_image_suffix(path.name)


def write_split(
    mask: np.ndarray, like: io.Volume, mask_path: str | Path, labels: LabelMap, overwrite: bool
) -> list[Path]:
    """One binary mask per organ beside ``mask_path``: ``<stem>_<organ>.nii.gz`` (uint8 0/1)."""
    stem = stem_of(mask_path)
    paths = []
    for organ_id, organ in enumerate(labels.names[1:], start=1):
        path = stem.with_name(f"{stem.name}_{organ}.nii.gz")
        io.write_nifti((mask == organ_id).astype(np.uint8), like, path, overwrite=overwrite)
        paths.append(path)
    return paths


def write_probabilities(
    prob_map: np.ndarray, like: io.Volume, mask_path: str | Path, overwrite: bool
) -> Path:
    """``<stem>_probabilities.nii.gz``: (X, Y, Z, C) probabilities on the input grid (float32 on disk)."""
    stem = stem_of(mask_path)
    return io.write_volume(
        prob_map, like, stem.with_name(f"{stem.name}_probabilities.nii.gz"), overwrite=overwrite
    )


# --------------------------------------------------------------------------------------- statistics


def organ_stats(mask: np.ndarray, ct: io.Volume, labels: LabelMap) -> dict[str, dict]:
    """Per-organ statistics of ``mask`` (on ``ct``'s grid); empty organs have ``voxels == 0`` and ``None``s."""
    from scipy import ndimage

    out: dict[str, dict] = {}
    voxel_ml = ct.voxel_volume_ml
    # Each organ is looked at inside its bounding box only (one find_objects pass over the mask), not
    # over the whole scan: four full-size comparisons and nonzero()s took seconds on 512x512x300.
    boxes = ndimage.find_objects(mask, max_label=labels.num_classes - 1) if mask.size else []
    for organ_id, organ in enumerate(labels.names[1:], start=1):
        box = boxes[organ_id - 1] if organ_id <= len(boxes) else None
        sel = mask[box] == organ_id if box is not None else None
        count = int(np.count_nonzero(sel)) if sel is not None else 0
        entry: dict = {"voxels": count, "volume_ml": count * voxel_ml}
        if count == 0:
            entry.update(hu_mean=None, hu_sd=None, bbox_voxel=None, bbox_mm=None, centroid_mm=None)
            out[organ] = entry
            continue
        idx = tuple(i + s.start for i, s in zip(np.nonzero(sel), box, strict=True))
        hu = np.asarray(ct.array[idx], dtype=np.float64)
        lo = np.array([int(i.min()) for i in idx])
        hi = np.array([int(i.max()) for i in idx])
        corners = np.array(
            [[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])], float
        )
        world = corners @ ct.affine[:3, :3].T + ct.affine[:3, 3]
        centroid = np.array([i.mean() for i in idx]) @ ct.affine[:3, :3].T + ct.affine[:3, 3]
        entry.update(
            hu_mean=float(hu.mean()),
            hu_sd=float(hu.std()),
            bbox_voxel={"min": lo.tolist(), "max": hi.tolist()},
            bbox_mm={"min": world.min(0).round(2).tolist(), "max": world.max(0).round(2).tolist()},
            centroid_mm=centroid.round(2).tolist(),
        )
        out[organ] = entry
    return out


def write_stats(stats: Mapping[str, dict], path: str | Path, overwrite: bool, case: str = "") -> Path:
    """Write ``organ_stats`` output as ``.json`` or ``.csv`` (one row per organ)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        io.atomic_write_json(
            path, {"case": case, "coordinates": "RAS+ mm", "organs": dict(stats)}, overwrite=overwrite
        )
    elif suffix == ".csv":
        cols = ["case", "organ", "voxels", "volume_ml", "hu_mean", "hu_sd"]
        cols += [f"bbox_voxel_{e}_{a}" for e in ("min", "max") for a in "ijk"]
        cols += [f"bbox_mm_{e}_{a}" for e in ("min", "max") for a in "xyz"]
        cols += [f"centroid_mm_{a}" for a in "xyz"] + ["confidence"]
        buf = _io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        writer.writeheader()
        for organ, s in stats.items():
            row = {"case": case, "organ": organ, "voxels": s["voxels"], "volume_ml": s["volume_ml"]}
            row.update(hu_mean=s["hu_mean"], hu_sd=s["hu_sd"])
            for key, axes in (("bbox_voxel", "ijk"), ("bbox_mm", "xyz")):
                for end in ("min", "max"):
                    for n, a in enumerate(axes):
                        row[f"{key}_{end}_{a}"] = s[key][end][n] if s[key] else ""
            for n, a in enumerate("xyz"):
                row[f"centroid_mm_{a}"] = s["centroid_mm"][n] if s["centroid_mm"] else ""
            row["confidence"] = (s.get("confidence") or {}).get("score")
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        io.atomic_write_text(path, buf.getvalue(), overwrite=overwrite)
    else:
        raise OutputError(f"{path}: unknown statistics format {path.suffix!r} (use .json or .csv)")
    return path


# --------------------------------------------------------------------------------------- RLE


def rle_encode(binary: np.ndarray) -> str:
    """Kaggle RLE of a boolean array: ``"start length ..."``, starts 1-indexed, C-order flattening."""
    flat = np.asarray(binary, dtype=bool).ravel(order="C")
    if not flat.any():
        return ""
    padded = np.concatenate(([False], flat, [False])).view(np.int8)
    edges = np.flatnonzero(np.diff(padded))  # run starts and ends (0-indexed, end exclusive)
    starts, ends = edges[0::2], edges[1::2]
    pairs = np.empty(starts.size * 2, dtype=np.int64)
    pairs[0::2], pairs[1::2] = starts + 1, ends - starts
    return " ".join(map(str, pairs.tolist()))


def rle_decode(rle: str, shape: Sequence[int]) -> np.ndarray:
    """The boolean array of ``shape`` that ``rle_encode`` produced ``rle`` from."""
    flat = np.zeros(int(np.prod(shape)), dtype=bool)
    values = np.array(rle.split(), dtype=np.int64)
    for start, length in zip(values[0::2], values[1::2]):
        flat[start - 1 : start - 1 + length] = True
    return flat.reshape(tuple(shape), order="C")


def write_rle(
    mask: np.ndarray, like: io.Volume, path: str | Path, labels: LabelMap, overwrite: bool, case: str = ""
) -> Path:
    """Each organ's RLE as ``.json`` (with shape, order and affine) or ``.csv`` (``case,organ,shape,rle``)."""
    path = Path(path)
    encoded = {organ: rle_encode(mask == i) for i, organ in enumerate(labels.names[1:], start=1)}
    suffix = path.suffix.lower()
    if suffix == ".json":
        io.atomic_write_json(
            path,
            {
                "case": case,
                "format": "rle: 'start length' pairs, starts 1-indexed, C-order flattening of the (i, j, k) array",
                "shape": list(mask.shape),
                "affine": np.asarray(like.affine).tolist(),
                "organs": encoded,
            },
            overwrite=overwrite,
        )
    elif suffix == ".csv":
        buf = _io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["case", "organ", "shape", "rle"])
        for organ, rle in encoded.items():
            writer.writerow([case, organ, "x".join(map(str, mask.shape)), rle])
        io.atomic_write_text(path, buf.getvalue(), overwrite=overwrite)
    else:
        raise OutputError(f"{path}: unknown RLE format {path.suffix!r} (use .json or .csv)")
    return path


# --------------------------------------------------------------------------------------- manifest


def versions() -> dict[str, str]:
    import monai
    import torch

    return {
        "organseg": io.organseg_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def write_manifest(path: str | Path, manifest: Mapping, overwrite: bool) -> Path:
    """The run manifest as JSON (``<stem>.run.json``)."""
    io.atomic_write_json(path, manifest, overwrite=overwrite)
    return Path(path)
