"""The robustness corpus: tiny bad inputs built on disk, and how to run ``organseg`` against them.

Every bad input is a few kB, made in a ``tmp_path`` by a builder in ``IMAGE_CORRUPTIONS`` (any image
input), ``FOLDER_CORRUPTIONS`` (DICOM folders and zips, for ``infer``) or ``MASK_CORRUPTIONS`` (an
image that is not a label mask). Each entry says which words the one-line error must contain besides
the file's path.

Commands run through the real CLI entry point, ``organseg.cli.main``: in-process (``run_cli``; torch is
imported once for the whole corpus) for most cases, and as a real ``python -m organseg.cli`` process
(``run_subprocess``) for a representative subset and for the crash tests.

The stderr rule (``assert_one_error_line``): after dropping progress bars (tqdm redraws, ``NN%|``) and
Python ``warnings`` (the ``file:line: XWarning: ...`` line and the indented source line under it), exactly
one line is left; it starts with ``organseg: error:`` and names the file (or option) at fault; and no
``Traceback`` appears anywhere.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import TINY_TRAINING, affine_4mm, save_nifti, tiny_phantom  # tests/conftest.py, re-exported
from conftest import tiny_config_dict as shared_tiny_config_dict

REPO = Path(__file__).resolve().parents[2]

#: Exit codes of organseg.errors (and click's usage errors, also 2).
EXIT = {"input": 2, "config": 3, "model": 4, "output": 5, "usage": 2}

# --------------------------------------------------------------------------------------- running the CLI


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def run_cli(capsys: pytest.CaptureFixture, *args: object) -> Result:
    """``organseg <args>`` in this process through ``organseg.cli.main`` (exit code, stdout, stderr)."""
    from organseg.cli import main

    capsys.readouterr()  # drop what earlier steps of the test printed
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return Result(code, out, err)


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")  # the CI box has 2 cores shared with other jobs
    return env


def run_subprocess(*args: object, cwd: Path, timeout: float = 120) -> Result:
    """``python -m organseg.cli <args>`` as a real process, in ``cwd``."""
    proc = subprocess.run(
        [sys.executable, "-m", "organseg.cli", *map(str, args)],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        encoding="utf-8",
        errors="replace",  # not the locale: reading DICOM (GDCM) sets the "C" locale here
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


_WARNING = re.compile(r"^\S.*:\d+: \w*Warning: ")
_PROGRESS = re.compile(r"\d+%\||\d+(?:\.\d+)?(?:it|s)/(?:s|it)\]|\|\s*\d+/\d+ \[")


def human_lines(stderr: str) -> list[str]:
    """The lines of ``stderr`` written for a human, without progress bars and ``warnings`` output."""
    lines, after_warning = [], False
    for raw in stderr.splitlines():
        line = raw.rsplit("\r", 1)[-1].rstrip()  # a tqdm bar redraws itself after '\r'
        if after_warning and raw.startswith(" "):  # the source line Python prints under a warning
            after_warning = False
            continue
        after_warning = False
        if not line.strip() or _PROGRESS.search(line):
            continue
        if _WARNING.match(line):
            after_warning = True
            continue
        lines.append(line)
    return lines


def assert_one_error_line(result: Result, code: int | None, *needles: object) -> str:
    """Non-zero exit (``code`` when given), one ``organseg: error:`` line naming every needle, no traceback."""
    context = f"exit {result.code}\n--- stderr ---\n{result.stderr}\n--- stdout ---\n{result.stdout}"
    assert result.code != 0, context
    if code is not None:
        assert result.code == code, context
    assert "Traceback" not in result.stderr, context
    lines = human_lines(result.stderr)
    assert len(lines) == 1, context
    line = lines[0]
    assert line.startswith("organseg: error: "), context
    for needle in needles:
        assert str(needle).lower() in line.lower(), f"{needle!r} not in: {line}"
    return line


def warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if _WARNING.match(line)]


@pytest.fixture(autouse=True)
def one_inference_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """``organseg infer`` uses ``os.cpu_count()`` torch threads; on a 2-core box shared with other jobs,
    2 spinning OpenMP threads made a 0.15 s inference take 9 s (measured). One thread keeps the corpus
    fast; the commands' behaviour does not depend on it."""
    monkeypatch.setattr(os, "cpu_count", lambda: 1)


# --------------------------------------------------------------------------------------- outputs untouched


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``folder`` (hidden temp files included): size, mtime and SHA-1."""
    state = {}
    if folder.exists():
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                st = path.stat()
                state[str(path.relative_to(folder))] = (
                    st.st_size,
                    st.st_mtime_ns,
                    hashlib.sha1(path.read_bytes()).hexdigest(),
                )
            elif path.is_dir():
                state[str(path.relative_to(folder)) + "/"] = (0, 0, "")
    return state


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """An output folder holding one earlier file, so 'nothing created or modified' is checkable."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "earlier.txt").write_text("written before the command ran\n")
    return folder


