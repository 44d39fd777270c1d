"""MONAI pipelines: geometry travels with the data, inversion restores the input grid, LR flips swap kidneys."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import oblique_affine, tiny_config
from monai.data import MetaTensor
from monai.transforms import RandFlipd

from organseg import transforms as T
from organseg.config import config_from_dict, config_to_dict, load_config

RIGHT, LEFT = 2, 3  # kidney_right, kidney_left in the default label map


def small_config(**preprocess):
    settings = {
        "preprocess.spacing_mm": [3.0, 3.0, 3.0],
        "preprocess.margin_mm": 3.0,
        "train.patch_size": [16, 16, 16],
        "train.samples_per_volume": 3,
        "train.pos_neg_ratio": 1.0,
        "train.augment.flip_prob": 0.5,  # mirrors on (the demo config has none)
    }
    return tiny_config(settings | {f"preprocess.{key}": value for key, value in preprocess.items()})


def lps_oblique_affine() -> np.ndarray:
    """Voxel axes running to patient Left, Posterior, Superior, rotated 12 degrees about z."""
    affine = oblique_affine(spacing=(2.2, 2.6, 3.5), origin=(40.0, 30.0, -20.0))
    affine[:2, :] *= -1  # RAS -> LPS for x and y: voxel i now increases towards the left
    return affine


def world(affine: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RAS mm coordinates of the voxels of ``mask``."""
    return nib.affines.apply_affine(affine, np.argwhere(mask))


@pytest.fixture
def kidney_case(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    """CT + labels on an LPS oblique grid: kidney_right at world x > 0 (patient right), kidney_left at x < 0.

    The kidneys differ in HU (right 200, left 120) so that a mirrored image can be told apart.
    """
    shape = (44, 40, 18)
    affine = lps_oblique_affine()
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(shape) - 1) / 2)  # grid centre at world (0, 0, 0)
    idx = np.indices(shape).reshape(3, -1).T
    x, y, z = nib.affines.apply_affine(affine, idx).reshape(*shape, 3).transpose(3, 0, 1, 2)
    ct = np.full(shape, -1000.0)
    ct[(x / 40) ** 2 + (y / 35) ** 2 < 1] = -60.0
    label = np.zeros(shape, np.uint8)
    for value, cx, hu in [(RIGHT, 22.0, 200.0), (LEFT, -22.0, 120.0)]:
        kidney = ((x - cx) / 8) ** 2 + ((y + 8) / 8) ** 2 + (z / 14) ** 2 < 1
        label[kidney], ct[kidney] = value, hu
    ct_path, label_path = tmp_path / "ct.nii.gz", tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(ct.astype(np.int16), affine), ct_path)
    nib.save(nib.Nifti1Image(label, affine), label_path)
    assert world(affine, label == RIGHT)[:, 0].min() > 0 and world(affine, label == LEFT)[:, 0].max() < 0
    return ct_path, label_path, affine


def test_preprocess_reorients_resamples_normalises_and_keeps_the_affine(kidney_case):
    ct_path, label_path, _ = kidney_case
    cfg = small_config()
    sample = T.val_transforms(cfg)({"image": str(ct_path), "label": str(label_path)})
    image, label = sample["image"], sample["label"]
    assert isinstance(image, MetaTensor) and image.ndim == 4 and image.shape == label.shape
    affine = image.affine.numpy()
    assert "".join(nib.aff2axcodes(affine)) == "RAS"
    assert np.allclose(np.linalg.norm(affine[:3, :3], axis=0), cfg.preprocess.spacing_mm, atol=1e-4)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert label.dtype == torch.uint8 and set(torch.unique(label).tolist()) == {0, RIGHT, LEFT}
    # kidneys stay where they were in the world after reorientation, resampling and the body crop
    lab = label[0].numpy()
    assert world(affine, lab == RIGHT)[:, 0].mean() > 10 and world(affine, lab == LEFT)[:, 0].mean() < -10


def test_body_crop_runs_on_hu_and_keeps_a_margin(kidney_case):
    ct_path, label_path, _ = kidney_case
    cropped = T.val_transforms(small_config())({"image": str(ct_path), "label": str(label_path)})
    full = T.val_transforms(small_config(crop_foreground=False))(
        {"image": str(ct_path), "label": str(label_path)}
    )
    assert all(c < f for c, f in zip(cropped["image"].shape[1:3], full["image"].shape[1:3], strict=True))
    assert int((cropped["label"] > 0).sum()) == int((full["label"] > 0).sum())  # no organ voxel lost
    # the margin (3 mm = 1 voxel) is air, which the HU window maps to 0
    assert float(cropped["image"][0, 0].max()) == 0.0 and float(cropped["image"][0, -1].max()) == 0.0


def test_infer_transforms_invert_back_to_the_lps_oblique_input_grid(kidney_case):
    ct_path, label_path, affine = kidney_case
    cfg = small_config()
    pre = T.infer_transforms(cfg)
    sample = pre({"image": str(ct_path)})
    assert sample["image"].shape[1:] != nib.load(ct_path).shape  # really resampled and cropped
    sample["pred"] = (sample["image"] > 0.5).to(torch.uint8)  # kidneys (>= 120 HU = 0.69) on the network grid
    out = T.invert_to_input(pre, sample, nearest=True)["pred"]
    ct = np.asarray(nib.load(ct_path).dataobj)
    assert tuple(out.shape[1:]) == ct.shape
    assert np.allclose(out.affine.numpy(), affine, atol=1e-4)
    truth = np.asarray(nib.load(label_path).dataobj) > 0
    pred = out[0].numpy() > 0.5
    dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
    assert dice > 0.9


