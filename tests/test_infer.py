"""Tests of organseg.infer: masks on the input's exact grid, MONAI-equivalent preprocessing and inversion,
TTA's left-right channel swap, outputs (RLE, stats, probabilities), model resolution and warnings.

The networks are tiny (filters 4-8) and randomly initialised, run at 6 mm with 32^3 windows: their
predictions are arbitrary but deterministic and structured, which is all that geometry tests need.
"""

from __future__ import annotations

import json
from pathlib import Path

import conftest
import nibabel as nib
import numpy as np
import pytest
import torch

from organseg import io, modelstore
from organseg.checkpoint import build_model, save_checkpoint
from organseg.config import LabelMap, PostprocessConfig, config_to_dict, replace_path
from organseg.errors import ModelError, OutputError
from organseg.geometry import Grid
from organseg.infer import check_ct_intensities, segment
from organseg.infer.models import load_models
from organseg.infer.outputs import rle_decode, rle_encode
from organseg.infer.postprocess import postprocess_mask, restrict_to_trunk, trunk_mask
from organseg.infer.preprocess import prepare
from organseg.infer.tta import swap_channels, tta_predictor
from organseg.modelstore import default_model, resolve_model_files


def tiny_config(spacing_mm: float = 6.0, patch: int = 32, labels: dict | None = None):
    """The shared tiny config at ``spacing_mm`` with ``patch``^3 windows (and other ``labels``)."""
    settings = {"preprocess.spacing_mm": [spacing_mm] * 3, "train.patch_size": [patch] * 3}
    return conftest.tiny_config({**settings, **({"labels": labels} if labels is not None else {})})


def save_tiny(path: Path, cfg=None, seed: int = 0, background_only: bool = False) -> Path:
    cfg = cfg or tiny_config()
    torch.manual_seed(seed)
    net = build_model(cfg)
    state = net.state_dict()
    if background_only:  # a head that always says background, whatever it sees
        state["head.weight"].zero_()
        state["head.bias"].copy_(torch.tensor([10.0] + [-10.0] * (cfg.labels.num_classes - 1)))
    save_checkpoint(path, {"model": state, "config": config_to_dict(cfg), "epoch": 0})
    return path


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see conftest)."""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("model") / "tiny.pt")


def run(input_path, output, model, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("threads", 1)  # the test machine's cores are shared: spinning OpenMP threads would crawl
    return segment(input_path, output, model=model, device="cpu", **kw)


def lps_copy(vol: io.Volume) -> io.Volume:
    """The same voxels in world space, stored with axes 0 and 1 reversed (RAS -> LPS storage)."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [vol.shape[0] - 1, vol.shape[1] - 1]
    return io.Volume(np.ascontiguousarray(vol.array[::-1, ::-1, :]), vol.affine @ flip, "lps")


# --------------------------------------------------------------------------------------- grids


