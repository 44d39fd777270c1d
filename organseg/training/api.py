"""``train()``, ``dry_run()`` and the ``organseg train`` command: run folder, splits, data, folds.

Example:
    >>> cfg = load_config("demo")
    >>> train(cfg, Path("data/phantoms"), Path("runs/demo"), folds=0)          # one fold
    >>> train(cfg, None, Path("runs/demo"), folds="all", resume=True)          # continue, every fold
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from organseg.config import Config
from organseg.errors import ConfigError, InputError, ModelError, OrgansegError
from organseg.modelstore import BEST, LAST, RUN_MARKER, fold_dir
from organseg.runtime import cpu_threads, resolve_device
from organseg.training import data as D
from organseg.training.control import InterruptFlag
from organseg.training.distributed import (
    DistContext,
    agree_on_error,
    cpu_threads_per_rank,
    from_main,
    rank_batch_size,
    rank_config,
    rank_loader_factory,
)
from organseg.training.loop import (
    FoldTrainer,
    LoaderFactory,
    init_weights,
    load_resume_checkpoint,
)
from organseg.training.runfolder import RunWriter, check_run_dir, write_cv_summary


def fold_indices(folds: int | Sequence[int] | str, k: int) -> list[int]:
    """``0``, ``[0, 2]`` or ``"all"`` -> fold indices; ``ConfigError`` when one is outside 0..k-1."""
    if isinstance(folds, str):
        if folds != "all":
            raise ConfigError(f"folds: expected a fold index or 'all', got {folds!r}")
        return list(range(k))
    chosen = [folds] if isinstance(folds, int) else list(folds)
    for f in chosen:
        if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f < k:
            raise ConfigError(f"fold {f}: out of range, expected 0..{k - 1} (train.folds = {k})")
    return sorted(set(chosen))


def _quiet(message: str) -> None:
    """A log function that drops the message (``progress=False``)."""


def _version() -> str:
    from organseg.version import __version__

    return __version__


def train(
    config: Config,
    data_dir: Path | str | None,
    run_dir: Path | str,
    folds: int | Sequence[int] | str = 0,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    max_epochs: int | None = None,
    *,
    is_main: bool = True,
    writer: RunWriter | None = None,
    loader_factory: LoaderFactory | None = None,
    interrupt: InterruptFlag | None = None,
    num_threads: int | None = None,
    phantom_generator: Callable[[int, Config], dict] | None = None,
    dist: DistContext | None = None,
) -> Path:
    """Train k-fold VNets into ``run_dir`` and return it.

    Args:
        config: resolved config (``train.synthetic.enabled`` trains on on-the-fly phantoms instead).
        data_dir: labelled dataset (MSD, FLARE, TotalSegmentator or plain layout); ``None`` uses
            ``data.root``, the run's recorded dataset on resume, or nothing for synthetic training.
        run_dir: run folder; created (must be absent or empty) unless ``resume``.
        folds: a fold index, a list of them, or ``"all"`` (synthetic training has one fold, 0).
        resume: continue an existing run folder from each fold's ``checkpoint_last.pt``.
        device: ``cpu``, ``cuda``, ``cuda:N``; default CUDA when present (mixed precision there).
        progress: tqdm bars and log lines on the terminal.
        max_epochs: stop after this epoch number in this call (the LR schedule still spans
            ``train.epochs``, so a later ``resume`` continues the same schedule).
        is_main: this process writes files and validates (rank 0 under torchrun).
        writer: file output (default ``RunWriter(run_dir, enabled=is_main)``).
        loader_factory: ``(dataset, generator, num_workers) -> iterator`` over lists of patches;
            inject one with a ``DistributedSampler`` for multi-GPU training.
        interrupt: the Ctrl-C flag (default: a fresh one installed for SIGINT while training).
        num_threads: CPU threads for torch on CPU (default ``cpu_threads()``: the free cores).
        phantom_generator: ``(seed, cfg) -> {"image", "label"}`` (``io.Volume`` s, or arrays plus an
            ``"affine"``) for synthetic training; default ``organseg.phantom.generate_case``.
        dist: the ``torchrun`` job (``training.distributed.init_from_env``): DDP on ``dist.device``,
            ``train.batch_size`` split over the ranks, rank 0 alone validates and writes. ``is_main``,
            ``writer`` and ``device`` then follow from it. Resuming with another world size keeps
            weights, optimiser, schedule and epoch; the per-rank batch and the rank shares change.

    Raises:
        InputError: missing dataset, a label value outside the label map (names the file), or a
            ``resume`` folder that is not a run. ConfigError: fold out of range, bad device.
        ModelError: an unreadable ``checkpoint_last.pt`` on resume (the file is left as it was).
        TrainingInterrupted: Ctrl-C, after saving ``checkpoint_last.pt``.
    """
    cfg = config
    run_dir = Path(run_dir)
    if dist is not None and dist.distributed:
        device, is_main = dist.device, dist.is_main
        rank_batch_size(cfg.train.batch_size, dist.world_size)  # refuse before touching the run folder
    dev = resolve_device(device)
    writer = writer or RunWriter(run_dir, enabled=is_main, echo=progress)
    synthetic = cfg.train.synthetic.enabled
    k = 1 if synthetic else cfg.train.folds
    chosen = fold_indices(folds, k)
    run_info = json.loads((check_run_dir(run_dir) / RUN_MARKER).read_text(encoding="utf-8")) if resume else {}
    if resume and run_info.get("task") not in (None, cfg.task):
        raise InputError(
            f"{run_dir}: run folder is for task {run_info.get('task')!r}, the config is for {cfg.task!r}; "
            "resume a run with its own config (organseg train --resume <run> reads it from the folder)"
        )
    if resume:  # refuse a bad checkpoint before reading the data or rewriting anything in the run
        for fold in chosen:
            if (fold_dir(run_dir, fold) / LAST).exists():
                load_resume_checkpoint(fold_dir(run_dir, fold) / LAST, cfg, fold)
    if cfg.train.init_weights and not resume:  # refuse unfit starting weights before writing anything
        init_weights(cfg, cfg.train.init_weights)
    cases, names, counts = [], [], {}
    if not synthetic:
        data_dir = data_dir or run_info.get("data_dir") or cfg.data.root or None
        if not data_dir:
            raise InputError(
                "training data: pass a dataset folder (--data), set data.root, or enable train.synthetic"
            )
        data_dir = Path(data_dir)
        cases = D.find_training_cases(cfg, data_dir, log=print if progress else _quiet)
        names = [c.name for c in cases]
        splits = _load_or_make_splits(run_dir, names, k, cfg.train.seed, resume)
        counts = D.count_case_labels(
            cases, cfg, D.load_label_counts(run_dir / "label_counts.json") if resume else None
        )
    else:
        splits = [
            {
                "train": "synthetic phantom pool",
                "val": [
                    f"phantom_{cfg.train.synthetic.seed + 1_000_000 + i}"
                    for i in range(cfg.train.synthetic.val_cases)
                ],
            }
        ]

    refused = None
    try:  # only rank 0 touches the run folder; its refusal stops every rank
        writer.create(
            cfg, chosen, resume, extra={"data_dir": None if synthetic else str(Path(data_dir).resolve())}
        )
        if is_main:
            writer.write_json(
                "splits.json", {"k": k, "seed": cfg.train.seed, "synthetic": synthetic, "folds": splits}
            )
            if counts:
                writer.write_json("label_counts.json", counts)
    except OrgansegError as err:
        refused = err
    agree_on_error(refused, dist)

    previous_threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(num_threads or (cpu_threads_per_rank(dist) if dist else cpu_threads()))
    elif num_threads or cfg.train.num_workers > 0:
        # on a GPU the loader workers do the CPU work; a main process with one OpenMP thread per core
        # competes with them for the cores (measured: 225 vs 107 patches/s with 8 workers, BENCHMARKS.md)
        torch.set_num_threads(num_threads or 1)
    interrupt = interrupt or InterruptFlag()
    factory = loader_factory or D.default_loader_factory
    if loader_factory is None and dist is not None and dist.distributed:
        factory = rank_loader_factory(
            dist, rank_batch_size(cfg.train.batch_size, dist.world_size), cfg.train.samples_per_volume
        )
    results: dict[int, dict[str, float]] = {}
    try:
        with interrupt.installed():
            source = None
            if not synthetic:
                source = D.build_source(
                    cases, cfg, run_dir / "cache", num_workers=cfg.train.num_workers, progress=progress
                )
            for fold in chosen:
                if synthetic:
                    fold_data = D.synthetic_fold_data(
                        rank_config(cfg, dist), phantom_generator or D.generate_phantom
                    )
                else:
                    fold_data = D.real_fold_data(cfg, source, names, splits[fold], counts)
                # rank 0's class frequencies everywhere: one loss on all ranks
                fold_data.label_counts = np.asarray(from_main(fold_data.label_counts, dist))
                trainer = FoldTrainer(
                    cfg,
                    fold,
                    fold_data,
                    writer,
                    device=dev,
                    resume=resume,
                    progress=progress,
                    max_epochs=max_epochs,
                    loader_factory=factory,
                    interrupt=interrupt,
                    is_main=is_main,
                    version=_version(),
                    dist=dist,
                )
                try:
                    results[fold] = trainer.run()
                finally:
                    fold_data.close()
    except RuntimeError as err:
        cause = _user_error_inside(err)
        if cause is None:
            raise
        raise cause from None
    finally:
        torch.set_num_threads(previous_threads)
    if is_main:
        per_fold = _collect_fold_results(run_dir, k, results)
        write_cv_summary(writer, cfg.labels.organs, per_fold)
    return run_dir


def _user_error_inside(err: BaseException) -> OrgansegError | None:
    """The ``OrgansegError`` (e.g. a corrupt image) that MONAI wrapped in ``RuntimeError: applying transform``."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, OrgansegError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def _load_or_make_splits(run_dir: Path, names: list[str], k: int, seed: int, resume: bool) -> list[dict]:
    path = run_dir / "splits.json"
    if resume and path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("k") == k:
                return saved["folds"]
        except (json.JSONDecodeError, KeyError, AttributeError):
            raise InputError(f"{path}: not a valid splits file") from None
    return D.make_splits(names, k, seed)


