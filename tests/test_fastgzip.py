"""``organseg.fastgzip``: the CT inflated in the background (``GunzipAhead``) and masks deflated on two
cores (``write_gzip``), byte-exact against Python's gzip, with the ordinary read as the fallback."""

from __future__ import annotations

import gzip
import os
from io import BytesIO
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from organseg import io
from organseg.errors import InputError
from organseg.fastgzip import GunzipAhead, gunzip, write_gzip
from organseg.io import nifti
from organseg.io.writers import fortran_copy


def test_gunzip_equals_gzip_on_real_ct(real_ct):
    data = real_ct.read_bytes()
    out = gunzip(data)
    assert out is not None and out.flags.writeable
    assert out.tobytes() == gzip.decompress(data)


def test_gunzip_spans_several_chunks(monkeypatch):
    """Output assembled across many inflate calls is byte-exact (chunk edges inside the stream)."""
    monkeypatch.setattr("organseg.fastgzip.CHUNK_BYTES", 1000)
    rng = np.random.default_rng(0)
    raw = (rng.integers(0, 40, 300_000) * 7).astype(np.uint8).tobytes()  # compressible, not trivial
    out = gunzip(gzip.compress(raw))
    assert out is not None and out.tobytes() == raw


@pytest.mark.parametrize(
    "stream",
    [
        gzip.compress(b"abc" * 1000) + gzip.compress(b"def"),  # two members: not what ISIZE describes
        gzip.compress(b"abc" * 1000) + b"trailing",
        b"not gzip at all, just text",
    ],
)
def test_gunzip_refuses_what_it_cannot_size(stream):
    assert gunzip(stream) is None


def _nifti(tmp_path: Path, name: str, big_endian: bool = False, slope: float = 1.0) -> Path:
    rng = np.random.default_rng(1)
    arr = rng.integers(-1000, 1500, (20, 17, 9)).astype(">i2" if big_endian else "<i2")
    affine = np.array([[-0.8, 0.1, 0, 10], [0, 0.7, 0.2, -5], [0, 0, 2.5, 30], [0, 0, 0, 1]])
    img = nib.Nifti1Image(arr, affine)
    img.header.set_data_dtype(arr.dtype)
    if slope != 1.0:
        img.header.set_slope_inter(slope, -1024.0)
    path = tmp_path / name
    nib.save(img, path)
    return path


@pytest.mark.parametrize("big_endian,slope", [(False, 1.0), (True, 1.0), (False, 0.5)])
def test_prefetched_read_equals_ordinary_read(tmp_path, monkeypatch, big_endian, slope):
    path = _nifti(tmp_path, "ct.nii.gz", big_endian, slope)
    expected = io.read_image(path, kind="ct")
    ahead = GunzipAhead(path)

    def no_file_read(self):  # the prefetched bytes must be used, not the file read again
        raise AssertionError("read the file again")

    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "get_unscaled", no_file_read)
    got = io.read_image(path, kind="ct", prefetched=ahead)
    assert got.array.dtype == expected.array.dtype and np.array_equal(got.array, expected.array)
    assert np.array_equal(got.affine, expected.affine)
    assert got.array.flags.writeable


def test_prefetched_read_of_the_real_ct(real_ct, monkeypatch):
    expected = io.read_image(real_ct, kind="ct")
    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "get_unscaled", None)  # calling it would fail
    got = io.read_image(real_ct, kind="ct", prefetched=GunzipAhead(real_ct))
    assert np.array_equal(got.array, expected.array) and np.array_equal(got.affine, expected.affine)


def test_take_falls_back_when_unusable(tmp_path):
    a = _nifti(tmp_path, "a.nii.gz")
    b = _nifti(tmp_path, "b.nii.gz")
    ahead = GunzipAhead(a)
    assert ahead.take(b) is None  # another file
    assert ahead.take(a) is not None
    assert ahead.take(a) is None  # handed over once
    changed = GunzipAhead(a)
    changed._thread.join()
    os.utime(a, ns=(0, 0))  # the file changed after the read started
    assert changed.take(a) is None


