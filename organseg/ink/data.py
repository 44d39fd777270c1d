"""Training data for ink: fragments held as uint16 slice windows, random tiles, augmentation.

Arrays are (slice, row, column). A training fragment keeps its slice window (plus the depth-shift
margin) in memory as uint16, 2 bytes per voxel; intensities become float only per tile, scaled by
the fragment's in-mask percentiles (``intensity_scale``), the same numbers inference uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from organseg.ink.config import InkConfig
from organseg.ink.reader import Fragment, open_fragment


def intensity_scale(
    frag: Fragment, cfg: InkConfig, mask: np.ndarray, bands: int = 16, band_px: int = 32
) -> tuple[float, float]:
    """``(low, high)`` uint16 levels at ``cfg.data.percentiles`` of the slice window inside the mask.

    Estimated from ``bands`` evenly spaced row bands (every 4th column), so it reads a small part of
    a large fragment. Scaling per fragment keeps a model trained on one scanner's levels usable on
    another's.
    """
    z0, z1 = cfg.data.z_start, cfg.data.z_stop
    starts = np.unique(np.linspace(0, max(frag.height - band_px, 0), bands).astype(int))
    values = []
    for r0 in starts:
        r1 = min(frag.height, r0 + band_px)
        block = frag.read_rows(z0, z1, r0, r1)[:, :, ::4]
        m = mask[r0:r1, ::4]
        if m.any():
            values.append(block[:, m].ravel())
    if not values:
        values = [frag.read_rows(z0, z1, 0, frag.height)[:, mask].ravel()]
    lo, hi = np.percentile(np.concatenate(values), cfg.data.percentiles)
    return float(lo), float(max(hi, lo + 1))


def scale_tile(block: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """uint16 -> float32 with ``low`` at 0 and ``high`` at 1."""
    lo, hi = scale
    return (block.astype(np.float32) - lo) * (1.0 / (hi - lo))


@dataclass
class TrainFragment:
    """A labelled fragment in memory: window ``volume`` (uint16, slices z_start - margin ...), mask, ink."""

    name: str
    volume: np.ndarray
    z_offset: int  # the slice number of volume[0]
    mask: np.ndarray
    ink: np.ndarray
    scale: tuple[float, float]


def load_train_fragment(path: Path, cfg: InkConfig) -> TrainFragment:
    """Read a labelled fragment's window (with ``augment.depth_shift`` spare slices each side)."""
    margin = cfg.train.augment.depth_shift
    z0 = max(0, cfg.data.z_start - margin)
    z1 = min(65, cfg.data.z_stop + margin)
    with open_fragment(path, require_labels=True) as frag:
        mask = frag.read_mask()
        ink = frag.read_labels() & mask
        scale = intensity_scale(frag, cfg, mask)
        vol = frag.read_window(z0, z1)
    t = cfg.train.tile
    ph, pw = max(0, t - mask.shape[0]), max(0, t - mask.shape[1])
    if ph or pw:  # smaller than a tile: pad (air outside the mask)
        vol = np.pad(vol, ((0, 0), (0, ph), (0, pw)), mode="edge")
        mask = np.pad(mask, ((0, ph), (0, pw)))
        ink = np.pad(ink, ((0, ph), (0, pw)))
    return TrainFragment(Path(path).name, vol, z0, mask, ink, scale)


class TileSampler:
    """Random training tiles from a list of fragments, reproducible from ``(seed, fold, epoch)``.

    A share ``positive_fraction`` of tiles contains an ink pixel at a random position; the rest are
    centred on a random mask pixel. Returns ``x`` (batch, 1, depth, tile, tile) and ``y`` (batch, 1,
    tile, tile) float tensors, augmented (flips, rot90, depth shift, brightness and contrast).
    """

    def __init__(self, fragments: list[TrainFragment], cfg: InkConfig) -> None:
        self.frags = fragments
        self.cfg = cfg
        self.mask_px = [np.flatnonzero(f.mask) for f in fragments]
        self.ink_px = [np.flatnonzero(f.ink) for f in fragments]
        weights = np.array([p.size for p in self.mask_px], dtype=np.float64)
        self.frag_p = weights / weights.sum()

    def batch(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, t = self.cfg, self.cfg.train.tile
        aug = cfg.train.augment
        xs, ys = [], []
        for _ in range(cfg.train.batch_size):
            i = int(rng.choice(len(self.frags), p=self.frag_p))
            f = self.frags[i]
            pool = (
                self.ink_px[i]
                if rng.random() < cfg.train.positive_fraction and self.ink_px[i].size
                else self.mask_px[i]
            )
            cy, cx = np.unravel_index(int(pool[rng.integers(pool.size)]), f.mask.shape)
            h, w = f.mask.shape
            r0 = int(np.clip(cy - rng.integers(t // 8, t - t // 8), 0, h - t))
            c0 = int(np.clip(cx - rng.integers(t // 8, t - t // 8), 0, w - t))
            shift = int(rng.integers(-aug.depth_shift, aug.depth_shift + 1)) if aug.depth_shift else 0
            z0 = int(np.clip(cfg.data.z_start + shift - f.z_offset, 0, f.volume.shape[0] - cfg.depth))
            x = scale_tile(f.volume[z0 : z0 + cfg.depth, r0 : r0 + t, c0 : c0 + t], f.scale)
            y = f.ink[r0 : r0 + t, c0 : c0 + t].astype(np.float32)
            if aug.flip and rng.random() < 0.5:
                x, y = x[:, :, ::-1], y[:, ::-1]
            if aug.flip and rng.random() < 0.5:
                x, y = x[:, ::-1], y[::-1]
            if aug.rot90:
                k = int(rng.integers(4))
                x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k)
            if aug.contrast or aug.brightness:
                x = x * (1 + rng.uniform(-aug.contrast, aug.contrast)) + rng.uniform(
                    -aug.brightness, aug.brightness
                )
            xs.append(np.ascontiguousarray(x))
            ys.append(np.ascontiguousarray(y))
        return torch.from_numpy(np.stack(xs)[:, None]), torch.from_numpy(np.stack(ys)[:, None])
