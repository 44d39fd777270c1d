"""``organseg demo``: the whole application end to end on synthetic data, on a plain CPU.

Synthesizes the held-out cases first and shows a first result within a minute (``first_look``: the
built-in model on the first held-out phantom, its Dice scores and a PNG, printed before training
starts), then synthesizes a training set, trains one fold with ``configs/demo.yaml``, segments the
held-out cases, evaluates them against their ground truth, renders the first one, and writes
``report.json``:

    {"dice": {"liver": 0.96, ...}, "cases": {...}, "timings_s": {...}, "run": "...", ...}
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np

from organseg.config import LabelMap, load_config, replace_path
from organseg.errors import OutputError
from organseg.io import atomic_write_json

DEFAULT_TRAIN_CASES = 16
HELD_OUT_CASES = 2
HELD_OUT_SEED = 9_999
DEMO_PHASE = "portal"
DEMO_FOV = "abdomen"
#: Held-out phantoms on a clinical grid: sub-mm pixels and 2.5 mm slices (RAS and LPS alternate).
HELD_OUT_SPACING_MM = (0.8, 0.8, 2.5)


def demo(
    out_dir: str | Path = "demo-out",
    *,
    n_cases: int | None = None,
    epochs: int | None = None,
    device: str | None = None,
    overwrite: bool = False,
    render_video: bool = True,
    config: str | Path = "demo",
    progress: bool = True,
    held_out_spacing_mm: tuple[float, float, float] = HELD_OUT_SPACING_MM,
) -> dict:
    """Run synth -> train -> infer -> evaluate -> render into ``out_dir``; return the report.

    Args:
        out_dir: folder for phantoms, the run, predictions, the video and ``report.json``.
        n_cases: training phantoms (held-out cases come on top); default 16.
        epochs: override the demo config's epochs (tests use 1-2).
        device: ``cpu``/``cuda``; default CUDA when present.
        overwrite: allow a non-empty ``out_dir`` (its previous demo files are replaced).
        render_video: also render the first held-out prediction to MP4 + PNG.
        config: the training config (name in ``configs/`` or a YAML path).
        progress: progress bars and log lines on the terminal.
        held_out_spacing_mm: voxel size of the held-out phantoms (default a clinical grid).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: exists and is not a folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise OutputError(f"{out_dir}: folder is not empty (pass --overwrite to reuse it)")
    # Imported after the checks above, so a wrong --out fails at once rather than after torch loads.
    from organseg.infer import segment
    from organseg.metrics import evaluate
    from organseg.phantom import synthesize
    from organseg.training import train

    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = load_config(config)
    if epochs is not None:
        cfg = replace_path(cfg, "train.epochs", epochs)
    n_train = n_cases or DEFAULT_TRAIN_CASES
    if cfg.train.folds > n_train:
        cfg = replace_path(cfg, "train.folds", n_train)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    # Training phantoms come at the demo's working spacing (cheap to make and to cache); held-out cases
    # come on a clinical grid (0.8 mm pixels, 2.5 mm slices, RAS and LPS) so inference is exercised on
    # real-world grids and must map its prediction back onto them.
    # One contrast phase (portal venous, the most common clinical protocol) and one field of view (the
    # whole abdomen) keep the demo about learning anatomy in minutes; the built-in model is trained
    # across all phases and fields of view instead.
    spacing = cfg.preprocess.spacing_mm
    common = {"overwrite": True, "progress": progress, "phase": DEMO_PHASE, "fov": DEMO_FOV}
    held_out = synthesize(
        out_dir / "held_out", n=HELD_OUT_CASES, seed=HELD_OUT_SEED, spacing_mm=held_out_spacing_mm, **common
    )
    timings["synth_held_out"] = time.perf_counter() - t

    # A result to look at before minutes of training: the built-in model on the first held-out case.
    t = time.perf_counter()
    label_of = {p: out_dir / "held_out" / "labelsTr" / p.name for p in held_out}
    first = first_look(
        held_out[0],
        label_of[held_out[0]],
        out_dir / "first_look",
        labels=cfg.labels,
        device=device,
        render_png=render_video,
        progress=progress,
    )
    timings["first_look"] = time.perf_counter() - t

    t = time.perf_counter()
    synthesize(out_dir / "phantoms", n=n_train, seed=0, spacing_mm=spacing, **common)
    timings["synth"] = time.perf_counter() - t

    t = time.perf_counter()
    run_dir = out_dir / "run"
    train(cfg, out_dir / "phantoms", run_dir, folds=[0], resume=False, device=device, progress=progress)
    timings["train"] = time.perf_counter() - t

    t = time.perf_counter()
    pred_dir = out_dir / "predictions"
    pred_dir.mkdir(exist_ok=True)
    per_case: dict[str, dict] = {}
    first_pred: Path | None = None
    for image_path in held_out:  # synthesize returns the image paths it wrote
        name = image_path.name
        pred_path = pred_dir / name
        label_path = out_dir / "held_out" / "labelsTr" / name
        segment(image_path, pred_path, model=run_dir, device=device, overwrite=True, progress=False)
        per_case[name] = evaluate(pred_path, label_path, labels=cfg.labels)
        first_pred = first_pred or pred_path
    timings["infer_and_evaluate"] = time.perf_counter() - t

    dice = {
        organ: float(np.mean([case[organ]["dice"] for case in per_case.values()]))
        for organ in cfg.labels.organs
    }
    outputs = {"predictions": str(pred_dir), "run": str(run_dir)}
    if render_video and first_pred is not None:
        from organseg.rendering import render

        t = time.perf_counter()
        video = render(
            first_pred,
            out_dir / "organs.mp4",
            labels=cfg.labels,
            preview=out_dir / "organs.png",
            title="organseg demo",
            overwrite=True,
            progress=progress,
        )
        timings["render"] = time.perf_counter() - t
        outputs.update(video=str(video), preview=str(out_dir / "organs.png"))

    report = {
        "dice": dice,
        "cases": per_case,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "total_s": round(sum(timings.values()), 2),
        "train_cases": n_train,
        "held_out_cases": len(per_case),
        "epochs": cfg.train.epochs,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "outputs": outputs,
        "first_look": first,
    }
    atomic_write_json(out_dir / "report.json", report)
    return report


