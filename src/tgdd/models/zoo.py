"""Cross-architecture zoo of the dataset-distillation literature.

Distilled images are also judged on networks they were not distilled with. These are the
networks of the DC/DSA/DM/IDC code bases' ``networks.py``, made to run on every resolution
of the dataset registry (8..128 px, 1 or 3 channels):

* ``resnet10`` / ``resnet18`` (instance norm) and ``-bn``: CIFAR-style ResNets - 3x3 stem
  at stride 1, no max pool, BasicBlocks [1, 1, 1, 1] / [2, 2, 2, 2] downsampling by strided
  convs, global average pool (512 features).
* ``densenet121``: CIFAR DenseNet-121 - growth 32, blocks [6, 12, 24, 16], compression 0.5,
  transitions with 2x2 average pooling, batch norm, global average pool (1024 features).
* ``vgg11`` (instance norm) and ``vgg11-bn``: the flattened final map (512 x s x s) feeds
  one linear layer.
* ``alexnet``: DC's small-image AlexNet (no norm); the flattened final map (192 x s x s)
  feeds one linear layer.

Small images skip the downsampling steps that :func:`can_halve` refuses, so that an 8 px
image still yields features that depend on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from tgdd.models import ModelFactory, register_model
from tgdd.models.layers import norm_layer

Body = tuple[nn.Sequential, int]
"""A feature extractor and the length of its flattened output."""

BodyBuilder = Callable[[int, int], Body]
"""``(channels, image_size) -> Body``."""

ConvSpec = tuple[int, int] | str
"""``(out_channels, kernel_size)`` for conv -> norm -> ReLU, or ``"M"`` for a 2x2 max pool."""

PADDED_28_EXTRA = 2
"""Extra first-conv padding per side that makes a 1-channel 28 px image act as 32 px (DC's MNIST setting)."""


def can_halve(size: int, min_size: int = 2) -> bool:
    """Whether halving a ``size`` px map keeps it at least ``min_size`` px.

    Maps that are normalised afterwards need ``min_size=2``: instance norm (GroupNorm(C, C))
    of a single pixel outputs its bias whatever the input, which would cut the features and
    the gradient off from the images. Only a final pool with nothing after it may reach 1 px.
    """
    return size // 2 >= min_size


def first_conv_padding(channels: int, image_size: int, kernel_size: int) -> tuple[int, int]:
    """Padding of the first conv and the size of its output map.

    'Same' padding, except that 1-channel 28 px images get 2 more pixels per side so the
    network sees them as 32 px, as DC's VGG and AlexNet do for MNIST.
    """
    padding = kernel_size // 2
    if channels == 1 and image_size == 28:
        padding += PADDED_28_EXTRA
    return padding, image_size + 2 * padding - kernel_size + 1


class FeatureClassifier(nn.Module):
    """``classifier(features(x))`` where ``features`` flattens the output of ``body``.

    Distribution matching compares ``features``; evaluation trains the whole network.
    """

    def __init__(self, body: nn.Sequential, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.body = body
        self.feature_dim = feature_dim
        self.classifier = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# --- ResNet -----------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; the first conv and the 1x1 shortcut carry the stride.

    Same constructor as :class:`tgdd.models.resnet.BasicBlockAP`, so either can build a
    :func:`resnet_body`.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm_layer(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = norm_layer(norm, planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), norm_layer(norm, planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


RESNET_WIDTHS = (64, 128, 256, 512)


def resnet_body(
    channels: int,
    image_size: int,
    blocks: Sequence[int],
    norm: str,
    block: Callable[[int, int, int, str], nn.Module] = BasicBlock,
    width: int = RESNET_WIDTHS[0],
) -> Body:
    """CIFAR-style ResNet: 3x3 stem at stride 1, four stages, global average pool.

    Stages 2..4 halve the map unless :func:`can_halve` refuses (small images). ``width``
    scales the stage widths (64 -> 64..512), for CPU-sized runs.
    """
    widths = tuple(w * width // RESNET_WIDTHS[0] for w in RESNET_WIDTHS)
    layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1, bias=False), norm_layer(norm, width), nn.ReLU()]
    in_planes, size = width, image_size
    for stage, (planes, count) in enumerate(zip(widths, blocks, strict=True)):
        stride = 2 if stage > 0 and can_halve(size) else 1
        size = -(-size // stride)  # a padded 3x3 conv at stride 2 rounds up
        for index in range(count):
            layers.append(block(in_planes, planes, stride if index == 0 else 1, norm))
            in_planes = planes
    layers.append(nn.AdaptiveAvgPool2d(1))
    return nn.Sequential(*layers), in_planes


# --- DenseNet ---------------------------------------------------------------------------


class DenseLayer(nn.Module):
    """Bottleneck (norm-ReLU-1x1 conv to 4k, norm-ReLU-3x3 conv to k) whose output is
    concatenated with its input, so each layer adds ``growth`` channels."""

    def __init__(self, in_planes: int, growth: int, norm: str) -> None:
        super().__init__()
        self.block = nn.Sequential(
            norm_layer(norm, in_planes),
            nn.ReLU(),
            nn.Conv2d(in_planes, 4 * growth, 1, bias=False),
            norm_layer(norm, 4 * growth),
            nn.ReLU(),
            nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.block(x), x], dim=1)


def transition(in_planes: int, out_planes: int, norm: str, pool: bool) -> nn.Sequential:
    """Norm-ReLU-1x1 conv that compresses the channels, then a 2x2 average pool if ``pool``."""
    layers: list[nn.Module] = [norm_layer(norm, in_planes), nn.ReLU(), nn.Conv2d(in_planes, out_planes, 1, bias=False)]
    if pool:
        layers.append(nn.AvgPool2d(2))
    return nn.Sequential(*layers)


def densenet_body(
    channels: int,
    image_size: int,
    blocks: Sequence[int],
    growth: int = 32,
    compression: float = 0.5,
    norm: str = "batch",
) -> Body:
    """CIFAR DenseNet: 3x3 stem to 2k channels at stride 1, dense blocks separated by
    transitions, then norm-ReLU and global average pool."""
    planes = 2 * growth
    layers: list[nn.Module] = [nn.Conv2d(channels, planes, 3, padding=1, bias=False)]
    size = image_size
    for index, count in enumerate(blocks):
        for _ in range(count):
            layers.append(DenseLayer(planes, growth, norm))
            planes += growth
        if index < len(blocks) - 1:
            pool = can_halve(size)
            size //= 2 if pool else 1
            compressed = int(planes * compression)
            layers.append(transition(planes, compressed, norm, pool))
            planes = compressed
    layers += [norm_layer(norm, planes), nn.ReLU(), nn.AdaptiveAvgPool2d(1)]
    return nn.Sequential(*layers), planes


# --- VGG and AlexNet --------------------------------------------------------------------


def conv_pool_body(channels: int, image_size: int, cfg: Sequence[ConvSpec], norm: str) -> Body:
    """Plain stack of conv-norm-ReLU and 2x2 max pools, as in DC's VGG and AlexNet.

    A pool that :func:`can_halve` refuses is left out, so the flattened final map is
    ``out_channels x s x s`` with ``s >= 1`` at every resolution.
    """
    layers: list[nn.Module] = []
    in_channels = channels
    first_padding, size = first_conv_padding(channels, image_size, _first_kernel(cfg))
    for index, spec in enumerate(cfg):
        if spec == "M":
            convs_follow = any(later != "M" for later in cfg[index + 1 :])
            if can_halve(size, 2 if convs_follow else 1):
                layers.append(nn.MaxPool2d(2, 2))
                size //= 2
            continue
        out_channels, kernel_size = spec
        padding = first_padding if not layers else kernel_size // 2  # 'same' after the first conv
        layers += [
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding),
            norm_layer(norm, out_channels),
            nn.ReLU(),
        ]
        in_channels = out_channels
    return nn.Sequential(*layers), in_channels * size * size


def _first_kernel(cfg: Sequence[ConvSpec]) -> int:
    return next(spec[1] for spec in cfg if spec != "M")


VGG11: tuple[ConvSpec, ...] = tuple(
    spec if spec == "M" else (spec, 3) for spec in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
)
ALEXNET: tuple[ConvSpec, ...] = ((128, 5), "M", (192, 5), "M", (256, 3), (192, 3), (192, 3), "M")

# --- registry ---------------------------------------------------------------------------


def _factory(build_body: BodyBuilder) -> ModelFactory:
    """Turn a body builder into a registry factory ``(channels, image_size, num_classes)``."""

    def build(channels: int, image_size: int, num_classes: int) -> nn.Module:
        return FeatureClassifier(*build_body(channels, image_size), num_classes)

    return build


ZOO: dict[str, BodyBuilder] = {
    "resnet10": partial(resnet_body, blocks=(1, 1, 1, 1), norm="instance"),
    "resnet10-bn": partial(resnet_body, blocks=(1, 1, 1, 1), norm="batch"),
    "resnet18": partial(resnet_body, blocks=(2, 2, 2, 2), norm="instance"),
    "resnet18-bn": partial(resnet_body, blocks=(2, 2, 2, 2), norm="batch"),
    "densenet121": partial(densenet_body, blocks=(6, 12, 24, 16)),
    "vgg11": partial(conv_pool_body, cfg=VGG11, norm="instance"),
    "vgg11-bn": partial(conv_pool_body, cfg=VGG11, norm="batch"),
    "alexnet": partial(conv_pool_body, cfg=ALEXNET, norm="none"),
}
"""Every network of the zoo by registry name."""

for _name, _build_body in ZOO.items():
    register_model(_name)(_factory(_build_body))
