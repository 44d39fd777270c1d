"""Shared fixtures: tiny synthetic volumes with non-trivial geometry, and the real CT in ../shared/data."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
# CLI calls made inside the pytest process run eager PyTorch: `organseg infer` defaults to
# `--backend auto` (OpenVINO when installed), and OpenVINO's runtime next to torch training in one process
# crashed. The OpenVINO tests run it in child processes (tests/test_speed_paths.py).
os.environ["ORGANSEG_BACKEND"] = "torch"
SHARED_DATA = REPO.parent / "shared" / "data"


def require_shared_data(path: Path) -> Path:
    """``path`` inside ../shared/data; skip when it is missing, but FAIL under ``CI=true``.

    CI must run the real-data tests (the geometry oracle among them): a missing data folder there is a
    broken setup, not a reason to pass quietly.
    """
    if not path.exists():
        message = f"real test data not found at {path} (it lives in ../shared/data beside the repo)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI=true needs it", pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture
def real_ct() -> Path:
    """Real abdominal CT, 122x101x30 at 3 mm, RAS (TotalSegmentator test file)."""
    return require_shared_data(SHARED_DATA / "totalseg-example" / "ct.nii.gz")


@pytest.fixture
def real_seg() -> Path:
    """TotalSegmentator labels for ``real_ct`` (ids 1 spleen, 2 kidney_right, 3 kidney_left, 5 liver)."""
    return require_shared_data(SHARED_DATA / "totalseg-example" / "seg_totalsegmentator.nii.gz")


@pytest.fixture
def dicom_dir() -> Path:
    """A real 20-slice DICOM series (LPS)."""
    return require_shared_data(SHARED_DATA / "totalseg-dicom" / "dicom")


@pytest.fixture
def dicom_seg() -> Path:
    """TotalSegmentator labels for ``dicom_dir``; its rows are flipped relative to the series (LAS vs LPS)."""
    return require_shared_data(SHARED_DATA / "totalseg-dicom" / "seg_totalsegmentator.nii.gz")


#: What every tiny test config shares: the demo config's network shrunk to two levels (4/8 filters).
TINY_NETWORK: dict[str, object] = {"model.filters": [4, 8], "model.bottleneck": 8}
#: Training in seconds: 16^3 patches at 4 mm, batches of two, windows without overlap at inference.
TINY_TRAINING: dict[str, object] = {
    "preprocess.spacing_mm": [4.0, 4.0, 4.0],
    "preprocess.margin_mm": 4.0,
    "train.patch_size": [16, 16, 16],
    "train.batch_size": 2,
    "infer.overlap": 0.0,
}


def tiny_config_dict(settings: Mapping[str, object] | None = None, base: str = "demo") -> dict:
    """The ``base`` config as a plain dict with ``TINY_NETWORK`` and ``settings`` applied.

    ``settings`` maps dotted keys to values, e.g. ``{"preprocess.spacing_mm": [6.0, 6.0, 6.0]}``; the one
    builder behind every test module's tiny config (each module passes its own settings).
    """
    from organseg.config import config_to_dict, load_config

    data = config_to_dict(load_config(base))
    for key, value in {**TINY_NETWORK, **(settings or {})}.items():
        *parents, leaf = key.split(".")
        node = data
        for name in parents:
            node = node[name]
        node[leaf] = value
    return data


def tiny_config(settings: Mapping[str, object] | None = None, base: str = "demo"):
    """``tiny_config_dict`` as a validated ``Config``."""
    from organseg.config import config_from_dict

    return config_from_dict(tiny_config_dict(settings, base), "tiny")


def affine_4mm(origin=(-70.0, -60.0, -50.0)) -> np.ndarray:
    """A 4 mm isotropic RAS grid (voxel -> RAS+ mm) with a non-zero origin."""
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = origin
    return affine


def save_nifti(
    path: Path,
    array: np.ndarray,
    affine: np.ndarray | None = None,
    qcode: int | None = None,
    scode: int | None = None,
) -> Path:
    """Write ``array`` as NIfTI, parent folders created (``affine_4mm()`` when no affine is given).

    ``qcode``/``scode`` set the qform/sform codes (1 scanner, 0 unset) so tests can write the headers other
    tools produce; ``None`` keeps nibabel's defaults (qform 0, sform 2).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = affine_4mm() if affine is None else np.asarray(affine, dtype=float)
    img = nib.Nifti1Image(array, affine)
    if qcode is not None:
        img.set_qform(affine, code=qcode)
    if scode is not None:
        img.set_sform(affine, code=scode)
    nib.save(img, str(path))
    return path


