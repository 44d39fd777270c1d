"""Helpers of ``benchmarks/bench_peers.py``: child-process timing, the nnU-Net v2 side, the plain MONAI side.

``run_step`` starts one command, waits for it with ``os.wait4`` (that child's own resource usage, not the
running maximum over all children that ``RUSAGE_CHILDREN`` gives) and returns its wall seconds, CPU
seconds, peak RSS and the 1-minute load average when it started.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


def run_step(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> dict[str, float]:
    """Run ``cmd`` to completion, output to ``log``; raise ``RuntimeError`` (with the log's tail) on failure.

    Returns:
        ``{"wall_s", "cpu_s", "peak_rss_mb", "load_1min"}``: wall clock of the whole process (start-up
        included), user+sys CPU of it and its waited-for children, the largest resident set of any one
        of those processes (MiB; Linux reports ``ru_maxrss`` in KiB) and the 1-min load average at start.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    t = time.perf_counter()
    with log.open("w", encoding="utf-8") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"{cmd[0]} failed (exit {proc.returncode}), log {log}:\n{tail}")
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "load_1min": load,
    }


def thread_env(threads: int, **extra: str) -> dict[str, str]:
    """The current environment with ``threads`` OpenMP/MKL threads (every method gets the same)."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), **extra})
    return env
