"""Tests for organseg.rendering: world-space meshes, anatomical view, MP4/PNG outputs, input validation.

Frames are checked by colour: a pixel belongs to an organ when its chromaticity (r, g divided by r+g+b)
is near the organ's colour, which survives shading (lighting scales all channels alike). The legend box
is masked out, so a colour found there never stands in for a rendered organ.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import imageio.v2 as iio2
import imageio.v3 as iio
import imageio_ffmpeg
import nibabel as nib
import numpy as np
import pytest
from conftest import oblique_affine

from organseg import surfaces
from organseg.config import DEFAULT_COLORS, UNKNOWN_COLOR, LabelMap
from organseg.errors import ConfigError, InputError, OutputError
from organseg.io import Volume, read_nifti
from organseg.rendering import LEGEND_BOX, build_meshes, render, render_frame

render_module = importlib.import_module("organseg.rendering")

SIZE = (128, 128)
FRAMES = 6
ORGANS = ("liver", "kidney_right", "kidney_left", "spleen")
# Organ centres (mm from the volume centre, RAS: +x patient's right, +y anterior, +z superior) and radii.
BLOBS = {
    1: ((22.0, 5.0, 22.0), (18.0, 22.0, 16.0)),  # liver: right, high
    2: ((20.0, -18.0, -22.0), (8.0, 9.0, 15.0)),  # kidney_right: right, low, posterior
    3: ((-20.0, -18.0, -24.0), (8.0, 9.0, 15.0)),  # kidney_left: left, low, posterior
    4: ((-26.0, -4.0, 22.0), (10.0, 13.0, 14.0)),  # spleen: left, high
}


# --------------------------------------------------------------------------------------- helpers


def synthetic_mask(affine: np.ndarray, shape=(48, 48, 40)) -> np.ndarray:
    """Organ ellipsoids placed in WORLD space (through ``affine``), so sides are anatomical on any grid."""
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).astype(float)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    centre = (np.array(shape) - 1) / 2 @ affine[:3, :3].T + affine[:3, 3]
    mask = np.zeros(shape, np.uint8)
    for value, (c, r) in BLOBS.items():
        mask[((((world - centre - c) / r) ** 2).sum(axis=-1)) < 1] = value
    return mask


def anisotropic_affine() -> np.ndarray:
    return oblique_affine(spacing=(2.0, 2.2, 3.5), angle_deg=12.0, origin=(-40.0, -30.0, 50.0))


def save(mask: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    nib.save(nib.Nifti1Image(mask, affine), str(path))
    return path


def x_axis(affine: np.ndarray) -> int:
    """The voxel axis that runs (mostly) along world x."""
    return int(np.argmax(np.abs(affine[0, :3])))


def colour_pixels(image: np.ndarray, rgb: tuple[int, int, int], tol: float = 0.035) -> np.ndarray:
    """Boolean (H, W): pixels whose chromaticity matches ``rgb``, outside the legend box."""
    img = image.astype(float)
    total = img.sum(axis=-1) + 1e-6
    chroma = img[..., :2] / total[..., None]
    target = np.array(rgb[:2], float) / sum(rgb)
    hit = (img.max(axis=-1) > 40) & (np.linalg.norm(chroma - target, axis=-1) < tol)
    h, w = hit.shape
    left, top, right, bottom = LEGEND_BOX
    hit[int(top * h) - 2 : int(bottom * h) + 2, int(left * w) - 2 : int(right * w) + 2] = False
    return hit


def centroid(pixels: np.ndarray) -> np.ndarray:
    """(row, column) centroid of True pixels."""
    assert pixels.sum() > 0, "colour not found in the frame"
    return np.argwhere(pixels).mean(axis=0)


def grey_pixels(image: np.ndarray) -> np.ndarray:
    img = image.astype(float)
    return (img.max(axis=-1) > 35) & (img.max(axis=-1) - img.min(axis=-1) < 12)  # background: max 24


def decode(path: Path) -> np.ndarray:
    return np.stack(iio2.mimread(str(path), format="FFMPEG", memtest=False))


def remap_totalseg(path: Path) -> Volume:
    vol = read_nifti(path)
    src = np.asarray(vol.array)
    mask = np.zeros(src.shape, np.uint8)
    for ts_id, ours in {1: 4, 2: 2, 3: 3, 5: 1}.items():  # spleen, kidney_right, kidney_left, liver
        mask[src == ts_id] = ours
    return Volume(mask, vol.affine, source=str(path))


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    affine = anisotropic_affine()
    mask = synthetic_mask(affine)
    path = save(mask, affine, tmp_path_factory.mktemp("render") / "mask.nii.gz")
    return path, mask, affine


@pytest.fixture(scope="module")
def synth_video(synth, tmp_path_factory) -> tuple[Path, np.ndarray]:
    out = tmp_path_factory.mktemp("video") / "organs.mp4"
    result = render(synth[0], out, frames=FRAMES, size=SIZE, progress=False)
    assert result == out
    return out, decode(out)


# --------------------------------------------------------------------------------------- meshes


def test_meshes_are_in_world_mm_with_true_proportions(synth):
    _, mask, affine = synth
    meshes = build_meshes(Volume(mask, affine))
    assert list(meshes) == list(ORGANS)
    for value, name in enumerate(ORGANS, start=1):
        world = np.argwhere(mask == value) @ affine[:3, :3].T + affine[:3, 3]
        mesh = meshes[name]
        assert np.allclose(mesh.center_of_mass(), world.mean(axis=0), atol=2.5), name
        extent = np.ptp(np.asarray(mesh.bounds).reshape(3, 2), axis=1)
        assert np.allclose(extent, np.ptp(world, axis=0), atol=5.0), name
        assert tuple(mesh.field_data["rgb"]) == LabelMap().color_of(name)


@pytest.mark.parametrize("mirror", [False, True], ids=["RAS", "LAS"])
def test_normals_point_outward_for_any_handedness(mirror):
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    if mirror:
        affine[0, 0] = -1.5
    mask = np.zeros((20, 20, 16), np.uint8)
    mask[5:15, 4:16, 4:12] = 1
    mesh = build_meshes(Volume(mask, affine))["liver"]
    outward = np.sum(mesh.point_data["Normals"] * (mesh.points - mesh.center_of_mass()), axis=1)
    assert (outward > 0).mean() > 0.95


def test_absent_organ_skipped_and_decimation_caps_faces(synth):
    _, mask, affine = synth
    no_spleen = np.where(mask == 4, 0, mask)
    meshes = build_meshes(Volume(no_spleen, affine), max_faces=400)
    assert list(meshes) == ["liver", "kidney_right", "kidney_left"]
    assert all(m.n_cells <= 440 for m in meshes.values())


@pytest.mark.parametrize("smooth", [False, True])
def test_coarse_marching_cubes_for_big_organs_keeps_geometry(synth, monkeypatch, smooth):
    _, mask, affine = synth
    fine = build_meshes(Volume(mask, affine), max_faces=None, smooth=smooth)["liver"]
    # the raw mask is sampled every n-th voxel above MC_MAX_VOXELS, the smoothed field coarsened
    monkeypatch.setattr(surfaces, "MC_MAX_VOXELS", 2_000)
    monkeypatch.setattr(surfaces, "FIELD_MAX_VOXELS", 4_000)
    coarse = build_meshes(Volume(mask, affine), max_faces=None, smooth=smooth)["liver"]
    assert coarse.n_cells < fine.n_cells / 2
    assert np.allclose(coarse.center_of_mass(), fine.center_of_mass(), atol=3.0)


def thick_slice_ellipsoid() -> tuple[np.ndarray, np.ndarray]:
    """A tilted ellipsoid (liver-sized) on a 0.8 x 0.8 x 2.5 mm grid: thick slices make terraces."""
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    shape = (150, 120, 44)
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).astype(float)
    xyz = ijk * [0.8, 0.8, 2.5] - [60.0, 48.0, 55.0]
    a = np.deg2rad(30)
    u = xyz[..., 0] * np.cos(a) + xyz[..., 2] * np.sin(a)
    w = -xyz[..., 0] * np.sin(a) + xyz[..., 2] * np.cos(a)
    mask = ((u / 50) ** 2 + (xyz[..., 1] / 38) ** 2 + (w / 30) ** 2 < 1).astype(np.uint8)
    return mask, affine


def test_smoothed_surface_keeps_the_voxel_volume_on_thick_slices(real_seg):
    mask, affine = thick_slice_ellipsoid()
    liver = build_meshes(Volume(mask, affine), max_faces=None)["liver"]
    voxel_ml = mask.sum() * 0.8 * 0.8 * 2.5 / 1000
    assert liver.volume / 1000 == pytest.approx(voxel_ml, rel=0.02)
    # and on the real TotalSegmentator mask (3 mm voxels), every organ, as rendered (decimated)
    vol = remap_totalseg(real_seg)
    for value, (name, mesh) in enumerate(build_meshes(vol).items(), start=1):
        expected = (np.asarray(vol.array) == value).sum() * vol.voxel_volume_ml
        assert mesh.volume / 1000 == pytest.approx(expected, rel=0.02), name


def test_smoothed_surface_has_no_terraces():
    # Terraces are flat, horizontal steps: on a tilted ellipsoid, raw marching cubes turns a large share
    # of the surface to face straight up or down; the smoothed field's surface follows the slope.
    mask, affine = thick_slice_ellipsoid()

    def flat_share(smooth: bool) -> float:
        mesh = build_meshes(Volume(mask, affine), max_faces=None, smooth=smooth)["liver"]
        mesh = mesh.compute_normals(cell_normals=True, point_normals=False)
        up = np.abs(mesh.cell_data["Normals"][:, 2]) > 0.995
        areas = mesh.compute_cell_sizes(length=False, volume=False).cell_data["Area"]
        return float(areas[up].sum() / areas.sum())

    raw, smooth = flat_share(False), flat_share(True)
    assert raw > 0.1 and smooth < raw / 4, (raw, smooth)


# --------------------------------------------------------------------------------------- video


def test_video_frames_size_rotation_and_colours(synth_video):
    path, video = synth_video
    assert video.shape == (FRAMES, SIZE[1], SIZE[0], 3)
    for a, b in zip(video[:-1], video[1:], strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).mean() > 1.0  # the scene turns between frames
    for name in ORGANS:
        assert colour_pixels(video[0], DEFAULT_COLORS[name]).sum() > 15, name
    assert not list(path.parent.glob(".*tmp*")), "temporary files left behind"
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    reader.close()
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p")  # plays in any browser/player
    assert meta["fps"] == 24.0


def test_frame0_is_anterior_view_head_up(synth_video):
    """Facing the patient: patient's right (liver) on the viewer's left, superior organs higher up."""
    frame = synth_video[1][0]
    liver, spleen = (centroid(colour_pixels(frame, DEFAULT_COLORS[n])) for n in ("liver", "spleen"))
    kidney_r = centroid(colour_pixels(frame, DEFAULT_COLORS["kidney_right"]))
    assert liver[1] < SIZE[0] / 2 < spleen[1]
    assert liver[0] < kidney_r[0]  # rows grow downward: the liver (superior) is higher


def test_left_right_flip_of_the_mask_mirrors_frame0(synth, tmp_path):
    """Flipping the array along world x with the affine kept moves organs to the other side in the frame."""
    _, mask, affine = synth
    flipped = np.flip(mask, axis=x_axis(affine)).copy()
    frame = render_frame(build_meshes(Volume(flipped, affine)), size=SIZE)
    liver, spleen = (centroid(colour_pixels(frame, DEFAULT_COLORS[n])) for n in ("liver", "spleen"))
    assert liver[1] > SIZE[0] / 2 > spleen[1]


@pytest.mark.parametrize("regrid", ["flip_compensated", "permuted"])
def test_same_world_on_another_grid_renders_the_same(synth, regrid):
    """Geometry comes from the affine: a reoriented copy of the same world-space mask looks the same."""
    _, mask, affine = synth
    if regrid == "flip_compensated":  # LAS-like: flip axis 0 and move the origin to the far end
        new = np.flip(mask, axis=0).copy()
        new_affine = affine.copy()
        new_affine[:3, 0] *= -1
        new_affine[:3, 3] = affine[:3, :3] @ [mask.shape[0] - 1, 0, 0] + affine[:3, 3]
    else:
        new = np.transpose(mask, (2, 0, 1)).copy()
        new_affine = affine.copy()
        new_affine[:3, :3] = affine[:3, [2, 0, 1]]
    ref = render_frame(build_meshes(Volume(mask, affine)), size=SIZE, legend=False).astype(int)
    other = render_frame(build_meshes(Volume(new, new_affine)), size=SIZE, legend=False).astype(int)
    assert np.abs(ref - other).mean() < 4.0


def test_preview_png_matches_video_frame0(synth, tmp_path):
    out, preview = tmp_path / "o.mp4", tmp_path / "o.png"
    render(synth[0], out, frames=3, size=SIZE, preview=preview, title="case 1", progress=False)
    still = iio.imread(preview)
    assert still.shape == (SIZE[1], SIZE[0], 3)
    assert np.abs(still.astype(int) - decode(out)[0].astype(int)).mean() < 6.0
    for name in ORGANS:
        assert colour_pixels(still, DEFAULT_COLORS[name]).sum() > 15, name


def test_png_output_is_a_still_of_frame0(synth, tmp_path):
    out = render(synth[0], tmp_path / "still.png", size=(96, 64), progress=False)
    still = iio.imread(out)
    assert still.shape == (64, 96, 3)
    assert centroid(colour_pixels(still, DEFAULT_COLORS["liver"]))[1] < 48


@pytest.fixture(scope="module")
def synth_ct(synth) -> Volume:
    """A CT on its own axis-aligned 2.5 mm grid around the synthetic mask: soft-tissue body (40 HU) in air,
    with a bright block (700 HU) on the patient's right posterior side that makes the slice asymmetric."""
    _, mask, affine = synth
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in mask.shape], indexing="ij")).reshape(3, -1).T
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    centre = (np.array(mask.shape) - 1) / 2 @ affine[:3, :3].T + affine[:3, 3]
    lo, hi = world.min(axis=0) - 10, world.max(axis=0) + 10
    shape = tuple(int(n) for n in np.ceil((hi - lo) / 2.5) + 1)
    ct_affine = np.diag([2.5, 2.5, 2.5, 1.0])
    ct_affine[:3, 3] = lo
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    x, y, _ = np.moveaxis(ijk * 2.5 + lo - centre, -1, 0)
    hu = np.full(shape, -1000, np.int16)
    hu[(x / 70) ** 2 + (y / 55) ** 2 < 1] = 40
    hu[(x > 10) & (x < 40) & (y > -45) & (y < -25)] = 700
    return Volume(hu, ct_affine, "synth_ct")


