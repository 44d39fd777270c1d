"""Ink training: leave-one-fragment-out folds, BCE + Dice + Tversky, resumable checkpoints.

Run folder (like organ runs)::

    <run>/run.json            {"organseg_run": 1, "task": "ink", "folds": N, "created": ...}
    <run>/config.yaml         the resolved ink config
    <run>/splits.json         fold k validates fragment k, trains on the others
    <run>/fold_<k>/checkpoint_last.pt, checkpoint_best.pt, metrics.csv, curves.png
    <run>/cv_summary.json     best validation F0.5 (and its threshold) per fold, mean

The best checkpoint stores the probability threshold that maximised F0.5 on the held-out fragment;
inference uses it. Tiles for epoch ``e`` come from ``rng(seed, fold, e)``, so a resumed run draws the
same tiles as an uninterrupted one. Checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

import csv
import io as _io
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import yaml
from monai.losses import DiceLoss, TverskyLoss
from tqdm import tqdm

from organseg.checkpoint import load_checkpoint, save_checkpoint
from organseg.errors import ConfigError, InputError, ModelError, OutputError
from organseg.ink.config import InkConfig, ink_config_from_dict, ink_config_to_dict
from organseg.ink.data import TileSampler, load_train_fragment
from organseg.ink.metrics import best_threshold, ink_scores
from organseg.ink.model import build_ink_model
from organseg.ink.predict import predict_fragment
from organseg.ink.reader import find_fragments, open_fragment
from organseg.io import atomic_path, atomic_write_json, atomic_write_text

METRIC_COLUMNS = [
    "epoch",
    "train_loss",
    "val_fbeta",
    "val_threshold",
    "val_precision",
    "val_recall",
    "val_dice",
    "lr",
    "seconds",
]


class InkLoss(torch.nn.Module):
    """Weighted sum of MONAI's BCE-with-logits, Dice and Tversky losses on (batch, 1, rows, columns) logits."""

    def __init__(self, cfg: InkConfig) -> None:
        super().__init__()
        lc = cfg.train.loss
        self.weights = (lc.bce, lc.dice, lc.tversky)
        self.bce = torch.nn.BCEWithLogitsLoss()
        self.dice = DiceLoss(sigmoid=True, batch=True)
        self.tversky = TverskyLoss(sigmoid=True, alpha=lc.tversky_alpha, beta=lc.tversky_beta, batch=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        wb, wd, wt = self.weights
        loss = logits.new_zeros(())
        if wb:
            loss = loss + wb * self.bce(logits, target)
        if wd:
            loss = loss + wd * self.dice(logits, target)
        if wt:
            loss = loss + wt * self.tversky(logits, target)
        return loss


def lr_schedule(total_steps: int):
    """LR factor per step: linear warm-up over 10 % of the steps, then cosine down to 5 %.

    A function of the step and the *current* config's total, so a run resumed with more epochs
    continues on the longer schedule (the saved scheduler state holds only the step count).
    """
    warm = max(1, total_steps // 10)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total_steps - warm))
        return float(0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * t)))

    return factor


def validate(model: torch.nn.Module, path: Path, cfg: InkConfig, device: torch.device) -> dict[str, float]:
    """Predict the held-out fragment (no TTA) and score it at the F0.5-best threshold."""
    model.eval()
    with open_fragment(path, require_labels=True) as frag:
        mask = frag.read_mask()
        ref = frag.read_labels() & mask
        prob = predict_fragment(frag, [model], cfg, mask, tta="none", device=device, progress=False)
    thr, _ = best_threshold(prob, ref, mask)
    s = ink_scores(prob > thr, ref)
    return {
        "val_fbeta": s["fbeta"],
        "val_threshold": thr,
        "val_precision": s["precision"],
        "val_recall": s["recall"],
        "val_dice": s["dice"],
    }


def _write_metrics(path: Path, rows: list[dict]) -> None:
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(
            {k: (f"{v:.5f}" if isinstance(v, float) else v) for k, v in r.items() if k in METRIC_COLUMNS}
        )
    atomic_write_text(path, buf.getvalue())


