"""Sliding-window inference of an ensemble of VNets on one preprocessed CT (MONAI's inferer).

``predict_probabilities`` runs ``monai.inferers.sliding_window_inference`` over the body crop with
Gaussian blending. Each window goes through every ensemble member (and the TTA copies, ``tta.py``);
their softmax outputs are averaged in probability space. MONAI accumulates the blended output in
float32 on the CPU (``device="cpu"``) while windows run on ``device`` (``sw_device``). The result stays
float32: it lives on the coarse network grid (about 12 M voxels x C for a large abdomen at 1.5 mm), and
a float16 copy would add memory while MONAI's float32 accumulator still exists, and turn near-ties
into different labels than the MONAI ``Invertd`` path gives.

Speed on CPU: the network is nearly all of the time, and ``overlap`` (fraction of the patch that
neighbouring windows share) sets how many windows run. For the 228 x 168 x 300 voxel body crop of a
512 x 512 x 300 CT at 1.5 mm with 128^3 patches, overlap 0.5 (the ``abdomen`` config) runs 24 windows
and overlap 0.25 runs 18: ``overlap=0.25`` is the faster setting, at a small cost at window seams that
Gaussian blending mostly hides.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from organseg.config import Config
from organseg.geometry import lr_axis
from organseg.infer.tta import tta_predictor
from organseg.vnet import VNet


def ensemble_predictor(nets: Sequence[VNet], channels_last: bool = False):
    """A predictor: window ``(N, 1, X, Y, Z)`` -> softmax averaged over ``nets`` ``(N, C, X, Y, Z)``."""

    def predict(x: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        total = None
        for net in nets:
            p = torch.softmax(net(x).float(), dim=1)
            total = p if total is None else total + p
        out = total / len(nets) if len(nets) > 1 else total
        return out.contiguous()

    return predict


def predict_probabilities(
    image: torch.Tensor,
    nets: Sequence[VNet],
    cfg: Config,
    *,
    overlap: float,
    sw_batch_size: int,
    mirror: bool = False,
    rot90: bool = False,
    device: str | torch.device = "cpu",
    channels_last: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Blended class probabilities ``(C, X, Y, Z)`` float32 for a normalised image ``(1, 1, X, Y, Z)``.

    Args:
        image: the network input on the crop grid (``preprocess.prepare``).
        nets: the ensemble (eval mode, on ``device``).
        cfg: the models' config (patch size, blend mode, labels for the TTA channel swap).
        overlap: window overlap in [0, 1).
        sw_batch_size: windows per forward pass.
        mirror, rot90: test-time augmentation (``tta.py``).
        device: where windows run; blending happens on the CPU.
        channels_last: run the networks in channels-last-3D memory format.
        progress: show a progress bar over windows.
    """
    predict = ensemble_predictor(nets, channels_last=channels_last)
    if mirror or rot90:
        predict = tta_predictor(
            predict,
            lr_axis=lr_axis(cfg.preprocess.orientation),
            lr_pairs=cfg.labels.lr_swap_pairs,
            mirror_axes=(0, 1, 2) if mirror else (),
            rot90=rot90,
        )
    # MONAI is imported here, not at module level: importing it takes about 2 s, which ``segment``
    # overlaps with loading the models (``infer._prefetch_imports``).
    from monai.inferers import sliding_window_inference

    with torch.inference_mode():
        out = sliding_window_inference(
            image,
            roi_size=tuple(cfg.infer_patch_size),
            sw_batch_size=sw_batch_size,
            predictor=predict,
            overlap=overlap,
            mode=cfg.infer.blend,
            padding_mode=cfg.infer.padding,
            sw_device=device,
            device="cpu",
            progress=progress,
        )
    return torch.as_tensor(out)[0]
