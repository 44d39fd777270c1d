"""Reading TotalSegmentator-style label maps: a folder of binary masks or a multilabel file + class table.

A label map here is anatomy without a CT: every voxel names the structure it belongs to. Two layouts
are accepted, as TotalSegmentator writes them:

- a **folder** of binary masks, one per structure, named ``<structure>.nii.gz`` (``liver.nii.gz``,
  ``rib_left_9.nii.gz``, ...), all on one grid;
- a **multilabel file** (one integer id per voxel) with its **class table**, a JSON object
  ``{"1": "spleen", "2": "kidney_right", ...}`` (TotalSegmentator v2's ``classes`` mapping).

Structure names must be ones the renderer knows how to draw (``structure_kind``: TotalSegmentator v2's
117 "total" classes and the phantom's own structure names). Every organ of the output label map
(liver, kidneys, spleen by default) must be present and non-empty: a missing liver would teach the
network that livers are background. Masks of other structures may be empty (TotalSegmentator writes
an empty mask for every structure outside the scan) and are then skipped.

Bad input raises ``InputError("<file>: <problem>")`` before anything is written.

The shared real example, subject s0011, comes from the TotalSegmentator dataset v2.0.1 (Wasserthal et al.,
Radiology: AI 2023, Zenodo 10047292, CC BY 4.0).
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from organseg import io
from organseg.errors import InputError

#: (pattern, kind): how a structure is drawn. First full match wins; see ``labelmaps.KIND_TISSUES``.
_SIDE = r"_(left|right)"
KIND_RULES: tuple[tuple[str, str], ...] = (
    (r"liver", "liver"),
    (r"spleen", "spleen"),
    (r"kidney" + _SIDE, "kidney"),
    (r"kidney_cyst" + _SIDE, "cyst"),
    (r"gallbladder", "bile"),
    (r"pancreas", "pancreas"),
    (r"stomach|duodenum|small_bowel|colon", "gut"),
    (r"esophagus", "gi_wall"),
    (r"urinary_bladder", "bladder"),
    (r"lung(_(upper|middle|lower)_lobe)?" + _SIDE, "lung"),
    (r"trachea", "gas"),
    (
        r"vertebrae_[CTLS]\d+|rib" + _SIDE + r"_\d+|sacrum|skull|sternum"
        r"|(hip|femur|humerus|scapula|clavicula)" + _SIDE,
        "bone",
    ),
    (r"costal_cartilages", "cartilage"),
    (r"intervertebral_discs", "disc"),
    (r"aorta|artery|brachiocephalic_trunk|(subclavian|common_carotid|iliac)_artery" + _SIDE, "artery"),
    (r"(inferior|superior)_vena_cava|renal_vein|(brachiocephalic_vein|iliac_vena)" + _SIDE, "vein"),
    (r"portal_vein_and_splenic_vein", "portal"),
    (r"heart|pulmonary_vein|atrial_appendage_left", "heart"),
    (
        r"(gluteus_(maximus|medius|minimus)|autochthon|iliopsoas|quadratus_lumborum)" + _SIDE
        + r"|abdominal_wall|diaphragm",
        "muscle",
    ),
    (r"adrenal_gland" + _SIDE + r"|thyroid_gland|prostate|brain|pericardium|ureter", "soft"),
    (r"spinal_cord", "cord"),
    (r"skin", "skin"),
    (r"subcutaneous_fat|torso_fat|perirenal_fat", "fat"),
    (r"implant", "metal"),
)  # fmt: skip
_COMPILED = tuple((re.compile(p), k) for p, k in KIND_RULES)
KINDS: tuple[str, ...] = ("none",) + tuple(dict.fromkeys(k for _, k in KIND_RULES))


def structure_kind(name: str) -> str | None:
    """How structure ``name`` is drawn (``"bone"``, ``"gut"``, ...), or ``None`` for an unknown name."""
    for pattern, kind in _COMPILED:
        if pattern.fullmatch(name):
            return kind
    return None


@dataclass(frozen=True)
class SourceMap:
    """A validated label map.

    Attributes:
        classes: structure id per voxel (uint8 or uint16), index order (i, j, k); 0 is unlabelled.
        affine: 4x4 voxel -> RAS+ mm.
        names: structure id -> name (ids present in the table, not necessarily in the array).
        source: the path it came from (for messages and ``info``).
        boxes_mm: structure id -> (lo, hi) world bounding box (RAS mm, axis-aligned) of its voxels.
    """

    classes: np.ndarray
    affine: np.ndarray
    names: dict[int, str]
    source: str
    boxes_mm: dict[int, tuple[np.ndarray, np.ndarray]]

    def id_of(self, name: str) -> int | None:
        return next((i for i, n in self.names.items() if n == name), None)


def _unknown(where: Path | str, name: str, what: str) -> InputError:
    return InputError(
        f"{where}: unknown {what} {name!r} (expected TotalSegmentator names such as liver, kidney_right, "
        "rib_left_9)"
    )


def read_class_table(path: str | Path) -> dict[int, str]:
    """``{id: name}`` from a JSON object ``{"1": "spleen", ...}``; ``InputError`` names the problem."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: class table not found")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not a readable JSON class table ({str(err).splitlines()[0]})") from None
    if isinstance(raw, dict) and isinstance(raw.get("labels"), dict):  # dataset.json style
        raw = raw["labels"]
    if not isinstance(raw, dict) or not raw:
        raise InputError(f'{path}: expected a JSON object of id -> structure name, like {{"5": "liver"}}')
    table: dict[int, str] = {}
    for key, name in raw.items():
        try:
            i = int(key)
        except (TypeError, ValueError):
            raise InputError(f"{path}: class id {key!r} is not an integer") from None
        if i == 0 or name == "background":
            continue
        if i < 0 or not isinstance(name, str):
            raise InputError(f"{path}: entry {key!r}: expected a positive id and a structure name")
        if structure_kind(name) is None:
            raise _unknown(path, name, f"class name (id {i})")
        table[i] = name
    return table