def test_ct_plane_is_sampled_in_world_space(synth, synth_ct):
    _, mask, affine = synth
    meshes = build_meshes(Volume(mask, affine))
    plain = render_frame(meshes, size=SIZE, legend=False)
    with_ct = render_frame(meshes, size=SIZE, legend=False, ct=synth_ct)
    assert grey_pixels(with_ct).mean() > 0.05 > 0.005 > grey_pixels(plain).mean()
    ct = synth_ct
    moved = ct.affine.copy()  # the same world content on a mirrored grid: the slice must not change
    moved[:3, 0] *= -1
    moved[:3, 3] = ct.affine[:3, :3] @ [ct.shape[0] - 1, 0, 0] + ct.affine[:3, 3]
    regridded = Volume(np.flip(ct.array, axis=0).copy(), moved)
    same = render_frame(meshes, size=SIZE, legend=False, ct=regridded).astype(int)
    mirrored = render_frame(meshes, size=SIZE, legend=False, ct=Volume(regridded.array, ct.affine)).astype(
        int
    )
    assert np.abs(same - with_ct).mean() < 0.3
    assert np.abs(mirrored - with_ct).mean() > 0.8  # the bright block changes side


def test_ct_that_misses_the_organs_is_an_input_error(synth, synth_ct):
    far = synth_ct.affine.copy()
    far[2, 3] += 1000.0
    meshes = build_meshes(Volume(synth[1], synth[2]))
    with pytest.raises(InputError, match="does not cover"):
        render_frame(meshes, size=SIZE, ct=Volume(synth_ct.array, far, "far.nii.gz"))


