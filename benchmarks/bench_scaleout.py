"""1 vs 2 processes under torchrun: training steps/s (DDP, gloo on CPU) and batch inference cases/min.

Usage (from the repository root)::

    python benchmarks/bench_scaleout.py [--data DIR] [--steps 6] [--procs 1 2]

``--data``: an MSD-layout phantom folder (default: ``organseg.phantom.synthesize`` 6 cases into a temp
folder). Training: the ``demo`` config (64^3 patches, global batch 2: 2 patches on one process, 1 on
each of two ranks), ``--steps`` steps in epoch 1, timed by the run's own ``metrics.csv`` (``time_s`` of
epoch 1: steps only, no validation, cache built before). Inference: ``organseg infer`` over the
folder's images with the one-process run's checkpoint, whole command wall clock (process start and
model load included), and the two runs' masks compared byte for byte. Prints a Markdown section for
BENCHMARKS.md with the machine and its load.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def launch(procs: int, args: list[str]) -> list[str]:
    if procs == 1:
        return [sys.executable, "-m", "organseg", *args]
    return [
        sys.executable,
        *("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs)),
        *("-m", "organseg", "--", *args),  # "--": torchrun would read --run as its --run-path
    ]


def run(cmd: list[str]) -> float:
    t = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return time.perf_counter() - t


def load() -> float:
    return os.getloadavg()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_scaleout_"))
    data = a.data
    if data is None:
        from organseg.phantom import synthesize

        data = tmp / "data"
        synthesize(data, n=6, seed=0)
    images = data / "imagesTr"
    n_cases = len(list(images.glob("*.nii.gz")))
    before = load()
    train_rows, infer_rows, masks = [], [], {}
    for p in a.procs:
        run_dir = tmp / f"run{p}"
        args = ["train", "--config", "demo", "--data", str(data), "--run", str(run_dir), "--fold", "0"]
        args += ["--epochs", "2", "--device", "cpu", "--set", "train.folds=2"]
        args += ["--set", f"train.steps_per_epoch={a.steps}", "--set", "train.val_every=2"]
        run(launch(p, args))
        with (run_dir / "fold_0" / "metrics.csv").open() as fh:
            first = list(csv.DictReader(fh))[0]
        secs = float(first["time_s"])
        train_rows.append((p, a.steps, secs, a.steps / secs))
    ckpt = tmp / f"run{a.procs[0]}" / "fold_0" / "checkpoint_last.pt"
    for p in a.procs:
        out = tmp / f"masks{p}"
        wall = run(launch(p, ["infer", "--input", str(images), "--output", str(out), "--model", str(ckpt)]))
        masks[p] = {m.name: m.read_bytes() for m in sorted(out.glob("*.nii.gz"))}
        infer_rows.append((p, n_cases, wall, 60 * n_cases / wall))
    after = load()
    same = len({tuple(sorted((k, hash(v)) for k, v in m.items())) for m in masks.values()}) == 1
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"## Scale-out: 1 vs 2 processes under torchrun (issue 14) ({stamp})\n")
    print(f"Command: `python benchmarks/bench_scaleout.py {' '.join(sys.argv[1:])}`  ")
    print(
        f"Machine: `{' '.join(platform.uname()[:3])}`, nproc {os.cpu_count()}, Python "
        f"{platform.python_version()}; 1-min load average {before:.1f} before, {after:.1f} after "
        "(shared machine: other jobs running).  "
    )
    print("Training: demo config, global batch 2 (1 patch per rank with 2 processes), DDP over gloo.\n")
    print("| processes | steps | epoch-1 s | steps/s | speed-up |\n|---:|---:|---:|---:|---:|")
    for p, s, secs, rate in train_rows:
        print(f"| {p} | {s} | {secs:.1f} | {rate:.3f} | {rate / train_rows[0][3]:.2f}x |")
    print("\n| processes | cases | wall s | cases/min | speed-up |\n|---:|---:|---:|---:|---:|")
    for p, n, wall, rate in infer_rows:
        print(f"| {p} | {n} | {wall:.1f} | {rate:.2f} | {rate / infer_rows[0][3]:.2f}x |")
    print(f"\nMasks byte-identical across process counts: {'yes' if same else 'NO'}.")


if __name__ == "__main__":
    main()
