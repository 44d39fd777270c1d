"""Peers side by side: organseg, nnU-Net v2 and the plain MONAI path on the same data, machine and budget.

Usage (from the repository root; one method after another, never two at once)::

    python benchmarks/bench_peers.py [--train-minutes M] [--threads 2] [--work /tmp/peers/work]
                                     [--nnunet-venv /tmp/peers/nnunet-venv] [--methods ...] [--append]

Data: the phantoms of ``organseg demo`` (``organseg.pipeline``): 16 training phantoms at the demo's 3 mm
(seed 0, portal phase, whole abdomen) and its 2 held-out phantoms on a clinical grid (0.8x0.8x2.5 mm, seed
9999, one RAS and one LPS), made with ``organseg.phantom.synthesize`` exactly as the demo makes them; plus
the real CT ``../shared/data/totalseg-example`` (scored against TotalSegmentator's labels). Every method
trains on organseg's fold-0 split of the 16 (the demo's 8 folds: 14 training, 2 validation cases).

Methods (each command is a child process timed under GNU ``/usr/bin/time``: wall s, peak RSS of its largest process):
- ``organseg``: ``organseg demo``'s training (``configs/demo.yaml``, fold 0; ``peers/organseg_side.py``),
  then ``organseg infer`` with that run; its training wall time is the budget of the others unless
  ``--train-minutes`` is given. ``builtin``: ``organseg infer`` with the built-in model, no training.
- ``nnunet``: nnU-Net v2 in its own venv. If ``--nnunet-venv`` lacks ``bin/nnUNetv2_train`` it is created:
  ``python -m venv``, ``pip install torch==2.13.0+cpu`` (pip's own sources, else the PyTorch CPU index),
  ``pip install nnunetv2`` with torch held by a constraint, ``pip uninstall torchvision`` (see
  ``peers/nnunet.py``). Raw dataset (symlinks, ``_0000``), ``nnUNetv2_plan_and_preprocess -c 3d_fullres``
  (default plan, timed apart from training), ``splits_final.json`` = organseg's fold 0, training with
  ``nnUNetTrainer_WallClock`` (the default trainer stopped by the budget, written into the venv by this
  script), then ``nnUNetv2_predict`` with and without mirror TTA (``--disable_tta``).
- ``monai``: MONAI's UNet with the tutorials' transforms, DiceCELoss and sliding-window inference
  (``peers/monai_plain.py``), same budget.
All get ``--threads`` torch/OpenMP threads (nnU-Net takes ``os.cpu_count()``: 2 here; its augmentation runs
in the training process). Inference runs one fresh process per case (start-up and model load included).
Results are kept in ``WORK/results.json`` after every step; ``--resume`` skips the steps found there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from peers import nnunet, run_step, thread_env

REPO = Path(__file__).resolve().parent.parent
REAL = REPO.parent / "shared" / "data" / "totalseg-example"
ORGANS = ("liver", "kidney_right", "kidney_left", "spleen")
METHODS = ("organseg", "builtin", "nnunet", "monai")
HERE = Path(__file__).resolve().parent / "peers"


class Results:
    """``results.json`` in the work folder, written after every step."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        path.write_text(json.dumps(self.data, indent=1), encoding="utf-8")  # marks WORK as ours

    def get(self, method: str, key: str):
        return self.data.get(method, {}).get(key)

    def put(self, method: str, key: str, value) -> None:
        self.data.setdefault(method, {})[key] = value
        self.path.write_text(json.dumps(self.data, indent=1), encoding="utf-8")


