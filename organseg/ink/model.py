"""The 2.5D ink network: a depth stem over the slice window, collapsed to 2D, then MONAI's BasicUNet.

Input ``(batch, 1, depth, rows, columns)`` (the window of middle slices, scaled intensities); output
``(batch, 1, rows, columns)`` ink logits. Why a depth stem: the ink sits just under a surface whose
slice changes across the fragment, and convolutions along depth find the pattern "surface, then a
slightly denser layer" at every depth alike; collapsing depth by max and mean keeps it wherever it was. The
``channels`` encoder instead feeds the slices to the 2D U-Net as channels (cheaper, but it must learn
each depth separately). No pretrained weights are used, so nothing is downloaded.
"""

from __future__ import annotations

import torch
from monai.networks.nets import BasicUNet
from torch import nn

from organseg.ink.config import InkConfig


class DepthStem(nn.Module):
    """Convolutions along depth only, applied to every pixel's column of slices, then collapsed.

    Each pixel's profile through the window (slices) goes through two 1D convolutions (kernels 5 and
    3 slices, the second with stride 2) that can recognise "air, surface, a slightly denser layer"
    wherever the surface is; max and mean over depth turn that into ``2 * channels`` 2D feature
    maps. Spatial context comes from the U-Net: a 3x3x3 stem was 10x slower per training step on
    a CPU (measured, 8 tiles of 24 x 64 x 64) for a signal that is a depth profile.

    Args:
        channels: feature maps of the depth convolutions.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            nn.Conv3d(1, channels, (5, 1, 1), padding=(2, 0, 0)),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0), stride=(2, 1, 1)),
            nn.LeakyReLU(0.1, inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.blocks(x)
        return torch.cat((f.amax(dim=2), f.mean(dim=2)), dim=1)


class InkNet(nn.Module):
    """Depth stem (or slices as channels) + 2D ``BasicUNet`` with one output channel (ink logit).

    Args:
        depth: slices in the window (``cfg.depth``).
        encoder: ``"3d"`` or ``"channels"``.
        stem_channels: 3D feature maps of the stem.
        features: BasicUNet's six feature counts.
        dropout: BasicUNet's dropout.
    """

    def __init__(
        self,
        depth: int,
        encoder: str = "3d",
        stem_channels: int = 8,
        features: tuple[int, ...] = (16, 16, 32, 64, 128, 16),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.stem = DepthStem(stem_channels) if encoder == "3d" else None
        in_ch = 2 * stem_channels if encoder == "3d" else depth
        self.unet = BasicUNet(
            spatial_dims=2,
            in_channels=in_ch,
            out_channels=1,
            features=tuple(features),
            norm=("instance", {"affine": True}),
            dropout=dropout,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.stem(x) if self.stem is not None else x[:, 0]
        return self.unet(f)


def build_ink_model(cfg: InkConfig) -> InkNet:
    """The network ``cfg.model`` describes, for ``cfg.depth`` slices."""
    m = cfg.model
    return InkNet(cfg.depth, m.encoder, m.stem_channels, m.features, m.dropout)
