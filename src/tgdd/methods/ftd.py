"""FTD (Du et al., "Minimizing the Accumulated Trajectory Error to Improve Dataset Distillation", CVPR 2023),
as its authors' code does it (github AngusDujw/FTD-distillation, ``distill/distill_FTD.py``; docs/fidelity.md,
section FTD).

Its distillation is MTT's, line for line (:class:`tgdd.methods.mtt.MTT`: expert cycle, start epoch, unrolled
student, normalised matching loss, learnable lr), with two additions:

- the experts are FTD's own recipe (``buffer_FTD.py``: MTT's buffers trained with GSAM, :mod:`tgdd.gsam`),
  trained by ``tgdd experts`` for the card's ``expert_recipe="ftd"``;
- an exponential moving average of the synthetic images (``model_ema.ModelEmaV2`` over ``[image_syn]``),
  started at the initial images and updated after every image step,
  ``ema = decay * ema + (1 - decay) * images``; the stored set is the average (the one their Table 7's
  "EMA Decay" is a setting of), the lr learned beside it as MTT's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from tgdd.cards.ftd import FTDSettings
from tgdd.methods import DistillContext, DistillOutput, implements
from tgdd.methods.loop import Measured, Space, Step
from tgdd.methods.mtt import MTT, MTTState


def ema_update(average: torch.Tensor, value: torch.Tensor, decay: float) -> torch.Tensor:
    """``decay * average + (1 - decay) * value``, in the order ModelEmaV2's ``update`` computes it."""
    return decay * average + (1.0 - decay) * value


@dataclass
class FTDState(MTTState):
    """:class:`MTTState` plus the moving average of the images (in their space: normalised)."""

    average: torch.Tensor

    def own_state(self) -> dict[str, Any]:
        return {**super().own_state(), "ema": self.average.detach().cpu()}

    def load_own_state(self, blob: Mapping[str, Any]) -> None:
        super().load_own_state(blob)
        with torch.no_grad():
            self.average.copy_(blob["ema"])


class FTD(MTT):
    """MTT's loop, the average updated after each iteration's image step and stored as the set."""

    settings_type = FTDSettings
    remedy = "lower distill.lr_img or distill.ftd.lr_lr"

    def initial_state(self, ctx: DistillContext, space: Space) -> FTDState:
        s = super().initial_state(ctx, space)
        average = s.images.images.detach().clone()  # ModelEmaV2 deep-copies the images before any step
        return FTDState(s.images, s.syn_lr, s.lr_optimizer, s.experts, average)

    def prepare(self, ctx: DistillContext, state: FTDState, space: Space) -> Step:
        mtt_step = super().prepare(ctx, state, space)
        decay = ctx.settings.of(FTDSettings).ema_decay

        def step(state: FTDState) -> Measured:
            measured = mtt_step(state)
            with torch.no_grad():  # ema.update([image_syn]) after optimizer_img.step() (distill_FTD.py l. 535)
                state.average.copy_(ema_update(state.average, state.images.images, decay))
            return measured

        return step

    def output(self, ctx: DistillContext, state: FTDState, space: Space) -> DistillOutput:
        """The averaged images (on the pixel scale), the records and the learned lr (as MTT's)."""
        out = super().output(ctx, state, space)
        return DistillOutput(space.to_pixels(state.average.detach().clone()), out.records, extra=out.extra)


implements("ftd", FTD())
