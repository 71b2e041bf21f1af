"""What the class-overlap analysis of `tgdd report` costs: its peak memory and run time as pure
functions of its work, without torch, so that the workflow sizes the report job before anything
runs (``workflow/rules/report.smk``), and its fixed sizes (blocks, samples), which
:mod:`tgdd.analysis` uses.

The work of one data set (:class:`DatasetWork`) follows from the config: the decoded synthetic
images of every method and IPC of its matrix (``classes x IPC x f^2`` each), the expert's feature
dimension, the real sample (:data:`REAL_PER_CLASS` per class) and the training split that is read
to draw it. Memory is bounded because no step holds more than one set's features at once and the
pairwise distances are computed :data:`BLOCK_MB` at a time (not ``n x n``: 12.8 GB for the 40,000
decoded images of TinyImageNet IPC 50, f = 2); the t-SNE figures show at most
:data:`TSNE_SYNTHETIC_POINTS` images per panel. The rates that turn work into seconds were measured
on a 2-core AMD EPYC and set conservatively (``benchmarks/report_analysis.py``,
``benchmarks/results/report_analysis_cpu.md``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tgdd.config import Config

MIB = 2**20

# --------------------------------------------------------------------------- fixed sizes

BLOCK_MB = 256
"""Working memory of one block of the pairwise-distance pass: rows per block = ``BLOCK_MB`` MiB /
(points x :data:`BYTES_PER_DISTANCE`)."""
BYTES_PER_DISTANCE = 24
"""What a block holds per distance: the float64 distance, three boolean masks (same class, nearer
than the k-th neighbour, tied with it) and, for rows with ties, an int64 rank among the ties."""
REAL_PER_CLASS = 50
"""Real training images per class embedded as the ``real`` reference row."""
TSNE_SYNTHETIC_POINTS = 1000
"""At most this many synthetic images per t-SNE panel: ``max(1, this // classes)`` per class, a
seeded draw (every image when a set has no more per class)."""
TSNE_REAL_POINTS = 300
"""Real images drawn in every t-SNE panel: ``max(1, this // classes)`` per class."""
EMBED_BATCH = 256
"""Images embedded at a time at most (fewer where their activations would exceed :data:`EMBED_MB`)."""
EMBED_MB = 256
"""Working memory of one embedding batch: its activations (:func:`activation_bytes` per image)."""

# --------------------------------------------------------------------------- measured constants

BASE_MB = 1200
"""The report process before any data: Python with torch, scikit-learn, matplotlib and MLflow
imported (960 MiB peak resident measured) plus the summary tables."""
EXPERT_MB = 300
"""An expert trajectory read to take its last snapshot (ConvNet-4, 200 classes, 61 snapshots:
about 210 MB), and the network."""
TSNE_MB = 300
"""scikit-learn's t-SNE of one panel (at most about 1,300 points)."""
GEMM_GFLOPS_PER_THREAD = 8.0
"""float64 matrix products (the distances), with :data:`NS_PER_DISTANCE`: the whole pass over
40,000 x 2,048 embeddings ran at 12 GFLOP/s on one thread of a shared EPYC, bookkeeping included."""
CONV_GFLOPS_PER_THREAD = 3.0
"""ConvNet forward passes on the CPU (the embedding): ConvNet-4 at 64 px in batches of 42 ran at
3.2 GFLOP/s on one thread of the shared EPYC (an idle core does about twice that)."""
NS_PER_DISTANCE = 40.0
"""Everything per distance besides the product (masks, top-k, per-class sums), one thread."""
TSNE_SECONDS_PER_PANEL = 45.0
"""One t-SNE panel of up to :data:`TSNE_SYNTHETIC_POINTS` + :data:`TSNE_REAL_POINTS` points
(1,300 x 2,048: 29 s on one thread of the shared EPYC); not divided by the threads."""
READ_MB_PER_S = 100.0
"""Reading and checksumming the training split and the synthetic sets."""
REPORT_FIXED_MIN = 10
"""The rest of `tgdd report` (the summary tables, MLflow logging) and start-up."""
SAFETY = 2.0
"""Margin on the estimated run time (shared nodes, slower CPUs)."""

FALLBACK_FEATURE_DIM = 8192
"""Feature dimension assumed for an expert network that is not a ConvNet (none of the presets)."""
FALLBACK_FLOPS_PER_PIXEL = 2.0e6
"""Forward FLOPs per input pixel assumed for such a network (ResNet-18 at 32 px: about 0.6e6)."""


_CONVNET = re.compile(r"convnet-(?P<depth>[1-9])(?:-in|-bn|-none)?(?:-w(?P<width>\d+))?")


# --------------------------------------------------------------------------- the work


@dataclass(frozen=True)
class SetWork:
    """One synthetic set: ``stored`` images of ``factor * factor`` tiles each."""

    stored: int
    factor: int = 1

    @property
    def decoded(self) -> int:
        return self.stored * self.factor**2


@dataclass(frozen=True)
class DatasetWork:
    """What the analysis of one data set handles (sizes in images, bytes of one uint8 image)."""

    dataset: str
    num_classes: int
    image_bytes: int  # channels x height x width
    train_images: int
    feature_dim: int
    embed_flops: float  # forward FLOPs of the expert's features for one image
    activation_bytes: int  # peak activations of that forward pass for one image
    sets: tuple[SetWork, ...]
    real_per_class: int = REAL_PER_CLASS

    @property
    def real_images(self) -> int:
        return min(self.train_images, self.real_per_class * self.num_classes)

    @property
    def embed_batch(self) -> int:
        """Images per embedding batch (as :func:`embed_batch`)."""
        return max(1, min(EMBED_BATCH, int(EMBED_MB * MIB) // self.activation_bytes))


def block_rows(points: int, block_mb: float = BLOCK_MB) -> int:
    """Rows of the pairwise-distance block for ``points`` points (at least 1, at most all)."""
    return max(1, min(points, int(block_mb * MIB) // (max(1, points) * BYTES_PER_DISTANCE)))


def per_class_shown(num_classes: int, points: int) -> int:
    """Images per class a t-SNE panel draws so that it shows at most about ``points``."""
    return max(1, points // max(1, num_classes))


def convnet_cost(arch: str, channels: int, image_size: int) -> tuple[int, float] | None:
    """Feature dimension and forward FLOPs (2 x multiply-adds of the convolutions) of
    ``tgdd.models.convnet``'s ``features`` for one image; None for another network."""
    match = _CONVNET.fullmatch(arch)
    if match is None:
        return None
    depth, width = int(match["depth"]), int(match["width"] or 128)
    size = 32 if image_size == 28 else image_size  # 28 px is padded to act as 32 px
    flops, in_channels = 0.0, channels
    for _ in range(depth):
        flops += 2.0 * size * size * width * in_channels * 9
        in_channels, size = width, size // 2
    return width * size * size, flops


def activation_bytes(arch: str, channels: int, image_size: int) -> int:
    """Peak activation bytes per image of a forward pass without gradients: the input and output of
    the widest layer (a ConvNet's first block, ``width x size^2`` float32), with a margin (x 3).
    Another network counts as a width-128 ConvNet."""
    match = _CONVNET.fullmatch(arch)
    width = int(match["width"] or 128) if match else 128
    size = 32 if image_size == 28 else image_size
    return 3 * 4 * max(width, channels) * size * size


def embed_batch(arch: str, channels: int, image_size: int) -> int:
    """Images per embedding batch: as many as :data:`EMBED_MB` holds the activations of, at least
    1, at most :data:`EMBED_BATCH` (ConvNet-4 at 64 px: 42; ConvNet-3 at 32 px: 170)."""
    return max(1, min(EMBED_BATCH, int(EMBED_MB * MIB) // activation_bytes(arch, channels, image_size)))


def pairwise_bytes(points: int, feature_dim: int, block_mb: float = BLOCK_MB) -> int:
    """Peak bytes of the metrics of one set of ``points`` embeddings: the float32 features, their
    float64 copy, per-point vectors and one block of distances."""
    features = points * feature_dim * (4 + 8)
    per_point = points * 8 * 8
    block = block_rows(points, block_mb) * points * BYTES_PER_DISTANCE
    return features + per_point + block


def peak_bytes(
    work: DatasetWork,
    *,
    block_mb: float = BLOCK_MB,
    tsne_points: int = TSNE_SYNTHETIC_POINTS,
) -> int:
    """Upper bound of the report process's peak resident memory while it analyses ``work``'s
    data set, in bytes. The phases, one after the other: reading the training split (its file's
    bytes and its tensors at once) and the expert; the real sample (training split held, the
    sample's uint8 images, one embedding batch, its metrics); then each synthetic set alone (the
    training split released): its stored float32 images, one decoded batch and its activations,
    its metrics, plus the t-SNE samples kept of every set; then the t-SNE panels."""
    d = work.feature_dim
    train = work.train_images * work.image_bytes
    batch = work.embed_batch * (3 * work.image_bytes * 4 + work.activation_bytes)  # decoding, activations
    load = 2 * train + EXPERT_MB * MIB
    real_n = work.real_images
    embed_real = real_n * (work.image_bytes + d * 4) + batch
    real = train + EXPERT_MB * MIB + max(embed_real, real_n * work.image_bytes + pairwise_bytes(real_n, d, block_mb))
    shown = per_class_shown(work.num_classes, tsne_points) * work.num_classes
    kept = (len(work.sets) * shown + real_n) * d * 4
    phases = [load, real]
    for s in work.sets:
        stored = s.stored * work.image_bytes * 4
        embed = s.decoded * d * 4 + batch
        phases.append(EXPERT_MB * MIB + kept + stored + max(embed, pairwise_bytes(s.decoded, d, block_mb)))
    phases.append(kept + TSNE_MB * MIB)
    return BASE_MB * MIB + max(phases)


def peak_memory_mb(work: DatasetWork, **kwargs) -> int:
    """:func:`peak_bytes` in MiB, rounded up."""
    return math.ceil(peak_bytes(work, **kwargs) / MIB)


def runtime_seconds(work: DatasetWork, threads: int = 1) -> float:
    """Estimated seconds of the analysis of ``work``'s data set on ``threads`` CPU threads (no
    margin): reading, embedding every decoded and real image, the pairwise pass of every set
    (``2 n^2 d`` FLOPs and per-distance bookkeeping) and one t-SNE panel per set."""
    threads = max(1, threads)
    points = [s.decoded for s in work.sets] + [work.real_images]
    stored_bytes = sum(s.stored for s in work.sets) * work.image_bytes * 4
    read = (work.train_images * work.image_bytes + stored_bytes) / (READ_MB_PER_S * 1e6)
    embed = sum(points) * work.embed_flops / (CONV_GFLOPS_PER_THREAD * 1e9 * threads)
    gemm = sum(2.0 * n * n * work.feature_dim for n in points) / (GEMM_GFLOPS_PER_THREAD * 1e9 * threads)
    rest = sum(n * n for n in points) * NS_PER_DISTANCE * 1e-9 / threads
    tsne = len(work.sets) * TSNE_SECONDS_PER_PANEL
    return read + embed + gemm + rest + tsne


# --------------------------------------------------------------------------- from a config


def analyzed_datasets(cfg: Config) -> list[str]:
    """The data sets `tgdd report` analyses: the config's own, then every one of its matrix."""
    return list(dict.fromkeys([cfg.dataset, *cfg.matrix.datasets]))


def train_images(cfg: Config) -> int:
    """Images of the training split: the prepared manifest's count, else the published size."""
    from tgdd import paths

    manifest = paths.prepared_dir(cfg) / "manifest.json"  # tgdd.data.prepared.MANIFEST (imports torch)
    try:
        return int(json.loads(Path(manifest).read_text())["files"]["train.pt"]["count"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    from tgdd.cost import DEFAULT_TRAIN_IMAGES, TRAIN_IMAGES  # the one table of published sizes

    return TRAIN_IMAGES.get(cfg.dataset, DEFAULT_TRAIN_IMAGES)


def dataset_work(cfg: Config) -> DatasetWork:
    """The analysis's work for ``cfg.dataset``: every method and IPC of its matrix (each at its
    method's resolved factor f), embedded with ``cfg.experts.arch``."""
    from tgdd.data.registry import get_dataset
    from tgdd.resolve import resolved_distill

    spec = get_dataset(cfg.dataset)
    sets = []
    for method in cfg.matrix.methods:
        for ipc in cfg.matrix.ipcs:
            cell = cfg.with_overrides(f"distill.method={method}", f"distill.ipc={ipc}")
            resolved = resolved_distill(cell)
            sets.append(SetWork(spec.num_classes * ipc, int(resolved["factor"]) if resolved else 1))
    cost = convnet_cost(cfg.experts.arch, spec.channels, spec.image_size)
    if cost is None:
        cost = (FALLBACK_FEATURE_DIM, FALLBACK_FLOPS_PER_PIXEL * spec.image_size**2)
    activations = activation_bytes(cfg.experts.arch, spec.channels, spec.image_size)
    return DatasetWork(
        dataset=cfg.dataset,
        num_classes=spec.num_classes,
        image_bytes=spec.channels * spec.image_size**2,
        train_images=train_images(cfg),
        feature_dim=cost[0],
        embed_flops=cost[1],
        activation_bytes=activations,
        sets=tuple(sets),
    )


def report_work(cfg: Config) -> list[DatasetWork]:
    """The work of every data set `tgdd report` may analyse (each with its ``per_dataset``
    settings): an upper bound, as a data set without trajectories is skipped."""
    return [dataset_work(cfg.with_overrides(f"dataset={d}")) for d in analyzed_datasets(cfg)]


RETRY_GROWTH = 0.5
"""Each retry of the report job asks for this fraction of the first request more."""


def report_mem_mb(works: Sequence[DatasetWork]) -> int:
    """Memory to request for `tgdd report`: the largest data set's bound (data sets are analysed
    one after the other), at least :data:`BASE_MB`."""
    return max([BASE_MB, *(peak_memory_mb(w) for w in works)])


def report_runtime_min(works: Sequence[DatasetWork], threads: int = 1) -> int:
    """Minutes to request for `tgdd report` on ``threads`` threads: every data set's estimate,
    with the :data:`SAFETY` margin, plus :data:`REPORT_FIXED_MIN`."""
    seconds = sum(runtime_seconds(w, threads) for w in works)
    return REPORT_FIXED_MIN + math.ceil(SAFETY * seconds / 60)


def _duration(minutes: float) -> str:
    return f"{minutes / 60:.1f} h" if minutes >= 120 else f"{minutes:.0f} min"


def report_request(
    works: Sequence[DatasetWork],
    threads: int,
    attempt: int = 1,
    *,
    max_runtime_min: int | None = None,
    max_mem_mb: int | None = None,
) -> tuple[int, int]:
    """Runtime (minutes) and memory (MiB) the ``attempt``-th try of `tgdd report` asks for: the
    first request grows by :data:`RETRY_GROWTH` each retry, within the caps. A first request
    beyond a cap is an error (raised at planning, not after hours in a queue)."""
    from tgdd.errors import TgddError

    runtime, mem = report_runtime_min(works, threads), report_mem_mb(works)
    job = f"tgdd report {', '.join(w.dataset for w in works)}"
    if max_runtime_min is not None and runtime > max_runtime_min:
        raise TgddError(
            f"{job}: estimated {_duration(runtime)} (the class-overlap analysis on {threads} thread(s), "
            f"x {SAFETY:g} for safety, + {REPORT_FIXED_MIN} min) exceeds TGDD_MAX_RUNTIME_MIN={max_runtime_min} "
            f"({_duration(max_runtime_min)}): set TGDD_MAX_RUNTIME_MIN to your CPU partition's time limit"
        )
    if max_mem_mb is not None and mem > max_mem_mb:
        raise TgddError(
            f"{job}: estimated {mem} MB of memory (the class-overlap analysis of its largest data set) exceeds "
            f"TGDD_MAX_MEM_MB={max_mem_mb}: set TGDD_MAX_MEM_MB to what a node of your partition offers per job"
        )
    grow = 1 + RETRY_GROWTH * (max(attempt, 1) - 1)
    runtime, mem = math.ceil(runtime * grow), math.ceil(mem * grow)
    return (
        min(runtime, max_runtime_min) if max_runtime_min else runtime,
        min(mem, max_mem_mb) if max_mem_mb else mem,
    )