def first_look(
    image: Path,
    label: Path,
    out_dir: Path,
    *,
    labels: LabelMap,
    device: str | None = None,
    render_png: bool = True,
    progress: bool = True,
) -> dict:
    """The built-in model on one case: ``prediction.nii.gz``, ``scores.json`` and ``organs.png`` in ``out_dir``.

    The demo's first result: on 2 cores it is ready well within a minute of starting (BENCHMARKS.md),
    where training takes minutes. Prints the Dice scores and where the files are when ``progress``.

    Returns:
        ``{"dice": {organ: Dice}, "seconds": ..., "outputs": {...}}`` (also written to ``scores.json``).
    """
    from organseg.infer import segment
    from organseg.metrics import evaluate

    t = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    prediction = out_dir / "prediction.nii.gz"
    segment(image, prediction, device=device, overwrite=True, progress=False, expected_labels=labels)
    scores = evaluate(prediction, label, labels=labels)
    dice = {organ: float(scores[organ]["dice"]) for organ in labels.organs}
    outputs = {"prediction": str(prediction), "scores": str(out_dir / "scores.json")}
    if render_png:
        from organseg.rendering import render

        png = render(
            prediction,
            out_dir / "organs.png",
            labels=labels,
            title="built-in model, before training",
            overwrite=True,
            progress=False,
        )
        outputs["png"] = str(png)
    result = {"model": "built-in", "case": str(image), "dice": dice, "outputs": outputs}
    result["seconds"] = round(time.perf_counter() - t, 2)
    atomic_write_json(out_dir / "scores.json", {**result, "scores": scores})
    if progress:
        print(
            "first look (built-in model on a held-out phantom): Dice "
            + ", ".join(f"{k} {v:.3f}" for k, v in dice.items())
            + "\n  "
            + "\n  ".join(f"{k}: {v}" for k, v in outputs.items())
            + "\nnow training the demo model on phantoms (progress below)",
            flush=True,
        )
    return result
