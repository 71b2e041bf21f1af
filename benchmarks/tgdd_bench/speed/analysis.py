"""The analytic side of a measurement (its Conv/Linear work, model facts) and one measured row, with what
follows from both (achieved and attainable rates) and its CSV record."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from tgdd.data.registry import DatasetSpec, get_dataset
from tgdd.resolve import resolve_settings
from tgdd_bench.fixtures import IN_MEMORY_SNAPSHOTS
from tgdd_bench.flops import Work, conv_flops, distill_work, traced, training_work
from tgdd_bench.markdown import plural
from tgdd_bench.speed.plan import (
    PAPER_EPOCHS,
    PAPER_TRAJECTORIES,
    Setting,
    TrainTask,
    distill_config,
    train_settings,
)


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


def analyse_setting(setting: Setting) -> Analysis:
    spec = get_dataset(setting.dataset)
    settings = resolve_settings(distill_config(setting, 1, IN_MEMORY_SNAPSHOTS - 1), spec)
    features, forward, snapshot_mib = traced(setting.arch, spec)
    syn = min(setting.ipc * settings.factor**2, settings.max_syn_per_class)
    work = distill_work(features, forward, settings.real_batch, syn, spec.num_classes, setting.batched)
    memory = PAPER_TRAJECTORIES * (PAPER_EPOCHS + 1) * snapshot_mib
    return Analysis(tuple(work), spec, syn, settings.real_batch, memory)


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
