"""Labelled dataset layouts, label remapping to organseg ids, and case-level k-fold splits.

Four layouts are found on disk (``find_cases``):

- ``msd``: ``dataset.json``, ``imagesTr/<case>[_0000].nii.gz``, ``labelsTr/<case>.nii.gz`` (Medical
  Segmentation Decathlon and nnU-Net). Label names in ``dataset.json`` are used when they are organ names.
- ``flare22``: ``images/<case>_0000.nii.gz``, ``labels/<case>.nii.gz`` (set ``data.label_preset: flare22``).
- ``totalsegmentator``: ``<case>/ct.nii.gz`` (or ``<case>/dicom/``) with ``<case>/segmentations/<organ>.nii.gz``
  combined into one label map, or a multilabel ``<case>/seg*.nii.gz`` with TotalSegmentator ids.
- ``plain``: ``images/<name>`` and ``labels/<name>`` with matching names.

Label values of a dataset are mapped to ``cfg.labels`` ids by ``label_mapping`` and ``labels.remap_labels``:
``cfg.data.label_map`` first, then ``cfg.data.label_preset``, then names declared by the dataset itself, else
the values are taken as organseg ids. Unmapped values become background; values the mapping does not name
follow ``organseg.labels``' policy (reported here, refused by training).

``load_dataset`` checks every case cheaply (grids from headers only) and reports problems per case
instead of crashing; it raises ``InputError`` only when no usable image/label pair is left.

Example:
    >>> report = load_dataset("data/phantoms", cfg)
    >>> print(report.summary())
    >>> splits = kfold_splits([c.name for c in report.cases], k=5, seed=0)
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from organseg import io
from organseg.config import Config
from organseg.errors import ConfigError, InputError
from organseg.geometry import resample_to_grid, same_voxel_centres
from organseg.labels import (
    LABEL_PRESETS,
    describe_unexpected,
    mapping_from_names,
    parse_label_map,
    present_values,
    remap_labels,
    unexpected_label_values,
)

LAYOUTS = ("msd", "flare22", "totalsegmentator", "plain")
_LOOKED_FOR = (
    "MSD (dataset.json, imagesTr/, labelsTr/), FLARE22 (images/*_0000.nii.gz, labels/), "
    "TotalSegmentator (<case>/ct.nii.gz with segmentations/ or seg*.nii.gz), plain (images/, labels/)"
)
#: Multilabel file names of the TotalSegmentator layout, most specific first.
_TOTALSEG_LABEL_NAMES = ("seg.nii.gz", "seg_totalsegmentator.nii.gz", "segmentation.nii.gz", "seg.nii")


@dataclass(frozen=True)
class Case:
    """One image and its label.

    Attributes:
        name: case id, unique within the dataset (used for splits).
        image: image file, or DICOM folder.
        label: label file; a ``segmentations/`` folder of per-organ masks (TotalSegmentator); ``None`` if missing.
        layout: the layout it was found in.
        label_names: label value -> name, as declared by the dataset (MSD ``dataset.json``, TotalSegmentator
            ids); empty when the dataset does not say.
    """

    name: str
    image: Path
    label: Path | None
    layout: str = "plain"
    label_names: tuple[tuple[int, str], ...] = field(default=(), compare=False, repr=False)


@dataclass
class DatasetReport:
    """What ``load_dataset`` found: the usable cases, and the problems of the others.

    Attributes:
        root: the dataset folder.
        layout: the layout it was read as.
        cases: usable cases (image and label present, same grid).
        problems: case name -> problems that make the case unusable (it is left out).
        warnings: non-fatal notes, ``"<case>: <note>"`` or dataset-wide.
    """

    root: Path
    layout: str
    cases: list[Case]
    problems: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for the log: counts, then each skipped case and each warning."""
        lines = [
            f"{self.root}: {self.layout} layout, {len(self.cases)} usable cases, {len(self.problems)} skipped"
        ]
        lines += [f"  skipped {name}: {'; '.join(found)}" for name, found in sorted(self.problems.items())]
        lines += [f"  warning {note}" for note in self.warnings]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------- finding cases


