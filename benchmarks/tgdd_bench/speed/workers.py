"""The measurements of ``speed.py``, each in a fresh process (``speed.py --worker``) so that its peak memory
is its own: the real ``TGDD().run`` timed iteration by iteration (or class step by class step), the real
``train_classifier`` timed step by step or epoch by epoch, then the conv shapes of that work timed alone."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tgdd.data.prepared import ClassSampler, PreparedSplit
from tgdd.data.registry import DatasetSpec, get_dataset
from tgdd.methods import DistillContext
from tgdd.methods.matching import TGDD, sample_stages
from tgdd.models import build_model
from tgdd.resolve import resolve_settings
from tgdd.runtime import generator, numpy_rng, seeded_init
from tgdd.train import train_classifier
from tgdd_bench.attainable import measure_attainable
from tgdd_bench.fixtures import fake_split, fake_trajectories, random_snapshot
from tgdd_bench.machine import MIB, MemoryMeter, now
from tgdd_bench.speed.analysis import analyse_setting, analyse_task
from tgdd_bench.speed.plan import PAPER_EPOCHS, REAL_PER_CLASS, Plan, Setting, TrainTask, distill_config, train_settings
from tgdd_bench.speed.profile import make_profiler, summarise_profile

RESULT_PREFIX = "RESULT "


def log(message: str) -> None:
    """A progress line on stderr (stdout carries the workers' results)."""
    print(f"[speed] {message}", file=sys.stderr, flush=True)


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


def run_worker(
    script: Path, kind: str, task: Setting | TrainTask, device: torch.device, threads: int, plan: Plan
) -> dict:
    """Run one measurement in a fresh Python process of ``script --worker`` (``speed.py``, whose
    :func:`worker_main` answers it), so its peak memory is its own, and return its result."""
    env = dict(os.environ)
    if isinstance(task, Setting):
        threads = task.threads or threads
        if task.omp_passive:
            env["OMP_WAIT_POLICY"] = "PASSIVE"
    command = [
        sys.executable, str(script), "--worker", kind, "--task", json.dumps(asdict(task)),
        "--device", str(device), "--threads", str(threads), "--bench-seconds", str(plan.bench_seconds),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=plan.worker_timeout, check=False, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"worker {kind} {task.name} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix(RESULT_PREFIX))


def worker_main(kind: str, task_json: str, device: torch.device, bench_seconds: float) -> dict[str, Any]:
    """The measurement a worker process was started for (``--worker KIND --task JSON``)."""
    blob = json.loads(task_json)
    if kind == "distill":
        return distill_worker(Setting(**blob), device, bench_seconds)
    if kind == "profile":
        return distill_worker(Setting(**blob), device, bench_seconds, profile=True)
    if kind == "train":
        return train_worker(TrainTask(**blob), device, bench_seconds)
    raise ValueError(f"unknown worker kind {kind!r}")
