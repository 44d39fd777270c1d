"""MONAI dictionary pipelines for training, validation and inference, built from the config.

Every pipeline starts from the same deterministic prefix (``preprocess_transforms``):

    LoadVolumed -> Orientationd(RAS) -> Spacingd(spacing_mm) -> CropForegroundd(body) -> HU normalisation

Geometry travels with the data: ``LoadVolumed`` returns channel-first ``MetaTensor`` s carrying the
voxel -> RAS+ mm affine, and every geometric step records itself in ``applied_operations``.

Inference does **not** run ``infer_transforms`` or ``Invertd``: ``organseg.infer.preprocess.prepare``
replays the same steps on the body only (no whole-volume float copies) and ``organseg.infer.invert`` maps
the probabilities back with the slab resampler of ``organseg.geometry``. ``infer_transforms`` +
``invert_to_input`` (``monai.transforms.Invertd``) are the **test oracle** that fast path is checked
against (``tests/test_infer.py::test_prepare_and_invert_match_the_monai_pipeline``, on the real CT).

After ``Orientationd(RAS)`` spatial axis 0 runs from the patient's left to the patient's **right**
(RAS+: +x is Right). A mirror along that axis turns the right kidney into a left one, so the training
pipeline never flips axis 0 with a plain ``RandFlipd``: it uses ``RandFlipLRSwapd``, which mirrors image
and label and swaps the ``cfg.labels.lr_swap_pairs`` ids, or no LR flip at all (``augment.flip_lr: off``).

Example:
    >>> cfg = load_config("demo")
    >>> sample = val_transforms(cfg)({"image": "ct.nii.gz", "label": "mask.nii.gz"})
    >>> sample["image"].shape, sample["image"].affine      # (1, X, Y, Z) at 3 mm, RAS
    >>> patches = train_transforms(cfg)({"image": "ct.nii.gz", "label": "mask.nii.gz"})   # list of dicts
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    CastToTyped,
    Compose,
    CropForegroundd,
    Invertd,
    Lambda,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    Randomizable,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)
from monai.utils import MetaKeys, SpaceKeys

from organseg import io
from organseg.config import Config
from organseg.geometry import lr_axis

#: The keys of a labelled sample; the image is always first.
IMAGE_LABEL = ("image", "label")


# --------------------------------------------------------------------------------------- loading


def to_metatensor(
    array: np.ndarray | torch.Tensor, affine: np.ndarray, source: str = "<memory>", is_label: bool = False
) -> MetaTensor:
    """A channel-first ``MetaTensor`` (1, X, Y, Z) with a voxel -> RAS+ mm ``affine``.

    ``array`` is 3D in voxel index order (i, j, k), or already channel-first 4D. Images (HU, often
    int16) become float32; labels (``is_label``) become uint8 (label ids are < 256).
    """
    data = torch.as_tensor(np.asarray(array) if not isinstance(array, torch.Tensor) else array)
    if data.ndim == 3:
        data = data[None]
    data = data.to(torch.uint8) if is_label else data.float()
    affine_t = torch.as_tensor(np.asarray(affine, dtype=np.float64))
    meta = {
        MetaKeys.AFFINE: affine_t,
        MetaKeys.ORIGINAL_AFFINE: affine_t.clone(),
        MetaKeys.SPATIAL_SHAPE: np.asarray(data.shape[1:]),
        MetaKeys.ORIGINAL_CHANNEL_DIM: "no_channel",
        MetaKeys.SPACE: SpaceKeys.RAS,
        "filename_or_obj": source,
    }
    return MetaTensor(data, meta=meta)


class LoadVolumed(MapTransform):
    """Load each key into a channel-first ``MetaTensor`` with its RAS+ affine.

    A key may hold a file path (read with ``organseg.io.read_image``: NIfTI, DICOM, NRRD, ...), an
    ``organseg.io.Volume``, a ``MetaTensor`` (kept), or a bare array (3D, or 4D channel-first) whose
    affine is taken from ``data[affine_key]`` (the form the on-the-fly phantom generator yields).
    The ``affine_key`` entry is removed so that batches collate cleanly.

    Args:
        keys: keys to load, e.g. ``("image", "label")``.
        kinds: ``io.read_image`` kind per key (``ct``, ``mask``, ``image``); default ``image``.
            ``mask`` keys become uint8 label maps, the others float32.
        affine_key: where bare arrays find their 4x4 voxel -> RAS+ mm affine.
        allow_missing_keys: skip keys that are absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        kinds: Mapping[str, str] | None = None,
        affine_key: str = "affine",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.kinds = dict(kinds or {})
        self.affine_key = affine_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        affine = d.pop(self.affine_key, None)
        for key in self.key_iterator(d):
            value = d[key]
            if isinstance(value, MetaTensor):
                continue
            if isinstance(value, (str, Path)):
                vol = io.read_image(value, kind=self.kinds.get(key, "image"))
                d[key] = to_metatensor(vol.array, vol.affine, vol.source, self._is_label(key))
            elif isinstance(value, io.Volume):
                d[key] = to_metatensor(value.array, value.affine, value.source, self._is_label(key))
            else:
                if affine is None:
                    raise ValueError(
                        f"LoadVolumed: key {key!r} holds an array but the sample has no {self.affine_key!r}"
                    )
                d[key] = to_metatensor(value, affine, is_label=self._is_label(key))
        return d

    def _is_label(self, key: Hashable) -> bool:
        return self.kinds.get(key) == "mask"


