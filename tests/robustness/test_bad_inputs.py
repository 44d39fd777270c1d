"""Every command against the corpus of bad inputs: one clear error line, a non-zero exit, nothing written.

Most cases run the real CLI entry point in-process (``run_cli``); ``test_real_process`` repeats a
representative case of each command as a real ``python -m organseg.cli`` process. Each case checks:
the exit code of the error class, exactly one ``organseg: error:`` line on stderr naming the file (see
``conftest.assert_one_error_line``), no traceback, and that the output folder holds exactly what it held
before (no new file, no temp file, no earlier file modified).
"""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest
import yaml

from .conftest import (
    EXIT,
    FOLDER_CORRUPTIONS,
    IMAGE_CORRUPTIONS,
    MASK_CORRUPTIONS,
    assert_evil_checkpoint_would_run,
    assert_one_error_line,
    human_lines,
    run_cli,
    run_subprocess,
    save_nifti,
    snapshot,
    tiny_config_dict,
    tiny_phantom,
    traversal_target,
    warning_lines,
    write_checkpoint,
    write_dicom_series,
    write_evil_checkpoint,
    write_msd,
)


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    """``cli("infer", "--input", ...)``: the real entry point in-process, run from an empty folder."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # no command may pick up ./runs or ./demo-out of the repository
    return lambda *args: run_cli(capsys, *args)


def infer_args(image: Path, output: Path, model: Path, *extra: object) -> list[object]:
    return ["infer", "--input", image, "--output", output, "--model", model, "--device", "cpu", *extra]


def render_args(mask: Path, output: Path, *extra: object) -> list[object]:
    return ["render", "--input", mask, "--output", output, "--size", "64x64", "--frames", "2", *extra]


def fake_run(root: Path, dataset: Path, checkpoint: Path | None = None, cfg: dict | None = None) -> Path:
    """A run folder as ``organseg train`` leaves it after epoch 1 (marker, config, fold_0 checkpoint)."""
    root.mkdir(parents=True)
    marker = {"organseg_run": 1, "task": "tiny", "folds": [0], "created": "2024-01-01T00:00:00+00:00"}
    (root / "run.json").write_text(json.dumps({**marker, "data_dir": str(dataset)}))
    (root / "config.yaml").write_text(yaml.safe_dump(cfg or tiny_config_dict(epochs=2), sort_keys=False))
    if checkpoint is not None:
        (root / "fold_0").mkdir()
        (root / "fold_0" / "checkpoint_last.pt").write_bytes(checkpoint.read_bytes())
    return root


# --------------------------------------------------------------------------------------- infer


@pytest.mark.parametrize("kind", [*IMAGE_CORRUPTIONS, *FOLDER_CORRUPTIONS])
def test_infer_refuses_a_bad_image(kind, assets, tmp_path, out_dir, cli):
    bad = {**IMAGE_CORRUPTIONS, **FOLDER_CORRUPTIONS}[kind]
    path = bad.build(tmp_path)
    before = snapshot(out_dir)
    result = cli(*infer_args(path, out_dir / "mask.nii.gz", assets / "model.pt"))
    assert_one_error_line(result, bad.code, path, *bad.words)
    assert snapshot(out_dir) == before
    if kind.startswith("zip"):
        assert not traversal_target().exists()
        assert not Path("/tmp/organseg_robustness_abs.dcm").exists()


def test_huge_declared_size_is_refused_without_allocating_it(assets, tmp_path, out_dir, cli):
    """A 1200^3 int16 header (3.5 GB) over a 1 kB payload: refused from sizes alone, nothing allocated."""
    path = IMAGE_CORRUPTIONS["huge_header_gz"].build(tmp_path)
    tracemalloc.start()
    try:
        result = cli("evaluate", "--pred", path, "--ref", assets / "mask.nii.gz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert_one_error_line(result, EXIT["input"], path, "declares 3,456,000,000 bytes")
    assert peak < 64 * 1024**2


def test_an_empty_ct_is_not_an_error_but_an_empty_mask_and_a_warning(assets, tmp_path, out_dir, cli):
    """Policy (organseg.infer): nothing above the body threshold -> empty mask on the input grid + warning."""
    air = save_nifti(tmp_path / "air.nii.gz", np.full((20, 18, 16), -1000, np.int16))
    with pytest.warns(UserWarning, match="no body found"):
        result = cli(*infer_args(air, out_dir / "mask.nii.gz", assets / "model.pt"))
    assert result.code == 0, result.stderr
    mask = nib.load(out_dir / "mask.nii.gz")
    assert mask.shape == (20, 18, 16) and not np.asarray(mask.dataobj).any()


def test_a_constant_image_is_segmented_with_a_warning(assets, tmp_path, out_dir, cli):
    """40 HU everywhere is no CT (no air): a mask on its grid, and warnings saying why it may be wrong."""
    flat = save_nifti(tmp_path / "flat.nii.gz", np.full((20, 18, 16), 40, np.int16))
    with pytest.warns(UserWarning, match="Hounsfield"):
        result = cli(*infer_args(flat, out_dir / "mask.nii.gz", assets / "model.pt"))
    assert result.code == 0, result.stderr
    assert nib.load(out_dir / "mask.nii.gz").shape == (20, 18, 16)


def test_infer_creates_no_output_folder_when_it_fails(assets, tmp_path, cli):
    cases = tmp_path / "cts"
    cases.mkdir()
    (cases / "a.nii.gz").write_bytes((assets / "ct.nii.gz").read_bytes())
    masks = tmp_path / "masks"
    result = cli(*infer_args(cases, masks, tmp_path / "missing.pt"))
    assert_one_error_line(result, EXIT["model"], tmp_path / "missing.pt", "model not found")
    assert not masks.exists()


def test_a_non_ascii_dicom_folder_name_reaches_the_csv(assets, tmp_path, out_dir, cli):
    """GDCM puts the process in the ASCII "C" locale while reading DICOM; text outputs stay UTF-8."""
    ct = np.full((24, 20, 12), -1000, np.int16)
    ct[4:20, 4:16, 2:10] = 40
    series = tmp_path / "Müller_CT"
    write_dicom_series(series, ct, "1.2.3.111", "abdomen")
    stats = out_dir / "stats.csv"
    result = cli(*infer_args(series, out_dir / "mask.nii.gz", assets / "model.pt", "--stats", stats))
    assert result.code == 0, result.stderr
    assert "Müller_CT,liver," in stats.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "kind, words",
    [
        ("missing", ("model not found",)),
        ("truncated", ("not a readable checkpoint",)),
        ("random_bytes", ("not a readable checkpoint",)),
        ("plain_dict", ("not an organseg checkpoint",)),
        ("bad_safetensors", ("not a readable safetensors model",)),
        ("unknown_suffix", ("unknown model format",)),
        ("weights_for_other_labels", ("weights do not fit",)),
        ("run_without_checkpoint", ("no checkpoint yet",)),
        ("folder_without_model", ("not a model folder",)),
    ],
)
def test_infer_refuses_a_bad_model(kind, words, assets, tmp_path, out_dir, cli):
    import torch

    model = tmp_path / f"{kind}.pt"
    if kind == "truncated":
        model.write_bytes((assets / "model.pt").read_bytes()[:400])
    elif kind == "random_bytes":
        model.write_bytes(np.random.default_rng(0).bytes(2048))
    elif kind == "plain_dict":
        torch.save({"weights": torch.zeros(3)}, model)
    elif kind == "bad_safetensors":
        model = tmp_path / "model.safetensors"
        model.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    elif kind == "unknown_suffix":
        model = tmp_path / "model.onnx"
        model.write_bytes(b"onnx")
    elif kind == "weights_for_other_labels":
        # weights trained for 3 labels, config claiming the 5 of organseg: a foreign or edited checkpoint
        other = tiny_config_dict()
        other["labels"] = {0: "background", 1: "liver", 2: "spleen"}
        write_checkpoint(model, other)
        ckpt = torch.load(model, weights_only=True)
        ckpt["config"] = tiny_config_dict()
        torch.save(ckpt, model)
    elif kind == "run_without_checkpoint":
        model = fake_run(tmp_path / "run", assets / "dataset")
    elif kind == "folder_without_model":
        model = tmp_path / "models"
        model.mkdir()
    before = snapshot(out_dir)
    result = cli(*infer_args(assets / "ct.nii.gz", out_dir / "mask.nii.gz", model))
    assert_one_error_line(result, EXIT["model"], model, *words)
    assert snapshot(out_dir) == before


@pytest.mark.parametrize(
    "how, words",
    [
        ("exec", ("refused to load checkpoint", "GLOBAL")),
        ("system", ("refused to load checkpoint", "GLOBAL")),
        ("raw", ("not a readable checkpoint",)),  # protocol 4: the weights-only unpickler stops earlier
    ],
)
@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")  # torch, about the raw pickle
def test_infer_refuses_a_malicious_pickle_without_running_it(how, words, assets, tmp_path, out_dir, cli):
    marker = tmp_path / "PWNED"
    evil = write_evil_checkpoint(tmp_path / "evil.pt", marker, how)
    assert_evil_checkpoint_would_run(evil, marker)
    before = snapshot(out_dir)
    result = cli(*infer_args(assets / "ct.nii.gz", out_dir / "mask.nii.gz", evil))
    assert_one_error_line(result, EXIT["model"], evil, *words)
    assert not marker.exists()
    assert snapshot(out_dir) == before


def test_a_model_for_another_label_map_is_refused_when_labels_are_expected(assets, tmp_path):
    """``segment(expected_labels=...)``: a consistent checkpoint trained for other organs is a ModelError."""
    from organseg.config import LabelMap
    from organseg.errors import ModelError
    from organseg.infer import segment

    other = tiny_config_dict()
    other["labels"] = {0: "background", 1: "liver", 2: "spleen"}
    model = write_checkpoint(tmp_path / "other.pt", other)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ModelError, match="another task") as excinfo:
        segment(
            assets / "ct.nii.gz", out / "mask.nii.gz", model=model, expected_labels=LabelMap(), progress=False
        )
    assert str(model) in str(excinfo.value) and "\n" not in str(excinfo.value)
    assert list(out.iterdir()) == []


# --------------------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize("role", ["pred", "ref"])
@pytest.mark.parametrize("kind", [*IMAGE_CORRUPTIONS, *MASK_CORRUPTIONS])
def test_evaluate_refuses_a_bad_mask(kind, role, assets, tmp_path, out_dir, cli):
    bad = {**IMAGE_CORRUPTIONS, **MASK_CORRUPTIONS}[kind]
    path = bad.build(tmp_path)
    good = assets / "mask.nii.gz"
    pred, ref = (path, good) if role == "pred" else (good, path)
    before = snapshot(out_dir)
    result = cli("evaluate", "--pred", pred, "--ref", ref, "--out", out_dir / "metrics.json")
    assert_one_error_line(result, bad.code, path, *bad.words)
    assert snapshot(out_dir) == before


def test_evaluate_refuses_masks_of_different_patients(assets, tmp_path, out_dir, cli):
    """Same array, but 5 m apart in world space: no voxel in common, so no score would mean anything."""
    _, label = tiny_phantom(0)
    far = np.diag([4.0, 4.0, 4.0, 1.0])
    far[:3, 3] = (5000.0, 0.0, 0.0)
    ref = save_nifti(tmp_path / "other_patient.nii.gz", label, far)
    before = snapshot(out_dir)
    result = cli("evaluate", "--pred", assets / "mask.nii.gz", "--ref", ref, "--out", out_dir / "m.json")
    assert_one_error_line(result, EXIT["input"], ref, "do not overlap in physical space")
    assert snapshot(out_dir) == before


def test_evaluate_refuses_an_unknown_out_format_before_computing(assets, out_dir, cli):
    before = snapshot(out_dir)
    result = cli(*_command("evaluate", assets, out_dir / "metrics.txt"))
    assert_one_error_line(result, EXIT["output"], out_dir / "metrics.txt", "unknown metrics format")
    assert snapshot(out_dir) == before
    assert result.stdout == ""  # failed before the work, like infer and render do


# --------------------------------------------------------------------------------------- render

#: Render reads NIfTI only, so a non-NIfTI file gets a different (still one-line) message.
RENDER_WORDS = {"unsupported_suffix": ("not a NIfTI file", "a JPEG image")}


@pytest.mark.parametrize("kind", [*IMAGE_CORRUPTIONS, *MASK_CORRUPTIONS, "empty_mask", "dicom_folder"])
def test_render_refuses_a_bad_mask(kind, tmp_path, out_dir, cli):
    if kind == "empty_mask":
        path, words = (
            save_nifti(tmp_path / "empty_mask.nii.gz", np.zeros((16, 14, 12), np.uint8)),
            ("no organ",),
        )
        code = EXIT["input"]
    elif kind == "dicom_folder":
        path, words, code = (
            FOLDER_CORRUPTIONS["folder_without_dicom"].build(tmp_path),
            ("not a regular file",),
            2,
        )
    else:
        bad = {**IMAGE_CORRUPTIONS, **MASK_CORRUPTIONS}[kind]
        path, words, code = bad.build(tmp_path), RENDER_WORDS.get(kind, bad.words), bad.code
    before = snapshot(out_dir)
    result = cli(*render_args(path, out_dir / "organs.mp4", "--preview", out_dir / "organs.png"))
    assert_one_error_line(result, code, path, *words)
    assert snapshot(out_dir) == before


@pytest.mark.parametrize(
    "option, code, words",
    [
        ("gif_output", EXIT["output"], ("organs.gif", "expected .mp4")),
        ("jpg_preview", EXIT["output"], ("organs.jpg", "expected a .png")),
        ("odd_size", EXIT["config"], ("--size", "WIDTHxHEIGHT")),
        ("corrupt_ct", EXIT["input"], ("truncated.nii.gz", "truncated or corrupt")),
    ],
)
def test_render_refuses_bad_options(option, code, words, assets, tmp_path, out_dir, cli):
    args = render_args(assets / "mask.nii.gz", out_dir / "organs.mp4")
    if option == "gif_output":
        args = render_args(assets / "mask.nii.gz", out_dir / "organs.gif")
    elif option == "jpg_preview":
        args += ["--preview", out_dir / "organs.jpg"]
    elif option == "odd_size":
        args += ["--size", "64 by 64"]
    else:
        args += ["--ct", IMAGE_CORRUPTIONS["truncated_gz"].build(tmp_path)]
    before = snapshot(out_dir)
    assert_one_error_line(cli(*args), code, *words)
    assert snapshot(out_dir) == before


def test_render_shows_an_unknown_label_in_grey_with_a_warning(tmp_path, out_dir, cli):
    _, label = tiny_phantom(0)
    label[label == 4] = 7  # spleen stored under a value the label map does not know
    mask = save_nifti(tmp_path / "mask7.nii.gz", label)
    with pytest.warns(UserWarning, match=r"label value\(s\) 7 not in the label map"):
        result = cli(*render_args(mask, out_dir / "organs.png"))
    assert result.code == 0, result.stderr
    frame = iio.imread(out_dir / "organs.png").astype(int)[..., :3]
    r, g, b = frame[..., 0], frame[..., 1], frame[..., 2]
    grey = (abs(r - g) < 10) & (abs(g - b) < 10) & (r > 70)
    assert grey.sum() > 10  # the neutral colour is on screen


# --------------------------------------------------------------------------------------- train


BAD_CONFIGS = {
    "unknown_key": ("train:\n  epochz: 3\n", ("train.epochz", "unknown key")),
    "wrong_type": ("train:\n  epochs: ten\n", ("train.epochs", "expected an integer")),
    "wrong_nested_type": ("model:\n  filters: 16\n", ("model.filters", "expected a list")),
    "not_yaml": ("train: [1, 2\n", ("not valid YAML",)),
    "not_a_mapping": ("- 1\n- 2\n", ("expected a YAML mapping",)),
    "bad_label_map": ("labels: {0: background, 2: liver}\n", ("labels", "without gaps")),
}


@pytest.mark.parametrize("kind", BAD_CONFIGS)
def test_train_refuses_a_bad_config(kind, assets, tmp_path, cli):
    text, words = BAD_CONFIGS[kind]
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    run = tmp_path / "run"
    result = cli("train", "--config", config, "--data", assets / "dataset", "--run", run, "--device", "cpu")
    assert_one_error_line(result, EXIT["config"], config, *words)
    assert not run.exists()


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.epochz=3", ("train.epochz", "unknown key")),
        ("train.epochs=ten", ("train.epochs", "expected an integer")),
        ("train.patch_size=[4,4,4]", ("patch_size", ">= 8")),
        ("train.epochs", ("--set", "KEY=VALUE")),
    ],
)
def test_train_refuses_a_bad_override(override, words, assets, tmp_path, cli):
    run = tmp_path / "run"
    result = cli(
        "train",
        "--config",
        assets / "tiny.yaml",
        "--data",
        assets / "dataset",
        "--run",
        run,
        "--set",
        override,
    )
    assert_one_error_line(result, EXIT["config"], *words)
    assert not run.exists()


def test_train_names_a_missing_config(tmp_path, cli):
    result = cli("train", "--config", tmp_path / "nope.yaml", "--run", tmp_path / "run")
    assert_one_error_line(result, EXIT["config"], tmp_path / "nope.yaml", "config file not found")


def _dataset(kind: str, root: Path) -> tuple[Path, Path, tuple[str, ...]]:
    """(data folder, path the error must name, words) for each kind of unusable dataset."""
    if kind == "missing":
        return root / "nowhere", root / "nowhere", ("dataset folder not found",)
    data = root / kind
    data.mkdir()
    if kind == "empty_folder":
        return data, data, ("imagesTr",)
    if kind == "images_without_labels":
        for i in range(3):
            save_nifti(data / "imagesTr" / f"case_{i}.nii.gz", tiny_phantom(i)[0])
        return data, data, ("no usable image/label pairs",)
    if kind == "labels_without_images":
        for i in range(3):
            save_nifti(data / "labelsTr" / f"case_{i}.nii.gz", tiny_phantom(i)[1])
        (data / "imagesTr").mkdir()
        return data, data, ("no usable image/label pairs",)
    if kind == "label_outside_label_map":
        write_msd(
            data,
            2,
            label_value_7_in=1,
        )
        return data, data / "labelsTr" / "case_001.nii.gz", ("label values [7]", "not in the label map")
    if kind == "bad_dataset_json":
        write_msd(data, 2)
        (data / "dataset.json").write_text("{not json")
        return data, data / "dataset.json", ("not valid JSON",)
    if kind == "corrupt_image":
        write_msd(data, 2)
        image = data / "imagesTr" / "case_001.nii.gz"
        image.write_bytes(image.read_bytes()[:-200])  # header intact, voxel data cut short
        return data, image, ("truncated or corrupt",)
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "missing",
        "empty_folder",
        "images_without_labels",
        "labels_without_images",
        "label_outside_label_map",
        "bad_dataset_json",
        "corrupt_image",
    ],
)
def test_train_refuses_an_unusable_dataset(kind, assets, tmp_path, cli):
    data, named, words = _dataset(kind, tmp_path)
    run = tmp_path / "run"
    result = cli("train", "--config", assets / "tiny.yaml", "--data", data, "--run", run, "--device", "cpu")
    assert_one_error_line(result, EXIT["input"], named, *words)
    if kind == "corrupt_image":
        # Voxel data is first read while caching, after the run folder got its run.json/config.yaml
        # (a second full read up front would double the I/O of every run): no checkpoint, no temp file.
        assert not list(run.rglob("*.pt")) and not list(run.rglob(".*.tmp*"))
    else:
        assert not run.exists()


def test_train_refuses_a_fold_out_of_range(assets, tmp_path, cli):
    run = tmp_path / "run"
    result = cli(
        "train", "--config", assets / "tiny.yaml", "--data", assets / "dataset", "--run", run, "--fold", 7
    )
    assert_one_error_line(result, EXIT["config"], "fold 7", "out of range", "0..1")
    assert not run.exists()


@pytest.mark.parametrize("kind", ["missing", "not_a_run", "bad_marker"])
def test_train_refuses_to_resume_a_folder_that_is_not_a_run(kind, tmp_path, cli):
    folder = tmp_path / "somewhere"
    if kind != "missing":
        folder.mkdir()
        (folder / "notes.txt").write_text("not a run\n")
    if kind == "bad_marker":
        (folder / "run.json").write_text("{oops")
    before = snapshot(tmp_path)
    result = cli("train", "--resume", folder, "--device", "cpu")
    words = ("run folder not found",) if kind == "missing" else ("not an organseg run folder",)
    assert_one_error_line(result, EXIT["input"], folder, *words)
    assert snapshot(tmp_path) == before


def test_train_refuses_to_start_over_an_existing_run(assets, tmp_path, cli):
    run = fake_run(tmp_path / "run", assets / "dataset", assets / "model.pt")
    before = snapshot(run)
    result = cli("train", "--config", assets / "tiny.yaml", "--data", assets / "dataset", "--run", run)
    assert_one_error_line(result, EXIT["output"], run, "--resume")
    assert snapshot(run) == before


@pytest.mark.parametrize("kind", ["truncated", "random_bytes", "other_label_map", "other_fold", "malicious"])
def test_train_resume_refuses_a_bad_checkpoint_and_leaves_the_run_alone(kind, assets, tmp_path, cli):
    import torch

    ckpt = tmp_path / "ckpt.pt"
    marker = tmp_path / "PWNED"
    words: tuple[str, ...]
    if kind == "truncated":
        ckpt.write_bytes((assets / "model.pt").read_bytes()[:300])
        words = ("not a readable checkpoint",)
    elif kind == "random_bytes":
        ckpt.write_bytes(np.random.default_rng(1).bytes(4096))
        words = ("not a readable checkpoint",)
    elif kind == "other_label_map":
        other = tiny_config_dict()
        other["labels"] = {0: "background", 1: "liver", 2: "spleen"}
        write_checkpoint(ckpt, other)
        words = ("labels", "differ")
    elif kind == "other_fold":
        write_checkpoint(ckpt)
        saved = torch.load(ckpt, weights_only=True)
        torch.save({**saved, "fold": 3}, ckpt)
        words = ("fold 3", "expected fold 0")
    else:
        write_evil_checkpoint(ckpt, marker)
        assert_evil_checkpoint_would_run(ckpt, marker)
        words = ("refused to load checkpoint",)
    run = fake_run(tmp_path / "run", assets / "dataset", ckpt)
    before = snapshot(run)
    result = cli("train", "--resume", run, "--device", "cpu")
    assert_one_error_line(result, EXIT["model"], run / "fold_0" / "checkpoint_last.pt", *words)
    assert snapshot(run) == before  # the checkpoint, and every other file of the run, untouched
    assert not marker.exists()


# --------------------------------------------------------------------------------------- synth, demo


@pytest.mark.parametrize(
    "n, words",
    [("0", ("--n", "0 is not in the range")), ("-3", ("--n",)), ("many", ("--n", "not a valid integer"))],
)
def test_synth_refuses_a_bad_count(n, words, tmp_path, cli):
    result = cli("synth", "--out", tmp_path / "data", "--n", n)
    assert_one_error_line(result, EXIT["usage"], *words)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("command", ["synth", "demo"])
def test_synth_and_demo_refuse_a_non_empty_folder(command, tmp_path, out_dir, cli):
    before = snapshot(out_dir)
    result = cli(command, "--out", out_dir, "--n", 3)
    assert_one_error_line(result, EXIT["output"], out_dir, "not empty", "--overwrite")
    assert snapshot(out_dir) == before


@pytest.mark.parametrize("command", ["synth", "demo"])
def test_synth_and_demo_refuse_a_file_as_their_folder(command, tmp_path, cli):
    target = tmp_path / "data.txt"
    target.write_text("a file, not a folder\n")
    result = cli(command, "--out", target, "--n", 3)
    assert_one_error_line(result, EXIT["output"], target, "not a folder")
    assert target.read_text() == "a file, not a folder\n"


def test_demo_refuses_too_few_cases(tmp_path, cli):
    result = cli("demo", "--out", tmp_path / "demo", "--n", 2)
    assert_one_error_line(result, EXIT["usage"], "--n")
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("kind", ["malicious", "truncated", "wrong_suffix", "existing_output"])
def test_export_refuses_a_bad_checkpoint_or_output(kind, assets, tmp_path, out_dir, cli):
    model, output = assets / "model.pt", out_dir / "model.safetensors"
    marker = tmp_path / "PWNED"
    if kind == "malicious":
        model = write_evil_checkpoint(tmp_path / "evil.pt", marker)
        assert_evil_checkpoint_would_run(model, marker)
        code, needles = EXIT["model"], (model, "refused to load checkpoint")
    elif kind == "truncated":
        model = tmp_path / "cut.pt"
        model.write_bytes((assets / "model.pt").read_bytes()[:500])
        code, needles = EXIT["model"], (model, "not a readable checkpoint")
    elif kind == "wrong_suffix":
        output = out_dir / "model.pt"
        code, needles = EXIT["config"], (output, ".safetensors")
    else:
        output.write_bytes(b"an earlier export")
        code, needles = EXIT["output"], (output, "already exists")
    before = snapshot(out_dir)
    result = cli("export", "--model", model, "--output", output)
    assert_one_error_line(result, code, *needles)
    assert snapshot(out_dir) == before
    assert not marker.exists()


# --------------------------------------------------------------------------------------- output paths


def _command(command: str, assets: Path, output: Path, *extra: object) -> list[object]:
    if command == "infer":
        return infer_args(assets / "ct.nii.gz", output, assets / "model.pt", *extra)
    if command == "evaluate":
        return [
            "evaluate",
            "--pred",
            assets / "mask.nii.gz",
            "--ref",
            assets / "mask.nii.gz",
            "--out",
            output,
            *extra,
        ]
    if command == "render":
        return render_args(assets / "mask.nii.gz", output, *extra)
    raise AssertionError(command)


OUTPUT_NAMES = {"infer": "mask.nii.gz", "evaluate": "metrics.json", "render": "organs.png"}


@pytest.mark.parametrize("command", OUTPUT_NAMES)
def test_output_in_a_missing_folder(command, assets, tmp_path, cli):
    output = tmp_path / "no" / "such" / OUTPUT_NAMES[command]
    before = snapshot(tmp_path)
    result = cli(*_command(command, assets, output))
    assert_one_error_line(result, EXIT["output"], output, "does not exist")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", OUTPUT_NAMES)
def test_output_under_a_file_used_as_a_folder(command, assets, tmp_path, cli):
    blocker = tmp_path / "results"
    blocker.write_text("a regular file\n")
    output = blocker / OUTPUT_NAMES[command]
    before = snapshot(tmp_path)
    result = cli(*_command(command, assets, output))
    assert_one_error_line(result, EXIT["output"], output, "is a file, not a folder")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", OUTPUT_NAMES)
def test_output_in_a_read_only_folder(command, assets, tmp_path, cli):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as root (or with CAP_DAC_OVERRIDE): a read-only folder is still writable")
        output = folder / OUTPUT_NAMES[command]
        result = cli(*_command(command, assets, output))
        assert_one_error_line(result, EXIT["output"], output, "not writable")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize("command", OUTPUT_NAMES)
def test_existing_output_is_kept_without_overwrite(command, assets, tmp_path, out_dir, cli):
    output = out_dir / OUTPUT_NAMES[command]
    output.write_bytes(b"an earlier result\n")
    os.utime(output, ns=(1_000_000_000, 1_000_000_000))
    before = snapshot(out_dir)
    result = cli(*_command(command, assets, output))
    assert_one_error_line(result, EXIT["output"], output, "already exists", "--overwrite")
    assert snapshot(out_dir) == before


def test_existing_output_is_replaced_with_overwrite(assets, out_dir, cli):
    output = out_dir / "metrics.json"
    output.write_text("an earlier result\n")
    result = cli(*_command("evaluate", assets, output, "--overwrite"))
    assert result.code == 0, result.stderr
    assert json.loads(output.read_text())["liver"]["dice"] == 1.0
    assert sorted(p.name for p in out_dir.iterdir()) == ["earlier.txt", "metrics.json"]


# --------------------------------------------------------------------------------------- real processes


def _process_case(case: str, assets: Path, tmp_path: Path, out: Path) -> tuple[list[object], int, tuple]:
    if case == "synth_bad_n":
        return ["synth", "--out", out / "data", "--n", "0"], EXIT["usage"], ("--n",)
    if case == "train_bad_config":
        config = tmp_path / "bad.yaml"
        config.write_text("train:\n  epochz: 3\n")
        return ["train", "--config", config, "--run", out / "run"], EXIT["config"], (config, "train.epochz")
    if case == "infer_truncated_ct":
        image = IMAGE_CORRUPTIONS["truncated_gz"].build(tmp_path)
        return (
            infer_args(image, out / "mask.nii.gz", assets / "model.pt"),
            EXIT["input"],
            (image, "truncated"),
        )
    if case == "evaluate_png_as_nifti":
        pred = IMAGE_CORRUPTIONS["png_as_nifti"].build(tmp_path)
        args = ["evaluate", "--pred", pred, "--ref", assets / "mask.nii.gz", "--out", out / "m.json"]
        return args, EXIT["input"], (pred, "a PNG image")
    if case == "render_intensity_mask":
        mask = MASK_CORRUPTIONS["intensity_image"].build(tmp_path)
        return render_args(mask, out / "organs.mp4"), EXIT["input"], (mask, "negative")
    if case == "demo_not_empty":
        return ["demo", "--out", out], EXIT["output"], (out, "not empty")
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "synth_bad_n",
        "train_bad_config",
        "infer_truncated_ct",
        "evaluate_png_as_nifti",
        "render_intensity_mask",
        "demo_not_empty",
    ],
)
def test_real_process(case, assets, tmp_path, out_dir):
    args, code, needles = _process_case(case, assets, tmp_path, out_dir)
    before = snapshot(out_dir)
    result = run_subprocess(*args, cwd=tmp_path)
    assert_one_error_line(result, code, *needles)
    assert snapshot(out_dir) == before


def test_real_process_refuses_a_malicious_checkpoint_without_running_it(assets, tmp_path, out_dir):
    marker = tmp_path / "PWNED"
    evil = write_evil_checkpoint(tmp_path / "evil.pt", marker)
    assert_evil_checkpoint_would_run(evil, marker)
    before = snapshot(out_dir)
    result = run_subprocess(*infer_args(assets / "ct.nii.gz", out_dir / "mask.nii.gz", evil), cwd=tmp_path)
    assert_one_error_line(result, EXIT["model"], evil, "refused to load checkpoint")
    assert not marker.exists()
    assert snapshot(out_dir) == before


def test_real_process_warns_about_an_unknown_label_and_succeeds(tmp_path, out_dir):
    _, label = tiny_phantom(0)
    label[label == 4] = 7
    mask = save_nifti(tmp_path / "mask7.nii.gz", label)
    result = run_subprocess(*render_args(mask, out_dir / "organs.png"), cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert any("not in the label map" in line for line in warning_lines(result.stderr)), result.stderr
    assert human_lines(result.stderr) == []
    assert (out_dir / "organs.png").is_file()


def test_debug_shows_the_traceback(tmp_path):
    empty = IMAGE_CORRUPTIONS["empty"].build(tmp_path)
    plain = run_subprocess("evaluate", "--pred", empty, "--ref", empty, cwd=tmp_path)
    debug = run_subprocess("--debug", "evaluate", "--pred", empty, "--ref", empty, cwd=tmp_path)
    assert_one_error_line(plain, EXIT["input"], empty, "empty file")
    assert debug.code != 0
    assert "Traceback (most recent call last)" in debug.stderr
    assert "InputError" in debug.stderr and "empty file" in debug.stderr
