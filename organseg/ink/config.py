"""The ink task's configuration: a frozen dataclass tree of its own, loaded from ``configs/ink*.yaml``.

Ink detection shares organseg's config machinery (typed conversion, unknown keys rejected with the
dotted key named) but not its schema: an ink run has no label map, no HU window and no 3D patch.
Slice numbers are indices into ``surface_volume/NN.tif`` (0-based, ``z_stop`` exclusive); tile sizes
and strides are in pixels of the fragment's (row, column) grid.

Example:
    >>> cfg = load_ink_config("ink-demo")
    >>> cfg.data.z_stop - cfg.data.z_start     # slices the network sees
    32
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

# The project's converter: type checks, YAML lists to tuples, unknown keys named (organseg/config.py).
from organseg.config import CONFIG_DIR, build_dataclass, config_to_dict
from organseg.errors import ConfigError


@dataclass(frozen=True)
class InkDataConfig:
    """Which slices the model reads and how intensities are scaled.

    ``z_start``/``z_stop``: the window of middle slices (of 65) given to the network. The papyrus
    surface is warped, so the window must be wide enough to hold it everywhere (16-32 slices).
    Intensities are scaled per fragment by the ``percentiles`` of the window inside the mask.
    """

    z_start: int = 16
    z_stop: int = 48
    percentiles: tuple[float, float] = (1.0, 99.0)


@dataclass(frozen=True)
class InkSynthConfig:
    """Synthetic fragments for ``organseg ink synth`` and the demo (sizes in pixels)."""

    n_fragments: int = 3
    height: int = 512
    width: int = 384
    difficulty: Literal["easy", "realistic"] = "realistic"
    seed: int = 0


@dataclass(frozen=True)
class InkModelConfig:
    """The 2.5D network (``organseg.ink.model.InkNet``).

    ``encoder``: ``"3d"`` runs a small 3D convolution stem over the slice window and collapses depth
    (max and mean), so a surface that moves between slices is found wherever it is; ``"channels"``
    gives the slices to the 2D U-Net as input channels (cheaper, but must learn every depth apart).
    ``features``: the six feature counts of MONAI's ``BasicUNet``.
    """

    encoder: Literal["3d", "channels"] = "3d"
    stem_channels: int = 8
    features: tuple[int, int, int, int, int, int] = (16, 16, 32, 64, 128, 16)
    dropout: float = 0.0


@dataclass(frozen=True)
class InkAugmentConfig:
    """Training augmentation: flips, rot90, brightness/contrast (fractions) and a depth shift (slices)."""

    flip: bool = True
    rot90: bool = True
    brightness: float = 0.1
    contrast: float = 0.1
    depth_shift: int = 2


@dataclass(frozen=True)
class InkLossConfig:
    """Weights of MONAI's BCE, Dice and Tversky losses (a weight of 0 drops the term)."""

    bce: float = 1.0
    dice: float = 1.0
    tversky: float = 0.5
    tversky_alpha: float = 0.3
    tversky_beta: float = 0.7


@dataclass(frozen=True)
class InkTrainConfig:
    """Tiles, steps and optimiser. An epoch is ``steps_per_epoch`` batches of random in-mask tiles.

    ``positive_fraction``: share of tiles centred on an ink pixel (ink is rare; the rest are uniform
    over the mask). ``val_every``: epochs between validations of the held-out fragment.
    """

    tile: int = 128
    stride: int = 64
    batch_size: int = 8
    epochs: int = 10
    steps_per_epoch: int = 40
    lr: float = 2e-3
    weight_decay: float = 1e-4
    positive_fraction: float = 0.5
    val_every: int = 1
    seed: int = 0
    augment: InkAugmentConfig = field(default_factory=InkAugmentConfig)
    loss: InkLossConfig = field(default_factory=InkLossConfig)


@dataclass(frozen=True)
class InkInferConfig:
    """Inference. ``stride`` 0 means the training stride; ``tta``: none, flip (4 views) or rot90 (8).

    ``threshold`` 0 means the validated threshold stored with the model. ``min_component_px``:
    predicted ink blobs smaller than this (8-connected, pixels) are removed. ``band_rows``: rows of
    tiles read and predicted at once (memory scales with it, not with the fragment).
    """

    stride: int = 0
    tta: Literal["none", "flip", "rot90"] = "flip"
    threshold: float = 0.0
    min_component_px: int = 32
    batch_size: int = 16
    band_rows: int = 2


@dataclass(frozen=True)
class InkConfig:
    """The whole ink config; ``task`` must be ``ink`` so an organ config is never mistaken for it."""

    task: Literal["ink"] = "ink"
    data: InkDataConfig = field(default_factory=InkDataConfig)
    synth: InkSynthConfig = field(default_factory=InkSynthConfig)
    model: InkModelConfig = field(default_factory=InkModelConfig)
    train: InkTrainConfig = field(default_factory=InkTrainConfig)
    infer: InkInferConfig = field(default_factory=InkInferConfig)

    @property
    def depth(self) -> int:
        """Slices in the network's window."""
        return self.data.z_stop - self.data.z_start


