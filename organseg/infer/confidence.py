"""Which organ to check first: a per-organ confidence computed at inference, with reasons.

Three signals, each cheap, combined into one score in [0, 1] (1 = nothing suspicious):

- **expected Dice**: the Dice between the organ's argmax mask and the network's own soft probabilities
  for it, ``2 * sum(p inside the mask) / (sum(p) + voxels in the mask)``. If the probabilities were
  calibrated this is the Dice the model expects; it drops when the model hesitates inside the organ or
  spreads probability beyond it (unseen contrast, noise, a scanner it never saw). The mean probability
  margin ``p(top1) - p(top2)`` inside the organ is reported beside it; on the benchmark cases expected
  Dice ranked organs by their true Dice a little better (Spearman 0.73 vs 0.71). Both are computed on the
  network's own grid (the body crop at the model spacing, before mapping back): one pass over a small
  array.
- **volume**: the organ's volume (ml, on the input grid) against a plausible adult range (``PLAUSIBLE_ML``:
  the reference range widened, see ``REFERENCE_ML``). Too small is not held against an organ the scan cuts
  off (the organ touches the first or last slice of the field of view).
- **side**: liver and right kidney lie on the patient's right of the body's midline, spleen and left
  kidney on the left (RAS+: +x is the patient's right). An organ on the wrong side is a swapped or
  mislabelled structure.

``score = expected_dice * volume_factor * side_factor``; an organ is flagged ``low`` (and a warning is written)
when the score is below ``LOW_CONFIDENCE``. Sorting by score puts the organs to check first on top
(``rank_organs``); see BENCHMARKS.md ("Per-organ confidence") for how it ranks real and corrupted cases.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

#: Adult reference volumes (ml) used to flag values in the report.
#: Liver and spleen: central 95 % of 2989 healthy adult liver donors, CT volumetry -- Kim DW et al.,
#: "Population-based and personalized reference intervals for liver and spleen volumes in healthy
#: individuals and those with viral hepatitis", Radiology 2021;301(2):339-347 (824.5-1700 / 81.1-322 ml).
#: Kidneys: range around the per-sex mean kidney volumes (female 156.5 ml, male 193.1 ml) of Geraghty EM
#: et al., "Normal organ volume assessment from abdominal CT", Abdom Imaging 2004;29(4):482-490; the
#: bounds (100-250 ml) are ours, chosen to contain those means with room for body size.
REFERENCE_ML: dict[str, tuple[float, float]] = {
    "liver": (825.0, 1700.0),
    "kidney_right": (100.0, 250.0),
    "kidney_left": (100.0, 250.0),
    "spleen": (81.0, 322.0),
}
#: Mean HU typical of each organ from unenhanced to portal-venous contrast (a report flag, not a
#: diagnosis). Unenhanced liver below 40 HU suggests steatosis (Kodama Y et al., AJR 2007;188:1307-1312);
#: enhanced kidneys reach about 200 HU in the nephrographic phase.
REFERENCE_HU: dict[str, tuple[float, float]] = {
    "liver": (40.0, 160.0),
    "kidney_right": (20.0, 250.0),
    "kidney_left": (20.0, 250.0),
    "spleen": (35.0, 170.0),
}
#: Implausible (for the confidence score) is well beyond the reference range: half its lower bound,
#: 1.6 times its upper bound. Large and small but healthy organs stay plausible.
PLAUSIBLE_ML: dict[str, tuple[float, float]] = {
    k: (lo * 0.5, hi * 1.6) for k, (lo, hi) in REFERENCE_ML.items()
}
#: Which side of the body's midline (RAS x) each organ belongs on: +1 patient's right, -1 left.
EXPECTED_SIDE: dict[str, int] = {"liver": 1, "kidney_right": 1, "kidney_left": -1, "spleen": -1}
#: Scores below this are flagged ``low`` and produce a warning. Organs the built-in model gets right
#: score 0.92-0.99 (BENCHMARKS.md, "Per-organ confidence"); the DICOM spleen it gets wrong, 0.81.
LOW_CONFIDENCE = 0.9
#: Factor applied to an organ on the wrong side of the midline.
WRONG_SIDE_FACTOR = 0.3


@dataclass
class GridSummary:
    """Per class id, on the network grid: margin sum, voxel count, index sums and superior-axis extent."""

    margin_sum: np.ndarray
    count: np.ndarray
    prob_inside: np.ndarray  # sum of p(c) over the voxels whose argmax is c
    prob_total: np.ndarray  # sum of p(c) over all voxels
    index_sum: np.ndarray  # (C, 3) sums of (i, j, k)
    si_min: np.ndarray
    si_max: np.ndarray
    si_axis: int
    shape: tuple[int, int, int]
    affine: np.ndarray

    def expected_dice(self, cid: int) -> float:
        """Dice between the argmax mask and the soft probabilities of class ``cid``: the Dice the model
        itself expects if its probabilities are calibrated (low when much probability lies outside the
        mask or the mask holds hesitant voxels)."""
        denominator = self.prob_total[cid] + self.count[cid]
        return float(2 * self.prob_inside[cid] / denominator) if denominator else 0.0

    def centroid_mm(self, cid: int) -> np.ndarray:
        """World RAS+ centroid (mm) of class ``cid``'s argmax voxels."""
        ijk = self.index_sum[cid] / self.count[cid]
        return self.affine[:3, :3] @ ijk + self.affine[:3, 3]

    def midline_x_mm(self) -> float:
        """RAS x (mm) of the grid's centre: the body crop is centred on the body, so this is its midline."""
        centre = (np.array(self.shape) - 1) / 2
        return float(self.affine[0, :3] @ centre + self.affine[0, 3])

    def cut_off(self, cid: int) -> bool:
        """Whether class ``cid`` reaches the grid's first or last slice along the superior axis."""
        return bool(self.si_min[cid] == 0 or self.si_max[cid] == self.shape[self.si_axis] - 1)


