"""Replaying the stacked step from graphs (tgdd.graphs) is the same training as running it eagerly.

CUDA graphs need a GPU. What can go wrong without one is the bookkeeping around them: a graph
bakes in the addresses of the parameters, momentum buffers and static inputs and the learning
rate it was captured with, so a replay after a schedule step, after DC's momentum reset or with
another batch shape would silently train wrongly. :class:`CheckedCapture` replays on the CPU by
running the recorded step, after checking that nothing a CUDA graph would have baked in changed:
a bookkeeping mistake fails these tests here as it would corrupt a training on the GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from tgdd.graphs import WARMUP_STEPS, GraphedStep, graph_backend
from tgdd.protocols import PROTOCOLS, TrainSettings
from tgdd.runtime import generator, numpy_rng, seeded_init
from tgdd.stacked import train_stacked

from .test_stacked import BATCH, N_IMAGES, build, tiny_data


def _baked(optimizer: torch.optim.Optimizer) -> tuple:
    """What a CUDA graph of an SGD step bakes in: learning rates, parameter and momentum-buffer storages."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    momenta = [optimizer.state.get(p, {}).get("momentum_buffer") for p in params]
    return (
        tuple(float(group["lr"]) for group in optimizer.param_groups),
        tuple(p.data_ptr() for p in params),
        tuple(None if m is None else m.data_ptr() for m in momenta),
    )


@dataclass
class CheckedCapture:
    """A graph backend for the CPU: ``capture`` records without running (as CUDA's does), a replay
    checks that the optimiser's baked-in state is unchanged, then runs the recorded step."""

    replays: int = 0
    captures: int = 0
    warm_ups: int = 0
    optimizers: list[torch.optim.Optimizer] = field(default_factory=list)

    def warm_up(self, run: Callable[[], object]) -> object:
        self.warm_ups += 1
        return run()

    def capture(self, run: Callable[[], object]) -> Callable[[], object]:
        self.captures += 1
        optimizer = self.optimizers[-1]
        baked = _baked(optimizer)
        assert None not in baked[2], "captured before the momentum buffers exist"

        def replay() -> object:
            assert _baked(optimizer) == baked, "a replay after what the graph baked in changed"
            return run()

        return replay


@pytest.fixture
def capture():
    """A :class:`CheckedCapture` that learns the optimiser of the training from its steps."""
    backend = CheckedCapture()
    hook = register_optimizer_step_pre_hook(lambda optimizer, _args, _kwargs: backend.optimizers.append(optimizer))
    yield backend
    hook.remove()


def settings_for(protocol: str, **changes) -> TrainSettings:
    return replace(PROTOCOLS.get(protocol).train, **{"batch_size": BATCH, **changes})


def train(settings: TrainSettings, graphs, arch: str = "convnet-2-w8", k: int = 3) -> list[nn.Module]:
    images, labels, _test = tiny_data(3, 8)
    return train_stacked(
        [build(arch, i, 3, 8) for i in range(k)],
        images,
        labels,
        settings,
        torch.full((3,), 0.4),
        torch.full((3,), 0.3),
        [generator(i, "b") for i in range(k)],
        [numpy_rng(i, "c") for i in range(k)],
        graphs=graphs,
    )


def assert_identical(one: list[nn.Module], other: list[nn.Module]) -> None:
    for a, b in zip(one, other, strict=True):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(x, y), name


@pytest.mark.parametrize(
    "protocol,arch",
    [
        ("tgdd", "convnet-2-w8"),  # lr steps at 2E/3 and 5E/6, CutMix on some batches
        ("dc", "convnet-2-bn-w8"),  # lr step and momentum reset at E/2, batch norm's running statistics
    ],
)
def test_replayed_training_equals_eager_training(protocol, arch, capture):
    """Bit for bit: a replay runs the same step on the same values. 12 epochs of 3 steps (2 full
    batches of 8, a partial one of 4): both shapes are captured, and recaptured after every lr step."""
    settings = settings_for(protocol, epochs=12)
    eager = train(settings, None, arch)
    graphed = train(settings, capture, arch)
    assert_identical(eager, graphed)
    assert capture.replays > 0 and capture.captures >= 3
    steps = settings.trained_epochs() * -(-N_IMAGES // BATCH)
    assert capture.replays + capture.warm_ups == steps  # every step ran once, replayed or eagerly


def test_a_graph_is_never_replayed_across_a_schedule_step_or_a_momentum_reset(capture):
    """Without dropping its graphs at DC's lr step and momentum reset, the replay check fails."""
    settings = settings_for("dc", epochs=12)
    train(settings, capture)
    assert len(settings.milestone_epochs()) == 1 and settings.resets_momentum()
    # up to the milestone: one eager first step, 3 warm-ups per shape, then replays; the same again after the reset
    assert capture.captures == 4  # two shapes, before and after the milestone


class FailingCapture(CheckedCapture):
    def capture(self, run: Callable[[], object]) -> Callable[[], object]:
        raise RuntimeError("operation not permitted when stream is capturing")


def test_a_failed_capture_runs_eagerly_and_says_so_once(caplog):
    settings = settings_for("tgdd", epochs=6)
    backend = FailingCapture()
    with caplog.at_level(logging.WARNING, logger="tgdd.graphs"):
        graphed = train(settings, backend)
    assert_identical(train(settings, None), graphed)
    assert backend.replays == 0
    assert caplog.text.count("runs eagerly") == 1 and "not permitted" in caplog.text


def test_the_choice_of_graphs_by_device(caplog):
    cpu = torch.device("cpu")
    with caplog.at_level(logging.WARNING, logger="tgdd.graphs"):
        assert graph_backend("never", cpu, "evaluate x") is None
        assert graph_backend("auto", cpu, "evaluate x") is None
        assert caplog.text == ""  # auto on the CPU: eager, nothing to say
        assert graph_backend("always", cpu, "evaluate x") is None
    assert "evaluate x: CUDA graphs need a CUDA device" in caplog.text


def test_warm_up_before_capture_and_eager_while_the_optimiser_has_no_momentum(capture):
    """The first step (no momentum buffers yet) is eager; then WARMUP_STEPS eager steps of a shape,
    then its capture and replays."""
    with seeded_init(0):
        model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    calls = []

    def step(x: torch.Tensor) -> None:
        calls.append(x.clone())
        optimizer.zero_grad(set_to_none=True)
        model(x).square().sum().backward()
        optimizer.step()

    graphed = GraphedStep(step, optimizer, capture, "linear")
    inputs = [torch.full((4, 3), float(i)) for i in range(WARMUP_STEPS + 4)]
    for x in inputs:
        graphed(x)
    assert (capture.warm_ups, capture.captures, capture.replays) == (1 + WARMUP_STEPS, 1, 3)
    # every replay read the step's own inputs (copied into the static buffer), not the captured ones
    assert all(torch.equal(seen, x) for seen, x in zip(calls, inputs, strict=True))


def test_a_momentum_reset_alone_drops_the_graphs(capture):
    """DC resets momentum at its lr step, where the graphs go anyway; a reset on its own must too."""
    with seeded_init(0):
        model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step(x: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        model(x).square().sum().backward()
        optimizer.step()

    graphed = GraphedStep(step, optimizer, capture, "linear")
    for i in range(2 * (WARMUP_STEPS + 3)):
        if i == WARMUP_STEPS + 3:
            optimizer.state.clear()  # as tgdd.train.end_epoch does for DC
        graphed(torch.full((4, 3), float(i)))
    assert capture.captures == 2 and capture.replays == 4
