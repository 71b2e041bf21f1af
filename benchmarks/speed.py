"""Distillation speed near the hardware limit.

Usage::

    .venv/bin/python benchmarks/speed.py [--quick] [--out benchmarks/results] [--device auto] [--threads N]

Everything runs on random tensors, so no data files are needed: a fake :class:`PreparedSplit` of random
uint8 images with balanced labels, and fake in-memory :class:`Trajectories` of a few randomly
initialised networks. The timed code is the real one: ``TGDD().run(ctx)`` on a :class:`DistillContext`
built with ``build_config``, ``resolve_settings`` and a ``ClassSampler``, and ``train_classifier`` for
expert-training and evaluation-training steps.

Reported (``<out>/speed_<device>.md`` and ``.csv``):

1. analytic FLOPs: MACs of every Conv2d/Linear counted with forward hooks, FLOPs = 2 x MACs;
2. the attainable convolution rate, measured in the same run by timing every distinct conv shape
   (forward, input gradient, weight gradient), and achieved / attainable per configuration;
3. seconds per iteration, iterations/s and peak memory, each configuration in its own subprocess;
4. levers at Fashion-MNIST IPC 10: batched classes, channels_last, trajectories re-read from disk;
5. a ``torch.profiler`` summary of one iteration (top ops by self CPU time, grouped by kind);
6. how time grows with IPC, classes and resolution.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import itertools
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tgdd.artifacts import code_version, cpu_model
from tgdd.config import Config, build_config
from tgdd.data.prepared import ClassSampler, PreparedSplit
from tgdd.data.registry import DatasetSpec, get_dataset
from tgdd.evaluate import protocol_settings
from tgdd.experts import StateDict, Trajectories, expert_settings
from tgdd.methods import DistillContext, resolve_settings
from tgdd.methods.matching import TGDD, sample_stages
from tgdd.models import build_model
from tgdd.runtime import generator, numpy_rng, resolve_device, seeded_init
from tgdd.train import TrainSettings, train_classifier

REAL_PER_CLASS = 128  # images per class of the fake training split (= TGDD's real batch per class)
PAPER_TRAJECTORIES, PAPER_EPOCHS = 5, 60  # SPEC §2: what a real run holds in memory
IN_MEMORY_SNAPSHOTS = 3  # the fake trajectory: one trajectory of this many random snapshots
MIB = 2**20
PASSES = ("fwd", "bwd_in", "bwd_w")  # forward, input gradient, weight (and bias) gradient
RESULT_PREFIX = "RESULT "
SPEC_REFERENCE = (
    "SPEC §9 (the authors' code on a 2-core CPU, torch 2.14.1, 2 threads): one TGDD iteration at Fashion-MNIST "
    "IPC 10 ~8.4 s; one evaluation epoch of 400 decoded images ~2.6 s; one expert epoch (938 steps) 430–490 s."
)


# ---------------------------------------------------------------------------------------------------------
# What is measured


@dataclass(frozen=True)
class Setting:
    """One distillation configuration, measured in its own subprocess."""

    name: str
    dataset: str  # a registered data set: gives channels, resolution and the number of classes
    arch: str
    ipc: int
    batched: bool = False  # distill.batched_classes
    channels_last: bool = False  # networks and real batches in channels_last layout
    from_disk: bool = False  # re-read the trajectory file every iteration (the public code's way)
    threads: int = 0  # torch threads of this setting's process (0: the run's)
    omp_passive: bool = False  # OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning
    compiled: bool = False  # distill.compile: torch.compile the matching networks (compiled in the warm-up)
    repeat: bool = False  # the baseline measured again after the levers, to show the drift between them
    timed: int = 3  # timed iterations, after one warm-up iteration
    sample_classes: int = 0  # > 0: time this many class steps (after one warm-up class) and extrapolate

    @property
    def path(self) -> str:
        return "batched" if self.batched else "per-class"

    @property
    def lever(self) -> str:
        if self.batched:
            return "batched classes"
        if self.channels_last:
            return "channels_last"
        if self.from_disk:
            return "trajectories re-read from disk"
        if self.omp_passive:
            return "OMP_WAIT_POLICY=PASSIVE"
        if self.compiled:
            return "torch.compile"
        if self.threads:
            return f"{self.threads} thread{'s' if self.threads > 1 else ''}"
        return "none (repeat: drift check)" if self.repeat else "none"

    def timing(self, num_classes: int) -> str:
        if self.sample_classes:
            return f"{self.sample_classes} of {num_classes} class steps after 1 warm-up class, x{num_classes}"
        return f"{plural(self.timed, 'iteration')} after 1 warm-up iteration"


@dataclass(frozen=True)
class TrainTask:
    """Expert training (per step, batch 64) or evaluation training (per epoch of the decoded set)."""

    name: str
    kind: str  # "expert" or "eval"
    dataset: str
    arch: str
    units: int  # timed steps (expert) or epochs (eval), after a warm-up
    ipc: int = 10  # eval: the decoded set has classes x ipc x f^2 images
    factor: int = 2


@dataclass(frozen=True)
class Plan:
    settings: tuple[Setting, ...]
    train_tasks: tuple[TrainTask, ...]
    bench_seconds: float  # per (conv shape, pass) of the microbenchmark
    profile: str  # name of the profiled setting
    worker_timeout: float


FM = "fashion_mnist"


def full_plan() -> Plan:
    """The full benchmark: ~10-15 minutes on 2 cores (reduced timing for the big configurations)."""
    arch = "convnet-3"
    return Plan(
        settings=(
            Setting("fmnist-ipc1", FM, arch, 1),
            Setting("fmnist-ipc10", FM, arch, 10),
            Setting("fmnist-ipc10-batched", FM, arch, 10, batched=True, timed=2),
            Setting("fmnist-ipc10-channels-last", FM, arch, 10, channels_last=True, timed=2),
            Setting("fmnist-ipc10-disk", FM, arch, 10, from_disk=True, timed=2),
            Setting("fmnist-ipc10-omp-passive", FM, arch, 10, omp_passive=True, timed=2),
            Setting("fmnist-ipc10-1-thread", FM, arch, 10, threads=1, timed=2),
            Setting("fmnist-ipc10-compile", FM, arch, 10, compiled=True, timed=3),
            Setting("fmnist-ipc10-repeat", FM, arch, 10, repeat=True, timed=2),
            Setting("fmnist-ipc50", FM, arch, 50, timed=2),
            Setting("cifar10-ipc10", "cifar10", arch, 10, timed=2),
            Setting("cifar100-ipc10", "cifar100", arch, 10, sample_classes=8),
            Setting("tinyimagenet-ipc10", "tinyimagenet", "convnet-4", 10, sample_classes=4),
        ),
        train_tasks=(
            TrainTask("expert-step", "expert", FM, arch, units=20),
            TrainTask("eval-epoch", "eval", FM, arch, units=3),
        ),
        bench_seconds=0.5,
        profile="fmnist-ipc10",
        worker_timeout=1800.0,
    )


def quick_plan() -> Plan:
    """A smoke test (CI): width 32, two timed iterations, per-class and batched paths, class-step timing."""
    arch = "convnet-3-w32"
    return Plan(
        settings=(
            Setting("fmnist-ipc1", FM, arch, 1, timed=2),
            Setting("fmnist-ipc10", FM, arch, 10, timed=2),
            Setting("fmnist-ipc10-batched", FM, arch, 10, batched=True, timed=2),
            Setting("cifar100-ipc10", "cifar100", arch, 10, sample_classes=2),
        ),
        train_tasks=(
            TrainTask("expert-step", "expert", FM, arch, units=3),
            TrainTask("eval-epoch", "eval", FM, arch, units=1),
        ),
        bench_seconds=0.02,
        profile="fmnist-ipc10",
        worker_timeout=300.0,
    )


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


# ---------------------------------------------------------------------------------------------------------
# Analytic FLOPs


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
    return {(w.layer.conv, w.batch, channels_last, p) for w in work if w.layer.conv is not None for p in w.passes}


def conv_flops(work: Sequence[Work]) -> float:
    return sum(w.flops for w in work if w.layer.kind == "conv")


def attainable_seconds(work: Sequence[Work], times: dict[ConvKey, float], channels_last: bool) -> float:
    """Time the convolutions of ``work`` need at the measured per-shape rates (count x measured time)."""
    return sum(
        w.count * times[(w.layer.conv, w.batch, channels_last, p)]
        for w in work
        if w.layer.conv is not None
        for p in w.passes
    )


# ---------------------------------------------------------------------------------------------------------
# Timing helpers and the conv microbenchmark


def now(device: torch.device) -> float:
    """Wall clock after the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def repeat_timing(
    call: Callable[[], object], device: torch.device, min_seconds: float, min_calls: int = 3
) -> list[float]:
    """Seconds of each call of ``call``, repeated until ``min_seconds`` have passed and at least ``min_calls``
    calls were made (after one warm-up call)."""
    call()
    times: list[float] = []
    start = now(device)
    while len(times) < min_calls or now(device) - start < min_seconds:
        t0 = now(device)
        call()
        times.append(now(device) - t0)
    return times


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


