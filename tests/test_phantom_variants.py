"""Phantom variants (``organseg.phantom.variants``): thin slabs, arms, table, truncation, rotation, oral contrast
beside the spleen, extreme liver and spleen sizes, fluid bowel under the liver; each deterministic per seed and off by default.

Cases at 4-5 mm keep this fast; world positions go through the affine (RAS+ mm), never through array indices.
"""

from __future__ import annotations

import numpy as np
import pytest

from organseg.config import LabelMap
from organseg.errors import ConfigError
from organseg.phantom import STRUCTURES, Tissue, generate_phantom
from organseg.phantom.variants import EXTREME_LIVER_ML, EXTREME_SPLEEN_ML, Variants

LIVER, SPLEEN = (LabelMap().id_of(n) for n in ("liver", "spleen"))
ALL_ON = {
    "thin_slab": Variants(thin_slab=1.0),
    "arms": Variants(arms=1.0),
    "table": Variants(table=1.0),
    "truncation": Variants(truncation=1.0),
    "rotation": Variants(rotation_deg=10.0),
    "bowel_contrast": Variants(bowel_contrast=1.0),
    "extreme_organs": Variants(extreme_organs=1.0),
    "fluid_bowel": Variants(fluid_bowel=1.0),
}


def sid(name: str) -> int:
    return STRUCTURES.index(name)


def world(volume, mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask) @ volume.affine[:3, :3].T + volume.affine[:3, 3]


@pytest.mark.parametrize("seed", [2, 9])
def test_thin_slab_is_20_to_60_mm_with_labels_on_its_grid(seed):
    p = generate_phantom(
        seed,
        spacing_mm=4.0,
        fov="thoracoabdominal",
        orientation="LPS",
        phase="portal",
        variants=Variants(thin_slab=1),
    )
    img, lab = p.image, p.label
    assert p.info["fov"] == "thin_slab" and 20 <= p.info["variants"]["thin_slab_mm"] <= 60
    extent = (img.shape[2] - 1) * 4.0
    assert 20 - 4.0 <= extent <= 60 + 4.0, img.shape
    assert lab.shape == img.shape and np.array_equal(lab.affine, img.affine)
    z = world(img, np.ones(img.shape[:3], bool))[:, 2]
    assert z.max() - z.min() == pytest.approx(extent)
    organs = lab.array > 0
    assert organs.any()  # the slab goes through the organs
    # the same patient and table position as without the variant: the slab's liver lies within the full case's
    full = generate_phantom(seed, spacing_mm=4.0, orientation="RAS", phase="portal", fov="thoracoabdominal")
    zf = world(full.label, full.label.array == LIVER)[:, 2]
    zs = world(lab, lab.array == LIVER)[:, 2]
    z_slab = (z.min(), z.max())
    expect = zf[(zf >= z_slab[0] - 0.1) & (zf <= z_slab[1] + 0.1)]
    assert abs(len(zs) - len(expect)) <= 0.1 * max(len(expect), 10)  # same liver voxels, up to grid phase


@pytest.mark.parametrize("name", list(ALL_ON))
def test_each_variant_is_deterministic_per_seed_and_does_something(name):
    a = generate_phantom(5, spacing_mm=5.0, fov="abdomen", variants=ALL_ON[name])
    b = generate_phantom(5, spacing_mm=5.0, fov="abdomen", variants=ALL_ON[name])
    assert np.array_equal(a.image.array, b.image.array) and np.array_equal(a.structure, b.structure)
    assert np.array_equal(a.image.affine, b.image.affine) and a.info == b.info
    plain = generate_phantom(5, spacing_mm=5.0, fov="abdomen")
    assert a.info["variants"] and "variants" not in plain.info
    assert a.image.shape != plain.image.shape or not np.array_equal(a.tissue, plain.tissue)


def test_no_variants_is_the_phantom_without_the_option():
    plain = generate_phantom(6, spacing_mm=5.0, fov="abdomen")
    off = generate_phantom(6, spacing_mm=5.0, fov="abdomen", variants=Variants())
    assert np.array_equal(plain.image.array, off.image.array) and np.array_equal(
        plain.structure, off.structure
    )
    assert plain.info == off.info


