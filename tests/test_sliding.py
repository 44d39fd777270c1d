"""Sliding-window inference: a window larger than a thin slab is filled by repeating the slab's edge."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from organseg.config import load_config
from organseg.infer.sliding import predict_probabilities


class WindowMean(torch.nn.Module):
    """Two-class 'network' whose output depends on the whole window, as instance norm makes a VNet's.

    Class 1's logit at a voxel is the voxel's value minus the window's mean, so what fills the part of a
    window outside the image changes every voxel's output.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=(2, 3, 4), keepdim=True)
        return torch.cat([torch.zeros_like(centred), 8.0 * centred], dim=1)


def thin_slab() -> torch.Tensor:
    """A 16x16x4 'slab' (much thinner than the 16^3 window) with a bright blob and a gradient."""
    rng = np.random.default_rng(3)
    x = np.linspace(0.0, 1.0, 16)[:, None, None] * np.ones((16, 16, 4)) * 0.3
    x[4:10, 5:12, :] += 0.6
    x += rng.normal(0, 0.02, x.shape)
    return torch.as_tensor(x, dtype=torch.float32)[None, None]


@pytest.mark.parametrize("padding", ["replicate", "constant"])
def test_window_outside_a_thin_slab_is_padded_as_configured(padding: str) -> None:
    cfg = load_config("demo")
    cfg = dataclasses.replace(
        cfg, infer=dataclasses.replace(cfg.infer, patch_size=(16, 16, 16), padding=padding, blend="constant")
    )
    image = thin_slab()
    net = WindowMean().eval()
    got = predict_probabilities(image, [net], cfg, overlap=0.0, sw_batch_size=1)
    # One window covers the whole slab: MONAI pads z from 4 to 16 (6 before, 6 after) in that mode.
    padded = F.pad(image, (6, 6, 0, 0, 0, 0), mode=padding)
    expected = torch.softmax(net(padded), dim=1)[0, :, :, :, 6:10]
    assert got.shape == (2, 16, 16, 4)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_replicate_and_constant_padding_differ_on_a_thin_slab() -> None:
    """The setting matters: with a window-dependent network the two fills give different labels."""
    cfg = load_config("demo")
    base = dataclasses.replace(cfg.infer, patch_size=(16, 16, 16), blend="constant")
    image, net = thin_slab(), WindowMean().eval()
    labels = {}
    for padding in ("replicate", "constant"):
        c = dataclasses.replace(cfg, infer=dataclasses.replace(base, padding=padding))
        labels[padding] = predict_probabilities(image, [net], c, overlap=0.0, sw_batch_size=1).argmax(0)
    assert (labels["replicate"] != labels["constant"]).float().mean() > 0.05


def test_default_padding_is_replicate() -> None:
    assert load_config("demo").infer.padding == "replicate"
    assert load_config("abdomen-synth").infer.padding == "replicate"
