"""Herding coreset (Welling 2009), the selection baseline of the DC/DM code bases: per class, the
real images whose features' running mean tracks the class mean feature most closely, embedded
by the trained expert (the last snapshot of the first trajectory)."""

from __future__ import annotations

import torch
from torch import nn

from tgdd.augment import normalize
from tgdd.errors import TgddError
from tgdd.methods import DistillContext, DistillOutput, implements
from tgdd.models import build_model


def herding_select(features: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy herding on ``[n, d]`` features: step t picks the unselected row that brings the mean
    of the selected rows closest (L2) to the mean of all rows. Returns k distinct indices in
    selection order (ties go to the lowest index)."""
    n = len(features)
    if not 0 <= k <= n:
        raise ValueError(f"cannot select {k} of {n} points")
    target = features.mean(0)
    total = torch.zeros_like(target)
    available = torch.ones(n, dtype=torch.bool, device=features.device)
    picks = []
    for step in range(k):
        # the mean after adding row r is (total + f_r) / (step + 1); compare its distance to target
        distance = ((total + features) / (step + 1) - target).norm(dim=1)
        index = int(distance.masked_fill(~available, float("inf")).argmin())
        picks.append(index)
        available[index] = False
        total += features[index]
    return torch.tensor(picks, dtype=torch.long, device=features.device)


@torch.no_grad()
def embed(
    model: nn.Module, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, batch: int = 500
) -> torch.Tensor:
    """``model.features`` of uint8 images (no augmentation), computed ``batch`` images at a time."""
    chunks = [
        model.features(normalize(images[start : start + batch].float().div(255.0), mean, std))
        for start in range(0, len(images), batch)
    ]
    return torch.cat(chunks)


class Herding:
    """IPC real images per class chosen by herding in the trained expert's feature space."""

    def run(self, ctx: DistillContext) -> DistillOutput:
        s, train, sampler, device = ctx.settings, ctx.train, ctx.sampler, ctx.device
        if s.factor != 1:
            raise TgddError(f"herding selects whole real images: distill.factor must be 1, not {s.factor}")
        channels, size = train.images.shape[1], train.images.shape[2]
        model = build_model(ctx.cfg.experts.arch, channels, size, train.num_classes).to(device)
        model.load_state_dict(ctx.trajectories.snapshots[0][ctx.trajectories.epochs])
        model.eval()
        mean, std = train.mean.to(device), train.std.to(device)
        chosen = []
        for c in range(train.num_classes):
            pool = sampler.by_class[c]
            pick = herding_select(embed(model, sampler.images[pool], mean, std), s.ipc)
            chosen.append(sampler.images[pool[pick]].float().div(255.0))
        return DistillOutput(torch.cat(chosen))


implements("herding", Herding())
