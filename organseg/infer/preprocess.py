"""Replay a model's preprocessing on one CT, touching only the body, and map results back.

What the network sees is exactly what ``transforms.infer_transforms(cfg)`` would give it --
``Orientationd(RAS) -> Spacingd(spacing_mm) -> CropForegroundd(HU > body_threshold_hu, margin) -> HU
normalisation`` -- but computed without the full-volume float copies that pipeline makes:

1. ``target_grid``: the grid ``Orientationd`` + ``Spacingd`` would produce (same MONAI helpers:
   ``zoom_affine``, ``compute_shape_offset``), as an affine and a shape only; nothing is resampled yet.
2. ``body_box``: a threshold on a strided view of the CT (about 2 M voxels) finds the body; only the
   target-grid region around it (plus the margin and a safety band) is resampled.
3. ``foreground_box``: on that region, the exact ``CropForegroundd`` box (threshold + margin in target
   voxels, clipped to the grid), so the sliding windows fall where the MONAI pipeline puts them.
4. ``geometry.slabs.resample_region``: trilinear resampling through world coordinates, slab by slab, so
   no temporary exceeds a few hundred MB (the grid and slab resampler live in ``organseg.geometry``; the
   same routine maps the probabilities back onto the input grid in ``invert.py``).

Only one deliberate difference to the MONAI pipeline: isolated specks above the body threshold that lie
far from the body and fall between the strided samples do not widen the crop (MONAI's box would include
them). They are noise, not anatomy.

Axis conventions: every affine maps voxel indices (i, j, k) to RAS+ mm; the target grid's axes follow
``cfg.preprocess.orientation`` (RAS: axis 0 runs to the patient's right, 1 anterior, 2 superior).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import torch

from organseg.config import Config, PreprocessConfig
from organseg.geometry import Grid, map_box, voxel_map
from organseg.geometry.slabs import resample_region

#: Voxels in the strided view used to find the body.
BODY_SAMPLES = 2_000_000
_AFFINE_TOL = 1e-3  # monai.data.utils.AFFINE_TOL: Spacingd keeps a spacing this close to the target


def target_grid(shape: tuple[int, int, int], affine: np.ndarray, pre: PreprocessConfig) -> Grid:
    """The grid MONAI's ``Orientationd(pre.orientation)`` then ``Spacingd(pre.spacing_mm)`` produce.

    Args:
        shape: input voxels along (i, j, k).
        affine: input voxel -> RAS+ mm.
        pre: the model's preprocessing config.
    """
    from monai.data.utils import compute_shape_offset, zoom_affine

    src = nib.orientations.io_orientation(affine)
    dst = nib.orientations.axcodes2ornt(pre.orientation)
    ornt = nib.orientations.ornt_transform(src, dst)
    oriented = affine @ nib.orientations.inv_ornt_aff(ornt, shape)
    oriented_shape = [0, 0, 0]
    for axis, (new_axis, _flip) in enumerate(ornt):
        oriented_shape[int(new_axis)] = int(shape[axis])
    current = np.sqrt((oriented[:3, :3] ** 2).sum(axis=0))
    spacing = np.array(
        [c if abs(c - t) <= _AFFINE_TOL else t for c, t in zip(current, pre.spacing_mm)], dtype=float
    )
    new_affine = zoom_affine(oriented, spacing, diagonal=False)
    out_shape, offset = compute_shape_offset(oriented_shape, oriented, new_affine, scale_extent=False)
    new_affine[:3, 3] = offset[:3]
    return Grid(tuple(int(s) for s in out_shape), np.asarray(new_affine, dtype=np.float64))


def body_box(
    array: np.ndarray, threshold_hu: float, samples: int = BODY_SAMPLES
) -> tuple[np.ndarray, np.ndarray] | None:
    """Inclusive voxel box (lo, hi) of the body (values above ``threshold_hu``), from a strided view.

    The box is widened by one stride on each side, so structures between samples are not cut off.
    Returns ``None`` when no sampled voxel is above the threshold.
    """
    stride = max(1, math.ceil((array.size / samples) ** (1.0 / 3.0)))
    view = np.asarray(array[::stride, ::stride, ::stride])
    fg = view > threshold_hu
    if not fg.any():
        return None
    lo, hi = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        nz = np.flatnonzero(fg.any(axis=other))
        lo.append(max(int(nz[0]) * stride - stride, 0))
        hi.append(min(int(nz[-1]) * stride + stride, array.shape[axis] - 1))
    return np.array(lo), np.array(hi)


@dataclass
class Prepared:
    """A CT ready for the network.

    Attributes:
        image: ``(1, 1, X, Y, Z)`` float32, normalised, on ``crop``.
        grid: the full target grid (``Orientationd`` + ``Spacingd`` of the whole input).
        crop_lo: where ``crop`` starts inside ``grid`` (voxels).
        crop: the cropped grid the network runs on.
        trunk: the body's largest connected piece on ``crop`` (``postprocess.trunk_mask``), when the config's
            ``infer.postprocess.trunk_only`` asks for it; else ``None``.
    """

    image: torch.Tensor
    grid: Grid
    crop_lo: np.ndarray
    crop: Grid
    trunk: np.ndarray | None = None


def foreground_box(
    hu: torch.Tensor, threshold_hu: float, margin: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray] | None:
    """``CropForegroundd``'s box on ``hu`` (values > threshold, +margin, clipped): (lo, hi exclusive)."""
    fg = hu > threshold_hu
    if not bool(fg.any()):
        return None
    lo, hi = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        nz = torch.nonzero(fg.any(dim=other[1]).any(dim=other[0])).flatten()
        lo.append(max(int(nz[0]) - margin[axis], 0))
        hi.append(min(int(nz[-1]) + 1 + margin[axis], hu.shape[axis]))
    return np.array(lo), np.array(hi)


