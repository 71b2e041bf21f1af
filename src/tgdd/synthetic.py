"""Synthetic sets: multi-formation decoding, initialisation, storage and image grids.

Multi-formation (IDC): each stored image is cut into f x f tiles and each tile is upsampled
to full size, so one stored image yields f*f training images.

Stored images are on the pixel scale of the real data ([0, 1] nominally). They are stored as the
last update left them, not clamped, as the authors' code saves them (TGDD and DANCE clamp at the
start of each iteration; DM never clamps): evaluation trains on exactly those values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tgdd.artifacts import atomic_write, content_digest, sha256_file, torch_load, torch_save
from tgdd.data.prepared import ClassSampler
from tgdd.errors import TgddError

DECODE_PAD_VALUE = 0.5  # IDC's decode_zoom pads H % f != 0 images with 0.5 (mid grey in [0,1])


def decode(images: torch.Tensor, factor: int) -> torch.Tensor:
    """``[M, C, H, W]`` -> ``[M*f*f, C, H, W]``: image m's tiles at rows ``m*f*f .. m*f*f+f*f-1``,
    in row-major tile order, each upsampled bilinearly (``nn.Upsample``, ``align_corners=False``).
    A tile is ceil(H/f) px; if H % f != 0 the bottom and right edges are padded with 0.5, as IDC's
    ``decode_zoom`` does."""
    if factor == 1:
        return images
    m, c, h, w = images.shape
    s = math.ceil(h / factor)
    padded = F.pad(images, (0, s * factor - w, 0, s * factor - h), value=DECODE_PAD_VALUE)
    tiles = padded.view(m, c, factor, s, factor, s).permute(0, 2, 4, 1, 3, 5).reshape(m * factor * factor, c, s, s)
    return F.interpolate(tiles, size=(h, w), mode="bilinear", align_corners=False)


def decode_labels(labels: torch.Tensor, factor: int) -> torch.Tensor:
    return labels.repeat_interleave(factor * factor)


def _tile_sizes(size: int, factor: int) -> list[int]:
    """IDC's ``mix`` layout along one axis: f tiles of size//f px, the first size % f one px larger."""
    small, extra = divmod(size, factor)
    return [small + 1 if i < extra else small for i in range(factor)]


def tile(images: torch.Tensor, factor: int) -> torch.Tensor:
    """The authors' ``mix`` initialisation (IDC's ``Synthesizer.init``): ``[f*f*n, C, H, W]`` ->
    ``[n, C, H, W]``. Tile k (row-major, k = i*f + j) of output image m is input image ``k*n + m``,
    downsized with ``F.interpolate``'s default (nearest) to its tile of :func:`_tile_sizes`."""
    count, c, h, w = images.shape
    if count % (factor * factor):
        raise ValueError(f"{count} images cannot be tiled {factor}x{factor}")
    n = count // factor**2
    out = images.new_empty(n, c, h, w)
    top = 0
    for i, rows in enumerate(_tile_sizes(h, factor)):
        left = 0
        for j, cols in enumerate(_tile_sizes(w, factor)):
            k = i * factor + j
            out[:, :, top : top + rows, left : left + cols] = F.interpolate(
                images[k * n : (k + 1) * n], size=(rows, cols)
            )
            left += cols
        top += rows
    return out


def pooled_tiles(draws: list[torch.Tensor], factor: int) -> torch.Tensor:
    """IDM's initialisation (``IDM_cifar10.py`` l. 141-145): f*f draws of ``[n, C, H, W]`` ->
    ``[n, C, H, W]``, draw k shrunk by ``F.interpolate(scale_factor=1/f, mode='bilinear')``
    (``align_corners=False``; for f = 2 that is 2x2 average pooling) into tile (row k % f, column
    k // f): column-major, as their quadrants top-left, bottom-left, top-right, bottom-right."""
    if len(draws) != factor * factor:
        raise ValueError(f"{len(draws)} draws cannot be tiled {factor}x{factor}")
    if factor == 1:
        return draws[0].clone()
    n, c, h, w = draws[0].shape
    if h % factor or w % factor:
        raise TgddError(f"mix-pooled tiles {h}x{w} px images {factor}x{factor}: the size must be a multiple of f")
    s, t = h // factor, w // factor
    out = draws[0].new_empty(n, c, h, w)
    for k, draw in enumerate(draws):
        i, j = k % factor, k // factor
        out[:, :, i * s : (i + 1) * s, j * t : (j + 1) * t] = F.interpolate(
            draw, scale_factor=1 / factor, mode="bilinear", align_corners=False
        )
    return out


@dataclass(frozen=True)
class Initialisation:
    """Which real images start a synthetic set: f*f tiled per stored image or one each, and the
    first ones of each class in the data set's order or a seeded random draw; ``pooled``: each
    tile position its own random draw of IPC images, shrunk bilinearly (:func:`pooled_tiles`)."""

    tiled: bool
    first: bool
    pooled: bool = False


