"""The machine and its meters: wall clock after the device's queue, busy cores, peak memory, a description.

Shared by every benchmark that times or weighs the project's code, so that they all measure the same way.
"""

from __future__ import annotations

import os
import platform
import re
import resource
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from tgdd.artifacts import code_version, cpu_model

MIB = 2**20


def now(device: torch.device) -> float:
    """Wall clock after the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def repeat_timing(
    call: Callable[[], object], device: torch.device, min_seconds: float, min_calls: int = 3
) -> list[float]:
    """Seconds of each call of ``call``, repeated until ``min_seconds`` have passed and at least ``min_calls``
    calls were made (after one warm-up call)."""
    call()
    times: list[float] = []
    start = now(device)
    while len(times) < min_calls or now(device) - start < min_seconds:
        t0 = now(device)
        call()
        times.append(now(device) - t0)
    return times


def busy_cores(seconds: float) -> float | None:
    """Cores kept busy by every process over ``seconds`` (from /proc/stat; None elsewhere): the
    load of the machine right now, unlike the 1-minute load average, which trails."""

    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values[:8]) - idle, sum(values[:8])

    try:
        busy0, total0 = sample()
        time.sleep(seconds)
        busy1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (os.cpu_count() or 1) * (busy1 - busy0) / max(total1 - total0, 1)


class MemoryMeter:
    """Peak memory beyond a baseline taken at construction (after imports and data).

    CPU on Linux: the peak resident set of this process's memory (``VmHWM`` in ``/proc/self/status``), reset
    at construction through ``/proc/self/clear_refs``, so the baseline is the resident set after imports and
    data and their transient peak cannot hide the run's own. (``ru_maxrss`` would do elsewhere, but a child
    started by ``subprocess`` inherits its parent's peak in it, which hides the child's own.) CUDA:
    ``max_memory_allocated`` beyond what is allocated at construction.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.base = torch.cuda.memory_allocated(device) / MIB
            self.method = "CUDA max_memory_allocated"
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.method = "peak resident set VmHWM, reset after imports and data"
        except OSError:
            self.method = "peak resident set minus the peak of imports and data"
        self.base = self._rss_peak()

    @staticmethod
    def _rss_peak() -> float:
        try:
            status = Path("/proc/self/status").read_text()
            return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]
        except (OSError, AttributeError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    def extra_peak_mib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / MIB - self.base
        return self._rss_peak() - self.base


def describe_machine(device: torch.device, threads: int) -> dict[str, Any]:
    """What a report says about where it ran: CPU, cores, versions, commit, date, device (and GPU)."""
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": threads,
        "python": platform.python_version(),
        "git_commit": (code_version().get("git_commit") or "unknown")[:12],
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
