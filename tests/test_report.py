"""The HTML report: values from the real CT, world-space alignment, orientation of slices, bad input."""

from __future__ import annotations

import base64
import io as _io
import json
import re
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest

from organseg import io
from organseg.config import LabelMap
from organseg.errors import InputError, OutputError
from organseg.infer.outputs import organ_stats
from organseg.metrics import parse_label_map, remap_labels
from organseg.report import build_report
from organseg.report_figures import organ_slices, ras_box, to_ras


def report_data(path: Path) -> dict:
    """The machine-readable copy of the report's content embedded in the page."""
    text = path.read_text(encoding="utf-8")
    return json.loads(re.search(r'id="organseg-report">(.*?)</script>', text, re.S).group(1))


def organseg_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "organseg.cli", *args], capture_output=True, encoding="utf-8", timeout=300
    )


def body_ct(shape=(40, 36, 24)) -> np.ndarray:
    ii, jj, _ = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    ct = np.full(shape, -1000, np.int16)
    ct[((ii - shape[0] / 2) / (shape[0] / 2.2)) ** 2 + ((jj - shape[1] / 2) / (shape[1] / 2.2)) ** 2 < 1] = 30
    return ct


def test_report_of_the_real_ct_holds_its_values_and_opens_offline(
    real_ct: Path, real_seg: Path, tmp_path: Path
):
    out = build_report(real_seg, real_ct, tmp_path / "r.html", label_map="totalsegmentator")
    text = out.read_text(encoding="utf-8")
    data = report_data(out)
    assert data["organs"] == ["liver", "kidney_right", "kidney_left", "spleen"]
    # Values are organ_stats' on the same data (liver about 1043 ml per the data README).
    ct = io.read_image(real_ct, kind="ct")
    seg = io.read_image(real_seg, kind="mask")
    mask = remap_labels(seg.array, parse_label_map("totalsegmentator"))
    expected = organ_stats(mask, ct, LabelMap())
    rows = {r["organ"]: r for r in data["rows"]}
    for organ, s in expected.items():
        assert rows[organ]["volume_ml"] == pytest.approx(s["volume_ml"], abs=0.06)
        assert rows[organ]["hu_mean"] == pytest.approx(s["hu_mean"], abs=0.06)
    assert 1000 < rows["liver"]["volume_ml"] < 1090
    # the left kidney reaches the last slice of this 30-slice scan: "partial", not "low"
    assert rows["kidney_left"]["cut_off"] and rows["kidney_left"]["volume_flag"] == "partial"
    # Self-contained: plotly.js inlined, no external script, stylesheet or image.
    assert "Plotly.newPlot" in text and len(text) > 3_000_000
    assert not re.search(r'<(script|link|img)[^>]+(src|href)="(https?:)?//', text)
    assert re.search(r'src="data:image/png;base64,', text)
    # One table row and three slices per organ, in the label colours of the sidecar/default map.
    assert len(re.findall(r'<tr data-organ="', text)) == 4
    assert text.count('alt="spleen ') == 3
    assert '"color":"rgb(221,130,101)"' in text.replace(" ", "") or "rgb(221,130,101)" in text


def test_ct_on_another_grid_is_aligned_in_world_space(dicom_dir: Path, dicom_seg: Path, tmp_path: Path):
    # The label file's rows are flipped relative to the DICOM series (LAS vs LPS): matched array to
    # array the spleen's mean is about -86 HU, aligned in world space about +80 HU.
    with pytest.warns(UserWarning, match="resampled onto the mask grid"):
        out = build_report(dicom_seg, dicom_dir, tmp_path / "r.html", label_map="totalsegmentator")
    rows = {r["organ"]: r for r in report_data(out)["rows"]}
    assert set(rows) == {"liver", "spleen"}
    assert 60 < rows["spleen"]["hu_mean"] < 100


