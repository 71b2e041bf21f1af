"""Coreset baselines: real images chosen without optimisation."""

from __future__ import annotations

from tgdd.methods import DistillContext, DistillOutput, implements
from tgdd.synthetic import initial_images


class RandomSelection:
    """IPC real images per class drawn uniformly at random (the field's lower baseline)."""

    def run(self, ctx: DistillContext) -> DistillOutput:
        s = ctx.settings
        images = initial_images(ctx.sampler, ctx.train.num_classes, s.ipc, s.factor, s.init, ctx.gen)
        return DistillOutput(images)


implements("random", RandomSelection())
