"""Replaying a fixed training step or distillation iteration as a CUDA graph.

On a GPU, training small networks is launch-bound: a ConvNet step is about a hundred small
kernels, each a few microseconds of work behind a few microseconds of launch. A CUDA graph
records the kernels of one step once and replays them with one launch (measured on an H200: a
step in 1.06 ms instead of 2.46 ms, ``../shared/gpu/README.md``).

What is captured is the *fixed-shape* part of a step, which reads its inputs from static buffers:

* a stacked training step (:mod:`tgdd.stacked`): forward of the K networks, loss, backward and
  the SGD update; its inputs are the K augmented batches, both label sets and CutMix's kept
  fractions;
* a batched distillation iteration (:mod:`tgdd.methods.matching`): augmentation with drawn
  parameters, the matching networks' forward, the losses of every class, the image gradient and
  the per-class image steps; its inputs are the iteration's draws (:class:`tgdd.methods.loop.ClassDraws`:
  real batches, kept synthetic rows, one stacked augmentation draw per class). The networks'
  snapshots are loaded in place beforehand, so the graph reads them where it recorded them.

The draws stay outside, eager, exactly as an eager run takes them, so a graphed run is the same
computation as an eager one: the same kernels on the same values.

A replay repeats what was recorded, so everything the step reads must keep its address and
everything it bakes in must not change. :class:`GraphedStep` keeps that true:

* one graph per batch shape (the partial last batch of an epoch has its own), captured after
  :data:`WARMUP_STEPS` eager steps of that shape (the CUDA documentation's warm-up, on a side
  stream; they are real training steps);
* the learning rate is a Python float that the SGD update bakes in: a schedule step drops the
  graphs and the next steps warm up and capture again (a milestone schedule changes it once or
  twice per training, so this costs a few eager steps, not a tensor-valued schedule);
* SGD's momentum buffers must exist before capture (the first step creates them): while the
  optimiser holds no state (the first step, DC's momentum reset at its milestone) the step runs
  eagerly and the graphs are dropped;
* the step draws nothing from a generator (``vmap(..., randomness="error")`` would refuse it in
  a stacked step; a distillation iteration makes its draws before its compute), so no generator
  needs registering with the graph;
* a distillation iteration's graph is also keyed by what the compute depends on besides shapes
  (its networks and the transforms its augmentation applies, which must be the same for every
  class: ``DiffAugment.fixed_transforms``).

Where capture is impossible (no CUDA device, or capture raises), the step runs eagerly and the
log says so once. The bookkeeping above is tested on the CPU with a capture that checks, at
every replay, that nothing it baked in has changed and that a replay draws nothing
(``tests/test_graphs.py``, ``tests/test_graphs_distill.py``); the capture itself needs a GPU
(``benchmarks/gpu_check.py`` compares graphed with eager runs there).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import torch

log = logging.getLogger(__name__)

GraphChoice = Literal["auto", "always", "never"]
T = TypeVar("T")

WARMUP_STEPS = 3
"""Eager steps of one shape before its capture (the CUDA graphs documentation warms up with 3)."""

Step = Callable[..., Any]


class GraphBackend(Protocol):
    """How steps are warmed up and captured: CUDA graphs on a GPU (:class:`CudaGraphs`).
    ``replays`` counts the steps replayed from its graphs (what a record says of a training)."""

    replays: int

    def warm_up(self, run: Callable[[], T]) -> T:
        """Run one eager step where capture wants its warm-up; its output."""

    def capture(self, run: Callable[[], T]) -> Callable[[], T]:
        """Record ``run`` (without running it) and return its replay, which returns the step's
        output (on CUDA the same tensors every replay, refilled)."""


@dataclass
class CudaGraphs:
    """Capture with :class:`torch.cuda.CUDAGraph`; every graph of a training shares one memory pool,
    and warm-up steps run on a side stream (as the CUDA graphs documentation asks)."""

    device: torch.device
    replays: int = 0
    pool: object = field(default=None, init=False)
    stream: torch.cuda.Stream = field(init=False)

    def __post_init__(self) -> None:
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream(self.device)

    def warm_up(self, run: Callable[[], T]) -> T:
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            output = run()
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return output

    def capture(self, run: Callable[[], T]) -> Callable[[], T]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            output = run()

        def replay() -> T:
            graph.replay()
            return output

        return replay


def graph_backend(choice: GraphChoice, device: torch.device, what: str) -> GraphBackend | None:
    """The backend ``choice`` (``evaluate.cuda_graphs``, ``experts.cuda_graphs``) asks for on
    ``device``, or None for eager steps. ``auto`` and ``always`` capture on CUDA; ``always``
    anywhere else says once in the log that it runs eagerly (``what`` names the training)."""
    if choice == "never":
        return None
    if device.type != "cuda":
        if choice == "always":
            log.warning("%s: CUDA graphs need a CUDA device, the %s step runs eagerly", what, device.type)
        return None
    return CudaGraphs(device)


@dataclass(frozen=True)
class _Captured:
    inputs: tuple[torch.Tensor, ...]  # the static buffers the replay reads
    replay: Callable[[], Any]


class GraphedStep:
    """``step(*inputs)`` (a training step or a distillation iteration: it updates parameters and
    ``optimizer``'s state in place and returns its output, e.g. its loss terms as a tensor) run
    eagerly or replayed from graphs, by the rules in the module docstring. A replay's output is
    the graph's own tensor, refilled by the next replay: read it before the next call. ``key``
    names what besides the inputs' shapes the step's computation depends on (a graph per key and
    shapes). With ``backend=None`` every call is the eager step, unchanged."""

    def __init__(self, step: Step, optimizer: torch.optim.Optimizer, backend: GraphBackend | None, what: str) -> None:
        self.step = step
        self.optimizer = optimizer
        self.backend = backend
        self.what = what
        self.graphs: dict[Hashable, _Captured] = {}
        self.warm_ups: dict[Hashable, int] = {}
        self.learning_rates: tuple[float, ...] | None = None

    @property
    def graphed(self) -> bool:
        """Whether steps are being captured (False: eager only, or capture failed)."""
        return self.backend is not None

    def _drop_graphs(self) -> None:
        self.graphs.clear()
        self.warm_ups.clear()

    def __call__(self, *inputs: torch.Tensor, key: Hashable = None) -> Any:
        if self.backend is None:
            return self.step(*inputs)
        learning_rates = tuple(float(group["lr"]) for group in self.optimizer.param_groups)
        if learning_rates != self.learning_rates:  # baked into the update: a schedule step
            self._drop_graphs()
            self.learning_rates = learning_rates
        if not self.optimizer.state:  # no momentum buffers yet (first step, DC's reset)
            self._drop_graphs()
            return self.backend.warm_up(lambda: self.step(*inputs))
        graph_key = (key, tuple(t.shape for t in inputs))
        captured = self.graphs.get(graph_key)
        if captured is not None:
            for static, value in zip(captured.inputs, inputs, strict=True):
                static.copy_(value)
            output = captured.replay()
            self.backend.replays += 1
            return output
        if self.warm_ups.get(graph_key, 0) < WARMUP_STEPS:
            self.warm_ups[graph_key] = self.warm_ups.get(graph_key, 0) + 1
            return self.backend.warm_up(lambda: self.step(*inputs))
        return self._capture_and_replay(graph_key, inputs)

    def _capture_and_replay(self, graph_key: Hashable, inputs: tuple[torch.Tensor, ...]) -> Any:
        assert self.backend is not None
        static = tuple(t.clone() for t in inputs)
        self.optimizer.zero_grad(set_to_none=True)  # the capture's backward writes its own gradients
        try:
            replay = self.backend.capture(lambda: self.step(*static))
        except Exception as error:  # any failure to capture means: run eagerly
            log.warning("%s: capturing the step as a CUDA graph failed, it runs eagerly: %s", self.what, error)
            self.backend = None
            self._drop_graphs()
            return self.step(*inputs)
        log.debug("%s: the step for inputs %s is captured as a CUDA graph", self.what, graph_key)
        self.graphs[graph_key] = _Captured(static, replay)
        output = replay()
        self.backend.replays += 1
        return output