def test_render_with_ct_file(synth, synth_ct, tmp_path):
    ct_path = save(synth_ct.array, synth_ct.affine, tmp_path / "ct.nii.gz")
    out = render(synth[0], tmp_path / "with_ct.png", ct=ct_path, size=SIZE, progress=False)
    assert grey_pixels(iio.imread(out)).mean() > 0.05


def test_renders_without_a_display_and_without_x11_noise(synth, tmp_path, monkeypatch, capfd):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("VTK_DEFAULT_OPENGL_WINDOW", raising=False)
    out = render(synth[0], tmp_path / "headless.png", size=SIZE, progress=False)
    assert colour_pixels(iio.imread(out), DEFAULT_COLORS["liver"]).sum() > 15
    assert "X server" not in capfd.readouterr().err  # VTK went straight to its EGL window


# --------------------------------------------------------------------------------------- real CT


def test_real_totalsegmentator_mask(real_seg, tmp_path):
    out = render(remap_totalseg(real_seg), tmp_path / "real.mp4", frames=FRAMES, size=SIZE, progress=False)
    video = decode(out)
    assert video.shape == (FRAMES, SIZE[1], SIZE[0], 3)
    frame = video[0]
    for name in ORGANS:
        assert colour_pixels(frame, DEFAULT_COLORS[name]).sum() > 15, name
    liver, spleen = (centroid(colour_pixels(frame, DEFAULT_COLORS[n])) for n in ("liver", "spleen"))
    assert liver[1] < SIZE[0] / 2 < spleen[1]  # patient's right on the viewer's left


