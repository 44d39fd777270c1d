"""Benchmark ``organseg report`` on a CT the size of a clinical abdomen: 512x512x300, 0.78x0.78x1.5 mm.

The mask is bench_render's synthetic one (four lumpy organs, liver about 1.8 l); the CT is a body ellipse
at 30 HU with the organs at typical HU and 15 HU noise (int16), on the same grid. A second case puts the CT
on another grid (LPS, so the report resamples it onto the mask's in world space). Each case runs
``build_report`` in a fresh process: wall time, CPU time (user + sys, which other load on the machine
does not inflate) and the HTML file's size.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_report.py            # prints the table
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ORGAN_HU = {1: 60, 2: 150, 3: 150, 4: 50}


def make_inputs(folder: Path) -> tuple[Path, Path, Path]:
    import nibabel as nib

    sys.path.insert(0, str(HERE))
    from bench_render import make_synthetic

    mask_path = folder / "mask.nii.gz"
    make_synthetic(mask_path)
    img = nib.load(mask_path)
    mask = np.asarray(img.dataobj)
    rng = np.random.default_rng(0)
    shape = mask.shape
    ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    body = ((ii - shape[0] / 2) / (shape[0] * 0.46)) ** 2 + ((jj - shape[1] / 2) / (shape[1] * 0.36)) ** 2 < 1
    ct = np.where(body[..., None], 30, -1000).astype(np.int16) * np.ones(shape, np.int16)
    for value, hu in ORGAN_HU.items():
        ct[mask == value] = hu
    ct += rng.normal(0, 15, shape).astype(np.int16)
    ct_path = folder / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ct, img.affine), ct_path)
    # the same CT stored LPS: rows and columns reversed, affine to match (a different grid, same world)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = np.array(shape[:2]) - 1
    nib.save(nib.Nifti1Image(ct[::-1, ::-1].copy(), img.affine @ flip), folder / "ct_lps.nii.gz")
    return mask_path, ct_path, folder / "ct_lps.nii.gz"


def run_one(mask: Path, ct: Path, out: Path) -> dict:
    t = time.perf_counter()
    from organseg.report import build_report

    build_report(mask, ct, out, overwrite=True)
    wall = time.perf_counter() - t
    use = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall_s": wall, "cpu_s": use.ru_utime + use.ru_stime, "mb": out.stat().st_size / 1e6,
            "peak_rss_mb": use.ru_maxrss / 1024}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(*map(Path, args.child))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mask, ct, ct_lps = make_inputs(tmp)
        print("| case | wall s (imports included) | CPU s | peak RSS MB | report MB |")
        print("|---|---|---|---|---|")
        for name, ct_path in (("same grid", ct), ("CT on another grid (LPS)", ct_lps)):
            cmd = [sys.executable, __file__, "--child", str(mask), str(ct_path), str(tmp / "report.html")]
            row = json.loads(
                subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
            )
            print(
                f"| {name} | {row['wall_s']:.1f} | {row['cpu_s']:.1f} | {row['peak_rss_mb']:.0f} | {row['mb']:.2f} |"
            )


if __name__ == "__main__":
    main()