def make_data(
    work: Path, n_train: int, held_mm: tuple[float, float, float] | None
) -> tuple[Path, dict[str, tuple[Path, Path, str | None]], dict]:
    """The demo's phantoms (training at 3 mm, held-out on the clinical grid); cases to score; fold-0 split."""
    from organseg import pipeline
    from organseg.config import load_config
    from organseg.phantom import synthesize
    from organseg.training.data import make_splits

    train_dir, held_dir = work / "phantoms", work / "held_out"
    common = {"overwrite": True, "progress": False, "phase": pipeline.DEMO_PHASE, "fov": pipeline.DEMO_FOV}
    cfg = load_config("demo")
    if not (train_dir / "dataset.json").exists():
        synthesize(train_dir, n=n_train, seed=0, spacing_mm=cfg.preprocess.spacing_mm, **common)
    if not (held_dir / "dataset.json").exists():
        n_held = pipeline.HELD_OUT_CASES
        synthesize(
            held_dir,
            n=n_held,
            seed=pipeline.HELD_OUT_SEED,
            spacing_mm=held_mm or pipeline.HELD_OUT_SPACING_MM,
            **common,
        )
    cases: dict[str, tuple[Path, Path, str | None]] = {
        p.name.removesuffix(".nii.gz"): (p, held_dir / "labelsTr" / p.name, None)
        for p in sorted((held_dir / "imagesTr").glob("*.nii.gz"))
    }
    cases["real_ct"] = (REAL / "ct.nii.gz", REAL / "seg_totalsegmentator.nii.gz", "totalsegmentator")
    names = sorted(p.name.removesuffix(".nii.gz") for p in (train_dir / "imagesTr").glob("*.nii.gz"))
    split = make_splits(names, min(cfg.train.folds, len(names)), cfg.train.seed)[0]
    return train_dir, cases, split


def dice_of(pred: Path, ref: Path, ref_map: str | None) -> dict[str, float]:
    from organseg.metrics import evaluate

    return {organ: float(v["dice"]) for organ, v in evaluate(pred, ref, ref_map=ref_map).items()}


def infer_all(res: Results, method: str, cases: dict, predict, env: dict[str, str], logs: Path) -> None:
    """One fresh process per case: ``predict(image, name) -> (cmd, mask path)``; timed and scored."""
    for name, (image, ref, ref_map) in cases.items():
        if res.get(method, f"infer/{name}"):
            continue
        cmd, mask = predict(image, name)
        mask.parent.mkdir(parents=True, exist_ok=True)
        step = run_step(cmd, logs / f"{method}-infer-{name}.log", env)
        manifest = mask.with_name(mask.name.removesuffix(".nii.gz") + ".run.json")  # organseg's own record
        if manifest.exists():
            step["backend"] = json.loads(manifest.read_text(encoding="utf-8"))["settings"].get("backend")
        res.put(method, f"infer/{name}", {**step, "dice": dice_of(mask, ref, ref_map)})
        print(f"  {method} {name}: {step['wall_s']:.1f} s", flush=True)


def run_organseg(res: Results, a, train_dir: Path, cases: dict, env: dict[str, str]) -> None:
    run = a.work / "organseg-run"
    py = [sys.executable, str(HERE / "organseg_side.py")]
    if not res.get("organseg", "train"):
        shutil.rmtree(run, ignore_errors=True)
        cmd = [*py, "train", "--data", str(train_dir), "--run", str(run), "--threads", str(a.threads)]
        cmd += ["--epochs", str(a.organseg_epochs)] if a.organseg_epochs else []
        res.put("organseg", "train", run_step(cmd, a.work / "logs" / "organseg-train.log", env))
        with (run / "fold_0" / "metrics.csv").open(encoding="utf-8") as fh:
            res.put("organseg", "train_info", {"epochs": sum(1 for _ in fh) - 1})
    out = a.work / "pred" / "organseg"

    def predict(image: Path, name: str) -> tuple[list[str], Path]:
        mask = out / f"{name}.nii.gz"
        args = ["infer", "--input", str(image), "--output", str(mask), "--model", str(run)]
        return [*py, *args, "--threads", str(a.threads)], mask

    infer_all(res, "organseg", cases, predict, env, a.work / "logs")


def run_builtin(res: Results, a, cases: dict, env: dict[str, str]) -> None:
    out = a.work / "pred" / "builtin"

    def predict(image: Path, name: str) -> tuple[list[str], Path]:
        mask = out / f"{name}.nii.gz"
        cmd = [sys.executable, str(HERE / "organseg_side.py"), "infer", "--input", str(image)]
        return [*cmd, "--output", str(mask), "--threads", str(a.threads)], mask

    infer_all(res, "builtin", cases, predict, env, a.work / "logs")