# --------------------------------------------------------------------------------------- errors


def test_intensity_image_as_mask_is_an_input_error(synth, tmp_path):
    _, mask, affine = synth
    ct_like = save(mask.astype(np.float32) * 40.5 + 0.25, affine, tmp_path / "ct.nii.gz")
    with pytest.raises(InputError, match="non-integer"):
        render(ct_like, tmp_path / "o.mp4", frames=2, size=SIZE, progress=False)
    negative = save(mask.astype(np.int16) - 1000, affine, tmp_path / "hu.nii.gz")
    with pytest.raises(InputError, match="negative"):
        render(negative, tmp_path / "o.mp4", frames=2, size=SIZE, progress=False)
    assert not (tmp_path / "o.mp4").exists()


def test_missing_mask_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        render(tmp_path / "nope.nii.gz", tmp_path / "o.mp4", progress=False)


def test_float_mask_with_whole_numbers_is_accepted(synth):
    _, mask, affine = synth
    meshes = build_meshes(Volume(mask.astype(np.float32), affine))
    assert list(meshes) == list(ORGANS)


def test_empty_mask_is_an_input_error(synth, tmp_path):
    empty = save(np.zeros((16, 16, 8), np.uint8), synth[2], tmp_path / "empty.nii.gz")
    with pytest.raises(InputError, match="no organ labels"):
        render(empty, tmp_path / "o.mp4", frames=2, size=SIZE, progress=False)
    assert not (tmp_path / "o.mp4").exists()


