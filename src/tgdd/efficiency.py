"""What a distillation cost: wall seconds per iteration, peak host memory and peak device memory,
recorded in every synthetic set (``meta["efficiency"]``) for the report's efficiency table and
scatter (the paper's Figure 1: accuracy against distillation time and memory).

A measurement, not a setting: it differs from run to run and machine to machine, so it is never
part of what freshness compares (``meta["settings"]``) nor of a set's content digest
(:func:`tgdd.synthetic.synthetic_digest`), and measuring changes no computation and no random draw.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path
from typing import Any

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _reset_host_peak() -> bool:
    """Reset the process's peak resident set (Linux >= 4.0: ``5`` to ``/proc/self/clear_refs``), so
    that a step run after others in one process (`tgdd pipeline`) measures its own peak."""
    try:
        _CLEAR_REFS.write_text("5")
        return _host_peak_status() is not None
    except OSError:
        return False


def _host_peak_status() -> int | None:
    """``VmHWM`` of ``/proc/self/status`` in bytes (None where there is none)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _host_peak_rusage() -> int:
    """The process's peak resident set in bytes from ``getrusage`` (KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def _mib(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


class IterationClock:
    """The end of every iteration (ticked by the loop through its checkpointer): the seconds per
    iteration of iterations 2..n, the set-up and the first iteration (warm-up, compilation) left out,
    as are the checkpoint writes between them (``written``: the checkpointer's running total)."""

    def __init__(self) -> None:
        self.ticks = 0
        self.first = self.last = 0.0
        self.written_at_first = self.written_at_last = 0.0

    def tick(self, written: float) -> None:
        now = time.perf_counter()
        if self.ticks == 0:
            self.first, self.written_at_first = now, written
        self.last, self.written_at_last = now, written
        self.ticks += 1

    def seconds_per_iteration(self) -> float | None:
        """Mean wall seconds of iterations 2..n (None before two ticks)."""
        if self.ticks < 2:
            return None
        spent = self.last - self.first - (self.written_at_last - self.written_at_first)
        return max(spent, 0.0) / (self.ticks - 1)


class Meter:
    """Measures one distillation from :meth:`start` to :meth:`record`: its wall seconds (checkpoint
    writes excluded), peak host memory and, on CUDA, peak device memory (``torch.cuda.max_memory_allocated``,
    reset at the start)."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.started = 0.0
        self.host_scope = "the process"

    def start(self) -> Meter:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.host_scope = "this distillation" if _reset_host_peak() else "the process"
        self.started = time.perf_counter()
        return self

    def record(
        self, iterations: int, excluded_seconds: float = 0.0, clock: IterationClock | None = None
    ) -> dict[str, Any]:
        """The measurement of ``iterations`` iterations run since :meth:`start` (a resumed run counts
        only its own), ``excluded_seconds`` (checkpoint writes) taken off the wall time; seconds per
        iteration from ``clock`` where it saw two iterations or more, else the whole run's mean."""
        device_peak = None
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
            device_peak = int(torch.cuda.max_memory_allocated(self.device))
        seconds = max(time.perf_counter() - self.started - excluded_seconds, 0.0)
        host_peak = _host_peak_status() if self.host_scope == "this distillation" else None
        per_iteration = clock.seconds_per_iteration() if clock is not None and iterations > 0 else None
        if per_iteration is None and iterations > 0:
            per_iteration, timed = seconds / iterations, "the whole run (set-up included) / iterations"
        else:
            timed = "iterations 2..n (set-up and first iteration excluded)"
        return {
            "iterations_timed": iterations,
            "seconds": round(seconds, 3),
            "seconds_per_iteration": None if per_iteration is None else round(per_iteration, 6),
            "seconds_per_iteration_of": timed if per_iteration is not None else None,
            "checkpoint_seconds": round(excluded_seconds, 3),
            "peak_host_memory_mib": _mib(host_peak if host_peak is not None else _host_peak_rusage()),
            "peak_host_memory_of": self.host_scope,
            "peak_device_memory_mib": _mib(device_peak),  # None: not on CUDA
            "device": str(self.device),
            "note": "seconds: wall time of the method's run in this process (set-up included, checkpoint writes "
            "excluded); peaks: resident set size, torch.cuda.max_memory_allocated",
        }
