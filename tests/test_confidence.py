"""Per-organ confidence: margins, volume and side plausibility, ranking, and its place in infer's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from organseg.checkpoint import build_model, save_checkpoint
from organseg.config import LabelMap, config_to_dict, load_config, replace_path
from organseg.infer import segment
from organseg.infer.confidence import LOW_CONFIDENCE, organ_confidence, rank_organs, summarize_probabilities

NAMES = LabelMap().names  # background, liver, kidney_right, kidney_left, spleen
SPACING = 4.0


def probabilities(
    blobs: dict[int, tuple[tuple[slice, slice, slice], float]], shape=(40, 30, 30)
) -> torch.Tensor:
    """(C, X, Y, Z) probabilities: background everywhere, and in each blob class ``c`` with ``p`` (the
    rest to background)."""
    probs = torch.zeros((len(NAMES), *shape))
    probs[0] = 1.0
    for cid, (box, p) in blobs.items():
        probs[(slice(None), *box)] = 0.0
        probs[(cid, *box)] = p
        probs[(0, *box)] = 1.0 - p
    return probs


def affine() -> np.ndarray:
    """RAS grid: axis 0 runs to the patient's right (high i = right), 4 mm voxels, centred on x = 0."""
    a = np.diag([SPACING, SPACING, SPACING, 1.0])
    a[:3, 3] = [-20 * SPACING, 0, 0]
    return a


RIGHT = (slice(24, 36), slice(8, 22), slice(4, 26))  # patient's right of the midline (i > 20)
LEFT = (slice(4, 12), slice(10, 18), slice(10, 20))
LEFT_LOW = (slice(5, 10), slice(10, 16), slice(2, 8))


def test_hesitant_organ_is_flagged_and_ranked_first():
    probs = probabilities({1: (RIGHT, 0.97), 4: (LEFT, 0.56)})
    summary = summarize_probabilities(probs, affine())
    conf = organ_confidence(summary, NAMES, {"liver": 1500.0, "spleen": 200.0})  # plausible volumes
    assert conf["liver"]["margin"] == pytest.approx(0.94, abs=1e-3)
    assert conf["spleen"]["margin"] == pytest.approx(0.12, abs=1e-3)
    assert conf["spleen"]["low"] and not conf["liver"]["low"]
    assert conf["spleen"]["score"] < LOW_CONFIDENCE < conf["liver"]["score"]
    # Soft Dice of the mask against its own probabilities: 2*sum(p in mask) / (sum(p) + |mask|).
    assert conf["liver"]["expected_dice"] == pytest.approx(2 * 0.97 / 1.97, abs=1e-3)
    assert conf["kidney_left"]["score"] is None and conf["kidney_left"]["reasons"] == ["not found"]
    assert rank_organs(conf) == ["spleen", "liver"]


def test_organ_on_the_wrong_side_loses_confidence():
    good = summarize_probabilities(probabilities({1: (RIGHT, 0.97), 4: (LEFT, 0.97)}), affine())
    swapped_probs = probabilities({1: (LEFT, 0.97), 4: (RIGHT, 0.97)})
    swapped = summarize_probabilities(swapped_probs, affine())
    conf_good = organ_confidence(good, NAMES, {"liver": 1500.0, "spleen": 200.0})
    conf_bad = organ_confidence(swapped, NAMES, {"liver": 1500.0, "spleen": 200.0})
    assert conf_good["liver"]["side_ok"] and conf_good["spleen"]["side_ok"]
    assert conf_bad["liver"]["side_ok"] is False and conf_bad["spleen"]["side_ok"] is False
    assert conf_bad["liver"]["low"] and "left" in conf_bad["liver"]["reasons"][0]


def test_implausible_volume_lowers_the_score_unless_the_scan_cuts_the_organ():
    probs = probabilities({1: (RIGHT, 0.97), 4: (LEFT, 0.97), 3: (LEFT_LOW, 0.97)})
    summary = summarize_probabilities(probs, affine())
    conf = organ_confidence(summary, NAMES, {"liver": 9000.0, "spleen": 5.0, "kidney_left": 5.0})
    assert not conf["liver"]["volume_ok"] and conf["liver"]["low"]  # 9 l liver: implausible
    assert not conf["spleen"]["volume_ok"] and conf["spleen"]["low"]  # 5 ml spleen inside the scan
    # A small organ that reaches the scan's first slice (k = 0) is cut off, not implausible.
    edge = (slice(5, 10), slice(10, 16), slice(0, 4))
    probs2 = probabilities({3: (edge, 0.97)})
    conf2 = organ_confidence(summarize_probabilities(probs2, affine()), NAMES, {"kidney_left": 5.0})
    assert conf2["kidney_left"]["cut_off"] and conf2["kidney_left"]["volume_ok"]
    assert not conf["kidney_left"]["cut_off"] and not conf["kidney_left"]["volume_ok"]


def test_segment_writes_confidence_to_stats_manifest_and_warnings(real_ct: Path, tmp_path: Path):
    cfg = load_config("demo")
    for key, value in (("model.filters", [4, 8]), ("model.bottleneck", 8), ("preprocess.spacing_mm", [6.0] * 3),
                       ("train.patch_size", [32] * 3)):  # fmt: skip
        cfg = replace_path(cfg, key, value)
    torch.manual_seed(0)
    model = tmp_path / "tiny.pt"
    save_checkpoint(
        model, {"model": build_model(cfg).state_dict(), "config": config_to_dict(cfg), "epoch": 0}
    )
    out = tmp_path / "m.nii.gz"
    result = segment(real_ct, out, model=model, device="cpu", stats=True, progress=False, threads=1)
    manifest = json.loads((tmp_path / "m.run.json").read_text())
    stats = json.loads((tmp_path / "m.stats.json").read_text())["organs"]
    found = [o for o, v in manifest["volumes_ml"].items() if v > 0]
    assert found  # an untrained net labels something
    for organ in found:
        conf = manifest["confidence"][organ]
        assert 0 <= conf["score"] <= 1 and conf["margin"] is not None
        assert stats[organ]["confidence"] == conf
    # An untrained network hesitates: its organs are flagged and warned about.
    low = [o for o in found if manifest["confidence"][o]["low"]]
    assert low and any(f"low confidence for {low[0]}" in w for w in result.warnings)
