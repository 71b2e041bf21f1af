"""What a dataset is to tgdd: shape facts, normalisation and a real loader.

A loader reads one split from its native on-disk format and returns a :class:`RawSplit`
at native resolution; ``tgdd prepare`` resizes it to ``image_size`` and stores it in the
prepared format that every later step reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tgdd.registry import Registry

SPLITS = ("train", "test")


@dataclass(frozen=True)
class RawSplit:
    """One split as read from disk: uint8 images ``[N, H, W, C]`` and int64 labels."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 [N,H,W,C], got {self.images.dtype} {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")


@dataclass(frozen=True)
class LoadContext:
    """Where a loader may look for files, and whether it may use the network."""

    roots: tuple[Path, ...]
    allow_download: bool = False


Loader = Callable[[LoadContext, str], RawSplit]


@dataclass(frozen=True)
class DatasetSpec:
    """Static facts about a dataset and the function that reads it."""

    name: str
    channels: int
    image_size: int  # resolution fed to the networks (prepared images are resized to it)
    num_classes: int
    loader: Loader
    how_to_get: str  # shown when the files are missing
    mean: tuple[float, ...] | None = None  # None: computed from the prepared training split
    std: tuple[float, ...] | None = None
    flip: bool = True  # horizontal flips are label-preserving (not for digits)
    system_dirs: tuple[Path, ...] = field(default_factory=tuple)  # searched after the data root


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    DATASETS.add(spec.name, spec)
    return spec


def get_dataset(name: str) -> DatasetSpec:
    from tgdd.data import catalog  # noqa: F401  (fills the registry on first use)

    return DATASETS.get(name)


def dataset_names() -> list[str]:
    from tgdd.data import catalog  # noqa: F401

    return DATASETS.names()
