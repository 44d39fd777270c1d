"""``organseg demo`` end to end on a config shrunk to seconds: synth -> train -> infer -> evaluate -> report."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from organseg.io import json_safe
from organseg.pipeline import DEMO_FOV, DEMO_PHASE, HELD_OUT_CASES, demo
from tests.robustness.conftest import write_tiny_config

#: Not the training grid (4 mm) and anisotropic, so the masks must be mapped back; coarser than the
#: demo's clinical default (0.8 x 0.8 x 2.5 mm) to keep the test to seconds.
HELD_OUT_SPACING = (1.6, 1.6, 5.0)

#: The whole demo (synthesis, training, inference on held-out phantoms) takes about 2 minutes on 2 cores.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    config = write_tiny_config(root / "tiny.yaml", epochs=2, val_every=1)
    out = root / "out"
    report = demo(
        out, n_cases=3, config=config, device="cpu", render_video=False, progress=False,
        held_out_spacing_mm=HELD_OUT_SPACING,
    )  # fmt: skip
    return out, report


def test_demo_writes_a_report_keyed_by_organ(demo_run):
    out, report = demo_run
    # The file is strict JSON: a distance that does not exist (an organ missed: HD95 inf) is written null.
    assert json.loads((out / "report.json").read_text()) == json_safe(report)
    assert set(report["dice"]) == {"liver", "kidney_right", "kidney_left", "spleen"}
    assert all(0.0 <= v <= 1.0 for v in report["dice"].values())
    assert report["held_out_cases"] == HELD_OUT_CASES == len(report["cases"])
    assert report["train_cases"] == 3 and report["epochs"] == 2
    assert {"synth", "train", "infer_and_evaluate"} <= set(report["timings_s"])
    assert (out / "run" / "fold_0" / "checkpoint_best.pt").is_file()
    assert (out / "run" / "fold_0" / "metrics.csv").is_file()


def test_demo_phantoms_share_phase_and_field_of_view_and_held_out_has_its_own_grid(demo_run):
    out, _ = demo_run
    train = json.loads((out / "phantoms" / "phantoms.json").read_text())
    held = json.loads((out / "held_out" / "phantoms.json").read_text())
    assert len(train) == 3 and len(held) == HELD_OUT_CASES
    assert {r["phase"] for r in train + held} == {DEMO_PHASE}
    assert {r["fov"] for r in train + held} == {DEMO_FOV}
    assert all(r["spacing_mm"] == [4.0, 4.0, 4.0] for r in train)  # the config's working spacing
    assert all(r["spacing_mm"] == list(HELD_OUT_SPACING) for r in held)
    assert {r["orientation"] for r in held} == {"RAS", "LPS"}


def test_demo_scores_each_prediction_against_its_own_ground_truth(demo_run):
    """Predictions lie on their held-out image's grid and the report's Dice is recomputable from the files."""
    out, report = demo_run
    for name, scores in report["cases"].items():
        image = nib.load(out / "held_out" / "imagesTr" / name)
        pred = nib.load(out / "predictions" / name)
        truth = np.asarray(nib.load(out / "held_out" / "labelsTr" / name).dataobj)
        assert pred.shape == image.shape
        np.testing.assert_allclose(pred.affine, image.affine, atol=1e-4)
        p = np.asarray(pred.dataobj)
        for organ, label in (("liver", 1), ("kidney_right", 2), ("kidney_left", 3), ("spleen", 4)):
            a, b = p == label, truth == label
            assert b.any()  # the whole-abdomen field of view holds every organ
            dice = 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))
            assert scores[organ]["dice"] == pytest.approx(dice, abs=1e-4)
    for organ, value in report["dice"].items():
        assert value == pytest.approx(np.mean([c[organ]["dice"] for c in report["cases"].values()]))