def busy_cores(seconds: float) -> float | None:
    """Cores kept busy by every process over ``seconds`` (from /proc/stat; None elsewhere): the
    load of the machine right now, unlike the 1-minute load average, which trails."""

    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values[:8]) - idle, sum(values[:8])

    try:
        busy0, total0 = sample()
        time.sleep(seconds)
        busy1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (os.cpu_count() or 1) * (busy1 - busy0) / max(total1 - total0, 1)


def log(message: str) -> None:
    print(f"[speed] {message}", file=sys.stderr, flush=True)


class MemoryMeter:
    """Peak memory beyond a baseline taken at construction (after imports and data).

    CPU on Linux: the peak resident set of this process's memory (``VmHWM`` in ``/proc/self/status``), reset
    at construction through ``/proc/self/clear_refs``, so the baseline is the resident set after imports and
    data and their transient peak cannot hide the run's own. (``ru_maxrss`` would do elsewhere, but a child
    started by ``subprocess`` inherits its parent's peak in it, which hides the child's own.) CUDA:
    ``max_memory_allocated`` beyond what is allocated at construction.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.base = torch.cuda.memory_allocated(device) / MIB
            self.method = "CUDA max_memory_allocated"
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.method = "peak resident set VmHWM, reset after imports and data"
        except OSError:
            self.method = "peak resident set minus the peak of imports and data"
        self.base = self._rss_peak()

    @staticmethod
    def _rss_peak() -> float:
        try:
            status = Path("/proc/self/status").read_text()
            return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]
        except (OSError, AttributeError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    def extra_peak_mib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / MIB - self.base
        return self._rss_peak() - self.base


# ---------------------------------------------------------------------------------------------------------
# Fake inputs and the real distillation code path


def fake_split(spec: DatasetSpec, per_class: int, seed: int = 0) -> PreparedSplit:
    """Random uint8 images with balanced labels, shaped like ``spec``'s prepared training split."""
    gen = torch.Generator().manual_seed(seed)
    n, c, s = spec.num_classes * per_class, spec.channels, spec.image_size
    images = torch.randint(0, 256, (n, c, s, s), dtype=torch.uint8, generator=gen)
    labels = torch.arange(spec.num_classes).repeat_interleave(per_class)
    mean = torch.tensor(spec.mean or (0.5,) * c, dtype=torch.float32)
    std = torch.tensor(spec.std or (0.25,) * c, dtype=torch.float32)
    return PreparedSplit(images, labels, [f"class{k}" for k in range(spec.num_classes)], mean, std, "random")


def random_snapshot(arch: str, spec: DatasetSpec, seed: int, device: torch.device) -> StateDict:
    with seeded_init(seed):
        model = build_model(arch, spec.channels, spec.image_size, spec.num_classes)
    return {k: v.detach().to(device, copy=True) for k, v in model.state_dict().items()}


def fake_trajectories(arch: str, spec: DatasetSpec, device: torch.device) -> Trajectories:
    """One in-memory trajectory of a few randomly initialised snapshots (speed does not depend on the weights)."""
    snapshots = [random_snapshot(arch, spec, seed, device) for seed in range(IN_MEMORY_SNAPSHOTS)]
    return Trajectories([snapshots], "random")


def distill_config(setting: Setting, iterations: int, epochs: int) -> Config:
    return build_config(
        {
            "dataset": setting.dataset,
            "experts": {"arch": setting.arch, "num_trajectories": 1, "epochs": epochs},
            "distill": {
                "method": "tgdd",
                "ipc": setting.ipc,
                "iterations": iterations,
                "batched_classes": setting.batched,
                "compile": setting.compiled,
                "checkpoint_every": 0,
            },
            "tracking": {"enabled": False},
        }
    )


class EnoughClasses(Exception):
    """Raised from the sampler once the wanted class steps of a partial iteration are timed."""


class Clock:
    """Wall-clock stamps of one distillation run. It stands in for the checkpointer (``run`` calls
    ``after_iteration`` after every iteration and resumes nothing), and the sampler reports to it the start
    of every class step; with ``stop_after`` it ends the run after that many class starts, and with a
    ``profiler`` it profiles iteration ``profile_iteration`` (0-based), calling ``before_profile`` first."""

    resume_blob = None

    def __init__(
        self,
        device: torch.device,
        stop_after: int | None = None,
        profiler: torch.profiler.profile | None = None,
        profile_iteration: int = -1,
        before_profile: Callable[[], None] | None = None,
    ) -> None:
        self.device, self.stop_after = device, stop_after
        self.profiler, self.profile_iteration, self.before_profile = profiler, profile_iteration, before_profile
        self.iteration_ends: list[float] = []
        self.class_starts: list[float] = []

    def after_iteration(self, iteration: int, make_blob: Callable[[], dict[str, Any]]) -> None:
        """``iteration`` is the number of finished iterations."""
        self.iteration_ends.append(now(self.device))
        if self.profiler is not None and iteration == self.profile_iteration:
            if self.before_profile is not None:
                self.before_profile()
            self.profiler.start()
        elif self.profiler is not None and iteration == self.profile_iteration + 1:
            self.profiler.stop()

    def class_started(self) -> None:
        self.class_starts.append(now(self.device))
        if self.stop_after is not None and len(self.class_starts) >= self.stop_after:
            raise EnoughClasses


