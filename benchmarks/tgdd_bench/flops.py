"""Analytic FLOPs: the Conv2d/Linear calls of a network (MACs counted by forward hooks) and the work of one
TGDD iteration or one training step, pass by pass, so that a measured time can be set against them.

FLOPs = 2 x MACs; an input or a weight gradient costs one forward's FLOPs (one more GEMM of the same size).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from tgdd.data.registry import DatasetSpec
from tgdd.models import build_model
from tgdd_bench.machine import MIB

PASSES = ("fwd", "bwd_in", "bwd_w")  # forward, input gradient, weight (and bias) gradient


@dataclass(frozen=True)
class ConvSpec:
    """A Conv2d call without its batch size: what the microbenchmark needs to rebuild it."""

    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    bias: bool

    def describe(self) -> str:
        return (
            f"{self.in_channels}x{self.height}x{self.width} -> {self.out_channels}, "
            f"k{self.kernel[0]} s{self.stride[0]} p{self.padding[0]}"
        )


@dataclass(frozen=True)
class LayerCall:
    """One Conv2d or Linear call of a traced forward pass, per image."""

    name: str
    kind: str  # "conv" or "linear"
    macs: int  # multiply-accumulates for one image
    conv: ConvSpec | None  # None for Linear
    first: bool  # the first layer of the network: its input is the image


@dataclass(frozen=True)
class Work:
    """``count`` calls of ``layer`` on ``batch`` images, each with the given passes."""

    layer: LayerCall
    batch: int
    count: int
    passes: tuple[str, ...]

    @property
    def flops(self) -> float:
        """Every pass costs one forward's FLOPs (an input or a weight gradient is one more GEMM of the same size)."""
        return 2.0 * self.layer.macs * self.batch * self.count * len(self.passes)


def conv_macs(module: nn.Conv2d, output: torch.Tensor) -> int:
    """N * Cout * Hout * Wout * (Cin / groups) * kh * kw."""
    n, c_out, h_out, w_out = output.shape
    kh, kw = module.kernel_size
    return n * c_out * h_out * w_out * (module.in_channels // module.groups) * kh * kw


def linear_macs(module: nn.Linear, output: torch.Tensor) -> int:
    """rows * in_features * out_features (rows: every leading dimension)."""
    rows = output.numel() // module.out_features
    return rows * module.in_features * module.out_features


def layer_calls(model: nn.Module, input_shape: Sequence[int], call: str = "forward") -> list[LayerCall]:
    """Run ``model.<call>`` (``forward`` or ``features``) once on zeros of ``input_shape`` and list its
    Conv2d/Linear calls in order, with MACs per image (counted by forward hooks)."""
    batch = int(input_shape[0])
    calls: list[LayerCall] = []

    def hook(name: str, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        first = not calls
        if isinstance(module, nn.Conv2d):
            _, c, h, w = inputs[0].shape
            spec = ConvSpec(
                c, h, w, module.out_channels, tuple(module.kernel_size), tuple(module.stride),
                tuple(module.padding), tuple(module.dilation), module.groups, module.bias is not None,
            )  # fmt: skip
            calls.append(LayerCall(name, "conv", conv_macs(module, output) // batch, spec, first))
        else:
            calls.append(LayerCall(name, "linear", linear_macs(module, output) // batch, None, first))

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    handles = [m.register_forward_hook(functools.partial(hook, n)) for n, m in layers]
    device = next(model.parameters()).device
    run = model if call == "forward" else getattr(model, call)  # hooks fire through __call__
    try:
        with torch.no_grad():
            run(torch.zeros(*input_shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return calls


def count_macs(model: nn.Module, input_shape: Sequence[int], call: str = "forward") -> int:
    """Conv2d + Linear MACs of one call of ``model`` on a batch of ``input_shape``."""
    return sum(c.macs for c in layer_calls(model, input_shape, call)) * int(input_shape[0])


def count_flops(model: nn.Module, input_shape: Sequence[int], call: str = "forward") -> int:
    """FLOPs = 2 x MACs."""
    return 2 * count_macs(model, input_shape, call)


def distill_work(
    features: list[LayerCall], forward: list[LayerCall], real: int, syn: int, classes: int, batched: bool
) -> list[Work]:
    """Conv/Linear work of one TGDD iteration: per class, the real batch through the extractor's features
    (forward only, no gradient), and the synthetic batch through the extractor's features and the expert's
    full forward, each with the input gradient. Both networks are frozen, so there are no weight gradients;
    the first conv's input gradient is needed too (the pixels are what is learned). The batched path does
    the same work as one call per layer on every class's images at once."""
    count, scale = (1, classes) if batched else (classes, 1)
    work = [Work(layer, real * scale, count, ("fwd",)) for layer in features]
    for calls in (features, forward):
        work += [Work(layer, syn * scale, count, ("fwd", "bwd_in")) for layer in calls]
    return work


def training_work(forward: list[LayerCall], batches: Sequence[int]) -> list[Work]:
    """SGD steps on ``batches`` (one batch size per step): forward, weight gradients and input gradients,
    except the first layer's input gradient (the images need none)."""
    work = []
    for batch, count in sorted(Counter(batches).items()):
        for layer in forward:
            passes = ("fwd", "bwd_w") if layer.first else ("fwd", "bwd_in", "bwd_w")
            work.append(Work(layer, batch, count, passes))
    return work


ConvKey = tuple[ConvSpec, int, bool, str]  # (conv, batch, channels_last, pass)


def conv_keys(work: Sequence[Work], channels_last: bool) -> set[ConvKey]:
    """Every distinct conv shape and pass of ``work``: what the microbenchmark times."""
    return {(w.layer.conv, w.batch, channels_last, p) for w in work if w.layer.conv is not None for p in w.passes}


def conv_flops(work: Sequence[Work]) -> float:
    """The convolutions' share of the FLOPs of ``work`` (what the attainable rate is about)."""
    return sum(w.flops for w in work if w.layer.kind == "conv")


def attainable_seconds(work: Sequence[Work], times: dict[ConvKey, float], channels_last: bool) -> float:
    """Time the convolutions of ``work`` need at the measured per-shape rates (count x measured time)."""
    return sum(
        w.count * times[(w.layer.conv, w.batch, channels_last, p)]
        for w in work
        if w.layer.conv is not None
        for p in w.passes
    )


def traced(arch: str, spec: DatasetSpec) -> tuple[list[LayerCall], list[LayerCall], float]:
    """The network's features and forward calls, and one snapshot's size in MiB."""
    model = build_model(arch, spec.channels, spec.image_size, spec.num_classes)
    shape = (1, spec.channels, spec.image_size, spec.image_size)
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / MIB
    return layer_calls(model, shape, "features"), layer_calls(model, shape, "forward"), size