def _mask_name(path: Path) -> str:
    return io.strip_image_suffix(path.name)


def _read_folder(folder: Path, required: Sequence[str]) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith((".nii", ".nii.gz"))
    )
    if not files:
        raise InputError(f"{folder}: no masks (<structure>.nii.gz) in the folder")
    names = [_mask_name(p) for p in files]
    for path, name in zip(files, names):  # names first: fail fast, before reading 117 masks
        if structure_kind(name) is None:
            raise _unknown(path, name, "structure name")
    for organ in required:
        if organ not in names:
            raise InputError(f"{folder}: missing mask {organ}.nii.gz (the {organ} label needs it)")
    if len(files) > 65535:
        raise InputError(f"{folder}: too many masks ({len(files)})")
    first: io.Volume | None = None
    classes: np.ndarray | None = None
    table: dict[int, str] = {}
    for i, (path, name) in enumerate(zip(files, names), start=1):
        vol = io.read_image(path, kind="mask")
        if first is None:
            first = vol
            classes = np.zeros(vol.shape, np.uint8 if len(files) < 256 else np.uint16)
        elif not io.same_grid(vol, first):
            raise InputError(
                f"{path}: grid differs from {files[0].name} (shape {list(vol.shape)} vs {list(first.shape)}"
                f", spacing {[round(s, 3) for s in vol.spacing_mm]} vs {[round(s, 3) for s in first.spacing_mm]})"
            )
        mask = vol.array
        top = int(mask.max())
        if top > 1:
            raise InputError(f"{path}: not a binary mask (values up to {top}; expected 0 and 1)")
        mask = mask.astype(bool, copy=False)
        n = int(np.count_nonzero(mask))
        if n == 0:
            if name in required:
                raise InputError(f"{path}: empty mask (no voxels), but the {name} label needs it")
            continue
        clash = classes[mask]
        taken = np.flatnonzero(clash)
        if taken.size:
            other = files[int(clash[taken[0]]) - 1].name
            raise InputError(f"{path}: overlaps {other} in {taken.size} voxels (masks must not overlap)")
        classes[mask] = i
        table[i] = name
        del vol, mask, clash
    assert first is not None and classes is not None
    return classes, first.affine, table


