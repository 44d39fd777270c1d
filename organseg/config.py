"""Typed, frozen configuration loaded from YAML, with validation that names the bad key.

A config is plain data: nested frozen dataclasses built from a YAML mapping. Unknown keys and wrong
types are errors (``ConfigError``) that name the file and the dotted key, e.g.
``configs/x.yaml: train.epochs: expected int, got 'ten'``. The resolved config is saved in every run
folder and checkpoint (``config_to_dict``), so inference never needs the YAML again.

Example:
    >>> cfg = load_config("demo")            # a config shipped in configs/
    >>> cfg.labels.num_classes
    5
    >>> cfg = replace_path(cfg, "train.epochs", 3)   # what CLI overrides use
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from organseg.errors import ConfigError

# Label maps live in organseg.labels; these names are re-exported for the modules that know them from here.
from organseg.labels import DEFAULT_COLORS, LABEL_PRESETS, ORGANS, UNKNOWN_COLOR, LabelMap  # noqa: F401

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True)
class PreprocessConfig:
    """How a CT is normalized before the network sees it (replayed exactly at inference).

    Attributes:
        orientation: axis codes the volume is reoriented to (MONAI ``Orientationd``).
        spacing_mm: target voxel size in mm along the reoriented axes (x, y, z).
        hu_window: HU range clipped and scaled to 0..1 (``normalization: window``).
        normalization: ``window`` (clip + scale) or ``zscore`` (clip, then zero mean / unit sd).
        crop_foreground: crop to the body (voxels above ``body_threshold_hu``) before patching.
        body_threshold_hu: HU above which a voxel counts as body for the crop.
        margin_mm: margin kept around the body crop.
    """

    orientation: str = "RAS"
    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 1.5)
    hu_window: tuple[float, float] = (-175.0, 250.0)
    normalization: Literal["window", "zscore"] = "window"
    crop_foreground: bool = True
    body_threshold_hu: float = -500.0
    margin_mm: float = 10.0


@dataclass(frozen=True)
class ModelConfig:
    """VNet shape: encoder filters per stage, bottleneck width, dropout in the deep stages."""

    filters: tuple[int, ...] = (16, 32, 64, 128)
    bottleneck: int = 128
    convs_per_block: int = 2
    dropout: float = 0.1
    norm: Literal["instance", "batch", "group"] = "instance"


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation.

    ``flip_lr``: ``off`` (default) never mirrors along the patient's left-right axis; ``swap`` mirrors and
    swaps the ``*_right``/``*_left`` labels. Off by default because a mirror has no label-consistent form
    for unpaired organs: it moves the liver to the left and the spleen to the right (situs inversus)
    without renaming them, so the network stops using the side to tell liver from spleen -- seen here
    as a built-in model that labelled the lateral liver "spleen". Flips along the other axes stay on.
    """

    flip_prob: float = 0.5
    flip_lr: Literal["swap", "off"] = "off"
    rotate_deg: float = 10.0
    zoom: tuple[float, float] = (0.9, 1.1)
    affine_prob: float = 0.3
    intensity_shift: float = 0.1
    intensity_scale: float = 0.1
    noise_std: float = 0.02
    intensity_prob: float = 0.5


@dataclass(frozen=True)
class LossConfig:
    """Weighted Dice + Focal (+ optional Tversky). ``class_weights``: ``auto``, ``none`` or one per class."""

    dice_weight: float = 1.0
    focal_weight: float = 1.0
    focal_gamma: float = 2.0
    class_weights: Union[str, tuple[float, ...]] = "auto"
    tversky_weight: float = 0.0
    tversky_alpha: float = 0.3
    tversky_beta: float = 0.7


#: ``SyntheticConfig`` fields that are the shares of phantoms with a ``phantom.variants.Variants`` variant.
VARIANT_FRACTIONS: tuple[str, ...] = (
    "thin_slab_fraction",
    "arms_fraction",
    "table_fraction",
    "truncation_fraction",
    "bowel_contrast_fraction",
    "extreme_organs_fraction",
    "fluid_bowel_fraction",
)