def find_cases(root: str | Path, layout: str = "auto") -> list[Case]:
    """All cases under ``root`` in the given layout (``auto`` detects it), sorted by name.

    Images without a label are returned with ``label=None`` (``check_case`` reports them); labels
    without an image are returned with a missing image path. Raises ``InputError`` when ``root`` is not
    a folder or holds none of the layouts.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found")
    if layout == "auto":
        layout = detect_layout(root)
    finders = {
        "msd": _find_msd,
        "flare22": _find_paired,
        "plain": _find_paired,
        "totalsegmentator": _find_totalseg,
    }
    if layout not in finders:
        raise ConfigError(f"data.layout: unknown layout {layout!r} (known: auto, {', '.join(LAYOUTS)})")
    cases = finders[layout](root, layout)
    names = [c.name for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(
            f"{root}: several images for case(s) {', '.join(duplicates)} (e.g. .nii and .nii.gz)"
        )
    return sorted(cases, key=lambda c: c.name)


def detect_layout(root: Path) -> str:
    """The layout of ``root``: ``msd``, ``flare22``, ``totalsegmentator`` or ``plain``; else ``InputError``."""
    if (root / "dataset.json").is_file() or (root / "imagesTr").is_dir():
        return "msd"
    if (root / "images").is_dir() and (root / "labels").is_dir():
        stems = [io.strip_image_suffix(p.name) for p in _image_files(root / "images")]
        return "flare22" if stems and all(s.endswith("_0000") for s in stems) else "plain"
    if _ct_image(root) is not None or any(_ct_image(d) is not None for d in _subdirs(root)):
        return "totalsegmentator"
    raise InputError(f"{root}: no dataset found; looked for {_LOOKED_FOR}")


def _image_files(folder: Path) -> list[Path]:
    """Image files in ``folder`` (no hidden files, no macOS ``._`` resource forks)."""
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if not p.name.startswith(".") and p.name.lower().endswith(io.IMAGE_SUFFIXES) and not p.is_dir()
    )


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _case_name(image: Path) -> str:
    """``io.case_name`` without the MSD channel suffix (``case_0000.nii.gz`` -> ``case``)."""
    return io.case_name(image).removesuffix("_0000")


def _find_paired(root: Path, layout: str, images: str = "images", labels: str = "labels") -> list[Case]:
    image_dir, label_dir = root / images, root / labels
    if not image_dir.is_dir():
        raise InputError(f"{root}: {layout} layout needs an {images}/ folder")
    image_files = [
        p for p in _image_files(image_dir) if not re.search(r"_000[1-9]$", io.strip_image_suffix(p.name))
    ]
    label_files = {io.strip_image_suffix(p.name): p for p in _image_files(label_dir)}
    cases = []
    for image in image_files:
        name = _case_name(image)
        cases.append(Case(name, image, label_files.pop(name, None), layout))
    for name, label in label_files.items():  # labels without an image
        missing = f"{name}.nii.gz" if layout == "plain" else f"{name}_0000.nii.gz"
        cases.append(Case(name, image_dir / missing, label, layout))
    return cases


def _find_msd(root: Path, layout: str) -> list[Case]:
    meta_path = root / "dataset.json"
    meta: dict = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"{meta_path}: not valid JSON ({err})") from None
        if not isinstance(meta, dict):
            raise InputError(f"{meta_path}: expected a JSON object")
    names = _msd_label_names(meta.get("labels"))
    training = meta.get("training")
    if isinstance(training, list) and training:
        cases = []
        for entry in training:
            if not isinstance(entry, dict) or "image" not in entry:
                raise InputError(f"{meta_path}: each 'training' entry needs an 'image' (and 'label') path")
            image = _msd_image(root / entry["image"])
            label = root / entry["label"] if entry.get("label") else None
            cases.append(
                Case(_case_name(image), image, label if label and label.exists() else None, layout, names)
            )
        return cases
    return [
        Case(c.name, c.image, c.label, layout, names)
        for c in _find_paired(root, layout, images="imagesTr", labels="labelsTr")
    ]


def _msd_image(path: Path) -> Path:
    """MSD lists ``imagesTr/x.nii.gz`` where nnU-Net conversions store ``imagesTr/x_0000.nii.gz``."""
    if path.exists():
        return path
    stem = io.strip_image_suffix(path.name)
    suffix = path.name[len(stem) :]
    alternative = path.with_name(f"{stem}_0000{suffix}")
    return alternative if alternative.exists() else path


def _msd_label_names(labels: object) -> tuple[tuple[int, str], ...]:
    """``{"0": "background", "1": "liver"}`` (MSD) or ``{"background": 0, "liver": 1}`` (nnU-Net v2)."""
    if not isinstance(labels, dict):
        return ()
    pairs = []
    for key, value in labels.items():
        try:
            if isinstance(value, int) and not isinstance(value, bool):
                pairs.append((int(value), str(key)))
            else:
                pairs.append((int(key), str(value)))
        except (TypeError, ValueError):
            continue  # region-based nnU-Net labels (lists of ids) carry no single id
    return tuple(sorted(pairs))


def _ct_image(folder: Path) -> Path | None:
    for name in ("ct.nii.gz", "ct.nii", "ct.nrrd", "ct.mha"):
        if (folder / name).is_file():
            return folder / name
    if (folder / "dicom").is_dir():
        return folder / "dicom"
    return None


def _find_totalseg(root: Path, layout: str) -> list[Case]:
    folders = (
        [root] if _ct_image(root) is not None else [d for d in _subdirs(root) if _ct_image(d) is not None]
    )
    if not folders:
        raise InputError(f"{root}: totalsegmentator layout needs <case>/ct.nii.gz folders")
    totalseg_names = tuple(sorted(LABEL_PRESETS["totalsegmentator"].items()))
    cases = []
    for folder in folders:
        image = _ct_image(folder)
        seg_dir = folder / "segmentations"
        if seg_dir.is_dir():
            cases.append(Case(folder.name, image, seg_dir, layout))
            continue
        label = next((folder / n for n in _TOTALSEG_LABEL_NAMES if (folder / n).is_file()), None)
        if label is None:
            candidates = sorted(p for p in folder.glob("seg*.nii*") if p.is_file())
            label = candidates[0] if candidates else None
        cases.append(Case(folder.name, image, label, layout, totalseg_names))
    return cases


# --------------------------------------------------------------------------------------- labels


def label_mapping(cfg: Config, names: Mapping[int, str] | Sequence[tuple[int, str]] = ()) -> dict[int, int]:
    """Source label value -> organseg label id (values not listed are background).

    Priority: ``cfg.data.label_map`` (explicit), ``cfg.data.label_preset``, ``names`` declared by the
    dataset (matched to ``cfg.labels`` by name: ``Liver``, ``right kidney``, ``kidney_R`` all work), else
    the identity on ``cfg.labels`` ids. The parsing and matching are ``organseg.labels``'.
    """
    labels = cfg.labels
    if cfg.data.label_map:
        return parse_label_map(cfg.data.label_map, labels, "data.label_map")
    if cfg.data.label_preset:
        return parse_label_map(cfg.data.label_preset, labels, "data.label_preset")
    pairs = dict(names)
    if pairs:
        return mapping_from_names(pairs, labels)
    return {i: i for i in range(labels.num_classes)}


def unexpected_values(case: Case, cfg: Config, raw: np.ndarray) -> list[int]:
    """Values of a case's raw label file that its mapping does not name (``organseg.labels``' policy).

    Under a preset, or in the TotalSegmentator layout (117 structures, 4 of them ours), other values are
    expected and become background, so none are unexpected.
    """
    if cfg.data.label_preset or case.layout == "totalsegmentator":
        return []
    declared = (v for v, _ in case.label_names)
    return unexpected_label_values(raw, label_mapping(cfg, case.label_names), declared)


def read_case(case: Case, cfg: Config) -> tuple[io.Volume, io.Volume]:
    """Image (``kind="ct"``) and label (uint8, organseg ids) of a case, the label on the image's grid.

    A label stored in another axis order of the same voxel centres (an LAS label for an LPS series) is
    reordered exactly in world space; a label on any other grid is an ``InputError``.
    """
    if case.label is None:
        raise InputError(f"{case.image}: case {case.name} has no label")
    image = io.read_image(case.image, kind="ct")
    label = _read_label(case, cfg, image)
    return image, label


def _read_label(case: Case, cfg: Config, image: io.Volume | io.ImageInfo) -> io.Volume:
    assert case.label is not None
    if case.label.is_dir():  # TotalSegmentator: one binary mask per organ, named like ours
        combined: np.ndarray | None = None
        for organ in cfg.labels.organs:
            path = case.label / f"{organ}.nii.gz"
            if not path.is_file():
                continue
            part = _on_grid(io.read_image(path, kind="mask"), image)
            if combined is None:
                combined = np.zeros(image.shape, dtype=np.uint8)
            combined[part.array > 0] = cfg.labels.id_of(organ)
        if combined is None:
            raise InputError(
                f"{case.label}: none of {', '.join(f'{o}.nii.gz' for o in cfg.labels.organs)} found"
            )
        return io.Volume(combined, np.array(image.affine), str(case.label), getattr(image, "header", None))
    label = _on_grid(io.read_image(case.label, kind="mask"), image)
    label.array = remap_labels(label.array, label_mapping(cfg, case.label_names), label.source)
    return label


def _on_grid(label: io.Volume, image: io.Volume | io.ImageInfo) -> io.Volume:
    if io.same_grid(label, image):
        return label
    if not same_voxel_centres(label.shape, label.affine, image.shape, image.affine):
        raise InputError(f"{label.source}: {_grid_difference(label, image)}")
    array = resample_to_grid(label.array, label.affine, image.affine, image.shape, order=0)
    return io.Volume(array, np.array(image.affine), label.source, getattr(image, "header", None))


def _grid_difference(label: io.Volume | io.ImageInfo, image: io.Volume | io.ImageInfo) -> str:
    def grid(g: io.Volume | io.ImageInfo) -> str:
        spacing = ", ".join(f"{s:.3g}" for s in g.spacing_mm)
        origin = ", ".join(f"{o:.1f}" for o in g.affine[:3, 3])
        return f"{'x'.join(map(str, g.shape))} {g.orientation} spacing ({spacing}) mm origin ({origin})"

    return f"grid differs from the image: label {grid(label)} vs image {grid(image)}"


# --------------------------------------------------------------------------------------- checking


def check_case(case: Case, cfg: Config, check_values: bool = True) -> list[str]:
    """Problems of one case, each a short sentence; empty when the case is fine.

    Grids are compared from headers only (physical geometry; a label in another axis order of the same
    voxel centres is fine). With ``check_values`` the label is read to find values the mapping does not
    expect and labels that hold none of the organs.
    """
    errors, notes = _check_case(case, cfg, check_values)
    return errors + notes


def _check_case(case: Case, cfg: Config, check_values: bool) -> tuple[list[str], list[str]]:
    """(problems that make the case unusable, notes that do not)."""
    if not case.image.exists():
        return [f"label {case.label} has no image"], []
    if case.label is None:
        return ["no label file"], []
    try:
        image = io.read_image_info(case.image)
    except InputError as err:
        return [f"image: {err}"], []
    label_files = _label_files(case, cfg)
    if not label_files:
        return [f"{case.label}: none of the organ masks ({', '.join(cfg.labels.organs)}) found"], []
    notes = []
    if case.label.is_dir() and len(label_files) < len(cfg.labels.organs):
        missing = sorted(set(cfg.labels.organs) - {p.name.split(".")[0] for p in label_files})
        notes.append(f"no mask for {', '.join(missing)} (counted as absent)")
    for path in label_files:
        try:
            info = io.read_image_info(path)
        except InputError as err:
            return [f"label: {err}"], notes
        if not io.same_grid(info, image) and not same_voxel_centres(
            info.shape, info.affine, image.shape, image.affine
        ):
            return [f"{path.name}: {_grid_difference(info, image)}"], notes
    if check_values:
        try:
            notes += _check_label_values(case, cfg, image)
        except InputError as err:
            return [f"label: {err}"], notes
    return [], notes


def _label_files(case: Case, cfg: Config) -> list[Path]:
    assert case.label is not None
    if case.label.is_dir():
        return [
            case.label / f"{o}.nii.gz" for o in cfg.labels.organs if (case.label / f"{o}.nii.gz").is_file()
        ]
    return [case.label] if case.label.is_file() else []


def _check_label_values(case: Case, cfg: Config, image: io.ImageInfo) -> list[str]:
    assert case.label is not None
    notes = []
    if case.label.is_dir():
        mapped = _read_label(case, cfg, image).array
    else:
        raw = io.read_image(case.label, kind="mask").array
        unexpected = unexpected_values(case, cfg, raw)
        if unexpected:
            why = describe_unexpected(unexpected, cfg.labels)
            notes.append(f"unexpected label values {unexpected[0]}: {why} (training refuses this case)")
        mapped = remap_labels(raw, label_mapping(cfg, case.label_names), str(case.label))
    if not set(present_values(mapped)) - {0}:
        how = _mapping_name(cfg, case)
        notes.append(
            f"label holds none of the organs ({', '.join(cfg.labels.organs)}) after mapping with {how}"
        )
    return notes


def _mapping_name(cfg: Config, case: Case) -> str:
    if cfg.data.label_map:
        return "data.label_map"
    if cfg.data.label_preset:
        return f"label_preset {cfg.data.label_preset!r}"
    if case.label_names:
        return "the dataset's label names"
    return "organseg ids (no data.label_preset set)"


def load_dataset(
    root: str | Path, cfg: Config, layout: str | None = None, check_values: bool = False
) -> DatasetReport:
    """Find and check all cases; problem cases are reported and left out, never fatal on their own.

    Args:
        root: dataset folder.
        cfg: config (``cfg.data.layout``, label mapping, ``cfg.labels``).
        layout: overrides ``cfg.data.layout``.
        check_values: also read every label to report unexpected values (slower: reads all labels).

    Raises:
        InputError: when no layout is found or no usable image/label pair is left.
    """
    root = Path(root)
    layout = layout or cfg.data.layout
    cases = find_cases(root, layout)
    found_layout = cases[0].layout if cases else (layout if layout != "auto" else detect_layout(root))
    report = DatasetReport(root=root, layout=found_layout, cases=[])
    if found_layout == "flare22" and not cfg.data.label_preset and not cfg.data.label_map:
        report.warnings.append(
            "FLARE22 layout without data.label_preset: label values are taken as organseg ids "
            "(set label_preset: flare22 for FLARE22 ids)"
        )
    for case in cases:
        errors, notes = _check_case(case, cfg, check_values)
        if errors:
            report.problems[case.name] = errors + notes
        else:
            report.cases.append(case)
        report.warnings += [f"{case.name}: {note}" for note in (notes if not errors else [])]
    if not report.cases:
        first = next(iter(report.problems.items()), None)
        detail = f"; e.g. {first[0]}: {first[1][0]}" if first else ""
        raise InputError(
            f"{root}: no usable image/label pairs ({found_layout} layout, {len(cases)} cases found{detail}); "
            f"looked for {_LOOKED_FOR}"
        )
    return report


# --------------------------------------------------------------------------------------- splits


def kfold_splits(case_names: Sequence[str], k: int, seed: int = 0) -> list[dict[str, list[str]]]:
    """Case-level k-fold splits: every case is in exactly one ``val`` list and in the other folds' ``train``.

    Deterministic for a given set of names and seed, whatever their input order: the names are ordered
    by a hash of (seed, name), so the split does not depend on numpy's RNG either. Fold sizes differ by
    at most one.

    Returns:
        ``[{"train": [...], "val": [...]}, ...]`` with ``k`` entries, names sorted within each list.
    """
    names = sorted(case_names)
    if len(set(names)) != len(names):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"case names must be unique for splitting, repeated: {', '.join(duplicates)}")
    if k < 2:
        raise ConfigError(f"train.folds: k-fold splits need at least 2 folds, got {k}")
    if k > len(names):
        raise ConfigError(f"train.folds: {k} folds need at least {k} cases, the dataset has {len(names)}")
    shuffled = sorted(names, key=lambda n: hashlib.sha256(f"{seed}:{n}".encode()).hexdigest())
    folds = [sorted(shuffled[i::k]) for i in range(k)]
    return [
        {"train": sorted(n for j, f in enumerate(folds) if j != i for n in f), "val": folds[i]}
        for i in range(k)
    ]
