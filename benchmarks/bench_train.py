"""Training throughput and memory, and what caching the preprocessing buys.

1. Training steps (forward, loss, backward, clip, AdamW) of the default VNet through the real
   ``FoldTrainer._step``, at 128^3 (design card) and 64^3 (demo) patches: patches/s and peak memory
   (``resource.ru_maxrss``; plus ``torch.cuda.max_memory_allocated`` on CUDA). Each size runs in its
   own process so that the peak memory is its own.
2. The data pipeline: random patches (pad, pos/neg crop, augmentation) per second from the preprocessed
   ``CacheDataset`` (``train.cache: memory``) versus preprocessing every time (``cache: none``), on CT-
   sized phantoms written to a temporary MSD folder and resampled to the demo's 3 mm.

Prints a table and appends a dated section (command, ``uname -a``, nproc) to BENCHMARKS.md.

Usage:
    python benchmarks/bench_train.py                 # both parts, ~2-3 minutes on 2 CPU cores
    python benchmarks/bench_train.py --steps 2 --sizes 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _uname() -> str:
    try:
        return subprocess.run(["uname", "-a"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return " ".join(platform.uname())


# --------------------------------------------------------------------------------------- training steps


def bench_steps(size: int, steps: int, batch: int, device: str, threads: int | None) -> dict:
    """patches/s over ``steps`` timed steps (after one warm-up step) at a ``size``^3 patch."""
    import numpy as np
    import torch

    from organseg.config import Config, replace_path
    from organseg.training import InterruptFlag, RunWriter
    from organseg.training.api import cpu_threads, resolve_device
    from organseg.training.data import FoldData
    from organseg.training.loop import FoldTrainer

    dev = resolve_device(device)
    if dev.type == "cpu":
        torch.set_num_threads(threads or cpu_threads())
    cfg = replace_path(Config(), "train.patch_size", [size, size, size])
    cfg = replace_path(cfg, "train.batch_size", batch)
    data = FoldData(
        source=[],
        train_indices=lambda epoch: [0],
        val_samples=lambda: iter(()),
        label_counts=np.array([90, 6, 1, 1, 2]),
    )
    with tempfile.TemporaryDirectory() as tmp:
        trainer = FoldTrainer(
            cfg,
            0,
            data,
            RunWriter(tmp, enabled=False, echo=False),
            device=dev,
            resume=False,
            progress=False,
            max_epochs=None,
            loader_factory=None,  # type: ignore[arg-type]
            interrupt=InterruptFlag(),
        )
        trainer._build()
        trainer.model.train()
        g = torch.Generator().manual_seed(0)
        image = torch.rand(batch, 1, size, size, size, generator=g)
        label = torch.randint(
            0, cfg.labels.num_classes, (batch, 1, size, size, size), generator=g, dtype=torch.uint8
        )
        trainer._step((image, label))  # warm-up (allocator, cuDNN autotune)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer._step((image, label))
        if dev.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
    out = {
        "patch": f"{size}^3",
        "batch": batch,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "amp": str(trainer.amp).replace("torch.", "") if trainer.amp else "fp32",
        "s_per_step": elapsed / steps,
        "patches_per_s": steps * batch / elapsed,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if dev.type == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


# --------------------------------------------------------------------------------------- data pipeline


def _write_cases(root: Path, n: int) -> None:
    """``n`` CT-sized phantoms (256x256x96 at 0.8x0.8x2.5 mm, int16) in MSD layout."""
    import nibabel as nib
    import numpy as np

    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    shape = (256, 256, 96)
    ii, jj, kk = np.ogrid[: shape[0], : shape[1], : shape[2]]
    training = []
    for c in range(n):
        rng = np.random.default_rng(c)
        ct = np.full(shape, -1000, np.int16)
        body = ((ii - 128) / 110.0) ** 2 + ((jj - 128) / 90.0) ** 2 < 1
        ct[np.broadcast_to(body, shape)] = -80
        label = np.zeros(shape, np.uint8)
        for value, (ci, cj, ck, r) in enumerate(
            [(90, 120, 50, 35), (80, 170, 40, 12), (176, 170, 40, 12), (180, 110, 55, 15)], 1
        ):
            m = ((ii - ci) / r) ** 2 + ((jj - cj) / r) ** 2 + ((kk - ck) / (r / 3)) ** 2 < 1
            label[m], ct[m] = value, 40 + 20 * value
        ct = (ct + rng.normal(0, 10, shape)).astype(np.int16)
        affine = np.diag([0.8, 0.8, 2.5, 1.0])
        nib.save(nib.Nifti1Image(ct, affine), root / "imagesTr" / f"case_{c}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"case_{c}.nii.gz")
        training.append({"image": f"./imagesTr/case_{c}.nii.gz", "label": f"./labelsTr/case_{c}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"name": "bench", "training": training}))


def _patches_per_case() -> int:
    from organseg.config import load_config

    return load_config("demo").train.samples_per_volume


def bench_pipeline(n_cases: int, passes: int) -> list[dict]:
    """Patch samples/s with the preprocessing cached in memory versus redone at every access."""
    from organseg.config import load_config, replace_path
    from organseg.datasets import find_cases
    from organseg.training.data import PatchDataset, build_source, random_part

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        _write_cases(root, n_cases)
        cases = find_cases(root, "msd")
        for mode in ("none", "memory"):
            cfg = replace_path(load_config("demo"), "train.cache", mode)
            t0 = time.perf_counter()
            source = build_source(cases, cfg, None, progress=False)
            build_s = time.perf_counter() - t0
            dataset = PatchDataset(source, list(range(len(cases))), random_part(cfg))
            dataset.transform.set_random_state(0)
            t0 = time.perf_counter()
            samples = 0
            for _ in range(passes):
                for i in range(len(dataset)):
                    samples += len(dataset[i])
            elapsed = time.perf_counter() - t0
            rows.append(
                {
                    "cache": mode,
                    "cases": len(cases),
                    "build_s": build_s,
                    "samples": samples,
                    "samples_per_s": samples / elapsed,
                }
            )
    return rows


# --------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 64], help="patch sides to time")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per size")
    parser.add_argument("--batch", type=int, default=2, help="patches per step")
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda if present)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: free cores)")
    parser.add_argument("--cases", type=int, default=3, help="phantom CTs for the pipeline benchmark")
    parser.add_argument("--passes", type=int, default=2, help="passes over the cases per pipeline mode")
    parser.add_argument("--no-append", action="store_true", help="do not append to BENCHMARKS.md")
    parser.add_argument("--one-size", type=int, default=None, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()

    if args.one_size is not None:
        print(json.dumps(bench_steps(args.one_size, args.steps, args.batch, args.device, args.threads)))
        return

    load_before = os.getloadavg()[0]
    step_rows = []
    for size in args.sizes:
        cmd = [
            sys.executable,
            __file__,
            "--one-size",
            str(size),
            "--steps",
            str(args.steps),
            "--batch",
            str(args.batch),
        ]
        if args.device:
            cmd += ["--device", args.device]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if out.returncode != 0:
            sys.exit(f"benchmark at {size}^3 failed:\n{out.stderr[-2000:]}")
        step_rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    pipe_rows = bench_pipeline(args.cases, args.passes)

    lines = [
        "| patch | batch | device | threads | precision | s/step | patches/s | peak RSS MiB | peak CUDA MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in step_rows:
        cuda = f"{r['peak_cuda_mib']:.0f}" if "peak_cuda_mib" in r else "-"
        lines.append(
            f"| {r['patch']} | {r['batch']} | {r['device']} | {r['threads']} | {r['amp']} | {r['s_per_step']:.2f} "
            f"| {r['patches_per_s']:.2f} | {r['peak_rss_mib']:.0f} | {cuda} |"
        )
    lines += [
        "",
        "| preprocessing | cases | cache build s | patch samples | samples/s |",
        "|---|---|---|---|---|",
    ]
    for r in pipe_rows:
        lines.append(
            f"| {r['cache']} | {r['cases']} | {r['build_s']:.1f} | {r['samples']} | {r['samples_per_s']:.1f} |"
        )
    by_mode = {r["cache"]: r["samples_per_s"] for r in pipe_rows}
    speedup = by_mode["memory"] / by_mode["none"]
    lines += ["", f"Cached / uncached pipeline: {speedup:.1f}x (target >= 2x)."]
    table = "\n".join(lines)
    print(table)

    if not args.no_append:
        command = "python benchmarks/bench_train.py " + " ".join(sys.argv[1:])
        section = (
            f"\n## bench_train - {datetime.now():%Y-%m-%d %H:%M}\n\n"
            f"Command: `{command.strip()}`  \n"
            f"Machine: `{_uname()}`, nproc {os.cpu_count()} (affinity {len(os.sched_getaffinity(0))}), "
            f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after  \n"
            "Training: default VNet (16-32-64-128, 4.3 M parameters), weighted Dice+Focal, AdamW, one warm-up "
            f"step then {args.steps} timed steps on random data. Pipeline: {args.cases} phantom CTs "
            "256x256x96 at 0.8x0.8x2.5 mm resampled to 3 mm, demo config, "
            f"{args.passes} passes of {_patches_per_case()} patch(es) per case.\n\n{table}\n"
        )
        path = REPO / "BENCHMARKS.md"
        if not path.exists():
            path.write_text("# Benchmarks\n")
        with path.open("a") as fh:
            fh.write(section)


if __name__ == "__main__":
    main()
