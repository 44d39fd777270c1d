"""Training data: preprocessed volumes (cached once), patch datasets, splits and the phantom pool.

Both data sources end in the same shape: a ``source`` indexable by case number that returns a
preprocessed ``{"image", "label", "name"}`` sample (``transforms.preprocess_transforms``: RAS, target
spacing, body crop, normalised), and a ``PatchDataset`` that runs only the random part (pad, pos/neg
patch sampling, augmentation) on top. So each CT is read and resampled once per run, not once per epoch:

- real data: ``build_source`` wraps the cases in MONAI ``CacheDataset`` (``cache: memory``),
  ``PersistentDataset`` (``cache: disk``, in ``run_dir/cache``) or ``Dataset`` (``cache: none``);
- synthetic data: ``PhantomPool`` keeps ``pool_size`` preprocessed phantoms in memory and replaces
  ``refresh_per_epoch`` of them at each epoch, deterministically from the epoch number.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.transforms import Compose

from organseg import transforms as T
from organseg.config import VARIANT_FRACTIONS, Config
from organseg.errors import ConfigError, InputError
from organseg.labels import describe_unexpected, label_voxel_counts, remap_labels


def seed_for(*parts: int) -> int:
    """A 31-bit seed derived from integers (run seed, fold, epoch, ...), stable across runs and platforms."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


# --------------------------------------------------------------------------------------- sources


@dataclass
class FoldData:
    """What one fold trains on.

    Attributes:
        source: preprocessed samples by case number (``source[i]`` -> dict).
        train_indices: case numbers to sample patches from; may change each epoch (``on_epoch``).
        val_samples: preprocessed whole validation volumes (callable so they load lazily).
        label_counts: voxels per label id over the training cases (for ``class_weights: auto``).
        on_epoch: called with the 1-based epoch number before it starts (refreshes the phantom pool).
        summary: plain-data description for logs and ``dry_run``.
        close: releases what the data holds (the phantom pool's worker processes).
    """

    source: Sequence[dict]
    train_indices: Callable[[int], list[int]]
    val_samples: Callable[[], Iterator[dict]]
    label_counts: np.ndarray
    on_epoch: Callable[[int], None] = lambda epoch: None
    summary: dict = field(default_factory=dict)
    close: Callable[[], None] = lambda: None


class CaseReader:
    """Reads a dataset case by name (``datasets.read_case``): label remapped to our ids, on the image grid.

    A picklable, deterministic first step for the preprocessing pipeline; the item keeps its
    ``image``/``label`` paths only so that caches can hash it.
    """

    def __init__(self, cases: Sequence, cfg: Config):
        self.cases = {c.name: c for c in cases}
        self.cfg = cfg

    def __call__(self, item: dict) -> dict:
        from organseg.datasets import read_case

        image, label = read_case(self.cases[item["name"]], self.cfg)
        return {**item, "image": image, "label": label}


def build_source(
    cases: Sequence, cfg: Config, cache_dir: Path | None, num_workers: int = 0, progress: bool = True
) -> Dataset:
    """Preprocessed samples of ``cases`` (``datasets.Case``), in order, cached per ``cfg.train.cache``.

    ``memory``: MONAI ``CacheDataset``; ``disk``: ``PersistentDataset`` in ``cache_dir``; ``none``:
    preprocessed again at every access.
    """
    items = [{"image": str(c.image), "label": str(c.label), "name": c.name} for c in cases]
    pipeline = T.val_transforms(cfg, reader=CaseReader(cases, cfg))
    mode = cfg.train.cache
    if mode == "memory":
        return CacheDataset(
            items,
            pipeline,
            cache_rate=1.0,
            num_workers=max(1, num_workers),
            progress=progress,
            copy_cache=False,
        )
    if mode == "disk":
        if cache_dir is None:
            raise ConfigError("train.cache: 'disk' needs a run folder for its cache")
        cache_dir.mkdir(parents=True, exist_ok=True)
        return PersistentDataset(items, pipeline, cache_dir=cache_dir)
    return Dataset(items, pipeline)


def _plain(sample: dict) -> dict:
    """Image and label of a cached sample as plain tensors sharing its memory.

    No copy is needed: every random transform after the cache works out of place (crops are views
    that are only read, flips and intensity changes make new tensors). Dropping the MetaTensor
    wrapper keeps the transforms from growing the cached sample's ``applied_operations``.
    """
    return {k: torch.as_tensor(sample[k]).as_subclass(torch.Tensor) for k in ("image", "label")}


