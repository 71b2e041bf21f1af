"""DM's card: distribution matching with random networks (its main_DM.py)."""

from __future__ import annotations

from typing import Any

from tgdd.cards.base import MethodCard
from tgdd.data.registry import DatasetSpec


def dm_defaults(ipc: int, spec: DatasetSpec) -> dict[str, Any]:
    """DM's main_DM.py: 20k iterations, image lr 1 (on normalised images), 256 real per class, random
    real images as the start, DSA with the full strategy read one group per call."""
    return {
        "iterations": 20_000,
        "factor": 1,
        "init": "real",
        "lr_img": 1.0,
        "real_batch": 256,
        "dsa_strategy": "color_crop_cutout_flip_scale_rotate",
        "augment_semantics": "dsa",
    }


DM = MethodCard(
    module="tgdd.methods.matching",
    needs_trajectories=False,
    optimizes_images=True,
    summary="DM: distribution matching, random networks",
    defaults=dm_defaults,
    terms=("loss", "mmd"),
    image_update="summed",
    image_space="normalised",
    real_batches="fresh",
)
