"""``organseg ink demo``: synthetic fragments -> one leave-one-out fold -> held-out prediction -> picture.

Fragment 1 is held out (fold 0 validates it and chooses the threshold on it, as the fold would in a
real run; the demo reports that fragment's score, which is optimistic by the threshold choice
only). The fixed-slice baseline is fitted on the training fragments and scored on the same
held-out fragment, so the two numbers are comparable. Writes into ``out_dir``: ``fragments/``,
``run/``, ``pred/`` (mask PNG + submission CSV), ``ink_demo.png`` and ``report.json``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from organseg.errors import OutputError
from organseg.ink.baseline import fixed_slice_scores
from organseg.ink.config import InkConfig
from organseg.ink.evaluate import evaluate_ink
from organseg.ink.infer import detect_ink
from organseg.ink.reader import open_fragment
from organseg.ink.synth import synthesize_fragments
from organseg.ink.train import train_ink
from organseg.io import atomic_path, atomic_write_json


def demo_picture(
    path: Path, fragment: Path, pred_png: Path, cfg: InkConfig, scores: dict, baseline: dict
) -> Path:
    """Side by side: ink labels, prediction (green hit, red false ink, blue missed), IR surface, one slice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from organseg.ink.reader import read_png_binary

    with open_fragment(fragment, require_labels=True) as frag:
        mask = frag.read_mask()
        ref = frag.read_labels() & mask
        ir = frag.read_ir()
        z = int(baseline["slice"])
        sl = frag.read_rows(z, z + 1, 0, frag.height)[0].astype(np.float32)
    pred = read_png_binary(pred_png, ref.shape)
    overlay = np.zeros((*ref.shape, 3), np.float32) + 0.15 * mask[..., None]
    overlay[pred & ref] = (0.2, 0.85, 0.3)
    overlay[pred & ~ref] = (0.9, 0.2, 0.2)
    overlay[~pred & ref] = (0.25, 0.45, 0.95)
    lo, hi = np.percentile(sl[mask], (1, 99))
    panels = [
        (ref, "gray", "ink labels (held out)"),
        (overlay, None, f"prediction F0.5 {scores['fbeta']:.2f}\n(green hit, red false, blue missed)"),
        (ir if ir is not None else mask, "gray", "surface (ir.png)"),
        (
            np.clip((sl - lo) / (hi - lo + 1e-6), 0, 1),
            "gray",
            f"slice {z:02d}: fixed-slice baseline\nF0.5 {baseline['fbeta']:.2f}",
        ),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(13, 4.2))
    for ax, (img, cmap, title) in zip(axes, panels):
        ax.imshow(img, cmap=cmap, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.suptitle(
        f"organseg ink demo: synthetic '{cfg.synth.difficulty}' fragment {fragment.name}", fontsize=11
    )
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return path


def ink_demo(
    cfg: InkConfig,
    out_dir: str | Path,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Run the whole ink pipeline on synthetic fragments; returns (and writes) the report."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputError(f"{out}: folder is not empty (pass --overwrite to reuse it)")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    s = cfg.synth
    frags = synthesize_fragments(
        out / "fragments",
        s.n_fragments,
        s.seed,
        s.height,
        s.width,
        s.difficulty,
        overwrite=True,
        progress=progress,
    )
    t_synth = time.time() - t0
    held_out = frags[0]
    run = out / "run"
    if run.exists():
        import shutil

        shutil.rmtree(run)
    train_ink(cfg, out / "fragments", run, folds=[0], device=device, progress=progress)
    t_train = time.time() - t0 - t_synth
    info = detect_ink(
        held_out,
        run,
        out / "pred",
        out / "pred" / "submission.csv",
        device=device,
        overwrite=True,
        progress=progress,
    )
    scores = evaluate_ink(out / "pred" / "submission.csv", held_out)["fragments"][held_out.name]
    baseline = fixed_slice_scores(frags[1:], held_out, cfg)
    picture = demo_picture(
        out / "ink_demo.png", held_out, out / "pred" / f"{held_out.name}.png", cfg, scores, baseline
    )
    report = {
        "difficulty": s.difficulty,
        "fragments": [p.name for p in frags],
        "held_out": held_out.name,
        "size": [s.height, s.width],
        "model": scores,
        "threshold": info[held_out.name]["threshold"],
        "baseline": baseline,
        "seconds": {
            "synth": round(t_synth, 1),
            "train": round(t_train, 1),
            "total": round(time.time() - t0, 1),
        },
        "threads": torch.get_num_threads(),
        "picture": str(picture),
    }
    atomic_write_json(out / "report.json", report)
    return report
