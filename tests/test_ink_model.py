"""The ink network and the tiling: shapes, TTA that really averages a symmetry group, tiles that cover."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from organseg.ink.config import ink_config_from_dict
from organseg.ink.data import intensity_scale, scale_tile
from organseg.ink.infer import postprocess
from organseg.ink.model import InkNet
from organseg.ink.predict import predict_fragment, predict_tiles, tile_starts
from organseg.ink.reader import open_fragment
from organseg.ink.synth import synth_fragment


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


class SliceAsLogit(torch.nn.Module):
    """A stand-in network whose logit is one slice of its input: stitching must give that slice back."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, self.k]


def test_streamed_tiles_stitch_back_exactly_and_stay_inside_the_mask(tmp_path: Path) -> None:
    cfg = ink_config_from_dict(
        {
            "data": {"z_start": 24, "z_stop": 40},
            "train": {"tile": 32, "stride": 16},
            "infer": {"band_rows": 1, "batch_size": 3},
        }
    )
    path = synth_fragment(tmp_path / "f", seed=4, height=70, width=90, difficulty="easy", progress=False)
    with open_fragment(path) as frag:
        mask = frag.read_mask()
        prob = predict_fragment(frag, [SliceAsLogit(5)], cfg, mask, tta="rot90", progress=False)
        scale = intensity_scale(frag, cfg, mask)
        expected = torch.sigmoid(
            torch.from_numpy(scale_tile(frag.read_rows(29, 30, 0, 70)[0], scale))
        ).numpy()
    assert prob.shape == (70, 90) and not prob[~mask].any()
    np.testing.assert_allclose(prob[mask], expected[mask], atol=1e-5)
    ink = postprocess(np.where(mask, 0.9, 0.0).astype(np.float32), mask, 0.5, min_component_px=4)
    np.testing.assert_array_equal(ink, mask)
    speck = np.zeros_like(mask)
    speck[mask.nonzero()[0][0], mask.nonzero()[1][0]] = True
    assert not postprocess(speck.astype(np.float32), np.ones_like(mask), 0.5, min_component_px=4).any()
