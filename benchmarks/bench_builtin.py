"""Benchmark the built-in model: Dice on the real CTs in ../shared/data and end-to-end CPU time.

Runs ``organseg infer`` (no --model: the built-in model) in fresh processes on
  (a) ../shared/data/totalseg-example/ct.nii.gz, scored with ``organseg evaluate`` against
      TotalSegmentator's labels (ids 1 spleen, 2 kidney_right, 3 kidney_left, 5 liver);
  (b) the DICOM series ../shared/data/totalseg-dicom/dicom (liver and spleen only in view);
  (c) a 512x512x130 synthetic CT at 0.8x0.8x2.5 mm (a typical clinical abdomen grid),
and reports Dice, wall time and peak RSS (resource.getrusage of the child). Prints a table and appends
a dated section with the command and machine to BENCHMARKS.md.

Usage:
    python benchmarks/bench_builtin.py [--no-append]
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
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"


def run_timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(peak, before) / 1024


def organseg(*args: str) -> list[str]:
    return [sys.executable, "-m", "organseg.cli", *args]


def infer_and_score(image: Path, reference: Path, stem: Path) -> tuple[float, float, dict[str, float]]:
    """Time ``organseg infer`` (built-in model) on ``image``; Dice per organ against TotalSegmentator's labels."""
    mask, scores = Path(f"{stem}.nii.gz"), Path(f"{stem}_scores.json")
    wall, rss = run_timed(organseg("infer", "--input", str(image), "--output", str(mask)))
    evaluate = ["evaluate", "--pred", str(mask), "--ref", str(reference), "--ref-map", "totalsegmentator"]
    subprocess.run(organseg(*evaluate, "--out", str(scores)), check=True, stdout=subprocess.DEVNULL)
    return wall, rss, {k: v["dice"] for k, v in json.loads(scores.read_text()).items()}


def clinical_ct(path: Path) -> None:
    from organseg.io import write_nifti
    from organseg.phantom import generate_case

    image, _ = generate_case(7, spacing_mm=(0.8, 0.8, 2.5), shape=(512, 512, 130), max_voxels=40_000_000)
    write_nifti(image.array, image, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-append", action="store_true", help="print only; do not append to BENCHMARKS.md")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ct = SHARED / "totalseg-example" / "ct.nii.gz"
        wall, rss, dice = infer_and_score(ct, ct.parent / "seg_totalsegmentator.nii.gz", tmp / "a")
        rows.append(("(a) real CT 122x101x30, 3 mm", wall, rss, dice))
        dicom = SHARED / "totalseg-dicom" / "dicom"
        wall, rss, dice = infer_and_score(dicom, dicom.parent / "seg_totalsegmentator.nii.gz", tmp / "b")
        rows.append(("(b) real DICOM 512x512x20", wall, rss, {k: dice[k] for k in ("liver", "spleen")}))

        clinical_ct(tmp / "c.nii.gz")
        wall, rss = run_timed(
            organseg("infer", "--input", str(tmp / "c.nii.gz"), "--output", str(tmp / "c_mask.nii.gz"))
        )
        rows.append(("(c) synthetic 512x512x130, 0.8x0.8x2.5 mm", wall, rss, {}))

    lines = ["| case | wall s | peak RSS MB | Dice |", "|---|---|---|---|"]
    for name, wall, rss, dice in rows:
        text = ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a" for k, v in dice.items()) or "-"
        lines.append(f"| {name} | {wall:.1f} | {rss:.0f} | {text} |")
    table = "\n".join(lines)
    print(table)
    if not args.no_append:
        machine = (
            f"{platform.platform()}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}"
        )
        load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
        section = (
            f"\n## Built-in model: real-CT Dice and end-to-end CPU time ({date.today().isoformat()})\n\n"
            f"Command: `python benchmarks/bench_builtin.py`  \nMachine: {machine}; load average at the end {load}. "
            "Each infer is a fresh `organseg infer` process with no `--model` (the built-in model), all defaults "
            "(overlap 0.25, no TTA, postprocessing on); wall time includes Python start-up and reading/writing.\n\n"
            f"{table}\n"
        )
        with open(REPO / "BENCHMARKS.md", "a") as f:
            f.write(section)


if __name__ == "__main__":
    main()