def test_real_ct_mask_on_input_grid(real_ct: Path, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "ct_mask.nii.gz"
    result = run(real_ct, out, tiny_model, stats=True)
    ct, mask = nib.load(real_ct), nib.load(out)
    assert mask.shape == ct.shape
    np.testing.assert_allclose(mask.affine, ct.affine, atol=1e-5)
    assert nib.aff2axcodes(mask.affine) == nib.aff2axcodes(ct.affine)
    assert mask.get_data_dtype() == np.uint8
    data = np.asarray(mask.dataobj)
    assert set(np.unique(data)) > {0}, "the random net predicts structure, not only background"
    assert (tmp_path / "ct_mask.json").is_file()
    manifest = json.loads((tmp_path / "ct_mask.run.json").read_text())
    assert manifest["models"] == [str(tiny_model)]
    assert {"read", "preprocess", "network", "invert", "write"} <= set(manifest["timings_s"])
    assert manifest["versions"]["torch"] == torch.__version__
    assert result.mask == out
    voxel_ml = abs(np.linalg.det(ct.affine[:3, :3])) / 1000.0  # the volumes are counted on the written mask
    for organ_id, organ in enumerate(LabelMap().organs, start=1):
        expected = np.count_nonzero(data == organ_id) * voxel_ml
        assert result.cases[0].volumes_ml[organ] == pytest.approx(expected, rel=1e-6), organ
    assert sum(result.cases[0].volumes_ml.values()) > 0


def test_dicom_mask_on_dicom_grid(dicom_dir: Path, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "dicom_mask.nii.gz"
    run(dicom_dir, out, tiny_model)
    ref = io.read_image(dicom_dir)
    mask = nib.load(out)
    assert mask.shape == ref.shape
    np.testing.assert_allclose(mask.affine, ref.affine, atol=1e-4)
    assert "".join(nib.aff2axcodes(mask.affine)) == ref.orientation == "LPS"


@pytest.mark.parametrize("case", ["padded-lps", "edge-ras"])
def test_prepare_and_invert_match_the_monai_pipeline(real_ct: Path, case: str) -> None:
    """The fast path reproduces transforms.infer_transforms + sliding window + Invertd (the MONAI way).

    ``padded-lps``: air around the body, so the body crop lies inside the grid, and LPS storage, so the
    orientation step acts too. ``edge-ras``: the body touches the grid's edges and at 4.7 mm the resampled
    grid ends 1.1 mm short of the last input voxel, whose labels come from the grid's edge (border
    padding), as in ``Invertd``.
    """
    from monai.inferers import sliding_window_inference

    from organseg.infer.invert import probabilities_to_input
    from organseg.infer.sliding import predict_probabilities
    from organseg.transforms import infer_transforms, invert_to_input

    ct = io.read_image(real_ct)
    if case == "padded-lps":
        cfg = tiny_config(spacing_mm=5.0)
        padded = np.pad(ct.array, ((9, 7), (6, 8), (6, 7)), constant_values=-1000)
        shift = np.eye(4)
        shift[:3, 3] = [-9, -6, -6]
        vol = lps_copy(io.Volume(padded, ct.affine @ shift, "padded"))
    else:
        cfg = tiny_config(spacing_mm=4.7)
        vol = ct
    torch.manual_seed(1)
    net = build_model(cfg).eval()
    prep = prepare(vol.array, vol.affine, cfg)
    probs = predict_probabilities(prep.image, [net], cfg, overlap=0.25, sw_batch_size=1)
    mask, _ = probabilities_to_input(probs, prep, Grid(vol.shape, vol.affine))
    if case == "padded-lps":
        assert np.all(prep.crop_lo > 0) and np.all(prep.crop_lo + prep.crop.shape < prep.grid.shape)
    else:
        assert prep.crop_lo[0] == 0 and prep.crop.shape[0] == prep.grid.shape[0]
        assert (prep.grid.shape[0] - 1) * 4.7 < (ct.shape[0] - 1) * 3.0

    pipeline = infer_transforms(cfg)
    sample = pipeline({"image": vol})
    image = sample["image"]
    assert tuple(image.shape[1:]) == prep.crop.shape
    np.testing.assert_allclose(np.asarray(image.affine), prep.crop.affine, atol=1e-4)
    np.testing.assert_allclose(image[0].numpy(), prep.image[0, 0].numpy(), atol=1e-4)
    with torch.inference_mode():
        out = sliding_window_inference(
            image[None],
            cfg.infer_patch_size,
            1,
            lambda x: torch.softmax(net(x), 1),
            0.25,
            "gaussian",
            padding_mode=cfg.infer.padding,  # the model's own window padding, as the fast path uses it
        )
    np.testing.assert_allclose(out[0].numpy(), probs.numpy(), atol=1e-4)  # a MetaTensor: Invertd needs one
    sample["pred"] = out[0]
    inverted = torch.as_tensor(invert_to_input(pipeline, sample)["pred"])
    inverted[0] += 1.0 - inverted.sum(0)  # outside the crop Invertd leaves 0 for every class: background
    reference = torch.argmax(inverted, 0).numpy()
    assert reference.shape == vol.shape
    agreement = float((reference == mask).mean())
    assert agreement > 0.9999, agreement


def test_lps_and_ras_inputs_give_the_same_world_mask(real_ct: Path, tiny_model: Path, tmp_path: Path) -> None:
    vol = io.read_image(real_ct)
    lps = lps_copy(vol)
    nib.save(nib.Nifti1Image(lps.array, lps.affine), tmp_path / "lps.nii.gz")
    run(real_ct, tmp_path / "ras_mask.nii.gz", tiny_model)
    run(tmp_path / "lps.nii.gz", tmp_path / "lps_mask.nii.gz", tiny_model)
    ras_mask = nib.load(tmp_path / "ras_mask.nii.gz")
    lps_mask = nib.load(tmp_path / "lps_mask.nii.gz")
    np.testing.assert_allclose(lps_mask.affine, lps.affine, atol=1e-5)
    a = np.asarray(ras_mask.dataobj)
    b = np.asarray(lps_mask.dataobj)[::-1, ::-1, :]  # back to RAS storage: same world positions
    assert len(np.unique(a)) >= 3
    assert float((a == b).mean()) > 0.9999


@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("oblique", [False, True])
@pytest.mark.parametrize("fortran", [False, True])
def test_resampling_matches_scipy(oblique: bool, fortran: bool, padding: str) -> None:
    """Trilinear resampling (separable for axis-aligned maps, grid_sample for oblique) equals scipy's."""
    from scipy import ndimage

    from organseg.geometry.slabs import sample_slabs

    rng = np.random.default_rng(0)
    src = rng.normal(size=(17, 13, 11)).astype(np.float32)
    src = np.asfortranarray(src) if fortran else src
    # destination index -> source index: permute axes (i->k, j->i, k->j), flip one, scale, shift
    matrix = np.array([[0, 0.7, 0, 1.3], [0, 0, -0.9, 11.2], [1.1, 0, 0, -0.6], [0, 0, 0, 1]])
    if oblique:
        a = np.deg2rad(7)
        rot = np.array(
            [[np.cos(a), -np.sin(a), 0, 0], [np.sin(a), np.cos(a), 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
        )
        matrix = rot @ matrix
    lo, hi = np.array([1, 0, 2]), np.array([12, 16, 14])
    out = np.zeros(tuple(hi - lo), np.float32)

    def put(region, values):
        out[tuple(slice(r.start - o, r.stop - o) for r, o in zip(region, lo))] = values[0].numpy()

    sample_slabs(src, matrix, lo, hi, put, padding=padding, slab_voxels=200)  # small slabs: many of them
    idx = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), 0).reshape(3, -1)
    coords = matrix[:3, :3] @ idx + matrix[:3, 3:4]
    if padding == "zeros":
        expected = ndimage.map_coordinates(np.pad(src, 1), coords + 1, order=1, mode="constant")
    else:  # positions outside take the nearest edge position's value
        coords = np.clip(coords, 0, np.array(src.shape)[:, None] - 1)
        expected = ndimage.map_coordinates(src, coords, order=1)
    expected = expected.reshape(out.shape)
    assert np.abs(expected).max() > 0.5
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("fortran", [False, True])
def test_upsampling_in_one_slab_matches_scipy(fortran: bool) -> None:
    """More destination rows than source rows along the slab axis (5 mm slices onto a 3 mm grid)."""
    from scipy import ndimage

    from organseg.geometry.slabs import sample_slabs

    src = np.random.default_rng(1).normal(size=(9, 8, 6)).astype(np.float32)
    src = np.asfortranarray(src) if fortran else src
    matrix = np.diag([0.4, 0.5, 0.6, 1.0])  # every axis upsampled: 2.5x, 2x, 1.67x
    hi = np.array([21, 15, 9])
    out = np.zeros(tuple(hi), np.float32)

    def put(region, values):
        out[region] = values[0].numpy()

    sample_slabs(src, matrix, np.zeros(3, int), hi, put, slab_voxels=10**6)  # one slab holds it all
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in hi], indexing="ij"), 0).reshape(3, -1)
    coords = np.clip(matrix[:3, :3] @ idx, 0, np.array(src.shape)[:, None] - 1)
    expected = ndimage.map_coordinates(src, coords, order=1).reshape(out.shape)
    np.testing.assert_allclose(out, expected, atol=1e-5)


