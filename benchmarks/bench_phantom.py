"""Phantom generation speed: training mode (3 mm, on the fly), appearance re-draws, clinical geometry.

Prints a table and appends a dated section (command, machine, load) to BENCHMARKS.md.

    python benchmarks/bench_phantom.py                 # 12 training cases, 3 clinical cases
    python benchmarks/bench_phantom.py --cases 30 --clinical 0 --no-append
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from organseg import io
from organseg.phantom import generate_phantom
from organseg.phantom.stream import PhantomStream

REPO = Path(__file__).resolve().parent.parent


def _timed(fn, n: int) -> tuple[float, list]:
    out, t0 = [], time.perf_counter()
    for i in range(n):
        out.append(fn(i))
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=12, help="training-mode cases to time")
    parser.add_argument("--clinical", type=int, default=3, help="clinical-geometry cases to time (0: skip)")
    parser.add_argument("--no-append", action="store_true", help="print only, do not append to BENCHMARKS.md")
    args = parser.parse_args()

    generate_phantom(10_000, spacing_mm=3.0)  # warm-up: imports, caches
    rows = []
    secs, cases = _timed(lambda i: generate_phantom(i, spacing_mm=3.0), args.cases)
    voxels = np.mean([np.prod(p.image.shape) for p in cases]) / 1e6
    rows.append(("training 3 mm, random FOV", args.cases, secs, f"{voxels:.2f} Mvox mean"))
    secs, _ = _timed(lambda i: generate_phantom(i, spacing_mm=3.0, shape=(128, 128, 96)), args.cases)
    rows.append(("training 3 mm, fixed 128x128x96", args.cases, secs, "1.57 Mvox"))
    stream = iter(PhantomStream(spacing_mm=3.0, shape=(128, 128, 96), seed=1, appearances_per_anatomy=4))
    secs, _ = _timed(lambda i: next(stream), args.cases)
    rows.append(("PhantomStream 3 mm, 4 looks/anatomy", args.cases, secs, "1.57 Mvox"))
    if args.clinical:
        secs, cases = _timed(lambda i: generate_phantom(i), args.clinical)
        voxels = np.mean([np.prod(p.image.shape) for p in cases]) / 1e6
        rows.append(
            ("clinical 512^2, 0.7-1 mm, 1-5 mm slices", args.clinical, secs, f"{voxels:.1f} Mvox mean")
        )

    load = os.getloadavg()[0]
    lines = ["| mode | cases | s/case | cases/s | size |", "|---|---:|---:|---:|---|"]
    for name, n, secs, size in rows:
        lines.append(f"| {name} | {n} | {secs / n:.2f} | {n / secs:.2f} | {size} |")
    table = "\n".join(lines)
    print(table)
    print(f"load average (1 min) during run: {load:.2f} on {os.cpu_count()} CPUs")
    if args.no_append:
        return
    uname = (
        subprocess.run(["uname", "-a"], capture_output=True, text=True).stdout.strip() or platform.platform()
    )
    section = (
        f"\n## Phantom generation ({datetime.date.today().isoformat()})\n\n"
        f"Command: `python {' '.join(['benchmarks/bench_phantom.py', *sys.argv[1:]])}`  \n"
        f"Machine: `{uname}`, nproc {os.cpu_count()}, numpy {np.__version__}; one process, single thread of work; "
        f"1-min load average {load:.2f} (shared machine: other jobs running).\n\n{table}\n"
    )
    path = REPO / "BENCHMARKS.md"
    old = (
        path.read_text()
        if path.exists()
        else "# Benchmarks\n\nNumbers measured by the scripts in `benchmarks/`.\n"
    )
    io.atomic_write_text(path, old.rstrip("\n") + "\n" + section)
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