def oblique_affine(spacing=(0.9, 1.1, 2.5), angle_deg=12.0, origin=(-20.0, 35.0, 110.0)) -> np.ndarray:
    """A voxel->RAS affine with anisotropic spacing, a rotation about z and a non-zero origin."""
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


@pytest.fixture
def tiny_ct_and_mask(tmp_path: Path) -> tuple[Path, Path]:
    """A 32x28x20 CT-like volume (body, two organ blobs, noise) and its label mask, on an oblique grid."""
    rng = np.random.default_rng(0)
    shape = (32, 28, 20)
    ii, jj, kk = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    ct = np.full(shape, -1000.0)
    body = ((ii - 16) / 14) ** 2 + ((jj - 14) / 12) ** 2 < 1
    ct[body] = -80.0
    mask = np.zeros(shape, np.uint8)
    liver = ((ii - 11) / 5) ** 2 + ((jj - 14) / 5) ** 2 + ((kk - 10) / 6) ** 2 < 1
    spleen = ((ii - 23) / 3) ** 2 + ((jj - 17) / 3) ** 2 + ((kk - 10) / 4) ** 2 < 1
    mask[liver] = 1
    mask[spleen] = 4
    ct[liver] = 60.0
    ct[spleen] = 45.0
    ct += rng.normal(0, 10, shape)
    affine = oblique_affine()
    ct_path, mask_path = tmp_path / "tiny_ct.nii.gz", tmp_path / "tiny_mask.nii.gz"
    nib.save(nib.Nifti1Image(ct.astype(np.int16), affine), ct_path)
    nib.save(nib.Nifti1Image(mask, affine), mask_path)
    return ct_path, mask_path


def tiny_phantom(seed: int, shape=(36, 32, 26)) -> tuple[np.ndarray, np.ndarray]:
    """A small CT (int16 HU: body, noise) with liver, kidney and spleen blobs, and its label mask.

    Meant for a RAS grid: liver and right kidney at +x (the patient's right), left kidney and spleen at -x.
    """
    rng = np.random.default_rng(seed)
    ii, jj, kk = np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij")
    c = np.array(shape) / 2 + rng.uniform(-1.0, 1.0, 3)
    ct = np.full(shape, -1000.0)
    ct[((ii - c[0]) / (shape[0] * 0.45)) ** 2 + ((jj - c[1]) / (shape[1] * 0.42)) ** 2 < 1] = -80.0
    label = np.zeros(shape, np.uint8)
    for value, offset, radii, hu in [
        (1, (7, 3, 3), (6, 6, 7), 60.0),
        (2, (8, -7, -4), (3, 3, 4), 160.0),
        (3, (-8, -7, -4), (3, 3, 4), 160.0),
        (4, (-9, 3, 4), (3, 4, 4), 45.0),
    ]:
        inside = (
            sum(((g - (ci + o)) / r) ** 2 for g, ci, o, r in zip((ii, jj, kk), c, offset, radii, strict=True))
            < 1
        )
        label[inside], ct[inside] = value, hu
    ct += rng.normal(0, 15, shape)
    return ct.astype(np.int16), label


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test (faster than two on a shared 2-core machine), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def _no_process_exit_in_the_test_process():
    """``os._exit`` in pytest's own process would end the run with status 0 and no summary, which CI
    would take for a pass (``organseg infer`` uses it to skip teardown). Here it raises instead; forked
    children (data loader workers) still exit normally."""
    real, pid = os._exit, os.getpid()

    def guarded(code: int) -> None:
        if os.getpid() == pid:
            raise AssertionError(f"os._exit({code}) called in the test process")
        real(code)

    os._exit = guarded
    yield
    os._exit = real
