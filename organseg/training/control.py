"""Training control pieces with no loop in them: Ctrl-C handling, LR schedule, precision, RNG state.

All plain functions and one small class, so the loop (``loop.py``) can inject or replace them.
"""

from __future__ import annotations

import math
import random
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

from organseg.config import Config


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C after saving a checkpoint; ``str(err)`` says how to resume."""


class InterruptFlag:
    """Turns the first SIGINT into a request to stop cleanly; a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    @contextmanager
    def installed(self) -> Iterator[InterruptFlag]:
        """Catch SIGINT while the block runs (only possible in the main thread; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGINT, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def steps_per_epoch(cfg: Config, cases_per_epoch: int) -> int:
    """``train.steps_per_epoch``, or (cases x samples_per_volume / batch_size) when it is 0."""
    t = cfg.train
    if t.steps_per_epoch > 0:
        return t.steps_per_epoch
    return max(1, math.ceil(cases_per_epoch * t.samples_per_volume / t.batch_size))


def lr_factor(cfg: Config, spe: int) -> Callable[[int], float]:
    """LR multiplier per optimiser step: linear warm-up over ``warmup_epochs``, then cosine/poly/constant."""
    t = cfg.train
    warm = t.warmup_epochs * spe
    total = max(t.epochs * spe, warm + 1)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if t.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / (total - warm))
        if t.schedule == "poly":
            return max(0.0, 1.0 - progress) ** 0.9
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def amp_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """Mixed precision on CUDA only: bf16 where supported, else fp16 (with a GradScaler)."""
    if device.type != "cuda" or not cfg.train.amp:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def capture_rng() -> dict:
    """Torch/CUDA/numpy/python RNG states as tensors, ints and lists (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": [int(version), list(internal), gauss_next],
    }


def restore_rng(state: dict) -> None:
    """Put back the RNG states that ``capture_rng`` took."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