# The names distill.init accepts (tgdd.config lists the same, tested).
INITIALISATIONS: dict[str, Initialisation] = {
    "mix": Initialisation(tiled=True, first=True),  # the authors' (IDC/DANCE/TGDD), forced for f > 1
    "mix-random": Initialisation(tiled=True, first=False),
    "real": Initialisation(tiled=False, first=False),  # DM's: random real images
    "real-first": Initialisation(tiled=False, first=True),
    "mix-pooled": Initialisation(tiled=True, first=False, pooled=True),  # IDM's
}


def images_needed(init: str, ipc: int, factor: int) -> int:
    """Real images per class that an initialisation reads (distinct ones: ``mix-pooled`` draws IPC
    images f*f times independently)."""
    rule = INITIALISATIONS[init]
    return ipc * factor * factor if rule.tiled and not rule.pooled else ipc


def initial_images(
    sampler: ClassSampler, num_classes: int, ipc: int, factor: int, init: str, gen: torch.Generator
) -> torch.Tensor:
    """The stored images a synthetic set starts from, class-major (see :data:`INITIALISATIONS`).
    With f = 1, ``mix`` is the first IPC images: what the authors' f = 1 default (``random``) does."""
    rule = INITIALISATIONS[init]
    count = images_needed(init, ipc, factor)
    per_class = []
    for c in range(num_classes):
        if rule.pooled:
            per_class.append(pooled_tiles([sampler.sample(c, ipc, gen) for _ in range(factor * factor)], factor))
            continue
        real = sampler.first(c, count) if rule.first else sampler.sample(c, count, gen)
        per_class.append(tile(real, factor) if rule.tiled else real)
    return torch.cat(per_class)


@dataclass
class SyntheticSet:
    """Stored images (floats in [0,1]), their labels, the factor, and everything needed to trust them."""

    images: torch.Tensor  # [num_classes * ipc, C, H, W]
    labels: torch.Tensor
    factor: int
    meta: dict[str, Any] = field(default_factory=dict)

    def decoded(self) -> tuple[torch.Tensor, torch.Tensor]:
        return decode(self.images, self.factor), decode_labels(self.labels, self.factor)


def save_synthetic(path: Path, syn: SyntheticSet) -> str:
    torch_save(
        path, {"images": syn.images.detach().cpu(), "labels": syn.labels.cpu(), "factor": syn.factor, "meta": syn.meta}
    )
    return sha256_file(path)


def synthetic_digest(syn: SyntheticSet) -> str:
    """The identity of a synthetic set's content (stored images, labels, factor): what an evaluation
    records and freshness compares, so a set distilled again to the same images (or rewritten with
    other provenance) does not make its evaluations stale."""
    return content_digest({"images": syn.images, "labels": syn.labels, "factor": syn.factor})


def load_synthetic(path: Path) -> SyntheticSet:
    blob = torch_load(path, "synthetic set")
    try:
        return SyntheticSet(blob["images"], blob["labels"], int(blob["factor"]), blob["meta"])
    except (KeyError, TypeError) as exc:
        raise TgddError(f"synthetic set {path} lacks field {exc}") from None


def load_synthetic_meta(path: Path) -> dict[str, Any]:
    """The metadata of a stored synthetic set; its images are memory-mapped, not read."""
    blob = torch_load(path, "synthetic set", mmap=True)
    if not isinstance(blob, dict) or not isinstance(blob.get("meta"), dict):
        raise TgddError(f"synthetic set {path} lacks its metadata")
    return blob["meta"]


def image_grid(images: torch.Tensor, nrow: int, padding: int = 2) -> torch.Tensor:
    """``[N, C, H, W]`` in [0, 1] -> one ``[3, H', W']`` image, ``nrow`` images per row, black
    borders: the layout of ``torchvision.utils.make_grid`` for two or more images (tested equal), written here because
    importing torchvision costs every distillation job about 1.3 s."""
    n, c, h, w = images.shape
    if c == 1:
        images = images.expand(n, 3, h, w)
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    grid = images.new_zeros(images.shape[1], rows * (h + padding) + padding, cols * (w + padding) + padding)
    for k, image in enumerate(images):
        top = (k // cols) * (h + padding) + padding
        left = (k % cols) * (w + padding) + padding
        grid[:, top : top + h, left : left + w] = image
    return grid


def save_grid(path: Path, images: torch.Tensor, ipc: int, max_per_class: int = 10) -> Path:
    """A PNG with one row per class (up to ``max_per_class`` stored images each)."""
    from PIL import Image

    per_class = images.view(-1, ipc, *images.shape[1:])[:, :max_per_class]
    rows = per_class.reshape(-1, *images.shape[1:]).clamp(0, 1)
    scale = max(1, 64 // images.shape[-1])
    if scale > 1:
        rows = F.interpolate(rows, scale_factor=scale, mode="nearest")
    grid = image_grid(rows, nrow=min(ipc, max_per_class))
    pixels = grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()
    return atomic_write(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="png"))