# --------------------------------------------------------------------------------------- TTA


def _lr_predict(x: torch.Tensor) -> torch.Tensor:
    """A stub network that knows anatomy: kidney_right (2) on the right half of axis 0, kidney_left (3) on
    the left. Under a left-right mirror it answers like a real net: the mirrored right half is labelled
    right -- i.e. its output on a mirrored input is the mirrored output with the kidneys swapped."""
    n, _, sx, sy, sz = x.shape
    probs = torch.zeros(n, 5, sx, sy, sz)
    half = sx // 2
    # RAS: index 0 runs from the patient's left to right; the right half (high indices) holds kidney_right.
    probs[:, 3, :half] = 1.0
    probs[:, 2, half:] = 1.0
    return probs


def test_tta_swaps_kidney_channels_under_the_lr_mirror() -> None:
    x = torch.randn(1, 1, 8, 6, 4)
    plain = _lr_predict(x)
    averaged = tta_predictor(_lr_predict, lr_axis=0, lr_pairs=LabelMap().lr_swap_pairs)(x)
    torch.testing.assert_close(averaged, plain)
    # Without the swap the mirrored pass votes for the wrong kidney and the average is ambiguous.
    no_swap = tta_predictor(_lr_predict, lr_axis=0, lr_pairs=())(x)
    assert float(no_swap[0, 2, -1].mean()) == pytest.approx(0.75)


