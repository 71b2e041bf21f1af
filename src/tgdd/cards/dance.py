"""DANCE's card: an interpolated encoder and a calibration pass (its reproduce_condense.py sets what TGDD's does)."""

from __future__ import annotations

from pydantic import Field

from tgdd.cards.base import MethodCard, MethodSettings
from tgdd.cards.tgdd import tgdd_defaults


class DANCESettings(MethodSettings):
    calib_weight: float = Field(
        1.0, ge=0, description="weight of the calibration cross-entropy (the authors' code adds it unweighted)"
    )
    calib_passes: int = Field(1, ge=0, description="calibration passes over the classes per iteration (iter_calib)")


DANCE = MethodCard(
    module="tgdd.methods.dance",
    needs_trajectories=True,
    optimizes_images=True,
    summary="DANCE: interpolated encoder + calibration",
    defaults=tgdd_defaults,  # DANCE's reproduce_condense.py sets what TGDD's does
    settings=DANCESettings,
    terms=("loss", "mmd", "calibration"),
)
