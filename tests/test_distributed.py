"""torchrun scale-out: DDP training equals one process, sharded inference, killed ranks, bad input.

Every multi-process test launches the real ``python -m torch.distributed.run --standalone`` with 2
CPU ranks (gloo) on a tiny 2-level VNet and 4 tiny phantoms, with a timeout, so a hang fails the test.
"""

from __future__ import annotations

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

from organseg.checkpoint import build_model, load_checkpoint, save_safetensors_model
from organseg.config import config_from_dict, config_to_dict, load_config, save_config
from organseg.errors import ConfigError, InputError
from organseg.infer import segment
from organseg.infer.shard import COMBINED, assign_shards, parse_shard, segment_share, shard_of
from organseg.training import train
from organseg.training.data import seed_for
from organseg.training.distributed import DistContext, rank_batch_size, rank_positions

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 150

WORKER = """
import os, sys
from pathlib import Path
from organseg.config import load_config
from organseg.training import train
from organseg.training.distributed import session

cfg_path, data, run, resume, max_epochs = sys.argv[1:6]
with session("cpu", timeout_s=60) as ctx:
    Path(run + f".pid{ctx.rank}").write_text(str(os.getpid()))
    train(load_config(cfg_path), Path(data), Path(run), folds=0, resume=resume == "1", progress=False,
          num_threads=1, dist=ctx, max_epochs=int(max_epochs) or None)
"""