def test_lr_axis_of_ras_is_axis_0() -> None:
    from organseg.geometry import lr_axis

    assert lr_axis(tiny_config().preprocess.orientation) == 0
    assert lr_axis(replace_path(tiny_config(), "preprocess.orientation", "PLS").preprocess.orientation) == 1


def test_ensemble_averages_probabilities() -> None:
    from organseg.infer.sliding import predict_probabilities

    cfg = tiny_config()
    nets = []
    for seed in (3, 4):
        torch.manual_seed(seed)
        nets.append(build_model(cfg).eval())
    image = torch.rand(1, 1, 40, 36, 20)
    kw = dict(overlap=0.25, sw_batch_size=2)
    a, b = (predict_probabilities(image, [n], cfg, **kw) for n in nets)
    both = predict_probabilities(image, nets, cfg, **kw)
    torch.testing.assert_close(both, (a + b) / 2, atol=1e-5, rtol=0)
    assert float((a - b).abs().max()) > 0.01  # the members differ, so the average is not trivial
    mirrored = predict_probabilities(image, nets[:1], cfg, mirror=True, **kw)
    assert mirrored.shape == a.shape and not torch.allclose(mirrored, a)
    torch.testing.assert_close(mirrored.sum(0), torch.ones(40, 36, 20), atol=1e-4, rtol=0)


@pytest.mark.filterwarnings("ignore:.*not found")
def test_segment_with_run_folder_ensemble_and_tta(tiny_ct_and_mask, tmp_path: Path) -> None:
    ct_path, _ = tiny_ct_and_mask
    run_dir = _make_run(
        tmp_path, "ens", "2025-01-01T00:00:00", {0: "checkpoint_best.pt", 1: "checkpoint_best.pt"}
    )
    result = run(ct_path, tmp_path / "m.nii.gz", run_dir, tta=True)
    manifest = json.loads((tmp_path / "m.run.json").read_text())
    assert len(manifest["models"]) == 2 and manifest["settings"]["tta"] == "mirror"
    assert len(result.models) == 2
    assert nib.load(tmp_path / "m.nii.gz").shape == nib.load(ct_path).shape


def test_swap_channels() -> None:
    p = torch.arange(5.0).view(1, 5, 1, 1, 1)
    assert swap_channels(p, ((2, 3),)).flatten().tolist() == [0.0, 1.0, 3.0, 2.0, 4.0]


# --------------------------------------------------------------------------------------- outputs


def test_rle_roundtrip_and_format() -> None:
    assert rle_encode(np.array([0, 1, 1, 0, 1], bool)) == "2 2 5 1"
    assert rle_encode(np.zeros((2, 2, 2), bool)) == ""
    rng = np.random.default_rng(0)
    mask = rng.random((7, 5, 6)) > 0.6
    mask[-1, -1, -1] = True  # a run touching the end
    np.testing.assert_array_equal(rle_decode(rle_encode(mask), mask.shape), mask)
    # C order: index (0, 0, 1) is the second element
    one = np.zeros((2, 2, 2), bool)
    one[0, 0, 1] = True
    assert rle_encode(one) == "2 1"


