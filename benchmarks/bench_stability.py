"""Is a mask stable under re-gridding? Flipped, permuted and cropped copies of real CTs, compared in world space.

The same patient stored another way must get the same organs. For each real CT in ../shared/data this
writes copies of it whose voxels are stored differently but lie at the same world positions:
  - flip:    every axis reversed (affine adjusted, so the world is unchanged);
  - permute: axes stored in the order (k, i, j) (affine adjusted);
  - crop15:  15 mm removed at each in-plane edge (a smaller field of view of the same scan);
segments each with ``organseg.segment`` (the same model and settings for all), maps each mask back onto
the original voxel order (exact: flips and permutations are index maps, crops are index offsets) and
reports per-organ Dice against the original's mask. Issue 13's target: >= 0.99 for flips and
permutations, >= 0.95 for the 15 mm crop.

Usage:
    python benchmarks/bench_stability.py [--model MODEL] [--overlap 0.25] [--no-append]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
ORGANS = {1: "liver", 2: "kidney_right", 3: "kidney_left", 4: "spleen"}
CROP_MM = 15.0


def flipped(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All three axes reversed; the affine moves the origin to the old last voxel."""
    shape = np.array(data.shape)
    flip = np.diag([-1.0, -1.0, -1.0, 1.0])
    flip[:3, 3] = shape - 1
    return data[::-1, ::-1, ::-1].copy(), affine @ flip


def permuted(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axes stored as (k, i, j): new index (a, b, c) is old (b, c, a)."""
    perm = np.zeros((4, 4))
    perm[0, 1] = perm[1, 2] = perm[2, 0] = perm[3, 3] = 1.0  # old = P @ new
    return np.ascontiguousarray(np.transpose(data, (2, 0, 1))), affine @ perm


def cropped(data: np.ndarray, affine: np.ndarray, n: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``n`` voxels removed at both ends of the first two (in-plane) axes."""
    shift = np.eye(4)
    shift[:2, 3] = n
    return data[n[0] : data.shape[0] - n[0], n[1] : data.shape[1] - n[1]].copy(), affine @ shift


def dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    pa, pb = a == label, b == label
    total = int(pa.sum()) + int(pb.sum())
    return float("nan") if total == 0 else 2.0 * int((pa & pb).sum()) / total


def cases() -> list[tuple[str, Path]]:
    found = [
        ("example", SHARED / "totalseg-example" / "ct.nii.gz"),
        ("example-full", SHARED / "totalseg-example-full" / "ct.nii.gz"),
    ]
    return [(name, path) for name, path in found if path.exists()]


def dicom_as_nifti(out: Path) -> tuple[str, Path] | None:
    """The shared DICOM series written as NIfTI (RAS affine from organseg's reader)."""
    from organseg.io import read_image

    series = SHARED / "totalseg-dicom" / "dicom"
    if not series.exists():
        return None
    vol = read_image(series, kind="ct")
    path = out / "dicom.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(vol.array, dtype=np.int16), vol.affine), path)
    return "dicom", path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--overlap", type=float, default=None)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()

    import organseg

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        todo = cases()
        extra = dicom_as_nifti(tmp)
        if extra:
            todo.append(extra)
        for name, path in todo:
            img = nib.load(path)
            data, affine = np.asarray(img.dataobj), img.affine
            spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
            n_crop = tuple(int(round(CROP_MM / s)) for s in spacing[:2])

            def run(tag: str, arr: np.ndarray, aff: np.ndarray, *, name: str = name) -> np.ndarray:
                src = tmp / f"{name}_{tag}.nii.gz"
                nib.save(nib.Nifti1Image(arr, aff), src)
                out = tmp / f"{name}_{tag}_mask.nii.gz"
                organseg.segment(src, out, model=args.model, overlap=args.overlap, progress=False)
                return np.asarray(nib.load(out).dataobj)

            ref = run("orig", data, affine)
            back = {
                "flip": run("flip", *flipped(data, affine))[::-1, ::-1, ::-1],
                "permute": np.transpose(run("permute", *permuted(data, affine)), (1, 2, 0)),
            }
            inner = (slice(n_crop[0], data.shape[0] - n_crop[0]), slice(n_crop[1], data.shape[1] - n_crop[1]))
            back["crop15"] = run("crop15", *cropped(data, affine, n_crop))
            for tag, mask in back.items():
                r = ref[inner] if tag == "crop15" else ref
                rows.append((name, tag, {o: dice(mask, r, label) for label, o in ORGANS.items()}))
                print(name, tag, {o: round(v, 4) for o, v in rows[-1][2].items()}, flush=True)

    header = "| CT | copy | " + " | ".join(ORGANS.values()) + " |"
    lines = [header, "|" + "---|" * (2 + len(ORGANS))]
    for name, tag, d in rows:
        cells = " | ".join("–" if np.isnan(v) else f"{v:.4f}" for v in d.values())
        lines.append(f"| {name} | {tag} | {cells} |")
    table = "\n".join(lines)
    print(table)
    if not args.no_append:
        cmd = "python benchmarks/bench_stability.py " + " ".join(sys.argv[1:])
        section = (
            f"\n### Stability under re-gridding ({date.today()})\n\nCommand: `{cmd.strip()}`. Machine: "
            f"{platform.machine()}, {platform.processor() or 'cpu'}, 2 cores. Model: {args.model or 'built-in'}. "
            "Dice of each copy's mask (mapped back exactly) with the original's; targets >= 0.99 (flip, "
            "permute), >= 0.95 (crop15).\n\n" + table + "\n"
        )
        with open(REPO / "BENCHMARKS.md", "a") as f:
            f.write(section)


if __name__ == "__main__":
    main()
