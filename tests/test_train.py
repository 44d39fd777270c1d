"""Training loop: loss goes down, exact resume (epoch end, Ctrl-C mid-epoch, kill -9), run folder, errors.

Everything trains a 2-level VNet (4/8 filters) on 16^3 patches of tiny MSD phantoms at 4 mm, so a
run takes seconds on a busy CPU. Exactness is checked by comparing weights with an uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import conftest
import nibabel as nib
import numpy as np
import pytest
import torch

from organseg.checkpoint import load_checkpoint, model_from_checkpoint
from organseg.config import load_config, save_config
from organseg.errors import ConfigError, InputError, ModelError, OutputError
from organseg.modelstore import RUN_MARKER
from organseg.training import InterruptFlag, TrainingInterrupted, dry_run, fold_indices
from organseg.training import train as _train
from organseg.training.data import PatchDataset, PhantomPool, default_loader_factory, random_part

REPO = Path(__file__).resolve().parent.parent
ORGANS = ("liver", "kidney_right", "kidney_left", "spleen")


# --------------------------------------------------------------------------------------- data


def tiny_phantom(seed: int, shape=(36, 32, 26), spacing=4.0):
    """conftest's tiny phantom on an isotropic RAS grid: (ct, label, affine)."""
    ct, label = conftest.tiny_phantom(seed, shape)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = (-70.0, -60.0, -50.0)
    return ct, label, affine


