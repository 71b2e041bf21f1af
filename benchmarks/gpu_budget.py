"""Expected GPU time of the paper preset, data set by data set, from its exact FLOP count.

    .venv/bin/python benchmarks/gpu_budget.py [--config config/paper.yaml] [--tflops 5 20]

No GPU needed: every cell of the config's matrix is resolved exactly as `tgdd` resolves it (method
defaults, per_dataset blocks, the evaluation-epoch rule of the 128 px subsets), and the Conv2d/Linear
FLOPs of its expert training, distillation and evaluation are counted with the forward hooks of
`benchmarks/speed.py`. Hours follow at the achieved rates given with ``--tflops``: the FLOPs are
exact, the rate is the assumption. Calibrate it with `benchmarks/gpu_check.sh` (it prints the rate a
GPU achieves on a TGDD iteration) and rerun with that number.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from functools import cache
from pathlib import Path

from speed import distill_work, traced, training_work

from tgdd.config import load_config
from tgdd.data.registry import get_dataset
from tgdd.evaluate import protocol_settings
from tgdd.experts import expert_settings, num_trajectories
from tgdd.methods import METHODS, resolve_settings
from tgdd.steps import matrix_configs

REPO = Path(__file__).resolve().parents[1]

TRAIN_IMAGES = {  # training-set sizes of the published data sets (what the experts train on)
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
training images for each of their 10 classes."""


@cache
def calls(arch: str, dataset: str):
    """The network's traced layer calls (tracing builds the network: done once per pair)."""
    return traced(arch, get_dataset(dataset))


def training_flops(arch: str, dataset: str, images: int, batch: int, epochs: int) -> float:
    _, forward, _ = calls(arch, dataset)
    batches = [min(batch, images - start) for start in range(0, images, batch)]
    return epochs * sum(w.flops for w in training_work(forward, batches))


def _matching(features, forward, real: int, syn: int, classes: int) -> float:
    """Per iteration, every class: real images through the features, synthetic ones through the
    features and (if ``forward``) a classifier pass, with input gradients."""
    return sum(w.flops for w in distill_work(features, forward, real, syn, classes, batched=True))


def _syn(settings) -> int:
    return min(settings.ipc * settings.factor**2, settings.max_syn_per_class)


def _tgdd(cell, settings, spec) -> float:
    features, forward, _ = calls(cell.experts.arch, cell.dataset)
    return _matching(features, forward, settings.real_batch, _syn(settings), spec.num_classes)


def _dm(cell, settings, spec) -> float:
    features, _, _ = calls(cell.experts.arch, cell.dataset)
    return _matching(features, [], settings.real_batch, _syn(settings), spec.num_classes)


def _dance(cell, settings, spec) -> float:
    """DM's matching under the interpolated encoder, then the calibration passes under the expert."""
    _, forward, _ = calls(cell.experts.arch, cell.dataset)
    calibration = _matching([], forward, 0, _syn(settings), spec.num_classes)
    return _dm(cell, settings, spec) + settings.own["calib_passes"] * calibration


def _idm(cell, settings, spec) -> float:
    """Matching (features plus the CE head) on all 4*IPC expanded images under each matching
    network, then model_train_steps SGD steps of net_batch real images for each fetched network."""
    features, forward, _ = calls(cell.experts.arch, cell.dataset)
    own = settings.own
    syn = settings.ipc * settings.factor**2
    matching = own["match_nets"] * _matching(features, [], settings.real_batch, syn, spec.num_classes)
    steps = own["fetch_net_num"] * own["model_train_steps"]
    return matching + sum(w.flops for w in training_work(forward, [own["net_batch"]] * steps))


def _mtt(cell, settings, spec) -> float:
    """syn_steps student steps on batch_syn images, each kept for the second-order backward: about
    two training steps' work each (forward and backward with create_graph, then the backward of both)."""
    _, forward, _ = calls(cell.experts.arch, cell.dataset)
    own = settings.own
    return 2 * sum(w.flops for w in training_work(forward, [own["batch_syn"]] * own["syn_steps"]))