def _png(uri: str) -> np.ndarray:
    return iio.imread(_io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


@pytest.mark.parametrize("flip_x", [False, True])
def test_slices_show_the_patients_right_on_the_viewers_left(flip_x: bool):
    # An organ on the patient's right (+x in RAS) must appear in the left half of the axial and coronal
    # images, whether the file stores x as R (RAS) or L (LAS, flipped first axis).
    shape = (40, 36, 24)
    ct = body_ct(shape).astype(np.float32)
    mask = np.zeros(shape, np.uint8)
    mask[26:34, 12:24, 8:16] = 1  # high i = patient's right in RAS
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    if flip_x:
        ct, mask = ct[::-1].copy(), mask[::-1].copy()
        affine = affine @ np.array([[-1, 0, 0, shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    mask_ras, spacing = to_ras(mask, affine)
    ct_ras, _ = to_ras(ct, affine)
    from scipy import ndimage

    box = ndimage.find_objects(np.ascontiguousarray(mask_ras))[0]
    assert ras_box(ndimage.find_objects(mask)[0], mask.shape, affine) == box  # the report's shortcut
    images = organ_slices(ct_ras, mask_ras, spacing, 1, box, {1: (255, 0, 0)})
    for plane in ("axial", "coronal"):
        img = _png(images[plane])
        red = (img[..., 0] == 255) & (img[..., 1] == 0)
        cols = np.nonzero(red)[1]
        assert cols.size and cols.mean() < img.shape[1] / 2, plane
    # Square pixels: the coronal crop is taller in mm (3 mm slices) than its voxel count says.
    assert _png(images["coronal"]).shape[0] > 0


def test_manifest_confidence_orders_the_table_and_run_details_show(tiny_ct_and_mask, tmp_path: Path):
    ct_path, mask_path = tiny_ct_and_mask
    run = {
        "models": ["builtin.safetensors"],
        "device": "cpu",
        "threads": 2,
        "timings_s": {"network": 1.5},
        "warnings": ["something to check"],
        "confidence": {
            "liver": {"score": 0.9, "low": False, "reasons": []},
            "spleen": {"score": 0.2, "low": True, "reasons": ["mean probability margin 0.20"]},
        },
    }
    (tmp_path / "tiny_mask.run.json").write_text(json.dumps(run))
    out = build_report(mask_path, ct_path, tmp_path / "r.html")
    data = report_data(out)
    assert data["organs"] == ["spleen", "liver"]  # least confident first
    assert "something to check" in data["warnings"]
    text = out.read_text(encoding="utf-8")
    assert "builtin.safetensors" in text and "network 1.50 s" in text


def test_bad_inputs_are_refused_with_the_reason(tiny_ct_and_mask, tmp_path: Path):
    ct_path, mask_path = tiny_ct_and_mask
    with pytest.raises(OutputError, match=r"\.html"):
        build_report(mask_path, ct_path, tmp_path / "r.png")
    empty = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), np.eye(4)), empty)
    with pytest.raises(InputError, match="no organ"):
        build_report(empty, ct_path, tmp_path / "r.html")
    far = tmp_path / "far_ct.nii.gz"
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = 5000.0
    nib.save(nib.Nifti1Image(body_ct(), affine), far)
    with pytest.raises(InputError, match="does not overlap"):
        build_report(mask_path, far, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()
    # Through the command: one line, non-zero exit, no traceback; an existing report is kept.
    done = organseg_cli(
        "report", "--mask", str(mask_path), "--ct", str(ct_path), "--output", str(tmp_path / "x.txt")
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("organseg: error:") and "x.txt" in done.stderr


def test_not_ct_warns_but_still_writes_the_report(tiny_ct_and_mask, tmp_path: Path):
    _, mask_path = tiny_ct_and_mask
    img = nib.load(mask_path)
    mr = tmp_path / "mr.nii.gz"  # MR-like: 0..4000, nothing negative
    values = np.asarray(img.dataobj).astype(np.float32) * 900 + 100
    nib.save(nib.Nifti1Image(values, img.affine), mr)
    with pytest.warns(UserWarning, match="Hounsfield"):
        out = build_report(mask_path, mr, tmp_path / "r.html")
    data = report_data(out)
    assert data["organs"] == ["liver", "spleen"]
    assert any("Hounsfield" in w for w in data["warnings"])


def test_report_command_writes_and_refuses_to_overwrite(tiny_ct_and_mask, tmp_path: Path):
    ct_path, mask_path = tiny_ct_and_mask
    out = tmp_path / "r.html"
    args = ("report", "--mask", str(mask_path), "--ct", str(ct_path), "--output", str(out))
    done = organseg_cli(*args)
    assert done.returncode == 0, done.stderr
    assert report_data(out)["organs"] == ["liver", "spleen"]
    again = organseg_cli(*args)
    assert again.returncode != 0 and "already exists" in again.stderr


def test_infer_report_carries_the_run_manifest(real_ct: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    import torch

    from organseg.checkpoint import build_model, save_checkpoint
    from organseg.cli import main
    from organseg.config import config_to_dict, load_config, replace_path

    cfg = load_config("demo")
    for key, value in (("model.filters", [4, 8]), ("model.bottleneck", 8), ("preprocess.spacing_mm", [6.0] * 3),
                       ("train.patch_size", [32] * 3)):  # fmt: skip
        cfg = replace_path(cfg, key, value)
    torch.manual_seed(0)  # this untrained net labels some organs in the real CT (see test_confidence)
    model = tmp_path / "tiny.pt"
    save_checkpoint(
        model, {"model": build_model(cfg).state_dict(), "config": config_to_dict(cfg), "epoch": 0}
    )
    mask, page = tmp_path / "m.nii.gz", tmp_path / "m.html"
    common = [
        "infer",
        "--input",
        str(real_ct),
        "--output",
        str(mask),
        "--model",
        str(model),
        "--device",
        "cpu",
    ]
    # in process (organseg.cli.main, what the console script runs): no second interpreter start-up
    with pytest.raises(SystemExit) as refused:
        main([*common, "--report", str(tmp_path / "m.pdf")])
    assert refused.value.code != 0 and "m.pdf" in capsys.readouterr().err
    assert not mask.exists()  # refused before any work
    main([*common, "--report", str(page)])
    assert page.exists() and f"wrote {page}" in capsys.readouterr().out
    data = report_data(page)
    manifest = json.loads((tmp_path / "m.run.json").read_text(encoding="utf-8"))
    found = [o for o, v in manifest["volumes_ml"].items() if v > 0]
    assert sorted(data["organs"]) == sorted(found)
    for row in data["rows"]:
        assert row["confidence"] == manifest["confidence"][row["organ"]]
    assert "tiny.pt" in page.read_text(encoding="utf-8")
