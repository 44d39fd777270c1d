"""Synthetic ink fragments: the competition layout, the same seed gives the same fragment, honest difficulty."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from organseg.ink.baseline import fixed_slice_scores
from organseg.ink.config import load_ink_config
from organseg.ink.reader import open_fragment
from organseg.ink.synth import synth_fragment


def _read(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    with open_fragment(path, require_labels=True) as frag:
        return frag.read_window(0, 65), frag.read_mask(), frag.read_labels(), frag.read_ir()


def test_layout_and_determinism(tmp_path: Path) -> None:
    a = synth_fragment(tmp_path / "a", seed=5, height=64, width=96, difficulty="realistic", progress=False)
    b = synth_fragment(
        tmp_path / "b", seed=5, height=64, width=96, difficulty="realistic", compress=True, progress=False
    )
    c = synth_fragment(tmp_path / "c", seed=6, height=64, width=96, difficulty="realistic", progress=False)
    assert sorted(p.name for p in (a / "surface_volume").iterdir()) == [f"{z:02d}.tif" for z in range(65)]
    assert {p.name for p in a.iterdir()} == {"surface_volume", "mask.png", "inklabels.png", "ir.png"}
    va, ma, la, ia = _read(a)
    vb, mb, lb, ib = _read(b)
    vc, mc, lc, _ = _read(c)
    assert va.dtype == np.uint16 and va.shape == (65, 64, 96)
    for x, y in [(va, vb), (ma, mb), (la, lb), (ia, ib)]:
        np.testing.assert_array_equal(x, y)  # same seed, also through the compressed writer
    assert not np.array_equal(va, vc) and not np.array_equal(la, lc)
    assert 0.3 < ma.mean() < 0.95 and 0.03 < la[ma].mean() < 0.5 and not la[~ma].any()
    # the sheet is denser than air, and ink is darker in the infrared photograph
    assert va[:, ma].mean() > va[:, ~ma].mean() + 1000
    assert ia[la & ma].mean() < ia[~la & ma].mean() - 20


def test_no_test_labels_and_refuses_to_overwrite(tmp_path: Path) -> None:
    p = synth_fragment(tmp_path / "t", seed=1, height=64, width=64, labels=False, progress=False)
    assert not (p / "inklabels.png").exists()
    with pytest.raises(Exception, match="already exists"):
        synth_fragment(tmp_path / "t", seed=1, height=64, width=64, progress=False)


def test_ink_follows_the_warped_surface(tmp_path: Path) -> None:
    """With and without the ink signal (same seed): the ink sits 0-4 slices under the surface, at depths that vary."""
    kw = {"seed": 2, "height": 96, "width": 96, "difficulty": "realistic", "progress": False}
    with_ink, _, labels, _ = _read(synth_fragment(tmp_path / "ink", **kw))
    without, mask, _, _ = _read(synth_fragment(tmp_path / "none", ink_signal=False, **kw))
    diff = with_ink.astype(np.float32) - without.astype(np.float32)
    near_ink = ndimage.binary_dilation(labels, np.ones((3, 3), bool), iterations=7)  # blur reach
    assert not diff[:, ~near_ink].any()  # nothing but the ink changed
    air, papyrus = np.median(without[:, ~mask]), np.percentile(without[:, mask], 90)
    smooth = ndimage.gaussian_filter(without.astype(np.float32), (0, 2, 2))
    surface = np.argmax(smooth > (air + papyrus) / 2, axis=0)
    sel = labels & mask & (diff.max(axis=0) > 0.05 * papyrus)
    ink_slice = np.argmax(diff, axis=0)[sel]
    below = ink_slice - surface[sel]
    assert np.mean((below >= 0) & (below <= 4)) > 0.9, np.bincount(below - below.min())
    assert ink_slice.std() > 2.0  # the surface is warped, so the ink is not in one slice


def test_ink_lies_under_the_warped_surface_so_a_fixed_slice_is_near_chance_only_when_realistic(
    tmp_path: Path,
) -> None:
    cfg = load_ink_config("ink-demo")
    scores = {}
    for level in ("easy", "realistic"):
        frags = [
            synth_fragment(
                tmp_path / f"{level}{i}", seed=i, height=160, width=160, difficulty=level, progress=False
            )
            for i in range(3)
        ]
        scores[level] = fixed_slice_scores(frags[1:], frags[0], cfg)
    real = scores["realistic"]
    assert real["fbeta"] < real["chance_fbeta"] + 0.1, real
    assert scores["easy"]["fbeta"] > scores["easy"]["chance_fbeta"] + 0.2, scores["easy"]