def run_nnunet(
    res: Results, a, train_dir: Path, split: dict, cases: dict, env: dict[str, str], tta: bool
) -> None:
    """Plan, train and predict without TTA; with ``tta`` only the mirror-TTA predictions (run last: slowest)."""
    root, logs = a.work / "nnunet", a.work / "logs"
    bin_dir = nnunet.ensure_venv(a.nnunet_venv, logs / "nnunet-venv.log")
    nnunet.install_trainer(a.nnunet_venv)
    env = {**env, **nnunet.nnunet_env(root)}
    if not res.get("nnunet", "plan"):
        shutil.rmtree(root, ignore_errors=True)
        nnunet.write_raw_dataset(train_dir, split["train"] + split["val"], root, list(ORGANS))
        res.put("nnunet", "plan", run_step(nnunet.plan_cmd(bin_dir), logs / "nnunet-plan.log", env))
    if not res.get("nnunet", "train"):
        nnunet.write_split(root, split)
        shutil.rmtree(nnunet.fold_dir(root), ignore_errors=True)
        start = time.time()
        budget = {"ORGANSEG_PEERS_START": str(start), "ORGANSEG_PEERS_DEADLINE": str(start + a.budget_s)}
        budget.update(nnunet.nnunet_env(root, training=True))
        res.put(
            "nnunet",
            "train",
            run_step(nnunet.train_cmd(bin_dir), logs / "nnunet-train.log", {**env, **budget}),
        )
        info = json.loads((nnunet.fold_dir(root) / "wallclock.json").read_text(encoding="utf-8"))
        res.put("nnunet", "train_info", info)
    method = "nnunet_tta" if tta else "nnunet"

    def predict(image: Path, name: str) -> tuple[list[str], Path]:
        in_dir, out_dir = root / "in" / name, root / ("pred_tta" if tta else "pred") / name
        in_dir.mkdir(parents=True, exist_ok=True)
        link = in_dir / f"{name}_0000.nii.gz"
        link.unlink(missing_ok=True)
        link.symlink_to(image.resolve())
        return nnunet.predict_cmd(bin_dir, in_dir, out_dir, tta), out_dir / f"{name}.nii.gz"

    infer_all(res, method, cases, predict, env, logs)


def run_monai(res: Results, a, train_dir: Path, split: dict, cases: dict, env: dict[str, str]) -> None:
    out, py = a.work / "monai", [sys.executable, str(HERE / "monai_plain.py")]
    if not res.get("monai", "train"):
        cmd = [*py, "train", "--data", str(train_dir), "--cases", ",".join(split["train"]), "--out", str(out)]
        cmd += ["--budget-s", f"{a.budget_s:.0f}", "--threads", str(a.threads)]
        res.put("monai", "train", run_step(cmd, a.work / "logs" / "monai-train.log", env))
        res.put("monai", "train_info", json.loads((out / "train.json").read_text(encoding="utf-8")))

    def predict(image: Path, name: str) -> tuple[list[str], Path]:
        mask = out / "pred" / f"{name}.nii.gz"
        args = ["infer", "--weights", str(out / "weights.pt"), "--input", str(image), "--output", str(mask)]
        return [*py, *args, "--threads", str(a.threads)], mask

    infer_all(res, "monai", cases, predict, env, a.work / "logs")


LABELS = {
    "organseg": "organseg, demo training (VNet 1.1 M)",
    "builtin": "organseg, built-in model (no training)",
    "nnunet": "nnU-Net v2 3d_fullres, no TTA",
    "nnunet_tta": "nnU-Net v2 3d_fullres, mirror TTA",
    "monai": "plain MONAI (UNet, DiceCE)",
}


