"""K networks of one architecture as ONE grouped network: the stacked forward without vmap.

:func:`tgdd.stacked.stacked_forward` runs K networks through :func:`torch.func.vmap`, which turns
each convolution into a grouped one but decomposes instance norm and average pooling into several
elementwise operations per layer; on a CPU that made stacked training slower than K separate runs
(``benchmarks/results/stacked_eval_cpu.md``). This module builds, once, a *grouped twin* of the
architecture that works on the layout ``[B, K*C, H, W]`` (network k's channels are the k-th block
of C) and so needs no vmap at all:

* a convolution becomes one with ``groups * K`` (network k's block sees only network k's block);
* ``GroupNorm(g, C)`` becomes ``GroupNorm(K*g, K*C)``: groups stay inside a network's block, so
  instance norm (``g = C``) stays per channel;
* ``BatchNorm2d(C)`` becomes ``BatchNorm2d(K*C)``: per channel, so per network; its running
  statistics are views of the stacked ``[K, C]`` buffers and update them in place;
* a linear layer becomes a batched matrix product over the K networks (:class:`StackedLinear`);
* a non-overlapping average pool becomes a depthwise convolution with a constant ``1/s^2`` kernel
  (:class:`DepthwisePool`: the same numbers, a faster backward on a CPU);
* ReLU, max and adaptive pools, and flattening from dim 1 act per channel as they are.

Its parameters and buffers are views of the very ``[K, ...]`` tensors of
:func:`torch.func.stack_module_state`, so the optimiser, the checkpoints and
:func:`tgdd.stacked.unstack_into` do not change. Only containers whose own forward is channel-local
(:data:`CHANNEL_LOCAL`: composition, sums of one layout, pools, flattening from dim 1) are allowed;
a DenseNet concatenates channels and has no twin: it stacks through vmap. Written by hand because
no library builds grouped twins of modules; ``tests/test_stacked.py`` runs every zoo network
through both forwards against separate runs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from tgdd.models.convnet import ConvNet
from tgdd.models.resnet import BasicBlockAP
from tgdd.models.zoo import BasicBlock, FeatureClassifier

CHANNEL_LOCAL: tuple[type[nn.Module], ...] = (nn.Sequential, ConvNet, FeatureClassifier, BasicBlockAP, BasicBlock)
"""Containers whose own forward only composes children, adds tensors of one layout, pools or
flattens from dim 1: correct on the grouped layout as written (exact types, not subclasses)."""

PER_CHANNEL: tuple[type[nn.Module], ...] = (nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Identity)


class StackedLinear(nn.Module):
    """K linear layers on ``[B, K*F]`` -> ``[B, K*O]`` (weight ``[K, O, F]``, bias ``[K, O]``: the
    stacked tensors themselves)."""

    def __init__(self, k: int, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(k, out_features, in_features, device="meta"))
        self.bias = nn.Parameter(torch.empty(k, out_features, device="meta")) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, out_features, in_features = self.weight.shape
        per_network = x.view(x.shape[0], k, in_features).transpose(0, 1)  # [K, B, F]
        weight = self.weight.transpose(1, 2)
        if self.bias is None:
            y = torch.bmm(per_network, weight)
        else:
            y = torch.baddbmm(self.bias.unsqueeze(1), per_network, weight)
        return y.transpose(0, 1).reshape(x.shape[0], k * out_features)


def depthwise_pool(x: torch.Tensor, size: int) -> torch.Tensor:
    """``F.avg_pool2d(x, size, size)`` as a depthwise convolution with a constant ``1/size^2``
    kernel: the same numbers, and on a CPU thread a backward about 2.5x faster at these sizes."""
    channels = x.shape[1]
    kernel = torch.full((channels, 1, size, size), 1.0 / size**2, dtype=x.dtype, device=x.device)
    return F.conv2d(x, kernel, stride=size, groups=channels)


class DepthwisePool(nn.Module):
    """A non-overlapping square average pool as :func:`depthwise_pool`."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise_pool(x, self.size)