def temp_files(folder: Path) -> list[Path]:
    """Atomic-write leftovers (``.<name>.<random>.tmp<suffix>``) anywhere under ``folder``."""
    return sorted(p for p in folder.rglob(".*") if ".tmp" in p.name)


# --------------------------------------------------------------------------------------- tiny valid inputs


def write_msd(root: Path, n: int, seed: int = 0, label_value_7_in: int | None = None) -> Path:
    """A tiny Medical Segmentation Decathlon dataset (``dataset.json``, ``imagesTr``, ``labelsTr``)."""
    training = []
    for i in range(n):
        ct, label = tiny_phantom(seed + i)
        if i == label_value_7_in:
            label[label == 4] = 7  # a value the label map does not know
        save_nifti(root / "imagesTr" / f"case_{i:03d}.nii.gz", ct)
        save_nifti(root / "labelsTr" / f"case_{i:03d}.nii.gz", label)
        training.append(
            {"image": f"./imagesTr/case_{i:03d}.nii.gz", "label": f"./labelsTr/case_{i:03d}.nii.gz"}
        )
    (root / "dataset.json").write_text(json.dumps({"name": "tiny", "numTraining": n, "training": training}))
    return root


#: This corpus's tiny config: 16^3 patches at 4 mm, one short epoch (on top of the shared tiny network).
CORPUS_SETTINGS: dict[str, object] = {
    **TINY_TRAINING,
    "task": "tiny",
    "train.samples_per_volume": 2,
    "train.epochs": 1,
    "train.steps_per_epoch": 2,
    "train.val_every": 1,
    "train.folds": 2,
    "train.warmup_epochs": 0,
    "train.lr": 0.003,
}


def tiny_config_dict(**train: object) -> dict:
    """The demo config shrunk to seconds on a CPU (``tests/conftest.py``'s builder), ``train`` fields overridden."""
    return shared_tiny_config_dict({**CORPUS_SETTINGS, **{f"train.{k}": v for k, v in train.items()}})


def write_tiny_config(path: Path, **train: object) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(tiny_config_dict(**train), sort_keys=False))
    return path


