"""MONAI bundle export, checked by MONAI itself: ``monai.bundle run`` without organseg, ``verify_metadata``.

The bundle's mask on the shared real CT is compared with ``organseg infer``'s (Dice per organ >= 0.99: the
two differ only by MONAI's own resampling and by blending logits instead of probabilities), and must sit
on the input's grid (shape and affine).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import SHARED_DATA, require_shared_data

import organseg.bundle as bundle
from organseg.errors import ModelError, OutputError

CT = SHARED_DATA / "totalseg-example" / "ct.nii.gz"
ORGANS = ("liver", "kidney_right", "kidney_left", "spleen")


@pytest.fixture(scope="module", autouse=True)
def _shared_ct() -> None:
    """Skip without the shared CT (fail under CI=true, as conftest's fixtures do)."""
    require_shared_data(CT)


# Runs a module with organseg made unimportable: the bundle must need MONAI (and torch) only.
WITHOUT_ORGANSEG = (
    "import runpy, sys; sys.modules['organseg'] = None; sys.argv = ['monai.bundle', *sys.argv[1:]]; "
    "runpy.run_module('monai.bundle', run_name='__main__', alter_sys=True)"
)


def monai_bundle(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_ORGANSEG, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bundle.export_bundle(tmp_path_factory.mktemp("export") / "organseg_bundle")


@pytest.fixture(scope="module")
def organseg_mask(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from organseg.infer import segment

    out = tmp_path_factory.mktemp("infer") / "ct.nii.gz"
    segment(CT, out, progress=False, threads=1)
    return out


def test_bundle_layout_uses_monai_components_only(exported: Path) -> None:
    for name in (
        "configs/metadata.json",
        "configs/inference.json",
        "models/model.ts",
        "docs/README.md",
        "LICENSE",
    ):
        assert (exported / name).is_file(), name
    config = json.loads((exported / "configs" / "inference.json").read_text())
    code = json.dumps({k: v for k, v in config.items() if k != "bundle_root"})
    assert "organseg." not in code and "import organseg" not in code  # no organseg module is named
    import monai

    targets = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "_target_" in node:
                targets.append(node["_target_"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(config)
    names = set(targets)
    assert {"LoadImaged", "Orientationd", "Spacingd", "CropForegroundd", "ScaleIntensityRanged"} <= names
    assert {"SlidingWindowInferer", "Activationsd", "Invertd", "AsDiscreted", "SaveImaged"} <= names
    for name in names:  # every component is MONAI's own
        assert any(hasattr(getattr(monai, m), name) for m in ("transforms", "inferers", "data")), name
    meta = json.loads((exported / "configs" / "metadata.json").read_text())
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 1 and image["pixdim_mm"] == [3.0, 3.0, 3.0]
    assert image["hu_window"] == [-175.0, 250.0]
    assert list(meta["network_data_format"]["outputs"]["pred"]["channel_def"].values()) == [
        "background",
        *ORGANS,
    ]


def test_monai_bundle_run_matches_organseg_infer(exported: Path, organseg_mask: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "ct.nii.gz").symlink_to(CT)
    out = tmp_path / "out"
    proc = monai_bundle(
        "run", "--config_file", str(exported / "configs" / "inference.json"),
        "--dataset_dir", str(data), "--output_dir", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = nib.load(out / "ct_seg.nii.gz")
    source = nib.load(CT)
    assert result.shape == source.shape  # on the input grid
    np.testing.assert_allclose(result.affine, source.affine, atol=1e-4)
    ours = np.asarray(nib.load(organseg_mask).dataobj)
    theirs = np.asarray(result.dataobj)
    for label, organ in enumerate(ORGANS, start=1):
        a, b = ours == label, theirs == label
        assert a.sum() > 1000, organ  # the organ is really there
        dice = 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))
        assert dice >= 0.99, f"{organ}: Dice {dice:.4f}"


def test_verify_metadata_passes_offline_and_catches_a_missing_key(exported: Path, tmp_path: Path) -> None:
    """MONAI's own ``verify_metadata`` (what ``python -m monai.bundle verify_metadata`` calls), offline."""
    from monai.bundle import verify_metadata

    schema = exported / "docs" / "metadata_schema.json"
    before = schema.read_bytes()
    verify_metadata(meta_file=str(exported / "configs" / "metadata.json"), filepath=str(schema))
    assert schema.read_bytes() == before  # used as it is, nothing downloaded over it
    broken = json.loads((exported / "configs" / "metadata.json").read_text())
    del broken["network_data_format"]["inputs"]["image"]["num_channels"]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="num_channels"):
        verify_metadata(meta_file=str(tmp_path / "broken.json"), filepath=str(schema))


def test_refuses_existing_targets(exported: Path, tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="exists"):
        bundle.export_bundle(exported)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="not a MONAI bundle"):
        bundle.export_bundle(other, overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"


def test_refuses_what_a_bundle_cannot_express(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    for k in (0, 1):
        (run / f"fold_{k}").mkdir(parents=True)
        (run / f"fold_{k}" / "checkpoint_best.pt").write_bytes(b"")
    (run / "run.json").write_text(json.dumps({"organseg_run": 1, "task": "abdomen", "folds": 2}))
    with pytest.raises(ModelError, match="ensemble of 2 folds.*--fold"):
        bundle.export_bundle(tmp_path / "b1", model=run)
    real_load = bundle.load_model_file

    def with_tta(path, device="cpu"):
        net, cfg = real_load(path, device)
        return net, dataclasses.replace(cfg, infer=dataclasses.replace(cfg.infer, tta=True))

    monkeypatch.setattr(bundle, "load_model_file", with_tta)
    with pytest.raises(ModelError, match="test-time augmentation"):
        bundle.export_bundle(tmp_path / "b2")
    assert not (tmp_path / "b1").exists() and not (tmp_path / "b2").exists()


def test_cli_export_bundle_errors_are_one_line(exported: Path, capsys: pytest.CaptureFixture) -> None:
    from organseg.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--bundle", str(exported)])
    assert exit_info.value.code != 0
    assert capsys.readouterr().err == f"organseg: error: {exported}: exists (use --overwrite to replace it)\n"


@pytest.mark.slow
def test_bundle_mask_lands_on_an_lps_input_grid(exported: Path, tmp_path: Path) -> None:
    """The shared DICOM series as an LPS NIfTI (512 x 512 x 20, 0.98 x 0.98 x 2 mm): the bundle's mask keeps
    that grid (no reorientation left over from Orientationd(RAS)) and agrees with organseg infer."""
    from organseg import io
    from organseg.infer import segment

    series = require_shared_data(SHARED_DATA / "totalseg-dicom" / "dicom")
    vol = io.read_image(series, kind="ct")
    data = tmp_path / "data"
    data.mkdir()
    io.write_volume(vol.array, vol, data / "dicom.nii.gz")
    proc = monai_bundle(
        "run", "--config_file", str(exported / "configs" / "inference.json"),
        "--dataset_dir", str(data), "--output_dir", str(tmp_path / "out"), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = nib.load(tmp_path / "out" / "dicom_seg.nii.gz")
    assert result.shape == vol.shape and nib.aff2axcodes(result.affine) == ("L", "P", "S")
    np.testing.assert_allclose(result.affine, vol.affine, atol=1e-4)
    ours = np.asarray(
        nib.load(segment(series, tmp_path / "ours.nii.gz", progress=False, threads=1).mask).dataobj
    )
    theirs = np.asarray(result.dataobj)
    # liver and spleen (the kidneys are not in this field of view). The liver carries the geometry check. The
    # built-in model's spleen in this 40 mm slab is a few uncertain pieces of similar size (v2: 57 ml before
    # postprocessing, 31 ml after), so which piece is the largest component can flip with the tiny numeric
    # differences between the two pipelines (probabilities vs logits blended): 0.92 measured with the v2 weights.
    for label, least in ((1, 0.98), (4, 0.90)):
        a, b = ours == label, theirs == label
        assert 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)) >= least, label
