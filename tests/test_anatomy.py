"""Phantom anatomy against real anatomy (``organseg.phantom.anatomy_stats``), in world millimetres.

Phantoms are rasterized at 5 mm (anatomy does not depend on the grid) over the whole modelled trunk, so that
the lung bases, the diaphragm and T10-L3 are all in view. The real label map is subject s0011 of the
TotalSegmentator dataset v2.0.1 (Wasserthal et al., Radiology: AI 2023, Zenodo 10047292, CC BY 4.0).
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from conftest import SHARED_DATA, require_shared_data

from organseg.phantom import generate_phantom, sample_anatomy
from organseg.phantom.anatomy_stats import (
    REFERENCE,
    _levels,
    _Points,
    inside,
    level_of,
    measure,
    measure_phantom,
    phantom_structure,
)
from organseg.phantom.dataset import case_streams
from organseg.phantom.tissues import STRUCTURES

SEEDS = range(12)


@pytest.fixture(scope="module")
def phantoms() -> list[tuple[np.ndarray, np.ndarray]]:
    return [phantom_structure(s, spacing_mm=5.0) for s in SEEDS]


@pytest.fixture(scope="module")
def phantom_stats(phantoms) -> list[dict]:
    return [measure_phantom(*p) for p in phantoms]


def test_every_phantom_falls_inside_every_real_range(phantom_stats):
    """Issue 13: every statistic of every phantom inside the real range, not only most of them.

    The generator before this test (as of commit 8f0a5c7) had 4 of these 12 phantoms outside: the spleen against
    ribs 11-12 (rib number 12.0; real 10.3), stomachs 28-29 mm in front of the spleen (real 83-87 mm) and a left
    kidney 69 mm below the spleen (real 44-52 mm).
    """
    outside = []
    for seed, stats in zip(SEEDS, phantom_stats, strict=True):
        assert all(v is not None for v in stats.values()), (seed, stats)  # everything is in view
        outside += [
            (seed, key, round(stats[key], 2), REFERENCE[key]) for key, ok in inside(stats).items() if not ok
        ]
    assert not outside, outside


def test_spleen_lies_against_ribs_9_to_11_which_fall_steeply(phantoms):
    """Lower ribs fall 3-4 vertebral levels from head to tip (s0011: rib 10 reaches L1-L2 at the front), so
    the spleen at T12-L1 lies against ribs 9-11; the old ribs ended near T12 and the spleen met ribs 11-12."""
    names = dict(enumerate(STRUCTURES))
    for structure, affine in phantoms[:3]:
        pts = _Points(structure, affine, names)
        levels = _levels(pts)
        lowest = level_of(float(pts("rib_left_10")[:, 2].min()), levels)
        assert lowest >= 1.0, lowest  # below L1's centre (old generator: about T12, level ~0.2)


def test_right_kidney_lower_than_left_and_spleen_above_it(phantom_stats):
    dz = [p["kidney_left_top_above_right_top_mm"] for p in phantom_stats]
    assert np.median(dz) >= 15, dz  # real: 30 mm (s0011); 0-25 mm in the old generator
    assert min(p["spleen_above_kidney_left_mm"] for p in phantom_stats) >= 30


def test_organs_on_their_anatomical_side_in_world_space():
    """An LPS phantom, measured through its affine: liver right, spleen left and back, stomach in front of it."""
    p = generate_phantom(3, spacing_mm=5.0, fov="thoracoabdominal", orientation="LPS", phase="portal")
    assert "".join(nib.aff2axcodes(p.image.affine)) == "LPS"
    stats = measure_phantom(p.structure, p.image.affine)
    assert 0 < stats["stomach_between"] < 1  # between spleen (x < 0) and liver (x > 0)
    assert stats["stomach_before_spleen_mm"] > 0  # anterior (+y) of the spleen
    assert stats["spleen_lateral_mm"] > 50  # left of the spine
    assert stats["liver_top_above_kidney_right_top_mm"] > 0
    twin = generate_phantom(3, spacing_mm=5.0, fov="thoracoabdominal", orientation="RAS", phase="portal")
    ras = measure_phantom(twin.structure, twin.image.affine)
    for key in ("spleen_above_kidney_left_mm", "liver_top_level", "spleen_lateral_mm"):
        assert stats[key] == pytest.approx(ras[key], abs=1e-6), key  # orientation changes nothing


def test_measured_dome_is_the_generators_dome():
    """The lung-base dome measurement finds the diaphragm the generator drew (within a voxel or two)."""
    seed = 5
    anatomy = sample_anatomy(case_streams(seed)[0])
    structure, affine = phantom_structure(seed, spacing_mm=3.0)
    stats = measure_phantom(structure, affine)
    dome = anatomy.thorax.dome  # patient frame; the difference of two heights needs no world offset
    drawn = float(dome.right_peak[2] - dome.left_peak[2])
    assert stats["dome_right_above_left_mm"] == pytest.approx(drawn, abs=7.0)


def test_real_label_map_measures_as_published():
    path = require_shared_data(SHARED_DATA / "anatomy" / "totalseg-s0011" / "labels.nii.gz")
    table = require_shared_data(SHARED_DATA / "anatomy" / "classes_totalsegmentator_v2.json")
    names = {int(k): v for k, v in json.loads(table.read_text()).items()}
    img = nib.load(str(path))
    stats = measure(np.asarray(img.dataobj).astype(np.int16), img.affine, names)
    assert stats["spleen_above_kidney_left_mm"] == pytest.approx(52, abs=2)  # as issue 13 measured
    assert stats["liver_top_above_kidney_right_top_mm"] == pytest.approx(105, abs=3)
    assert stats["kidney_left_top_above_right_top_mm"] == pytest.approx(30, abs=3)
    assert stats["liver_ml"] == pytest.approx(1957, rel=0.01)  # the data README's volume
    assert all(inside(stats).values()), {k: v for k, v in inside(stats).items() if not v}
