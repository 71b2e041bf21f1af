"""Continual learning as an evaluation protocol (class-incremental, as DM's ``CL_DM.py`` runs it).

The classes arrive in ``steps`` equal groups, in a seeded class order. After each step a network
is trained from scratch on the only memory there is: the synthetic images of every class seen so
far, and tested on the real test images of those classes. The facts, from DM's code
(VICO-UoE/DatasetCondensation ``CL_DM.py`` and its readme):

* class order ``s`` (s = 0..4) is ``np.random.seed(s); np.random.permutation(num_classes)``;
* the network keeps an output for every class of the data set (``get_network(..., num_classes)``);
* each step trains ``num_eval`` = 3 fresh networks with ``evaluate_synset`` (our protocol ``dc``:
  1,000 epochs, batch 256, DSA ``color_crop_cutout_flip_scale_rotate``);
* a step's number is the mean ± std over every order and run (5 x 3 = 15 accuracies);
* the memory is the synthetic images of the classes seen, in class order.

The last epoch's network is tested; nothing is selected on the test set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tgdd.models import build_model
from tgdd.progress import bar
from tgdd.protocols import TrainSettings
from tgdd.runtime import derive_seed, generator, numpy_rng, seeded_init
from tgdd.train import accuracy, train_classifier


def class_orders(num_classes: int, count: int) -> list[list[int]]:
    """The ``count`` class orders of DM's ``CL_DM.py``: order ``s`` is the permutation numpy's legacy
    global RNG gives after ``np.random.seed(s)`` (a ``RandomState(s)``, the same stream)."""
    return [np.random.RandomState(s).permutation(num_classes).tolist() for s in range(count)]


def classes_seen(order: Sequence[int], steps: int, step: int) -> list[int]:
    """The classes seen after step ``step`` (0-based) of ``steps``: the first ``(step + 1) * C/steps`` of ``order``."""
    if len(order) % steps:
        raise ValueError(f"{len(order)} classes do not split into {steps} equal steps")
    return list(order[: (step + 1) * (len(order) // steps)])


def of_classes(images: torch.Tensor, labels: torch.Tensor, classes: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The images of ``classes``, grouped class by class in that order (the memory of a step)."""
    rows = torch.cat([torch.nonzero(labels == c).flatten() for c in classes])
    return images[rows], labels[rows]


@dataclass(frozen=True)
class ContinualResult:
    """One class-incremental evaluation: per step, the classes seen and every accuracy (%) over
    orders x runs (order-major)."""

    steps: int
    orders: list[list[int]]
    classes_seen: list[int]
    accuracies: list[list[float]]

    def summary(self) -> list[dict[str, float | int]]:
        """Per step: classes seen, mean and population std (ddof=0, as DM's ``np.std``) over orders x runs."""
        return [
            {"step": step + 1, "classes_seen": seen, "mean": float(np.mean(accs)), "std": float(np.std(accs))}
            for step, (seen, accs) in enumerate(zip(self.classes_seen, self.accuracies, strict=True))
        ]


