"""Data-parallel training under ``torchrun``: process group, DDP model, global-batch loss, rank shares.

Everything here is PyTorch's own engine (``torch.distributed``, ``DistributedDataParallel``); organseg
only decides *what* each rank does:

- **Launch**: ``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address;
  ``init_from_env`` reads them once and returns a ``DistContext`` that is passed in as an argument
  (no global state). Backend: NCCL on CUDA (each rank on ``cuda:LOCAL_RANK``), gloo on CPU. Every
  collective gives up after ``timeout_s`` (default 30 min), so a rank that vanished cannot hang the rest
  for ever; ``torchrun`` itself stops the whole job when one worker dies.
- **Batch**: ``train.batch_size`` is the *global* batch; each of N ranks trains on ``batch_size / N``
  patches per step (``ConfigError`` when N does not divide it). Steps per epoch, learning-rate
  schedule and checkpoints are those of one process with the full batch.
- **Same math as one process**: the network sees only its rank's patches (instance norm works per
  sample), and the loss is computed on the *global* batch: logits are gathered with the
  autograd-aware all-gather of ``torch.distributed`` (``GlobalBatchLoss``), because the
  Dice term sums over the whole batch (``batch=True``) and a mean of per-rank Dice values is not the
  Dice of the batch. DDP averages gradients; with the gather's backward summing over ranks that
  average is exactly the gradient of the one-process loss.
- **Data**: ``rank_loader_factory`` replays the one-process shuffle and gives rank r the volumes that
  fill its slice of every global batch, so the ranks' shares are disjoint and their concatenation is
  the one-process batch when the random part is deterministic. Random patch sampling and
  augmentation are seeded from the rank; synthetic phantoms come from a rank-shifted seed range
  (``rank_config``), so no two ranks train on the same phantom.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from organseg.config import Config, replace_path
from organseg.errors import ConfigError, OrgansegError
from organseg.runtime import resolve_device

#: Seeds of on-the-fly phantoms on rank r start ``r * PHANTOM_SEED_STRIDE`` above the config's seed
#: (pool refreshes use a few thousand seeds per run and validation ``seed + 1_000_000 + i``).
PHANTOM_SEED_STRIDE = 10_000_000

DEFAULT_TIMEOUT_S = 1800.0

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a ``torchrun`` job.

    Attributes:
        rank: global rank (0..world_size-1); rank 0 validates, logs and writes.
        world_size: number of processes (1: not distributed, nothing is initialised).
        local_rank: rank on this node; picks the GPU (``cuda:local_rank``).
        device: this rank's device.
        backend: ``nccl``, ``gloo`` or ``None`` when not distributed.
        local_world_size: processes on this node (they share its CPU cores).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def torchrun_world_size(env: Mapping[str, str] | None = None) -> int:
    """``WORLD_SIZE`` that ``torchrun`` set (1 when launched without it)."""
    env = os.environ if env is None else env
    try:
        return max(1, int(env.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def init_from_env(
    device: str | torch.device | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    env: Mapping[str, str] | None = None,
) -> DistContext:
    """Join the ``torchrun`` process group described by the environment, or return a one-process context.

    Args:
        device: ``cpu`` forces gloo on CPU; ``cuda`` or ``None`` (CUDA when present) puts each rank on
            ``cuda:LOCAL_RANK`` with NCCL. A ``cuda:N`` index is ignored under torchrun (``LOCAL_RANK``
            decides), since every rank on one GPU would serialise them.
        timeout_s: seconds a collective may wait for the other ranks before it fails.
        env: the environment (default ``os.environ``).
    """
    env = os.environ if env is None else env
    world = torchrun_world_size(env)
    if world == 1:
        return DistContext(device=resolve_device(device))
    try:
        int(env["RANK"])
        local_rank = int(env.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError):
        raise ConfigError("torchrun: WORLD_SIZE is set but RANK is missing or not a number") from None
    wanted = resolve_device(device)
    if wanted.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"torchrun: LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s); "
                "use --nproc-per-node <= the GPUs per node"
            )
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend,
            timeout=timedelta(seconds=timeout_s),
            device_id=dev if dev.type == "cuda" else None,
        )
    local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, backend, local_world)


def cpu_threads_per_rank(ctx: DistContext | None) -> int:
    """Torch CPU threads for one rank: the free cores shared among the ranks on this node."""
    from organseg.runtime import cpu_threads

    share = ctx.local_world_size if ctx is not None and ctx.distributed else 1
    return max(1, cpu_threads() // share)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (no-op for one process)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def session(
    device: str | torch.device | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
) -> Iterator[DistContext]:
    """``init_from_env`` for the ``with`` block, ``shutdown`` after it (also on errors).

    Under torchrun, SIGTERM (how torchrun stops the other ranks when one dies) becomes ``SystemExit``
    inside the block, so that atomic writes in progress remove their temporary files on the way out.
    """
    import signal

    ctx = init_from_env(device, timeout_s)
    previous = None
    if ctx.distributed:
        try:
            previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        except ValueError:  # not the main thread: leave signals alone
            previous = None
    try:
        yield ctx
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        shutdown(ctx)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


# --------------------------------------------------------------------------------------- agreement


def rank_batch_size(batch_size: int, world_size: int) -> int:
    """Patches per rank and step: ``train.batch_size / world_size``; ``ConfigError`` if not whole."""
    if batch_size % world_size:
        raise ConfigError(
            f"train.batch_size: the global batch {batch_size} cannot be split over {world_size} processes; "
            f"use a multiple of {world_size} (--set train.batch_size=...) or another --nproc-per-node"
        )
    return batch_size // world_size


def agree_on_error(error: OrgansegError | None, ctx: DistContext | None) -> None:
    """Raise rank 0's error (if any) on every rank, so a refusal that only rank 0 can see (it alone
    touches the run folder) stops all ranks with the same one-line message instead of a hang."""
    if ctx is None or not ctx.distributed:
        if error is not None:
            raise error
        return
    box = [None if error is None else (type(error).__name__, str(error))]
    dist.broadcast_object_list(box, src=0)
    if box[0] is not None:
        import organseg.errors as errors

        kind, message = box[0]
        raise getattr(errors, kind, OrgansegError)(message)


def from_main(value: T, ctx: DistContext | None) -> T:
    """Rank 0's copy of a small picklable value on every rank (class frequencies, a run folder name)."""
    if ctx is None or not ctx.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def flag_from_main(flag: bool, ctx: DistContext | None) -> bool:
    """Rank 0's decision (early stop after its validation) on every rank."""
    if ctx is None or not ctx.distributed:
        return flag
    t = torch.tensor([int(flag)], device=ctx.device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def any_rank(flag: bool, ctx: DistContext | None) -> bool:
    """True on every rank when it is true on one (Ctrl-C reaches ranks at different steps)."""
    if ctx is None or not ctx.distributed:
        return flag
    t = torch.tensor([int(flag)], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


# --------------------------------------------------------------------------------------- model and loss


def wrap_model(model: nn.Module, ctx: DistContext | None) -> nn.Module:
    """``DistributedDataParallel(model)`` under torchrun, else ``model``; checkpoints keep the plain one."""
    if ctx is None or not ctx.distributed:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


class GlobalBatchLoss(nn.Module):
    """``loss(all ranks' logits, all ranks' labels)``: the one-process loss of the global batch.

    The logits are gathered with an autograd-aware all-gather (``_gather_with_grad``), whose backward sums
    the gradients of every rank's (identical) loss, i.e. N times the gradient for this rank's logits;
    DDP's average over N ranks then gives exactly the gradient of the one-process loss. The labels
    need no gradient (plain ``all_gather``). Costs one gather of the logits per step.
    """

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss
        self.class_weights = getattr(loss, "class_weights", None)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        every_logits = _gather_with_grad(logits.contiguous())
        labels = [torch.empty_like(label) for _ in range(dist.get_world_size())]
        dist.all_gather(labels, label.contiguous())
        return self.loss(every_logits, torch.cat(labels, dim=0))


def _gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` concatenated along dim 0; the backward sums each slice's gradient over ranks."""
    try:  # what torch 2.13 recommends in place of torch.distributed.nn.functional.all_gather
        from torch.distributed._functional_collectives import all_gather_single_autograd
    except ImportError:
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(x), dim=0)
    return torch.as_tensor(all_gather_single_autograd(x, 0, dist.group.WORLD))


def wrap_loss(loss: nn.Module, ctx: DistContext | None) -> nn.Module:
    return GlobalBatchLoss(loss) if ctx is not None and ctx.distributed else loss


# --------------------------------------------------------------------------------------- data shares


def rank_config(cfg: Config, ctx: DistContext | None) -> Config:
    """The config this rank builds its data from: phantom seeds shifted by ``rank * PHANTOM_SEED_STRIDE``.

    Rank 0 keeps the config's seeds, so a one-process run and rank 0 draw the same phantoms.
    """
    if ctx is None or not ctx.distributed or ctx.rank == 0:
        return cfg
    return replace_path(
        cfg, "train.synthetic.seed", cfg.train.synthetic.seed + ctx.rank * PHANTOM_SEED_STRIDE
    )


def rank_positions(n: int, rank: int, world: int, rank_batch: int, per_volume: int) -> list[int]:
    """Positions (0..n-1) in one pass's global order whose patches land in ``rank``'s batch slices.

    One process fills batch k with the patches of positions ``k*B/s .. (k+1)*B/s - 1`` (B the global
    batch, s patches per volume); rank r's slice of it is ``[r*b, (r+1)*b)`` with ``b = B/N``. When
    ``b`` is a multiple of ``s`` whole volumes fit in a slice and the shares reproduce the one-process
    batches; otherwise the positions are dealt round-robin (disjoint, not batch-aligned).
    """
    if rank_batch % per_volume == 0:
        global_batch = rank_batch * world
        mine = [j for j in range(n) if (j * per_volume % global_batch) // rank_batch == rank]
    else:
        mine = list(range(rank, n, world))
    return mine or ([rank % n] if n else [])  # fewer volumes than ranks: repeat one rather than stall


def rank_loader_factory(ctx: DistContext, rank_batch: int, per_volume: int) -> Callable:
    """A ``LoaderFactory`` for this rank: the one-process shuffle, this rank's positions of it.

    The shuffle is drawn exactly as ``data.default_loader_factory`` draws it (a ``DataLoader`` with
    ``shuffle=True`` on the shared generator, over the indices), so every rank agrees on the global
    order without communicating; the rank's own loader gets a generator derived from the rank, which
    seeds its worker processes' random transforms.
    """
    from monai.data import DataLoader

    from organseg.training.data import first_item, seed_for

    def factory(dataset: torch.utils.data.Dataset, generator: torch.Generator, num_workers: int) -> Iterator:
        n = len(dataset)
        order = [
            int(i)
            for i in DataLoader(
                range(n),
                batch_size=1,
                shuffle=True,
                generator=generator,
                num_workers=0,
                collate_fn=first_item,
            )
        ]
        mine = [order[j] for j in rank_positions(n, ctx.rank, ctx.world_size, rank_batch, per_volume)]
        own = torch.Generator().manual_seed(seed_for(generator.initial_seed(), ctx.rank))
        return iter(
            DataLoader(
                dataset,
                batch_size=1,
                sampler=mine,
                generator=own,
                num_workers=num_workers,
                collate_fn=first_item,
                persistent_workers=False,
            )
        )

    return factory
