"""What ``speed.py`` measures: distillation settings and training tasks, the full and quick plans, and the
real configs and training settings they stand for."""

from __future__ import annotations

from dataclasses import dataclass

from tgdd.config import Config, build_config
from tgdd.protocols import TrainSettings
from tgdd.resolve import expert_settings, protocol_settings
from tgdd_bench.markdown import plural

REAL_PER_CLASS = 128  # images per class of the fake training split (= TGDD's real batch per class)
PAPER_TRAJECTORIES, PAPER_EPOCHS = 5, 60  # SPEC §2: what a real run holds in memory


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


def train_settings(task: TrainTask) -> TrainSettings:
    """The real settings of an expert (``experts.*``) or of evaluation (protocol ``tgdd``, SPEC §5)."""
    cfg = build_config({"dataset": task.dataset, "experts": {"arch": task.arch}, "tracking": {"enabled": False}})
    return expert_settings(cfg) if task.kind == "expert" else protocol_settings(cfg)
