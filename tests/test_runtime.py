"""Device and CPU-thread choice (``organseg.runtime``)."""

from __future__ import annotations

import pytest

from organseg import runtime
from organseg.errors import ConfigError


def test_runnable_tasks_reads_the_running_field(tmp_path):
    f = tmp_path / "loadavg"
    f.write_text("3.10 2.00 1.50 4/312 12345\n")
    assert runtime.runnable_tasks(str(f)) == 4
    f.write_text("garbage\n")
    assert runtime.runnable_tasks(str(f)) is None
    assert runtime.runnable_tasks(str(tmp_path / "missing")) is None


@pytest.mark.parametrize(
    "runnable, expected",
    [
        ([1, 1, 1], 4),  # only this process: every core
        ([3, 2, 3], 3),  # one other task busy throughout (the fewest sample counts)
        ([9, 9, 9], 1),  # more busy tasks than cores: still one thread
    ],
)
def test_cpu_threads_leaves_cores_to_other_busy_tasks(monkeypatch, runnable, expected):
    seq = iter(runnable)
    monkeypatch.setattr(runtime, "runnable_tasks", lambda: next(seq))
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    # a high load average (this process's own recent work) must not count when the task count exists
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (3.0, 3.0, 3.0))
    assert runtime.cpu_threads(samples=len(runnable), interval_s=0) == expected


def test_cpu_threads_falls_back_to_the_load_average(monkeypatch):
    monkeypatch.setattr(runtime, "runnable_tasks", lambda: None)
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (1.2, 0.0, 0.0))
    assert runtime.cpu_threads(interval_s=0) == 3


def test_resolve_device_refuses_unknown_devices():
    assert runtime.resolve_device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match="unknown device"):
        runtime.resolve_device("warp-drive")