def write_checkpoint(path: Path, cfg_dict: dict | None = None, **extra: object) -> Path:
    """An untrained but complete organseg checkpoint (weights + embedded config) for ``--model``."""
    import torch

    from organseg.checkpoint import build_model, save_checkpoint
    from organseg.config import config_from_dict

    cfg_dict = cfg_dict or tiny_config_dict()
    torch.manual_seed(0)
    model = build_model(config_from_dict(cfg_dict, "tiny"))
    state = {"model": model.state_dict(), "config": cfg_dict, "fold": 0, "epoch": 0, "step": 0}
    save_checkpoint(path, {**state, **extra})
    return path


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Valid tiny inputs shared by the whole corpus: CT, its mask, a model, a training dataset."""
    root = tmp_path_factory.mktemp("assets")
    ct, label = tiny_phantom(0)
    save_nifti(root / "ct.nii.gz", ct)
    save_nifti(root / "mask.nii.gz", label)
    write_checkpoint(root / "model.pt")
    write_msd(root / "dataset", 4)
    write_tiny_config(root / "tiny.yaml")
    return root


# --------------------------------------------------------------------------------------- evil files


class _RunsCode:
    """Unpickling this object calls ``exec(code)`` or ``os.system(code)``: the shape of every malicious pickle."""

    def __init__(self, call, code: str):
        self.call, self.code = call, code

    def __reduce__(self):
        return (self.call, (self.code,))


def write_evil_checkpoint(path: Path, marker: Path, how: str = "exec") -> Path:
    """A checkpoint-shaped pickle (``model``/``config`` keys) that creates ``marker`` when unpickled.

    ``how``: ``exec`` (Python code), ``system`` (a shell command; its module is blocked by name) or ``raw``
    (a plain ``pickle.dumps`` in protocol 4, not torch's zip format).
    """
    import pickle

    import torch

    if how == "system":
        payload = _RunsCode(os.system, f"touch {marker}")
    else:
        payload = _RunsCode(exec, f"open({str(marker)!r}, 'w').write('pwned')")
    state = {"model": {}, "config": {}, "fold": 0, "payload": payload}
    if how == "raw":
        path.write_bytes(pickle.dumps(state, protocol=4))
    else:
        torch.save(state, path)
    return path


def assert_evil_checkpoint_would_run(path: Path, marker: Path) -> None:
    """Prove the test pickle is really malicious: a plain ``pickle`` load runs it (then clean up)."""
    import pickle

    import torch

    assert not marker.exists()
    if zipfile.is_zipfile(path):
        torch.load(path, weights_only=False)  # what an unsafe loader would do
    else:
        pickle.loads(path.read_bytes())
    assert marker.exists()
    marker.unlink()


# --------------------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Corruption:
    """A bad input: ``build(folder) -> path`` and the words its error must contain (besides the path)."""

    build: Callable[[Path], Path]
    words: tuple[str, ...]
    code: int = EXIT["input"]


def _valid_gz_bytes(shape=(24, 20, 16)) -> bytes:
    ct = (np.random.default_rng(1).normal(0, 300, shape)).astype(np.int16)
    img = nib.Nifti1Image(ct, affine_4mm())
    return gzip.compress(img.header.binaryblock + bytes(4) + ct.tobytes(order="F"))


def _write(name: str, data: bytes) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    return build


def _array(name: str, array: np.ndarray) -> Callable[[Path], Path]:
    return lambda folder: save_nifti(folder / name, array)


def _header_only(name: str, shape: tuple[int, ...], payload: int = 1024) -> Callable[[Path], Path]:
    """A NIfTI header declaring ``shape`` (int16) over a tiny payload: must be refused from sizes alone."""

    def build(folder: Path) -> Path:
        header = nib.Nifti1Header()
        header.set_data_shape(shape)
        header.set_data_dtype(np.int16)
        header.set_sform(affine_4mm(), code=1)
        blob = header.binaryblock + bytes(4) + bytes(range(256)) * (payload // 256)
        path = folder / name
        path.write_bytes(gzip.compress(blob) if name.endswith(".gz") else blob)
        return path

    return build


def _png_bytes() -> bytes:
    import imageio.v3 as iio

    return iio.imwrite("<bytes>", np.zeros((8, 8, 3), np.uint8), extension=".png")


def _with_value(value: float, dtype=np.float32) -> np.ndarray:
    array = np.zeros((16, 14, 12), dtype)
    array[4:10, 4:10, 4:8] = 1
    array[7, 7, 5] = value
    return array


IMAGE_CORRUPTIONS: dict[str, Corruption] = {
    "missing": Corruption(lambda folder: folder / "missing.nii.gz", ("no such file",)),
    "empty": Corruption(_write("empty.nii.gz", b""), ("empty file",)),
    "truncated_gz": Corruption(
        lambda folder: _write("truncated.nii.gz", _valid_gz_bytes()[:1500])(folder), ("truncated or corrupt",)
    ),
    "text_as_nifti": Corruption(
        _write("notes.nii.gz", b"patient 17, abdomen, see report\n"), ("a text file",)
    ),
    "png_as_nifti": Corruption(lambda folder: _write("photo.nii.gz", _png_bytes())(folder), ("a PNG image",)),
    "uncompressed_named_gz": Corruption(
        lambda folder: _write("plain.nii.gz", gzip.decompress(_valid_gz_bytes()))(folder), ("rename it",)
    ),
    "2d": Corruption(_array("slice.nii.gz", np.zeros((24, 20), np.int16)), ("2D image",)),
    "single_slice": Corruption(_array("slice1.nii.gz", np.zeros((24, 20, 1), np.int16)), ("2D image",)),
    "4d": Corruption(_array("dyn.nii.gz", np.zeros((12, 10, 8, 3), np.int16)), ("4D image",)),
    "5d": Corruption(_array("vec.nii.gz", np.zeros((12, 10, 8, 1, 2), np.int16)), ("5D image",)),
    "zero_sized": Corruption(_header_only("zero.nii", (8, 0, 4), payload=0), ("zero-sized",)),
    "nan": Corruption(_array("nan.nii.gz", _with_value(np.nan)), ("NaN or infinite",)),
    "inf": Corruption(_array("inf.nii.gz", _with_value(-np.inf)), ("NaN or infinite",)),
    "huge_header_gz": Corruption(_header_only("huge.nii.gz", (1200, 1200, 1200)), ("declares",)),
    "huge_header_nii": Corruption(_header_only("huge.nii", (1200, 1200, 1200)), ("declares",)),
    "voxel_cap": Corruption(_header_only("cap.nii.gz", (32000, 32000, 32000)), ("declares", "voxels")),
    "unsupported_suffix": Corruption(_write("scan.jpg", b"\xff\xd8\xff\xe0" + bytes(64)), ("unsupported",)),
}


def write_dicom_series(folder: Path, array_ijk: np.ndarray, uid: str, description: str) -> None:
    """A CT series written slice by slice with SimpleITK (LPS, 0.8 x 0.9 x 2.5 mm)."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array_ijk.transpose(2, 1, 0).astype(np.int16))
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((10.0, -20.0, 30.0))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetImageIO("GDCMImageIO")
    for k in range(image.GetDepth()):
        s = image[:, :, k]
        for tag, value in (
            ("0008|0060", "CT"),
            ("0020|000d", "1.2.826.0.1.3680043.2.1125.9"),
            ("0020|000e", uid),
            ("0008|103e", description),
            ("0020|0037", "1\\0\\0\\0\\1\\0"),
            ("0020|0032", "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k)))),
            ("0020|0013", str(k + 1)),
            ("0008|0018", f"{uid}.{k + 1}"),
        ):
            s.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{uid[-3:]}_{k:03d}.dcm"))
        writer.Execute(s)


def _ramp(shape=(8, 7, 5)) -> np.ndarray:
    return (np.arange(np.prod(shape)).reshape(shape) * 3 - 1000).astype(np.int16)


def _two_series(folder: Path) -> Path:
    series = folder / "dicom_mixed"
    write_dicom_series(series, _ramp(), "1.2.3.111", "abdomen")
    write_dicom_series(series, _ramp((8, 7, 3)), "1.2.3.222", "scout")
    return series


def _corrupt_slice(folder: Path) -> Path:
    series = folder / "dicom_corrupt"
    write_dicom_series(series, _ramp((8, 7, 6)), "1.2.3.111", "abdomen")
    bad = sorted(series.iterdir())[2]
    bad.write_bytes(bad.read_bytes()[:-20])  # truncated pixel data
    return series


def _folder_without_dicom(folder: Path) -> Path:
    empty = folder / "not_dicom"
    empty.mkdir()
    (empty / "readme.txt").write_text("scans will be copied here\n")
    return empty


def _forged_size(name: str, rows: int, cols: int) -> Callable[[Path], Path]:
    """A valid 4-slice series whose headers then claim ``rows`` x ``cols`` pixels (files stay ~1 kB)."""

    def build(folder: Path) -> Path:
        series = folder / name
        write_dicom_series(series, _ramp(), "1.2.3.111", "abdomen")
        for file in series.iterdir():
            data = file.read_bytes()
            for tag, value in ((b"\x28\x00\x10\x00", rows), (b"\x28\x00\x11\x00", cols)):  # Rows, Columns
                for element in (tag + b"US\x02\x00", tag + b"\x02\x00\x00\x00"):  # explicit or implicit VR
                    if element in data:
                        at = data.index(element) + len(element)
                        data = data[:at] + struct.pack("<H", value) + data[at + 2 :]
                        break
                else:
                    raise AssertionError(f"{file}: no Rows/Columns element")
            file.write_bytes(data)
        return series

    return build


def _zip(name: str, members: dict[str, bytes]) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / name
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for member, data in members.items():
                archive.writestr(member, data)
        return path

    return build


def traversal_target(name: str = "organseg_robustness_traversal.dcm") -> Path:
    """Where ``../../<name>`` lands when joined naively to a folder two levels below ``/``."""
    return Path("/") / name


FOLDER_CORRUPTIONS: dict[str, Corruption] = {
    "dicom_two_series": Corruption(
        _two_series, ("2 DICOM series", "--series", "1.2.3.111", "1.2.3.222", "abdomen", "scout")
    ),
    "dicom_corrupt_slice": Corruption(_corrupt_slice, ("111_002.dcm", "corrupt")),
    "folder_without_dicom": Corruption(_folder_without_dicom, ("no DICOM series",)),
    "dicom_huge_header": Corruption(_forged_size("dicom_huge", 60000, 60000), ("declares", "voxels")),
    "dicom_declares_more_than_it_holds": Corruption(
        _forged_size("dicom_forged", 20000, 20000), ("111_000.dcm", "declares 800,000,000 bytes")
    ),
    "zip_traversal": Corruption(
        _zip("evil.zip", {"ok.dcm": b"x", "../../organseg_robustness_traversal.dcm": b"payload"}),
        ("../../organseg_robustness_traversal.dcm", "path traversal"),
    ),
    "zip_absolute": Corruption(
        _zip("abs.zip", {"/tmp/organseg_robustness_abs.dcm": b"payload"}), ("path traversal",)
    ),
    "not_a_zip": Corruption(_write("series.zip", b"this is not a zip archive\n"), ("not a readable zip",)),
}


MASK_CORRUPTIONS: dict[str, Corruption] = {
    "intensity_image": Corruption(
        lambda folder: save_nifti(folder / "ct_as_mask.nii.gz", tiny_phantom(0)[0]), ("negative",)
    ),
    "probabilities": Corruption(_array("probabilities.nii.gz", _with_value(0.25)), ("non-integer",)),
}
