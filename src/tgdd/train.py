"""Training a classifier on a tensor data set: the one loop behind expert trajectories and
evaluation (SGD with momentum, a named step schedule, DSA per image, CutMix; GSAM steps where the
settings ask for them, FTD's experts)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tgdd.augment import DiffAugment, cutmix, normalize
from tgdd.checkpoint import Checkpointer
from tgdd.gsam import gsam_step
from tgdd.progress import bar
from tgdd.protocols import TrainSettings


@dataclass(frozen=True)
class DrawnBatch:
    """One network's training batch of one step, augmented and mixed: inputs, both label sets, the
    kept fraction, and whether CutMix mixed it (when its coin said no: 1.0 and ``y_b = y_a``)."""

    x: torch.Tensor
    y_a: torch.Tensor
    y_b: torch.Tensor
    lam: float
    mixed: bool


def draw_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    idx: torch.Tensor,
    settings: TrainSettings,
    augment: DiffAugment,
    mean: torch.Tensor,
    std: torch.Tensor,
    gen: torch.Generator,
    rng: np.random.Generator,
) -> DrawnBatch:
    """The batch ``idx`` of one network, with its DSA draws and CutMix taken from ``gen`` and
    ``rng`` in the order a training step takes them (augment, coin, CutMix): the one draw of
    :func:`train_classifier` and of the stacked training (:mod:`tgdd.stacked`)."""
    x = augment(normalize(images[idx], mean, std), gen)
    y = labels[idx]
    if settings.cutmix_prob > 0 and rng.random() < settings.cutmix_prob:
        x, y_a, y_b, lam = cutmix(x, y, rng, settings.cutmix_beta, gen)
        return DrawnBatch(x, y_a, y_b, lam, mixed=True)
    return DrawnBatch(x, y, y, 1.0, mixed=False)


def batch_loss(logits: torch.Tensor, batch: DrawnBatch) -> torch.Tensor:
    """Cross-entropy of one network's batch; with CutMix, ``lam`` of it on ``y_a`` and the rest on ``y_b``."""
    if batch.mixed:
        return batch.lam * F.cross_entropy(logits, batch.y_a) + (1 - batch.lam) * F.cross_entropy(logits, batch.y_b)
    return F.cross_entropy(logits, batch.y_a)


def sgd_schedule(params: Any, settings: TrainSettings) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.MultiStepLR]:
    """The protocol's SGD (lr, momentum, weight decay) and its step schedule: one network's or,
    over stacked tensors, K networks' (SGD is elementwise)."""
    optimizer = torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, settings.milestone_epochs(), settings.gamma)


def end_epoch(optimizer: torch.optim.SGD, scheduler: Any, settings: TrainSettings, epoch: int) -> None:
    """The schedule's step after ``epoch``, and DC's momentum reset at its milestone."""
    scheduler.step()
    if settings.resets_momentum() and epoch in settings.milestone_epochs():
        optimizer.state.clear()  # DC's evaluate_synset makes a new SGD optimiser at its lr step


@dataclass
class Resumable:
    """Per-epoch checkpointing of a training run; ``save_extra``/``load_extra`` carry the
    caller's own state (an expert's snapshots so far)."""

    checkpointer: Checkpointer
    save_extra: Callable[[], dict[str, Any]] = dict
    load_extra: Callable[[dict[str, Any]], None] = lambda _extra: None


def train_classifier(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: TrainSettings,
    mean: torch.Tensor,
    std: torch.Tensor,
    gen: torch.Generator,
    rng: np.random.Generator,
    on_epoch_end: Callable[[int, nn.Module], None] | None = None,
    progress: str | None = None,
    resumable: Resumable | None = None,
) -> nn.Module:
    """Train ``model`` in place on ``images`` (floats in [0,1]) and return it.

    ``on_epoch_end(epoch, model)`` is called after every epoch (epochs count from 1), which
    is how expert trajectories take their snapshots. With ``resumable``, the full state
    (weights, optimizer, schedule, both RNGs, caller state) is checkpointed after epochs and
    restored on a rerun, so a resumed run equals an uninterrupted one.
    """
    device = images.device
    mean, std = mean.to(device), std.to(device)
    augment = DiffAugment(settings.augment, settings.augment_semantics)
    optimizer, scheduler = sgd_schedule(model.parameters(), settings)
    n = len(images)
    first_epoch = 1
    if resumable is not None and resumable.checkpointer.resume_blob is not None:
        saved = resumable.checkpointer.resume_blob
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        gen.set_state(saved["generator"])
        rng.bit_generator.state = saved["numpy_rng"]
        resumable.load_extra(saved["extra"])
        first_epoch = saved["epoch"] + 1
    model.train()
    epochs = range(first_epoch, settings.trained_epochs() + 1)
    for epoch in bar(epochs, show=progress is not None, desc=progress, leave=False):
        order = torch.randperm(n, generator=gen, device=gen.device).to(device)
        for start in range(0, n, settings.batch_size):
            batch = draw_batch(images, labels, order[start : start + settings.batch_size], settings, augment, mean,
                               std, gen, rng)  # fmt: skip
            if settings.sharpness is not None:  # FTD's experts: a GSAM step on the batch drawn once
                gsam_step(model, lambda batch=batch: batch_loss(model(batch.x), batch), optimizer, settings.sharpness)
                continue
            loss = batch_loss(model(batch.x), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        end_epoch(optimizer, scheduler, settings, epoch)
        if on_epoch_end is not None:
            on_epoch_end(epoch, model)
        if resumable is not None:
            resumable.checkpointer.after_iteration(
                epoch,
                lambda epoch=epoch: {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "generator": gen.get_state(),
                    "numpy_rng": rng.bit_generator.state,
                    "extra": resumable.save_extra(),
                },
            )
    model.eval()
    return model


@torch.no_grad()
def accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    batch: int = 1000,
) -> float:
    """Top-1 accuracy (in [0,1]) of ``model`` on uint8 or [0,1] float images."""
    model.eval()
    device = next(model.parameters()).device
    mean, std = mean.to(device), std.to(device)
    correct = 0
    for start in range(0, len(images), batch):
        x = images[start : start + batch].to(device)
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x
        pred = model(normalize(x, mean, std)).argmax(1)
        correct += int((pred == labels[start : start + batch].to(device)).sum())
    return correct / max(len(images), 1)
