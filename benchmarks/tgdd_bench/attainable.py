"""The attainable convolution rate: every distinct conv shape and pass of some work, timed alone in the
measuring process (same threads, wait policy and, as nearly as can be, the same machine load)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from tgdd_bench.flops import PASSES, ConvKey, ConvSpec, Work, attainable_seconds, conv_keys
from tgdd_bench.machine import repeat_timing


def time_conv(key: ConvKey, device: torch.device, min_seconds: float) -> float:
    """Median seconds of one pass of a conv shape: ``fwd`` (no autograd), ``bwd_in`` (input gradient of a
    leaf input, frozen weights, as in distillation) or ``bwd_w`` (weight and bias gradients, as in training)."""
    spec, batch, channels_last, kind = key
    layout = torch.channels_last if channels_last else torch.contiguous_format
    conv = nn.Conv2d(
        spec.in_channels, spec.out_channels, spec.kernel, spec.stride, spec.padding, spec.dilation,
        spec.groups, bias=spec.bias,
    ).to(device=device, memory_format=layout)  # fmt: skip
    x = torch.randn(batch, spec.in_channels, spec.height, spec.width, device=device)
    x = x.contiguous(memory_format=layout)
    if kind == "fwd":

        def call() -> object:
            with torch.no_grad():
                return conv(x)
    else:
        conv.requires_grad_(kind == "bwd_w")
        x.requires_grad_(kind == "bwd_in")
        y = conv(x)
        grad = torch.randn_like(y)
        wrt = [x] if kind == "bwd_in" else list(conv.parameters())

        def call() -> object:
            return torch.autograd.grad(y, wrt, grad, retain_graph=True)

    return statistics.median(repeat_timing(call, device, min_seconds))


def benchmark_convs(keys: set[ConvKey], device: torch.device, min_seconds: float) -> dict[ConvKey, float]:
    """Every distinct conv shape and pass in ``keys``, timed."""
    ordered = sorted(keys, key=lambda k: (k[2], repr(k[0]), k[1], PASSES.index(k[3])))
    return {key: time_conv(key, device, min_seconds) for key in ordered}


def measure_attainable(
    work: Sequence[Work], channels_last: bool, device: torch.device, min_seconds: float
) -> dict[str, Any]:
    """Time the conv shapes of ``work`` in this process (same threads, wait policy and, as nearly as can be,
    the same machine load as the configuration's own timing) and return its attainable conv time."""
    times = benchmark_convs(conv_keys(work, channels_last), device, min_seconds)
    return {
        "attainable_seconds": attainable_seconds(work, times, channels_last),
        "conv_times": [[asdict(spec), batch, layout, kind, t] for (spec, batch, layout, kind), t in times.items()],
    }


def conv_times_from_json(items: list[list[Any]]) -> dict[ConvKey, float]:
    """The inverse of ``measure_attainable``'s ``conv_times`` (JSON turns tuples into lists)."""
    times = {}
    for spec, batch, layout, kind, seconds in items:
        conv = ConvSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})
        times[(conv, batch, layout, kind)] = seconds
    return times
