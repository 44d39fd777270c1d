"""Boundaries from the 3 mm network grid: how the probabilities are brought to the input grid (issue 13, item 4).

The built-in model predicts on a 3 mm grid; clinical CTs have sub-millimetre pixels. This measures, on the
same network probabilities, the ways of getting labels onto the input grid:

- ``nearest``: argmax on the 3 mm grid, each input voxel takes the label of the nearest network voxel;
- ``trilinear``: probabilities interpolated trilinearly, then argmax (organseg's path, ``infer.invert``);
- ``cubic``: probabilities interpolated with cubic B-splines (``scipy.ndimage.map_coordinates``, order 3),
  then argmax;
- ``smooth``: probabilities smoothed (gaussian, sigma 0.7 network voxels) then trilinear -- rounder organs.

Cases: phantoms at a clinical grid (0.8 x 0.8 x 1.5 mm, whole abdomen, ``organseg.phantom.generate_case``)
with exact labels, and the shared DICOM series (0.98 x 0.98 x 2 mm; liver and spleen in view) against
TotalSegmentator's labels. Scores: Dice, HD95 and NSD (``organseg.metrics.organ_scores``, FLARE22
tolerances), postprocessing on as in ``organseg infer``; seconds of the mapping alone.

Usage: ``python benchmarks/bench_boundaries.py [--phantoms 3] [--model builtin]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
METHODS = ("nearest", "trilinear", "cubic", "smooth")


def network_coords(prep, native, k: int) -> np.ndarray:
    """Continuous network-grid (crop) coordinates ``(3, X, Y)`` of input slice ``k``."""
    to_net = np.linalg.inv(prep.crop.affine) @ native.affine
    i, j = np.meshgrid(np.arange(native.shape[0]), np.arange(native.shape[1]), indexing="ij")
    vox = np.stack([i, j, np.full_like(i, k), np.ones_like(i)]).reshape(4, -1).astype(np.float64)
    return (to_net @ vox)[:3].reshape(3, *native.shape[:2])


def map_labels(probs: np.ndarray, prep, native, order: int) -> np.ndarray:
    """Argmax on the input grid of ``probs`` (C, X, Y, Z) sampled with spline ``order`` (0 or 3)."""
    if order == 0:
        coarse = probs.argmax(0).astype(np.uint8)
    else:
        coeffs = [ndimage.spline_filter(c, order=3, output=np.float32) for c in probs]
    out = np.zeros(native.shape, np.uint8)
    for k in range(native.shape[2]):
        xyz = network_coords(prep, native, k)
        inside = np.all([(xyz[a] > -0.5) & (xyz[a] < probs.shape[a + 1] - 0.5) for a in range(3)], axis=0)
        if not inside.any():
            continue
        pts = xyz[:, inside]
        if order == 0:
            idx = np.clip(np.rint(pts).astype(int), 0, np.array(probs.shape[1:])[:, None] - 1)
            out[..., k][inside] = coarse[idx[0], idx[1], idx[2]]
        else:
            values = [ndimage.map_coordinates(c, pts, order=3, mode="nearest", prefilter=False) for c in coeffs]
            out[..., k][inside] = np.argmax(values, axis=0)
    return out


def labels_by(method: str, probs: torch.Tensor, prep, native) -> np.ndarray:
    from organseg.infer.invert import probabilities_to_input

    if method == "trilinear":
        return probabilities_to_input(probs, prep, native)[0]
    if method == "smooth":
        smoothed = torch.from_numpy(
            np.stack([ndimage.gaussian_filter(c, 0.7) for c in probs.numpy()]).astype(np.float32)
        )
        return probabilities_to_input(smoothed, prep, native)[0]
    return map_labels(probs.numpy(), prep, native, order=0 if method == "nearest" else 3)


def cases(n_phantoms: int):
    """(name, image Volume, reference ids on the image grid, organs to score)."""
    from organseg import io
    from organseg.config import LabelMap
    from organseg.labels import parse_label_map, remap_labels
    from organseg.metrics import align_reference
    from organseg.phantom import generate_case

    organs = ("liver", "kidney_right", "kidney_left", "spleen")
    for seed in range(n_phantoms):
        image, label = generate_case(100 + seed, spacing_mm=(0.8, 0.8, 1.5), fov="abdomen", phase="portal")
        yield f"phantom {100 + seed}", image, np.asarray(label.array, np.uint8), organs
    dicom = SHARED / "totalseg-dicom" / "dicom"
    if dicom.exists():
        image = io.read_image(dicom, kind="ct")
        ref = io.read_image(dicom.parent / "seg_totalsegmentator.nii.gz")
        ids = remap_labels(ref.array, parse_label_map("totalsegmentator", LabelMap(), "ref_map"), ref.source)
        on_ct = align_reference(io.Volume(ids, ref.affine, ref.source), image)
        yield "DICOM series", image, on_ct, ("liver", "spleen")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phantoms", type=int, default=3)
    parser.add_argument("--model", default="builtin")
    args = parser.parse_args()

    from organseg.config import LabelMap
    from organseg.geometry import Grid
    from organseg.infer.postprocess import postprocess_mask
    from organseg.infer.preprocess import prepare
    from organseg.infer.sliding import predict_probabilities
    from organseg.metrics import organ_scores
    from organseg.modelstore import default_model, load_model_file

    net, cfg = load_model_file(default_model() if args.model == "builtin" else args.model)
    labels = LabelMap()
    print("| case | method | map s | " + " | ".join(f"{o} Dice / HD95 / NSD" for o in labels.organs) + " |")
    print("|---|---|---|" + "---|" * len(labels.organs))
    totals: dict[str, list[float]] = {m: [] for m in METHODS}
    for name, image, ref, organs in cases(args.phantoms):
        native = Grid(image.shape, np.asarray(image.affine, np.float64))
        prep = prepare(image.array, image.affine, cfg)
        with torch.inference_mode():
            probs = predict_probabilities(prep.image, [net], cfg, overlap=cfg.infer.overlap, sw_batch_size=2)
        probs = torch.as_tensor(np.asarray(probs))
        for method in METHODS:
            t = time.perf_counter()
            mask = labels_by(method, probs, prep, native)
            seconds = time.perf_counter() - t
            postprocess_mask(mask, labels, cfg.infer.postprocess)
            cells = []
            for organ in labels.organs:
                oid = labels.id_of(organ)
                if organ not in organs:
                    cells.append("-")
                    continue
                s = organ_scores(mask == oid, ref == oid, image.spacing_mm, nsd_tolerance_mm=_tol(organ))
                totals[method].append(s["hd95_mm"])
                cells.append(f"{s['dice']:.3f} / {s['hd95_mm']:.1f} / {s['nsd']:.3f}")
            print(f"| {name} | {method} | {seconds:.1f} | " + " | ".join(cells) + " |", flush=True)
    for method, hd in totals.items():
        print(f"{method}: median HD95 over organs and cases {np.median(hd):.1f} mm")


def _tol(organ: str) -> float:
    from organseg.metrics import NSD_TOLERANCE_MM

    return NSD_TOLERANCE_MM[organ]


if __name__ == "__main__":
    main()
