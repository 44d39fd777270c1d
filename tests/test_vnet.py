"""The VNet: any input size, softmax over the label map, the design card's size (~4.3 M parameters)."""

from __future__ import annotations

import pytest
import torch

from organseg.checkpoint import build_model
from organseg.config import Config
from organseg.vnet import VNet, count_flops, count_parameters


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see conftest)."""


def test_odd_input_size_keeps_shape_and_softmax_sums_to_one():
    torch.manual_seed(0)
    net = VNet(in_channels=1, num_classes=5, filters=(4, 8, 16), bottleneck=16, dropout=0.0).eval()
    x = torch.randn(1, 1, 37, 50, 29)
    logits = net(x)
    assert logits.shape == (1, 5, 37, 50, 29)
    probs = net.predict(x)
    assert torch.allclose(probs.sum(dim=1), torch.ones(1, 37, 50, 29), atol=1e-5)
    assert (probs >= 0).all()


def test_default_config_has_about_4_3_million_parameters():
    model = build_model(Config())
    assert count_parameters(model) == pytest.approx(4.3e6, rel=0.02)
    assert model.head.out_channels == Config().labels.num_classes


def test_flops_scale_with_patch_volume():
    net = VNet(filters=(4, 8), bottleneck=8)
    small, big = count_flops(net, (16, 16, 16)), count_flops(net, (32, 32, 32))
    assert small > 0 and big == pytest.approx(8 * small, rel=1e-6)


def test_gradients_reach_the_first_layer():
    net = VNet(filters=(4, 8), bottleneck=8, dropout=0.0)
    net(torch.randn(2, 1, 16, 16, 16)).sum().backward()
    first = next(net.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0
