"""Building blocks shared by the networks."""

from __future__ import annotations

from torch import nn

from tgdd.errors import TgddError

NORMS = ("instance", "batch", "none")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """Instance norm is GroupNorm with one group per channel (affine), as in the DC lineage."""
    if kind == "instance":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise TgddError(f"unknown norm '{kind}'; valid: {', '.join(NORMS)}")


NORM_SUFFIX = {"": "instance", "-in": "instance", "-bn": "batch", "-none": "none"}