@dataclass(frozen=True)
class SyntheticConfig:
    """On-the-fly phantom generation during training (the built-in model is trained this way)."""

    enabled: bool = False
    cases_per_epoch: int = 32
    val_cases: int = 4
    seed: int = 1000
    pool_size: int = 16
    refresh_per_epoch: int = 4
    perirenal_fat: bool = False  # phantom kidneys wrapped in fat (``phantom.generate_case(perirenal_fat)``)
    workers: int = 0  # processes that generate phantoms ahead of the epoch that needs them (0: in-process)
    wild_fraction: float = 0.0  # share of phantoms with every tissue's HU drawn independently (phase "wild")
    # label-map training mix (``phantom.labelmaps``): this share of the pool is rendered from these maps
    # (folders of <structure>.nii.gz masks, or multilabel files with the class table label_map_classes)
    label_maps: tuple[str, ...] = ()
    label_map_classes: str = ""  # JSON id -> structure name, for multilabel files
    label_map_fraction: float = 0.0
    # fields of view and bodies users meet (``phantom.variants.Variants``): the share of phantoms that get each
    thin_slab_fraction: float = 0.0  # a 20-60 mm slab through the organs
    arms_fraction: float = 0.0  # arms beside the body
    table_fraction: float = 0.0  # the CT table always in view
    truncation_fraction: float = 0.0  # body wider than the field of view
    rotation_deg: float = 0.0  # patients turned by up to this angle about z (0-45)
    bowel_contrast_fraction: float = 0.0  # positive oral contrast in bowel beside the spleen
    extreme_organs_fraction: float = 0.0  # small or very large liver and spleen
    fluid_bowel_fraction: float = 0.0  # fluid-filled, gas-poor bowel packed under the liver


@dataclass(frozen=True)
class TrainConfig:
    """Training loop settings. Epochs count passes over ``steps_per_epoch`` batches."""

    patch_size: tuple[int, int, int] = (128, 128, 128)
    batch_size: int = 2
    samples_per_volume: int = 2
    pos_neg_ratio: float = 2.0
    epochs: int = 300
    steps_per_epoch: int = 0
    lr: float = 1e-3
    weight_decay: float = 1e-5
    warmup_epochs: int = 5
    schedule: Literal["cosine", "poly", "constant"] = "cosine"
    grad_clip: float = 12.0
    val_every: int = 5
    early_stop_patience: int = 50
    folds: int = 5
    seed: int = 0
    cache: Literal["memory", "disk", "none"] = "memory"
    num_workers: int = 0
    amp: bool = True
    init_weights: str = ""  # a model (.safetensors, or a run/checkpoint) whose weights start training
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass(frozen=True)
class PostprocessConfig:
    largest_component: bool = True
    fill_holes: bool = True
    # organs only inside the trunk (the body's largest connected piece): arms, the table and other pieces
    # separated from it by air cannot hold an organ
    trunk_only: bool = True
    # an organ whose whole mask is smaller than this (ml) is a speck, not an organ: dropped (0: keep all)
    min_volume_ml: float = 1.0


@dataclass(frozen=True)
class InferConfig:
    """Sliding-window settings. ``patch_size`` empty means the training patch size."""

    patch_size: tuple[int, ...] = ()
    overlap: float = 0.5
    sw_batch_size: int = 1
    blend: Literal["gaussian", "constant"] = "gaussian"
    # How a window that sticks out of the body crop (a thin slab, a small field of view) is filled.
    # "replicate" repeats the edge voxels, so the window still looks like anatomy; "constant" fills it
    # with 0 (the bottom of the HU window), a uniform block that dominates the window's instance-norm
    # statistics. On the real example CT (30 slices at 3 mm) replicate moved the built-in model's liver
    # from 0.902 to 0.932 Dice (BENCHMARKS.md, "Window padding").
    padding: Literal["replicate", "constant"] = "replicate"
    tta: bool = False
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)


@dataclass(frozen=True)
class DataConfig:
    """Where the labelled dataset is and how its label values map to ours.

    ``label_preset`` names a convention in ``LABEL_PRESETS``; ``label_map`` maps source values to our
    organ names explicitly (``{13: kidney_left}``); values not mapped become background.
    """

    root: str = ""
    layout: Literal["auto", "msd", "flare22", "totalsegmentator", "plain"] = "auto"
    label_preset: str = ""
    label_map: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    task: str = "abdomen"
    labels: LabelMap = field(default_factory=LabelMap)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    data: DataConfig = field(default_factory=DataConfig)

    @property
    def infer_patch_size(self) -> tuple[int, ...]:
        return tuple(self.infer.patch_size) or tuple(self.train.patch_size)


# --------------------------------------------------------------------------------------- parsing


