"""Herding's card: real images selected in the expert's feature space."""

from __future__ import annotations

from tgdd.cards.base import MethodCard
from tgdd.cards.selection import selection_defaults

HERDING = MethodCard(
    module="tgdd.methods.herding",
    needs_trajectories=True,
    optimizes_images=False,
    summary="herding in the expert's feature space",
    defaults=selection_defaults,
)