def test_outputs_stats_rle_split_probabilities(real_ct: Path, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "case.nii.gz"
    result = run(
        real_ct,
        out,
        tiny_model,
        stats=tmp_path / "stats.json",
        rle=tmp_path / "rle.json",
        split=True,
        probabilities=True,
        postprocess=False,
    )
    ct = io.read_image(real_ct)
    mask = np.asarray(nib.load(out).dataobj)
    stats = json.loads((tmp_path / "stats.json").read_text())["organs"]
    for organ_id, organ in enumerate(LabelMap().organs, start=1):
        count = int((mask == organ_id).sum())
        assert stats[organ]["voxels"] == count
        assert stats[organ]["volume_ml"] == pytest.approx(count * ct.voxel_volume_ml)
        assert result.volumes_ml[organ] == pytest.approx(count * ct.voxel_volume_ml)
        if count:
            sel = mask == organ_id
            assert stats[organ]["hu_mean"] == pytest.approx(float(ct.array[sel].mean()), rel=1e-6)
            lo, hi = np.array(stats[organ]["bbox_mm"]["min"]), np.array(stats[organ]["bbox_mm"]["max"])
            assert np.all(lo - 1e-6 <= stats[organ]["centroid_mm"]) and np.all(
                stats[organ]["centroid_mm"] <= hi + 1e-6
            )
        split = np.asarray(nib.load(tmp_path / f"case_{organ}.nii.gz").dataobj)
        np.testing.assert_array_equal(split, (mask == organ_id).astype(np.uint8))
    rle = json.loads((tmp_path / "rle.json").read_text())
    for organ_id, organ in enumerate(LabelMap().organs, start=1):
        np.testing.assert_array_equal(rle_decode(rle["organs"][organ], rle["shape"]), mask == organ_id)
    probs = nib.load(tmp_path / "case_probabilities.nii.gz")
    assert probs.shape == (*ct.shape, 5)
    np.testing.assert_allclose(probs.affine, ct.affine, atol=1e-5)
    p = np.asarray(probs.dataobj)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(p.argmax(-1), mask)


def test_existing_output_is_refused(real_ct: Path, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.nii.gz"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputError, match="already exists"):
        run(real_ct, out, tiny_model)
    assert out.read_bytes() == b"keep me"


def test_folder_of_cts(tiny_ct_and_mask, tiny_model: Path, tmp_path: Path) -> None:
    ct_path, _ = tiny_ct_and_mask
    cases = tmp_path / "cases"
    cases.mkdir()
    img = nib.load(ct_path)
    for name in ("alpha", "beta"):
        nib.save(img, cases / f"{name}.nii.gz")
    result = run(cases, tmp_path / "masks", tiny_model, stats="stats.csv")
    assert [c.case for c in result.cases] == ["alpha", "beta"]
    for name in ("alpha", "beta"):
        mask = nib.load(tmp_path / "masks" / f"{name}.nii.gz")
        assert mask.shape == img.shape
        np.testing.assert_allclose(mask.affine, img.affine, atol=1e-5)
        assert (tmp_path / "masks" / f"{name}.stats.csv").is_file()


# --------------------------------------------------------------------------------------- warnings and edge cases


def test_non_ct_image_warns(tiny_ct_and_mask, tiny_model: Path, tmp_path: Path) -> None:
    ct_path, _ = tiny_ct_and_mask
    img = nib.load(ct_path)
    mr = (np.asarray(img.dataobj).astype(np.float32) + 1000.0) * 3.0  # 0..~3400, no negatives: MR-like
    nib.save(nib.Nifti1Image(mr, img.affine), tmp_path / "mr.nii.gz")
    with pytest.warns(UserWarning, match="Hounsfield"):
        result = run(tmp_path / "mr.nii.gz", tmp_path / "mr_mask.nii.gz", tiny_model)
    assert any("Hounsfield" in w for w in result.warnings)


def test_check_ct_intensities() -> None:
    ct = np.full((20, 20, 20), -1000, np.int16)
    ct[5:15, 5:15, 5:15] = 40
    assert check_ct_intensities(ct) == []
    inside_body = np.full((20, 20, 20), 30, np.int16)
    inside_body[0, 0, 0] = -200
    assert any("no voxel below" in r for r in check_ct_intensities(inside_body))


def test_empty_ct_gives_empty_mask_with_warning(tiny_model: Path, tmp_path: Path) -> None:
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(np.full((40, 30, 12), -1000, np.int16), affine), tmp_path / "air.nii.gz")
    with pytest.warns(UserWarning, match="no body found"):
        result = run(tmp_path / "air.nii.gz", tmp_path / "air_mask.nii.gz", tiny_model)
    mask = nib.load(tmp_path / "air_mask.nii.gz")
    assert mask.shape == (40, 30, 12) and not np.asarray(mask.dataobj).any()
    assert "network" not in result.cases[0].timings_s


def test_no_organ_found_warns_and_writes_empty_mask(real_ct: Path, tmp_path: Path) -> None:
    model = save_tiny(tmp_path / "bg.pt", background_only=True)
    with pytest.warns(UserWarning, match="no organ found"):
        result = run(real_ct, tmp_path / "mask.nii.gz", model)
    assert not np.asarray(nib.load(tmp_path / "mask.nii.gz").dataobj).any()
    assert all(v == 0 for v in result.volumes_ml.values())


def test_postprocess_keeps_largest_component_and_fills_holes() -> None:
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[2:12, 2:12, 2:12] = 1
    mask[6, 6, 6] = 0  # a closed hole
    mask[16:18, 16:18, 16:18] = 1  # a small second component
    mask[14:17, 2:5, 2:5] = 4
    out = postprocess_mask(
        mask.copy(), LabelMap(), PostprocessConfig(largest_component=True, fill_holes=True)
    )
    assert out[6, 6, 6] == 1
    assert not out[16:18, 16:18, 16:18].any()
    assert (out == 4).sum() == 27
    off = postprocess_mask(
        mask.copy(), LabelMap(), PostprocessConfig(largest_component=False, fill_holes=False)
    )
    np.testing.assert_array_equal(off, mask)


def body_with_arms(shape=(90, 70, 12)) -> tuple[np.ndarray, dict]:
    """HU volume (x, y, z) with a trunk (muscle, a fat rim, a lung-like hole), one arm beside it across an air
    gap and one touching it at a narrow seam; and their masks (``trunk``, ``lung``, ``gap_arm``, ``seam_arm``)."""
    x, y = np.mgrid[: shape[0], : shape[1]].astype(float)
    cy = 35.0
    parts = {
        "trunk": ((x - 40) / 26) ** 2 + ((y - cy) / 26) ** 2 < 1,
        "lung": ((x - 48) / 7) ** 2 + ((y - cy) / 7) ** 2 < 1,
        "gap_arm": (x - 77) ** 2 + (y - cy) ** 2 < 8**2,  # 3 voxels of air from the trunk
        "seam_arm": (x - 40) ** 2 + (y - 69.5) ** 2 < 9**2,  # touches the trunk along a 5-voxel seam
    }
    rim = parts["trunk"] & ~(((x - 40) / 23) ** 2 + ((y - cy) / 23) ** 2 < 1)
    sl = np.where(parts["trunk"], 45, -1000)
    sl = np.where(rim, -100, sl)
    sl = np.where(parts["lung"], -850, sl)
    sl = np.where(parts["gap_arm"] | parts["seam_arm"], 50, sl)
    hu = np.repeat(sl[:, :, None], shape[2], axis=2).astype(np.int16)
    return hu, {k: np.repeat(v[:, :, None], shape[2], axis=2) for k, v in parts.items()}


def test_trunk_mask_keeps_the_trunk_with_its_holes_and_drops_the_arms() -> None:
    hu, parts = body_with_arms()
    trunk = trunk_mask(hu, -500)
    assert trunk[parts["trunk"]].all()  # the whole trunk, its lung-like hole included
    assert trunk[parts["lung"]].all()
    assert not trunk[parts["gap_arm"]].any()  # across the air gap
    seam = parts["seam_arm"] & ~parts["trunk"]
    assert trunk[seam].mean() < 0.2  # the seam is cut: at most the rim next to the trunk stays
    assert not (trunk & ~(parts["trunk"] | parts["seam_arm"])).any()  # never in the air around the body


def test_restrict_to_trunk_makes_organs_outside_background() -> None:
    hu, parts = body_with_arms()
    trunk = trunk_mask(hu, -500)
    probs = torch.zeros((5, *hu.shape))
    probs[3], probs[0] = 0.9, 0.1  # "kidney_left" everywhere
    restrict_to_trunk(probs, trunk)
    labels = probs.argmax(0).numpy()
    assert (labels[~trunk] == 0).all() and (labels[trunk] == 3).all()
    assert (labels[parts["gap_arm"]] == 0).all()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_segment_keeps_organs_out_of_an_arm(tmp_path: Path, tiny_model: Path, monkeypatch) -> None:
    """Through organseg.segment: a network that calls every voxel left kidney gets it only inside the trunk."""
    import organseg.infer as infer_mod

    hu, parts = body_with_arms()
    ct = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(hu, np.diag([2.0, 2.0, 2.0, 1.0])), ct)

    def everywhere_kidney(image, nets, cfg, **kw):
        p = torch.zeros((cfg.labels.num_classes, *image.shape[2:]))
        p[3], p[0] = 0.9, 0.1
        return p

    monkeypatch.setattr(infer_mod, "predict_probabilities", everywhere_kidney)
    run(ct, tmp_path / "on.nii.gz", tiny_model)
    on = np.asarray(nib.load(tmp_path / "on.nii.gz").dataobj)
    assert on.shape == hu.shape
    assert (on[parts["gap_arm"]] == 0).all()
    assert (on[parts["trunk"]] == 3).mean() > 0.97
    run(ct, tmp_path / "off.nii.gz", tiny_model, postprocess=False)
    off = np.asarray(nib.load(tmp_path / "off.nii.gz").dataobj)
    assert (off[parts["gap_arm"]] == 3).mean() > 0.9  # without postprocessing the arm keeps its "kidney"