def write_msd(root: Path, n: int) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    training = []
    for i in range(n):
        ct, label = conftest.tiny_phantom(i)
        nib.save(nib.Nifti1Image(ct, affine), root / "imagesTr" / f"case_{i:03d}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"case_{i:03d}.nii.gz")
        training.append(
            {"image": f"./imagesTr/case_{i:03d}.nii.gz", "label": f"./labelsTr/case_{i:03d}.nii.gz"}
        )
    (root / "dataset.json").write_text(json.dumps({"name": "tiny", "numTraining": n, "training": training}))
    return root


def deterministic_config(**train_fields):
    """A whole-volume patch (the crop has one position) and no augmentation: the data is fixed, so
    two ranks at batch 1 must do exactly what one process does at batch 2."""
    d = config_to_dict(load_config("demo"))
    d["preprocess"].update(spacing_mm=[4.0, 4.0, 4.0], margin_mm=4.0)
    d["model"].update(filters=[4, 8], bottleneck=8, dropout=0.0)
    d["train"].update(
        patch_size=[40, 32, 32],
        batch_size=2,
        samples_per_volume=1,
        epochs=2,
        steps_per_epoch=1,
        val_every=100,
        folds=1,
        warmup_epochs=0,
        lr=0.003,
        cache="none",
    )
    d["train"]["augment"].update(flip_prob=0.0, affine_prob=0.0, intensity_prob=0.0)
    d["train"].update(train_fields)
    d["infer"].update(overlap=0.0)
    return config_from_dict(d, "tiny-ddp")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_msd(tmp_path_factory.mktemp("ddp") / "tiny", 4)


def torchrun(args: list[str], timeout: float = TIMEOUT_S, wait: bool = True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["--max-restarts", "0", "--monitor-interval", "0.2", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    if not wait:
        return proc
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s:\n{out[-3000:]}")
    return proc.returncode, out


def train_ddp(
    tmp_path: Path, cfg, data: Path, run: Path, resume: bool = False, max_epochs: int = 0, wait=True
):
    save_config(cfg, tmp_path / "cfg.yaml")
    (tmp_path / "worker.py").write_text(WORKER)
    args = [str(tmp_path / "worker.py"), str(tmp_path / "cfg.yaml"), str(data), str(run)]
    return torchrun([*args, "1" if resume else "0", str(max_epochs)], wait=wait)


def rows(run: Path) -> list[dict]:
    import csv

    with (run / "fold_0" / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def leftovers(folder: Path) -> list[str]:
    """Temporary files an interrupted atomic write would leave (``io.atomic_path`` names them ``.*tmp*``)."""
    return [p.name for p in folder.rglob("*") if "tmp" in p.name.lower() or p.name.startswith(".")]


# --------------------------------------------------------------------------------------- training


def test_two_ranks_at_half_batch_follow_one_process(dataset, tmp_path):
    cfg = deterministic_config()
    one = train(cfg, dataset, tmp_path / "one", folds=0, progress=False, num_threads=1)
    code, out = train_ddp(tmp_path, cfg, dataset, tmp_path / "two")
    assert code == 0, out[-3000:]
    # per-step losses (one step per epoch) and the weights after two steps
    one_rows, two_rows = rows(one), rows(tmp_path / "two")
    assert len(one_rows) == len(two_rows) == 2
    for a, b in zip(one_rows, two_rows, strict=True):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=1e-5)
    assert float(one_rows[0]["train_loss"]) != pytest.approx(float(one_rows[1]["train_loss"]), rel=1e-3)
    w1 = load_checkpoint(one / "fold_0" / "checkpoint_last.pt")["model"]
    w2 = load_checkpoint(tmp_path / "two" / "fold_0" / "checkpoint_last.pt")["model"]
    assert w1.keys() == w2.keys() and not any(k.startswith("module.") for k in w2)  # the unwrapped model
    # AdamW's first steps are about lr * sign(gradient): where a gradient is near zero, summation-order
    # rounding can flip an element's step, so compare the whole update, not every element
    torch.manual_seed(seed_for(cfg.train.seed, 0))  # the initial weights, as FoldTrainer makes them
    start = build_model(cfg).state_dict()
    update = torch.cat([(w1[k] - start[k]).flatten() for k in w1 if w1[k].is_floating_point()])
    apart = torch.cat([(w2[k] - w1[k]).flatten() for k in w1 if w1[k].is_floating_point()])
    assert update.norm() > 1e-2  # the weights did move: not a comparison of two untrained models
    assert apart.norm() < 1e-2 * update.norm(), (float(apart.norm()), float(update.norm()))
    # rank 0 alone wrote the run folder, once
    assert (tmp_path / "two" / "cv_summary.json").is_file()
    assert (tmp_path / "two" / "fold_0" / "train.log").read_text(encoding="utf-8").count(
        "epoch 2/2 loss"
    ) == 1


def test_a_killed_rank_stops_torchrun_and_a_rerun_resumes(dataset, tmp_path):
    cfg = deterministic_config(epochs=500, val_every=1000)
    run = tmp_path / "run"
    proc = train_ddp(tmp_path, cfg, dataset, run, wait=False)
    ckpt = run / "fold_0" / "checkpoint_last.pt"
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert ckpt.exists(), proc.communicate()[0][-3000:] if proc.poll() is not None else "no checkpoint"
        os.kill(int(Path(f"{run}.pid1").read_text(encoding="utf-8")), signal.SIGKILL)
        code = proc.wait(timeout=60)  # torchrun notices and stops rank 0: no hang in a collective
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert code != 0
    assert not leftovers(run), leftovers(run)
    saved = load_checkpoint(ckpt)["epoch"]
    assert 1 <= saved < 500
    code, out = train_ddp(tmp_path, cfg, dataset, run, resume=True, max_epochs=saved + 1)
    assert code == 0, out[-3000:]
    assert f"resumed from {ckpt} at epoch {saved}" in (run / "fold_0" / "train.log").read_text(
        encoding="utf-8"
    )
    assert load_checkpoint(ckpt)["epoch"] == saved + 1
    assert [int(r["epoch"]) for r in rows(run)] == list(range(1, saved + 2))
    # and once more in one process: another world size reads the same checkpoint
    train(cfg, dataset, run, folds=0, resume=True, progress=False, num_threads=1, max_epochs=saved + 2)
    assert load_checkpoint(ckpt)["epoch"] == saved + 2


def test_a_world_size_that_does_not_divide_the_batch(dataset, tmp_path):
    with pytest.raises(ConfigError, match="batch_size: the global batch 3 cannot be split over 2"):
        rank_batch_size(3, 2)
    ctx = DistContext(rank=0, world_size=2)  # refused before any collective or file is touched
    cfg = deterministic_config(batch_size=3)
    with pytest.raises(ConfigError, match="global batch 3 cannot be split over 2 processes"):
        train(cfg, dataset, tmp_path / "run", progress=False, num_threads=1, dist=ctx)
    assert not (tmp_path / "run").exists()


def test_resume_with_a_run_folder_of_another_task(dataset, tmp_path):
    cfg = deterministic_config(epochs=1)
    train(cfg, dataset, tmp_path / "run", folds=0, progress=False, num_threads=1)
    other = config_from_dict({**config_to_dict(cfg), "task": "ink-detection"}, "other")
    with pytest.raises(InputError, match="run folder is for task 'abdomen-demo'.*'ink-detection'"):
        train(other, dataset, tmp_path / "run", folds=0, resume=True, progress=False, num_threads=1)


def test_rank_shares_are_disjoint_and_fill_the_global_batches():
    for n, world, b, s in [(8, 2, 1, 1), (8, 2, 2, 1), (9, 3, 2, 2), (7, 2, 1, 2), (1, 2, 1, 1)]:
        shares = [rank_positions(n, r, world, b, s) for r in range(world)]
        flat = sorted(p for share in shares for p in share)
        if n >= world:
            assert flat == list(range(n)), (n, world, b, s)
    # batch-aligned: rank r's k-th patch group is slice r of the k-th one-process batch
    assert rank_positions(8, 0, 2, 2, 1) == [0, 1, 4, 5]
    assert rank_positions(8, 1, 2, 2, 1) == [2, 3, 6, 7]


# --------------------------------------------------------------------------------------- inference


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> tuple[Path, Path]:
    """Five tiny CTs of different sizes on oblique grids, and a tiny model."""
    root = tmp_path_factory.mktemp("infer")
    (root / "scans").mkdir()
    for i, shape in enumerate([(36, 32, 26), (30, 28, 22), (40, 34, 28), (36, 32, 20), (32, 30, 24)]):
        ct, _ = conftest.tiny_phantom(10 + i, shape)
        nib.save(
            nib.Nifti1Image(ct, conftest.oblique_affine((4.0, 4.0, 4.0))), root / "scans" / f"ct{i}.nii.gz"
        )
    cfg = deterministic_config()
    torch.manual_seed(0)
    save_safetensors_model(root / "tiny.safetensors", build_model(cfg), cfg)
    return root / "scans", root / "tiny.safetensors"


def masks(folder: Path) -> dict[str, bytes]:
    return {p.name: np.asarray(nib.load(p).dataobj).tobytes() for p in sorted(folder.glob("*.nii.gz"))}


def test_sharded_inference_equals_one_process_and_reruns_skip(scans, tmp_path):
    folder, model = scans
    segment(folder, tmp_path / "one", model=model, progress=False, threads=1)
    code, out = torchrun(
        [
            "-m",
            "organseg",
            "infer",
            "--input",
            str(folder),
            "--output",
            str(tmp_path / "two"),
            "--model",
            str(model),
        ]
    )
    assert code == 0, out[-3000:]
    one, two = masks(tmp_path / "one"), masks(tmp_path / "two")
    assert len(one) == 5 and one == two  # byte for byte
    assert any(len(np.unique(np.frombuffer(m, np.uint8))) > 1 for m in one.values())
    combined = json.loads((tmp_path / "two" / COMBINED).read_text(encoding="utf-8"))
    assert sorted(c["case"] for c in combined["cases"]) == [f"ct{i}" for i in range(5)]
    assert combined["missing"] == [] and combined["shards"] == 2
    assert len(list((tmp_path / "two").glob("*batch_manifest*"))) == 1  # rank 0 alone wrote it

    # a crash left ct1 without its manifest (written last) and ct3 with nothing: a rerun redoes those only
    (tmp_path / "two" / "ct1.run.json").unlink()
    for p in (tmp_path / "two").glob("ct3.*"):
        p.unlink()
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "two").glob("ct[024].*")}
    done = [
        segment_share(folder, tmp_path / "two", shard=(k, 2), model=model, progress=False, threads=1)
        for k in (0, 1)
    ]
    assert sorted(c for r in done for c in (x.case for x in r.cases)) == ["ct1", "ct3"]
    assert sorted(c for r in done for c in r.skipped) == ["ct0", "ct2", "ct4"]
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "two").glob("ct[024].*")} == before
    assert masks(tmp_path / "two") == one
    assert json.loads((tmp_path / "two" / COMBINED).read_text(encoding="utf-8"))["missing"] == []


