"""DANCE (Zhang et al., IJCAI 2024), TGDD's direct predecessor (SPEC §3, last paragraph; the
authors' DANCE.py).

Per iteration it matches mean features under an *interpolated* encoder
``lambda * p[i][0] + (1 - lambda) * p[i][E]`` (trajectory i and lambda ~ U[0,1] drawn afresh),
with no cross-entropy in that pass; then a second pass over the classes, the "distribution
calibration": per class ``beta * CE(p[i][E](syn_c), c)`` on a fresh, augmented view of that
class's synthetic images, one more step of the SAME image optimiser (so its momentum carries over
from the matching pass). The authors' code adds the cross-entropy unweighted and makes one
calibration pass (``iter_calib = 1``): ``distill.dance.calib_weight`` and ``calib_passes``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tgdd.cards.dance import DANCESettings
from tgdd.experts import StateDict
from tgdd.methods import DistillContext, implements
from tgdd.methods.loop import ClassDraws, Iteration, Phase, Terms, class_batch, class_batches, segment_mean
from tgdd.methods.matching import (
    MatchingMethod,
    decoded_input,
    draw_synthetic_subsets,
    matching_phase,
    synthetic_batch,
)


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


def calibration_phase(it: Iteration, trained: nn.Module) -> Phase:
    """DANCE's calibration pass: class c's decoded synthetic batch, one augmentation draw for it
    (``aug(img_syn)`` with ``batch=True``), ``calib_weight * CE`` under the trained endpoint p[i][E]
    (term ``calibration``: the unweighted CE)."""
    ctx, s = it.ctx, it.ctx.settings
    weight = s.of(DANCESettings).calib_weight

    def synthetic(images: torch.Tensor) -> torch.Tensor:
        return it.space.network_input(synthetic_batch(images, s, ctx.gen))

    def one(c: int, images: torch.Tensor) -> tuple[torch.Tensor, Terms]:
        (syn,) = class_batch(it, c, images, synthetic, real=False)
        ce = calibration_loss(trained, syn, c)
        loss = weight * ce
        return loss, {"loss": loss.detach(), "calibration": ce.detach()}

    def batched(images: torch.Tensor, drawn: ClassDraws) -> tuple[torch.Tensor, Terms]:
        b = class_batches(it, images, decoded_input(it), drawn)
        per_image = F.cross_entropy(trained(b.syn), b.syn_ids, reduction="none")
        ce = segment_mean(per_image.unsqueeze(1), b.syn_ids, b.num_classes).squeeze(1)
        loss = weight * ce
        return loss, {"loss": loss.detach().sum(), "calibration": ce.detach().sum()}

    return Phase(one, batched, lambda: draw_synthetic_subsets(it, real=False))


class DANCE(MatchingMethod):
    """Interpolated-encoder matching, then a calibration pass over the classes.

    ``networks`` returns no expert, so the matching pass is pure MMD; the trained endpoint p[i][E]
    sits in the second network for :func:`calibration_phase`.
    """

    def networks(self, ctx: DistillContext, nets: tuple[nn.Module, nn.Module]) -> tuple[nn.Module, nn.Module | None]:
        traj = ctx.trajectories
        gen = ctx.gen
        i = int(torch.randint(len(traj.snapshots), (1,), generator=gen, device=gen.device))
        # float32 whatever torch's default dtype: the same lambda (and generator state) in a float64 run
        lam = float(torch.rand((), generator=gen, device=gen.device, dtype=torch.float32))
        start, end = traj.snapshots[i][0], traj.snapshots[i][traj.epochs]
        extractor, expert = nets
        extractor.load_state_dict(interpolate_state(start, end, lam))
        expert.load_state_dict(end)
        return extractor, None

    def phases(self, it: Iteration, nets: tuple[nn.Module, nn.Module]) -> list[Phase]:
        passes = it.ctx.settings.of(DANCESettings).calib_passes
        return [matching_phase(it, alpha=0.0)] + [calibration_phase(it, nets[1]) for _ in range(passes)]


implements("dance", DANCE())