def test_corrupt_prefetch_still_gives_the_one_line_error(tmp_path):
    path = _nifti(tmp_path, "ct.nii.gz")
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) * 2 // 3])  # cut off: the inflated bytes cannot be sized
    ahead = GunzipAhead(path)
    with pytest.raises(InputError, match="ct.nii.gz: truncated or corrupt"):
        nifti.read_nifti_file(path, ahead)


def test_write_gzip_is_one_ordinary_member(monkeypatch):
    """Deflated in several pieces in parallel, the result is a single gzip member that inflates to the
    same bytes (``gunzip`` refuses anything else) with the right CRC and size in its trailer."""
    monkeypatch.setattr("organseg.fastgzip.PARALLEL_MIN_BYTES", 1000)
    rng = np.random.default_rng(2)
    raw = (rng.integers(0, 3, 2_000_003) * 40).astype(np.uint8).tobytes()
    for workers in (1, 2, 3):
        buf = BytesIO()
        write_gzip(raw, buf, workers=workers)
        blob = buf.getvalue()
        assert gzip.decompress(blob) == raw
        assert gunzip(blob).tobytes() == raw


@pytest.mark.parametrize("shape", [(33, 17, 5), (40, 40, 3), (16, 1, 7), (1, 50, 2)])
def test_fortran_copy_equals_numpy(shape):
    rng = np.random.default_rng(3)
    a = rng.integers(0, 255, shape).astype(np.uint8)
    f = fortran_copy(a)
    assert f.flags.f_contiguous and f.shape == a.shape and np.array_equal(f, a)
    assert fortran_copy(np.asfortranarray(a)).flags.f_contiguous


def test_written_mask_reads_back_everywhere(tmp_path):
    """A mask big enough to be deflated in two pieces reads back voxel-exact in nibabel and SimpleITK,
    on the input's grid."""
    import SimpleITK as sitk

    from organseg.io.volume import Volume
    from organseg.io.writers import write_nifti

    rng = np.random.default_rng(4)
    mask = np.zeros((256, 256, 140), dtype=np.uint8)  # 9 MB: above PARALLEL_MIN_BYTES
    mask[40:200, 30:180, 20:120] = rng.integers(0, 5, (160, 150, 100))
    affine = np.array([[-0.7, 0, 0, 100], [0, -0.7, 0, 80], [0, 0, 1.5, -200], [0, 0, 0, 1]])
    like = Volume(array=mask, affine=affine, source="like")
    out = tmp_path / "mask.nii.gz"
    write_nifti(mask, like, out)
    back = io.read_image(out)
    assert np.array_equal(back.array, mask) and np.allclose(back.affine, affine)
    itk = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))  # (k, j, i)
    assert np.array_equal(itk.transpose(2, 1, 0), mask)


def test_only_label_volumes_take_the_in_memory_path(tmp_path, monkeypatch):
    """Masks go through ``write_gzip`` (built in memory); float and 4D maps stream through nibabel, so a
    probability map of a large CT never gets a second full-size copy."""
    from organseg.io import writers
    from organseg.io.volume import Volume

    calls = []
    monkeypatch.setattr(writers, "write_gzip", lambda data, f, **kw: calls.append(len(data)) or f.write(b""))
    like = Volume(array=np.zeros((8, 9, 10), np.int16), affine=np.diag([1.5, 1.5, 2.0, 1.0]), source="like")
    writers.write_nifti(np.ones((8, 9, 10), np.float32), like, tmp_path / "map.nii.gz")
    writers.write_nifti(np.ones((8, 9, 10, 3), np.uint8), like, tmp_path / "probs.nii.gz")
    assert calls == []
    assert io.read_image(tmp_path / "map.nii.gz").array.mean() == 1.0
    writers.write_nifti(np.ones((8, 9, 10), np.uint8), like, tmp_path / "mask.nii.gz")
    assert len(calls) == 1
