"""Weight interpolation between the built-in model and a fine-tuned copy of it (WiSE-FT, a "model soup").

A fine-tune from the shipped weights (``train.init_weights: builtin``) can gain on some organs and lose
on others (issue 13: the v2 fine-tune gained spleen, lost liver). Interpolating the two weight sets,
``(1 - a) * base + a * tuned``, often keeps most of both (Wortsman et al., "Robust fine-tuning of zero-shot
models", CVPR 2022), at no extra inference cost: the result is one VNet of the same shape.

This script writes ``soup_a<a>.safetensors`` for each ``--alpha`` (float16, as the built-in model), and with
``--score-real`` segments the shared real CTs with every model (base, tuned, soups) and prints Dice and HD95
per organ. Choose ``a`` on phantoms (``benchmarks/score_phantoms.py --model <soup>``), never on these CTs;
they only gate shipping (both must improve).

Usage:
    python benchmarks/model_soup.py --tuned runs/builtin-v2/fold_0/checkpoint_best.pt \
        --alpha 0.3 --alpha 0.5 --alpha 0.7 --out runs/soups --score-real
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
#: (name, CT, TotalSegmentator labels): the shared real scans; organs out of view are skipped.
REAL = (
    ("example", SHARED / "totalseg-example" / "ct.nii.gz", "seg_totalsegmentator.nii.gz"),
    ("example-full", SHARED / "totalseg-example-full" / "ct.nii.gz", "seg_totalsegmentator_fast.nii.gz"),
    ("dicom", SHARED / "totalseg-dicom" / "dicom", "seg_totalsegmentator.nii.gz"),
)


def build_soups(base: str, tuned: str, alphas: list[float], out: Path) -> list[Path]:
    """One ``.safetensors`` per alpha: ``(1 - a) * base + a * tuned``, base's config, float16."""
    from organseg.checkpoint import save_safetensors_model
    from organseg.modelstore import default_model, load_model_file

    base_net, base_cfg = load_model_file(default_model() if base == "builtin" else base)
    tuned_net, _ = load_model_file(tuned)
    a_state, b_state = base_net.state_dict(), tuned_net.state_dict()
    if a_state.keys() != b_state.keys():
        raise SystemExit(f"{tuned}: its weights do not match {base}'s (different architecture)")
    paths = []
    for alpha in alphas:
        mixed = {
            k: torch.lerp(v, b_state[k], alpha) if v.is_floating_point() else v for k, v in a_state.items()
        }
        base_net.load_state_dict(mixed)
        path = out / f"soup_a{alpha:g}.safetensors"
        extra = {"soup": {"base": str(base), "tuned": str(tuned), "alpha": alpha}}
        save_safetensors_model(path, base_net, base_cfg, extra, half=True)
        paths.append(path)
    base_net.load_state_dict(a_state)
    return paths


def score_real(model: str) -> dict[str, dict[str, dict[str, float]]]:
    """``{scan: {organ: {"dice", "hd95_mm"}}}`` of ``model`` on the shared real CTs for the organs in view, and
    ``{"false_ml": volume}`` for an organ predicted where the reference has none (a kidney in the DICOM slab)."""
    import organseg

    scores = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, ct, labels in REAL:
            if not ct.exists():
                continue
            mask = Path(tmp) / f"{name}.nii.gz"
            kwargs = {} if model == "builtin" else {"model": model}
            organseg.segment(ct, mask, progress=False, overwrite=True, **kwargs)
            result = organseg.evaluate(mask, ct.parent / labels, ref_map="totalsegmentator")
            scores[name] = {
                organ: {"dice": r["dice"], "hd95_mm": r["hd95_mm"]}
                if r["volume_ref_ml"] > 0
                else {"false_ml": r["volume_pred_ml"]}
                for organ, r in result.items()
                if r["volume_ref_ml"] > 0 or r["volume_pred_ml"] > 0
            }
    return scores


def cell(score: dict | None) -> str:
    """One table cell: Dice (HD95), a false organ's volume, or "-" for an organ neither here nor predicted."""
    if score is None:
        return "-"
    if "false_ml" in score:
        return f"false, {score['false_ml']:.1f} ml"
    return f"{score['dice']:.3f} ({score['hd95_mm']:.0f} mm)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="builtin", help="builtin or a model file")
    parser.add_argument("--tuned", required=True, help="the fine-tuned model (.pt checkpoint or .safetensors)")
    parser.add_argument("--alpha", type=float, action="append", default=[])
    parser.add_argument("--out", type=Path, default=Path("runs/soups"))
    parser.add_argument("--score-real", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    soups = build_soups(args.base, args.tuned, args.alpha, args.out)
    for path in soups:
        print(f"wrote {path}")
    if not args.score_real:
        return
    print("| model | scan | " + " | ".join(["liver", "kidney_right", "kidney_left", "spleen"]) + " |")
    print("|---|---|---|---|---|---|")
    for model in [args.base, args.tuned, *map(str, soups)]:
        for scan, organs in score_real(model).items():
            cells = [cell(organs.get(o)) for o in ("liver", "kidney_right", "kidney_left", "spleen")]
            print(f"| {Path(model).name} | {scan} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
