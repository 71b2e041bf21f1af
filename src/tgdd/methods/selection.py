"""Coreset baselines: real images chosen without optimisation."""

from __future__ import annotations

from typing import Any

from tgdd.data.registry import DatasetSpec
from tgdd.methods import DistillContext, DistillOutput, implements
from tgdd.synthetic import initial_images


class RandomSelection:
    """IPC real images per class drawn uniformly at random (the field's lower baseline)."""

    def defaults(self, ipc: int, spec: DatasetSpec) -> dict[str, Any]:
        return {"iterations": 0, "factor": 1, "alpha": 0.0, "lr_img": 1.0, "real_batch": 1}

    def run(self, ctx: DistillContext) -> DistillOutput:
        s = ctx.settings
        images = initial_images(ctx.sampler, ctx.train.num_classes, s.ipc, s.factor, s.init, ctx.gen)
        return DistillOutput(images)


implements("random", RandomSelection())
