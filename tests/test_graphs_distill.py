"""A batched distillation iteration replayed from graphs is the same iteration as run eagerly.

The iteration makes its draws first (real batches, kept synthetic rows, one augmentation draw per
class) and then computes from them (tgdd.methods.loop.ClassDraws); only the compute is replayed. A
CUDA graph bakes in the storages of everything the compute reads (the images, their momentum, the
matching networks' weights, the static draw buffers) and the image learning rate, and it draws
nothing when replayed. :class:`IterationCapture` replays on the CPU by running the recorded compute
after checking all of that, and checks that a replay does not touch the run's generator: a
bookkeeping mistake fails these tests here as it would silently corrupt a distillation on a GPU.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

import tgdd.distill
import tgdd.methods.matching as matching
from tgdd import steps
from tgdd.augment import DiffAugment, GroupDraws, StackedDraws
from tgdd.graphs import WARMUP_STEPS
from tgdd.synthetic import load_synthetic

from .conftest import tiny_config, with_trained_experts
from .test_graphs import _baked

ITERATIONS = 9


@dataclass
class IterationCapture:
    """A graph backend for the CPU that checks, at every replay, what a CUDA graph of a distillation
    iteration bakes in: the image optimiser's learning rate and storages, the matching networks'
    weight storages; and that the replayed compute draws nothing from the run's generator."""

    optimizers: list[torch.optim.Optimizer] = field(default_factory=list)
    networks: list[torch.nn.Module] = field(default_factory=list)
    generators: list[torch.Generator] = field(default_factory=list)
    replays: int = 0
    captures: int = 0
    warm_ups: int = 0

    def warm_up(self, run: Callable[[], object]) -> object:
        self.warm_ups += 1
        return run()

    def _weights(self) -> tuple[int, ...]:
        return tuple(p.data_ptr() for net in self.networks for p in net.parameters())

    def capture(self, run: Callable[[], object]) -> Callable[[], object]:
        self.captures += 1
        (optimizer,) = self.optimizers
        baked, weights = _baked(optimizer), self._weights()
        assert None not in baked[2], "captured before the image momentum exists"
        gen = self.generators[-1]  # the replaying run's

        def replay() -> object:
            assert _baked(optimizer) == baked, "a replay after the images, their momentum or lr changed"
            assert self._weights() == weights, "a replay after the matching networks' weights moved"
            before = gen.get_state()
            output = run()
            assert torch.equal(gen.get_state(), before), "the replayed compute drew from the generator"
            return output

        return replay


@pytest.fixture
def capture(monkeypatch):
    """An :class:`IterationCapture` as the distillation's graph backend on the CPU, told the run's
    generator, image optimiser and matching networks."""
    backend = IterationCapture()
    made_generator, frozen = tgdd.distill.generator, matching._frozen

    def generator(*args, **kwargs):
        backend.generators.append(made_generator(*args, **kwargs))
        return backend.generators[-1]

    def matching_network(model):
        backend.networks.append(frozen(model))
        return backend.networks[-1]

    def graph_backend(choice, device, what):
        return None if choice == "never" else backend

    monkeypatch.setattr(tgdd.distill, "generator", generator)
    monkeypatch.setattr(matching, "_frozen", matching_network)
    monkeypatch.setattr(matching, "graph_backend", graph_backend)
    original = matching.GraphedStep

    def graphed_step(step, optimizer, graph_backend, what):
        backend.optimizers.append(optimizer)
        return original(step, optimizer, graph_backend, what)

    monkeypatch.setattr(matching, "GraphedStep", graphed_step)
    return backend


@pytest.fixture(scope="module")
def graphs_root(prepared_root: Path, tmp_path_factory) -> Path:
    """Prepared digits and the experts TGDD and DANCE read, trained once for this module."""
    return with_trained_experts(prepared_root, tmp_path_factory, "graphs_distill")


def _distill(root: Path, *overrides: str):
    """The synthetic set and its loss records (losses.csv) of a distillation in a fresh copy of ``root``."""
    name = "-".join(o.split("=")[-1] for o in overrides)
    shutil.copytree(root / "data", root / name / "data")
    shutil.copytree(root / "results", root / name / "results")
    cfg = tiny_config(root / name, f"distill.iterations={ITERATIONS}", "distill.checkpoint_every=1", *overrides)
    path = steps.distill(cfg)[0]
    return load_synthetic(path), (path.parent / "losses.csv").read_text()


