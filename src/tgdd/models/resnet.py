"""ResNet-10 with average-pool downsampling (``resnet10-ap``), the cross-architecture
model of the TGDD paper, after the IDC/DANCE code bases: BasicBlocks [1, 1, 1, 1] with
widths 64..512, strided convs replaced by 2x2 average pooling, instance norm by default.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from tgdd.models import register_family
from tgdd.models.layers import NORM_SUFFIX, norm_layer


class BasicBlockAP(nn.Module):
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


class ResNetAP(nn.Module):
    def __init__(self, channels: int, image_size: int, num_classes: int, blocks: list[int], norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 64, 3, padding=1, bias=False)
        self.bn1 = norm_layer(norm, 64)
        in_planes = 64
        stages = []
        size = image_size
        for i, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks, strict=True)):
            stride = 1 if i == 0 or size < 2 else 2
            size //= stride
            layers = []
            for b in range(count):
                layers.append(BasicBlockAP(in_planes, planes, stride if b == 0 else 1, norm))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.feature_dim = 512
        self.classifier = nn.Linear(512, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.stages(out)
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


_BLOCKS = {"10": [1, 1, 1, 1], "18": [2, 2, 2, 2]}


@register_family(r"resnet(?P<n>10|18)-ap(?P<norm>-in|-bn|-none)?", "resnet10-ap[-bn]")
def _build_resnet_ap(match: re.Match[str], channels: int, image_size: int, num_classes: int) -> nn.Module:
    return ResNetAP(channels, image_size, num_classes, _BLOCKS[match["n"]], NORM_SUFFIX[match["norm"] or ""])
