"""Loaders for datasets stored as folders of JPEGs: Tiny ImageNet and the ImageNet subsets.

Tiny ImageNet uses its own release layout (``tiny-imagenet-200/``); the six 10-class ImageNet
subsets of the dataset distillation literature (ImageNette, ImageWoof, ...) are read from an
ImageNet-style ``train/<wnid>/`` + ``val/<wnid>/`` tree, keeping only the subset's wnids. The
wnids, in label order, live in the package file ``tgdd/resources/imagenet_subsets.json`` so the
class order is a checked-in fact rather than whatever the directory listing returns.

Images are read one by one with PIL, converted to RGB (Tiny ImageNet and ImageNet contain
greyscale and CMYK JPEGs) and brought to the dataset's square size the way torchvision's
``Resize(size)`` + ``CenterCrop(size)`` would.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from tgdd.data.registry import DatasetSpec, LoadContext, RawSplit, register_dataset
from tgdd.data.torchvision_formats import candidate_dirs, locate_dir, missing_files_error
from tgdd.errors import TgddError

IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png"})
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# --------------------------------------------------------------------------- image reading


def fit_square(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (bilinear), then center-crop to ``size x size``.

    Mirrors torchvision's ``Resize(size)`` + ``CenterCrop(size)`` (same rounding), the
    transform the papers apply to ImageNet-style data. Images already ``size x size`` are
    returned untouched so that lossless inputs round-trip exactly.
    """
    width, height = image.size
    if (width, height) == (size, size):
        return image
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    resized = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left = round((new_w - size) / 2.0)
    top = round((new_h - size) / 2.0)
    return resized.crop((left, top, left + size, top + size))


def read_rgb(path: Path, size: int) -> np.ndarray:
    """One image as uint8 ``[size, size, 3]``; an unreadable file is a TgddError naming it."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise TgddError(f"cannot read image {path}: {exc}") from None
    return np.asarray(fit_square(rgb, size), dtype=np.uint8)


def read_images(paths: Sequence[Path], size: int) -> np.ndarray:
    """Stack images into a preallocated ``[N, size, size, 3]`` array (no intermediate list)."""
    images = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for index, path in enumerate(paths):
        images[index] = read_rgb(path, size)
    return images


def list_images(folder: Path) -> list[Path]:
    """The image files of one class folder, sorted by name for a reproducible order."""
    if not folder.is_dir():
        raise TgddError(f"missing class folder {folder}")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise TgddError(f"class folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths


def read_class_folders(folders: Sequence[Path], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images of ``folders[k]`` labelled ``k``, as ``[N, size, size, 3]`` uint8 and int64 labels."""
    paths: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(folders):
        found = list_images(folder)
        paths.extend(found)
        labels.extend([label] * len(found))
    return read_images(paths, size), np.asarray(labels, dtype=np.int64)


# --------------------------------------------------------------------------- Tiny ImageNet

TINY_FOLDER = "tiny-imagenet-200"
TINY_SIZE = 64
TINY_CLASSES = 200
TINY_HOW_TO_GET = (
    f"download and unpack http://cs231n.stanford.edu/tiny-imagenet-200.zip into the data root (giving {TINY_FOLDER}/)"
)
_TINY_VAL_ANNOTATIONS = "val/val_annotations.txt"


def read_lines(path: Path) -> list[str]:
    """Non-empty, stripped lines of a text file; unreadable files are a TgddError naming them."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TgddError(f"cannot read {path}: {exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_tiny_wnids(path: Path) -> list[str]:
    """Class wnids in label order: sorted, as torchvision's ``ImageFolder`` orders ``train/``."""
    wnids = sorted(set(read_lines(path)))
    if len(wnids) == 0:
        raise TgddError(f"{path} lists no class ids")
    return wnids


def read_class_names(path: Path, wnids: Sequence[str]) -> list[str]:
    """Readable names from ``words.txt`` (first synonym per wnid); the wnid where none is known."""
    words: dict[str, str] = {}
    if path.is_file():
        for line in read_lines(path):
            wnid, _, text = line.partition("\t")
            words[wnid] = text.split(",")[0].strip()
    return [words.get(wnid) or wnid for wnid in wnids]


