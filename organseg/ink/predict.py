"""Ink probabilities over a whole fragment, streamed in row bands of overlapping tiles.

Memory is bounded by the band, not the volume: for each band of ``infer.band_rows`` tile rows only
the slice window's rows are read (uint16), tiles are scaled, predicted (with test-time flips /
rot90 and every model of the ensemble), weighted by a gaussian (MONAI's importance map, so tile
borders count less) and added to two float32 (rows, columns) sums. A 8192 x 6144 fragment thus needs
two 200 MB sums plus a band of about 60 MB, never the 3 GB window. Tiles without mask pixels are
skipped. Arrays are (rows, columns); ``x`` tensors are (batch, 1, depth, rows, columns).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.data.utils import compute_importance_map
from tqdm import tqdm

from organseg.errors import ConfigError
from organseg.ink.config import InkConfig
from organseg.ink.data import intensity_scale, scale_tile
from organseg.ink.reader import Fragment

#: Views of test-time augmentation: (flip rows, flip columns, quarter turns).
TTA_VIEWS = {
    "none": [(False, False, 0)],
    "flip": [(False, False, 0), (True, False, 0), (False, True, 0), (True, True, 0)],
    "rot90": [(f, False, k) for f in (False, True) for k in range(4)],
}


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile origins covering ``0..size`` with the last tile flush with the end (one tile if smaller)."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def _view(x: torch.Tensor, view: tuple[bool, bool, int]) -> torch.Tensor:
    fr, fc, k = view
    if fr:
        x = x.flip(-2)
    if fc:
        x = x.flip(-1)
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


def _unview(y: torch.Tensor, view: tuple[bool, bool, int]) -> torch.Tensor:
    fr, fc, k = view
    if k:
        y = torch.rot90(y, -k, dims=(-2, -1))
    if fc:
        y = y.flip(-1)
    return y.flip(-2) if fr else y


@torch.no_grad()
def predict_tiles(models: Sequence[torch.nn.Module], x: torch.Tensor, tta: str) -> torch.Tensor:
    """Mean sigmoid probability over models and TTA views: (batch, rows, columns)."""
    views = TTA_VIEWS[tta]
    total = torch.zeros(x.shape[0], *x.shape[-2:], device=x.device)
    for model in models:
        for v in views:
            total += _unview(torch.sigmoid(model(_view(x, v))), v)[:, 0]
    return total / (len(models) * len(views))


def predict_fragment(
    frag: Fragment,
    models: Sequence[torch.nn.Module],
    cfg: InkConfig,
    mask: np.ndarray,
    tta: str | None = None,
    tile: int | None = None,
    stride: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> np.ndarray:
    """Ink probability in [0, 1] for every pixel, float32 (rows, columns); 0 outside ``mask``.

    Args:
        frag: an opened fragment; only ``cfg.data.z_start:z_stop`` slices are read.
        models: networks in eval mode (a fold ensemble is averaged).
        mask: bool (rows, columns) papyrus mask.
        tta: ``none``, ``flip`` or ``rot90`` (default ``cfg.infer.tta``).
        tile, stride: pixels (default ``cfg.train.tile`` and ``cfg.infer.stride`` or the training stride).
    """
    tta = tta or cfg.infer.tta
    tile = tile or cfg.train.tile
    stride = stride or cfg.infer.stride or cfg.train.stride
    if stride > tile:
        raise ConfigError(f"--stride: {stride} px would leave gaps between {tile}-px tiles (use <= {tile})")
    h, w = frag.height, frag.width
    z0, z1 = cfg.data.z_start, cfg.data.z_stop
    scale = intensity_scale(frag, cfg, mask)
    weight = (
        compute_importance_map((tile, tile), mode="gaussian", sigma_scale=0.125).numpy().astype(np.float32)
    )
    weight = np.maximum(weight, 1e-3)
    prob_sum = np.zeros((h, w), np.float32)
    weight_sum = np.zeros((h, w), np.float32)
    rows, cols = tile_starts(h, tile, stride), tile_starts(w, tile, stride)
    per_band = cfg.infer.band_rows
    bands = [rows[i : i + per_band] for i in range(0, len(rows), per_band)]
    for band in tqdm(bands, desc=f"ink {frag.name}", unit="band", disable=not progress, leave=False):
        b0, b1 = band[0], min(h, band[-1] + tile)
        block = frag.read_rows(z0, z1, b0, b1)
        if block.shape[1] < tile or block.shape[2] < tile:  # fragment smaller than a tile
            block = np.pad(
                block,
                ((0, 0), (0, tile - min(tile, block.shape[1])), (0, tile - min(tile, block.shape[2]))),
                mode="edge",
            )
        origins = [(r, c) for r in band for c in cols if mask[r : r + tile, c : c + tile].any()]
        for i in range(0, len(origins), cfg.infer.batch_size):
            chunk = origins[i : i + cfg.infer.batch_size]
            x = np.stack(
                [scale_tile(block[:, r - b0 : r - b0 + tile, c : c + tile], scale) for r, c in chunk]
            )
            p = predict_tiles(models, torch.from_numpy(x[:, None]).to(device), tta).cpu().numpy()
            for (r, c), pt in zip(chunk, p):
                hh, ww = min(tile, h - r), min(tile, w - c)
                prob_sum[r : r + hh, c : c + ww] += pt[:hh, :ww] * weight[:hh, :ww]
                weight_sum[r : r + hh, c : c + ww] += weight[:hh, :ww]
    np.divide(prob_sum, weight_sum, out=prob_sum, where=weight_sum > 0)
    prob_sum[~mask] = 0
    return prob_sum