def _collect_fold_results(
    run_dir: Path, k: int, fresh: dict[int, dict[str, float]]
) -> dict[int, dict[str, float]]:
    """Best Dice per fold: this call's results, plus folds trained earlier (from their best checkpoint)."""
    from organseg.checkpoint import load_checkpoint

    per_fold = {f: r for f, r in fresh.items() if r}
    for f in range(k):
        path = fold_dir(run_dir, f) / BEST
        if f not in per_fold and path.is_file():
            try:
                per_fold[f] = dict(load_checkpoint(path).get("best_dice", {}))
            except ModelError:
                continue
    return per_fold


# --------------------------------------------------------------------------------------- dry run


def dry_run(cfg: Config, data_dir: Path | str | None = None, print_fn=print) -> dict:
    """Model size, GFLOPs per patch and a data summary, without training; printed and returned."""
    from organseg.checkpoint import build_model
    from organseg.training.control import steps_per_epoch
    from organseg.vnet import count_flops, count_parameters

    model = build_model(cfg)
    patch = tuple(cfg.train.patch_size)
    info: dict = {
        "task": cfg.task,
        "parameters": count_parameters(model),
        "gflops_per_patch": round(count_flops(model, patch) / 1e9, 2),
        "patch_size": list(patch),
        "batch_size": cfg.train.batch_size,
        "classes": list(cfg.labels.names),
    }
    if cfg.train.synthetic.enabled:
        syn = cfg.train.synthetic
        info["data"] = {
            "source": "synthetic",
            "pool_size": syn.pool_size,
            "cases_per_epoch": syn.cases_per_epoch,
        }
        info["steps_per_epoch"] = steps_per_epoch(cfg, syn.cases_per_epoch)
    else:
        data_dir = data_dir or cfg.data.root or None
        if data_dir:
            cases = D.find_training_cases(cfg, Path(data_dir))
            n_train = len(cases) - len(cases) // cfg.train.folds if cfg.train.folds > 1 else len(cases)
            info["data"] = {
                "source": str(data_dir),
                "cases": len(cases),
                "folds": cfg.train.folds,
                "train_cases_per_fold": n_train,
            }
            info["steps_per_epoch"] = steps_per_epoch(cfg, n_train)
        else:
            info["data"] = {"source": None}
    for key, value in info.items():
        print_fn(f"{key:>18}: {value}")
    return info