class PatchDataset(torch.utils.data.Dataset):
    """Random patches from preprocessed samples: item ``i`` is a list of ``samples_per_volume`` patch dicts.

    Args:
        source: preprocessed samples by case number.
        indices: which case numbers this dataset covers (its length).
        transform: the random part (``transforms.patch_transforms + augment_transforms``).
    """

    def __init__(self, source: Sequence[dict], indices: Sequence[int], transform: Compose):
        self.source = source
        self.indices = list(indices)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> list[dict]:
        out = self.transform(_plain(self.source[self.indices[i]]))
        return out if isinstance(out, list) else [out]


def random_part(cfg: Config) -> Compose:
    """Patch sampling and augmentation, applied after the cached preprocessing."""
    return Compose(T.patch_transforms(cfg) + T.augment_transforms(cfg))


# --------------------------------------------------------------------------------------- real data


def find_training_cases(cfg: Config, data_dir: Path, log: Callable[[str], None] = print) -> list:
    """Usable labelled cases in ``data_dir`` (``datasets.load_dataset``); skipped cases are logged."""
    from organseg.datasets import load_dataset

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(f"{data_dir}: dataset folder not found")
    report = load_dataset(data_dir, cfg)
    if report.problems or report.warnings:
        log(report.summary())
    return list(report.cases)


def count_case_labels(
    cases: Sequence, cfg: Config, known: dict[str, list[int]] | None = None
) -> dict[str, list[int]]:
    """Voxels per organseg label id for each case; validates every label file once, up front.

    Raises ``InputError`` naming the case and its label file when the file holds values that the
    label mapping (``data.label_map``, ``data.label_preset``, the dataset's own label names, or
    organseg ids) does not know: training refuses to turn them silently into background. With a
    preset, other values are expected (TotalSegmentator has 117 structures) and become background.
    """
    from organseg import io
    from organseg.datasets import label_mapping, unexpected_values

    counts = dict(known or {})
    n = cfg.labels.num_classes
    for case in cases:
        if case.name in counts:
            continue
        if case.label.is_dir():  # TotalSegmentator: one binary mask per organ
            total = np.zeros(n, dtype=np.int64)
            for organ in cfg.labels.organs:
                path = case.label / f"{organ}.nii.gz"
                if path.is_file():
                    total[cfg.labels.id_of(organ)] = int(
                        np.count_nonzero(io.read_image(path, kind="mask").array)
                    )
            total[0] = max(0, int(np.prod(io.read_image_info(case.image).shape)) - int(total[1:].sum()))
            counts[case.name] = total.tolist()
            continue
        raw = io.read_image(case.label, kind="mask").array
        unknown = unexpected_values(case, cfg, raw)
        if unknown:
            raise InputError(f"{case.label}: case {case.name}: {describe_unexpected(unknown, cfg.labels)}")
        mapped = remap_labels(raw, label_mapping(cfg, case.label_names), str(case.label))
        counts[case.name] = label_voxel_counts([mapped], n).tolist()
    return counts


def load_label_counts(path: Path) -> dict[str, list[int]]:
    try:
        return {k: list(v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}
    except (OSError, json.JSONDecodeError, AttributeError):
        return {}


def make_splits(case_names: Sequence[str], k: int, seed: int) -> list[dict[str, list[str]]]:
    """Case-level k-fold splits (``organseg.datasets.kfold_splits``); ``ConfigError`` if too few cases."""
    from organseg.datasets import kfold_splits

    if k > len(case_names):
        raise ConfigError(
            f"train.folds: {k} folds need at least {k} cases, the dataset has {len(case_names)}"
        )
    if k == 1:
        return [{"train": sorted(case_names), "val": sorted(case_names)}]
    return kfold_splits(list(case_names), k, seed)


def real_fold_data(
    cfg: Config, source: Dataset, names: list[str], split: dict[str, list[str]], counts: dict[str, list[int]]
) -> FoldData:
    """Fold data over an already built ``source`` whose items are in the order of ``names``."""
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in split["train"] + split["val"] if n not in index]
    if missing:
        raise InputError(f"splits.json: cases {missing[:5]} are not in the dataset any more")
    train_idx = [index[n] for n in split["train"]]
    val_idx = [index[n] for n in split["val"]]
    label_counts = np.sum([counts[n] for n in split["train"]], axis=0)

    def val_samples() -> Iterator[dict]:
        for i in val_idx:
            yield source[i]

    return FoldData(
        source=source,
        train_indices=lambda epoch: train_idx,
        val_samples=val_samples,
        label_counts=np.asarray(label_counts, dtype=np.int64),
        summary={"train_cases": len(train_idx), "val_cases": len(val_idx), "source": "dataset"},
    )


# --------------------------------------------------------------------------------------- synthetic data


