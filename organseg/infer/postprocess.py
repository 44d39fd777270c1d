"""Clean a predicted label mask: keep each organ's largest connected component, fill its holes, drop organs
under ``min_volume_ml`` (specks); and keep organs inside the trunk.

Both steps work organ by organ inside the organ's bounding box (scipy.ndimage), so a 512 x 512 x 400
mask needs no full-size temporaries. Components are 26-connected (touching by a corner counts, as in
MONAI's ``KeepLargestConnectedComponent``); hole filling is 3D (``binary_fill_holes``: only cavities
closed on every side, so vessels that open to the organ surface stay background) and only turns
background voxels into the organ -- it never overwrites another organ.

Speed (issue 19): holes are found by labelling the organ's complement once (6-connected, as
``binary_fill_holes``' default structure) and keeping the pieces that touch no face of the box -- the
same voxels ``binary_fill_holes`` fills, without its iterated dilation, which took seconds on a liver
box of a sub-millimetre CT. Components are labelled with ``cc3d`` (connected-components-3d), 5-6x
faster than ``scipy.ndimage.label`` on the liver box of a 512 x 512 x 300 CT (0.05 vs 0.29 s).
``method="reference"`` keeps the original scipy calls; ``tests/test_speed_paths.py`` checks that both
give identical masks.

Trunk (issue 13): before the labels are made, ``trunk_mask`` finds the body's largest connected piece on the
network's 3 mm grid (tissue above the body threshold, each axial slice's holes filled so that lungs and gas
count as inside) and ``restrict_to_trunk`` makes everything outside it background. An arm beside the chest,
separated from it by air, then cannot hold a "kidney" (the CPU fine-tune of issue 13 found one in the humerus
of the shared DICOM slab). An arm that touches the body joins the trunk and is left as it was.

Example:
    >>> clean = postprocess_mask(mask, labels, PostprocessConfig(largest_component=True, fill_holes=True))
"""

from __future__ import annotations

from typing import Literal

import cc3d
import numpy as np
from scipy import ndimage

from organseg.config import LabelMap, PostprocessConfig
from organseg.geometry import bounding_box

_FULL = np.ones((3, 3, 3), dtype=bool)
_FACES = ndimage.generate_binary_structure(3, 1)


def largest_component(binary: np.ndarray, *, method: Literal["fast", "reference"] = "fast") -> np.ndarray:
    """The largest 26-connected component of a boolean array (empty stays empty).

    A tie between equally large components goes to the one that comes first in C (row-major) order,
    in both methods: scipy numbers components in that order, cc3d in its own.
    """
    if method == "fast":
        labelled, n = cc3d.connected_components(binary, connectivity=26, return_N=True)
    else:  # labels as ``intp`` so that ``np.bincount`` counts them without an int64 copy of the box
        labelled, n = ndimage.label(binary, structure=_FULL, output=np.intp)
    if n <= 1:
        return binary
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    tied = np.flatnonzero(sizes == sizes.max())
    if len(tied) > 1:  # rare: first voxel of each tied component in C order
        flat = labelled.ravel()
        tied = [min(tied, key=lambda label: int(np.flatnonzero(flat == label)[0]))]
    return labelled == int(tied[0])


def fill_holes(binary: np.ndarray) -> np.ndarray:
    """``binary`` with its 3D holes filled: equal to ``ndimage.binary_fill_holes(binary)``.

    A hole is a 6-connected piece of background that touches no face of the array. Labelling the
    background once and dropping the labels seen on the six faces finds them in one pass.
    """
    background, n = cc3d.connected_components(~binary, connectivity=6, return_N=True)
    if n == 0:
        return binary
    outside = np.zeros(n + 1, dtype=bool)
    for axis in range(3):
        for end in (0, -1):
            outside[np.take(background, end, axis=axis)] = True
    outside[0] = True  # label 0 is the organ itself
    if outside.all():
        return binary
    return binary | ~outside[background]


def trunk_mask(hu, threshold_hu: float, *, neck: int = 3, margin: int = 1) -> np.ndarray:
    """The trunk on ``hu``'s grid (bool, same shape).

    The body is ``hu > threshold_hu`` with each axial slice's holes filled. An arm often touches the chest
    wall along a narrow seam, so the body is first eroded in-plane by ``neck`` voxels (a seam narrower than
    ``2 * neck + 1`` voxels breaks), its largest 26-connected piece kept, then grown back in-plane by
    ``neck + margin`` voxels inside the body. Deep tissue (where organs are) is never lost; only thin rims of
    the body's outline can be.
    """
    body = np.asarray(hu > threshold_hu)
    for k in range(body.shape[2]):
        body[:, :, k] = ndimage.binary_fill_holes(body[:, :, k])
    if not body.any():
        return body
    disc = np.zeros((3, 3, 3), dtype=bool)
    disc[:, :, 1] = True  # in-plane 8-neighbourhood: slabs of a few slices are not eroded away
    core = ndimage.binary_erosion(body, disc, iterations=neck) if neck else body
    if not core.any():  # a body thinner than the erosion: nothing to separate
        return body
    trunk = ndimage.binary_dilation(largest_component(core), disc, iterations=neck + margin)
    return trunk & body


def restrict_to_trunk(probs, trunk: np.ndarray) -> None:
    """Make every voxel of ``probs`` (a ``(C, X, Y, Z)`` tensor) outside ``trunk`` certain background, in place."""
    import torch

    outside = torch.from_numpy(~trunk)
    probs[1:, outside] = 0
    probs[0, outside] = 1


def postprocess_mask(
    mask: np.ndarray,
    labels: LabelMap,
    cfg: PostprocessConfig,
    *,
    voxel_ml: float = 0.0,
    method: Literal["fast", "reference"] = "fast",
) -> np.ndarray:
    """``mask`` (uint8 label ids) cleaned in place per ``cfg``; returned for convenience.

    Args:
        mask: uint8 label ids on any grid, index order as stored.
        labels: the label map (organ ids ``1..num_classes-1``).
        cfg: which steps to run.
        voxel_ml: one voxel's volume (ml), for ``cfg.min_volume_ml``; 0 (default) skips that step.
        method: ``"fast"`` (default) or ``"reference"`` (scipy's ``binary_fill_holes``); both give
            the same mask.
    """
    min_voxels = cfg.min_volume_ml / voxel_ml if voxel_ml > 0 and cfg.min_volume_ml > 0 else 0.0
    if not (cfg.largest_component or cfg.fill_holes or min_voxels):
        return mask
    fast = method == "fast"
    for organ_id in range(1, labels.num_classes):
        box = bounding_box(mask == organ_id)
        if box is None:
            continue
        sub = mask[box]
        organ = sub == organ_id
        if cfg.largest_component:
            keep = largest_component(organ, method=method)
            sub[organ & ~keep] = 0
            organ = keep
        if min_voxels and int(organ.sum()) < min_voxels:  # a speck: no organ at all
            sub[organ] = 0
            continue
        if cfg.fill_holes:
            filled = fill_holes(organ) if fast else ndimage.binary_fill_holes(organ)
            sub[filled & (sub == 0)] = organ_id
    return mask
