"""Config loading and validation: every shipped config loads; bad keys and types are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from organseg.config import (
    CONFIG_DIR,
    Config,
    LabelMap,
    config_from_dict,
    config_to_dict,
    load_config,
    replace_path,
)
from organseg.errors import ConfigError

ORGAN_CONFIGS = sorted(p for p in CONFIG_DIR.glob("*.yaml") if not p.stem.startswith("ink"))
INK_CONFIGS = sorted(CONFIG_DIR.glob("ink*.yaml"))


@pytest.mark.parametrize("path", ORGAN_CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_load_and_round_trip(path: Path) -> None:
    cfg = load_config(path)
    assert config_from_dict(config_to_dict(cfg), "roundtrip") == cfg


@pytest.mark.parametrize("path", INK_CONFIGS, ids=lambda p: p.stem)
def test_shipped_ink_configs_load_and_round_trip(path: Path) -> None:
    """The ink task's configs have their own schema (``organseg.ink.config``), checked the same way."""
    from organseg.ink.config import ink_config_from_dict, ink_config_to_dict, load_ink_config

    cfg = load_ink_config(path)
    assert ink_config_from_dict(ink_config_to_dict(cfg), "roundtrip") == cfg


def test_every_shipped_config_is_checked() -> None:
    assert len(ORGAN_CONFIGS) >= 4 and len(INK_CONFIGS) == 2


def test_default_label_map_has_five_classes_and_kidney_pair() -> None:
    cfg = load_config("abdomen")
    assert cfg.labels.names == ("background", "liver", "kidney_right", "kidney_left", "spleen")
    assert cfg.labels.num_classes == 5
    assert cfg.labels.lr_swap_pairs == ((2, 3),)


def test_class_count_follows_label_map() -> None:
    cfg = config_from_dict({"labels": {0: "background", 1: "liver"}})
    assert cfg.labels.num_classes == 2 and cfg.labels.lr_swap_pairs == ()


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 3\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: train\.learning_rate: unknown key"):
        load_config(bad)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"train": {"epochs": "ten"}}, "train.epochs"),
        ({"train": {"patch_size": [64, 64]}}, "train.patch_size"),
        ({"train": {"amp": "yes"}}, "train.amp"),
        ({"preprocess": {"hu_window": [250, -175]}}, "preprocess.hu_window"),
        ({"preprocess": {"spacing_mm": [0, 1, 1]}}, "preprocess.spacing_mm"),
        ({"preprocess": {"normalization": "minmax"}}, "preprocess.normalization"),
        ({"infer": {"overlap": 1.5}}, "infer.overlap"),
        ({"labels": {0: "liver", 1: "background"}}, "labels.0"),
        ({"labels": {0: "background", 2: "liver"}}, "labels"),
        ({"loss": {"class_weights": [1.0, 2.0]}}, "loss.class_weights"),
        ({"data": {"label_preset": "nope"}}, "data.label_preset"),
        ({"data": {"label_map": {13: "pancreas"}}}, "data.label_map.13"),
    ],
)
def test_wrong_values_name_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"cfg\.yaml: {key.replace('.', chr(92) + '.')}"):
        config_from_dict(data, "cfg.yaml")


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="expected a YAML mapping"):
        config_from_dict([1, 2], "list.yaml")  # type: ignore[arg-type]


def test_replace_path_validates_like_yaml() -> None:
    cfg = load_config("demo")
    assert replace_path(cfg, "train.epochs", 3).train.epochs == 3
    assert replace_path(cfg, "train.patch_size", [32, 32, 32]).train.patch_size == (32, 32, 32)
    with pytest.raises(ConfigError, match="train.epochs"):
        replace_path(cfg, "train.epochs", "x")
    with pytest.raises(ConfigError, match="train.nope: unknown key"):
        replace_path(cfg, "train.nope", 1)


def test_json_string_keys_are_accepted() -> None:
    """Checkpoints store the config as JSON, which turns integer keys into strings."""
    cfg = config_from_dict(
        {"labels": {"0": "background", "1": "liver"}, "data": {"label_map": {"5": "liver"}}}
    )
    assert cfg.labels == LabelMap(("background", "liver"))
    assert cfg.data.label_map == {5: "liver"}


def test_infer_patch_size_defaults_to_train_patch() -> None:
    cfg = Config()
    assert cfg.infer_patch_size == cfg.train.patch_size
    assert replace_path(cfg, "infer.patch_size", [96, 96, 96]).infer_patch_size == (96, 96, 96)


def test_bare_yaml_off_means_off(tmp_path: Path) -> None:
    """YAML 1.1 turns a bare ``off`` into False; where 'off' is an allowed value, it means 'off'."""
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  augment:\n    flip_lr: off\n")
    assert load_config(path).train.augment.flip_lr == "off"
    path.write_text("train:\n  augment:\n    flip_lr: on\n")
    with pytest.raises(ConfigError, match="flip_lr"):
        load_config(path)
