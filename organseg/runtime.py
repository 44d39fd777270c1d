"""Where and how computations run: the torch device and CPU thread count, chosen once and passed in.

Shared by training and inference so both treat ``--device`` and a busy CPU the same way.
"""

from __future__ import annotations

import os
import time

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


def runnable_tasks(path: str = "/proc/loadavg") -> int | None:
    """Tasks the kernel has runnable right now, this one included (4th field of ``/proc/loadavg``)."""
    try:
        with open(path) as f:
            return int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None


def cpu_threads(samples: int = 5, interval_s: float = 0.02) -> int:
    """Torch threads for CPU work: the cores this process may use, minus those other processes keep busy.

    Oversubscribed OpenMP threads spin and wait on each other: on 2 cores shared with other work, 2
    threads were 6x slower per step than 1 (measured). Busy cores are counted as the tasks runnable
    right now besides this one (the fewest over a few samples, so a passing ``ls`` does not count).
    The load average is not used where that count exists: it also counts this process's own recent
    work (``organseg demo`` synthesizes phantoms just before it trains, which made it train on one of
    two idle cores at half speed).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    counts = []
    for i in range(samples):
        n = runnable_tasks()
        if n is None:
            break
        counts.append(n - 1)
        if i + 1 < samples:
            time.sleep(interval_s)
    if counts:
        busy = min(counts)
    else:
        try:
            busy = int(os.getloadavg()[0] + 0.5)
        except OSError:
            busy = 0
    return max(1, min(cores, cores - busy))
