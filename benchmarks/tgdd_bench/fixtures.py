"""Random inputs shaped like the real ones (a prepared split, network snapshots, trajectories): speed and
memory do not depend on the pixels or the weights, so the benchmarks need no data files."""

from __future__ import annotations

import torch

from tgdd.data.prepared import PreparedSplit
from tgdd.data.registry import DatasetSpec
from tgdd.experts import StateDict, Trajectories
from tgdd.models import build_model
from tgdd.runtime import seeded_init

IN_MEMORY_SNAPSHOTS = 3  # the fake trajectory: one trajectory of this many random snapshots


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
    """The state of a randomly initialised ``arch`` for ``spec``'s images, on ``device``."""
    with seeded_init(seed):
        model = build_model(arch, spec.channels, spec.image_size, spec.num_classes)
    return {k: v.detach().to(device, copy=True) for k, v in model.state_dict().items()}


def fake_trajectories(arch: str, spec: DatasetSpec, device: torch.device) -> Trajectories:
    """One in-memory trajectory of a few randomly initialised snapshots (speed does not depend on the weights)."""
    snapshots = [random_snapshot(arch, spec, seed, device) for seed in range(IN_MEMORY_SNAPSHOTS)]
    return Trajectories([snapshots], "random")