def summarize_probabilities(probs: torch.Tensor, affine: np.ndarray) -> GridSummary:
    """One pass over ``(C, X, Y, Z)`` probabilities on the network grid (``affine``: voxel -> RAS+ mm).

    Processed in slabs along X, so the top-2 of a large map never needs a full-size copy.
    """
    n_classes, shape = probs.shape[0], tuple(int(s) for s in probs.shape[1:])
    si_axis = int(np.argmax(np.abs(np.asarray(affine)[2, :3])))
    margin_sum = np.zeros(n_classes)
    count = np.zeros(n_classes, dtype=np.int64)
    prob_inside = np.zeros(n_classes)
    prob_total = np.zeros(n_classes)
    index_sum = np.zeros((n_classes, 3))
    si_min = np.full(n_classes, np.iinfo(np.int64).max)
    si_max = np.full(n_classes, -1)
    grids = [torch.arange(n, dtype=torch.float64) for n in shape]
    for a in range(0, shape[0], 16):
        block = probs[:, a : a + 16].float()
        top2, idx = torch.topk(block, k=2, dim=0)
        label = idx[0]
        flat = label.reshape(-1)
        margin_sum += torch.bincount(
            flat, weights=(top2[0] - top2[1]).reshape(-1).double(), minlength=n_classes
        ).numpy()[:n_classes]
        count += torch.bincount(flat, minlength=n_classes).numpy()[:n_classes]
        prob_inside += torch.bincount(
            flat, weights=top2[0].reshape(-1).double(), minlength=n_classes
        ).numpy()[:n_classes]
        prob_total += block.double().sum(dim=(1, 2, 3)).numpy()
        ii, jj, kk = torch.meshgrid(grids[0][a : a + 16], grids[1], grids[2], indexing="ij")
        for axis, coord in enumerate((ii, jj, kk)):
            index_sum[:, axis] += torch.bincount(
                flat, weights=coord.reshape(-1), minlength=n_classes
            ).numpy()[:n_classes]
        # Per class, the lowest and highest slice index along the superior axis.
        present = [int(c) for c in torch.unique(flat)]
        si = (ii, jj, kk)[si_axis]
        for c in present:
            values = si[label == c]
            si_min[c] = min(si_min[c], int(values.min()))
            si_max[c] = max(si_max[c], int(values.max()))
    return GridSummary(
        margin_sum,
        count,
        prob_inside,
        prob_total,
        index_sum,
        si_min,
        si_max,
        si_axis,
        shape,
        np.asarray(affine),
    )


