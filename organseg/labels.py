"""Label maps: organ names and ids, other datasets' conventions, and mapping their values to ours.

This is the one home of everything about label *values*:

- ``LabelMap``: our ids and names (``0 background, 1 liver, 2 kidney_right, 3 kidney_left, 4 spleen`` by
  default), colours and the left/right pairs a mirror swaps;
- ``LABEL_PRESETS``: other conventions (TotalSegmentator, FLARE22) as ``{their id: organ name}``;
- ``parse_label_map``: the one parser of ``"src:dst,..."`` specs, preset names and dicts;
- ``mapping_from_names``: a dataset's own label names (``"Right Kidney"``) matched to ours;
- ``remap_labels``: the one remapping of an array through ``{source id: our id}``;
- ``unexpected_label_values`` / ``describe_unexpected``: the one rule for values a mapping does not name;
- ``label_voxel_counts``: voxels per label id (class frequencies for the loss).

Policy for unexpected label values: ``remap_labels`` turns every value the mapping does not name into
background, so it is never silent about *what* it maps. A value is *unexpected* when the mapping does not
name it, it is not 0 and the dataset did not declare it. Training refuses a case with unexpected values
(``InputError``: a typo in a label map must not train a model on missing organs); ``organseg check``
(``datasets.load_dataset``) lists them as a warning with the same wording, and ``evaluate`` warns. A preset
lists only the organs it knows (TotalSegmentator has 117 structures), so under a preset other values are
expected and become background.

Example:
    >>> parse_label_map("5:liver,1:spleen")
    {5: 1, 1: 4}
    >>> remap_labels(np.array([0, 1, 5, 7]), {5: 1, 1: 4}).tolist()
    [0, 4, 1, 0]
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from organseg.errors import ConfigError, InputError

#: The organs organseg segments, spelled as TotalSegmentator spells them.
ORGANS: tuple[str, ...] = ("liver", "kidney_right", "kidney_left", "spleen")

#: One fixed colour (RGB, 0-255) per organ, shared by the label sidecar, the renderer and previews.
DEFAULT_COLORS: dict[str, tuple[int, int, int]] = {
    "background": (0, 0, 0),
    "liver": (221, 130, 101),
    "kidney_right": (70, 130, 230),
    "kidney_left": (90, 200, 110),
    "spleen": (157, 108, 162),
}
#: Colour for a label value that the label map does not know (rendered with a warning).
UNKNOWN_COLOR: tuple[int, int, int] = (160, 160, 160)

#: Label ids of other label conventions, mapped to organ names (ids not listed are background).
LABEL_PRESETS: dict[str, dict[int, str]] = {
    "totalsegmentator": {1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver"},
    "flare22": {1: "liver", 2: "kidney_right", 3: "spleen", 13: "kidney_left"},
    "organseg": {1: "liver", 2: "kidney_right", 3: "kidney_left", 4: "spleen"},
}


@dataclass(frozen=True)
class LabelMap:
    """Label values and names: ``names[i]`` is the name of label value ``i``; ``names[0]`` is background."""

    names: tuple[str, ...] = ("background",) + ORGANS

    @property
    def num_classes(self) -> int:
        """Softmax channels: background plus one per organ."""
        return len(self.names)

    @property
    def organs(self) -> tuple[str, ...]:
        return self.names[1:]

    def id_of(self, name: str) -> int:
        return self.names.index(name)

    def color_of(self, name: str) -> tuple[int, int, int]:
        return DEFAULT_COLORS.get(name, UNKNOWN_COLOR)

    @property
    def lr_swap_pairs(self) -> tuple[tuple[int, int], ...]:
        """Pairs of label ids that trade places under a left-right mirror (``*_right`` <-> ``*_left``)."""
        pairs = []
        for i, name in enumerate(self.names):
            if name.endswith("_right"):
                other = name[: -len("_right")] + "_left"
                if other in self.names:
                    pairs.append((i, self.names.index(other)))
        return tuple(pairs)

    def to_dict(self) -> dict[int, str]:
        return {i: n for i, n in enumerate(self.names)}

    def describe(self) -> str:
        """``"0 background, 1 liver, ..."`` for messages."""
        return ", ".join(f"{i} {name}" for i, name in enumerate(self.names))


def parse_label_map(
    spec: str | Mapping | None, labels: LabelMap = LabelMap(), what: str = "ref_map"
) -> dict[int, int]:
    """Turn a label-map spec into ``{source id: our id}`` (ids not listed become background).

    Args:
        spec: ``None`` (the source already uses ``labels``' ids), a preset name from ``LABEL_PRESETS``
            (``"totalsegmentator"``; its organs that ``labels`` lacks are left out), a string
            ``"src:dst,..."`` where ``dst`` is an organ name or one of our ids (``"5:liver,1:spleen"``,
            ``"5:1,1:4"``), or a dict of the same.
        labels: our label map (the target ids).
        what: the option's name, used in error messages.

    Raises:
        ConfigError: a malformed spec, a name ``labels`` does not have, or an id outside it.

    Example:
        >>> parse_label_map("totalsegmentator")
        {1: 4, 2: 2, 3: 3, 5: 1}
    """
    if spec is None:
        return {i: i for i in range(1, labels.num_classes)}
    if isinstance(spec, str):
        text = spec.strip()
        if text.lower() in LABEL_PRESETS:
            preset = LABEL_PRESETS[text.lower()]
            pairs: dict = {v: n for v, n in preset.items() if n in labels.names}
        else:
            pairs = {}
            for item in filter(None, (p.strip() for p in text.split(","))):
                if ":" not in item:
                    known = ", ".join(LABEL_PRESETS)
                    raise ConfigError(f"{what}: expected a preset ({known}) or 'src:dst,...', got {spec!r}")
                src, dst = (s.strip() for s in item.split(":", 1))
                pairs[src] = dst
    elif isinstance(spec, Mapping):
        pairs = dict(spec)
    else:
        raise ConfigError(
            f"{what}: expected a preset name, 'src:dst,...' or a mapping, got {type(spec).__name__}"
        )
    if not pairs:
        raise ConfigError(f"{what}: the label map {spec!r} is empty")
    out: dict[int, int] = {}
    for src, dst in pairs.items():
        try:
            src_id = int(src)
        except (TypeError, ValueError):
            raise ConfigError(f"{what}: source label {src!r} is not an integer") from None
        if isinstance(dst, str) and not dst.strip().lstrip("-").isdigit():
            name = dst.strip()
            if name not in labels.names:
                raise ConfigError(f"{what}: {name!r} is not one of {', '.join(labels.names)}")
            dst_id = labels.id_of(name)
        else:
            dst_id = int(dst)
            if not 0 <= dst_id < labels.num_classes:
                raise ConfigError(f"{what}: target id {dst_id} is outside 0..{labels.num_classes - 1}")
        out[src_id] = dst_id
    return out


def organ_name(name: str) -> str:
    """Normalize a dataset's label name to organseg spelling: ``'Right Kidney'`` -> ``'kidney_right'``."""
    name = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    name = re.sub(r"_r$", "_right", re.sub(r"_l$", "_left", name))
    match = re.fullmatch(r"(right|left)_(.+)", name)
    return f"{match.group(2)}_{match.group(1)}" if match else name


def mapping_from_names(names: Mapping[int, str], labels: LabelMap) -> dict[int, int]:
    """``{source id: our id}`` from a dataset's own label names (``Liver``, ``right kidney``, ``kidney_R``).

    Names that are none of ``labels``' organs are left out (they become background).
    """
    mapping = {}
    for value, name in names.items():
        organ = organ_name(name)
        if organ in labels.names:
            mapping[int(value)] = labels.id_of(organ)
    return mapping


def remap_labels(array: np.ndarray, mapping: Mapping[int, int], source: str = "<mask>") -> np.ndarray:
    """``array`` with ids replaced by ``mapping`` (unmapped ids -> 0), as uint8.

    Raises:
        InputError: fractional or negative values (not a label mask), naming ``source``.
    """
    arr = np.asarray(array)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise InputError(f"{source}: a label mask must hold whole numbers, found fractional values")
        arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise InputError(f"{source}: a label mask must not hold negative values (found {int(arr.min())})")
    top = int(arr.max()) if arr.size else 0
    lut = np.zeros(max(top, max(mapping, default=0)) + 1, dtype=np.uint8)
    for src, dst in mapping.items():
        if src >= 0:
            lut[src] = dst
    return lut[arr]


def present_values(array: np.ndarray) -> list[int]:
    """The distinct values of an integer label array, ascending."""
    if array.dtype in (np.uint8, np.uint16):
        return [int(v) for v in np.flatnonzero(np.bincount(array.ravel()))]
    return [int(v) for v in np.unique(array)]


def unexpected_label_values(
    array: np.ndarray, mapping: Mapping[int, int], declared: Iterable[int] = ()
) -> list[int]:
    """Values of ``array`` that are not 0, not in ``mapping`` and not ``declared`` by the dataset."""
    expected = set(mapping) | {0} | {int(v) for v in declared}
    return sorted(set(present_values(array)) - expected)


def describe_unexpected(values: Sequence[int], labels: LabelMap) -> str:
    """The one wording for unexpected label values (``check`` warns with it, training raises it)."""
    shown = ", ".join(map(str, values[:10])) + (", ..." if len(values) > 10 else "")
    return (
        f"label values [{shown}] are not in the label map ({labels.describe()}); "
        "set data.label_map or data.label_preset"
    )


def label_voxel_counts(labels: Iterable[np.ndarray], num_classes: int) -> np.ndarray:
    """Voxels per label value (index = label id) summed over ``labels``; values >= num_classes are ignored.

    ``labels`` are integer arrays or torch tensors (moved to the CPU here).
    """
    counts = np.zeros(num_classes, dtype=np.int64)
    for lab in labels:
        arr = lab.detach().cpu().numpy() if hasattr(lab, "detach") else np.asarray(lab)
        arr = arr.astype(np.int64, copy=False).ravel()
        counts += np.bincount(arr[(arr >= 0) & (arr < num_classes)], minlength=num_classes)
    return counts
