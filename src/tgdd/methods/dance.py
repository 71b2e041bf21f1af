"""DANCE (Zhang et al., IJCAI 2024), TGDD's direct predecessor (SPEC §3, last paragraph).

Per iteration it matches mean features under an *interpolated* encoder
``lambda * p[i][0] + (1 - lambda) * p[i][E]`` (trajectory i and lambda ~ U[0,1] drawn afresh),
with no cross-entropy in that step; then, per class, a separate "distribution calibration"
step: ``beta * CE(p[i][E](syn_c), c)`` on a fresh view of that class's synthetic images, one
more SGD step. DANCE's calibration weight beta is stored in ``distill.alpha``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tgdd.augment import DiffAugment, normalize
from tgdd.data.registry import DatasetSpec
from tgdd.experts import StateDict
from tgdd.methods import DistillContext, implements
from tgdd.methods.matching import TGDD, MatchingMethod, synthetic_batch


def interpolate_state(start: StateDict, end: StateDict, lam: float) -> StateDict:
    """``lam * start + (1 - lam) * end`` for every floating-point tensor; other tensors (integer
    buffers such as batch-norm counters) are taken from ``end``, the trained network."""
    return {
        key: torch.lerp(value, start[key], lam) if value.is_floating_point() else value.clone()
        for key, value in end.items()
    }


def calibration_loss(expert: nn.Module, syn: torch.Tensor, label: int) -> torch.Tensor:
    """Cross-entropy of the trained expert on one class's (augmented, normalised) synthetic batch."""
    target = torch.full((len(syn),), label, device=syn.device, dtype=torch.long)
    return F.cross_entropy(expert(syn), target)


class DANCE(MatchingMethod):
    """Interpolated-encoder matching plus a separate calibration step per class.

    ``networks`` returns no expert, so the shared matching step is pure MMD (alpha = 0 there);
    the trained endpoint p[i][E] sits in the second network for :meth:`second_loss`, which is
    weighted by ``alpha`` (DANCE's beta).
    """

    def defaults(self, ipc: int, spec: DatasetSpec) -> dict[str, Any]:
        lr_img = TGDD().defaults(ipc, spec)["lr_img"]
        return {"iterations": 10_000, "factor": 2, "alpha": 1.0, "lr_img": lr_img, "real_batch": 128}

    def networks(self, ctx: DistillContext, nets: tuple[nn.Module, nn.Module]) -> tuple[nn.Module, nn.Module | None]:
        traj = ctx.trajectories
        gen = ctx.gen
        i = int(torch.randint(len(traj.snapshots), (1,), generator=gen, device=gen.device))
        lam = float(torch.rand((), generator=gen, device=gen.device))
        start, end = traj.snapshots[i][0], traj.snapshots[i][traj.epochs]
        extractor, expert = nets
        extractor.load_state_dict(interpolate_state(start, end, lam))
        expert.load_state_dict(end)
        return extractor, None

    def second_loss(
        self, ctx: DistillContext, nets: tuple[nn.Module, nn.Module], c: int, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """DANCE's calibration of class ``c``: (beta * CE, CE) under p[i][E] on a freshly decoded,
        augmented view of its synthetic images (one augmentation draw for the batch, as in matching)."""
        s = ctx.settings
        syn = synthetic_batch(images, s, ctx.gen)
        mean, std = ctx.train.mean.to(syn.device), ctx.train.std.to(syn.device)
        (syn,) = DiffAugment(s.dsa_strategy).siamese(normalize(syn, mean, std), gen=ctx.gen)
        ce = calibration_loss(nets[1], syn, c)
        return s.alpha * ce, ce.detach()


implements("dance", DANCE())