def _check(cfg: InkConfig, source: str) -> None:
    """Range checks the types cannot express; errors name the dotted key."""

    def bad(key: str, problem: str) -> ConfigError:
        return ConfigError(f"{source}: {key}: {problem}")

    d, t, i = cfg.data, cfg.train, cfg.infer
    if not 0 <= d.z_start < d.z_stop <= 65:
        raise bad("data.z_start", f"need 0 <= z_start < z_stop <= 65, got {d.z_start}..{d.z_stop}")
    if not 0 <= d.percentiles[0] < d.percentiles[1] <= 100:
        raise bad("data.percentiles", f"need 0 <= low < high <= 100, got {list(d.percentiles)}")
    if t.tile < 32 or t.tile % 16:
        raise bad("train.tile", f"must be a multiple of 16 and >= 32 pixels, got {t.tile}")
    if not 0 < t.stride <= t.tile:
        raise bad("train.stride", f"must be in 1..tile ({t.tile}), got {t.stride}")
    if not 0 <= i.stride <= t.tile:
        raise bad("infer.stride", f"must be 0 (= train.stride) or in 1..tile ({t.tile}), got {i.stride}")
    for key in ("batch_size", "epochs", "steps_per_epoch", "val_every"):
        if getattr(t, key) < 1:
            raise bad(f"train.{key}", f"must be >= 1, got {getattr(t, key)}")
    if t.lr <= 0:
        raise bad("train.lr", f"must be > 0, got {t.lr}")
    if not 0 <= t.positive_fraction <= 1:
        raise bad("train.positive_fraction", f"must be in [0, 1], got {t.positive_fraction}")
    if not 0 <= t.augment.depth_shift < cfg.depth:
        raise bad("train.augment.depth_shift", f"must be in 0..{cfg.depth - 1}, got {t.augment.depth_shift}")
    if (
        t.loss.bce < 0
        or t.loss.dice < 0
        or t.loss.tversky < 0
        or t.loss.bce + t.loss.dice + t.loss.tversky == 0
    ):
        raise bad("train.loss", "weights must be >= 0 and not all 0")
    if not 0 <= i.threshold < 1:
        raise bad("infer.threshold", f"must be in [0, 1) (0 = validated threshold), got {i.threshold}")
    for key in ("min_component_px",):
        if getattr(i, key) < 0:
            raise bad(f"infer.{key}", f"must be >= 0, got {getattr(i, key)}")
    for key in ("batch_size", "band_rows"):
        if getattr(i, key) < 1:
            raise bad(f"infer.{key}", f"must be >= 1, got {getattr(i, key)}")
    s = cfg.synth
    if s.n_fragments < 1 or s.height < 64 or s.width < 64:
        raise bad("synth", f"need n_fragments >= 1 and height, width >= 64, got {s}")
    if cfg.model.stem_channels < 1 or any(f < 1 for f in cfg.model.features):
        raise bad("model", "channel counts must be >= 1")
    if not 0 <= cfg.model.dropout < 1:
        raise bad("model.dropout", f"must be in [0, 1), got {cfg.model.dropout}")


def ink_config_from_dict(data: Any, source: str = "<ink config>") -> InkConfig:
    """Build and validate an ``InkConfig`` from a plain mapping; ``source`` names it in errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a YAML mapping at the top level, got {type(data).__name__}")
    cfg = build_dataclass(InkConfig, data, source)
    _check(cfg, source)
    return cfg


def load_ink_config(name_or_path: str | Path = "ink") -> InkConfig:
    """Load ``configs/<name>.yaml`` (``ink``, ``ink-demo``) or a YAML path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml") and not path.exists():
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{path}: not valid YAML ({first})") from None
    return ink_config_from_dict(data or {}, str(path))


def ink_config_to_dict(cfg: InkConfig) -> dict:
    """Plain data (for YAML, JSON and checkpoints)."""
    return config_to_dict(cfg)


def replace_ink(cfg: InkConfig, dotted_key: str, value: Any) -> InkConfig:
    """A copy with one field set and validated again (``"train.epochs"``, 3): what ``--set`` uses."""
    data = config_to_dict(cfg)
    node = data
    parts = dotted_key.split(".")
    for p in parts[:-1]:
        if not isinstance(node, dict) or p not in node:
            raise ConfigError(f"--set: {dotted_key}: unknown key")
        node = node[p]
    if not isinstance(node, dict) or parts[-1] not in node:
        raise ConfigError(f"--set: {dotted_key}: unknown key")
    node[parts[-1]] = value
    return ink_config_from_dict(data, "--set")


__all__ = [
    "InkConfig",
    "ink_config_from_dict",
    "ink_config_to_dict",
    "load_ink_config",
    "replace_ink",
]