class PooledBasicBlockAP(BasicBlockAP):
    """:class:`BasicBlockAP` whose stride pool is :func:`depthwise_pool` (the same numbers)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        if self.stride != 1:
            out = depthwise_pool(out, 2)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


CONTAINER_TWINS: dict[type[nn.Module], type[nn.Module]] = {BasicBlockAP: PooledBasicBlockAP}
"""Channel-local containers with a faster forward of the same submodules."""


def _plain_pool(module: nn.AvgPool2d) -> int | None:
    """The window of a non-overlapping, unpadded square average pool, else None."""
    window, stride = module.kernel_size, module.stride
    window = window if isinstance(window, int) else (window[0] if window[0] == window[1] else None)
    stride = stride if isinstance(stride, int) else (stride[0] if stride[0] == stride[1] else None)
    plain = module.padding in (0, (0, 0)) and not module.ceil_mode and not module.divisor_override
    return int(window) if window is not None and window == stride and plain else None


def _twin_leaf(module: nn.Module, k: int) -> nn.Module | None:
    """The grouped twin of one leaf module for K networks, or None if it has none."""
    if isinstance(module, nn.Conv2d) and module.padding_mode == "zeros":
        return nn.Conv2d(k * module.in_channels, k * module.out_channels, module.kernel_size, module.stride,
                         module.padding, module.dilation, k * module.groups, module.bias is not None,
                         device="meta")  # fmt: skip
    if isinstance(module, nn.GroupNorm):
        return nn.GroupNorm(k * module.num_groups, k * module.num_channels, module.eps, module.affine, device="meta")
    if isinstance(module, nn.BatchNorm2d) and module.track_running_stats and module.momentum is not None:
        return nn.BatchNorm2d(k * module.num_features, module.eps, module.momentum, module.affine, device="meta")
    if isinstance(module, nn.Linear):
        return StackedLinear(k, module.in_features, module.out_features, module.bias is not None)
    if isinstance(module, nn.AvgPool2d):
        size = _plain_pool(module)
        return DepthwisePool(size) if size is not None else copy.deepcopy(module)
    if isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1:
        return copy.deepcopy(module)
    if type(module) in PER_CHANNEL:
        return copy.deepcopy(module)
    return None


def grouped_twin(template: nn.Module, k: int) -> nn.Module | None:
    """``template``'s grouped twin for K networks, on the meta device (no memory); None when a
    container is not channel-local or a leaf has no twin (the network then stacks through vmap)."""
    twin = copy.deepcopy(template).to("meta")
    if not list(twin.children()):
        return None  # a bare leaf is no network of the zoo
    for module in list(twin.modules()):
        children = list(module.named_children())
        if not children:
            continue
        if type(module) not in CHANNEL_LOCAL:
            return None
        if type(module) in CONTAINER_TWINS:
            module.__class__ = CONTAINER_TWINS[type(module)]  # same submodules, the faster forward
        for name, child in children:
            if list(child.children()):
                continue  # a container: visited in its turn
            leaf = _twin_leaf(child, k)
            if leaf is None:
                return None
            setattr(module, name, leaf)
    return twin


def _as_twin(tensor: torch.Tensor, twin_tensor: torch.Tensor) -> torch.Tensor:
    """A stacked ``[K, ...]`` tensor as the twin's tensor, a view: gradients and in-place updates
    (batch norm's running statistics) reach the stacked tensor."""
    if tensor.dim() == twin_tensor.dim() or twin_tensor.dim() == 0:  # StackedLinear; num_batches_tracked [K]
        return tensor
    return tensor.flatten(0, 1)


def grouped_forward(template: nn.Module, k: int) -> Callable[..., torch.Tensor] | None:
    """``(params, buffers, x[K, B, ...]) -> logits[K, B, classes]`` over the tensors of
    :func:`torch.func.stack_module_state`, as :func:`tgdd.stacked.stacked_forward` computes it, on
    the grouped twin; None if ``template`` has none."""
    twin = grouped_twin(template, k)
    if twin is None:
        return None
    twin.train(template.training)
    twin_tensors = {**dict(twin.named_parameters()), **dict(twin.named_buffers())}

    def forward(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        networks, batch = x.shape[:2]
        grouped = x.transpose(0, 1).reshape(batch, networks * x.shape[2], *x.shape[3:])
        tensors = {name: _as_twin(t, twin_tensors[name]) for name, t in {**params, **buffers}.items()}
        return functional_call(twin, tensors, (grouped,)).view(batch, networks, -1).transpose(0, 1)

    return forward


def can_group(model: nn.Module) -> bool:
    """Whether ``model``'s architecture has a grouped twin (stacked training without vmap)."""
    return grouped_twin(model, 2) is not None