def test_lr_flip_swaps_kidney_labels_so_right_stays_right(kidney_case):
    ct_path, label_path, _ = kidney_case
    cfg = small_config()
    sample = T.val_transforms(cfg)({"image": str(ct_path), "label": str(label_path)})
    flip = T.RandFlipLRSwapd("image", "label", cfg.labels.lr_swap_pairs, prob=1.0)
    flipped = flip(dict(sample))
    affine = flipped["label"].affine.numpy()
    lab, img = flipped["label"][0].numpy(), flipped["image"][0].numpy()
    # world-space right (+x in RAS) is still labelled kidney_right, left is kidney_left
    assert world(affine, lab == RIGHT)[:, 0].min() > 0
    assert world(affine, lab == LEFT)[:, 0].max() < 0
    # the anatomy really was mirrored: the kidney now on the right has the left kidney's HU (120 < 200)
    before = sample["image"][0].numpy()
    right_before = before[sample["label"][0].numpy() == RIGHT].mean()
    assert img[lab == RIGHT].mean() < right_before - 0.1
    assert torch.equal(flipped["image"].as_tensor(), torch.flip(sample["image"].as_tensor(), dims=(1,)))
    assert np.array_equal(affine, sample["label"].affine.numpy())  # a new, mirrored patient on the same grid


def test_lr_flip_with_probability_zero_changes_nothing(kidney_case):
    ct_path, label_path, _ = kidney_case
    sample = T.val_transforms(small_config())({"image": str(ct_path), "label": str(label_path)})
    out = T.RandFlipLRSwapd("image", "label", ((RIGHT, LEFT),), prob=0.0)(dict(sample))
    assert torch.equal(out["label"], sample["label"]) and torch.equal(out["image"], sample["image"])


@pytest.mark.parametrize("axis", [1, 2])
def test_flips_along_other_axes_do_not_swap_labels(kidney_case, axis):
    ct_path, label_path, _ = kidney_case
    sample = T.val_transforms(small_config())({"image": str(ct_path), "label": str(label_path)})
    out = RandFlipd(("image", "label"), prob=1.0, spatial_axis=axis)(dict(sample))
    lab = out["label"][0].numpy()
    affine = out["label"].affine.numpy()
    assert (lab == RIGHT).sum() == (sample["label"][0].numpy() == RIGHT).sum()
    assert world(affine, lab == RIGHT)[:, 0].min() > 0 and world(affine, lab == LEFT)[:, 0].max() < 0


def test_training_augmentation_never_flips_axis_0_without_swapping():
    off = T.augment_transforms(small_config())  # the default: no left-right mirror at all
    d = config_to_dict(small_config())
    d["train"]["augment"]["flip_lr"] = "swap"
    swap = T.augment_transforms(config_from_dict(d))
    assert any(isinstance(t, T.RandFlipLRSwapd) for t in swap)
    assert not any(isinstance(t, T.RandFlipLRSwapd) for t in off)
    for t in swap + off:
        if isinstance(t, RandFlipd):
            assert t.flipper.spatial_axis not in (0, (0,), [0])


def test_train_transforms_yield_patches_with_foreground(kidney_case):
    ct_path, label_path, _ = kidney_case
    cfg = small_config()
    patches = T.train_transforms(cfg)({"image": str(ct_path), "label": str(label_path)})
    assert len(patches) == cfg.train.samples_per_volume
    for p in patches:
        assert tuple(p["image"].shape) == (1, 16, 16, 16) and p["label"].shape == p["image"].shape
        assert set(torch.unique(p["label"]).tolist()) <= {0, RIGHT, LEFT}
    assert any(int((p["label"] > 0).sum()) > 0 for p in patches)


def test_load_volumed_takes_arrays_with_an_affine():
    affine = lps_oblique_affine()
    out = T.LoadVolumed(("image", "label"), kinds={"image": "ct", "label": "mask"})(
        {"image": np.zeros((5, 6, 7), np.int16), "label": np.ones((1, 5, 6, 7), np.uint8), "affine": affine}
    )
    assert "affine" not in out
    assert out["image"].shape == (1, 5, 6, 7) and out["image"].dtype == torch.float32
    assert out["label"].dtype == torch.uint8
    assert np.allclose(out["image"].affine.numpy(), affine)


def test_thin_volume_is_padded_like_inference_windows() -> None:
    """A slab thinner than the patch is padded by repeating its edge slices (``infer.padding``)."""
    from monai.transforms import Compose

    from organseg.transforms import patch_transforms

    cfg = load_config("demo")
    rng = np.random.default_rng(0)
    image = rng.random((1, 70, 70, 10)).astype(np.float32) + 0.5
    label = np.zeros((1, 70, 70, 10), np.uint8)
    label[0, 20:50, 20:50, :] = 1
    patch = Compose(patch_transforms(cfg))({"image": image, "label": label})[0]
    img = np.asarray(patch["image"])[0]
    assert img.shape[2] == cfg.train.patch_size[2]
    # 10 slices padded to 64: 27 copies of the first slice before, 27 of the last after.
    z0, z1 = (img.shape[2] - 10) // 2, (img.shape[2] - 10) // 2 + 10
    np.testing.assert_array_equal(img[:, :, :z0], np.repeat(img[:, :, z0 : z0 + 1], z0, axis=2))
    np.testing.assert_array_equal(img[:, :, z1:], np.repeat(img[:, :, z1 - 1 : z1], img.shape[2] - z1, axis=2))
    assert img.min() > 0.4  # no zero block
