"""A ``torch.profiler`` summary of one iteration: the top ops by self CPU time and every op by family."""

from __future__ import annotations

import re
from typing import Any

import torch


def make_profiler(device: torch.device) -> torch.profiler.profile:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return torch.profiler.profile(activities=activities)


# Op families for the profile summary: (label, regex on the op name), first match wins.
OP_FAMILIES: tuple[tuple[str, str], ...] = (
    ("convolution", r"conv"),
    ("instance norm (GroupNorm)", r"group_?norm"),
    ("average pooling", r"avg_?pool"),
    ("ReLU", r"relu|threshold|clamp_min"),  # in-place ReLU runs as aten::relu_ -> aten::clamp_min_
    ("linear layer", r"^(aten::)?(addmm|mm|linear|matmul)$|addmmbackward|mmbackward"),
    ("augmentation resampling (grid_sample)", r"grid_?sampler|affine_?grid"),
    ("multi-formation decode (bilinear upsampling)", r"upsample"),
    ("loss (log-softmax, NLL)", r"softmax|nll_?loss|cross_?entropy"),
    ("indexing, gather, scatter", r"index|gather|scatter|nonzero|isin|masked|bincount|repeat_interleave|take"),
    ("random numbers", r"rand|uniform|normal|bernoulli"),
    ("optimizer (SGD)", r"foreach|sgd"),
    ("copies and layout", r"copy|clone|cat|stack|pad|contiguous|^aten::to$|empty|permute|view|reshape|expand|"
     r"flatten|select|slice|squeeze|transpose|as_strided|resize|zeros|ones|full|arange|detach|flip|lift"),
    ("elementwise and reductions", r"add|sub|mul|div|pow|sum|mean|clamp|where|fill|zero|exp|log|sqrt|isfinite|"
     r"all|abs|floor|neg|cos|sin|eq|ne|lt|gt|ge|le|bitwise|logical|item|scalar|norm"),
)  # fmt: skip


def op_family(name: str) -> str:
    lowered = name.lower()
    return next((label for label, pattern in OP_FAMILIES if re.search(pattern, lowered)), "other (autograd, Python)")


def summarise_profile(profiler: torch.profiler.profile) -> dict[str, Any]:
    """Top-10 ops by self CPU time and the self CPU time of each op family."""
    events = list(profiler.key_averages())
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
    families: dict[str, float] = {}
    for event in events:
        family = op_family(event.key)
        families[family] = families.get(family, 0.0) + event.self_cpu_time_total / 1e6
    return {
        "total_self_cpu_seconds": total / 1e6,
        "top": [
            {"op": e.key, "family": op_family(e.key), "self_seconds": e.self_cpu_time_total / 1e6, "calls": e.count}
            for e in top
        ],
        "families": dict(sorted(families.items(), key=lambda kv: -kv[1])),
    }
