"""The ink network and the tiling: shapes, TTA that really averages a symmetry group, tiles that cover."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from organseg.ink.model import InkNet
from organseg.ink.predict import predict_tiles, tile_starts


@pytest.mark.parametrize("encoder", ["3d", "channels"])
def test_both_encoders_map_a_slice_window_to_one_logit_map(encoder: str) -> None:
    net = InkNet(depth=12, encoder=encoder, stem_channels=2, features=(4, 4, 8, 8, 16, 4)).eval()
    x = torch.randn(2, 1, 12, 32, 48)
    assert net(x).shape == (2, 1, 32, 48)


@pytest.mark.parametrize("tta,ops", [("flip", [(-1,), (-2,)]), ("rot90", [(-1,), "rot"])])
def test_tta_prediction_is_equivariant(tta: str, ops: list) -> None:
    torch.manual_seed(0)
    net = InkNet(depth=8, stem_channels=2, features=(4, 4, 8, 8, 16, 4)).eval()
    x = torch.randn(1, 1, 8, 32, 32)
    base = predict_tiles([net], x, tta)
    for op in ops:
        if op == "rot":
            moved = predict_tiles([net], torch.rot90(x, 1, dims=(-2, -1)), tta)
            expected = torch.rot90(base, 1, dims=(-2, -1))
        else:
            moved = predict_tiles([net], x.flip(op), tta)
            expected = base.flip(op)
        torch.testing.assert_close(moved, expected, atol=1e-5, rtol=1e-4)
    # without TTA the untrained network is not symmetric, so the property above is TTA's doing
    plain = predict_tiles([net], x, "none")
    assert not torch.allclose(predict_tiles([net], x.flip(-1), "none"), plain.flip(-1), atol=1e-3)


@pytest.mark.parametrize("size,tile,stride", [(100, 32, 16), (32, 32, 16), (20, 32, 16), (257, 64, 48)])
def test_tiles_cover_every_pixel(size: int, tile: int, stride: int) -> None:
    starts = tile_starts(size, tile, stride)
    covered = np.zeros(max(size, tile), bool)
    for s in starts:
        covered[s : s + tile] = True
    assert (
        covered[:size].all() and starts[0] == 0 and all(b - a <= stride for a, b in zip(starts, starts[1:]))
    )