def _write_curves(path: Path, rows: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(ep, [r["train_loss"] for r in rows], "o-")
    ax[0].set(xlabel="epoch", ylabel="train loss (BCE+Dice+Tversky)")
    val = [(r["epoch"], r["val_fbeta"]) for r in rows if r.get("val_fbeta") not in (None, "")]
    if val:
        ax[1].plot(*zip(*val), "o-", color="tab:green")
    ax[1].set(xlabel="epoch", ylabel="held-out F0.5", ylim=(0, 1))
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def ink_checkpoint(path: Path) -> tuple[dict, InkConfig]:
    """Load an ink checkpoint safely; ``ModelError`` for one of another task or a bad embedded config."""
    ckpt = load_checkpoint(path)
    if ckpt.get("task") != "ink":
        raise ModelError(f"{path}: not an ink checkpoint (task {ckpt.get('task', 'organs')!r})")
    try:
        cfg = ink_config_from_dict(ckpt["config"], f"{path} (embedded config)")
    except ConfigError as err:
        raise ModelError(str(err)) from None
    return ckpt, cfg


def train_fold(
    cfg: InkConfig,
    fragments: list[Path],
    fold: int,
    fold_dir: Path,
    device: torch.device,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Train one fold (validate on ``fragments[fold]``); returns the best validation metrics."""
    fold_dir.mkdir(parents=True, exist_ok=True)
    val_path = fragments[fold]
    train_paths = [p for i, p in enumerate(fragments) if i != fold]
    model = build_ink_model(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    total = cfg.train.epochs * cfg.train.steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(total))
    start, rows, best = 1, [], {"val_fbeta": -1.0}
    last = fold_dir / "checkpoint_last.pt"
    if resume and last.is_file():
        ckpt, _ = ink_checkpoint(last)
        try:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
        except (RuntimeError, KeyError, ValueError) as err:
            raise ModelError(f"{last}: does not fit this config ({str(err).splitlines()[0][:160]})") from None
        start = int(ckpt["epoch"]) + 1
        rows = [r for r in json.loads(ckpt["history"]) if r["epoch"] < start]
        best = json.loads(ckpt["best"])
    elif last.is_file():
        raise OutputError(f"{last}: a checkpoint exists (pass --resume to continue, or use a new --run)")
    train_frags = [load_train_fragment(p, cfg) for p in train_paths]
    sampler = TileSampler(train_frags, cfg)
    loss_fn = InkLoss(cfg)
    for epoch in range(start, cfg.train.epochs + 1):
        t0 = time.time()
        model.train()
        rng = np.random.default_rng([cfg.train.seed, fold, epoch])
        torch.manual_seed(int(rng.integers(2**31)))
        losses = []
        bar = tqdm(
            range(cfg.train.steps_per_epoch),
            desc=f"fold {fold} epoch {epoch}/{cfg.train.epochs}",
            disable=not progress,
            leave=False,
        )
        for _ in bar:
            x, y = sampler.batch(rng)
            x, y = x.to(device), y.to(device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
        row: dict = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)),
            "lr": float(sched.get_last_lr()[0]),
        }
        if epoch % cfg.train.val_every == 0 or epoch == cfg.train.epochs:
            row.update(validate(model, val_path, cfg, device))
        row["seconds"] = round(time.time() - t0, 1)
        rows.append(row)
        is_best = row.get("val_fbeta", -1.0) > best["val_fbeta"]
        if is_best:
            best = {
                k: row[k]
                for k in ("epoch", "val_fbeta", "val_threshold", "val_precision", "val_recall", "val_dice")
            }
        state = {
            "task": "ink",
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "epoch": epoch,
            "fold": fold,
            "threshold": float(best.get("val_threshold", 0.5)),
            "best": json.dumps(best),
            "history": json.dumps(rows),
            "config": ink_config_to_dict(cfg),
        }
        if is_best:
            save_checkpoint(
                fold_dir / "checkpoint_best.pt", {**state, "threshold": float(row["val_threshold"])}
            )
        save_checkpoint(last, state)
        _write_metrics(fold_dir / "metrics.csv", rows)
        _write_curves(fold_dir / "curves.png", rows, f"ink fold {fold} (validation: {val_path.name})")
    return best


def train_ink(
    cfg: InkConfig,
    data_dir: str | Path,
    run_dir: str | Path,
    folds: list[int] | None = None,
    resume: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Path:
    """Train leave-one-fragment-out folds on the labelled fragments in ``data_dir``; returns the run folder.

    Args:
        cfg: the ink config (saved into the run and every checkpoint).
        data_dir: folder of fragment folders (``<id>/surface_volume ...``) with ``inklabels.png``.
        run_dir: new run folder, or an existing one with ``resume``.
        folds: fold numbers to train (default all; fold k validates the k-th fragment by name).
    """
    data_dir, run = Path(data_dir), Path(run_dir)
    fragments = find_fragments(data_dir)
    if len(fragments) < 2:
        raise InputError(
            f"{data_dir}: leave-one-fragment-out training needs at least 2 labelled fragments, found {len(fragments)}"
        )
    for p in fragments:  # validate every fragment before any output exists
        with open_fragment(p, require_labels=True) as frag:
            frag.read_mask()
    folds = list(range(len(fragments))) if folds is None else folds
    for k in folds:
        if not 0 <= k < len(fragments):
            raise ConfigError(
                f"--fold: {k} is not a fold of {len(fragments)} fragments (0..{len(fragments) - 1})"
            )
    marker = run / "run.json"
    if resume:
        if not marker.is_file():
            raise InputError(f"{run}: not an ink run folder (no run.json) to resume")
        saved = json.loads(marker.read_text(encoding="utf-8"))
        if saved.get("task") != "ink":
            raise InputError(f"{run}: run.json is not an ink run (task {saved.get('task')!r})")
        splits_path = run / "splits.json"
        if splits_path.is_file():
            before = [s["val"][0] for s in json.loads(splits_path.read_text(encoding="utf-8"))["splits"]]
            if before != [p.name for p in fragments]:
                raise InputError(
                    f"{data_dir}: fragments {[p.name for p in fragments]} differ from the run's {before} "
                    f"({splits_path}); folds would not match"
                )
    else:
        if run.exists() and any(run.iterdir()):
            raise OutputError(
                f"{run}: run folder exists and is not empty (pass --resume or choose a new --run)"
            )
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            marker,
            {
                "organseg_run": 1,
                "task": "ink",
                "folds": len(fragments),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
        )
        atomic_write_text(run / "config.yaml", yaml.safe_dump(ink_config_to_dict(cfg), sort_keys=False))
        splits = [
            {"fold": k, "val": [p.name], "train": [q.name for q in fragments if q != p]}
            for k, p in enumerate(fragments)
        ]
        atomic_write_json(run / "splits.json", {"data": str(data_dir), "splits": splits})
    device = torch.device(device)
    summary_path = run / "cv_summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {"folds": {}}
    for k in folds:
        best = train_fold(cfg, fragments, k, run / f"fold_{k}", device, resume=resume, progress=progress)
        summary["folds"][str(k)] = {"val_fragment": fragments[k].name, **best}
        scores = [f["val_fbeta"] for f in summary["folds"].values()]
        summary["mean_val_fbeta"] = float(np.mean(scores))
        summary["sd_val_fbeta"] = float(np.std(scores))
        atomic_write_json(summary_path, summary)
    return run
