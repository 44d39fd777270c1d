"""``organseg.readahead`` and the start-up shortcuts of ``organseg infer``: the CT inflated in the
background, MONAI imported without its plotting extras, the process ending without teardown."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from organseg import io
from organseg.errors import InputError
from organseg.io import nifti
from organseg.readahead import GunzipAhead, gunzip


def test_gunzip_equals_gzip_on_real_ct(real_ct):
    data = real_ct.read_bytes()
    out = gunzip(data)
    assert out is not None and out.flags.writeable
    assert out.tobytes() == gzip.decompress(data)


def test_gunzip_spans_several_chunks(monkeypatch):
    """Output assembled across many inflate calls is byte-exact (chunk edges inside the stream)."""
    monkeypatch.setattr("organseg.readahead.CHUNK_BYTES", 1000)
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


_LEAN = textwrap.dedent(
    """
    import sys
    import organseg.infer as oi
    oi._prefetch_imports(lean=sys.argv[1] == "lean").join()
    assert "monai.inferers" in sys.modules
    print("matplotlib" in sys.modules, "scipy.signal" in sys.modules)
    import matplotlib.pyplot, scipy.signal  # later imports work as usual
    """
)


def test_lean_import_skips_monai_plotting_extras():
    """Without ``lean`` MONAI imports matplotlib and scipy.signal (so the check below means something);
    with it neither is loaded, and both import normally afterwards."""
    seen = {}
    for mode in ("full", "lean"):
        run = subprocess.run(
            [sys.executable, "-c", _LEAN, mode], capture_output=True, text=True, encoding="utf-8", timeout=300
        )
        assert run.returncode == 0, run.stderr[-2000:]
        seen[mode] = run.stdout.split()
    assert seen == {"full": ["True", "True"], "lean": ["False", "False"]}


_EXIT = textwrap.dedent(
    """
    import atexit, sys
    atexit.register(lambda: print("teardown ran", flush=True))
    from organseg.cli import main
    main(sys.argv[1:])
    """
)


def test_infer_ends_without_teardown_after_writing(real_ct, tmp_path):
    """``organseg infer`` ends the process once all is written (no atexit handlers run), with its summary
    printed and exit status 0; a failing run still exits through the normal error path."""
    out = tmp_path / "mask.nii.gz"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["infer", "--input", str(real_ct), "--output", str(out), "--backend", "torch"]
    run = subprocess.run(
        [sys.executable, "-c", _EXIT, *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "wrote" in run.stdout and "teardown ran" not in run.stdout
    assert io.read_image(out).shape == io.read_image(real_ct).shape
    bad = subprocess.run(
        [
            sys.executable,
            "-c",
            _EXIT,
            "infer",
            "--input",
            str(tmp_path / "none.nii.gz"),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
    )
    assert bad.returncode != 0 and "none.nii.gz: no such file" in bad.stderr