def test_min_volume_drops_organ_specks_only() -> None:
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[2:12, 2:12, 2:12] = 1  # 1000 voxels
    mask[15:17, 15:17, 15:17] = 2  # 8 voxels
    cfg = PostprocessConfig(largest_component=True, fill_holes=True, min_volume_ml=1.0)
    out = postprocess_mask(mask.copy(), LabelMap(), cfg, voxel_ml=0.01)  # 1 ml = 100 voxels
    assert (out == 1).sum() == 1000 and not (out == 2).any()
    kept = postprocess_mask(mask.copy(), LabelMap(), cfg, voxel_ml=0.2)  # 8 voxels = 1.6 ml
    assert (kept == 2).sum() == 8
    unknown = postprocess_mask(mask.copy(), LabelMap(), cfg)  # no voxel size: nothing dropped
    assert (unknown == 2).sum() == 8


# --------------------------------------------------------------------------------------- models


def test_model_for_other_labels_is_refused(tmp_path: Path) -> None:
    other = tiny_config(labels={0: "background", 1: "liver", 2: "pancreas"})
    path = save_tiny(tmp_path / "other.pt", cfg=other)
    with pytest.raises(ModelError, match="another task"):
        load_models(path, expected_labels=LabelMap())
    assert len(load_models(path)) == 1  # fine when the caller accepts the model's own labels


