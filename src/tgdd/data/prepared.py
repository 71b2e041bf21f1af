"""The prepared format every step reads, and the class-balanced in-memory sampler.

``tgdd prepare`` writes ``<data>/prepared/<dataset>/{train,test}.pt`` (uint8 images
``[N,C,H,W]`` at the network resolution, labels, class names, mean/std) and a manifest with
each file's SHA-256, checked on every load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tgdd.artifacts import provenance, read_checked, read_json, sha256_file, torch_load, torch_save, write_record
from tgdd.data.registry import SPLITS, DatasetSpec, LoadContext, RawSplit
from tgdd.errors import TgddError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class PreparedSplit:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]
    class_names: list[str]
    mean: torch.Tensor  # float [C]
    std: torch.Tensor
    sha256: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def as_float(self) -> torch.Tensor:
        return self.images.float().div_(255.0)


def _to_network_resolution(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 [N,H,W,C] -> uint8 [N,C,size,size] (bilinear, antialiased when shrinking)."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    if tensor.shape[-2:] == (size, size):
        return tensor.contiguous()
    resized = F.interpolate(tensor.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


def _channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and (unbiased) std of the uint8 ``[N, C, H, W]`` images scaled to [0, 1].

    From exact integer sums, chunk by chunk: a float32 reduction depends on the thread count in
    its last bit, and that bit of the normalisation changed a distilled IPC 1 set (and its
    accuracy, by points) between a 1-thread and a 2-thread `tgdd prepare`."""
    sums = torch.zeros(images.shape[1], dtype=torch.int64)
    squares = torch.zeros_like(sums)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].to(torch.int64)
        sums += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
    count = images.numel() // images.shape[1]
    mean = sums.double() / count
    variance = (squares.double() - sums.double() * mean) / (count - 1)
    return (mean / 255).tolist(), (variance.clamp_min(0).sqrt() / 255).tolist()


def prepare_dataset(spec: DatasetSpec, ctx: LoadContext, out_dir: Path) -> Path:
    """Read both splits through the spec's loader and write the prepared files plus manifest."""
    raw: dict[str, RawSplit] = {split: spec.loader(ctx, split) for split in SPLITS}
    tensors = {split: _to_network_resolution(raw[split].images, spec.image_size) for split in SPLITS}
    for split, tensor in tensors.items():
        if tensor.shape[1] != spec.channels:
            raise TgddError(f"{spec.name} {split}: expected {spec.channels} channels, read {tensor.shape[1]}")
    if spec.mean is not None and spec.std is not None:
        mean, std = list(spec.mean), list(spec.std)
    else:
        mean, std = _channel_stats(tensors["train"])
    files = {}
    for split in SPLITS:
        path = out_dir / f"{split}.pt"
        torch_save(
            path,
            {
                "format": FORMAT_VERSION,
                "dataset": spec.name,
                "split": split,
                "images": tensors[split],
                "labels": torch.from_numpy(raw[split].labels.astype(np.int64)),
                "class_names": list(raw[split].class_names),
                "mean": mean,
                "std": std,
            },
        )
        files[path.name] = {"sha256": sha256_file(path), "count": len(raw[split].labels)}
    write_record(  # the same files again (same bytes: tgdd.artifacts.torch_save) keep the first manifest
        out_dir / MANIFEST,
        {
            "dataset": spec.name,
            "format": FORMAT_VERSION,
            "image_size": spec.image_size,
            "channels": spec.channels,
            "num_classes": spec.num_classes,
            "mean": mean,
            "std": std,
            "files": files,
            **provenance("cpu", timestamp=False),
        },
    )
    return out_dir


