"""Training K networks of one architecture on one data set as ONE stacked training.

The R evaluation runs of a synthetic set differ only in their initialisation and their random
streams; their networks have the same shapes. Stacking their parameters (and buffers: batch
norm keeps per-network running statistics) along a new leading axis with
:func:`torch.func.stack_module_state` and running the forward through
:func:`torch.func.vmap` over :func:`torch.func.functional_call` turns K small forward/backward
passes into one (grouped convolutions), which is what makes evaluation cheap on a GPU.

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
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from tgdd.augment import DiffAugment
from tgdd.progress import bar
from tgdd.protocols import TrainSettings
from tgdd.train import DrawnBatch, draw_batch, end_epoch, sgd_schedule

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


def stacked_loss(logits: torch.Tensor, batches: Sequence[DrawnBatch]) -> torch.Tensor:
    """Sum over networks of ``lam*CE(y_a) + (1-lam)*CE(y_b)`` (``logits``: ``[K, B, classes]``).
    Networks share no parameter, so each one's gradient is that of its own loss."""
    y_a = torch.stack([b.y_a for b in batches])
    y_b = torch.stack([b.y_b for b in batches])
    lam = torch.tensor([b.lam for b in batches], dtype=logits.dtype, device=logits.device)
    flat = logits.flatten(0, 1)
    k, batch = y_a.shape
    ce_a = F.cross_entropy(flat, y_a.flatten(), reduction="none").view(k, batch).mean(1)
    ce_b = F.cross_entropy(flat, y_b.flatten(), reduction="none").view(k, batch).mean(1)
    return (lam * ce_a + (1 - lam) * ce_b).sum()


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
) -> list[nn.Module]:
    """Train ``models`` (K >= 2 networks of one architecture, :func:`can_stack`) as one stacked
    training on ``images`` (floats in [0,1]); network ``k`` uses ``gens[k]`` and ``rngs[k]`` as its
    separate run would. Returns the same modules, trained in place and in eval mode: equal to K
    separate :func:`tgdd.train.train_classifier` runs within float rounding."""
    if not (len(models) == len(gens) == len(rngs)) or len(models) < 2:
        raise ValueError(f"train_stacked needs K >= 2 models with one generator and rng each, got {len(models)}")
    for model in models:
        reason = stack_refusal(model)
        if reason is not None:
            raise ValueError(f"cannot stack this network: {reason}")
    device = images.device
    mean, std = mean.to(device), std.to(device)
    augment = DiffAugment(settings.augment, settings.augment_semantics)
    for model in models:
        model.train()
    params, buffers = stack_module_state(list(models))
    template = copy.deepcopy(models[0]).to("meta")
    forward = stacked_forward(template)
    optimizer, scheduler = sgd_schedule(list(params.values()), settings)
    n = len(images)
    for epoch in bar(range(1, settings.trained_epochs() + 1), show=progress is not None, desc=progress, leave=False):
        orders = [torch.randperm(n, generator=gen, device=gen.device).to(device) for gen in gens]
        for start in range(0, n, settings.batch_size):
            batches = [
                draw_batch(images, labels, order[start : start + settings.batch_size], settings, augment, mean, std,
                           gen, rng)
                for order, gen, rng in zip(orders, gens, rngs, strict=True)
            ]  # fmt: skip
            logits = forward(params, buffers, torch.stack([b.x for b in batches]))
            loss = stacked_loss(logits, batches)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        end_epoch(optimizer, scheduler, settings, epoch)
    unstack_into(models, params, buffers)
    for model in models:
        model.eval()
    return list(models)