def write_msd(root: Path, n: int, seed: int = 0, bad_value_case: int | None = None) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(n):
        ct, label, affine = tiny_phantom(seed + i)
        if i == bad_value_case:
            label[label == 4] = 7  # a value the label map does not know
        nib.save(nib.Nifti1Image(ct, affine), root / "imagesTr" / f"case_{i:03d}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"case_{i:03d}.nii.gz")
        training.append(
            {"image": f"./imagesTr/case_{i:03d}.nii.gz", "label": f"./labelsTr/case_{i:03d}.nii.gz"}
        )
    (root / "dataset.json").write_text(json.dumps({"name": "tiny", "numTraining": n, "training": training}))
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_msd(tmp_path_factory.mktemp("data") / "tiny", 4)


def tiny_config(**train):
    return conftest.tiny_config(
        {
            **conftest.TINY_TRAINING,
            "model.dropout": 0.1,  # resume must replay its RNG too
            "train.samples_per_volume": 2,
            "train.epochs": 2,
            "train.steps_per_epoch": 3,
            "train.val_every": 1,
            "train.folds": 2,
            "train.warmup_epochs": 1,
            "train.lr": 0.003,
            **{f"train.{key}": value for key, value in train.items()},
        }
    )


def train(*args, **kwargs) -> Path:
    """``organseg.training.train`` on one CPU thread (faster than two on a shared 2-core machine)."""
    return _train(*args, num_threads=1, **kwargs)


def rows(run: Path, fold: int = 0) -> list[dict]:
    with (run / f"fold_{fold}" / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def full_run(dataset, tmp_path_factory) -> Path:
    """Two epochs, uninterrupted: the reference for every resume test."""
    run = tmp_path_factory.mktemp("runs") / "full"
    train(tiny_config(), dataset, run, folds=0, progress=False)
    return run


# --------------------------------------------------------------------------------------- tests


def test_a_few_steps_reduce_the_loss(dataset, tmp_path):
    no_aug = {"flip_prob": 0.0, "affine_prob": 0.0, "intensity_prob": 0.0}
    cfg = tiny_config(epochs=4, steps_per_epoch=4, val_every=10, schedule="constant", augment=no_aug)
    train(cfg, dataset, tmp_path / "run", folds=0, progress=False)
    losses = [float(r["train_loss"]) for r in rows(tmp_path / "run")]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 0.02, losses


def test_run_folder_layout(full_run, dataset):
    info = json.loads((full_run / RUN_MARKER).read_text())
    assert (
        info["organseg_run"] == 1
        and info["task"] == "abdomen-demo"
        and info["folds"] == [0]
        and info["created"]
    )
    assert load_config(full_run / "config.yaml") == tiny_config()
    fold = full_run / "fold_0"
    for name in ("checkpoint_best.pt", "checkpoint_last.pt", "metrics.csv", "curves.png", "train.log"):
        assert (fold / name).is_file(), name
    assert (fold / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = rows(full_run)
    assert [r["epoch"] for r in table] == ["1", "2"]
    assert set(table[0]) >= {"epoch", "lr", "train_loss", "time_s", *(f"dice_{o}" for o in ORGANS)}
    assert 0.0 <= float(table[-1]["dice_liver"]) <= 1.0
    summary = json.loads((full_run / "cv_summary.json").read_text())
    assert summary["folds"] == [0] and set(summary["organs"]) == {*ORGANS, "mean"}
    splits = json.loads((full_run / "splits.json").read_text())
    assert splits["k"] == 2 and len(splits["folds"]) == 2


def test_splits_are_deterministic_and_disjoint(full_run, dataset, tmp_path):
    splits = json.loads((full_run / "splits.json").read_text())["folds"]
    vals = [set(f["val"]) for f in splits]
    assert vals[0].isdisjoint(vals[1])
    assert vals[0] | vals[1] == {f"case_{i:03d}" for i in range(4)}
    for f in splits:
        assert set(f["train"]).isdisjoint(f["val"])
    # a second run with the same seed makes the same splits (fold 1 this time: only splits are compared)
    train(tiny_config(epochs=1, steps_per_epoch=1), dataset, tmp_path / "again", folds=1, progress=False)
    assert json.loads((tmp_path / "again" / "splits.json").read_text())["folds"] == splits


def test_checkpoint_is_plain_data_and_round_trips(full_run):
    ckpt = load_checkpoint(full_run / "fold_0" / "checkpoint_last.pt")  # weights_only=True
    assert ckpt["epoch"] == 2 and ckpt["step"] == 6 and ckpt["fold"] == 0 and ckpt["finished"]
    assert {"model", "optimizer", "scheduler", "rng", "config", "best_metric", "organseg_version"} <= set(
        ckpt
    )
    assert isinstance(ckpt["rng"]["torch"], torch.Tensor) and isinstance(ckpt["rng"]["python"], list)
    model, cfg = model_from_checkpoint(ckpt)
    assert cfg == tiny_config()
    assert_same_weights(model.state_dict(), ckpt["model"])
    best = load_checkpoint(full_run / "fold_0" / "checkpoint_best.pt")
    assert 1 <= best["best_epoch"] <= 2 and set(best["best_dice"]) == {*ORGANS, "mean"}


def test_resume_continues_exactly_from_the_saved_epoch(full_run, dataset, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(), dataset, run, folds=0, progress=False, max_epochs=1)
    first = load_checkpoint(run / "fold_0" / "checkpoint_last.pt")
    assert first["epoch"] == 1 and not first["finished"] and [r["epoch"] for r in rows(run)] == ["1"]
    train(tiny_config(), dataset, run, folds=0, resume=True, progress=False)
    last = load_checkpoint(run / "fold_0" / "checkpoint_last.pt")
    assert last["epoch"] == 2 and last["step"] == 6
    assert [r["epoch"] for r in rows(run)] == ["1", "2"]
    # optimiser state was restored, not restarted: AdamW has counted all 6 steps
    assert all(int(s["step"]) == 6 for s in last["optimizer"]["state"].values())
    # same seed, same data, same steps: identical to the uninterrupted run
    assert_same_weights(last["model"], weights(full_run / "fold_0" / "checkpoint_last.pt"))
    assert [r["train_loss"] for r in rows(run)] == [
        r["train_loss"] for r in rows(full_run)
    ]  # same first steps


@pytest.fixture
def default_sigint():
    """Python's own Ctrl-C handler for the test: a runner started in the background (``cmd &``) inherits
    an ignored SIGINT, which would hide whether training restores the handler it found."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_ctrl_c_saves_mid_epoch_and_resume_is_exact(full_run, dataset, tmp_path, default_sigint):
    run = tmp_path / "run"
    calls = {"n": 0}

    def loader_sending_sigint(ds, generator, num_workers):
        for item in default_loader_factory(ds, generator, num_workers):
            calls["n"] += 1
            if calls["n"] == 5:  # epoch 2, step 2 (3 steps per epoch, one volume = one batch of 2 patches)
                os.kill(os.getpid(), signal.SIGINT)
            yield item

    with pytest.raises(TrainingInterrupted, match="--resume"):
        train(tiny_config(), dataset, run, folds=0, progress=False, loader_factory=loader_sending_sigint)
    ckpt = load_checkpoint(run / "fold_0" / "checkpoint_last.pt")
    assert ckpt["epoch"] == 1 and 0 < ckpt["epoch_step"] < 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    train(tiny_config(), dataset, run, folds=0, resume=True, progress=False)
    assert [r["epoch"] for r in rows(run)] == ["1", "2"]
    assert_same_weights(
        weights(run / "fold_0" / "checkpoint_last.pt"), weights(full_run / "fold_0" / "checkpoint_last.pt")
    )


@pytest.mark.slow  # a real process killed mid-training: ~40 s on 2 shared cores
def test_kill_9_loses_at_most_the_current_epoch(dataset, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(epochs=50, steps_per_epoch=1, val_every=100)
    save_config(cfg, tmp_path / "cfg.yaml")
    code = (
        "from pathlib import Path; from organseg.config import load_config; from organseg.training import train; "
        f"train(load_config({str(tmp_path / 'cfg.yaml')!r}), Path({str(dataset)!r}), Path({str(run)!r}), "
        "folds=0, progress=False, num_threads=1)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    ckpt_path = run / "fold_0" / "checkpoint_last.pt"
    try:
        deadline = time.monotonic() + 120
        while not ckpt_path.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert ckpt_path.exists(), proc.stderr.read().decode() if proc.poll() is not None else "timed out"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    saved = load_checkpoint(ckpt_path)["epoch"]
    assert saved >= 1
    train(cfg, dataset, run, folds=0, resume=True, progress=False, max_epochs=saved + 1)
    assert load_checkpoint(ckpt_path)["epoch"] == saved + 1
    epochs = [int(r["epoch"]) for r in rows(run)]
    assert epochs == list(range(1, saved + 2))  # rows continue, none repeated or missing


def test_corrupted_checkpoint_on_resume_is_a_model_error_and_left_alone(dataset, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(epochs=2, steps_per_epoch=1), dataset, run, folds=0, progress=False, max_epochs=1)
    path = run / "fold_0" / "checkpoint_last.pt"
    broken = path.read_bytes()[:300]
    path.write_bytes(broken)
    with pytest.raises(ModelError, match="checkpoint_last.pt"):
        train(tiny_config(epochs=2, steps_per_epoch=1), dataset, run, folds=0, resume=True, progress=False)
    assert path.read_bytes() == broken


def test_early_stop_when_validation_stops_improving(dataset, tmp_path):
    # a learning rate of ~0 keeps the weights, so the Dice of epoch 2 cannot beat epoch 1
    cfg = tiny_config(epochs=5, steps_per_epoch=1, lr=1e-12, schedule="constant", early_stop_patience=1)
    train(cfg, dataset, tmp_path / "run", folds=0, progress=False)
    ckpt = load_checkpoint(tmp_path / "run" / "fold_0" / "checkpoint_last.pt")
    assert ckpt["early_stopped"] and ckpt["finished"] and ckpt["epoch"] == 2 and ckpt["best_epoch"] == 1
    assert [r["epoch"] for r in rows(tmp_path / "run")] == ["1", "2"]
    assert "early stop" in (tmp_path / "run" / "fold_0" / "train.log").read_text()


def test_an_existing_run_is_not_overwritten_without_resume(full_run, dataset):
    before = (full_run / "fold_0" / "checkpoint_last.pt").read_bytes()
    with pytest.raises(OutputError, match="--resume"):
        train(tiny_config(), dataset, full_run, folds=0, progress=False)
    assert (full_run / "fold_0" / "checkpoint_last.pt").read_bytes() == before


def test_resume_of_a_folder_that_is_not_a_run(dataset, tmp_path):
    (tmp_path / "notes.txt").write_text("not a run")
    with pytest.raises(InputError, match=str(tmp_path)):
        train(tiny_config(), dataset, tmp_path, folds=0, resume=True, progress=False)


def test_fold_out_of_range(dataset, tmp_path):
    with pytest.raises(ConfigError, match="fold 2"):
        train(tiny_config(), dataset, tmp_path / "run", folds=2, progress=False)
    assert not (tmp_path / "run").exists()
    assert fold_indices("all", 3) == [0, 1, 2] and fold_indices([2, 0], 3) == [0, 2]
    with pytest.raises(ConfigError):
        fold_indices(-1, 3)


def test_labels_outside_the_label_map_are_refused(tmp_path):
    data = write_msd(tmp_path / "bad", 2, bad_value_case=1)
    with pytest.raises(InputError, match="case_001.*7"):
        train(tiny_config(folds=2), data, tmp_path / "run", folds=0, progress=False)


def test_interrupt_flag_turns_sigint_into_a_request(default_sigint):
    flag = InterruptFlag()
    with flag.installed():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert flag.requested
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C stops at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_dry_run_reports_size_flops_and_data(dataset, capsys):
    info = dry_run(load_config("demo"), dataset)
    assert 1.0e6 < info["parameters"] < 1.2e6  # the demo's slim VNet (8-16-32-64 + 64)
    assert info["gflops_per_patch"] > 1 and info["data"]["cases"] == 4
    assert "parameters" in capsys.readouterr().out


def test_phantom_pool_refreshes_deterministically():
    cfg = tiny_config(synthetic={"enabled": True, "pool_size": 4, "refresh_per_epoch": 3, "seed": 100})
    made = []

    def counting_phantom(seed, cfg):
        made.append(seed)
        return fake_phantom(seed, cfg)

    pool = PhantomPool(cfg, generate=counting_phantom)
    assert pool.seeds_at(1) == [100, 101, 102, 103]
    assert pool.seeds_at(2) == [104, 105, 106, 103]
    assert pool.seeds_at(3) == [108, 109, 106, 107]
    pool.refresh(1)
    pool.refresh(2)
    assert made == [100, 101, 102, 103, 104, 105, 106]  # only the replaced slots are generated
    assert pool[0]["name"] == "phantom_104" and pool[3]["name"] == "phantom_103"
    assert pool[0]["image"].shape[0] == 1 and pool[0]["label"].dtype == torch.uint8


def test_patches_leave_the_cached_volumes_untouched():
    heavy = {"flip_prob": 1.0, "affine_prob": 1.0, "intensity_prob": 1.0, "noise_std": 0.5}
    cfg = tiny_config(augment=heavy)
    pool = PhantomPool(cfg, generate=fake_phantom)
    pool.refresh(1)
    cached = pool[0]
    image, label, ops = (
        cached["image"].clone(),
        cached["label"].clone(),
        len(cached["image"].applied_operations),
    )
    dataset = PatchDataset(pool, [0] * 6, random_part(cfg))
    patches = [p for i in range(len(dataset)) for p in dataset[i]]
    assert len(patches) == 6 * cfg.train.samples_per_volume
    assert torch.equal(cached["image"], image) and torch.equal(cached["label"], label)
    assert len(cached["image"].applied_operations) == ops


def fake_phantom(seed: int, cfg) -> dict:
    """Stands in for ``organseg.phantom.generate_case``: arrays plus an affine, one per seed."""
    ct, label, affine = tiny_phantom(seed)
    return {"image": ct, "label": label, "affine": affine}


def test_synthetic_training_refreshes_the_pool_and_resumes_exactly(tmp_path):
    syn = {"enabled": True, "pool_size": 2, "refresh_per_epoch": 1, "cases_per_epoch": 3, "val_cases": 1}
    cfg = tiny_config(epochs=3, steps_per_epoch=0, val_every=3, synthetic=syn)  # 0: 3 cases x 2 / 2 = 3 steps
    train(cfg, None, tmp_path / "full", folds="all", progress=False, phantom_generator=fake_phantom)
    train(cfg, None, tmp_path / "cut", folds=0, progress=False, phantom_generator=fake_phantom, max_epochs=2)
    train(cfg, None, tmp_path / "cut", folds=0, resume=True, progress=False, phantom_generator=fake_phantom)
    full = load_checkpoint(tmp_path / "full" / "fold_0" / "checkpoint_last.pt")
    assert full["epoch"] == 3 and full["step"] == 9
    assert_same_weights(weights(tmp_path / "cut" / "fold_0" / "checkpoint_last.pt"), full["model"])
    splits = json.loads((tmp_path / "full" / "splits.json").read_text())
    assert splits["synthetic"] and splits["folds"][0]["val"] == [
        "phantom_1001000"
    ]  # synthetic.seed 1000 + 1e6
    with pytest.raises(ConfigError, match="fold 1"):
        train(cfg, None, tmp_path / "other", folds=1, progress=False, phantom_generator=fake_phantom)


def test_synthetic_training_with_the_phantom_generator(tmp_path):
    syn = {"enabled": True, "pool_size": 1, "refresh_per_epoch": 1, "cases_per_epoch": 1, "val_cases": 1}
    train(
        tiny_config(epochs=1, steps_per_epoch=1, synthetic=syn),
        None,
        tmp_path / "run",
        folds=0,
        progress=False,
    )
    assert [r["epoch"] for r in rows(tmp_path / "run")] == ["1"]