class TimedSampler(ClassSampler):
    """The real sampler. Inside the loop every real batch marks the start of a class step on the clock (the
    first ``num_classes`` draws are the initialisation's); optionally it hands out channels_last batches."""

    def __init__(self, split: PreparedSplit, device: torch.device, clock: Clock, channels_last: bool = False) -> None:
        super().__init__(split, device)
        self.clock, self.channels_last = clock, channels_last
        self.init_draws, self.draws = split.num_classes, 0

    def pixels(self, c: int, positions: torch.Tensor) -> torch.Tensor:
        self.draws += 1
        in_loop = self.draws > self.init_draws
        if in_loop:
            self.clock.class_started()
        batch = super().pixels(c, positions)
        return batch.contiguous(memory_format=torch.channels_last) if in_loop and self.channels_last else batch


class ChannelsLastTGDD(TGDD):
    """TGDD with both networks in channels_last layout (convolutions then produce channels_last activations)."""

    def networks(self, ctx: DistillContext, nets: tuple[nn.Module, nn.Module]) -> tuple[nn.Module, nn.Module | None]:
        for net in nets:  # a no-op after the first call: load_state_dict keeps the parameters' layout
            net.to(memory_format=torch.channels_last)
        return super().networks(ctx, nets)


class DiskTGDD(TGDD):
    """TGDD that re-reads a trajectory file (all E+1 snapshots) every iteration, as the public code does
    (SPEC §8), instead of holding the trajectories in memory."""

    def __init__(self, files: list[Path], epochs: int) -> None:
        self.files, self.epochs = files, epochs

    def networks(self, ctx: DistillContext, nets: tuple[nn.Module, nn.Module]) -> tuple[nn.Module, nn.Module | None]:
        stages = sample_stages(ctx.gen, len(self.files), self.epochs, ctx.settings.own["expert_region"])
        snapshots = torch.load(self.files[stages.trajectory], map_location=ctx.device, weights_only=True)
        extractor, expert = nets
        extractor.load_state_dict(snapshots[stages.extractor])
        expert.load_state_dict(snapshots[stages.expert])
        return extractor, expert


def write_trajectory_file(path: Path, arch: str, spec: DatasetSpec) -> Path:
    """A trajectory file of the real size: E+1 distinct snapshots (distinct storages, so none is deduplicated)."""
    base = random_snapshot(arch, spec, 0, torch.device("cpu"))
    torch.save([{k: v + 0.001 * j for k, v in base.items()} for j in range(PAPER_EPOCHS + 1)], path)
    return path