def generate_phantom(seed: int, cfg: Config) -> dict:
    """One phantom as ``{"image": Volume, "label": Volume}`` at the target spacing, with our label ids.

    A share ``train.synthetic.wild_fraction`` of the seeds (chosen from the seed alone) gets the
    ``wild`` phase, every tissue's HU drawn on its own (domain randomization); the others a real phase.
    A share ``train.synthetic.label_map_fraction`` of the seeds (also from the seed alone) is rendered
    from a real label map instead (``phantom.labelmaps.training_sample``). The ``*_fraction`` variants
    (thin slab, arms, table, truncation, oral contrast, extreme organs) and ``rotation_deg`` go to the
    phantom as ``phantom.variants.Variants``, which draws them from the seed's own stream.
    """
    import inspect

    from organseg import phantom

    syn = cfg.train.synthetic
    if syn.label_map_fraction > 0 and np.random.default_rng([int(seed), 29]).random() < syn.label_map_fraction:
        from organseg.phantom.labelmaps import training_sample  # real anatomy, phantom appearance

        return training_sample(seed, cfg)
    wild = syn.wild_fraction > 0 and np.random.default_rng([int(seed), 17]).random() < syn.wild_fraction
    accepted = inspect.signature(phantom.generate_case).parameters
    options = {
        "spacing_mm": tuple(cfg.preprocess.spacing_mm),
        "labels": cfg.labels,
        "perirenal_fat": syn.perirenal_fat,
        "phase": "wild" if wild else "random",
    }
    if syn.rotation_deg > 0 or any(getattr(syn, name) > 0 for name in VARIANT_FRACTIONS):
        from organseg.phantom.variants import Variants

        shares = {name.removesuffix("_fraction"): getattr(syn, name) for name in VARIANT_FRACTIONS}
        options["variants"] = Variants(rotation_deg=syn.rotation_deg, **shares)
    image, label = phantom.generate_case(seed, **{k: v for k, v in options.items() if k in accepted})
    return {"image": image, "label": label, "name": f"phantom_{seed}"}


def _single_threaded() -> None:
    """Initializer of phantom worker processes: one thread each, so that they share the cores fairly."""
    torch.set_num_threads(1)


def _make_sample(
    seed: int, cfg: Config, generate: Callable[[int, Config], dict], pipeline: Compose | None = None
) -> dict:
    """One preprocessed phantom (``val_transforms``: RAS, spacing, body crop, normalised) named by seed.

    ``pipeline``: ``val_transforms(cfg)`` when the caller holds one (worker processes build their own).
    """
    raw = generate(seed, cfg)
    sample = (pipeline or T.val_transforms(cfg))({k: v for k, v in raw.items() if k != "name"})
    sample["name"] = f"phantom_{seed}"
    return sample