def test_switching_one_variant_never_changes_another():
    one = Variants(arms=1.0).draw(np.random.default_rng(3))
    two = Variants(arms=1.0, table=1.0, thin_slab=1.0).draw(np.random.default_rng(3))
    assert one.arms == two.arms and one.table is None and two.table is not None
    fluid = Variants(arms=1.0, fluid_bowel=1.0).draw(np.random.default_rng(3))
    assert fluid.arms == one.arms and fluid.fluid_bowel is not None and one.fluid_bowel is None


def test_fluid_bowel_packs_gas_free_fluid_loops_under_the_liver():
    kw = dict(spacing_mm=4.0, fov="abdomen", phase="noncontrast")
    fluid = generate_phantom(14, variants=Variants(fluid_bowel=1.0), **kw)
    plain = generate_phantom(14, **kw)
    # the same patient: organs and their labels untouched, only the bowel changes
    assert np.array_equal(fluid.label.array, plain.label.array)
    hu = fluid.info["variants"]["fluid_bowel_hu"]
    assert 0 <= hu <= 35

    def bowel(p, tissue):
        return np.isin(p.structure, [sid("colon"), sid("small_bowel")]) & (p.tissue == tissue)

    assert not bowel(fluid, Tissue.STOOL).any() and bowel(plain, Tissue.STOOL).any()  # fluid colon
    for name in ("colon", "small_bowel"):  # hardly any gas left in either
        gas = [(p.tissue[p.structure == sid(name)] == Tissue.GAS).mean() for p in (fluid, plain)]
        assert gas[0] < 0.5 * gas[1], name
    content = bowel(fluid, Tissue.BOWEL_CONTENT)
    assert abs(np.median(fluid.image.array[content]) - hu) < 15
    # loops fill the fat: more small bowel, reaching above L1 (the phantoms' usual loops stop below it)
    loops = [world(p.image, p.structure == sid("small_bowel")) for p in (fluid, plain)]
    assert len(loops[0]) > 1.3 * len(loops[1])
    l1 = world(plain.image, plain.structure == sid("vertebrae_L1"))[:, 2].mean()
    assert loops[1][:, 2].max() < l1 < loops[0][:, 2].max()


def test_arms_lie_beside_the_body_on_both_sides():
    p = generate_phantom(7, spacing_mm=5.0, fov="upper", variants=Variants(arms=1.0))
    s = p.structure
    body = np.isin(s, [sid(n) for n in ("skin", "subcutaneous_fat", "abdominal_wall")])
    xb = world(p.image, body)[:, 0]
    for side, sign in (("right", 1), ("left", -1)):
        xa = world(p.image, np.isin(s, [sid(f"arm_{side}"), sid(f"humerus_{side}")]))[:, 0]
        assert len(xa), side
        assert np.median(sign * xa) > np.max(sign * xb) - 10  # outside the trunk, on its own side
        bone = p.tissue[s == sid(f"humerus_{side}")]
        assert (bone == Tissue.BONE_CORTICAL).any()


def test_table_is_in_view_under_the_back():
    p = generate_phantom(8, spacing_mm=5.0, fov="abdomen", variants=Variants(table=1.0))
    table = world(p.image, p.structure == sid("table"))
    assert len(table)
    body = world(p.image, p.structure == sid("skin"))
    assert np.median(table[:, 1]) < body[:, 1].min() + 5  # posterior (y < body)


def test_truncation_cuts_the_body_at_the_edges():
    p = generate_phantom(10, spacing_mm=5.0, fov="abdomen", variants=Variants(truncation=1.0))
    inside = p.structure > 0
    assert inside[0].any() or inside[-1].any()  # the body reaches the first or last column (x)
    plain = generate_phantom(10, spacing_mm=5.0, fov="abdomen")
    assert p.image.shape[0] < plain.image.shape[0]


