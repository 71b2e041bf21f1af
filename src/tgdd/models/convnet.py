"""ConvNet of the dataset-distillation literature (SPEC §4).

``convnet-<depth>[-bn|-none][-w<width>]``: blocks of 3x3 conv -> norm -> ReLU -> 2x2
average pool, then one linear layer. 28 px input is padded by 3 in the first conv so
that it behaves as 32 px (SPEC §4).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from tgdd.errors import TgddError
from tgdd.models import register_family
from tgdd.models.layers import NORM_SUFFIX, norm_layer


class ConvNet(nn.Module):
    def __init__(
        self,
        channels: int,
        image_size: int,
        num_classes: int,
        depth: int = 3,
        width: int = 128,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        size = 32 if image_size == 28 else image_size
        if size >> depth < 1:
            raise TgddError(f"convnet depth {depth} pools a {image_size} px image below 1 px")
        layers: list[nn.Module] = []
        in_channels = channels
        for d in range(depth):
            padding = 3 if (d == 0 and image_size == 28) else 1
            layers += [
                nn.Conv2d(in_channels, width, kernel_size=3, padding=padding),
                norm_layer(norm, width),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(kernel_size=2, stride=2),
            ]
            in_channels = width
            size //= 2
        self.body = nn.Sequential(*layers)
        self.feature_dim = width * size * size
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)

    def activations(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Each block's activation map, after conv -> norm -> ReLU and before its pool (``[N, width,
        h, w]``, block 1 first; what DataDAM's forward hooks on the ReLUs record), and
        :meth:`features` of the same forward pass."""
        maps = []
        for layer in self.body:
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                maps.append(x)  # the in-place ReLU's output; the pool after it writes a new tensor
        return maps, x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_family("convnet")
def _build_convnet(match: re.Match[str], channels: int, image_size: int, num_classes: int) -> nn.Module:
    return ConvNet(
        channels,
        image_size,
        num_classes,
        depth=int(match["depth"]),
        width=int(match["width"] or 128),
        norm=NORM_SUFFIX[match["norm"] or ""],
    )
