"""ResNet with average-pool downsampling (``resnet10-ap``, ``resnet18-ap``), the
cross-architecture model of the TGDD paper, after the IDC/DANCE code bases: BasicBlocks with
the stride replaced by 2x2 average pooling, instance norm by default (``-bn`` for batch norm),
``-w<base>`` to scale the widths 64..512 down for CPU-sized runs.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from tgdd.models import register_family
from tgdd.models.layers import NORM_SUFFIX, norm_layer
from tgdd.models.zoo import FeatureClassifier, resnet_body


class BasicBlockAP(nn.Module):
    """Two 3x3 convs with a residual; downsampling by average pooling instead of a stride."""

    def __init__(self, in_planes: int, planes: int, stride: int, norm: str) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(in_planes, planes, 3, padding=1, bias=False)
        self.bn1 = norm_layer(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = norm_layer(norm, planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            layers: list[nn.Module] = [nn.Conv2d(in_planes, planes, 1, bias=False)]
            if stride != 1:
                layers.append(nn.AvgPool2d(2, 2))
            layers.append(norm_layer(norm, planes))
            self.shortcut = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        if self.stride != 1:
            out = F.avg_pool2d(out, 2, 2)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


_BLOCKS = {"10": (1, 1, 1, 1), "18": (2, 2, 2, 2)}


@register_family("resnet-ap")
def _build_resnet_ap(match: re.Match[str], channels: int, image_size: int, num_classes: int) -> nn.Module:
    body = resnet_body(
        channels,
        image_size,
        _BLOCKS[match["n"]],
        NORM_SUFFIX[match["norm"] or ""],
        block=BasicBlockAP,
        width=int(match["width"] or 64),
    )
    return FeatureClassifier(*body, num_classes)