DISTILL_COST = {"tgdd": _tgdd, "dm": _dm, "datadam": _dm, "dance": _dance, "idm": _idm, "mtt": _mtt}
"""Conv/Linear FLOPs of one iteration, per method (DataDAM's attention maps are sums over the
activations DM's pass computes anyway)."""


def distill_flops(cell) -> float:
    """One distillation: iterations x the method's work per iteration; selecting real images
    (random, herding) costs next to nothing."""
    spec = get_dataset(cell.dataset)
    settings = resolve_settings(cell, spec)
    if not METHODS.get(settings.method).optimizes_images:
        return 0.0
    return settings.iterations * DISTILL_COST[settings.method](cell, settings, spec)


def evaluation_flops(cell) -> float:
    spec = get_dataset(cell.dataset)
    settings = resolve_settings(cell, spec)
    images = spec.num_classes * settings.ipc * settings.factor**2
    protocol = protocol_settings(cell, images_per_class=images // spec.num_classes)
    return sum(
        cell.evaluate.runs * training_flops(arch, cell.dataset, images, protocol.batch_size, protocol.epochs)
        for arch in cell.evaluate.archs
    )


def budget(config: Path) -> dict[str, dict[str, float]]:
    """PFLOP per data set and stage (experts once per data set and seed, as the workflow shares them)."""
    cfg = load_config(config)
    table: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    experts_done = set()
    for cell in matrix_configs(cfg):
        row = table[cell.dataset]
        card = METHODS.get(cell.distill.method)
        key = (cell.dataset, cell.seed, cell.experts.arch, card.expert_recipe)
        if card.needs_trajectories and key not in experts_done:
            experts_done.add(key)
            e = expert_settings(cell, card.expert_recipe)
            row["experts"] += num_trajectories(cell, card.expert_recipe) * training_flops(
                cell.experts.arch, cell.dataset, TRAIN_IMAGES[cell.dataset], e.batch_size, e.trained_epochs()
            )
        row["distill"] += distill_flops(cell)
        row["evaluate"] += evaluation_flops(cell)
    return {d: {k: v / 1e15 for k, v in stages.items()} for d, stages in table.items()}


def markdown(table: dict[str, dict[str, float]], rates: list[float], config: Path) -> str:
    stages = ("experts", "distill", "evaluate")
    head = ["data set", *[f"{s} PFLOP" for s in stages], "total PFLOP", *[f"hours at {r:g} TFLOP/s" for r in rates]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    totals = defaultdict(float)
    for dataset, row in table.items():
        total = sum(row.get(s, 0.0) for s in stages)
        for s in stages:
            totals[s] += row.get(s, 0.0)
        hours = [f"{total * 1e3 / r / 3600:.1f}" for r in rates]
        lines.append(
            f"| {dataset} | "
            + " | ".join(f"{row.get(s, 0.0):.1f}" for s in stages)
            + f" | {total:.1f} | "
            + " | ".join(hours)
            + " |"
        )
    grand = sum(totals.values())
    lines.append(
        "| **all** | "
        + " | ".join(f"{totals[s]:.1f}" for s in stages)
        + f" | {grand:.1f} | "
        + " | ".join(f"{grand * 1e3 / r / 3600:.0f}" for r in rates)
        + " |"
    )
    return (
        f"`{config.relative_to(REPO) if config.is_relative_to(REPO) else config}`, every cell of its matrix:\n\n"
        + "\n".join(lines)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "config" / "paper.yaml")
    parser.add_argument("--tflops", type=float, nargs="+", default=[5.0, 20.0], help="achieved rates to convert at")
    args = parser.parse_args()
    print(markdown(budget(args.config.resolve()), args.tflops, args.config.resolve()))


if __name__ == "__main__":
    main()