def table(res: Results) -> str:
    """Markdown table: Dice (held-out mean and real CT), train s, inference s per case, peak RSS, load."""
    head = (
        "| method | train wall s | held-out Dice: liver / kR / kL / spleen (mean of 2) | real CT Dice: liver / kR / kL / spleen "
        "| infer wall s per held-out case (real CT) | peak RSS MB: train / infer | 1-min load at train (infer) start |\n"
        "|---|---:|---|---|---|---|---|"
    )
    rows = [head]
    for method, label in LABELS.items():
        r = res.data.get(method, {})
        infers = {k.removeprefix("infer/"): v for k, v in r.items() if k.startswith("infer/")}
        if not infers:
            continue
        held = [v for k, v in infers.items() if k != "real_ct"]
        real = infers.get("real_ct")
        trained = res.data.get("nnunet", {}).get("train") if method == "nnunet_tta" else r.get("train")

        def fmt(d: dict | None) -> str:
            return " / ".join(f"{d[o]:.3f}" for o in ORGANS) if d else "-"

        mean = {o: sum(v["dice"][o] for v in held) / len(held) for o in ORGANS} if held else None
        wall = sum(v["wall_s"] for v in held) / max(1, len(held))
        real_wall = f" ({real['wall_s']:.1f})" if real else ""
        rss_inf = max(v["peak_rss_mb"] for v in infers.values())
        train_s = f"{trained['wall_s']:.0f}" if trained else "-"
        rss_train = f"{trained['peak_rss_mb']:.0f}" if trained else "-"
        load_t = f"{trained['load_1min']:.1f}" if trained else "-"
        load_i = max(v["load_1min"] for v in infers.values())
        rows.append(
            f"| {label} | {train_s} | {fmt(mean)} | {fmt(real['dice'] if real else None)} | {wall:.1f}{real_wall} "
            f"| {rss_train} / {rss_inf:.0f} | {load_t} ({load_i:.1f}) |"
        )
    return "\n".join(rows)


WHAT = """What was run: organseg = `organseg demo`'s training (configs/demo.yaml, fold 0) then `organseg infer` with
that run; built-in = `organseg infer` without `--model`; nnU-Net v2 = default `3d_fullres` plan, the default trainer
stopped at the budget (`nnUNetTrainer_WallClock`: poly LR over the budget's wall clock, short epochs, 1 validation
batch per epoch, no fold validation), `nnUNetv2_predict -f 0 -npp 1 -nps 1` with `--disable_tta` and with mirror
TTA; plain MONAI = MONAI's UNet (16-256, 2 residual units, batch norm), LoadImaged/Orientationd/Spacingd(3 mm)/
ScaleIntensityRanged/CropForegroundd cached, RandCropByPosNegLabeld 64^3, DiceCELoss, Adam 1e-3 until the budget,
sliding_window_inference (overlap 0.25) + Invertd. Inference: one fresh process per case (start-up and model load
included); Dice by `organseg.metrics.evaluate` in world space (real CT: `ref_map="totalsegmentator"`); peak RSS is
the largest single process of the step (GNU `/usr/bin/time`, `%M`)."""


def notes(res: Results, a) -> str:
    lines = []
    for method in ("organseg", "builtin"):
        backends = {v.get("backend") for k, v in res.data.get(method, {}).items() if k.startswith("infer/")}
        if backends - {None}:
            lines.append(
                f"- {method} inference backend (`--backend auto`): {', '.join(sorted(backends - {None}))}."
            )
    if info := res.get("organseg", "train_info"):
        lines.append(
            f"- organseg: {info['epochs']} epochs x 12 steps x 2 patches of 64^3 (demo config), fold 0."
        )
    if info := res.get("nnunet", "train_info"):
        plan = res.get("nnunet", "plan")
        lines.append(
            f"- nnU-Net: plan+preprocess {plan['wall_s']:.0f} s (not counted in the budget); default plan, patch "
            f"{'x'.join(map(str, info['patch_size']))}, batch {info['batch_size']}, {info['parameters'] / 1e6:.1f} M "
            f"parameters; {info['iterations']} iterations in {info['epochs']} short epochs, "
            f"{info['s_per_iteration']:.1f} s per iteration."
        )
    if info := res.get("monai", "train_info"):
        lines.append(
            f"- plain MONAI: UNet {info['parameters'] / 1e6:.1f} M parameters, {info['steps']} steps of 2 patches "
            f"64^3, {info['s_per_step']:.2f} s per step, last loss {info['last_loss']:.3f}."
        )
    return "\n".join(lines)