# --------------------------------------------------------------------------------------- flips


class RandFlipLRSwapd(Randomizable, MapTransform):
    """Mirror the patient left-right: flip the LR axis and swap left/right label ids.

    After ``Orientationd(axcodes="RAS")`` the LR axis is spatial axis 0 (``lr_axis``). The affine is
    deliberately **kept**: the result is a new, mirrored patient on the same grid, not the same
    patient seen from another side. The organ that now lies on the patient's right (+x in RAS) is a
    right organ, so it gets the ``*_right`` id: that is why label ids are swapped, and why a plain
    ``RandFlipd`` along this axis would teach the network that right kidneys lie on the left.

    Args:
        keys: image-like keys to mirror (values unchanged).
        label_keys: label keys to mirror and whose ids in ``swap_pairs`` trade places.
        swap_pairs: pairs of label ids, e.g. ``cfg.labels.lr_swap_pairs`` = ((2, 3),).
        prob: probability of mirroring a sample.
        spatial_axis: the LR axis of the channel-first input's spatial axes (0 for RAS).

    Example:
        >>> flip = RandFlipLRSwapd("image", "label", cfg.labels.lr_swap_pairs, prob=0.5)
        >>> sample = flip(sample)   # image/label (1, X, Y, Z) MetaTensors after Orientationd(RAS)
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_keys: KeysCollection,
        swap_pairs: Sequence[tuple[int, int]],
        prob: float = 0.5,
        spatial_axis: int = 0,
        allow_missing_keys: bool = False,
    ):
        label_keys = [label_keys] if isinstance(label_keys, str) else list(label_keys)
        keys = [keys] if isinstance(keys, str) else list(keys)
        MapTransform.__init__(self, keys + [k for k in label_keys if k not in keys], allow_missing_keys)
        self.label_keys = set(label_keys)
        self.swap_pairs = tuple((int(a), int(b)) for a, b in swap_pairs)
        self.prob = float(prob)
        self.spatial_axis = int(spatial_axis)
        self._do_flip = False

    def randomize(self, data: object = None) -> None:
        self._do_flip = self.R.random_sample() < self.prob

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        self.randomize()
        if not self._do_flip:
            return d
        for key in self.key_iterator(d):
            # torch.flip keeps a MetaTensor's meta (affine included) as it is: the patient is mirrored
            flipped = torch.flip(torch.as_tensor(d[key]), dims=(self.spatial_axis + 1,))
            if key in self.label_keys:
                swapped = flipped.clone()
                for a, b in self.swap_pairs:
                    swapped[flipped == a] = b
                    swapped[flipped == b] = a
                flipped = swapped
            d[key] = flipped
        return d


# --------------------------------------------------------------------------------------- pipelines


class AboveThreshold:
    """``select_fn`` for ``CropForegroundd``: voxels strictly above ``threshold`` (picklable)."""

    def __init__(self, threshold: float):
        self.threshold = float(threshold)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x > self.threshold


def hu_normalisation(cfg: Config, key: str = "image") -> list:
    """The HU normalisation steps of ``preprocess_transforms`` (window -> 0..1, or clip + z-score)."""
    p = cfg.preprocess
    lo, hi = p.hu_window
    if p.normalization == "window":
        return [ScaleIntensityRanged(key, a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)]
    # zscore: clip to the window first (so metal and air do not dominate the statistics)
    return [
        ScaleIntensityRanged(key, a_min=lo, a_max=hi, b_min=lo, b_max=hi, clip=True),
        NormalizeIntensityd(key),
    ]


def body_margin_voxels(cfg: Config) -> tuple[int, int, int]:
    """``preprocess.margin_mm`` in voxels of the target spacing, rounded up, per axis."""
    return tuple(int(math.ceil(cfg.preprocess.margin_mm / s)) for s in cfg.preprocess.spacing_mm)


def preprocess_transforms(
    cfg: Config, keys: Sequence[str] = IMAGE_LABEL, reader: Callable[[dict], dict] | None = None
) -> Compose:
    """The deterministic prefix: load, reorient, resample, crop to the body, normalise HU.

    ``keys[0]`` is the CT (read as ``kind="ct"``, resampled bilinearly); the others are labels
    (``kind="mask"``, nearest, kept uint8). ``reader`` (optional, deterministic, picklable) runs first
    and may replace paths by ``io.Volume`` s, e.g. a dataset case read with its label remapping.
    The body crop runs on HU **before** normalisation: ``body_threshold_hu`` (-500) usually lies
    below the window floor (-175), where clipping would make body and air indistinguishable.
    All geometric steps are invertible (see ``invert_to_input``).
    """
    keys = tuple(keys)
    image, labels = keys[0], keys[1:]
    p = cfg.preprocess
    steps: list = [
        *([Lambda(reader)] if reader is not None else []),
        LoadVolumed(keys, kinds={image: "ct", **{k: "mask" for k in labels}}),
        Orientationd(keys, axcodes=p.orientation, labels=None),
        Spacingd(
            keys, pixdim=p.spacing_mm, mode=("bilinear",) + ("nearest",) * len(labels), dtype=np.float32
        ),
    ]
    if labels:
        steps.append(CastToTyped(labels, dtype=torch.uint8))
    if p.crop_foreground:
        steps.append(
            CropForegroundd(
                keys,
                source_key=image,
                select_fn=AboveThreshold(p.body_threshold_hu),
                margin=body_margin_voxels(cfg),
                allow_smaller=True,
            )
        )
    steps += hu_normalisation(cfg, image)
    return Compose(steps)


def infer_transforms(cfg: Config, keys: Sequence[str] = ("image",)) -> Compose:
    """Image-only preprocessing as inference replays it (the oracle of ``infer.preprocess.prepare``).

    Invert its output with ``invert_to_input``. ``organseg segment`` does not call it: it is the MONAI
    reference that tests compare the fast path with.
    """
    return preprocess_transforms(cfg, keys)


def val_transforms(cfg: Config, reader: Callable[[dict], dict] | None = None) -> Compose:
    """Preprocessing of whole image + label volumes for validation (``reader``: see ``preprocess_transforms``)."""
    return preprocess_transforms(cfg, IMAGE_LABEL, reader)


def augment_transforms(cfg: Config) -> list:
    """Random spatial and intensity augmentation of ``image``/``label`` patches, from ``cfg.train.augment``."""
    a = cfg.train.augment
    steps: list = []
    if a.flip_prob > 0:
        lr = lr_axis(cfg.preprocess.orientation)
        for axis in (ax for ax in range(3) if ax != lr):  # free: no left/right meaning
            steps.append(RandFlipd(IMAGE_LABEL, prob=a.flip_prob, spatial_axis=axis))
        if a.flip_lr == "swap":
            pairs = cfg.labels.lr_swap_pairs
            steps.append(RandFlipLRSwapd("image", "label", pairs, prob=a.flip_prob, spatial_axis=lr))
    if a.affine_prob > 0 and (a.rotate_deg > 0 or tuple(a.zoom) != (1.0, 1.0)):
        rot = math.radians(a.rotate_deg)
        steps.append(
            RandAffined(
                IMAGE_LABEL,
                prob=a.affine_prob,
                rotate_range=(rot, rot, rot),
                scale_range=((a.zoom[0] - 1.0, a.zoom[1] - 1.0),) * 3,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
                spatial_size=cfg.train.patch_size,
                cache_grid=True,
            )
        )
    if a.intensity_prob > 0:
        if a.intensity_shift > 0:
            steps.append(RandShiftIntensityd("image", offsets=a.intensity_shift, prob=a.intensity_prob))
        if a.intensity_scale > 0:
            steps.append(RandScaleIntensityd("image", factors=a.intensity_scale, prob=a.intensity_prob))
        if a.noise_std > 0:
            steps.append(RandGaussianNoised("image", std=a.noise_std, prob=a.intensity_prob))
    return steps


def patch_transforms(cfg: Config) -> list:
    """Pad to the patch size, then sample ``samples_per_volume`` pos/neg-balanced patches."""
    t = cfg.train
    return [
        # A volume thinner than the patch (a thin slab) is padded the way inference pads its windows
        # (``infer.padding``), so the network trains on what it will see.
        SpatialPadd(IMAGE_LABEL, spatial_size=t.patch_size, mode=cfg.infer.padding),
        RandCropByPosNegLabeld(
            IMAGE_LABEL,
            label_key="label",
            spatial_size=t.patch_size,
            pos=t.pos_neg_ratio,
            neg=1.0,
            num_samples=t.samples_per_volume,
        ),
    ]


def train_transforms(
    cfg: Config, preprocess: bool = True, reader: Callable[[dict], dict] | None = None
) -> Compose:
    """Training pipeline: preprocess -> pad -> patch sampling -> augmentation; returns a list of patches.

    ``CacheDataset``/``PersistentDataset`` cache everything up to the first random transform (the
    preprocessing and the padding), so epochs do not re-read or re-resample volumes. With
    ``preprocess=False`` the pipeline starts from already preprocessed samples (the phantom pool).
    """
    steps = list(preprocess_transforms(cfg, IMAGE_LABEL, reader).transforms) if preprocess else []
    return Compose(steps + patch_transforms(cfg) + augment_transforms(cfg))


def invert_to_input(
    pipeline: Compose,
    data: dict,
    keys: Sequence[str] = ("pred",),
    orig_key: str = "image",
    nearest: bool = False,
) -> dict:
    """Map ``data[keys]`` (on the preprocessed grid) back onto the grid ``data[orig_key]`` was loaded on.

    ``pipeline`` must be the very ``infer_transforms(cfg)`` object that produced ``data[orig_key]``
    (MONAI checks transform identity when inverting); each key in ``keys`` is a channel-first tensor
    on the preprocessed grid. Use ``nearest=True`` for label maps, ``False`` for probabilities. The
    result carries the input's affine (voxel -> RAS+ mm) and shape.

    Example:
        >>> pre = infer_transforms(cfg)
        >>> sample = pre({"image": "ct.nii.gz"})
        >>> sample["pred"] = probabilities                     # (C, X, Y, Z) on sample["image"]'s grid
        >>> probs_on_input = invert_to_input(pre, sample)["pred"]
    """
    inverter = Invertd(
        keys=list(keys),
        transform=pipeline,
        orig_keys=[orig_key] * len(keys),
        nearest_interp=nearest,
        to_tensor=True,
    )
    return inverter(data)