def test_no_model_available_says_how_to_get_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modelstore, "BUILTIN_MODEL", tmp_path / "missing.safetensors")
    with pytest.raises(ModelError, match="organseg train") as err:
        default_model()
    assert "organseg demo" in str(err.value) and "missing.safetensors" in str(err.value)


def test_default_model_is_the_builtin_one(
    tiny_ct_and_mask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No --model: the built-in safetensors file is used (here a tiny stand-in), never a local run."""
    from organseg.checkpoint import save_safetensors_model

    cfg = tiny_config()
    torch.manual_seed(0)
    builtin = tmp_path / "builtin.safetensors"
    save_safetensors_model(builtin, build_model(cfg), cfg)
    monkeypatch.setattr(modelstore, "BUILTIN_MODEL", builtin)
    monkeypatch.chdir(tmp_path)
    _make_run(tmp_path, "local", "2025-01-01T00:00:00", {0: "checkpoint_best.pt"})
    ct, _ = tiny_ct_and_mask
    run(ct, tmp_path / "mask.nii.gz", None)
    manifest = json.loads((tmp_path / "mask.run.json").read_text())
    assert manifest["models"] == [str(builtin)]
    (builtin).write_bytes(b"\x00" * 100)  # a corrupt built-in file is refused clearly
    with pytest.raises(ModelError, match="builtin.safetensors"):
        run(ct, tmp_path / "mask2.nii.gz", None)


def test_shipped_builtin_model_loads_without_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    """The v2 weights inside the package load through safetensors, with every unpickler disabled, and segment
    our five labels; their metadata says where the data came from (the label map's CC BY 4.0 attribution)."""
    import pickle

    from organseg.checkpoint import load_safetensors_model

    def no_pickle(*args, **kwargs):
        raise AssertionError("the built-in model must not need pickle")

    monkeypatch.setattr(pickle, "Unpickler", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    net, cfg, extra = load_safetensors_model(modelstore.BUILTIN_MODEL)
    assert cfg.labels == LabelMap() and cfg.train.synthetic.enabled
    assert sum(p.numel() for p in net.parameters()) < 5_000_000
    assert any(stage.startswith("7 (v2d)") for stage in extra["stages"])  # the v2 weights, not v1
    assert "TotalSegmentator dataset" in extra["trained_on"] and "CC BY 4.0" in extra["trained_on"]
    assert cfg.train.synthetic.fluid_bowel_fraction > 0 and cfg.train.synthetic.label_map_fraction > 0


def _make_run(root: Path, name: str, created: str, checkpoints: dict[int, str]) -> Path:
    run_dir = root / "runs" / name
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(
        json.dumps({"organseg_run": 1, "task": "t", "folds": [], "created": created})
    )
    for fold, ckpt in checkpoints.items():
        (run_dir / f"fold_{fold}").mkdir()
        save_tiny(run_dir / f"fold_{fold}" / ckpt, seed=fold)
    return run_dir


def test_run_folder_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = _make_run(tmp_path, "old", "2024-01-01T00:00:00", {0: "checkpoint_best.pt"})
    new = _make_run(
        tmp_path, "new", "2025-01-01T00:00:00", {0: "checkpoint_best.pt", 1: "checkpoint_last.pt"}
    )
    (new / "fold_0" / "checkpoint_last.pt").write_bytes(b"not used: best wins")
    assert resolve_model_files(new) == [
        new / "fold_0" / "checkpoint_best.pt",
        new / "fold_1" / "checkpoint_last.pt",
    ]
    assert resolve_model_files(new, folds=[1]) == [new / "fold_1" / "checkpoint_last.pt"]
    with pytest.raises(ModelError, match="fold"):
        resolve_model_files(new, folds=[3])
    assert old.is_dir()
    assert len(load_models(new)) == 2


def test_safetensors_model_loads(tmp_path: Path) -> None:
    from organseg.checkpoint import save_safetensors_model

    cfg = tiny_config()
    save_safetensors_model(tmp_path / "m.safetensors", build_model(cfg), cfg)
    [(net, loaded_cfg)] = load_models(tmp_path / "m.safetensors")
    assert loaded_cfg.preprocess == cfg.preprocess and not net.training


def test_threads_restored(real_ct: Path, tiny_model: Path, tmp_path: Path) -> None:
    torch.set_num_threads(2)  # the autouse fixture restores the original afterwards
    result = run(real_ct, tmp_path / "m.nii.gz", tiny_model, postprocess=False, threads=1)
    assert torch.get_num_threads() == 2
    assert json.loads((tmp_path / "m.run.json").read_text())["threads"] == 1
    assert result.cases[0].timings_s["network"] > 0
