"""Training K networks of one architecture on one data set as ONE stacked training.

The R evaluation runs of a synthetic set differ only in their initialisation and their random
streams; their networks have the same shapes. Stacking their parameters (and buffers: batch
norm keeps per-network running statistics) along a new leading axis with
:func:`torch.func.stack_module_state` and running the forward through
:func:`torch.func.vmap` over :func:`torch.func.functional_call` turns K small forward/backward
passes into one (grouped convolutions), which is what makes evaluation cheap on a GPU. Where the
architecture has a grouped twin (:mod:`tgdd.grouped`: every network of the zoo but DenseNet), the
same forward runs on it instead, without vmap (faster, on a CPU faster than separate runs).

Why it is the same training as K separate runs of :func:`tgdd.train.train_classifier`:

* every network keeps its own ``torch.Generator`` (batch order, DSA draws, CutMix permutation)
  and its own numpy rng (CutMix coin, lambda, box), consumed in the same order as a separate
  run consumes them: each network's batch is drawn, augmented and mixed by the very code of the
  separate loop (:func:`draw_batch`), outside the stacked step, and only the augmented batches
  are stacked;
* the loss is the sum over networks of each network's own loss, and the networks share no
  parameter, so each network's gradient is its separate run's gradient;
* SGD with momentum and weight decay is elementwise, so one optimiser over the stacked tensors
  is K optimisers; the learning-rate schedule and DC's momentum reset at its milestone are the
  same for every network.

A batch without CutMix has the loss ``1 * CE(y) + 0 * CE(y)`` here, which is exactly ``CE(y)``
and adds an exact zero gradient. What differs is float rounding only (a grouped convolution
sums in another order): ``tests/test_stacked.py`` checks weights, running statistics and test
accuracies against separate runs for every network of the evaluation zoo.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from tgdd.augment import DiffAugment
from tgdd.graphs import GraphBackend, GraphedStep
from tgdd.grouped import can_group, grouped_forward
from tgdd.progress import bar
from tgdd.protocols import TrainSettings
from tgdd.train import DrawnBatch, Resumable, draw_batch, end_epoch, sgd_schedule

log = logging.getLogger(__name__)

STACKABLE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Conv2d,
    nn.Linear,
    nn.GroupNorm,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.AvgPool2d,
    nn.MaxPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Identity,
    nn.Flatten,
    nn.Sequential,
)
"""Leaf modules whose stacked forward (vmap over functional_call) is tested against separate
runs. Containers of them (the zoo's blocks and classifiers) are stackable too."""


def stack_refusal(model: nn.Module) -> str | None:
    """Why ``model`` cannot be trained stacked, or None if it can.

    Refused: a leaf module outside :data:`STACKABLE_MODULES` (untested under vmap: dropout would
    draw from the global RNG inside the step, a recurrent layer has no batching rule), and batch
    norm without running statistics or with a cumulative average (``momentum=None`` divides by
    the per-network batch count, which stays equal but is not tested)."""
    for name, module in model.named_modules():
        if len(list(module.children())) > 0:
            continue  # a container: its leaves decide
        if not isinstance(module, STACKABLE_MODULES):
            return f"module {name or '(root)'} ({type(module).__name__}) is not known to stack under vmap"
        if isinstance(module, nn.BatchNorm2d) and (not module.track_running_stats or module.momentum is None):
            return f"batch norm {name} without running statistics or with a cumulative average"
    return None


def can_stack(model: nn.Module) -> bool:
    """Whether ``model``'s networks can be trained stacked (:func:`stack_refusal` says why not)."""
    return stack_refusal(model) is None


def use_stacking(
    choice: str, device: torch.device, models: Sequence[nn.Module], what: str, grouped_on_cpu: bool = False
) -> bool:
    """Whether ``models`` (the R evaluation runs of one architecture, or the missing expert
    trajectories of a recipe) train as one stacked training, under ``choice`` (``evaluate.stack_runs``,
    ``experts.stack``). Never one network alone (the separate loop, bit for bit) nor networks
    :func:`stack_refusal` refuses (said in the log, naming ``what``). ``auto``: on CUDA (one kernel
    launch per layer for all networks instead of one per network: training there is launch-bound);
    on the CPU only with ``grouped_on_cpu`` and an architecture with a grouped twin
    (:mod:`tgdd.grouped`), where the evaluation's stacked runs measured faster than separate ones
    and the vmap path slower (``benchmarks/stacked_eval.py``, ``benchmarks/results/stacked_eval_cpu.md``)."""
    if choice == "never" or len(models) < 2:
        return False
    reason = stack_refusal(models[0])
    if reason is not None:
        log.warning("%s: networks train one after another, not stacked: %s", what, reason)
        return False
    if choice == "always" or device.type == "cuda":
        return True
    return grouped_on_cpu and can_group(models[0])


def stacked_inputs(batches: Sequence[DrawnBatch]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The K networks' drawn batches as the stacked step's tensors: inputs ``[K, B, ...]``, both
    label sets ``[K, B]`` and the kept fractions ``[K]`` (fixed shapes: what a CUDA graph replays)."""
    x = torch.stack([b.x for b in batches])
    y_a = torch.stack([b.y_a for b in batches])
    y_b = torch.stack([b.y_b for b in batches])
    lam = torch.tensor([b.lam for b in batches], dtype=x.dtype, device=x.device)
    return x, y_a, y_b, lam


def stacked_loss(logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Sum over networks of ``lam*CE(y_a) + (1-lam)*CE(y_b)`` (``logits``: ``[K, B, classes]``).
    Networks share no parameter, so each one's gradient is that of its own loss."""
    return (lam * network_losses(logits, y_a) + (1 - lam) * network_losses(logits, y_b)).sum()


def network_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each network's mean cross-entropy ``[K]`` of ``logits`` ``[K, B, classes]`` on ``labels`` ``[K, B]``."""
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(labels.shape).mean(1)


def stacked_forward(template: nn.Module) -> Callable[..., torch.Tensor]:
    """``(params, buffers, x[K, B, ...]) -> logits[K, B, classes]``: ``template``'s forward
    vmapped over the stacked networks (buffers per network: batch norm updates each network's
    own running statistics)."""

    def one(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(template, (params, buffers), (x,))

    return vmap(one, in_dims=(0, 0, 0), randomness="error")


def unstack_into(
    models: Sequence[nn.Module], params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]
) -> None:
    """Copy network ``k``'s slice of the stacked tensors back into ``models[k]``."""
    with torch.no_grad():
        for k, model in enumerate(models):
            for name, tensor in model.named_parameters():
                tensor.copy_(params[name][k])
            for name, tensor in model.named_buffers():
                tensor.copy_(buffers[name][k])


def network_optimizer_state(stacked: dict[str, Any], k: int) -> dict[str, Any]:
    """Network ``k``'s share of a stacked SGD's ``state_dict``: exactly the ``state_dict`` of the
    optimiser of its separate run (same parameter order, its slice of every momentum buffer), so
    a checkpoint of a stacked training resumes a separate run and the other way round."""
    state = {
        index: {name: value[k].clone() if torch.is_tensor(value) else value for name, value in entry.items()}
        for index, entry in stacked["state"].items()
    }
    return {"state": state, "param_groups": copy.deepcopy(stacked["param_groups"])}


def stacked_optimizer_state(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The stacked SGD ``state_dict`` of K networks' separate ones (inverse of :func:`network_optimizer_state`)."""
    first = states[0]
    state = {
        index: {
            name: torch.stack([s["state"][index][name] for s in states]) if torch.is_tensor(value) else value
            for name, value in entry.items()
        }
        for index, entry in first["state"].items()
    }
    return {"state": state, "param_groups": copy.deepcopy(first["param_groups"])}


def _resume(
    models: Sequence[nn.Module],
    gens: Sequence[torch.Generator],
    rngs: Sequence[np.random.Generator],
    resumables: Sequence[Resumable],
) -> tuple[int, list[dict[str, Any]] | None]:
    """Restore every network from its own checkpoint (all or none, at one epoch) and return the
    first epoch to train and the saved blobs (None: a fresh start)."""
    blobs = [r.checkpointer.resume_blob for r in resumables]
    if all(blob is None for blob in blobs):
        return 1, None
    epochs = {blob["epoch"] if blob is not None else 0 for blob in blobs}
    if len(epochs) != 1:
        raise ValueError(f"stacked networks resume from one epoch, their checkpoints are at {sorted(epochs)}")
    for model, gen, rng, resumable, blob in zip(models, gens, rngs, resumables, blobs, strict=True):
        model.load_state_dict(blob["model"])
        gen.set_state(blob["generator"])
        rng.bit_generator.state = blob["numpy_rng"]
        resumable.load_extra(blob["extra"])
    return epochs.pop() + 1, blobs


def train_stacked(
    models: Sequence[nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: TrainSettings,
    mean: torch.Tensor,
    std: torch.Tensor,
    gens: Sequence[torch.Generator],
    rngs: Sequence[np.random.Generator],
    progress: str | None = None,
    on_epoch_end: Callable[[int, Sequence[nn.Module]], None] | None = None,
    resumables: Sequence[Resumable] | None = None,
    graphs: GraphBackend | None = None,
    grouped: bool = True,
    compile: bool = False,
) -> list[nn.Module]:
    """Train ``models`` (K >= 2 networks of one architecture, :func:`can_stack`) as one stacked
    training on ``images`` (floats in [0,1]); network ``k`` uses ``gens[k]`` and ``rngs[k]`` as its
    separate run would. Returns the same modules, trained in place and in eval mode: equal to K
    separate :func:`tgdd.train.train_classifier` runs within float rounding.

    ``on_epoch_end(epoch, models)`` sees every network after each epoch (expert snapshots). With
    ``resumables`` (one per network), each network is checkpointed after epochs in its separate
    run's own format and file, and restored from it, so a stacked training resumes a separate
    one's checkpoint and the other way round. With ``graphs`` (:func:`tgdd.graphs.graph_backend`),
    the fixed-shape step is replayed from CUDA graphs (:class:`tgdd.graphs.GraphedStep`): the same
    kernels on the same values. ``grouped=False`` runs the vmap forward even where the architecture
    has a grouped twin, ``compile=True`` compiles the forward with ``torch.compile`` (to compare them:
    ``benchmarks/stacked_eval.py``; on the CPU compiling takes longer than the main job's trainings)."""
    if not (len(models) == len(gens) == len(rngs)) or len(models) < 2:
        raise ValueError(f"train_stacked needs K >= 2 models with one generator and rng each, got {len(models)}")
    if resumables is not None and len(resumables) != len(models):
        raise ValueError(f"train_stacked needs one resumable per model, got {len(resumables)} for {len(models)}")
    if settings.sharpness is not None:
        raise ValueError("train_stacked takes plain SGD steps: GSAM's (settings.sharpness) are per network")
    for model in models:
        reason = stack_refusal(model)
        if reason is not None:
            raise ValueError(f"cannot stack this network: {reason}")
    device = images.device
    mean, std = mean.to(device), std.to(device)
    augment = DiffAugment(settings.augment, settings.augment_semantics)
    first_epoch, blobs = _resume(models, gens, rngs, resumables) if resumables is not None else (1, None)
    for model in models:
        model.train()
    params, buffers = stack_module_state(list(models))
    template = copy.deepcopy(models[0]).to("meta")
    forward = (grouped and grouped_forward(template, len(models))) or stacked_forward(template)
    if compile:
        forward = torch.compile(forward)
    optimizer, scheduler = sgd_schedule(list(params.values()), settings)
    if blobs is not None:
        optimizer.load_state_dict(stacked_optimizer_state([blob["optimizer"] for blob in blobs]))
        scheduler.load_state_dict(blobs[0]["scheduler"])  # one schedule: every network's is the same

    def sgd_step(x: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam: torch.Tensor) -> None:
        loss = stacked_loss(forward(params, buffers, x), y_a, y_b, lam)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step = GraphedStep(sgd_step, optimizer, graphs, progress or f"{len(models)} stacked networks")
    n = len(images)
    epochs = range(first_epoch, settings.trained_epochs() + 1)
    for epoch in bar(epochs, show=progress is not None, desc=progress, leave=False):
        orders = [torch.randperm(n, generator=gen, device=gen.device).to(device) for gen in gens]
        for start in range(0, n, settings.batch_size):
            batches = [
                draw_batch(images, labels, order[start : start + settings.batch_size], settings, augment, mean, std,
                           gen, rng)
                for order, gen, rng in zip(orders, gens, rngs, strict=True)
            ]  # fmt: skip
            step(*stacked_inputs(batches))
        end_epoch(optimizer, scheduler, settings, epoch)
        if on_epoch_end is None and resumables is None:
            continue
        unstack_into(models, params, buffers)
        if on_epoch_end is not None:
            on_epoch_end(epoch, models)
        if resumables is not None:
            _checkpoint(epoch, models, optimizer, scheduler, gens, rngs, resumables)
    unstack_into(models, params, buffers)
    for model in models:
        model.eval()
    return list(models)


def _checkpoint(
    epoch: int,
    models: Sequence[nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    gens: Sequence[torch.Generator],
    rngs: Sequence[np.random.Generator],
    resumables: Sequence[Resumable],
) -> None:
    """Each network's checkpoint when due (every network's, then the stop if one was requested)."""
    stacked_state = optimizer.state_dict()
    for k, (model, gen, rng, resumable) in enumerate(zip(models, gens, rngs, resumables, strict=True)):
        resumable.checkpointer.save_if_due(
            epoch,
            lambda k=k, model=model, gen=gen, rng=rng, resumable=resumable: {
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": network_optimizer_state(stacked_state, k),
                "scheduler": scheduler.state_dict(),
                "generator": gen.get_state(),
                "numpy_rng": rng.bit_generator.state,
                "extra": resumable.save_extra(),
            },
        )
    for resumable in resumables:
        resumable.checkpointer.stop_if_requested(epoch)
