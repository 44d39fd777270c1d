"""The organseg VNet: a residual 3D encoder-decoder (Milletari et al. 2016, as the design card describes).

Encoder stages of ``filters`` (default 16-32-64-128) and a ``bottleneck`` (128), each a residual block
(``convs_per_block`` 3x3x3 conv + norm + PReLU, input added to output); 2x2x2 strided convolutions go
down, 2x2x2 transposed convolutions come up, skips are concatenated; dropout in the two deepest stages;
a 1x1x1 head gives one logit per label. ``forward`` returns logits; ``predict`` returns the softmax.

Any input size works: the input is padded to a multiple of ``2 ** len(filters)`` and the output
cropped back, so odd sizes from sliding-window borders are fine.

Example:
    >>> net = VNet(in_channels=1, num_classes=5)
    >>> net(torch.zeros(1, 1, 64, 64, 64)).shape
    torch.Size([1, 5, 64, 64, 64])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.InstanceNorm3d(channels, affine=True)


class ConvNormAct(nn.Sequential):
    """Conv3d -> norm -> PReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, norm: str = "instance"):
        super().__init__(
            nn.Conv3d(
                in_ch, out_ch, kernel, stride=stride, padding=kernel // 2 if stride == 1 else 0, bias=False
            ),
            _norm(norm, out_ch),
            nn.PReLU(out_ch),
        )


class ResidualBlock(nn.Module):
    """``n_convs`` 3x3x3 ConvNormAct with the input added to the output (1x1x1 projection if widths differ)."""

    def __init__(
        self, in_ch: int, out_ch: int, n_convs: int = 2, norm: str = "instance", dropout: float = 0.0
    ):
        super().__init__()
        layers = [ConvNormAct(in_ch if i == 0 else out_ch, out_ch, norm=norm) for i in range(n_convs)]
        self.convs = nn.Sequential(*layers)
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv3d(in_ch, out_ch, 1, bias=False)
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.convs(x) + self.skip(x))


class VNet(nn.Module):
    """Residual 3D VNet.

    Args:
        in_channels: image channels (1 for CT).
        num_classes: softmax channels, background included (the label map's size).
        filters: encoder widths, one per resolution level (the first is full resolution).
        bottleneck: width of the lowest level.
        convs_per_block: 3x3x3 convolutions in each residual block.
        dropout: dropout probability in the bottleneck and the deepest encoder/decoder stage.
        norm: ``instance`` (default, robust to batch size 1-2), ``batch`` or ``group``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 5,
        filters: Sequence[int] = (16, 32, 64, 128),
        bottleneck: int = 128,
        convs_per_block: int = 2,
        dropout: float = 0.1,
        norm: str = "instance",
    ):
        super().__init__()
        filters = list(filters)
        self.levels = len(filters)
        deep = {len(filters) - 1}
        self.stem = ConvNormAct(in_channels, filters[0], norm=norm)
        self.enc = nn.ModuleList()
        self.down = nn.ModuleList()
        for i, f in enumerate(filters):
            in_ch = filters[0] if i == 0 else f
            self.enc.append(ResidualBlock(in_ch, f, convs_per_block, norm, dropout if i in deep else 0.0))
            nxt = filters[i + 1] if i + 1 < len(filters) else bottleneck
            self.down.append(ConvNormAct(f, nxt, kernel=2, stride=2, norm=norm))
        self.bottom = ResidualBlock(bottleneck, bottleneck, convs_per_block, norm, dropout)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        below = bottleneck
        for i in reversed(range(len(filters))):
            f = filters[i]
            self.up.append(
                nn.Sequential(
                    nn.ConvTranspose3d(below, f, 2, stride=2, bias=False), _norm(norm, f), nn.PReLU(f)
                )
            )
            self.dec.append(ResidualBlock(2 * f, f, convs_per_block, norm, dropout if i in deep else 0.0))
            below = f
        self.head = nn.Conv3d(filters[0], num_classes, 1)

    @property
    def size_multiple(self) -> int:
        """Input sides are padded to a multiple of this."""
        return 2**self.levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, same spatial size as ``x`` (N, num_classes, X, Y, Z)."""
        size = x.shape[2:]
        m = self.size_multiple
        pad = [(-s) % m for s in size]
        if any(pad):
            x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate")
        x = self.stem(x)
        skips = []
        for enc, down in zip(self.enc, self.down):
            x = enc(x)
            skips.append(x)
            x = down(x)
        x = self.bottom(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        x = self.head(x)
        if any(pad):
            x = x[:, :, : size[0], : size[1], : size[2]]
        return x

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities over background + organs."""
        return torch.softmax(self.forward(x), dim=1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: VNet, patch_size: Sequence[int], in_channels: int = 1) -> int:
    """FLOPs (2 x multiply-adds) of the convolutions for one forward pass on one patch.

    Norms and activations are ignored. Counted on the smallest valid patch and scaled by voxel count,
    which is exact for a fully convolutional net when each side is a multiple of ``size_multiple``.
    """
    m = 2 * model.size_multiple  # instance norm needs more than one voxel at the bottom
    padded = [s + (-s) % model.size_multiple for s in patch_size]
    total = 0

    def hook(module: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        k = 1
        for s in module.kernel_size:
            k *= s
        if isinstance(module, nn.ConvTranspose3d):
            voxels = _inp[0].shape[2:].numel()
            total += 2 * module.in_channels * module.out_channels * k * voxels
        else:
            total += 2 * module.in_channels // module.groups * module.out_channels * k * out.shape[2:].numel()

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))
    ]
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_channels, m, m, m))
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return int(total * (padded[0] * padded[1] * padded[2]) / m**3)
