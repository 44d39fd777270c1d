"""Synthetic CT from a real label map: time and peak memory per case, and a picture of one case.

Reads ``../shared/data/anatomy/totalseg-s0011/labels.nii.gz`` (TotalSegmentator dataset v2.0.1, Wasserthal et
al., Radiology: AI 2023, Zenodo 10047292, CC BY 4.0; 311x311x431 at 1.5 mm, 117 classes) with its class table,
renders ``--n`` cases at ``--spacing`` mm (``organseg.phantom.labelmaps.render_label_map``, the training path)
and prints read time, per-case time (median, max) and peak RSS. ``--picture PNG`` saves mid-slices (axial,
coronal, sagittal) of case 0 with the label contours; ``--append`` appends the table to BENCHMARKS.md.

Usage: ``python benchmarks/bench_labelmaps.py [--n 8] [--spacing 3] [--picture docs/images/labelmap_sample.png]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

from organseg.phantom.labelmaps import render_label_map
from organseg.phantom.labelmaps_io import read_label_map

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "anatomy"
ORGANS = ("liver", "kidney_right", "kidney_left", "spleen")


def picture(image, label, info: dict, path: Path) -> None:
    """Axial, coronal and sagittal mid-slices through the organs, CT window -160..240 HU, label contours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nibabel.orientations import apply_orientation, axcodes2ornt, ornt_transform

    from organseg.config import LabelMap

    ornt = ornt_transform(axcodes2ornt(tuple(image.orientation)), axcodes2ornt(tuple("RAS")))
    ct, lab = (apply_orientation(a, ornt) for a in (image.array, label.array))
    c = np.argwhere(lab > 0).mean(axis=0).astype(int)
    sp = image.spacing_mm
    views = [
        ("axial", ct[:, :, c[2]].T[::-1, ::-1], lab[:, :, c[2]].T[::-1, ::-1], sp[1] / sp[0]),
        ("coronal", ct[:, c[1], :].T[::-1, ::-1], lab[:, c[1], :].T[::-1, ::-1], sp[2] / sp[0]),
        ("sagittal", ct[c[0], :, :].T[::-1, ::-1], lab[c[0], :, :].T[::-1, ::-1], sp[2] / sp[1]),
    ]
    labels = LabelMap()
    fig, axes = plt.subplots(1, 3, figsize=(13, 5.2))
    for ax, (name, img, seg, aspect) in zip(axes, views):
        ax.imshow(img, cmap="gray", vmin=-160, vmax=240, aspect=aspect, interpolation="nearest")
        for value, organ in enumerate(labels.organs, start=1):
            if (seg == value).any():
                color = np.array(labels.color_of(organ)) / 255
                ax.contour(seg == value, levels=[0.5], colors=[color], linewidths=1.2)
        ax.set_title(name + (" (patient right on the left)" if name != "sagittal" else " (anterior left)"))
        ax.axis("off")
    fig.suptitle(
        f"CT rendered from the TotalSegmentator s0011 label map (CC BY 4.0), phase {info.get('phase')}, "
        f"fov {info.get('fov')}; contours: liver, kidney_right, kidney_left, spleen",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spacing", type=float, default=3.0)
    parser.add_argument("--picture", type=Path)
    parser.add_argument("--append", action="store_true")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    src = read_label_map(
        DATA / "totalseg-s0011" / "labels.nii.gz", DATA / "classes_totalsegmentator_v2.json", ORGANS
    )
    read_s = time.perf_counter() - t0
    times, shapes = [], []
    for i in range(args.n):
        t0 = time.perf_counter()
        image, label, info = render_label_map(src, [args.seed, i], spacing_mm=args.spacing)
        times.append(time.perf_counter() - t0)
        shapes.append(f"{info['fov']} {'x'.join(map(str, image.shape))}")
    if args.picture:  # a whole-abdomen case shows the procedural body wall and fat best
        image, label, info = render_label_map(src, [args.seed, 0], spacing_mm=args.spacing, fov="abdomen")
        picture(image, label, info, args.picture)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    machine = (
        f"`{' '.join(platform.uname())}`, nproc {os.cpu_count()}, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', '-')}, 1-min load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after (shared machine: other jobs running)"
    )
    table = "\n".join(
        [
            "| map | spacing | cases | read (s) | per case median / max (s) | peak RSS (MB) |",
            "|---|---|---|---|---|---|",
            f"| s0011 311x311x431 @1.5 mm, 117 classes | {args.spacing} mm | {args.n} | {read_s:.1f} | "
            f"{np.median(times):.2f} / {max(times):.2f} | {rss_mb:.0f} |",
        ]
    )
    print(table)
    print("cases:", "; ".join(shapes))
    if args.append:
        text = (
            f"\n## Synthetic CT from a real label map (issue 13) ({dt.date.today().isoformat()})\n\n"
            f"Command: `{' '.join(['python', *sys.argv])}`  \nMachine: {machine}  \n"
            "Read: the 41 M-voxel multilabel NIfTI, validated, with per-structure bounding boxes. Per case: "
            "deformation pull-back to the output grid, tissues and procedural body, CT appearance "
            "(`render_label_map`, what the training pool calls). Peak RSS: `ru_maxrss` of the process.\n\n"
            f"{table}\n\nCases (field of view, array): {'; '.join(shapes)}\n"
        )
        with open(REPO / "BENCHMARKS.md", "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