@pytest.mark.parametrize(
    "method,extra",
    [
        ("tgdd", ["distill.ipc=2"]),  # matching with the expert's cross-entropy; per-class steps replayed
        ("dance", ["distill.ipc=1"]),  # two phases: matching, then calibration without real batches
        ("tgdd", ["distill.ipc=2", "distill.max_syn_per_class=3"]),  # each class keeps a drawn subset
        ("dm", ["distill.dsa_strategy=color_crop_cutout", "distill.augment_semantics=idc"]),  # summed step
    ],
)
def test_replayed_iterations_equal_eager_iterations(graphs_root, capture, method, extra):
    """Bit for bit: the eager run computes from the same draws as the replayed one. The first
    iteration is eager (no image momentum yet), then WARMUP_STEPS warm-ups, one capture, replays;
    checkpoints after every iteration do not move what the graph baked in."""
    common = [f"distill.method={method}", "distill.batched_classes=true", *extra]
    eager, eager_losses = _distill(graphs_root, *common, "distill.cuda_graphs=never")
    graphed, graphed_losses = _distill(graphs_root, *common, "distill.cuda_graphs=always")
    assert torch.equal(graphed.images, eager.images)
    assert graphed_losses == eager_losses and len(graphed_losses.splitlines()) == 1 + ITERATIONS
    assert (capture.warm_ups, capture.captures) == (1 + WARMUP_STEPS, 1)
    assert capture.replays == ITERATIONS - 1 - WARMUP_STEPS
    assert graphed.meta["execution"]["cuda_graph_replays"] == capture.replays
    assert "cuda_graph_replays" not in eager.meta["execution"]


@pytest.mark.parametrize(
    "overrides,reason",
    [
        (["distill.method=dm", "distill.batched_classes=true"], "chooses transforms per class"),  # one of six groups
        (["distill.method=tgdd", "distill.batched_classes=false"], "one after another"),
    ],
)
def test_iterations_that_cannot_be_replayed_run_eagerly_and_say_so(graphs_root, capture, caplog, overrides, reason):
    with caplog.at_level(logging.INFO, logger="tgdd.methods.matching"):
        syn, _losses = _distill(graphs_root, *overrides, "distill.cuda_graphs=always")
    assert capture.optimizers == [] and capture.replays == 0
    assert "cuda_graph_replays" not in syn.meta["execution"]
    assert caplog.text.count("iterations run eagerly") == 1 and reason in caplog.text


def test_fixed_transforms_by_semantics():
    assert DiffAugment("color_crop_cutout", "idc").fixed_transforms  # TGDD, DANCE: crop is the only geometric group
    assert not DiffAugment("color_crop_cutout_flip_scale_rotate", "idc").fixed_transforms
    assert not DiffAugment("color_crop_cutout_flip_scale_rotate", "dsa").fixed_transforms  # DM: one group of six
    assert DiffAugment("crop", "dsa").fixed_transforms and DiffAugment("none", "dsa").fixed_transforms
    assert DiffAugment("color_crop_cutout", "dsa-all").fixed_transforms


@pytest.mark.parametrize(
    "strategy,semantics", [("color_crop_cutout", "idc"), ("color_crop_cutout_flip_scale_rotate", "dsa")]
)
def test_stacked_draws_apply_as_the_draws_one_group_at_a_time(strategy, semantics):
    """The stacked form (fixed transforms) and the per-choice form give each image its group's draw:
    equal to applying group g's draw to group g's images alone."""
    aug = DiffAugment(strategy, semantics)
    gen = torch.Generator().manual_seed(3)
    groups = torch.tensor([0, 0, 1, 2, 2, 2, 1, 3])
    x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    drawn = aug.draw_groups(4, gen, x.device)
    assert isinstance(drawn, StackedDraws if aug.fixed_transforms else GroupDraws)
    (out,) = drawn.apply((x,), (groups,))
    again = aug.draw_groups(4, torch.Generator().manual_seed(3), x.device)
    per_group = again.draws if isinstance(again, GroupDraws) else None
    for g in range(4):
        rows = groups == g
        if per_group is None:  # one draw per group: the stacked row g
            from tgdd.augment import DrawnAugmentation

            one = DrawnAugmentation(again.transforms, tuple(v[g : g + 1] for v in again.values))
        else:
            one = per_group[g]
        torch.testing.assert_close(out[rows], one(x[rows], aug.params), rtol=0, atol=1e-6)
