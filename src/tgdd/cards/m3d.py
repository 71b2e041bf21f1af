"""M3D's card: distribution matching under a kernel MMD (Zhang, Li, Wang, Zeng, Ge, "M3D: Dataset
Condensation by Minimizing Maximum Mean Discrepancy", AAAI 2024, arXiv 2312.15927).

The authors' repository (github.com/Hansong-Zhang/M3D) held only a README ("the source code will be
released soon") in every copy that could be read here, so everything below comes from the paper as far
as it could be read (its abstract, its Figure 2 and its two named techniques, "Factor & Up-sampling" and
"Iteration per Random Model"); what it does not say is chosen as the DM/IDC code bases do, and
docs/fidelity.md (section M3D) says which is which.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from tgdd.cards.base import MethodCard, MethodSettings
from tgdd.cards.tgdd import tgdd_defaults


class M3DSettings(MethodSettings):
    kernel: Literal["gaussian", "linear"] = Field(
        "gaussian",
        description="kernel of the MMD between a class's real and synthetic features: gaussian (M3D's, "
        "characteristic) or linear (the biased MMD of a linear kernel is DM's mean-feature distance)",
    )
    bandwidths: Literal["median"] | list[Annotated[float, Field(gt=0)]] = Field(
        "median",
        min_length=1,
        description="sigma^2 of each Gaussian kernel, summed: k(x,y) = sum_s exp(-|x-y|^2 / (2 sigma_s^2)); "
        "median: one kernel at the median heuristic (the median squared distance between the class's pooled "
        "real and synthetic features); the paper's bandwidth could not be read",
    )
    iterations_per_model: int = Field(
        1,
        ge=1,
        description="image updates per freshly initialised network (the paper's 'Iteration per Random Model'; "
        "its value could not be read: 1 is DM's and IDC's code, a new network every iteration)",
    )


M3D = MethodCard(
    module="tgdd.methods.m3d",
    needs_trajectories=False,
    optimizes_images=True,
    summary="M3D: kernel-MMD distribution matching, random networks",
    # Factor & Up-sampling is IDC's multi-formation, so its code base's settings (those TGDD's and DANCE's
    # reproduce_condense.py set); the paper's own iterations and image lr could not be read
    defaults=tgdd_defaults,
    settings=M3DSettings,
    terms=("loss", "mmd"),
)
