"""Does the liver leak into fluid-filled bowel? The whole-abdomen real CT's failure, reproduced on phantoms.

On the shared whole-abdomen CT (non-contrast) every built-in candidate calls a fluid-filled ascending colon and
caecum below the liver "liver" (issue 13, BENCHMARKS.md "fluid bowel under the liver"). This builds phantoms with
the same situation -- non-contrast, abdomen and pelvis in view, every one with the ``fluid_bowel`` variant (fluid,
gas-poor loops packed under the liver) -- and scores each model on them with ``organseg.segment`` and
``organseg.evaluate``: Dice per organ and the liver's precision (1.0: no leak). Phantoms only, so a model can be
judged on this failure without choosing on the real CTs.

Usage:
    python benchmarks/bench_liver_leak.py --model builtin --model runs/builtin-v2c/fold_0/checkpoint_best.pt [--cases 6]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

ORGANS = ("liver", "kidney_right", "kidney_left", "spleen")
SEED = 9100  # phantoms 9100.. of the default generator; no training config uses seeds this low with this variant


def build_cases(folder: Path, n: int) -> list[tuple[Path, Path]]:
    from organseg.io.writers import write_nifti
    from organseg.phantom.dataset import generate_case
    from organseg.phantom.variants import Variants

    cases = []
    for i in range(n):
        image, label = generate_case(
            SEED + i,
            spacing_mm=3.0,
            fov="abdomen_pelvis",
            phase="noncontrast",
            perirenal_fat=True,
            variants=Variants(fluid_bowel=1.0),
        )
        ct, lab = folder / f"ct{i}.nii.gz", folder / f"label{i}.nii.gz"
        write_nifti(image.array.astype(np.int16), image, ct)
        write_nifti(label.array.astype(np.uint8), label, lab)
        cases.append((ct, lab))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="builtin, .safetensors or .pt")
    parser.add_argument("--cases", type=int, default=6)
    args = parser.parse_args()

    import organseg

    print("| model | Dice liver / kR / kL / spleen (mean of cases) | liver precision (mean; per case) |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        cases = build_cases(Path(tmp), args.cases)
        for model in args.model:
            kwargs = {} if model == "builtin" else {"model": model}
            dice, precision = [], []
            for ct, label in cases:
                mask = ct.with_name("mask_" + ct.name)
                organseg.segment(ct, mask, progress=False, overwrite=True, **kwargs)
                result = organseg.evaluate(mask, label)
                dice.append([result[o]["dice"] for o in ORGANS])
                precision.append(result["liver"]["precision"])
            cells = " / ".join(f"{v:.3f}" for v in np.mean(dice, axis=0))
            each = ", ".join(f"{v:.2f}" for v in precision)
            print(f"| {model} | {cells} | {np.mean(precision):.3f} ({each}) |", flush=True)


if __name__ == "__main__":
    main()