def _read_multilabel(path: Path, classes_path: Path | None, required: Sequence[str]):
    if classes_path is None:
        raise InputError(
            f"{path}: a multilabel map needs its class table (--classes classes.json, id -> structure name)"
        )
    table = read_class_table(classes_path)
    vol = io.read_image(path, kind="mask")
    counts = np.bincount(vol.array.ravel())
    present = np.flatnonzero(counts)
    unknown = [int(v) for v in present if v and int(v) not in table]
    if unknown:
        raise InputError(f"{path}: label values {unknown[:8]} are not in the class table {classes_path}")
    for organ in required:
        ids = [i for i, n in table.items() if n == organ]
        if not ids:
            raise InputError(f"{classes_path}: no class named {organ!r} (the {organ} label needs it)")
        if ids[0] >= len(counts) or counts[ids[0]] == 0:
            raise InputError(f"{path}: no voxels of {organ} (id {ids[0]}), but the {organ} label needs it")
    array = vol.array
    if array.dtype.itemsize > 2 and int(present.max()) < 65536:
        array = array.astype(np.uint16)
    return array, vol.affine, table


def _boxes(classes: np.ndarray, affine: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """World (RAS mm) bounding box of each id present, from its voxel bounding box (8 corners)."""
    out = {}
    for i, sl in enumerate(ndimage.find_objects(classes), start=1):
        if sl is None:
            continue
        lo = np.array([s.start for s in sl], float)
        hi = np.array([s.stop - 1 for s in sl], float)
        corners = np.array([[*c, 1.0] for c in itertools.product(*zip(lo, hi))])
        world = (affine @ corners.T)[:3].T
        out[i] = (world.min(axis=0), world.max(axis=0))
    return out


def read_label_map(
    path: str | Path, classes: str | Path | None = None, required: Sequence[str] = ()
) -> SourceMap:
    """Read and validate a label map (a folder of masks, or a multilabel file with ``classes``).

    Args:
        path: folder of ``<structure>.nii.gz`` binary masks, or a multilabel NIfTI/NRRD/MHA file.
        classes: the class table JSON (id -> name) of a multilabel file; ignored for a folder.
        required: structure names that must be present with at least one voxel (the output organs).

    Raises:
        InputError: ``"<file>: <problem>"`` (missing, empty, non-binary, differently gridded or
            overlapping mask; unknown name; multilabel file without class table).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such label-map file or folder")
    if path.is_dir():
        array, affine, table = _read_folder(path, required)
    else:
        array, affine, table = _read_multilabel(path, None if classes is None else Path(classes), required)
    return SourceMap(array, np.asarray(affine, float), table, str(path), _boxes(array, affine))


@functools.lru_cache(maxsize=4)
def _cached(path: str, classes: str | None, required: tuple[str, ...], stamp: tuple) -> SourceMap:
    return read_label_map(path, classes, required)


def _stamp(p: str | None) -> tuple:
    if p is None:
        return ()
    try:
        st = Path(p).stat()
    except OSError:
        return ()
    return (st.st_mtime_ns, st.st_size)


def load_label_map(
    path: str | Path, classes: str | Path | None = None, required: Sequence[str] = ()
) -> SourceMap:
    """``read_label_map`` with a per-process cache (a few maps; keyed by path and modification time).

    Training draws many samples from the same few maps; each worker process reads a map once.
    """
    c = None if classes in (None, "") else str(classes)
    return _cached(str(path), c, tuple(required), (_stamp(str(path)), _stamp(c)))
