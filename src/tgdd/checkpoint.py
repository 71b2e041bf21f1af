"""Resumable long loops: periodic atomic checkpoints and a clean stop on SIGTERM.

SLURM sends SIGTERM before a job's time limit (and on preemption); the loop finishes its
current iteration, writes a checkpoint and exits non-zero, and rerunning the same command
continues from it, bit-identically on CPU, because the checkpoint holds every RNG state.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tgdd.artifacts import torch_load, torch_save
from tgdd.efficiency import IterationClock
from tgdd.errors import TgddError

log = logging.getLogger(__name__)


class StopRequested:
    """A flag raised by SIGTERM/SIGINT while :func:`stop_on_signals` is active."""

    def __init__(self) -> None:
        self.signal: str | None = None

    def __bool__(self) -> bool:
        return self.signal is not None


@contextmanager
def stop_on_signals(signals: tuple[int, ...] = (signal.SIGTERM,)) -> Iterator[StopRequested]:
    """Turn the given signals into a flag the loop polls, instead of an abrupt death."""
    flag = StopRequested()

    def handler(signum: int, _frame: Any) -> None:
        flag.signal = signal.Signals(signum).name

    try:
        previous = {s: signal.signal(s, handler) for s in signals}
    except ValueError:  # not the main thread: signals cannot be caught here
        yield flag
        return
    try:
        yield flag
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


class Checkpointer:
    """Writes ``path`` every ``every`` iterations (and when a stop is requested); offers the
    saved state back if it was written for the same ``identity`` (settings and inputs)."""

    def __init__(self, path: Path, every: int, identity: dict[str, Any], stop: StopRequested | None = None) -> None:
        self.path, self.every, self.identity = Path(path), every, identity
        self.stop = stop if stop is not None else StopRequested()  # (an unset flag is falsy)
        self.resume_blob: dict[str, Any] | None = None
        self.write_seconds = 0.0  # wall time spent writing checkpoints (tgdd.efficiency leaves it out)
        self.clock = IterationClock()  # when each iteration ended (tgdd.efficiency: seconds per iteration)
        if self.path.is_file():
            try:
                blob = torch_load(self.path, "checkpoint")
            except TgddError as exc:
                log.warning("ignoring unreadable checkpoint: %s", exc)
                return
            if blob.get("identity") == identity:
                self.resume_blob = blob["state"]
                log.info("resuming from checkpoint %s", self.path)
            else:
                log.warning("ignoring checkpoint %s: it was written for other settings or inputs", self.path)

    def after_iteration(self, iteration: int, state: Callable[[], dict[str, Any]]) -> None:
        """Checkpoint when due; on a requested stop, checkpoint and raise."""
        self.clock.tick(self.write_seconds)
        self.save_if_due(iteration, state)
        self.stop_if_requested(iteration)

    def save_if_due(self, iteration: int, state: Callable[[], dict[str, Any]]) -> None:
        """Write the checkpoint if ``iteration`` is due or a stop was requested."""
        due = self.every > 0 and iteration % self.every == 0
        if due or self.stop:
            started = time.perf_counter()
            torch_save(self.path, {"identity": self.identity, "state": state()})
            self.write_seconds += time.perf_counter() - started

    def stop_if_requested(self, iteration: int) -> None:
        """Raise if a stop was requested (after :meth:`save_if_due` wrote the checkpoint)."""
        if self.stop:
            raise TgddError(
                f"stopped by {self.stop.signal} after iteration {iteration}; checkpoint {self.path} written, "
                "rerun the same command to resume"
            )

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)
