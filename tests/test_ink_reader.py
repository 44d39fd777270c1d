"""The ink fragment reader: windowed reads equal full reads for every TIFF layout; bad folders are one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from organseg.errors import InputError
from organseg.ink.reader import N_SLICES, find_fragments, open_fragment

H, W = 20, 28


def make_fragment(
    path: Path,
    compression: str | None = None,
    tile: tuple[int, int] | None = None,
    labels: bool = True,
    mask_mode: str = "L",
) -> np.ndarray:
    """A hand-made fragment: slice z holds ``1000 * z + row * W + column`` (uint16); returns the volume."""
    vol = (np.arange(N_SLICES)[:, None, None] * 1000 + np.arange(H * W).reshape(H, W)).astype(np.uint16)
    (path / "surface_volume").mkdir(parents=True)
    for z in range(N_SLICES):
        kw = (
            {"compression": compression, "tile": tile}
            if tile
            else {"compression": compression, "rowsperstrip": 3}
        )
        tifffile.imwrite(path / "surface_volume" / f"{z:02d}.tif", vol[z], **kw)
    mask = np.zeros((H, W), np.uint8)
    mask[2:18, 3:25] = 255
    img = Image.fromarray(mask, mode="L")
    img.convert(mask_mode).save(path / "mask.png")
    if labels:
        ink = np.zeros((H, W), np.uint8)
        ink[5:8, 4:20] = 255
        Image.fromarray(ink, mode="L").save(path / "inklabels.png")
    Image.fromarray(mask // 2, mode="L").save(path / "ir.png")
    return vol


@pytest.mark.parametrize(
    "compression,tile",
    [(None, None), ("zlib", None), ("lzw", None), ("zlib", (16, 16))],
    ids=["raw", "zlib-strips", "lzw-strips", "zlib-tiles"],
)
def test_windowed_reads_equal_the_volume(
    tmp_path: Path, compression: str | None, tile: tuple[int, int] | None
) -> None:
    if compression == "lzw":
        pytest.importorskip("imagecodecs")
    vol = make_fragment(tmp_path / "f", compression, tile)
    with open_fragment(tmp_path / "f", require_labels=True) as frag:
        assert (frag.height, frag.width) == (H, W)
        for z0, z1, r0, r1 in [(0, 65, 0, H), (16, 48, 5, 11), (30, 31, 17, 20), (3, 9, 0, 1)]:
            np.testing.assert_array_equal(frag.read_rows(z0, z1, r0, r1), vol[z0:z1, r0:r1])
        assert frag.read_mask().sum() == 16 * 22
        assert frag.read_labels().sum() == 3 * 16
        assert frag.read_ir().shape == (H, W)


@pytest.mark.parametrize("mode", ["RGB", "1", "RGBA"])
def test_masks_in_other_png_modes(tmp_path: Path, mode: str) -> None:
    make_fragment(tmp_path / "f", mask_mode=mode)
    with open_fragment(tmp_path / "f") as frag:
        assert frag.read_mask().sum() == 16 * 22


def test_test_fragment_without_labels(tmp_path: Path) -> None:
    make_fragment(tmp_path / "test" / "a", labels=False)
    assert find_fragments(tmp_path / "test") == [tmp_path / "test" / "a"]
    with open_fragment(tmp_path / "test" / "a") as frag:
        assert not frag.has_labels
    with pytest.raises(InputError, match="inklabels.png: not found"):
        open_fragment(tmp_path / "test" / "a", require_labels=True)


def _break(path: Path, how: str) -> str:
    """Damage a fragment one way; return the file name the error must name."""
    sv = path / "surface_volume"
    if how == "missing slice":
        (sv / "10.tif").unlink()
        return "10.tif"
    if how == "extra slice":
        tifffile.imwrite(sv / "65.tif", np.zeros((H, W), np.uint16))
        return "65.tif"
    if how == "other size":
        tifffile.imwrite(sv / "07.tif", np.zeros((H + 1, W), np.uint16))
        return "07.tif"
    if how == "8-bit":
        for z in range(N_SLICES):
            tifffile.imwrite(sv / f"{z:02d}.tif", np.zeros((H, W), np.uint8))
        return "00.tif"
    if how == "mask size":
        Image.fromarray(np.full((H, W + 3), 255, np.uint8)).save(path / "mask.png")
        return "mask.png"
    if how == "empty mask":
        Image.fromarray(np.zeros((H, W), np.uint8)).save(path / "mask.png")
        return "mask.png"
    if how == "corrupt":
        (sv / "33.tif").write_bytes(b"II*\x00garbage" * 10)
        return "33.tif"
    if how == "truncated":
        data = (sv / "40.tif").read_bytes()
        (sv / "40.tif").write_bytes(data[: len(data) // 2])
        return "40.tif"
    raise AssertionError(how)


BREAKS = [
    "missing slice",
    "extra slice",
    "other size",
    "8-bit",
    "mask size",
    "empty mask",
    "corrupt",
    "truncated",
]


@pytest.mark.parametrize("how", BREAKS)
def test_bad_fragment_is_an_input_error_naming_the_file(tmp_path: Path, how: str) -> None:
    make_fragment(tmp_path / "f", compression=None if how != "truncated" else "zlib")
    name = _break(tmp_path / "f", how)
    with pytest.raises(InputError) as info:
        with open_fragment(tmp_path / "f") as frag:
            frag.read_mask()
    message = str(info.value)
    assert name in message and "\n" not in message


def test_bad_fragment_through_the_cli_writes_nothing(tmp_path: Path) -> None:
    make_fragment(tmp_path / "f")
    _break(tmp_path / "f", "8-bit")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "organseg.cli",
            "ink",
            "infer",
            "--input",
            str(tmp_path / "f"),
            "--model",
            str(tmp_path / "nomodel.pt"),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        encoding="utf-8",
        timeout=120,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("organseg: error:"), done.stderr
    assert not (tmp_path / "out").exists()
