"""The random-selection baseline's card, and the defaults every selection method shares."""

from __future__ import annotations

from typing import Any

from tgdd.cards.base import MethodCard
from tgdd.data.registry import DatasetSpec


def selection_defaults(ipc: int, spec: DatasetSpec) -> dict[str, Any]:
    """Selection methods optimise nothing: the image-update keys do not apply (recorded as such)."""
    return {
        "iterations": 0,
        "factor": 1,
        "init": "real",
        "lr_img": 1.0,
        "real_batch": 1,
        "dsa_strategy": "none",
        "augment_semantics": "dsa",
    }


RANDOM = MethodCard(
    module="tgdd.methods.selection",
    needs_trajectories=False,
    optimizes_images=False,
    summary="random real images per class",
    defaults=selection_defaults,
)