def test_shares_are_disjoint_size_balanced_and_agree(scans):
    folder, _ = scans
    inputs = sorted(folder.glob("*.nii.gz"))
    parts = [shard_of(inputs, k, 2) for k in range(2)]
    assert sorted(p for part in parts for p in part) == inputs and not set(parts[0]) & set(parts[1])
    assert assign_shards([100, 1, 1, 1, 50, 49], 2) == [0, 1, 0, 1, 1, 1]  # 101 and 101
    assert assign_shards([5, 5, 5], 3, ["c", "b", "a"]) == [2, 1, 0]
    assert shard_of(inputs, 1, 2) == shard_of(list(inputs), 1, 2)  # the same in every process


@pytest.mark.parametrize(
    "text, message",
    [
        ("2/2", "out of range"),
        ("-1/2", "expected K/N"),
        ("1", "expected K/N"),
        ("a/b", "expected K/N"),
        ("0/0", "out of range"),
    ],
)
def test_bad_shard_option(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_shard(text)
    assert parse_shard(" 1/3 ") == (1, 3)


def organseg_cli(args: list[str], capsys) -> tuple[int, list[str]]:
    """Run ``organseg <args>`` in this process: (exit code, stderr lines)."""
    from organseg.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


def test_cli_refuses_bad_shards_and_commands_that_cannot_shard(scans, tmp_path, capsys, monkeypatch):
    folder, model = scans
    code, err = organseg_cli(
        ["infer", "--input", str(folder), "--output", str(tmp_path / "o"), "--shard", "5/2"], capsys
    )
    assert code == ConfigError.exit_code
    assert err == ["organseg: error: --shard: share 5 of 2 is out of range; K must be 0..N-1 and N >= 1"]
    one_case = ["infer", "--input", str(folder / "ct0.nii.gz"), "--output", str(tmp_path / "m.nii.gz")]
    code, err = organseg_cli([*one_case, "--shard", "0/2", "--model", str(model)], capsys)
    assert (
        code == ConfigError.exit_code and len(err) == 1 and "only a folder of CT files can be split" in err[0]
    )
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code, err = organseg_cli(["render", "--input", "x", "--output", "y.png"], capsys)
    assert code == ConfigError.exit_code
    assert err == [
        "organseg: error: torchrun: 'organseg render' cannot be split over 2 processes; run it as one process "
        "(only train and infer run under torchrun)"
    ]
    monkeypatch.setenv("RANK", "1")
    code, err = organseg_cli(["render", "--input", "x", "--output", "y.png"], capsys)
    assert code == ConfigError.exit_code and err == []  # said once, by rank 0
    assert not (tmp_path / "o").exists() and not (tmp_path / "m.nii.gz").exists()