def machine(venv: Path) -> str:
    import monai
    import torch

    info = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), "?")
    nn = [
        p.name.removesuffix(".dist-info").split("-")[1]
        for p in venv.glob("lib/python3*/site-packages/nnunetv2-*.dist-info")
    ]
    return (
        f"`{' '.join(platform.uname()[:3])}`, {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"torch {torch.__version__}, MONAI {monai.__version__}, nnunetv2 {nn[0] if nn else '?'}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--train-minutes", type=float, default=None, help="budget; default: organseg's training wall time"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/peers/work"))
    ap.add_argument("--nnunet-venv", type=Path, default=Path("/tmp/peers/nnunet-venv"))
    ap.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    ap.add_argument("--train-cases", type=int, default=16, help="demo default 16 (quick checks: 4)")
    ap.add_argument(
        "--organseg-epochs", type=int, default=None, help="override the demo's epochs (quick checks)"
    )
    ap.add_argument(
        "--held-out-mm", type=float, nargs=3, default=None, help="quick checks: coarser held-out grid"
    )
    ap.add_argument("--resume", action="store_true", help="keep WORK and skip the steps in its results.json")
    ap.add_argument("--append", action="store_true", help="append a dated section to BENCHMARKS.md")
    a = ap.parse_args()
    methods = [m for m in a.methods.split(",") if m]
    if unknown := set(methods) - set(METHODS):
        sys.exit(f"bench_peers: unknown methods {sorted(unknown)}")
    if a.work.exists() and not a.resume:
        if any(a.work.iterdir()) and not (a.work / "results.json").exists():
            sys.exit(f"bench_peers: {a.work} is not empty and not a bench_peers work folder")
        shutil.rmtree(a.work)
    a.work.mkdir(parents=True, exist_ok=True)
    started, load_start = datetime.now(timezone.utc), os.getloadavg()[0]
    res = Results(a.work / "results.json")
    train_dir, cases, split = make_data(a.work, a.train_cases, a.held_out_mm)
    env = thread_env(a.threads)
    if "organseg" in methods:
        run_organseg(res, a, train_dir, cases, env)
    budget = a.train_minutes * 60 if a.train_minutes else (res.get("organseg", "train") or {}).get("wall_s")
    if budget is None and {"nnunet", "monai"} & set(methods):
        sys.exit("bench_peers: no budget: give --train-minutes or include organseg")
    a.budget_s = budget
    if "builtin" in methods:
        run_builtin(res, a, cases, env)
    if "nnunet" in methods:
        run_nnunet(res, a, train_dir, split, cases, env, tta=False)
    if "monai" in methods:
        run_monai(res, a, train_dir, split, cases, env)
    if "nnunet" in methods:
        run_nnunet(res, a, train_dir, split, cases, env, tta=True)
    loads = [
        s["load_1min"]
        for m in res.data.values()
        for s in m.values()
        if isinstance(s, dict) and "load_1min" in s
    ]
    command = "python benchmarks/bench_peers.py " + " ".join(sys.argv[1:])
    text = "\n".join(
        [
            f"## Peers side by side: organseg, nnU-Net v2, plain MONAI (issue 19) ({started:%Y-%m-%d %H:%M} UTC)\n",
            f"Command: `{command}` ({(datetime.now(timezone.utc) - started).total_seconds() / 60:.0f} min).  ",
            f"Machine: {machine(a.nnunet_venv)}; nnU-Net venv `{a.nnunet_venv}`. 1-min load average {load_start:.1f} at start, "
            f"{min(loads, default=0):.1f}-{max(loads, default=0):.1f} at the steps' starts.  ",
            f"Budget: {a.budget_s or 0:.0f} s of training wall time each, {a.threads} threads each, one method at a time. "
            f"Training: {len(split['train'])} demo phantoms (fold 0); held-out: the demo's 2 clinical-grid phantoms; "
            "real CT: `totalseg-example` against TotalSegmentator's labels.\n",
            table(res),
            "",
            notes(res, a),
            "",
            WHAT,
            "",
        ]
    )
    print(text)
    if a.append:
        with (REPO / "BENCHMARKS.md").open("a", encoding="utf-8") as fh:
            fh.write("\n" + text)


if __name__ == "__main__":
    main()