def load_prepared(out_dir: Path, split: str, dataset: str) -> PreparedSplit:
    """Load one prepared split, verifying it against the manifest's SHA-256."""
    manifest_path = out_dir / MANIFEST
    if not manifest_path.is_file():
        raise TgddError(f"no prepared data for '{dataset}' at {out_dir}: run `tgdd prepare` first")
    manifest = read_json(manifest_path)
    if manifest.get("dataset") != dataset:
        raise TgddError(f"{manifest_path} is for dataset '{manifest.get('dataset')}', not '{dataset}'")
    path = out_dir / f"{split}.pt"
    entry = manifest.get("files", {}).get(path.name)
    if entry is None or not path.is_file():
        raise TgddError(f"prepared file {path} is missing: rerun `tgdd prepare`")
    data = read_checked(path, entry["sha256"], "prepared file")
    digest = entry["sha256"]
    blob = torch_load(path, "prepared file", data)
    return PreparedSplit(
        images=blob["images"],
        labels=blob["labels"],
        class_names=blob["class_names"],
        mean=torch.tensor(blob["mean"], dtype=torch.float32),
        std=torch.tensor(blob["std"], dtype=torch.float32),
        sha256=digest,
    )


class ClassSampler:
    """Real images of one class, from memory: the first ones in the data set's order, or a random
    draw (what distillation's initialisation and real batches read)."""

    def __init__(self, split: PreparedSplit, device: torch.device) -> None:
        self.images = split.images.to(device)
        self.labels = split.labels
        self.by_class = [torch.nonzero(split.labels == c).flatten().to(device) for c in range(split.num_classes)]

    def class_size(self, c: int) -> int:
        return len(self.by_class[c])

    def pixels(self, c: int, positions: torch.Tensor) -> torch.Tensor:
        """Images at ``positions`` within class ``c`` (0 = its first image), as floats in [0,1]."""
        return self.images[self.by_class[c][positions.to(self.by_class[c].device)]].float().div_(255.0)

    def first(self, c: int, n: int) -> torch.Tensor:
        """The first ``n`` images of class ``c`` in the data set's order (IDC's ``cls_idx[c][:n]``)."""
        return self.pixels(c, torch.arange(min(n, self.class_size(c))))

    def sample(self, c: int, n: int, gen: torch.Generator) -> torch.Tensor:
        """Up to ``n`` distinct images of class ``c``, drawn afresh (DM's ``get_images``)."""
        pick = torch.randperm(self.class_size(c), generator=gen, device=gen.device)[:n]
        return self.pixels(c, pick)


class FreshBatches:
    """DM's real batches: every step a new random subset of the class (``np.random.permutation(...)[:n]``),
    so successive batches may share images."""

    def __init__(self, sampler: ClassSampler, batch: int) -> None:
        self.sampler, self.batch = sampler, batch

    def next(self, c: int, gen: torch.Generator) -> torch.Tensor:
        return self.sampler.sample(c, self.batch, gen)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class EpochBatches:
    """IDC/DANCE/TGDD's real batches (``ClassBatchSampler``): per class a shuffled order of its
    images, consumed ``min(class size, batch)`` images at a time; when fewer than a batch remain
    they are dropped and the class is reshuffled. So no image repeats before the whole class has
    been seen once."""

    def __init__(self, sampler: ClassSampler, batch: int) -> None:
        self.sampler, self.batch = sampler, batch
        self.orders: list[torch.Tensor | None] = [None] * len(sampler.by_class)
        self.positions = [0] * len(sampler.by_class)

    def next(self, c: int, gen: torch.Generator) -> torch.Tensor:
        size = self.sampler.class_size(c)
        batch = min(size, self.batch)
        order = self.orders[c]
        if order is None or self.positions[c] + batch > size:
            order = self.orders[c] = torch.randperm(size, generator=gen, device=gen.device)
            self.positions[c] = 0
        start = self.positions[c]
        self.positions[c] = start + batch
        return self.sampler.pixels(c, order[start : start + batch])

    def state_dict(self) -> dict:
        return {"orders": [None if o is None else o.cpu() for o in self.orders], "positions": list(self.positions)}

    def load_state_dict(self, state: dict) -> None:
        self.orders = list(state["orders"])  # on the CPU; `pixels` moves the positions it reads
        self.positions = list(state["positions"])


# How a method draws its real batches (its card names one; recorded in the distill settings).
REAL_BATCHES = {"fresh": FreshBatches, "epochs": EpochBatches}
