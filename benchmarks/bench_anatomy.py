"""Phantom anatomy against real anatomy: organ positions, extents and volumes in world mm.

Measures ``organseg.phantom.anatomy_stats`` on N phantoms (case ``i`` of ``organseg synth --seed SEED``, the
same anatomy stream, rasterized at ``--spacing`` mm over a thoraco-abdominal field of view) and on the two real
label maps in ``../shared/data``:

- ``anatomy/totalseg-s0011/labels.nii.gz``: TotalSegmentator dataset v2.0.1, Wasserthal et al., Radiology: AI
  2023, Zenodo 10047292, CC BY 4.0 (subject s0011, 117 classes);
- ``totalseg-example-full/seg_totalsegmentator_fast.nii.gz`` (TotalSegmentator ``--fast`` labels of its example
  CT; liver and spleen cut off at the top slice, so their top statistics are not measured there).

Prints a Markdown table (reference range, the two real maps, phantom min/median/max, in/out) and, with
``--append``, appends it with command, machine and date to BENCHMARKS.md.

Usage: ``python benchmarks/bench_anatomy.py [--n 10] [--seed 21] [--spacing 3] [--append]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from organseg.phantom.anatomy_stats import REFERENCE, measure, measure_phantom, phantom_structure
from organseg.phantom.dataset import case_rng

REPO = Path(__file__).resolve().parent.parent
REAL = {
    "s0011": ("anatomy", "totalseg-s0011", "labels.nii.gz"),
    "example": ("totalseg-example-full", "seg_totalsegmentator_fast.nii.gz"),
}


def real_stats(data: Path) -> dict[str, dict]:
    """Statistics of the real label maps under ``data`` (``../shared/data``); those absent are left out."""
    table = data / "anatomy" / "classes_totalsegmentator_v2.json"
    if not table.exists():
        return {}
    names = {int(k): v for k, v in json.loads(table.read_text()).items()}
    out = {}
    for key, parts in REAL.items():
        path = data.joinpath(*parts)
        if path.exists():
            img = nib.load(str(path))
            out[key] = measure(np.asarray(img.dataobj).astype(np.int16), img.affine, names)
    return out


def phantom_stats(n: int, seed: int, spacing_mm: float) -> list[dict]:
    out = []
    for i in tqdm(range(n), desc="phantoms", unit="case"):
        structure, affine = phantom_structure(case_rng(seed, i), spacing_mm=spacing_mm)
        out.append(measure_phantom(structure, affine))
    return out


def fmt(v, key: str = "") -> str:
    """Millimetres and millilitres as integers, levels, rib numbers and fractions with two decimals."""
    if v is None:
        return "-"
    return f"{v:.0f}" if key.endswith(("_mm", "_ml")) else f"{v:.2f}"


def table(real: dict[str, dict], phantoms: list[dict]) -> tuple[str, int]:
    lines = [
        "| statistic | reference range | s0011 | example | phantoms min / median / max | in range |",
        "|---|---|---|---|---|---|",
    ]
    outside = 0
    for key, ref in REFERENCE.items():
        vals = np.array([p[key] for p in phantoms if p[key] is not None], float)
        share = np.mean((vals >= ref.lo) & (vals <= ref.hi)) if len(vals) else float("nan")
        outside += int(len(vals) and share < 1)
        spread = " / ".join(fmt(f(vals), key) for f in (np.min, np.median, np.max)) if len(vals) else "-"
        s0011, example = (fmt(real.get(name, {}).get(key), key) for name in ("s0011", "example"))
        verdict = "in" if share == 1 else f"OUT ({share:.0%} in)"
        lines.append(
            f"| `{key}` ({ref.meaning}) | {fmt(ref.lo, key)} .. {fmt(ref.hi, key)} | {s0011} | {example} | "
            f"{spread} | {verdict} |"
        )
    return "\n".join(lines), outside


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--spacing", type=float, default=3.0)
    ap.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    ap.add_argument("--title", default="Phantom anatomy vs real anatomy")
    ap.add_argument(
        "--data", type=Path, default=REPO.parent / "shared" / "data", help="the shared data folder"
    )
    args = ap.parse_args()
    t0 = time.time()
    load = os.getloadavg()[0]
    real = real_stats(args.data)
    phantoms = phantom_stats(args.n, args.seed, args.spacing)
    text, outside = table(real, phantoms)
    print(text)
    print(f"\n{outside} statistics with phantoms outside the reference range; {time.time() - t0:.0f} s")
    if args.append:
        cmd = shlex.join(["python", "benchmarks/bench_anatomy.py", *sys.argv[1:]])
        machine = f"`{platform.platform()}`, nproc {os.cpu_count()}, 1-min load average {load:.1f} (shared)"
        section = (
            f"\n## {args.title} ({dt.date.today().isoformat()})\n\n"
            f"Command: `{cmd}`  \nMachine: {machine}  \n"
            f"Phantoms: cases 0-{args.n - 1} of `organseg synth --seed {args.seed}` (same anatomy stream), "
            f"rasterized at {args.spacing:g} mm over the whole modelled trunk. Real maps: TotalSegmentator "
            "dataset v2.0.1 subject s0011 (Wasserthal et al., Radiology: AI 2023, Zenodo 10047292, CC BY 4.0) and "
            "the TotalSegmentator example CT's `--fast` labels (liver and spleen cut off at its top slice). "
            "Reference ranges: approximate published adult anatomy widened to hold both real maps "
            "(`organseg/phantom/anatomy_stats.py`). World mm, +z superior; levels: T12 = 0, L1 = 1.\n\n"
            f"{text}\n"
        )
        with open(REPO / "BENCHMARKS.md", "a") as f:
            f.write(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