def read_tiny_val(directory: Path, wnids: Sequence[str]) -> tuple[list[Path], np.ndarray]:
    """Validation image paths and labels from ``val/val_annotations.txt`` (file<TAB>wnid<TAB>bbox)."""
    annotations = directory / _TINY_VAL_ANNOTATIONS
    label_of = {wnid: label for label, wnid in enumerate(wnids)}
    paths: list[Path] = []
    labels: list[int] = []
    for number, line in enumerate(read_lines(annotations), start=1):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in label_of:
            raise TgddError(f"{annotations} line {number}: expected '<file>\\t<wnid from wnids.txt>', got {line!r}")
        paths.append(directory / "val" / "images" / fields[0])
        labels.append(label_of[fields[1]])
    return paths, np.asarray(labels, dtype=np.int64)


def load_tinyimagenet(ctx: LoadContext, split: str) -> RawSplit:
    """Tiny ImageNet from ``<root>/tiny-imagenet-200/`` (or the root being that folder); test = val."""
    needed = ("wnids.txt", _TINY_VAL_ANNOTATIONS) if split == "test" else ("wnids.txt",)
    directory = locate_dir("tinyimagenet", candidate_dirs(ctx.roots, (TINY_FOLDER, "")), needed, TINY_HOW_TO_GET)
    wnids = read_tiny_wnids(directory / "wnids.txt")
    if split == "test":
        paths, labels = read_tiny_val(directory, wnids)
        images = read_images(paths, TINY_SIZE)
    else:
        images, labels = read_class_folders([directory / "train" / w / "images" for w in wnids], TINY_SIZE)
    return RawSplit(images, labels, read_class_names(directory / "words.txt", wnids))


# --------------------------------------------------------------------------- ImageNet subsets

SUBSET_SIZE = 128
_IMAGENET_SPLIT_DIRS = {"train": "train", "test": "val"}


@functools.cache
def imagenet_subsets() -> dict[str, list[str]]:
    """Subset name -> its 10 ImageNet wnids in label order, from the package resource file."""
    text = resources.files("tgdd").joinpath("resources/imagenet_subsets.json").read_text(encoding="utf-8")
    return {name: wnids for name, wnids in json.loads(text).items() if not name.startswith("_")}


def subset_how_to_get(name: str) -> str:
    return (
        "put ImageNet-1k (ILSVRC2012) in the data root as imagenet/train/<wnid>/*.JPEG and "
        "imagenet/val/<wnid>/*.JPEG (validation images sorted into class folders, e.g. with the usual "
        f"valprep.sh); only the 10 wnid folders of {name} are needed: {' '.join(imagenet_subsets()[name])}"
    )


def imagenet_subset_loader(name: str) -> Callable[[LoadContext, str], RawSplit]:
    """Loader for one ImageNet subset, resized to 128 px; class names are the wnids.

    Looks for ``<root>/imagenet/``, ``<root>/<name>/`` (a folder holding just the subset) and
    the root itself, taking the first that has the split's folder (``train`` or ``val``).
    """
    wnids = imagenet_subsets()[name]

    def load(ctx: LoadContext, split: str) -> RawSplit:
        split_dir = _IMAGENET_SPLIT_DIRS[split]
        dirs = candidate_dirs(ctx.roots, ("imagenet", name, ""))
        base = next((d for d in dirs if (d / split_dir).is_dir()), None)
        if base is None:
            raise missing_files_error(name, [f"the folder {split_dir}/<wnid>/"], dirs, subset_how_to_get(name))
        images, labels = read_class_folders([base / split_dir / w for w in wnids], SUBSET_SIZE)
        return RawSplit(images, labels, list(wnids))

    return load


# --------------------------------------------------------------------------- registration

register_dataset(
    DatasetSpec(
        name="tinyimagenet",
        channels=3,
        image_size=TINY_SIZE,
        num_classes=TINY_CLASSES,
        loader=load_tinyimagenet,
        how_to_get=TINY_HOW_TO_GET,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
)

for _subset in imagenet_subsets():
    register_dataset(
        DatasetSpec(
            name=_subset,
            channels=3,
            image_size=SUBSET_SIZE,
            num_classes=len(imagenet_subsets()[_subset]),
            loader=imagenet_subset_loader(_subset),
            how_to_get=subset_how_to_get(_subset),
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
        )
    )