def evaluate_continual(
    images: torch.Tensor,
    labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    *,
    num_classes: int,
    steps: int,
    orders: int,
    runs: int,
    arch: str,
    settings: TrainSettings,
    seed: int,
    device: torch.device,
    progress: bool = True,
) -> ContinualResult:
    """Class-incremental evaluation of a synthetic set (``images`` in [0,1], decoded): for every
    class order and step, ``runs`` networks trained from scratch on the synthetic images of the
    classes seen, tested on the real test images of those classes. Run ``r`` of step ``t`` of order
    ``o`` draws its initialisation and streams from ``(seed, "continual", steps, o, t, r)``."""
    channels, size = images.shape[1], images.shape[2]
    images, labels = images.to(device), labels.to(device)
    class_order = class_orders(num_classes, orders)
    seen_counts, per_step = [], []
    for step in bar(range(steps), show=progress, desc=f"continual {steps} steps", leave=False):
        accs = []
        for o, order in enumerate(class_order):
            seen = classes_seen(order, steps, step)
            memory_x, memory_y = of_classes(images, labels, seen)
            test_x, test_y = of_classes(test_images, test_labels, seen)
            for run in range(runs):
                run_seed = derive_seed(seed, "continual", steps, o, step, run)
                with seeded_init(run_seed):
                    model = build_model(arch, channels, size, num_classes).to(device)
                gen, rng = generator(run_seed, "batches", device=device), numpy_rng(run_seed, "cutmix")
                train_classifier(model, memory_x, memory_y, settings, mean, std, gen=gen, rng=rng)
                accs.append(100.0 * accuracy(model, test_x, test_y, mean, std))
        seen_counts.append(len(classes_seen(class_order[0], steps, step)))
        per_step.append(accs)
    return ContinualResult(steps, class_order, seen_counts, per_step)


# --------------------------------------------------------------------------- the step


SELECTION = "last epoch; the test set is never used for selection"


def run_seeds(seed: int, steps: int, orders: int, runs: int) -> list[list[int]]:
    """The seed of every network, per step, order-major (as :func:`evaluate_continual` draws them)."""
    return [
        [derive_seed(seed, "continual", steps, o, step, run) for o in range(orders) for run in range(runs)]
        for step in range(steps)
    ]


def continual_synthetic(cfg, device: torch.device, progress: bool = True) -> list:
    """`tgdd continual`: the class-incremental evaluation of the synthetic set of ``cfg`` for every
    count in ``continual.steps``, one JSON each (:func:`tgdd.paths.continual_file`), written atomically."""
    from tgdd import paths
    from tgdd.artifacts import provenance, sha256_file, write_json
    from tgdd.evaluate import load_checked
    from tgdd.resolve import check_continual, continual_settings, resolved_continual
    from tgdd.synthetic import synthetic_digest

    check_continual(cfg)
    syn_path, syn, test = load_checked(cfg)
    meta = syn.meta
    images, labels = syn.decoded()
    settings = continual_settings(cfg, images_per_class=cfg.distill.ipc * syn.factor**2)
    c = cfg.continual
    record = {
        "dataset": cfg.dataset,
        "method": cfg.distill.method,
        "ipc": cfg.distill.ipc,
        "factor": syn.factor,
        **paths.variant_record(cfg),
        **resolved_continual(cfg, syn.factor),
        "synthetic_sha256": sha256_file(syn_path),
        "synthetic_content_sha256": synthetic_digest(syn),  # what freshness compares
        "synthetic_file": str(syn_path),
        "test_sha256": test.sha256,
        "distill_seed": cfg.seed,
        "experts_seed": meta.get("inputs", {}).get("experts_seed"),
        **({"origin": meta["origin"]} if "origin" in meta else {}),
    }
    written = []
    for steps in c.steps:
        result = evaluate_continual(images, labels, test.images, test.labels, test.mean, test.std,
                                    num_classes=test.num_classes, steps=steps, orders=c.orders, runs=c.runs,
                                    arch=c.arch, settings=settings, seed=cfg.seed, device=device,
                                    progress=progress)  # fmt: skip
        summary = result.summary()
        out = {
            **record,
            "steps": steps,
            "class_orders": result.orders,
            "classes_seen": result.classes_seen,
            "accuracies": result.accuracies,  # per step: orders x runs, order-major
            "mean": [row["mean"] for row in summary],
            "std": [row["std"] for row in summary],
            "std_kind": "population (ddof=0) over orders x runs, as DM's CL_DM.py",
            "seeds": run_seeds(cfg.seed, steps, c.orders, c.runs),
            "memory": "the synthetic images of the classes seen so far, nothing else",
            "selection": SELECTION,
            **provenance(str(device)),
        }
        path = paths.continual_file(cfg, steps)
        write_json(path, out)
        written.append(path)
    return written
