"""Loss from config: class weights (auto / none / explicit), Dice + Focal (+ Tversky), finite values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from organseg.config import config_from_dict, config_to_dict, load_config
from organseg.labels import label_voxel_counts
from organseg.losses import build_loss, class_weights_from_frequencies, resolve_class_weights


def cfg_with(**loss):
    d = config_to_dict(load_config("demo"))
    d["loss"].update(loss)
    return config_from_dict(d, "test")


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits (2, 5, 12, 12, 12) and labels where background dominates and kidneys are rare."""
    g = torch.Generator().manual_seed(0)
    label = torch.zeros(2, 1, 12, 12, 12, dtype=torch.long)
    label[:, :, 2:8, 2:8, 2:8] = 1
    label[:, :, 9:11, 2:4, 2:4] = 2
    label[:, :, 9:11, 8:10, 2:4] = 3
    label[:, :, 2:5, 9:11, 8:11] = 4
    return torch.randn(2, 5, 12, 12, 12, generator=g), label


def test_auto_weights_are_inverse_sqrt_frequency_with_mean_one():
    w = np.array(class_weights_from_frequencies([800, 100, 25, 25, 50]))
    assert w.mean() == pytest.approx(1.0)
    assert w[2] / w[0] == pytest.approx(np.sqrt(800 / 25))
    assert w[1] / w[4] == pytest.approx(np.sqrt(50 / 100))
    assert list(np.argsort(w)) == [0, 1, 4, 2, 3] or list(np.argsort(w)) == [0, 1, 4, 3, 2]


def test_a_class_never_seen_gets_the_rarest_weight():
    w = class_weights_from_frequencies([90, 9, 1, 0])
    assert w[3] == pytest.approx(w[2]) and w[2] > w[1] > w[0]


def test_weights_from_label_counts(batch):
    _, label = batch
    counts = label_voxel_counts([label], 5)
    assert counts.sum() == label.numel() and counts[2] == 2 * (2 * 2 * 2)  # two samples of a 2x2x2 kidney
    w = resolve_class_weights(cfg_with(class_weights="auto"), counts)
    assert w is not None and w[2] > w[1] > w[0]
    assert resolve_class_weights(cfg_with(class_weights="none"), counts) is None
    assert resolve_class_weights(cfg_with(class_weights="auto"), None) is None  # nothing counted yet
    assert resolve_class_weights(cfg_with(class_weights=[1, 2, 3, 4, 5]), counts) == (1, 2, 3, 4, 5)


def test_weighted_loss_is_finite_and_differs_from_unweighted(batch):
    logits, label = batch
    counts = label_voxel_counts([label], 5)
    weighted = build_loss(cfg_with(class_weights="auto"), counts)(logits, label)
    plain = build_loss(cfg_with(class_weights="none"), counts)(logits, label)
    explicit = build_loss(cfg_with(class_weights=[0.1, 1, 5, 5, 1]))(logits, label)
    for value in (weighted, plain, explicit):
        assert value.ndim == 0 and torch.isfinite(value)
    assert not torch.isclose(weighted, plain) and not torch.isclose(explicit, plain)


def test_tversky_term_is_added(batch):
    logits, label = batch
    base = build_loss(cfg_with(class_weights="none"))(logits, label)
    with_tversky = build_loss(cfg_with(class_weights="none", tversky_weight=0.5))(logits, label)
    assert with_tversky > base


def test_loss_rewards_the_right_answer_and_has_gradients(batch):
    logits, label = batch
    loss_fn = build_loss(cfg_with(), label_voxel_counts([label], 5))
    perfect = torch.nn.functional.one_hot(label[:, 0], 5).permute(0, 4, 1, 2, 3).float() * 20 - 10
    assert loss_fn(perfect, label) < 0.1 < loss_fn(logits, label)
    logits = logits.clone().requires_grad_(True)
    loss_fn(logits, label.to(torch.uint8)).backward()  # uint8 labels as the loaders give them
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
