"""TGDD's card: trajectory-guided distribution matching (SPEC §3)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from tgdd.cards.base import MethodCard, MethodSettings
from tgdd.data.registry import DatasetSpec


class TGDDSettings(MethodSettings):
    alpha: float | None = Field(None, ge=0, description="weight of L_SDC; null: 2.5 at IPC <= 10, 0.5 above (SPEC §3)")
    expert_region: int = Field(7, ge=1, description="L: the expert stage is drawn from j..min(j+L-1, E)")

    def resolve(self, ipc: int, spec: DatasetSpec) -> TGDDSettings:
        return self if self.alpha is not None else self.model_copy(update={"alpha": 2.5 if ipc <= 10 else 0.5})


def tgdd_defaults(ipc: int, spec: DatasetSpec) -> dict[str, Any]:
    """SPEC §3 and the authors' arg_condense.py/reproduce_condense.py."""
    return {
        "iterations": 10_000,
        "factor": 2,
        "init": "mix",
        "lr_img": (0.01 if spec.image_size <= 64 else 0.1) * ipc,
        "real_batch": 128,
        "dsa_strategy": "color_crop_cutout",
        "augment_semantics": "idc",
    }


TGDD = MethodCard(
    module="tgdd.methods.matching",
    needs_trajectories=True,
    optimizes_images=True,
    summary="TGDD: trajectory-guided distribution matching",
    defaults=tgdd_defaults,
    settings=TGDDSettings,
    terms=("loss", "mmd", "sdc"),
)
