"""DataDAM's card: attention matching across layers plus a last-layer MMD, random networks
(main_DataDAM.py, utils.get_attention; docs/fidelity.md, section DataDAM)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tgdd.cards.base import MethodCard, MethodSettings
from tgdd.data.registry import DatasetSpec


class DataDAMSettings(MethodSettings):
    """DataDAM's own keys (main_DataDAM.py, utils.get_attention); docs/fidelity.md, section DataDAM."""

    power: float = Field(
        1.0,
        ge=1,
        description="p of the attention map, the channel sum of abs(f)^p (the authors' code calls it with 1; paper: 4)",
    )
    attention_layers: Literal["all-but-last"] | list[int] = Field(
        "all-but-last",
        description="ConvNet blocks (1 = first) whose post-ReLU maps are matched; all-but-last: 1..depth-1 "
        "(code and paper; the last block's output is the MMD feature)",
    )
    attention_weight: float = Field(
        100.0, ge=0, description="weight of each layer's attention term (the code's 100; the paper writes 1)"
    )
    task_balance: float | None = Field(
        None,
        ge=0,
        description="lambda: the MMD term weighs attention_weight*lambda; null: 0.01 up to 64 px, 0.02 above "
        "(README table, low/high resolution)",
    )
    norm: Literal["batch", "instance", "none"] = Field(
        "batch",
        description="norm of the random ConvNet (depth, width from experts.arch): batch, which the code forces; "
        "instance, the paper's",
    )

    def resolve(self, ipc: int, spec: DatasetSpec) -> DataDAMSettings:
        if self.task_balance is not None:
            return self
        return self.model_copy(update={"task_balance": 0.01 if spec.image_size <= 64 else 0.02})


def datadam_defaults(ipc: int, spec: DatasetSpec) -> dict[str, Any]:
    """DataDAM's README hyperparameter table (img/HPTable.png): 8000 iterations, image lr 1 up to IPC 50,
    10 above; main_DataDAM.py's defaults for what the table leaves out: 64 real images per class,
    random real images as the start, DSA's full strategy read one group per call (as DM)."""
    return {
        "iterations": 8000,
        "factor": 1,
        "init": "real",
        "lr_img": 1.0 if ipc <= 50 else 10.0,
        "real_batch": 64,
        "dsa_strategy": "color_crop_cutout_flip_scale_rotate",
        "augment_semantics": "dsa",
    }


DATADAM = MethodCard(
    module="tgdd.methods.datadam",
    needs_trajectories=False,
    optimizes_images=True,
    summary="DataDAM: attention matching across layers + last-layer MMD, random networks",
    defaults=datadam_defaults,
    settings=DataDAMSettings,
    terms=("loss", "attention", "mmd"),
    image_update="summed",
    image_space="normalised",
    real_batches="fresh",
)
