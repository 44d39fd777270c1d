"""organseg.geometry: voxel <-> world mapping and resampling through world coordinates."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import oblique_affine
from hypothesis import given, settings
from hypothesis import strategies as st

from organseg import geometry
from organseg.geometry import resample_to_grid, resample_volume, voxel_to_world, world_to_voxel
from organseg.io import Volume

SHAPE = (9, 7, 5)


def labels(shape=SHAPE, seed=0) -> np.ndarray:
    """Random uint8 labels: every index mix-up shows."""
    return np.random.default_rng(seed).integers(0, 5, shape).astype(np.uint8)


def reordered_grid(affine: np.ndarray, shape, axes, signs) -> tuple[np.ndarray, tuple[int, ...]]:
    """The same voxel centres indexed in another axis order / direction: dst axis n walks src axis axes[n]."""
    index_map = np.zeros((4, 4))
    index_map[3, 3] = 1
    for n, (axis, sign) in enumerate(zip(axes, signs, strict=True)):
        index_map[axis, n] = sign
        index_map[axis, 3] = 0 if sign > 0 else shape[axis] - 1
    return affine @ index_map, tuple(shape[a] for a in axes)


def test_voxel_world_round_trip_and_definition():
    affine = oblique_affine()
    ijk = np.array([[0, 0, 0], [3, 2, 1], [8.5, 6, 4]])
    xyz = voxel_to_world(affine, ijk)
    np.testing.assert_allclose(xyz[1], affine[:3, :3] @ [3, 2, 1] + affine[:3, 3])
    np.testing.assert_allclose(world_to_voxel(affine, xyz), ijk, atol=1e-9)
    assert voxel_to_world(affine, [0, 0, 0]).shape == (3,)


@settings(max_examples=30, deadline=None)
@given(axes=st.permutations([0, 1, 2]), signs=st.tuples(*[st.sampled_from([-1, 1])] * 3))
def test_label_round_trip_through_a_flipped_permuted_grid_is_exact(axes, signs):
    src_affine = oblique_affine()
    src = labels()
    dst_affine, dst_shape = reordered_grid(src_affine, SHAPE, axes, signs)
    on_dst = resample_to_grid(src, src_affine, dst_affine, dst_shape, order=0)
    assert on_dst.dtype == np.uint8 and on_dst.shape == dst_shape
    # each destination voxel holds the label of the source voxel at the same world point
    for ijk in [(0, 0, 0), tuple(s - 1 for s in dst_shape), (1, 2, 3)]:
        src_ijk = np.round(world_to_voxel(src_affine, voxel_to_world(dst_affine, ijk))).astype(int)
        assert on_dst[ijk] == src[tuple(src_ijk)]
    back = resample_to_grid(on_dst, dst_affine, src_affine, SHAPE, order=0)
    np.testing.assert_array_equal(back, src)
    assert geometry.same_voxel_centres(SHAPE, src_affine, dst_shape, dst_affine)


def test_interpolating_path_agrees_with_exact_reordering(monkeypatch):
    """The scipy path must also put every voxel where world space says (catches a wrong matrix order)."""
    src_affine = oblique_affine()
    src = labels()
    dst_affine, dst_shape = reordered_grid(src_affine, SHAPE, (2, 0, 1), (-1, 1, -1))
    exact = resample_to_grid(src, src_affine, dst_affine, dst_shape, order=0)
    monkeypatch.setattr(geometry, "axis_reordering", lambda *_: None)
    interpolated = resample_to_grid(src, src_affine, dst_affine, dst_shape, order=0)
    np.testing.assert_array_equal(interpolated, exact)


def test_linear_resampling_of_a_linear_field_is_exact_in_world_space():
    """A field f(x, y, z) linear in RAS mm, sampled on one oblique grid, resampled with order 1 onto
    another (rotated, finer, shifted) grid, equals f at the new voxel centres wherever it is inside."""
    src_affine = oblique_affine(spacing=(2.0, 2.5, 3.0), angle_deg=25.0, origin=(-10.0, 5.0, 40.0))
    src_shape = (20, 18, 14)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in src_shape], indexing="ij"), axis=-1)

    def field(xyz):
        return 0.5 * xyz[..., 0] - 0.25 * xyz[..., 1] + xyz[..., 2]

    src = field(voxel_to_world(src_affine, grid.reshape(-1, 3))).reshape(src_shape).astype(np.float32)
    dst_affine = oblique_affine(spacing=(1.5, 1.5, 2.0), angle_deg=-10.0, origin=(-5.0, 10.0, 48.0))
    dst_shape = (16, 16, 10)
    out = resample_to_grid(src, src_affine, dst_affine, dst_shape, order=1, cval=np.nan)
    assert out.dtype == np.float32
    dst_grid = np.stack(np.meshgrid(*[np.arange(s) for s in dst_shape], indexing="ij"), axis=-1).reshape(
        -1, 3
    )
    world = voxel_to_world(dst_affine, dst_grid)
    src_index = world_to_voxel(src_affine, world)
    inside = np.all((src_index >= 0) & (src_index <= np.array(src_shape) - 1), axis=1)
    assert inside.sum() > 0.3 * len(inside)
    np.testing.assert_allclose(out.reshape(-1)[inside], field(world[inside]), atol=1e-3)
    far = np.any((src_index < -1) | (src_index > np.array(src_shape)), axis=1)
    assert far.any() and np.all(np.isnan(out.reshape(-1)[far]))


def test_order_and_dtypes():
    affine = oblique_affine()
    image = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    shifted = affine.copy()
    shifted[:3, 3] += affine[:3, :3] @ [0.5, 0.25, 0]  # not a reordering: interpolation needed
    assert resample_to_grid(image, affine, shifted, SHAPE, order=1).dtype == np.float32
    assert resample_to_grid(labels(), affine, shifted, SHAPE, order=0).dtype == np.uint8
    with pytest.raises(ValueError):
        resample_to_grid(image, affine, shifted, SHAPE, order=3)


def test_outside_the_source_is_cval_and_crops_are_exact():
    affine = oblique_affine()
    src = labels() + 1  # no zeros inside
    moved = affine.copy()
    moved[:3, 3] = voxel_to_world(affine, [4, -2, 3])  # dst (0,0,0) sits on src (4,-2,3)
    out = resample_to_grid(src, affine, moved, SHAPE, order=0, cval=0)
    np.testing.assert_array_equal(out[:5, 2:, :2], src[4:, :5, 3:])
    assert not out[5:].any() and not out[:, :2].any() and not out[:, :, 2:].any()
    assert not geometry.same_voxel_centres(SHAPE, affine, SHAPE, moved)


def test_same_voxel_centres_rejects_half_voxel_shift():
    affine = oblique_affine()
    half = affine.copy()
    half[:3, 3] += affine[:3, :3] @ [0.5, 0, 0]
    assert geometry.axis_reordering(affine, half) is None
    assert not geometry.same_voxel_centres(SHAPE, affine, SHAPE, half)


def test_channels_first_arrays_are_resampled_per_channel():
    affine = oblique_affine()
    dst_affine, dst_shape = reordered_grid(affine, SHAPE, (1, 0, 2), (1, -1, 1))
    stack = np.stack([labels(seed=1), labels(seed=2)])
    out = resample_to_grid(stack, affine, dst_affine, dst_shape, order=0)
    assert out.shape == (2, *dst_shape)
    for c in range(2):
        np.testing.assert_array_equal(
            out[c], resample_to_grid(stack[c], affine, dst_affine, dst_shape, order=0)
        )


def test_resample_volume_lands_on_the_target_grid():
    affine = oblique_affine()
    target_affine, target_shape = reordered_grid(affine, SHAPE, (0, 1, 2), (1, -1, 1))
    target = Volume(np.zeros(target_shape, np.int16), target_affine, source="ct")
    mask = Volume(labels(), affine, source="mask")
    out = resample_volume(mask, like=target, order=0)
    assert out.shape == target.shape
    np.testing.assert_array_equal(out.affine, target.affine)
    np.testing.assert_array_equal(out.array, labels()[:, ::-1, :])


@pytest.mark.parametrize("axes", list(itertools.permutations(range(3)))[:3])
def test_axis_reordering_reports_axes_signs_offsets(axes):
    affine = oblique_affine()
    dst_affine, _ = reordered_grid(affine, SHAPE, axes, (1, -1, 1))
    found = geometry.axis_reordering(affine, dst_affine)
    assert found is not None
    assert found.axes == axes and found.signs == (1, -1, 1)
    assert found.offsets == (0, SHAPE[axes[1]] - 1, 0)


def test_bounding_box_pads_and_clips() -> None:
    from organseg.geometry import bounding_box

    mask = np.zeros((6, 7, 8), bool)
    mask[2:4, 0:2, 5] = True
    assert bounding_box(mask) == (slice(2, 4), slice(0, 2), slice(5, 6))
    assert bounding_box(mask, pad=1) == (slice(1, 5), slice(0, 3), slice(4, 7))
    assert bounding_box(np.zeros((3, 3, 3), bool)) is None