def test_unknown_label_is_grey_with_a_warning(synth):
    _, mask, affine = synth
    odd = mask.copy()
    odd[mask == 4] = 7  # the spleen blob with a value the label map does not know
    with pytest.warns(UserWarning, match="label value.* 7 not in the label map"):
        meshes = build_meshes(Volume(odd, affine))
    assert "label_7" in meshes and "spleen" not in meshes
    assert tuple(meshes["label_7"].field_data["rgb"]) == UNKNOWN_COLOR
    frame = render_frame(meshes, size=SIZE, legend=False)
    assert grey_pixels(frame).sum() > 15
    assert colour_pixels(frame, DEFAULT_COLORS["spleen"]).sum() < 5


def test_existing_output_without_overwrite_is_an_output_error(synth, tmp_path):
    out = tmp_path / "o.mp4"
    out.write_bytes(b"old video")
    with pytest.raises(OutputError, match="already exists"):
        render(synth[0], out, overwrite=False, frames=2, size=SIZE, progress=False)
    assert out.read_bytes() == b"old video"


def test_failing_render_leaves_no_output(synth, tmp_path, monkeypatch):
    out, preview = tmp_path / "o.mp4", tmp_path / "p.png"
    out.write_bytes(b"old video")
    real_frame = render_module._Scene.frame
    calls = []

    def failing_frame(self, angle_deg):
        calls.append(angle_deg)
        if len(calls) == 3:
            raise RuntimeError("renderer crashed")
        return real_frame(self, angle_deg)

    monkeypatch.setattr(render_module._Scene, "frame", failing_frame)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        render(synth[0], out, frames=5, size=SIZE, preview=preview, progress=False)
    assert out.read_bytes() == b"old video"  # the old output is untouched, no half-written video
    assert not preview.exists()
    assert sorted(os.listdir(tmp_path)) == ["o.mp4"]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"size": (127, 128)}, ConfigError),
        ({"frames": 0}, ConfigError),
        ({"fps": 0}, ConfigError),
        ({"output": "o.avi"}, OutputError),
        ({"preview": "p.jpg"}, OutputError),
    ],
)
def test_bad_options_fail_before_rendering(synth, tmp_path, kwargs, error):
    kwargs = dict(kwargs)
    output = tmp_path / kwargs.pop("output", "o.mp4")
    if "preview" in kwargs:
        kwargs["preview"] = tmp_path / kwargs["preview"]
    with pytest.raises(error):
        render(synth[0], output, progress=False, **{"size": SIZE, **kwargs})
    assert os.listdir(tmp_path) == []
