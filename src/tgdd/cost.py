"""What one job of the matrix costs, and what it should ask a cluster for.

The work of a job is counted, not guessed: the Conv2d/Linear FLOPs of its step for its cell (method,
IPC, network, data set, resolved as ``tgdd`` resolves them), the number of small steps whose fixed
cost dominates small jobs on a GPU (optimizer steps, class steps), and the host memory it holds
(the prepared data set, the expert snapshots, on a CPU the method's working set). Time follows from
rates measured on one H200 (``shared/gpu/README.md``, 2026-12-04), scaled by the rate the user's GPU
attains (``TGDD_GPU_TFLOPS``) and doubled for safety; requests are capped by the limits the user
sets once (``TGDD_MAX_RUNTIME_MIN``, ``TGDD_MAX_MEM_MB``). A job whose estimate exceeds a cap is
refused here, at planning, rather than submitted to be killed at its time limit.

Used by the workflow's resource rules (``workflow/rules/common.smk``) and by
``benchmarks/gpu_budget.py`` (the preset's total). Networks are traced once per (network, data
set) with forward hooks on zeros: the only torch work here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

from tgdd.cards import METHODS
from tgdd.config import Config
from tgdd.data.registry import get_dataset
from tgdd.errors import TgddError
from tgdd.resolve import expert_settings, num_trajectories, protocol_settings, resolve_settings

TRAIN_IMAGES = {  # training-set sizes of the published data sets (what the experts train on)
    "digits": 1_437,  # scikit-learn's 1,797 digits, 80 % (tgdd.data.catalog)
    "mnist": 60_000,
    "fashion_mnist": 60_000,
    "svhn": 73_257,
    "cifar10": 50_000,
    "cifar100": 50_000,
    "tinyimagenet": 100_000,
    "imagenette": 9_469,
    "imagewoof": 9_025,
    "imagefruit": 13_000,
    "imagemeow": 13_000,
    "imagesquawk": 13_000,
    "imageyellow": 13_000,
}
"""ImageNet subsets: ImageNette/ImageWoof as released by fast.ai, the others 1,300 ImageNet
training images for each of their 10 classes. A data set not listed here (a plugin's) counts as
DEFAULT_TRAIN_IMAGES."""
DEFAULT_TRAIN_IMAGES = 100_000
TEST_IMAGES = {"digits": 360, "svhn": 26_032, "imagenette": 3_925, "imagewoof": 3_929}
TEST_IMAGES |= dict.fromkeys(("imagefruit", "imagemeow", "imagesquawk", "imageyellow"), 500)
"""Test splits (50 ImageNet validation images per class for the four subsets); 10,000 where not
listed (MNIST, Fashion-MNIST, CIFAR, TinyImageNet's validation set)."""

# Rates measured on one NVIDIA H200 (torch 2.11 eager, shared/gpu/README.md, main at 7d27b26).
H200_TFLOPS = 28.0
"""ConvNet-3 forward+backward at batch 4,096: the networks' attainable rate (GroupNorm/pool bound)."""
TRAIN_STEP_S = 0.0034
"""Fixed cost of one SGD step beyond its FLOPs: an expert epoch (938 steps of 64, DSA) took 3.83 s,
of which 0.62 s are its FLOPs at 28 TFLOP/s."""
EVAL_STEP_S = 0.0128
"""Fixed cost of one evaluation step (protocol tgdd: batch 64, its augmentation and CutMix): 94 ms per
epoch of 400 decoded images (7 steps), of which 4 ms are FLOPs."""
CLASS_STEP_S = 0.0066
"""Fixed cost of one class step of a matching method: a TGDD iteration at Fashion-MNIST IPC 10 took
75.6 ms per class (10 classes), of which 10 ms are FLOPs; with batched classes one step per iteration."""
CPU_GFLOPS_PER_THREAD = 16.0
"""A CPU thread (AMD EPYC, 2 threads: a TGDD iteration at Fashion-MNIST IPC 10 in 8.4 s, 279 GFLOP)."""
SAFETY = 2.0
"""Every estimate of time is doubled: other GPUs, shared nodes, file systems, what is not counted."""
STARTUP_MIN = 5
"""Per job: Python, torch and CUDA start-up, loading and checking the inputs, writing the outputs."""
PREPARE_S_PER_IMAGE = 0.005
"""Reading, decoding and resizing one image (JPEG folders; IDX and pickle files are much faster)."""

BASE_MEM_MB = {"cpu": 1500, "gpu": 4000}
"""A process with torch imported; with CUDA initialised its libraries take about 3 GB more host memory."""
MIN_MEM_MB = 2000
MEM_SAFETY = 1.5
MTT_MIB_PER_STEP_IMAGE = 2.918
"""MTT's unrolled student, per (student step x synthetic image), measured for ConvNet-3 (width 128)
at Fashion-MNIST's shape (benchmarks/results/mtt_memory_cpu.md; 347 MiB besides), scaled to other
networks by their activations per image. On a GPU it lives in GPU memory, not in the job's."""
MTT_MEASURED = ("convnet-3", "fashion_mnist")
MIB = 2**20

DEFAULT_MAX_RUNTIME_MIN = 4320  # 72 h: the paper preset's longest job fits (TinyImageNet IDM IPC 50, 53 h)
DEFAULT_MAX_MEM_MB = 64_000  # the paper preset's largest request is 14 GB (TinyImageNet prepare)
RETRY_GROWTH = 0.5  # each retry asks for half the estimate more, never beyond the cap


# ---------------------------------------------------------------------------------------------
# Networks and FLOPs


@dataclass(frozen=True)
class Network:
    """Per image: Conv2d/Linear MACs of a network's calls (counted by forward hooks), the elements
    of every layer's output (what an unrolled training step keeps for its backward) and the size of
    one snapshot of its weights."""

    features: int  # MACs of model.features (the embedding matching methods compare)
    forward: int  # MACs of the whole forward pass
    first: int  # MACs of the first Conv2d/Linear call (training computes no input gradient there)
    activations: int
    snapshot_bytes: int

    def training_flops(self, images: int) -> float:
        """SGD on ``images`` images: forward, weight gradients and input gradients but the first layer's.
        Every pass costs one forward's FLOPs (2 x MACs)."""
        return 2.0 * images * (3 * self.forward - self.first)

    def matching_flops(self, real: int, syn: int, classes: int, features: bool = True, head: bool = True) -> float:
        """One iteration of distribution/gradient-free matching, every class: ``real`` images through the
        features (forward only), ``syn`` images through the features and (``head``) the whole network,
        forward and input gradient (the frozen networks need no weight gradients)."""
        per_class = real * self.features * features + 2 * syn * (self.features * features + self.forward * head)
        return 2.0 * classes * per_class


@cache
def network(arch: str, dataset: str) -> Network:
    """Trace ``arch`` built for ``dataset`` once on zeros (both its ``features`` and ``forward`` calls)."""
    import torch
    from torch import nn

    from tgdd.models import build_model

    spec = get_dataset(dataset)
    model = build_model(arch, spec.channels, spec.image_size, spec.num_classes)
    shape = (1, spec.channels, spec.image_size, spec.image_size)

    def macs(call: str) -> tuple[int, int, int]:
        counted: list[int] = []
        outputs: list[int] = []

        def hook(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            if isinstance(module, nn.Conv2d):
                _, c_out, h, w = output.shape
                kh, kw = module.kernel_size
                counted.append(c_out * h * w * (module.in_channels // module.groups) * kh * kw)
            elif isinstance(module, nn.Linear):
                counted.append(output.numel() // module.out_features * module.in_features * module.out_features)
            if isinstance(output, torch.Tensor):
                outputs.append(output.numel())

        leaves = [m for m in model.modules() if not list(m.children())]
        handles = [m.register_forward_hook(hook) for m in leaves]
        try:
            with torch.no_grad():
                (model if call == "forward" else getattr(model, call))(torch.zeros(*shape))
        finally:
            for handle in handles:
                handle.remove()
        return sum(counted), (counted[0] if counted else 0), sum(outputs)

    features, _, _ = macs("features")
    forward, first, activations = macs("forward")
    snapshot = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return Network(features, forward, first, activations, snapshot)


def train_images(cfg: Config) -> int:
    return TRAIN_IMAGES.get(cfg.dataset, DEFAULT_TRAIN_IMAGES)


def test_images(cfg: Config) -> int:
    return TEST_IMAGES.get(cfg.dataset, 10_000)


def expert_images(cfg: Config) -> int:
    """Images an expert trains on: the training split, or ``experts.train_per_class`` of each class."""
    images = train_images(cfg)
    per_class = cfg.experts.train_per_class
    return images if per_class is None else min(images, per_class * get_dataset(cfg.dataset).num_classes)


@dataclass(frozen=True)
class Work:
    """A job's compute: FLOPs, and its small steps by kind (their fixed cost, not their FLOPs)."""

    flops: float = 0.0
    train_steps: float = 0.0
    eval_steps: float = 0.0
    class_steps: float = 0.0

    def __add__(self, other: Work) -> Work:
        return Work(*(a + b for a, b in zip(self.astuple(), other.astuple(), strict=True)))

    def astuple(self) -> tuple[float, float, float, float]:
        return (self.flops, self.train_steps, self.eval_steps, self.class_steps)

    def h200_seconds(self) -> float:
        """Seconds on the measured H200: FLOPs at its attainable rate plus the steps' fixed costs."""
        return (
            self.flops / (H200_TFLOPS * 1e12)
            + self.train_steps * TRAIN_STEP_S
            + self.eval_steps * EVAL_STEP_S
            + self.class_steps * CLASS_STEP_S
        )


def trajectory_work(cfg: Config, recipe: str) -> Work:
    """One expert trajectory of ``recipe``: its trained epochs over the expert training images (twice for GSAM)."""
    settings = expert_settings(cfg, recipe)
    net = network(cfg.experts.arch, cfg.dataset)
    images, epochs = expert_images(cfg), settings.trained_epochs()
    passes = 1 if settings.sharpness is None else 2  # GSAM: a forward and backward at w and at w + e
    return Work(
        flops=passes * epochs * net.training_flops(images),
        train_steps=passes * epochs * math.ceil(images / settings.batch_size),
    )


def _syn(settings) -> int:
    return min(settings.ipc * settings.factor**2, settings.max_syn_per_class)


def _batched(settings) -> bool:
    """Classes in one pass: only when asked for outright. ``auto`` (batched on CUDA unless a batch-norm
    matching network would mix the classes) counts as per class, the upper bound of the two."""
    return settings.batched_classes is True


def _class_steps(settings, classes: int) -> int:
    return 1 if _batched(settings) else classes


def _matching(cfg, settings, classes, features=True, head=True) -> Work:
    net = network(cfg.experts.arch, cfg.dataset)
    real = settings.real_batch if features else 0
    return Work(
        flops=net.matching_flops(real, _syn(settings), classes, features, head),
        class_steps=_class_steps(settings, classes),
    )


def _tgdd(cfg, settings, classes) -> Work:
    return _matching(cfg, settings, classes)


def _dm(cfg, settings, classes) -> Work:
    return _matching(cfg, settings, classes, head=False)


def _dance(cfg, settings, classes) -> Work:
    """DM's matching under the interpolated encoder, then the calibration passes under the expert."""
    calibration = _matching(cfg, settings, classes, features=False)
    work = _dm(cfg, settings, classes)
    for _ in range(settings.own["calib_passes"]):
        work = work + calibration
    return work


def _idm(cfg, settings, classes) -> Work:
    """Matching (features plus the CE head) on all 4*IPC expanded images under each matching network,
    then model_train_steps SGD steps of net_batch real images for each fetched network."""
    net = network(cfg.experts.arch, cfg.dataset)
    own = settings.own
    syn = settings.ipc * settings.factor**2
    steps = own["fetch_net_num"] * own["model_train_steps"]
    return Work(
        flops=own["match_nets"] * net.matching_flops(settings.real_batch, syn, classes, head=False)
        + steps * net.training_flops(own["net_batch"]),
        class_steps=own["match_nets"] * _class_steps(settings, classes),
        train_steps=steps,
    )


def _mtt(cfg, settings, classes) -> Work:
    """syn_steps student steps on batch_syn images, each kept for the second-order backward: about two
    training steps' work each (forward and backward with create_graph, then the backward of both)."""
    net = network(cfg.experts.arch, cfg.dataset)
    own = settings.own
    return Work(flops=2 * own["syn_steps"] * net.training_flops(own["batch_syn"]), train_steps=2 * own["syn_steps"])


ITERATION_WORK = {
    "tgdd": _tgdd,
    "dm": _dm,
    "datadam": _dm,
    "dance": _dance,
    "idm": _idm,
    "mtt": _mtt,
    "ftd": _mtt,
    "m3d": _dm,
}
"""One iteration, per method (DataDAM's attention maps are sums over the activations DM's pass
computes anyway; FTD's is MTT's, its moving average one pass over the images; M3D's is DM's pass, its
kernel matrices (real + synthetic rows)^2 x features per class, small beside the network's). A method
not listed here (a plugin's) is counted as TGDD's matching."""

UNROLLED = ("mtt", "ftd")
"""Methods with MTT's unrolled student and its cycle of one buffer file of experts in memory."""


def distill_work(cfg: Config) -> Work:
    """One distillation: iterations x the method's work per iteration; selecting real images
    (random, herding) costs next to nothing."""
    spec = get_dataset(cfg.dataset)
    settings = resolve_settings(cfg, spec)
    if not METHODS.get(settings.method).optimizes_images:
        return Work()
    one = ITERATION_WORK.get(settings.method, _tgdd)(cfg, settings, spec.num_classes)
    return Work(*(settings.iterations * x for x in one.astuple()))


def decoded_images(cfg: Config) -> int:
    """Images of the decoded synthetic set: classes x IPC x f^2."""
    spec = get_dataset(cfg.dataset)
    settings = resolve_settings(cfg, spec)
    return spec.num_classes * settings.ipc * settings.factor**2


def evaluation_work(cfg: Config) -> Work:
    """Every architecture of ``evaluate.archs`` x ``evaluate.runs`` trainings on the decoded set."""
    spec = get_dataset(cfg.dataset)
    images = decoded_images(cfg)
    protocol = protocol_settings(cfg, images_per_class=images // spec.num_classes)
    steps = protocol.epochs * math.ceil(images / protocol.batch_size)
    work = Work()
    for arch in cfg.evaluate.archs:
        flops = protocol.epochs * network(arch, cfg.dataset).training_flops(images)
        work = work + Work(flops=cfg.evaluate.runs * flops, eval_steps=cfg.evaluate.runs * steps)
    return work


# ---------------------------------------------------------------------------------------------
# Memory


def image_bytes(cfg: Config, images: int) -> int:
    spec = get_dataset(cfg.dataset)
    return images * spec.channels * spec.image_size**2


def data_bytes(cfg: Config) -> int:
    """The prepared splits as loaded (uint8 N x C x H x W): what every training step holds."""
    return image_bytes(cfg, train_images(cfg) + test_images(cfg))


def on_cpu(cfg: Config) -> bool:
    """Whether the step trains on the CPU (its working set is then host memory too)."""
    return cfg.device == "cpu"


def held_snapshots_bytes(cfg: Config) -> int:
    """Expert snapshots a distillation holds: every trajectory's (MTT, FTD: one buffer file's)."""
    card = METHODS.get(cfg.distill.method)
    if not card.needs_trajectories:
        return 0
    recipe = card.expert_recipe
    settings = expert_settings(cfg, recipe)
    held = num_trajectories(cfg, recipe)
    if cfg.distill.method in UNROLLED:
        held = min(held, resolve_settings(cfg).own["experts_per_file"])
    return held * (settings.trained_epochs() + 1) * network(cfg.experts.arch, cfg.dataset).snapshot_bytes


def mtt_working_bytes(cfg: Config) -> int:
    """MTT's unrolled student (measured at one shape, scaled by the network's activations per image)."""
    own = resolve_settings(cfg).own
    scale = network(cfg.experts.arch, cfg.dataset).activations / network(*MTT_MEASURED).activations
    return int((347 + MTT_MIB_PER_STEP_IMAGE * scale * own["syn_steps"] * own["batch_syn"]) * MIB)


def working_bytes(cfg: Config, step: str) -> int:
    """What a step computes with beyond its data: on a GPU that is GPU memory (0 here)."""
    if not on_cpu(cfg):
        return 0
    net = network(cfg.experts.arch, cfg.dataset)
    if step == "distill" and cfg.distill.method in UNROLLED:
        return mtt_working_bytes(cfg)
    if step == "distill":
        settings = resolve_settings(cfg)
        classes = get_dataset(cfg.dataset).num_classes if _batched(settings) else 1
        return 4 * 3 * net.activations * (settings.real_batch + _syn(settings)) * classes
    batch = expert_settings(cfg).batch_size if step == "experts" else 256
    return 4 * 3 * net.activations * batch


def step_bytes(cfg: Config, step: str) -> int:
    """Host memory of a step beyond the process itself."""
    if step == "prepare":  # raw and resized copies of both splits, the resize in float
        return 6 * data_bytes(cfg)
    if step == "experts":  # the training images also as floats (moved to the device from there)
        return data_bytes(cfg) + 4 * image_bytes(cfg, expert_images(cfg)) + working_bytes(cfg, step)
    if step == "distill":
        return data_bytes(cfg) + held_snapshots_bytes(cfg) + working_bytes(cfg, step)
    if step == "evaluate":
        return data_bytes(cfg) + 4 * image_bytes(cfg, decoded_images(cfg)) + working_bytes(cfg, step)
    return 0


# ---------------------------------------------------------------------------------------------
# Requests


@dataclass(frozen=True)
class Limits:
    """What the user sets once (environment variables of the shell that runs Snakemake)."""

    gpu_tflops: float = H200_TFLOPS
    max_runtime_min: int = DEFAULT_MAX_RUNTIME_MIN
    max_mem_mb: int = DEFAULT_MAX_MEM_MB

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Limits:
        """``TGDD_GPU_TFLOPS``, ``TGDD_MAX_RUNTIME_MIN``, ``TGDD_MAX_MEM_MB`` (unset or empty: the defaults)."""
        values = {}
        for field, name, kind in (
            ("gpu_tflops", "TGDD_GPU_TFLOPS", float),
            ("max_runtime_min", "TGDD_MAX_RUNTIME_MIN", int),
            ("max_mem_mb", "TGDD_MAX_MEM_MB", int),
        ):
            text = environ.get(name, "").strip()
            if not text:
                continue
            try:
                value = kind(text)
            except ValueError:
                value = 0
            if not value > 0:
                raise TgddError(f"{name}={text!r} must be a positive {'number' if kind is float else 'integer'}")
            values[field] = value
        return cls(**values)


@dataclass(frozen=True)
class Request:
    """What one job asks for, first attempt, and what its estimate was made of."""

    runtime_min: int
    mem_mb: int
    work: Work

    def attempt(self, attempt: int, limits: Limits) -> tuple[int, int]:
        """Runtime and memory of the ``attempt``-th try: half the estimate more each retry, capped."""
        grow = 1 + RETRY_GROWTH * (max(attempt, 1) - 1)
        return (
            min(limits.max_runtime_min, math.ceil(self.runtime_min * grow)),
            min(limits.max_mem_mb, math.ceil(self.mem_mb * grow)),
        )


def estimate_minutes(cfg: Config, work: Work, limits: Limits, threads: int = 1) -> int:
    """STARTUP_MIN + SAFETY x the work's time: on a GPU, the H200's time scaled by the GPU's rate;
    on a CPU (``device: cpu``), its FLOPs at CPU_GFLOPS_PER_THREAD per thread."""
    if on_cpu(cfg):
        seconds = work.flops / (CPU_GFLOPS_PER_THREAD * 1e9 * max(threads, 1))
    else:
        seconds = work.h200_seconds() * H200_TFLOPS / limits.gpu_tflops
    return STARTUP_MIN + math.ceil(SAFETY * seconds / 60)


def estimate_mem_mb(cfg: Config, step: str, gpu: bool) -> int:
    """The process, plus MEM_SAFETY x what the step holds; at least MIN_MEM_MB, in steps of 500 MB."""
    base = BASE_MEM_MB["gpu" if gpu and not on_cpu(cfg) else "cpu"]
    mb = base + MEM_SAFETY * step_bytes(cfg, step) / 1e6
    return max(MIN_MEM_MB, 500 * math.ceil(mb / 500))


def work_of(cfg: Config, step: str, recipe: str | None = None) -> Work:
    if step == "experts":
        return trajectory_work(cfg, recipe or "tgdd")
    if step == "distill":
        return distill_work(cfg)
    if step == "evaluate":
        return evaluation_work(cfg)
    return Work()


def request(
    cfg: Config, step: str, limits: Limits, recipe: str | None = None, gpu: bool = True, threads: int = 1
) -> Request:
    """The first-attempt request of one job of ``step`` (prepare, experts: one trajectory, distill,
    evaluate) for the cell ``cfg``; a TgddError when its estimate exceeds a cap."""
    work = work_of(cfg, step, recipe)
    if step == "prepare":
        minutes = STARTUP_MIN + math.ceil(SAFETY * PREPARE_S_PER_IMAGE * (train_images(cfg) + test_images(cfg)) / 60)
    else:
        minutes = estimate_minutes(cfg, work, limits, threads)
    result = Request(minutes, estimate_mem_mb(cfg, step, gpu), work)
    check(result, cfg, step, limits, recipe)
    return result


def describe(cfg: Config, step: str, recipe: str | None = None) -> str:
    """The job, as a user finds it in the matrix."""
    if step == "experts":
        return f"tgdd experts {cfg.dataset} recipe {recipe} {cfg.experts.arch} (one trajectory)"
    if step in ("distill", "evaluate"):
        archs = f" {'/'.join(cfg.evaluate.archs)}" if step == "evaluate" else ""
        return f"tgdd {step} {cfg.dataset} {cfg.distill.method} IPC {cfg.distill.ipc} seed {cfg.seed}{archs}"
    return f"tgdd {step} {cfg.dataset}"


def hours(minutes: float) -> str:
    return f"{minutes / 60:.1f} h" if minutes >= 120 else f"{minutes:.0f} min"


def check(req: Request, cfg: Config, step: str, limits: Limits, recipe: str | None = None) -> None:
    """Refuse a job that could not finish within the caps, naming the fixes."""
    job = describe(cfg, step, recipe)
    if req.runtime_min > limits.max_runtime_min:
        detail = f"{req.work.flops / 1e15:,.0f} PFLOP, at {limits.gpu_tflops:g} TFLOP/s" if req.work.flops else ""
        raise TgddError(
            f"{job}: estimated {hours(req.runtime_min)} ({detail}{', ' if detail else ''}{STARTUP_MIN} min "
            f"start-up, x {SAFETY:g} for safety) exceeds TGDD_MAX_RUNTIME_MIN="
            f"{limits.max_runtime_min} ({hours(limits.max_runtime_min)}): set TGDD_MAX_RUNTIME_MIN to your "
            "partition's time limit, TGDD_GPU_TFLOPS to your GPU's rate (benchmarks/gpu_check.sh), "
            "or give this cell fewer iterations/epochs in the config"
        )
    if req.mem_mb > limits.max_mem_mb:
        raise TgddError(
            f"{job}: estimated {req.mem_mb} MB of memory exceeds TGDD_MAX_MEM_MB={limits.max_mem_mb}: "
            "set TGDD_MAX_MEM_MB to what a node of your partition offers per job, or run this cell on a GPU "
            "(device: cuda) where its working set is GPU memory"
        )