def time_torch_load(path: Path, repeats: int = 5) -> float:
    """Median seconds of one ``torch.load`` of the trajectory file (warm page cache)."""
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        torch.load(path, map_location="cpu", weights_only=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def make_method(setting: Setting, spec: DatasetSpec, tmp: Path) -> TGDD:
    if setting.channels_last:
        return ChannelsLastTGDD()
    if setting.from_disk:
        return DiskTGDD([write_trajectory_file(tmp / "trajectory_00.pt", setting.arch, spec)], PAPER_EPOCHS)
    return TGDD()


def diffs(stamps: Sequence[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(stamps)]


def distill_worker(
    setting: Setting, device: torch.device, bench_seconds: float, profile: bool = False
) -> dict[str, Any]:
    """Time ``TGDD().run`` on one setting, measure its peak memory, then time its conv shapes alone (run in a
    fresh process). With ``profile``, one more iteration runs under torch.profiler after the timed ones
    (neither timed nor in the peak memory)."""
    if profile and setting.sample_classes:
        raise ValueError("profile a setting that runs whole iterations")
    spec = get_dataset(setting.dataset)
    train = fake_split(spec, REAL_PER_CLASS)
    stop = setting.sample_classes + 2 if setting.sample_classes else None  # warm-up class, K classes, next start
    timed_end = 1 + setting.timed  # iterations 0 (warm-up) .. timed
    profiler = make_profiler(device) if profile else None
    peaks: list[float] = []  # the peak memory before the profiled iteration
    clock = Clock(device, stop, profiler, timed_end, before_profile=lambda: peaks.append(memory.extra_peak_mib()))
    sampler = TimedSampler(train, device, clock, channels_last=setting.channels_last)
    memory = MemoryMeter(device)  # baseline: imports and data
    trajectories = fake_trajectories(setting.arch, spec, device)
    iterations = 1 if setting.sample_classes else timed_end + int(profile)
    cfg = distill_config(setting, iterations, trajectories.epochs)
    ctx = DistillContext(
        cfg=cfg,
        settings=resolve_settings(cfg, spec),
        spec=spec,
        train=train,
        sampler=sampler,
        device=device,
        gen=generator(0, "benchmark", setting.name, device=device),
        trajectories=trajectories,
        checkpoint=clock,
        progress=False,
    )
    extra: dict[str, Any] = {}
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        method = make_method(setting, spec, Path(tmp))
        with contextlib.suppress(EnoughClasses):
            method.run(ctx)
        peak_mib = peaks[0] if peaks else memory.extra_peak_mib()
        load_end = os.getloadavg()[0]
        if isinstance(method, DiskTGDD):
            extra["disk_load_seconds"] = time_torch_load(method.files[0])
            extra["disk_file_mib"] = method.files[0].stat().st_size / MIB
    if setting.sample_classes:
        per_class = diffs(clock.class_starts)[1:]  # the first class step is the warm-up
        seconds = [t * spec.num_classes for t in per_class]
    else:
        seconds = diffs(clock.iteration_ends[:timed_end])  # iterations 1..timed; iteration 0 is the warm-up
    if profiler is not None:
        extra["profile"] = summarise_profile(profiler)
        extra["profile"]["iteration_seconds"] = clock.iteration_ends[timed_end] - clock.iteration_ends[timed_end - 1]
    extra |= measure_attainable(analyse_setting(setting).work, setting.channels_last, device, bench_seconds)
    return {
        "seconds": seconds,
        "peak_mib": peak_mib,
        "memory_method": memory.method,
        "load_start": load_start,
        "load_end": load_end,
        **extra,
    }


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


def train_worker(task: TrainTask, device: torch.device, bench_seconds: float) -> dict[str, Any]:
    """Time expert-training steps or evaluation-training epochs through ``train_classifier``, then their
    conv shapes alone."""
    spec = get_dataset(task.dataset)
    settings = train_settings(task)
    if task.kind == "expert":
        images_count = settings.batch_size * task.units
    else:
        images_count = spec.num_classes * task.ipc * task.factor**2
    gen = torch.Generator().manual_seed(0)
    shape = (images_count, spec.channels, spec.image_size, spec.image_size)
    images = torch.rand(shape, generator=gen).to(device)
    labels = (torch.arange(images_count) % spec.num_classes).to(device)
    mean = torch.tensor(spec.mean or (0.5,) * spec.channels)
    std = torch.tensor(spec.std or (0.25,) * spec.channels)
    memory = MemoryMeter(device)
    with seeded_init(0):
        model = build_model(task.arch, spec.channels, spec.image_size, spec.num_classes).to(device)

    def train(n: int, epochs: int) -> float:
        t0 = now(device)
        train_classifier(
            model, images[:n], labels[:n], replace(settings, epochs=epochs), mean, std,
            gen=generator(0, "benchmark-train", device=device), rng=numpy_rng(0, "benchmark-cutmix"),
        )  # fmt: skip
        return now(device) - t0

    load_start = os.getloadavg()[0]
    if task.kind == "expert":
        train(2 * settings.batch_size, 1)  # warm-up: two steps
        seconds = [train(images_count, 1) / task.units]
    else:
        train(images_count, 1)  # warm-up: one epoch
        seconds = [train(images_count, task.units) / task.units]
    peak_mib, load_end = memory.extra_peak_mib(), os.getloadavg()[0]
    return {
        "seconds": seconds,
        "peak_mib": peak_mib,
        "load_start": load_start,
        "load_end": load_end,
        "batch_size": settings.batch_size,
        "images": images_count,
        "augment": settings.augment,
        "cutmix_prob": settings.cutmix_prob,
        **measure_attainable(analyse_task(task).work, False, device, bench_seconds),
    }


# ---------------------------------------------------------------------------------------------------------
# Running workers in subprocesses


def run_worker(kind: str, task: Setting | TrainTask, device: torch.device, threads: int, plan: Plan) -> dict:
    """Run one measurement in a fresh Python process (so its peak memory is its own) and return its result."""
    env = dict(os.environ)
    if isinstance(task, Setting):
        threads = task.threads or threads
        if task.omp_passive:
            env["OMP_WAIT_POLICY"] = "PASSIVE"
    command = [
        sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--task", json.dumps(asdict(task)),
        "--device", str(device), "--threads", str(threads), "--bench-seconds", str(plan.bench_seconds),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=plan.worker_timeout, check=False, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"worker {kind} {task.name} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix(RESULT_PREFIX))


def worker_main(kind: str, task_json: str, device: torch.device, bench_seconds: float) -> dict[str, Any]:
    blob = json.loads(task_json)
    if kind == "distill":
        return distill_worker(Setting(**blob), device, bench_seconds)
    if kind == "profile":
        return distill_worker(Setting(**blob), device, bench_seconds, profile=True)
    if kind == "train":
        return train_worker(TrainTask(**blob), device, bench_seconds)
    raise ValueError(f"unknown worker kind {kind!r}")


# ---------------------------------------------------------------------------------------------------------
# Analysis and the report


@dataclass
class Row:
    """One measured configuration: its work, its timing and what follows from them."""

    section: str  # "distillation" or "training"
    name: str
    dataset: str
    classes: int
    image_size: int
    channels: int
    arch: str
    ipc: int | None
    path: str
    lever: str
    unit: str  # what one timed unit is: iteration, step, epoch
    timing: str
    seconds: list[float]
    gflop: float  # per unit, Conv2d + Linear
    conv_gflop: float
    attainable_seconds: float  # the unit's convolutions at the microbenchmark's per-shape times
    peak_mib: float
    load_start: float
    load_end: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def units_per_s(self) -> float:
        return 1.0 / self.median

    @property
    def achieved_gflops(self) -> float:
        return self.gflop / self.median

    @property
    def attainable_gflops(self) -> float:
        return self.conv_gflop / self.attainable_seconds

    @property
    def ratio(self) -> float:
        return self.achieved_gflops / self.attainable_gflops


CSV_COLUMNS = (
    "section", "name", "dataset", "classes", "image_size", "channels", "arch", "ipc", "path", "lever", "unit",
    "timing", "seconds_per_unit", "seconds_min", "seconds_max", "units_per_s", "gflop_per_unit",
    "achieved_gflops", "attainable_gflops", "achieved_over_attainable", "attainable_seconds_per_unit",
    "peak_mem_mib", "load_start", "load_end",
)  # fmt: skip


def csv_record(row: Row) -> dict[str, Any]:
    return {
        "section": row.section, "name": row.name, "dataset": row.dataset, "classes": row.classes,
        "image_size": row.image_size, "channels": row.channels, "arch": row.arch,
        "ipc": "" if row.ipc is None else row.ipc, "path": row.path, "lever": row.lever, "unit": row.unit,
        "timing": row.timing, "seconds_per_unit": f"{row.median:.4f}", "seconds_min": f"{min(row.seconds):.4f}",
        "seconds_max": f"{max(row.seconds):.4f}", "units_per_s": f"{row.units_per_s:.4f}",
        "gflop_per_unit": f"{row.gflop:.3f}", "achieved_gflops": f"{row.achieved_gflops:.2f}",
        "attainable_gflops": f"{row.attainable_gflops:.2f}", "achieved_over_attainable": f"{row.ratio:.3f}",
        "attainable_seconds_per_unit": f"{row.attainable_seconds:.4f}", "peak_mem_mib": f"{row.peak_mib:.1f}",
        "load_start": f"{row.load_start:.2f}", "load_end": f"{row.load_end:.2f}",
    }  # fmt: skip


@dataclass(frozen=True)
class Analysis:
    """The analytic side of one setting or task: its Conv/Linear work and model facts."""

    work: tuple[Work, ...]
    spec: DatasetSpec
    syn_batch: int = 0
    real_batch: int = 0
    trajectory_mib: float = 0.0  # PAPER_TRAJECTORIES x (PAPER_EPOCHS + 1) snapshots in memory

    @property
    def gflop(self) -> float:
        return sum(w.flops for w in self.work) / 1e9

    @property
    def conv_gflop(self) -> float:
        return conv_flops(self.work) / 1e9


def traced(arch: str, spec: DatasetSpec) -> tuple[list[LayerCall], list[LayerCall], float]:
    """The network's features and forward calls, and one snapshot's size in MiB."""
    model = build_model(arch, spec.channels, spec.image_size, spec.num_classes)
    shape = (1, spec.channels, spec.image_size, spec.image_size)
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / MIB
    return layer_calls(model, shape, "features"), layer_calls(model, shape, "forward"), size


def analyse_setting(setting: Setting) -> Analysis:
    spec = get_dataset(setting.dataset)
    settings = resolve_settings(distill_config(setting, 1, IN_MEMORY_SNAPSHOTS - 1), spec)
    features, forward, snapshot_mib = traced(setting.arch, spec)
    syn = min(setting.ipc * settings.factor**2, settings.max_syn_per_class)
    work = distill_work(features, forward, settings.real_batch, syn, spec.num_classes, setting.batched)
    memory = PAPER_TRAJECTORIES * (PAPER_EPOCHS + 1) * snapshot_mib
    return Analysis(tuple(work), spec, syn, settings.real_batch, memory)


def train_settings(task: TrainTask) -> TrainSettings:
    """The real settings of an expert (``experts.*``) or of evaluation (protocol ``tgdd``, SPEC §5)."""
    cfg = build_config({"dataset": task.dataset, "experts": {"arch": task.arch}, "tracking": {"enabled": False}})
    return expert_settings(cfg) if task.kind == "expert" else protocol_settings(cfg)


def analyse_task(task: TrainTask) -> Analysis:
    """Work of one expert-training step, or of one evaluation epoch over the decoded set."""
    spec = get_dataset(task.dataset)
    _, forward, _ = traced(task.arch, spec)
    batch = train_settings(task).batch_size
    if task.kind == "expert":
        return Analysis(tuple(training_work(forward, [batch])), spec)
    images = spec.num_classes * task.ipc * task.factor**2
    batches = [min(batch, images - start) for start in range(0, images, batch)]
    return Analysis(tuple(training_work(forward, batches)), spec)


def distill_row(setting: Setting, analysis: Analysis, result: dict) -> Row:
    spec = analysis.spec
    return Row(
        section="distillation", name=setting.name, dataset=setting.dataset, classes=spec.num_classes,
        image_size=spec.image_size, channels=spec.channels, arch=setting.arch, ipc=setting.ipc, path=setting.path,
        lever=setting.lever, unit="iteration", timing=setting.timing(spec.num_classes), seconds=result["seconds"],
        gflop=analysis.gflop, conv_gflop=analysis.conv_gflop,
        attainable_seconds=result["attainable_seconds"],
        peak_mib=result["peak_mib"], load_start=result["load_start"], load_end=result["load_end"],
        extra={
            **{k: v for k, v in result.items() if k.startswith("disk_")},
            "trajectory_mib": analysis.trajectory_mib,
            "memory_method": result["memory_method"],
        },
    )  # fmt: skip


def train_row(task: TrainTask, analysis: Analysis, result: dict) -> Row:
    spec = analysis.spec
    unit = "step" if task.kind == "expert" else "epoch"
    what = "expert training" if task.kind == "expert" else "evaluation training"
    timing = f"{plural(task.units, unit)} after a warm-up, mean"
    return Row(
        section="training", name=task.name, dataset=task.dataset, classes=spec.num_classes,
        image_size=spec.image_size, channels=spec.channels, arch=task.arch,
        ipc=task.ipc if task.kind == "eval" else None, path=what, lever="none", unit=unit, timing=timing,
        seconds=result["seconds"], gflop=analysis.gflop, conv_gflop=analysis.conv_gflop,
        attainable_seconds=result["attainable_seconds"], peak_mib=result["peak_mib"],
        load_start=result["load_start"], load_end=result["load_end"],
        extra={k: result[k] for k in ("batch_size", "images", "augment", "cutmix_prob")},
    )  # fmt: skip


def describe_machine(device: torch.device, threads: int) -> dict[str, Any]:
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": threads,
        "python": platform.python_version(),
        "git_commit": (code_version().get("git_commit") or "unknown")[:12],
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def fmt(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def seconds_cell(row: Row) -> str:
    if len(row.seconds) == 1:
        return fmt(row.median, 3)
    return f"{fmt(row.median, 3)} ({fmt(min(row.seconds), 3)}–{fmt(max(row.seconds), 3)})"


def distill_table(rows: Sequence[Row]) -> str:
    headers = (
        "setting", "classes", "px", "ch", "arch", "IPC", "path", "s / iteration (min–max)", "it/s",
        "GFLOP / it", "achieved GFLOP/s", "attainable GFLOP/s", "achieved / attainable", "peak MiB",
        "trajectories in memory (N=5, E=60) MiB", "load avg", "timed",
    )  # fmt: skip
    return md_table(headers, [distill_cells(r) for r in rows])


def distill_cells(r: Row) -> tuple[object, ...]:
    return (
        r.name, r.classes, r.image_size, r.channels, r.arch, r.ipc, r.path, seconds_cell(r),
        fmt(r.units_per_s, 3), fmt(r.gflop, 1), fmt(r.achieved_gflops, 1), fmt(r.attainable_gflops, 1),
        fmt(r.ratio), fmt(r.peak_mib, 0), fmt(r.extra["trajectory_mib"], 0), load_cell(r), r.timing,
    )  # fmt: skip


OWN_ATTAINABLE = "Attainable with its threads and wait policy (timed in its process):"


def baseline(rows: dict[str, Row]) -> float | None:
    """Seconds per iteration of the per-class Fashion-MNIST IPC 10 baseline: the mean of its measurement
    before the levers and its repeat after them."""
    measured = [rows[name].median for name in ("fmnist-ipc10", "fmnist-ipc10-repeat") if name in rows]
    return statistics.mean(measured) if measured else None


def load_caveat(*rows: Row) -> str:
    """A warning when the load average differed by more than 1 between the measurements compared."""
    loads = [(r.load_start + r.load_end) / 2 for r in rows]
    if max(loads) - min(loads) <= 1.0:
        return ""
    spans = ", ".join(f"{r.name} {load_cell(r)}" for r in rows)
    return f" Caution: the load average differed between these measurements ({spans})."


def load_cell(row: Row) -> str:
    return f"{fmt(row.load_start, 1)}–{fmt(row.load_end, 1)}"


def spread_text(row: Row) -> str:
    return f"median {fmt(row.median, 2)} s, iterations {fmt(min(row.seconds), 2)}–{fmt(max(row.seconds), 2)} s"


def lever_section(rows: dict[str, Row]) -> str:
    base, again, t_base = rows.get("fmnist-ipc10"), rows.get("fmnist-ipc10-repeat"), baseline(rows)
    levers = [r for r in rows.values() if not r.lever.startswith("none") and r.dataset == FM and r.ipc == 10]
    if base is None or t_base is None or not levers:
        return "_No lever settings were measured._"
    body = [
        (
            base.name,
            "none (per-class, in-memory trajectories)",
            seconds_cell(base),
            "–",
            fmt(base.ratio),
            load_cell(base),
        )
    ]
    for r in [*levers, *([again] if again else [])]:
        speedup = "–" if r is again else fmt(t_base / r.median)
        body.append((r.name, r.lever, seconds_cell(r), speedup, fmt(r.ratio), load_cell(r)))
    headers = (
        "setting",
        "lever",
        "s / iteration (min–max)",
        "speed-up vs per-class",
        "achieved / attainable",
        "load avg",
    )
    text = [md_table(headers, body), ""]
    if again is not None:
        drift = abs(again.median - base.median) / t_base
        spread = max(max(r.seconds) - min(r.seconds) for r in (base, again)) / t_base
        text.append(
            f"The per-class baseline was measured before the levers ({spread_text(base)}) and again after them "
            f"({spread_text(again)}); speed-ups are against the mean of the two medians, {fmt(t_base, 2)} s. The "
            f"medians differ by {fmt(100 * drift, 0)}%, but one run's iterations spread by up to "
            f"{fmt(100 * spread, 0)}% of that: on this machine, lever effects smaller than about "
            f"{fmt(100 * max(drift, spread), 0)}% are not resolved.\n"
        )
    text += [lever_bullet(r, base, t_base) + load_caveat(base, r) for r in levers]
    return "\n".join(text)


def lever_bullet(r: Row, base: Row, t_base: float) -> str:
    """One sentence on one lever, from its numbers."""
    speedup = t_base / r.median
    if r.lever == "batched classes":
        return (
            f"- **Batched classes**: {fmt(speedup)}x the per-class speed (every class in one forward pass; the "
            f"same update, tested in `tests/test_methods*.py`). Peak memory {fmt(r.peak_mib, 0)} MiB against "
            f"{fmt(base.peak_mib, 0)} MiB per-class."
        )
    if r.lever == "channels_last":
        effect = "a speed-up" if speedup > 1.02 else ("a slowdown" if speedup < 0.98 else "no clear effect")
        return (
            f"- **channels_last** (networks converted with `memory_format=torch.channels_last`, real batches too): "
            f"{fmt(speedup)}x, i.e. {effect} on this machine. The attainable conv rate in that layout is "
            f"{fmt(r.attainable_gflops, 1)} GFLOP/s against {fmt(base.attainable_gflops, 1)} GFLOP/s."
        )
    if r.lever == "trajectories re-read from disk":
        load = r.extra.get("disk_load_seconds", float("nan"))
        size = r.extra.get("disk_file_mib", float("nan"))
        return (
            f"- **Trajectories re-read from disk** (a {fmt(size, 0)} MiB file of E+1 = {PAPER_EPOCHS + 1} snapshots "
            f"`torch.load`ed every iteration, warm page cache): one load takes {fmt(1000 * load, 1)} ms, "
            f"{fmt(100 * load / t_base, 1)}% of an iteration, {fmt(load * 10_000 / 60, 1)} min over 10,000 "
            f"iterations (more from a cold or network file system). End to end the run differs from the baseline by "
            f"{fmt(r.median - t_base, 3)} s per iteration, against a spread of "
            f"{fmt(max(base.seconds) - min(base.seconds), 3)} s between the baseline's own iterations: the direct "
            "timing of the load is the number to use."
        )
    if r.lever == "OMP_WAIT_POLICY=PASSIVE":
        return (
            f"- **OMP_WAIT_POLICY=PASSIVE** (set in that process's environment): {fmt(speedup)}x. By default an "
            "idle OpenMP thread spins; when another process takes its core, every parallel region waits for it "
            "to be scheduled again, which on a shared CPU costs milliseconds per op. Passive waiting avoids "
            "that (on an idle machine spinning is usually as fast or faster; not measured here). "
            f"{OWN_ATTAINABLE} {fmt(r.attainable_gflops, 1)} GFLOP/s."
        )
    if r.lever == "torch.compile":
        return (
            f"- **torch.compile** (`distill.compile=true`: the extractor's features and the expert's forward, "
            f"compiled by inductor in the warm-up iteration, not timed): {fmt(speedup)}x the per-class speed, "
            f"{fmt(r.ratio)} of attainable. Inductor fuses instance norm, ReLU and pooling into few passes over "
            "the activations, the memory-bound part of the iteration (§5)."
        )
    return (
        f"- **{r.lever}** (torch.set_num_threads): {fmt(speedup)}x the speed with the run's threads. "
        f"{OWN_ATTAINABLE} {fmt(r.attainable_gflops, 1)} GFLOP/s."
    )


def training_table(rows: Sequence[Row]) -> str:
    headers = (
        "step", "arch", "batch", "augmentation", "s / unit", "unit", "GFLOP / unit", "achieved GFLOP/s",
        "attainable GFLOP/s", "achieved / attainable", "peak MiB", "timed",
    )  # fmt: skip
    text = md_table(headers, [training_cells(r) for r in rows])
    expert = next((r for r in rows if r.unit == "step"), None)
    if expert is not None:
        steps = math.ceil(60_000 / expert.extra["batch_size"])
        text += (
            f"\n\nAt this rate one expert epoch over 60,000 Fashion-MNIST images ({steps} steps) takes "
            f"~{fmt(steps * expert.median, 0)} s."
        )
    return text


def training_cells(r: Row) -> tuple[object, ...]:
    return (
        r.path, r.arch, r.extra["batch_size"], f"{r.extra['augment']} + CutMix p{r.extra['cutmix_prob']}",
        fmt(r.median, 3), r.unit if r.unit == "step" else f"epoch of {r.extra['images']} images",
        fmt(r.gflop, 2), fmt(r.achieved_gflops, 1), fmt(r.attainable_gflops, 1), fmt(r.ratio), fmt(r.peak_mib, 0),
        r.timing,
    )  # fmt: skip


def conv_table(times: dict[ConvKey, list[float]]) -> str:
    """Per shape and pass, the median rate over the processes that timed it."""
    by_shape: dict[tuple[ConvSpec, int, bool], dict[str, float]] = {}
    for (spec, batch, channels_last, kind), seconds in times.items():
        by_shape.setdefault((spec, batch, channels_last), {})[kind] = statistics.median(seconds)
    body = []
    for (spec, batch, channels_last), passes in sorted(
        by_shape.items(), key=lambda kv: (kv[0][2], kv[0][0].height, kv[0][0].in_channels, kv[0][1])
    ):
        gflop = 2 * batch * spec.out_channels * spec.in_channels // spec.groups * math.prod(spec.kernel)
        gflop *= _output_pixels(spec) / 1e9
        cells = [f"{fmt(gflop / passes[p], 1)}" if p in passes else "–" for p in PASSES]
        body.append((spec.describe(), batch, "channels_last" if channels_last else "NCHW", fmt(gflop, 2), *cells))
    headers = (
        "conv (in -> out)",
        "batch",
        "layout",
        "GFLOP / pass",
        "fwd GFLOP/s",
        "input-grad GFLOP/s",
        "weight-grad GFLOP/s",
    )
    return md_table(headers, body)


def _output_pixels(spec: ConvSpec) -> int:
    out = [
        (size + 2 * pad - dil * (k - 1) - 1) // stride + 1
        for size, pad, dil, k, stride in zip(
            (spec.height, spec.width), spec.padding, spec.dilation, spec.kernel, spec.stride, strict=True
        )
    ]
    return out[0] * out[1]


def profile_section(profile: dict[str, Any], setting: Setting) -> str:
    total = profile["total_self_cpu_seconds"]
    body = [
        (
            f"`{e['op']}`",
            e["family"],
            fmt(1000 * e["self_seconds"], 1),
            fmt(100 * e["self_seconds"] / total, 1),
            e["calls"],
        )
        for e in profile["top"]
    ]
    top = md_table(("op", "family", "self CPU ms", "% of self CPU", "calls"), body)
    families = md_table(
        ("family", "self CPU ms", "%"),
        [(k, fmt(1000 * v, 1), fmt(100 * v / total, 1)) for k, v in profile["families"].items()],
    )
    conv = profile["families"].get("convolution", 0.0) / total
    rest = [(k, v / total) for k, v in profile["families"].items() if k != "convolution"][:5]
    where = ", ".join(f"{k} {fmt(100 * share, 0)}%" for k, share in rest)
    return (
        f"One iteration of `{setting.name}` ({setting.path}, run after its timed iterations, in the same process) under `torch.profiler` took "
        f"{fmt(profile['iteration_seconds'], 2)} s wall-clock (profiler overhead included), "
        f"{fmt(total, 2)} s of self CPU time on the main thread.\n\n"
        f"Top-10 ops by self CPU time:\n\n{top}\n\nBy op family (every op, classified by name):\n\n{families}\n\n"
        f"Convolutions (forward and backward) are {fmt(100 * conv, 0)}% of the self CPU time; the rest goes to "
        f"{where}."
    )


def ratio_text(rows: dict[str, Row], a: str, b: str) -> tuple[float, float] | None:
    """(time ratio, FLOP ratio) of setting b over setting a, or None when either is missing."""
    if a not in rows or b not in rows:
        return None
    return rows[b].median / rows[a].median, rows[b].gflop / rows[a].gflop


def versus_flops(ratios: tuple[float, float]) -> str:
    """How a time ratio compares with the FLOP ratio of the same pair of settings."""
    q = ratios[0] / ratios[1]
    if q > 1.25:
        return "faster than the FLOPs (the non-convolution work grows more)"
    if q < 0.8:
        return "slower than the FLOPs (larger batches run at a higher rate and fixed costs are amortised)"
    return "roughly in proportion to the FLOPs"


def scaling_section(rows: dict[str, Row]) -> str:
    """How time grows with IPC, classes and resolution, written from the measured numbers."""
    parts = []
    ipc10, ipc50 = ratio_text(rows, "fmnist-ipc1", "fmnist-ipc10"), ratio_text(rows, "fmnist-ipc1", "fmnist-ipc50")
    if ipc10:
        text = f"**IPC.** From IPC 1 to IPC 10 (Fashion-MNIST, 10 classes) the time per iteration grows {fmt(ipc10[0])}x for {fmt(ipc10[1])}x the FLOPs"
        if ipc50:
            text += f", and to IPC 50 {fmt(ipc50[0])}x for {fmt(ipc50[1])}x the FLOPs"
        text += (
            ". The 128 real images per class are a fixed cost and the synthetic batch (IPC x f^2 decoded images, "
            "capped at 200 per class) goes forward and backward through two networks, so the work grows "
            f"sub-linearly in IPC; time grows {versus_flops(ipc50 or ipc10)}."
        )
        text += load_caveat(*(rows[n] for n in ("fmnist-ipc1", "fmnist-ipc10", "fmnist-ipc50") if n in rows))
        parts.append(text)
    classes = ratio_text(rows, "cifar10-ipc10", "cifar100-ipc10")
    if classes:
        small, large = rows["cifar10-ipc10"], rows["cifar100-ipc10"]
        text = (
            f"**Classes.** From 10 to 100 classes at 32 px (CIFAR-10 to CIFAR-100, IPC 10) the time grows "
            f"{fmt(classes[0], 1)}x for {fmt(classes[1], 1)}x the FLOPs. The class steps are independent, so the work "
            "is linear in the number of classes"
        )
        if 0.8 <= classes[0] / classes[1] <= 1.25:
            text += " and so, within 25%, is the measured time."
        else:
            text += f"; the measured time is {fmt(classes[0] / classes[1])} of linear."
        parts.append(text + load_caveat(small, large))
    if "cifar10-ipc10" in rows and "tinyimagenet-ipc10" in rows:
        small, large = rows["cifar10-ipc10"], rows["tinyimagenet-ipc10"]
        per_class = (large.median / large.classes) / (small.median / small.classes)
        flops = (large.gflop / large.classes) / (small.gflop / small.classes)
        parts.append(
            f"**Resolution.** Per class, 64 px with ConvNet-4 (TinyImageNet) costs {fmt(per_class, 1)}x a 32 px ConvNet-3 "
            f"class (CIFAR-10) for {fmt(flops, 1)}x the FLOPs (4x the pixels in every layer but the extra block's)."
            + load_caveat(small, large)
        )
    channels = ratio_text(rows, "fmnist-ipc10", "cifar10-ipc10")
    if channels:
        parts.append(
            f"**Input channels.** 3-channel 32 px input (CIFAR-10) against 1-channel 28 px (Fashion-MNIST, padded to act "
            f"as 32 px): {fmt(channels[0])}x the time for {fmt(channels[1])}x the FLOPs; only the first conv differs."
            + load_caveat(rows["fmnist-ipc10"], rows["cifar10-ipc10"])
        )
    if parts:
        projections = ", ".join(
            f"{name} {fmt(rows[name].median * 10_000 / 3600, 1)} h"
            for name in ("fmnist-ipc10", "fmnist-ipc50", "cifar100-ipc10", "tinyimagenet-ipc10")
            if name in rows
        )
        parts.append(f"**10,000 iterations** (the paper's budget) at these rates: {projections}.")
    return "\n\n".join(parts) if parts else "_Too few settings measured to compare._"


def headline(rows: dict[str, Row], profile: dict[str, Any] | None) -> str:
    lines = []
    base, batched, t_base = rows.get("fmnist-ipc10"), rows.get("fmnist-ipc10-batched"), baseline(rows)
    if base is not None:
        lines.append(
            f"- Fashion-MNIST IPC 10 (per-class, the default path): {fmt(base.median, 2)} s / iteration, "
            f"{fmt(base.achieved_gflops, 1)} GFLOP/s achieved against {fmt(base.attainable_gflops, 1)} GFLOP/s attainable "
            f"for its convolutions: **{fmt(100 * base.ratio, 0)}% of attainable**."
        )
    if t_base is not None and batched is not None:
        lines.append(
            f"- Batched classes: {fmt(batched.median, 2)} s / iteration, **{fmt(t_base / batched.median)}x** the "
            f"per-class speed, {fmt(100 * batched.ratio, 0)}% of attainable."
        )
    if t_base is not None:
        others = [r for r in rows.values() if not r.lever.startswith("none") and r.lever != "batched classes"]
        effects = ", ".join(f"{r.lever} {fmt(t_base / r.median)}x" for r in others)
        if effects:
            lines.append(f"- Other levers, speed relative to per-class (>1 is faster): {effects}.")
    if profile is not None:
        total = profile["total_self_cpu_seconds"]
        conv = profile["families"].get("convolution", 0.0) / total
        rest = [(k, v / total) for k, v in profile["families"].items() if k != "convolution"][:4]
        where = ", ".join(f"{k} {fmt(100 * share, 0)}%" for k, share in rest)
        lines.append(
            f"- In the profiled iteration convolutions take {fmt(100 * conv, 0)}% of the self CPU time; the rest "
            f"is mostly {where} (§5)."
        )
    return "\n".join(lines)


def write_report(
    out: Path, device: torch.device, machine: dict[str, Any], plan: Plan, quick: bool, rows: list[Row],
    times: dict[ConvKey, list[float]], profile: dict[str, Any], loads: tuple[float, float], duration: float,
    busy_before: float | None = None,
) -> tuple[Path, Path]:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    stem = f"speed_{device.type}"
    csv_path, md_path = out / f"{stem}.csv", out / f"{stem}.md"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(csv_record(r) for r in rows)
    by_name = {r.name: r for r in rows if r.section == "distillation"}
    profiled = next(s for s in plan.settings if s.name == plan.profile)
    shared = busy_before > 0.3 if busy_before is not None else loads[0] > 0.5
    measured = (
        f"Other processes kept {fmt(busy_before)} of the {machine['cores']} cores busy in the 2 s before it "
        "started (/proc/stat). "
        if busy_before is not None
        else ""
    )
    load_note = measured + (
        f"Load average (1 min) {fmt(loads[0])} when the benchmark started (it still carries the minute before "
        f"the start) and {fmt(loads[1])} when it ended, on {machine['cores']} cores. "
    )
    load_note += (
        "**The CPU was shared with other jobs while this ran, so absolute times are noisy and pessimistic**; "
        "compare ratios measured close together, and rerun on an idle machine for absolute numbers."
        if shared
        else "The machine was otherwise idle at the start."
    )
    machine_rows = [(k, v) for k, v in machine.items()]
    text = f"""# Distillation speed ({device.type}{", quick smoke run" if quick else ""})

Generated by `benchmarks/speed.py{" --quick" if quick else ""}` in {fmt(duration / 60, 1)} min. {load_note}

{md_table(("machine", ""), machine_rows)}

Inputs are random tensors (a fake prepared split of {REAL_PER_CLASS} random uint8 images per class, one fake
in-memory trajectory of {IN_MEMORY_SNAPSHOTS} randomly initialised snapshots); the timed code is the real
`TGDD().run(ctx)` and `train_classifier`. TGDD settings are the method's defaults (SPEC §3): f = 2, 128 real
images per class, all decoded synthetic images per class (at most 200), siamese DSA `color_crop_cutout`.
Peak memory is the process's peak beyond imports plus data ({rows[0].extra["memory_method"]}), each
configuration in its own subprocess; the trajectories a real run holds (N = 5, E = 60) come on top and are
given in their own column. FLOPs count Conv2d and Linear only (2 x MACs); an input or weight
gradient costs one forward's FLOPs. "Attainable" is the rate the convolutions of that configuration reach when
each of their shapes is timed alone (forward, input gradient, weight gradient; median over ~{plan.bench_seconds} s
per shape), in the configuration's own process right after its timed iterations, so with the same threads and
nearly the same machine load; achieved / attainable therefore says how close the whole iteration comes to doing
nothing but its convolutions.

## Headline

{headline(by_name, profile)}

{SPEC_REFERENCE}

## 1–3. Distillation: time, FLOPs, attainable rate, memory

{distill_table([r for r in rows if r.section == "distillation"])}

"timed" with class steps: the per-class path's steps are independent, so the big configurations time a few class
steps of one iteration (one warm-up class first) and multiply by the number of classes; the per-iteration network
loading is left out (milliseconds).

## 4. Levers (Fashion-MNIST, IPC 10)

{lever_section(by_name)}

## Expert and evaluation training steps

{training_table([r for r in rows if r.section == "training"])}

## Attainable convolution rates (microbenchmark, this run; median over the processes that timed each shape)

{conv_table(times)}

## 5. Where the time goes (profile)

{profile_section(profile, profiled)}

## 6. How time grows with IPC, classes and resolution

{scaling_section(by_name)}
"""
    md_path.write_text(text)
    return md_path, csv_path


# ---------------------------------------------------------------------------------------------------------
# Entry point


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny subset for CI (< 60 s)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--bench-seconds", type=float, default=0.5, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    if args.worker:
        print(RESULT_PREFIX + json.dumps(worker_main(args.worker, args.task, device, args.bench_seconds)), flush=True)
        return 0
    busy_before = busy_cores(2.0)
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    plan = quick_plan() if args.quick else full_plan()
    machine = describe_machine(device, threads)
    analyses = {s.name: analyse_setting(s) for s in plan.settings}
    task_analyses = {t.name: analyse_task(t) for t in plan.train_tasks}
    log(f"{len(plan.settings)} settings and {len(plan.train_tasks)} training tasks, each in its own process")
    times: dict[ConvKey, list[float]] = {}
    rows = []
    profile: dict[str, Any] = {}
    for i, setting in enumerate(plan.settings, 1):
        kind = "profile" if setting.name == plan.profile else "distill"
        result = run_worker(kind, setting, device, threads, plan)
        profile = result.pop("profile", profile)
        for key, seconds in conv_times_from_json(result.pop("conv_times")).items():
            times.setdefault(key, []).append(seconds)
        rows.append(distill_row(setting, analyses[setting.name], result))
        log(
            f"[{i}/{len(plan.settings)}] {setting.name}: {rows[-1].median:.3f} s/iteration, {rows[-1].ratio:.2f} of attainable"
        )
    for task in plan.train_tasks:
        result = run_worker("train", task, device, threads, plan)
        for key, seconds in conv_times_from_json(result.pop("conv_times")).items():
            times.setdefault(key, []).append(seconds)
        rows.append(train_row(task, task_analyses[task.name], result))
        log(f"{task.name}: {rows[-1].median:.3f} s/{rows[-1].unit}")
    duration = time.perf_counter() - started
    loads = (load_start, os.getloadavg()[0])
    md_path, csv_path = write_report(
        args.out, device, machine, plan, args.quick, rows, times, profile, loads, duration, busy_before
    )
    log(f"wrote {md_path} and {csv_path} in {duration / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
