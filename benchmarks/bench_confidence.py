"""Does the per-organ confidence rank the worst organs first? Real CTs and phantoms with known corruptions.

For every case the built-in model segments the CT (``organseg.segment``); the run manifest's per-organ
confidence is compared with the Dice against the reference (real CTs: TotalSegmentator's labels in
``../shared/data``; phantoms: their exact labels), aligned in world space (``metrics.align_reference``).

Phantom corruptions (each hits one known organ, or all):

- ``noise``: Gaussian noise, sd 150 HU, over the whole image (every organ harder);
- ``spleen_fat``: the spleen's voxels set to fat (-90 HU) plus noise, so the spleen is hard to find;
- ``kidney_left_water``: the left kidney set to water (0 HU) plus noise;
- ``mirror``: the image mirrored left-right on the same grid (liver on the patient's left, spleen on the
  right; kidney ids follow their side): anatomy the model never saw, which a side check should flag.

Prints one table and, with ``--append``, adds it with the command, machine and date to BENCHMARKS.md.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_confidence.py --append
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"


def dice_per_organ(pred_path: Path, ref_path: Path, ref_map: str | None) -> dict[str, float]:
    from organseg import io
    from organseg.config import LabelMap
    from organseg.metrics import align_reference, parse_label_map, remap_labels

    pred = io.read_image(pred_path, kind="mask")
    ref = io.read_image(ref_path, kind="mask")
    ref = io.Volume(remap_labels(ref.array, parse_label_map(ref_map)), ref.affine, ref.source, ref.header)
    ref_on_pred = align_reference(ref, pred)
    out = {}
    for cid, organ in enumerate(LabelMap().names[1:], start=1):
        p, r = pred.array == cid, ref_on_pred == cid
        if r.sum() == 0 and p.sum() == 0:
            continue
        out[organ] = float(2 * (p & r).sum() / (p.sum() + r.sum()))
    return out


def corrupt_phantoms(folder: Path, seed: int) -> list[tuple[str, Path, Path]]:
    """Phantom + four corrupted copies: ``(name, ct, labels)``."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "organseg.cli",
            "synth",
            "--out",
            str(folder / "ph"),
            "--n",
            "1",
            "--seed",
            str(seed),
        ],
        check=True,
        capture_output=True,
    )
    ct_path = next((folder / "ph" / "imagesTr").glob("*.nii.gz"))
    lab_path = folder / "ph" / "labelsTr" / ct_path.name
    img, lab = nib.load(ct_path), nib.load(lab_path)
    ct, labels = np.asarray(img.dataobj, dtype=np.float32), np.asarray(lab.dataobj).astype(np.uint8)
    rng = np.random.default_rng(seed)
    cases = [("phantom clean", ct_path, lab_path)]

    def save(name: str, array: np.ndarray, lab_array: np.ndarray = labels) -> None:
        p = folder / f"{name.replace(' ', '_')}.nii.gz"
        q = folder / f"{name.replace(' ', '_')}_ref.nii.gz"
        nib.save(nib.Nifti1Image(array.astype(np.float32), img.affine), p)
        nib.save(nib.Nifti1Image(lab_array, lab.affine), q)
        cases.append((name, p, q))

    save("phantom noise", ct + rng.normal(0, 150, ct.shape).astype(np.float32))
    fat = ct.copy()
    fat[labels == 4] = rng.normal(-90, 20, int((labels == 4).sum()))
    save("phantom spleen_fat", fat)
    water = ct.copy()
    water[labels == 3] = rng.normal(0, 20, int((labels == 3).sum()))
    save("phantom kidney_left_water", water)
    x_axis = int(np.argmax(np.abs(img.affine[0, :3])))
    # Mirrored, the kidney on the patient's right is the right kidney whatever it was before: swap their
    # ids in the reference, so "mirror" scores the liver and spleen on the wrong sides.
    mirrored = np.flip(labels, axis=x_axis).copy()
    swap = np.array([0, 1, 3, 2, 4], np.uint8)
    save("phantom mirror", np.flip(ct, axis=x_axis).copy(), swap[mirrored])
    return cases


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 2 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    from organseg.infer import segment

    rows, lines = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cases = [
            ("real example CT", DATA / "totalseg-example" / "ct.nii.gz", DATA / "totalseg-example" / "seg_totalsegmentator.nii.gz", "totalsegmentator"),
            ("real DICOM series", DATA / "totalseg-dicom" / "dicom", DATA / "totalseg-dicom" / "seg_totalsegmentator.nii.gz", "totalsegmentator"),
        ]  # fmt: skip
        cases += [(n, c, r, None) for n, c, r in corrupt_phantoms(tmp, args.seed)]
        for name, ct, ref, ref_map in cases:
            out = tmp / f"{name.replace(' ', '_')}_pred.nii.gz"
            t = time.perf_counter()
            segment(ct, out, progress=False, overwrite=True)
            seconds = time.perf_counter() - t
            conf = json.loads(out.with_name(out.name.replace(".nii.gz", ".run.json")).read_text())[
                "confidence"
            ]
            dice = dice_per_organ(out, ref, ref_map)
            organs = [o for o in dice if conf.get(o, {}).get("score") is not None]
            by_score = sorted(organs, key=lambda o: conf[o]["score"])
            worst = min(dice, key=dice.get)
            for o in dice:
                c = conf.get(o, {})
                rows.append(
                    (
                        name,
                        o,
                        dice[o],
                        c.get("margin"),
                        c.get("expected_dice"),
                        c.get("score"),
                        c.get("reasons"),
                    )
                )
            lines.append(
                f"| {name} | {worst} ({dice[worst]:.2f}) | {', '.join(by_score)} | "
                f"{'yes' if by_score and by_score[0] == worst else 'no'} | {seconds:.0f} |"
            )
            print(lines[-1], flush=True)
    pooled = [(r[2], r[5]) for r in rows if r[5] is not None]
    rho = spearman([d for d, _ in pooled], [s for _, s in pooled])
    rho_m = spearman([r[2] for r in rows if r[3] is not None], [r[3] for r in rows if r[3] is not None])
    rho_e = spearman([r[2] for r in rows if r[4] is not None], [r[4] for r in rows if r[4] is not None])
    detail = [
        "| case | organ | Dice | margin | expected Dice | score | reasons |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, o, d, m, e, s, why in rows:
        fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        detail.append(
            f"| {name} | {o} | {d:.3f} | {fmt(m)} | {fmt(e)} | {fmt(s)} | {'; '.join(why or []) or ''} |"
        )
    table = "\n".join(
        [
            "| case | worst organ (Dice) | organs by confidence, lowest first | worst ranked first | s |",
            "|---|---|---|---|---|",
        ]
        + lines
    )
    summary = (
        f"Spearman rank correlation with Dice over all {len(pooled)} organ results: score {rho:.2f}, "
        f"margin alone {rho_m:.2f}, expected Dice alone {rho_e:.2f}."
    )
    print(table + "\n\n" + "\n".join(detail) + "\n\n" + summary)
    if args.append:
        machine = (
            f"{platform.machine()}, {platform.processor() or 'cpu'}, {__import__('os').cpu_count()} cores"
        )
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        text = (
            f"\n### Per-organ confidence ranks the worst organs ({stamp})\n\n"
            f"`OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_confidence.py --append` on {machine} "
            "(shared with other jobs; times are not a benchmark). Built-in model, default settings.\n\n"
            f"{table}\n\n{summary}\n\n<details><summary>per organ</summary>\n\n"
            + "\n".join(detail)
            + "\n\n</details>\n"
        )
        with open(REPO / "BENCHMARKS.md", "a", encoding="utf-8") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