def _fail(source: str, key: str, problem: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: {problem}")


def _convert(value: Any, tp: Any, source: str, key: str) -> Any:
    """Check ``value`` against the type hint ``tp`` and convert YAML lists to tuples."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _fail(source, key, f"expected a mapping, got {value!r}")
        return build_dataclass(tp, value, source, key)
    if origin is Literal:
        if isinstance(value, bool) and ("off" if not value else "on") in args:
            value = "on" if value else "off"  # YAML 1.1 reads a bare off/on as a boolean
        if value not in args:
            raise _fail(source, key, f"expected one of {list(args)}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        for option in args:
            try:
                return _convert(value, option, source, key)
            except ConfigError:
                continue
        raise _fail(source, key, f"value {value!r} fits none of the allowed types")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _fail(source, key, f"expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], source, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise _fail(source, key, f"expected {len(args)} values, got {len(value)}")
        return tuple(_convert(v, a, source, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(source, key, f"expected a mapping, got {value!r}")
        kt, vt = args
        out = {}
        for k, v in value.items():
            if kt is int and isinstance(k, str) and k.lstrip("-").isdigit():
                k = int(k)  # JSON turns integer keys into strings
            out[_convert(k, kt, source, f"{key}.{k}")] = _convert(v, vt, source, f"{key}.{k}")
        return out
    if tp is bool:
        if not isinstance(value, bool):
            raise _fail(source, key, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(source, key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(source, key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _fail(source, key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {key}")  # a bug in this module, not user input


def _labels_from(value: Any, source: str, key: str) -> LabelMap:
    if not isinstance(value, dict) or not value:
        raise _fail(
            source, key, "expected a mapping of label value to organ name, e.g. {0: background, 1: liver}"
        )
    try:
        items = sorted((int(k), v) for k, v in value.items())
    except (TypeError, ValueError):
        raise _fail(source, key, "label values must be integers") from None
    ids = [i for i, _ in items]
    if ids != list(range(len(ids))):
        raise _fail(source, key, f"label values must be 0..N-1 without gaps, got {ids}")
    names = [n for _, n in items]
    if names[0] != "background":
        raise _fail(source, f"{key}.0", f"label 0 must be 'background', got {names[0]!r}")
    for i, n in items:
        if not isinstance(n, str) or not n.isidentifier():
            raise _fail(source, f"{key}.{i}", f"expected a snake_case name, got {n!r}")
    if len(set(names)) != len(names):
        raise _fail(source, key, "label names must be unique")
    return LabelMap(names=tuple(names))


def build_dataclass(cls: type, data: dict, source: str, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in known:
            raise _fail(source, key, f"unknown key (allowed: {', '.join(sorted(known))})")
        if hints[k] is LabelMap:
            kwargs[k] = v if isinstance(v, LabelMap) else _labels_from(v, source, key)
        else:
            kwargs[k] = _convert(v, hints[k], source, key)
    obj = cls(**kwargs)
    _check_values(obj, source, prefix)
    return obj


def _check_values(obj: Any, source: str, prefix: str) -> None:
    """Range checks that types alone cannot express."""

    def bad(key: str, problem: str) -> ConfigError:
        return _fail(source, f"{prefix}.{key}" if prefix else key, problem)

    if isinstance(obj, PreprocessConfig):
        if any(s <= 0 for s in obj.spacing_mm):
            raise bad("spacing_mm", f"spacings must be > 0 mm, got {list(obj.spacing_mm)}")
        if obj.hu_window[0] >= obj.hu_window[1]:
            raise bad("hu_window", f"lower bound must be below upper bound, got {list(obj.hu_window)}")
        if len(obj.orientation) != 3 or set(obj.orientation) - set("RLAPSI"):
            raise bad("orientation", f"expected three axis codes like RAS, got {obj.orientation!r}")
    elif isinstance(obj, TrainConfig):
        if any(p < 8 for p in obj.patch_size):
            raise bad("patch_size", f"each side must be >= 8 voxels, got {list(obj.patch_size)}")
        for name in ("batch_size", "samples_per_volume", "epochs", "val_every", "folds"):
            if getattr(obj, name) < 1:
                raise bad(name, f"must be >= 1, got {getattr(obj, name)}")
        if obj.lr <= 0:
            raise bad("lr", f"must be > 0, got {obj.lr}")
        if obj.num_workers < 0:
            raise bad("num_workers", f"must be >= 0, got {obj.num_workers}")
    elif isinstance(obj, SyntheticConfig):
        if obj.workers < 0:
            raise bad("workers", f"must be >= 0, got {obj.workers}")
        if not 0 <= obj.wild_fraction <= 1:
            raise bad("wild_fraction", f"must be in [0, 1], got {obj.wild_fraction}")
        if not 0 <= obj.label_map_fraction <= 1:
            raise bad("label_map_fraction", f"must be in [0, 1], got {obj.label_map_fraction}")
        for name in VARIANT_FRACTIONS:
            if not 0 <= getattr(obj, name) <= 1:
                raise bad(name, f"must be in [0, 1], got {getattr(obj, name)}")
        if not 0 <= obj.rotation_deg <= 45:
            raise bad("rotation_deg", f"must be in [0, 45] degrees, got {obj.rotation_deg}")
    elif isinstance(obj, InferConfig):
        if not 0 <= obj.overlap < 1:
            raise bad("overlap", f"must be in [0, 1), got {obj.overlap}")
        if obj.patch_size and len(obj.patch_size) != 3:
            raise bad("patch_size", f"expected 3 sizes or an empty list, got {list(obj.patch_size)}")
    elif isinstance(obj, ModelConfig):
        if not obj.filters or any(f < 1 for f in obj.filters):
            raise bad("filters", f"expected positive filter counts, got {list(obj.filters)}")
        if not 0 <= obj.dropout < 1:
            raise bad("dropout", f"must be in [0, 1), got {obj.dropout}")
    elif isinstance(obj, LossConfig):
        if isinstance(obj.class_weights, str) and obj.class_weights not in ("auto", "none"):
            raise bad("class_weights", f"expected 'auto', 'none' or a list, got {obj.class_weights!r}")
    elif isinstance(obj, DataConfig):
        if obj.label_preset and obj.label_preset not in LABEL_PRESETS:
            raise bad(
                "label_preset", f"unknown preset {obj.label_preset!r} (known: {', '.join(LABEL_PRESETS)})"
            )
    elif isinstance(obj, Config):
        if (
            isinstance(obj.loss.class_weights, tuple)
            and len(obj.loss.class_weights) != obj.labels.num_classes
        ):
            raise _fail(
                source,
                "loss.class_weights",
                f"expected {obj.labels.num_classes} weights (one per label), got {len(obj.loss.class_weights)}",
            )
        for v, name in obj.data.label_map.items():
            if name not in obj.labels.names:
                raise _fail(
                    source,
                    f"data.label_map.{v}",
                    f"{name!r} is not in labels ({', '.join(obj.labels.names)})",
                )


def config_from_dict(data: dict, source: str = "<config>") -> Config:
    """Build and validate a ``Config`` from a plain mapping; ``source`` names it in errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a YAML mapping at the top level, got {type(data).__name__}")
    return build_dataclass(Config, data, source)


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A path to a YAML file, or the name of one shipped in ``configs/`` (``demo`` -> configs/demo.yaml)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return CONFIG_DIR / f"{name_or_path}.yaml"


def load_config(name_or_path: str | Path = "abdomen") -> Config:
    """Load a config from a YAML file or by the name of a shipped config."""
    path = resolve_config_path(name_or_path)
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise ConfigError(f"{path}: config file not found (shipped configs: {shipped})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{path}: not valid YAML ({first})") from None
    return config_from_dict(data or {}, str(path))


def config_to_dict(cfg: Any) -> Any:
    """Plain-data form of a config (lists, dicts, numbers, strings) for YAML, JSON and checkpoints."""
    if isinstance(cfg, LabelMap):
        return cfg.to_dict()
    if dataclasses.is_dataclass(cfg):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, tuple):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from organseg.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def replace_path(cfg: Config, dotted_key: str, value: Any) -> Config:
    """A copy of ``cfg`` with one field set, validated like YAML input (``"train.epochs"``, 5)."""
    data = config_to_dict(cfg)
    node = data
    parts = dotted_key.split(".")
    for p in parts[:-1]:
        if not isinstance(node, dict) or p not in node:
            raise ConfigError(f"override: {dotted_key}: unknown key")
        node = node[p]
    if parts[-1] not in node:
        raise ConfigError(f"override: {dotted_key}: unknown key")
    node[parts[-1]] = value
    return config_from_dict(data, "override")