def test_rotation_turns_the_patient_about_z():
    p = generate_phantom(11, spacing_mm=4.0, fov="abdomen", variants=Variants(rotation_deg=20.0))
    plain = generate_phantom(11, spacing_mm=4.0, fov="abdomen")
    angle = p.info["variants"]["rotation_deg"]
    assert 1 < abs(angle) <= 20

    def direction(v):  # in-plane direction from the spine to the liver, degrees
        spine = world(v.image, v.structure == sid("vertebrae_L1")).mean(axis=0)
        liver = world(v.image, v.label.array == LIVER).mean(axis=0)
        d = liver - spine
        return np.degrees(np.arctan2(d[1], d[0]))

    assert abs(abs(direction(p) - direction(plain)) - abs(angle)) < 3


def test_oral_contrast_fills_bowel_beside_the_spleen():
    p = generate_phantom(
        12, spacing_mm=4.0, fov="abdomen", phase="portal", variants=Variants(bowel_contrast=1.0)
    )
    contrast = p.tissue == Tissue.ORAL_CONTRAST
    assert contrast.sum() > 20
    assert np.median(p.image.array[contrast]) > 150
    assert (p.label.array[contrast] == 0).all()  # bowel, not an organ label
    spleen = world(p.image, p.label.array == SPLEEN).mean(axis=0)
    near = np.linalg.norm(world(p.image, contrast) - spleen, axis=1)
    assert np.median(near) < 130


def test_extreme_organs_are_small_or_very_large():
    seen = set()
    for seed in range(6):
        p = generate_phantom(seed, spacing_mm=5.0, fov="abdomen", variants=Variants(extreme_organs=1.0))
        ml = p.info["variants"]["extreme_organs_ml"]
        assert EXTREME_LIVER_ML[0][0] <= ml["liver"] <= EXTREME_LIVER_ML[1][1]
        assert not 1000 <= ml["liver"] <= 2500 and not 95 <= ml["spleen"] <= 440
        assert EXTREME_SPLEEN_ML[0][0] <= ml["spleen"] <= EXTREME_SPLEEN_ML[1][1]
        seen.add(ml["liver"] > 2000)
        measured = p.info["volumes_ml"]["liver"]
        assert 0.6 * ml["liver"] <= measured <= 1.1 * ml["liver"]  # the dome, ribs and vessels take some back
    assert seen == {True, False}


@pytest.mark.parametrize("bad", [{"arms": 1.5}, {"thin_slab": -0.1}, {"rotation_deg": 90.0}])
def test_bad_variant_settings_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        Variants(**bad)


def test_training_config_turns_variants_on_per_seed():
    """``train.synthetic.*_fraction`` reach the phantom: every seed a thin slab at 1.0, none at 0."""
    from organseg.config import config_from_dict, config_to_dict, load_config
    from organseg.training.data import generate_phantom as training_phantom

    d = config_to_dict(load_config("demo"))
    d["preprocess"].update(spacing_mm=[5.0, 5.0, 5.0])
    d["train"]["synthetic"].update(thin_slab_fraction=1.0, rotation_deg=5.0)
    slab = training_phantom(3, config_from_dict(d, "slab"))["image"]
    assert (slab.shape[2] - 1) * 5.0 <= 65
    d["train"]["synthetic"].update(thin_slab_fraction=0.0, rotation_deg=0.0)
    plain = training_phantom(3, config_from_dict(d, "plain"))["image"]
    assert plain.shape[2] > slab.shape[2]
    d["train"]["synthetic"]["arms_fraction"] = 1.5
    with pytest.raises(ConfigError, match="train.synthetic.arms_fraction"):
        config_from_dict(d, "bad")


def test_stream_and_dataset_writer_take_variants_too(tmp_path):
    import json

    from organseg.phantom import PhantomStream, synthesize

    stream = PhantomStream(spacing_mm=6.0, seed=4, length=2, variants=Variants(thin_slab=1.0))
    first, again = (
        list(stream),
        list(PhantomStream(spacing_mm=6.0, seed=4, length=2, variants=Variants(thin_slab=1.0))),
    )
    for item, twin in zip(first, again):
        assert item["image"].shape[-1] * 6.0 <= 66  # a 20-60 mm slab at 6 mm
        assert np.array_equal(item["image"], twin["image"])
    synthesize(tmp_path, 1, seed=2, progress=False, spacing_mm=6.0, variants=Variants(arms=1.0))
    records = json.loads((tmp_path / "phantoms.json").read_text())
    assert records[0]["variants"] == {"arms": True}
