"""Ink submissions and scores: the competition's RLE convention, round trips, F0.5 by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from organseg.errors import InputError
from organseg.ink.metrics import ink_scores, threshold_sweep
from organseg.ink.rle import EMPTY_RLE, decode_ink, encode_ink, read_submission, write_submission


def test_known_example_is_row_major_and_one_indexed() -> None:
    # Worked by hand: rows flatten to 0 1 1 0 | 0 0 0 1 | 1 0 0 0 -> pixel 2 starts a run of 2,
    # pixel 8 starts a run of 2 that crosses from row 2 into row 3.
    mask = np.array([[0, 1, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0]], bool)
    assert encode_ink(mask) == "2 2 8 2"
    assert encode_ink(mask.T) != "2 2 8 2"  # column-major would be a different string
    np.testing.assert_array_equal(decode_ink("2 2 8 2", (3, 4)), mask)
    full = np.ones((2, 3), bool)
    assert encode_ink(full) == "1 6"


def test_empty_prediction_is_never_written_empty() -> None:
    assert encode_ink(np.zeros((5, 7), bool)) == EMPTY_RLE == "1 1"


@settings(max_examples=60, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 17), st.integers(1, 23))))
def test_rle_round_trips(mask: np.ndarray) -> None:
    rle = encode_ink(mask)
    back = decode_ink(rle, mask.shape)
    if mask.any():
        np.testing.assert_array_equal(back, mask)
    else:
        assert back.sum() == 1 and back[0, 0]


def test_submission_file_round_trip_and_errors(tmp_path: Path) -> None:
    a = np.zeros((4, 5), bool)
    a[1, 2:4] = True
    b = np.zeros((3, 3), bool)
    path = write_submission(tmp_path / "sub.csv", {"a": a, "b": b})
    assert path.read_text().splitlines() == ["Id,Predicted", "a,8 2", "b,1 1"]
    assert read_submission(path) == {"a": "8 2", "b": "1 1"}
    with pytest.raises(Exception, match="already exists"):
        write_submission(tmp_path / "sub.csv", {"a": a})
    (tmp_path / "bad.csv").write_text("Id,Predicted\na,\n")
    with pytest.raises(InputError, match="empty prediction"):
        read_submission(tmp_path / "bad.csv")
    with pytest.raises(InputError, match="outside"):
        decode_ink("19 3", (4, 5))
    with pytest.raises(InputError, match="odd number"):
        decode_ink("1 2 3", (4, 5))


def test_scores_by_hand() -> None:
    ref = np.array([[1, 1, 1, 1, 0, 0]], bool)
    pred = np.array([[1, 1, 0, 0, 1, 0]], bool)
    s = ink_scores(pred, ref)  # tp 2, fp 1, fn 2
    assert (s["tp"], s["fp"], s["fn"]) == (2, 1, 2)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(0.5)
    assert s["fbeta"] == pytest.approx(1.25 * (2 / 3) * 0.5 / (0.25 * 2 / 3 + 0.5))  # 0.625
    assert s["dice"] == pytest.approx(4 / 7)
    assert ink_scores(pred, ref, beta=1.0)["fbeta"] == pytest.approx(s["dice"])


def test_threshold_sweep_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    ref = rng.random((40, 50)) < 0.2
    prob = np.clip(ref * 0.3 + rng.random((40, 50)) * 0.7, 0, 1)
    mask = np.ones_like(ref)
    mask[:5] = False
    t, f = threshold_sweep(prob, ref, mask, thresholds=[0.2, 0.45, 0.7])
    for ti, fi in zip(t, f):
        brute = ink_scores((prob > ti) & mask, ref)["fbeta"]
        assert fi == pytest.approx(brute, abs=0.01)