def _volume_factor(organ: str, volume_ml: float, cut_off: bool) -> tuple[float, str | None]:
    if organ not in PLAUSIBLE_ML:
        return 1.0, None
    lo, hi = PLAUSIBLE_ML[organ]
    if volume_ml > hi:
        return max(0.1, hi / volume_ml), f"volume {volume_ml:.0f} ml above a plausible {hi:.0f} ml"
    if volume_ml < lo and not cut_off:
        return max(0.1, volume_ml / lo), f"volume {volume_ml:.0f} ml below a plausible {lo:.0f} ml"
    return 1.0, None


def organ_confidence(
    summary: GridSummary, names: tuple[str, ...], volumes_ml: Mapping[str, float]
) -> dict[str, dict]:
    """Per-organ confidence from the network-grid summary and the final volumes.

    Args:
        summary: ``summarize_probabilities`` of the network's probabilities.
        names: label names, index = class id (0 = background, skipped).
        volumes_ml: organ -> volume of the final mask on the input grid (ml).

    Returns:
        organ -> ``{"score", "margin", "volume_ok", "side_ok", "cut_off", "low", "reasons"}``; organs not
        found get ``score`` ``None``.
    """
    out: dict[str, dict] = {}
    midline = summary.midline_x_mm()
    for cid, organ in enumerate(names):
        if cid == 0:
            continue
        volume = float(volumes_ml.get(organ, 0.0))
        if volume <= 0 or summary.count[cid] == 0:
            out[organ] = {
                "score": None,
                "margin": None,
                "volume_ok": None,
                "side_ok": None,
                "cut_off": None,
                "low": False,
                "reasons": ["not found"],
            }
            continue
        margin = float(summary.margin_sum[cid] / summary.count[cid])
        expected = summary.expected_dice(cid)
        reasons = []
        if expected < LOW_CONFIDENCE:
            reasons.append(f"expected Dice {expected:.2f} (probability margin {margin:.2f})")
        cut_off = summary.cut_off(cid)
        v_factor, v_reason = _volume_factor(organ, volume, cut_off)
        if v_reason:
            reasons.append(v_reason)
        side_ok, s_factor = None, 1.0
        if organ in EXPECTED_SIDE:
            x = float(summary.centroid_mm(cid)[0])
            side_ok = (x - midline) * EXPECTED_SIDE[organ] > 0
            if not side_ok:
                s_factor = WRONG_SIDE_FACTOR
                reasons.append(f"centroid on the patient's {'left' if x < midline else 'right'} side")
        score = expected * v_factor * s_factor
        out[organ] = {
            "score": round(score, 3),
            "margin": round(margin, 3),
            "expected_dice": round(summary.expected_dice(cid), 3),
            "volume_ok": v_reason is None,
            "side_ok": side_ok,
            "cut_off": cut_off,
            "low": score < LOW_CONFIDENCE,
            "reasons": reasons,
        }
    return out


def rank_organs(confidence: Mapping[str, Mapping]) -> list[str]:
    """Organs found, least confident first (the order in which to check them)."""
    found = [o for o, c in confidence.items() if c.get("score") is not None]
    return sorted(found, key=lambda o: confidence[o]["score"])


def summary_line(organ: str, conf: Mapping) -> str:
    """The warning text for a low-confidence organ."""
    why = "; ".join(conf["reasons"]) or "low probability margin"
    return f"low confidence for {organ} ({conf['score']:.2f}): {why} -- check it first"
