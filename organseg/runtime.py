"""Where and how computations run: the torch device and CPU thread count, chosen once and passed in.

Shared by training and inference so both treat ``--device`` and a busy CPU the same way.
"""

from __future__ import annotations

import os

import torch

from organseg.errors import ConfigError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CUDA when present, else CPU; ``ConfigError`` for a device that is not there."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device: unknown device {device!r} (expected cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device: {device!r} requested but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device: unsupported device {device!r} (expected cpu, cuda or cuda:N)")
    return dev


def cpu_threads() -> int:
    """Torch threads for CPU training: the cores this process may use, minus those other processes keep busy.

    Oversubscribed OpenMP threads spin and wait on each other: on 2 cores shared with other work, 2
    threads were 6x slower per step than 1 (measured). The 1-minute load average is the estimate of
    busy cores; an idle machine gets every core.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    try:
        busy = int(os.getloadavg()[0] + 0.5)
    except OSError:
        busy = 0
    return max(1, min(cores, cores - busy))
