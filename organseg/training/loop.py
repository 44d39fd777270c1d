"""One fold of training: optimiser, schedule, epochs, validation, checkpoints, resume and Ctrl-C.

State lives in arguments and in the checkpoint, never in module globals. Every epoch is seeded from
``(train.seed, fold, epoch)`` (data order, patch sampling, augmentation, dropout), so a resumed run
replays exactly what an uninterrupted one would have done:

- ``checkpoint_last.pt`` is written (atomically) at the end of **every** epoch, so ``kill -9`` loses
  at most the epoch in progress;
- Ctrl-C (SIGINT) finishes the current step, saves ``checkpoint_last.pt`` with the position inside
  the epoch, and raises ``TrainingInterrupted``; resume replays the epoch's data up to that step
  without training on it and continues from the saved weights, optimiser, scheduler and RNG states;
- a second Ctrl-C stops at once (the last complete checkpoint stays intact: writes are atomic).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.metrics import DiceMetric
from monai.metrics.utils import do_metric_reduction
from monai.networks.utils import one_hot
from tqdm import tqdm

from organseg.checkpoint import build_model, load_checkpoint, state_dict_problem
from organseg.config import Config, config_to_dict
from organseg.errors import ModelError
from organseg.losses import build_loss
from organseg.modelstore import BEST, LAST, default_model, fold_dir, load_model_file, resolve_model_files
from organseg.training.control import (
    InterruptFlag,
    TrainingInterrupted,
    amp_dtype,
    capture_rng,
    lr_factor,
    restore_rng,
    steps_per_epoch,
)
from organseg.training.data import FoldData, PatchDataset, patch_batches, random_part, seed_for
from organseg.training.distributed import (
    DistContext,
    any_rank,
    flag_from_main,
    rank_batch_size,
    wrap_loss,
    wrap_model,
)
from organseg.training.runfolder import RunWriter, read_metrics

LoaderFactory = Callable[[torch.utils.data.Dataset, torch.Generator, int], Iterator[list[dict]]]


@torch.no_grad()
def validate(
    model: torch.nn.Module, samples: Iterator[dict], cfg: Config, device: torch.device
) -> dict[str, float]:
    """Per-organ Dice of sliding-window predictions on whole preprocessed volumes (NaN: organ never present)."""
    model.eval()
    n = cfg.labels.num_classes
    metric = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
    dtype = amp_dtype(cfg, device)
    per_case = []  # reduced here, not by metric.aggregate(): that all-gathers under torch.distributed,
    # and only rank 0 validates
    for sample in samples:
        image = torch.as_tensor(sample["image"]).as_subclass(torch.Tensor)[None].float().to(device)
        label = torch.as_tensor(sample["label"]).as_subclass(torch.Tensor)[None].long().to(device)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = sliding_window_inference(
                image,
                roi_size=cfg.infer_patch_size,
                sw_batch_size=cfg.infer.sw_batch_size,
                predictor=model,
                overlap=cfg.infer.overlap,
                mode=cfg.infer.blend,
                padding_mode=cfg.infer.padding,
            )
        pred = logits.float().argmax(dim=1, keepdim=True)
        per_case.append(metric(y_pred=one_hot(pred, n), y=one_hot(label, n)))
    if per_case:
        per_class = do_metric_reduction(torch.cat(per_case), "mean_batch")[0].cpu().numpy()
    else:
        per_class = np.full(n - 1, np.nan)
    return {organ: float(v) for organ, v in zip(cfg.labels.organs, per_class, strict=True)}


def _threads_text() -> str:
    n = torch.get_num_threads()
    return f", {n} thread{'s' if n != 1 else ''}"


def _rounded(values: tuple[float, ...] | None) -> list[float] | None:
    return None if values is None else [round(v, 3) for v in values]


def mean_dice(dice: dict[str, float]) -> float:
    values = [v for v in dice.values() if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def load_resume_checkpoint(path: Path, cfg: Config, fold: int) -> dict:
    """A fold's checkpoint to resume from, checked against the run's fold and label map.

    ``ModelError`` when it is unreadable, unsafe (``load_checkpoint``), for another fold or for other
    labels; the file is only read.
    """
    ckpt = load_checkpoint(path)
    if ckpt.get("fold") != fold:
        raise ModelError(f"{path}: checkpoint is for fold {ckpt.get('fold')}, expected fold {fold}")
    saved = ckpt["config"].get("labels") if isinstance(ckpt["config"], dict) else None
    if saved is not None:
        try:
            names = [saved[k] for k in sorted(saved, key=int)]
        except (TypeError, ValueError, AttributeError):
            names = None
        if names != list(cfg.labels.names):
            raise ModelError(f"{path}: checkpoint labels {saved} differ from the config's")
    return ckpt


def init_weights(cfg: Config, source: str) -> tuple[Path, dict]:
    """The weights ``train.init_weights`` names (a file, a run, or ``builtin``), checked against ``cfg``.

    Returns (file, state dict for ``build_model(cfg)``). Raises ``ModelError`` naming the file when
    it is missing or unsafe, or when its labels or architecture differ from the config's.
    """
    path = resolve_model_files(default_model() if source == "builtin" else source, None)[0]
    net, other = load_model_file(path)
    if list(other.labels.names) != list(cfg.labels.names):
        raise ModelError(
            f"{path}: train.init_weights: model labels {list(other.labels.names)} differ from the "
            f"config's {list(cfg.labels.names)}"
        )
    try:
        build_model(cfg).load_state_dict(net.state_dict(), strict=True)
    except RuntimeError as err:
        raise ModelError(
            f"{path}: train.init_weights: weights do not fit this config's model ({state_dict_problem(err)})"
        ) from None
    return path, net.state_dict()


# --------------------------------------------------------------------------------------- one fold


class FoldTrainer:
    """Trains one fold; ``run()`` returns the best validation Dice per organ (and ``mean``).

    Args:
        cfg: resolved config.
        fold: fold index (names ``fold_<k>``).
        data: what to train and validate on.
        writer: where files go (a disabled writer on non-zero ranks).
        device: where the model runs.
        resume: continue from ``fold_<k>/checkpoint_last.pt`` when it exists.
        progress: show a tqdm bar per epoch.
        max_epochs: stop after this epoch number in this call (the schedule still spans ``train.epochs``).
        loader_factory: builds one shuffled pass over a volume dataset (inject a DistributedSampler here).
        interrupt: the Ctrl-C flag.
        is_main: validate and log only on the main process.
        version: organseg version stored in checkpoints.
        dist: the ``torchrun`` job this process belongs to (``training.distributed``): the model is
            wrapped in DDP, each rank trains on ``batch_size / world_size`` patches per step and the
            loss spans the global batch; ``None`` or one process: plain training.
    """

    def __init__(
        self,
        cfg: Config,
        fold: int,
        data: FoldData,
        writer: RunWriter,
        *,
        device: torch.device,
        resume: bool,
        progress: bool,
        max_epochs: int | None,
        loader_factory: LoaderFactory,
        interrupt: InterruptFlag,
        is_main: bool = True,
        version: str = "0",
        dist: DistContext | None = None,
    ):
        self.cfg, self.fold, self.data, self.writer = cfg, fold, data, writer
        self.device, self.resume, self.progress = device, resume, progress
        self.loader_factory, self.interrupt, self.is_main, self.version = (
            loader_factory,
            interrupt,
            is_main,
            version,
        )
        self.last_epoch = min(cfg.train.epochs, max_epochs) if max_epochs else cfg.train.epochs
        self.spe = steps_per_epoch(cfg, len(data.train_indices(1)))
        self.amp = amp_dtype(cfg, device)
        self.dist = dist
        self.rank = dist.rank if dist is not None else 0
        self.batch_size = rank_batch_size(cfg.train.batch_size, dist.world_size if dist else 1)

    def log(self, message: str) -> None:
        if self.is_main:
            self.writer.log(self.fold, message)

    # ------------------------------------------------------------------ state

    def _build(self) -> None:
        cfg = self.cfg
        torch.manual_seed(seed_for(cfg.train.seed, self.fold))
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed patch size: let cuDNN pick its fastest kernels
        self.model = build_model(cfg).to(self.device)
        self.train_model = wrap_model(self.model, self.dist)  # DDP; checkpoints save self.model
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(cfg, self.spe))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        self.loss_fn = wrap_loss(build_loss(cfg, self.data.label_counts).to(self.device), self.dist)
        self.state = {
            "epoch": 0,
            "epoch_step": 0,
            "step": 0,
            "best_metric": float("-inf"),
            "best_epoch": 0,
            "best_dice": {},
            "epoch_loss_sum": 0.0,
            "epoch_loss_count": 0,
            "early_stopped": False,
        }
        self.resume_rng: dict | None = None

    def _load(self, path: Path) -> None:
        ckpt = load_resume_checkpoint(path, self.cfg, self.fold)
        try:
            self.model.load_state_dict(ckpt["model"], strict=True)
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            if "scaler" in ckpt:
                self.scaler.load_state_dict(ckpt["scaler"])
        except (RuntimeError, KeyError, ValueError, TypeError) as err:
            first = state_dict_problem(err)
            raise ModelError(
                f"{path}: checkpoint does not fit this run's model/optimiser ({first})"
            ) from None
        for key in self.state:
            if key in ckpt:
                self.state[key] = ckpt[key]
        self.resume_rng = ckpt.get("rng")

    def _init_weights(self, source: str) -> Path:
        path, state = init_weights(self.cfg, source)
        self.model.load_state_dict(state, strict=True)
        return path

    def _checkpoint(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            **self.state,
            "finished": self.finished,
            "rng": capture_rng(),
            "config": config_to_dict(self.cfg),
            "fold": self.fold,
            "organseg_version": self.version,
        }

    @property
    def finished(self) -> bool:
        return bool(self.state["early_stopped"]) or self.state["epoch"] >= self.cfg.train.epochs

    # ------------------------------------------------------------------ loop

    def run(self) -> dict[str, float]:
        cfg = self.cfg
        self._build()
        last_path = fold_dir(self.writer.run_dir, self.fold) / LAST
        if self.resume and last_path.exists():
            self._load(last_path)
            self.log(f"resumed from {last_path} at epoch {self.state['epoch']} step {self.state['step']}")
        elif cfg.train.init_weights:
            self.log(f"weights initialised from {self._init_weights(cfg.train.init_weights)}")
        rows = [
            r
            for r in read_metrics(fold_dir(self.writer.run_dir, self.fold) / "metrics.csv")
            if int(r["epoch"]) <= self.state["epoch"]
        ]
        if self.finished:
            self.log(f"already finished at epoch {self.state['epoch']}")
            return self._best()
        self.log(
            f"training on {self.device} ({'mixed precision ' + str(self.amp).split('.')[-1] if self.amp else 'float32'}"
            f"{_threads_text() if self.device.type == 'cpu' else ''}): "
            f"epochs {self.state['epoch'] + 1}..{self.last_epoch} of {cfg.train.epochs}, {self.spe} steps x "
            f"{cfg.train.batch_size} patches {list(cfg.train.patch_size)}; data {self.data.summary}; "
            f"class weights {_rounded(self.loss_fn.class_weights)}"
        )
        random_tf = random_part(cfg)
        patience = cfg.train.early_stop_patience
        for epoch in range(self.state["epoch"] + 1, self.last_epoch + 1):
            t0 = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]  # the LR this epoch starts with
            loss = self._train_epoch(epoch, random_tf)
            self.state.update(epoch=epoch, epoch_step=0, epoch_loss_sum=0.0, epoch_loss_count=0)
            row: dict = {"epoch": epoch, "lr": lr, "train_loss": loss}
            if self.is_main and (epoch % cfg.train.val_every == 0 or epoch == self.last_epoch):
                dice = validate(self.model, self.data.val_samples(), cfg, self.device)
                row.update({f"dice_{o}": v for o, v in dice.items()}, dice_mean=mean_dice(dice))
                score = -1.0 if math.isnan(row["dice_mean"]) else row["dice_mean"]
                if score > self.state["best_metric"]:
                    self.state.update(
                        best_metric=score, best_epoch=epoch, best_dice=dict(dice, mean=row["dice_mean"])
                    )
                    self._save(BEST)
                elif patience > 0 and epoch - self.state["best_epoch"] >= patience:
                    self.state["early_stopped"] = True
            if epoch % cfg.train.val_every == 0 or epoch == self.last_epoch:  # rank 0 decides for all
                self.state["early_stopped"] = flag_from_main(self.state["early_stopped"], self.dist)
            row["time_s"] = time.perf_counter() - t0
            rows.append(row)
            # metrics first, checkpoint last: a kill in between leaves a row for an epoch that resume
            # repeats (and drops), never a checkpoint without its row
            self.writer.write_metrics(self.fold, rows, cfg.labels.organs)
            self.writer.plot_curves(self.fold, rows, cfg)
            self._save(LAST)
            dice_text = " ".join(
                f"{o} {row[f'dice_{o}']:.3f}" for o in cfg.labels.organs if f"dice_{o}" in row
            )
            self.log(
                f"epoch {epoch}/{cfg.train.epochs} loss {loss:.4f} lr {row['lr']:.2e} {dice_text} ({row['time_s']:.1f}s)"
            )
            if self.state["early_stopped"]:
                self.log(
                    f"early stop: no better validation Dice for {patience} epochs (best at epoch {self.state['best_epoch']})"
                )
                break
        return self._best()

    def _best(self) -> dict[str, float]:
        return dict(self.state["best_dice"])

    def _save(self, name: str) -> None:
        self.writer.save_checkpoint(self.fold, name, self._checkpoint())

    def _train_epoch(self, epoch: int, random_tf) -> float:
        cfg = self.cfg
        self.data.on_epoch(epoch)
        seed = seed_for(cfg.train.seed, self.fold, epoch)
        rank_seed = seed if self.rank == 0 else seed_for(seed, self.rank)  # ranks: own augmentation, dropout
        random_tf.set_random_state(rank_seed)
        dataset = PatchDataset(self.data.source, self.data.train_indices(epoch), random_tf)
        generator = torch.Generator().manual_seed(seed)
        batches = patch_batches(
            lambda: self.loader_factory(dataset, generator, cfg.train.num_workers), self.batch_size
        )
        skip = self.state["epoch_step"]
        if skip:  # resuming inside this epoch: replay its data, then the saved RNG
            for _ in range(skip):
                next(batches)
            restore_rng(self.resume_rng)
        else:
            torch.manual_seed(rank_seed)
        loss_sum, count = self.state["epoch_loss_sum"], self.state["epoch_loss_count"]
        self.train_model.train()
        bar = tqdm(
            total=self.spe,
            initial=skip,
            desc=f"fold {self.fold} epoch {epoch}/{cfg.train.epochs}",
            disable=not (self.progress and self.is_main),
            leave=False,
            dynamic_ncols=True,
        )
        try:
            for s in range(skip, self.spe):
                loss = self._step(next(batches))
                self.state["step"] += 1
                if math.isfinite(loss):
                    loss_sum, count = loss_sum + loss, count + 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                if any_rank(self.interrupt.requested, self.dist):
                    self.state.update(epoch_step=s + 1, epoch_loss_sum=loss_sum, epoch_loss_count=count)
                    self._save(LAST)
                    path = fold_dir(self.writer.run_dir, self.fold) / LAST
                    msg = (
                        f"interrupted at epoch {epoch} step {s + 1}/{self.spe}; saved {path}; "
                        f"continue with: organseg train --resume {self.writer.run_dir}"
                    )
                    self.log(msg)
                    raise TrainingInterrupted(msg)
        finally:
            bar.close()
            batches.close()
        return loss_sum / count if count else float("nan")

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
        image, label = (t.to(self.device, non_blocking=True) for t in batch)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            logits = self.train_model(image)
        loss = self.loss_fn(logits, label)
        if not torch.isfinite(loss):
            self.log(f"non-finite loss at step {self.state['step']}; step skipped")
            self.scheduler.step()
            return float("nan")
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        if self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return float(loss.detach())
