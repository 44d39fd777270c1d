"""Submission files for ink: ``Id,Predicted`` CSV with one run-length encoding per fragment.

The competition's convention, which ``organseg.infer.outputs.rle_encode`` already follows: the
(rows, columns) mask is flattened row by row (C order), runs of ink are written as
``"start length"`` pairs and ``start`` counts pixels from 1. Example: the 2 x 3 mask
``[[0, 1, 1], [1, 0, 0]]`` flattens to ``0 1 1 1 0 0`` and encodes as ``"2 3"`` (one run crossing the
row end). A submission may not hold an empty prediction, so a fragment without any predicted ink
is written as the single pixel ``"1 1"`` (the top-left corner, outside the papyrus in practice).
"""

from __future__ import annotations

import csv
import io as _io
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from organseg.errors import InputError
from organseg.infer.outputs import rle_decode, rle_encode
from organseg.io import atomic_write_text

#: What an empty prediction is written as (the competition rejects an empty ``Predicted``).
EMPTY_RLE = "1 1"


def encode_ink(mask: np.ndarray) -> str:
    """RLE of a (rows, columns) ink mask, never empty (``EMPTY_RLE`` when no pixel is set)."""
    if mask.ndim != 2:
        raise ValueError(f"expected a 2D (rows, columns) mask, got shape {mask.shape}")
    return rle_encode(mask) or EMPTY_RLE


def decode_ink(rle: str, shape: tuple[int, int], source: str = "<rle>") -> np.ndarray:
    """The bool (rows, columns) mask of an RLE string; ``InputError`` for a malformed or out-of-range one."""
    parts = rle.split()
    try:
        values = np.array(parts, dtype=np.int64)
    except ValueError:
        raise InputError(f"{source}: RLE holds a non-integer value") from None
    if values.size % 2:
        raise InputError(f"{source}: RLE has an odd number of values (expected start/length pairs)")
    starts, lengths = values[0::2], values[1::2]
    n = int(shape[0]) * int(shape[1])
    if values.size and (starts.min() < 1 or lengths.min() < 1 or (starts + lengths - 1).max() > n):
        raise InputError(f"{source}: RLE run outside the {shape[0]}x{shape[1]} image (starts are 1-indexed)")
    return rle_decode(rle, shape)


def write_submission(path: str | Path, masks: Mapping[str, np.ndarray], overwrite: bool = False) -> Path:
    """Write ``Id,Predicted`` rows (one per fragment id, in the given order) atomically."""
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["Id", "Predicted"])
    for frag_id, mask in masks.items():
        writer.writerow([frag_id, encode_ink(mask)])
    atomic_write_text(path, buf.getvalue(), overwrite=overwrite)
    return Path(path)


def read_submission(path: str | Path) -> dict[str, str]:
    """``{Id: RLE}`` from a submission CSV; ``InputError`` for a wrong header, duplicate or empty row."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: submission file not found")
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    except (UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path}: not a readable CSV ({err})") from None
    if not rows or [c.strip() for c in rows[0]] != ["Id", "Predicted"]:
        raise InputError(f"{path}: expected the header 'Id,Predicted'")
    out: dict[str, str] = {}
    for i, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 2:
            raise InputError(f"{path}: line {i}: expected 2 columns, got {len(row)}")
        frag_id, rle = row[0].strip(), row[1].strip()
        if frag_id in out:
            raise InputError(f"{path}: line {i}: fragment {frag_id!r} appears twice")
        if not rle:
            raise InputError(f"{path}: line {i}: empty prediction for {frag_id!r}")
        out[frag_id] = rle
    if not out:
        raise InputError(f"{path}: no predictions")
    return out