def prepare(array: np.ndarray, affine: np.ndarray, cfg: Config) -> Prepared | None:
    """The network input for one CT, as ``transforms.infer_transforms(cfg)`` would make it.

    Args:
        array: CT in HU, index order (i, j, k) (int16 or float32; never copied whole as float).
        affine: voxel -> RAS+ mm.
        cfg: the model's config (its ``preprocess`` section is replayed).

    Returns:
        ``Prepared``, or ``None`` when no voxel lies above ``preprocess.body_threshold_hu`` (no body).
    """
    from organseg.transforms import body_margin_voxels, hu_normalisation

    pre = cfg.preprocess
    native = Grid(tuple(int(s) for s in array.shape[:3]), np.asarray(affine, float))
    full = target_grid(native.shape, native.affine, pre)
    n_full = np.array(full.shape)
    margin = body_margin_voxels(cfg) if pre.crop_foreground else (0, 0, 0)
    box = body_box(array, pre.body_threshold_hu) if pre.crop_foreground else (np.zeros(3, int), n_full - 1)
    if box is None:
        return None
    if pre.crop_foreground:
        lo_f, hi_f = map_box(box[0], box[1], voxel_map(full, native))
        lo = np.maximum(np.floor(lo_f).astype(int) - np.array(margin) - 2, 0)
        hi = np.minimum(np.ceil(hi_f).astype(int) + np.array(margin) + 3, n_full)
    else:
        lo, hi = np.zeros(3, int), n_full
    hu = resample_region(array, native, full, lo, hi)
    crop_lo, crop_hi = lo, hi
    if pre.crop_foreground:
        fg = foreground_box(hu, pre.body_threshold_hu, margin)
        if fg is None:
            return None
        fg_lo, fg_hi = fg[0] + lo, fg[1] + lo
        touches = ((fg_lo == lo) & (lo > 0)) | ((fg_hi == hi) & (hi < n_full))
        if touches.any():  # the strided view underestimated the body: redo on the whole grid (rare)
            lo, hi = np.zeros(3, int), n_full
            hu = resample_region(array, native, full, lo, hi)
            fg = foreground_box(hu, pre.body_threshold_hu, margin)
            fg_lo, fg_hi = fg[0], fg[1]
        crop_lo, crop_hi = fg_lo, fg_hi
        rel_lo, rel_hi = crop_lo - lo, crop_hi - lo
        hu = hu[rel_lo[0] : rel_hi[0], rel_lo[1] : rel_hi[1], rel_lo[2] : rel_hi[2]]
    from monai.transforms import Compose

    trunk = None
    if cfg.infer.postprocess.trunk_only:
        from organseg.infer.postprocess import trunk_mask

        trunk = trunk_mask(hu.numpy(), pre.body_threshold_hu)
    normalised = Compose(hu_normalisation(cfg, "image"))({"image": hu[None]})["image"]
    image = torch.as_tensor(normalised, dtype=torch.float32).reshape(1, 1, *hu.shape).contiguous()
    return Prepared(
        image=image, grid=full, crop_lo=np.asarray(crop_lo), crop=full.crop(crop_lo, crop_hi), trunk=trunk
    )
