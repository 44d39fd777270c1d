"""The shipped built-in model on the real CT: organs on the patient's correct side for any storage order."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from organseg.infer import segment
from organseg.io import read_image


def _world_centroids(mask_path: Path) -> dict[int, np.ndarray]:
    vol = read_image(mask_path, kind="mask")
    out = {}
    for label in (1, 2, 3, 4):
        ijk = np.argwhere(vol.array == label)
        assert len(ijk), f"label {label} missing from {mask_path.name}"
        out[label] = vol.affine[:3, :3] @ ijk.mean(axis=0) + vol.affine[:3, 3]
    return out


@pytest.mark.parametrize("storage", ["RAS", "LPS"])
def test_builtin_model_puts_organs_on_their_side_in_world_space(
    real_ct: Path, tmp_path: Path, storage: str, one_torch_thread
) -> None:
    """RAS+ world: +x is the patient's right. Liver and right kidney right, spleen and left kidney left."""
    ct = real_ct
    if storage == "LPS":  # same voxels in world space, stored with the first two axes reversed
        img = nib.load(real_ct)
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        flip[:2, 3] = [img.shape[0] - 1, img.shape[1] - 1]
        data = np.asanyarray(img.dataobj)[::-1, ::-1, :]
        ct = tmp_path / "ct_lps.nii.gz"
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data), img.affine @ flip), ct)
        assert "".join(nib.aff2axcodes(nib.load(ct).affine)) == "LPS"
    out = tmp_path / "mask.nii.gz"
    segment(ct, out, progress=False, threads=1)  # no model: the built-in one
    c = _world_centroids(out)
    assert c[1][0] > 0 and c[2][0] > 0, "liver and right kidney must lie at +x (patient right)"
    assert c[4][0] < 0 and c[3][0] < 0, "spleen and left kidney must lie at -x (patient left)"
    assert c[2][0] > c[3][0] + 50  # the kidneys are well apart, right of left


def test_builtin_model_on_thick_slices_writes_the_input_grid(real_ct: Path, tmp_path: Path, one_torch_thread) -> None:
    """6 mm slices (every other slice of the real CT) are upsampled onto the model's 3 mm grid and back."""
    img = nib.load(real_ct)
    affine = img.affine.copy()
    affine[:3, 2] *= 2
    thick = tmp_path / "ct_6mm.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj)[:, :, ::2], affine), thick)
    out = tmp_path / "mask.nii.gz"
    result = segment(thick, out, progress=False, threads=1)
    mask = nib.load(out)
    assert mask.shape == (img.shape[0], img.shape[1], (img.shape[2] + 1) // 2)
    np.testing.assert_allclose(mask.affine, affine, atol=1e-5)
    volumes = result.cases[0].volumes_ml
    assert volumes["liver"] > 500 and volumes["spleen"] > 100  # the organs are found, not noise