class PhantomPool(Sequence):
    """``pool_size`` preprocessed phantoms in memory; ``refresh(epoch)`` replaces ``refresh_per_epoch``.

    Which phantom sits in which slot is a pure function of the epoch (``seeds_at``), so a resumed run
    rebuilds exactly the pool the interrupted run had. With ``train.synthetic.workers > 0`` the
    phantoms are made in that many worker processes (spawned: safe after CUDA is initialised), and
    the ones the next epoch needs are started while the current epoch trains; the result is the same
    as in-process generation, since each phantom depends only on its seed.
    """

    def __init__(self, cfg: Config, generate: Callable[[int, Config], dict] = generate_phantom):
        self.cfg = cfg
        self.syn = cfg.train.synthetic
        self.generate = generate
        self.pipeline = T.val_transforms(cfg)
        self.slots: dict[int, tuple[int, dict]] = {}
        self._executor = None
        self._pending: dict[int, object] = {}  # seed -> Future

    def seeds_at(self, epoch: int) -> list[int]:
        """Phantom seed in each slot during the 1-based ``epoch`` (refreshes happen from epoch 2 on)."""
        p, r, base = self.syn.pool_size, self.syn.refresh_per_epoch, self.syn.seed
        replaced = max(0, epoch - 1) * r
        seeds = []
        for j in range(p):
            if replaced > j:
                last = j + p * ((replaced - 1 - j) // p)
                seeds.append(base + p + last)
            else:
                seeds.append(base + j)
        return seeds

    def refresh(self, epoch: int) -> None:
        wanted = self.seeds_at(epoch)
        held = {seed for seed, _ in self.slots.values()}
        self._start([s for s in wanted if s not in held])
        for slot, seed in enumerate(wanted):
            if slot not in self.slots or self.slots[slot][0] != seed:
                self.slots[slot] = (seed, self._take(seed))
        held = {seed for seed, _ in self.slots.values()}
        self._start([s for s in self.seeds_at(epoch + 1) if s not in held])  # prefetch

    def make_many(self, seeds: Sequence[int]) -> list[dict]:
        """Preprocessed phantoms for ``seeds``, in order (in parallel when there are workers)."""
        self._start(list(seeds))
        return [self._take(s) for s in seeds]

    def make(self, seed: int) -> dict:
        return _make_sample(seed, self.cfg, self.generate, self.pipeline)

    def _start(self, seeds: list[int]) -> None:
        if self.syn.workers < 1:
            return
        if self._executor is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._executor = ProcessPoolExecutor(
                self.syn.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_single_threaded,
            )
        for s in seeds:
            if s not in self._pending:
                self._pending[s] = self._executor.submit(_make_sample, s, self.cfg, self.generate)

    def _take(self, seed: int) -> dict:
        future = self._pending.pop(seed, None)
        return future.result() if future is not None else self.make(seed)

    def close(self) -> None:
        """Stop the worker processes (pending phantoms are dropped)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self._pending.clear()

    def __len__(self) -> int:
        return self.syn.pool_size

    def __getitem__(self, i: int) -> dict:  # type: ignore[override]
        return self.slots[i][1]


def synthetic_fold_data(cfg: Config, generate: Callable[[int, Config], dict] = generate_phantom) -> FoldData:
    """Phantom pool for training plus ``val_cases`` fixed validation phantoms (seeds far from the pool's)."""
    syn = cfg.train.synthetic
    if syn.pool_size < 1 or syn.cases_per_epoch < 1:
        raise ConfigError("train.synthetic: pool_size and cases_per_epoch must be >= 1")
    if syn.label_map_fraction > 0:  # bad label maps fail here, before any worker starts
        from organseg.phantom.labelmaps import check_training_label_maps

        check_training_label_maps(cfg)
    pool = PhantomPool(cfg, generate)  # filled by on_epoch, for the epoch training starts at
    val_seeds = [syn.seed + 1_000_000 + i for i in range(syn.val_cases)]
    val_cache = pool.make_many(val_seeds)

    def val_samples() -> Iterator[dict]:
        yield from val_cache

    def train_indices(epoch: int) -> list[int]:
        rng = np.random.default_rng(seed_for(syn.seed, epoch, 7))
        return rng.integers(0, len(pool), size=syn.cases_per_epoch).tolist()

    # class frequencies from the fixed validation phantoms (same generator), so that a resumed run
    # weighs the classes exactly as the interrupted one did
    if not val_cache:
        pool.refresh(1)
    counted = val_cache or [pool[i] for i in range(len(pool))]
    counts = label_voxel_counts([s["label"] for s in counted], cfg.labels.num_classes)
    return FoldData(
        source=pool,
        train_indices=train_indices,
        val_samples=val_samples,
        label_counts=counts,
        on_epoch=pool.refresh,
        close=pool.close,
        summary={
            "source": "synthetic",
            "pool_size": syn.pool_size,
            "refresh_per_epoch": syn.refresh_per_epoch,
            "cases_per_epoch": syn.cases_per_epoch,
            "val_cases": syn.val_cases,
            "workers": syn.workers,
        },
    )


# --------------------------------------------------------------------------------------- batches


def first_item(batch: list) -> list[dict]:
    """``collate_fn`` for volume loaders with batch size 1: the volume's list of patches (picklable)."""
    return batch[0]


def default_loader_factory(
    dataset: torch.utils.data.Dataset, generator: torch.Generator, num_workers: int
) -> Iterator:
    """One shuffled pass over ``dataset`` (volumes), each item a list of patch dicts."""
    from monai.data import DataLoader

    return iter(
        DataLoader(
            dataset,
            batch_size=1,
            shuffle=True,
            generator=generator,
            num_workers=num_workers,
            collate_fn=first_item,
            persistent_workers=False,
        )
    )


def patch_batches(
    make_pass: Callable[[], Iterator[list[dict]]], batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless ``(image, label)`` batches of exactly ``batch_size`` patches (N, 1, X, Y, Z).

    Patches of one volume may be split over two batches; a new pass over the volumes starts when
    one ends (``make_pass``), so an epoch can be any number of steps.
    """
    buffer: list[dict] = []
    while True:
        got_any = False
        for patches in make_pass():
            got_any = True
            buffer.extend(patches)
            while len(buffer) >= batch_size:
                chunk, buffer = buffer[:batch_size], buffer[batch_size:]
                image = torch.stack([torch.as_tensor(p["image"]).as_subclass(torch.Tensor) for p in chunk])
                label = torch.stack([torch.as_tensor(p["label"]).as_subclass(torch.Tensor) for p in chunk])
                yield image.float(), label
        if not got_any:
            raise InputError("training data: the training set is empty")
