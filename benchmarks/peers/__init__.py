"""Helpers of ``benchmarks/bench_peers.py``: child-process timing, the nnU-Net v2 side, the plain MONAI side.

``run_step`` starts one command under GNU time (``/usr/bin/time``, Debian package ``time``) and returns its
wall seconds, CPU seconds, peak RSS and the 1-minute load average when it started. Not ``os.wait4`` or
``RUSAGE_CHILDREN`` from this process: Linux carries the forking process's resident set into the child's
``ru_maxrss`` at exec, so every child of a 1 GB parent would report at least 1 GB; ``time`` is a small parent.
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
        of those processes (MiB; ``time`` reports KiB) and the 1-min load average at start.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    usage = log.with_suffix(".time")
    load = os.getloadavg()[0]
    t = time.perf_counter()
    with log.open("w", encoding="utf-8") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        code = subprocess.run(
            ["/usr/bin/time", "-o", str(usage), "-f", "%M %U %S", *cmd],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
        ).returncode
    wall = time.perf_counter() - t
    if code:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"{cmd[0]} failed (exit {code}), log {log}:\n{tail}")
    max_rss_kb, user_s, sys_s = usage.read_text(encoding="utf-8").split()[-3:]
    return {
        "wall_s": wall,
        "cpu_s": float(user_s) + float(sys_s),
        "peak_rss_mb": int(max_rss_kb) / 1024,
        "load_1min": load,
    }


def thread_env(threads: int, **extra: str) -> dict[str, str]:
    """The current environment with ``threads`` OpenMP/MKL threads (every method gets the same)."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), **extra})
    return env
