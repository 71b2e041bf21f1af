"""The datasets tgdd knows. Adding one is adding an entry here (or in a module imported here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tgdd.data.formats import find_file, read_idx
from tgdd.data.registry import DatasetSpec, LoadContext, RawSplit, register_dataset
from tgdd.errors import TgddError

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def load_digits(ctx: LoadContext, split: str) -> RawSplit:
    """scikit-learn's 8x8 digits (values 0..16, scaled to 0..255), with a fixed stratified split."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION, stratify=labels, random_state=DIGITS_SPLIT_SEED
    )
    idx = np.sort(train_idx if split == "train" else test_idx)
    return RawSplit(images[idx], labels[idx], [str(d) for d in range(10)])


_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_loader(torchvision_name: str, class_names: list[str]):
    """Loader for the MNIST family of IDX files: raw or gzip, in the data root (directly or
    under ``<name>/raw/``, torchvision's layout) or the system directories."""

    def load(ctx: LoadContext, split: str) -> RawSplit:
        image_name, label_name = _IDX_FILES[split]
        dirs = tuple(d for root in ctx.roots for d in (root, root / torchvision_name / "raw"))
        image_path = find_file(dirs, [image_name, image_name + ".gz"])
        label_path = find_file(dirs, [label_name, label_name + ".gz"])
        if (image_path is None or label_path is None) and ctx.allow_download and ctx.roots:
            _download_torchvision(torchvision_name, ctx.roots[0])
            return load(LoadContext(ctx.roots, allow_download=False), split)
        missing = [n for n, p in ((image_name, image_path), (label_name, label_path)) if p is None]
        if missing:
            looked = ", ".join(str(d) for d in dirs)
            raise TgddError(f"missing {' and '.join(missing)}[.gz]; looked in: {looked}")
        images = read_idx(image_path)
        labels = read_idx(label_path).astype(np.int64)
        if images.ndim != 3 or labels.ndim != 1:
            raise TgddError(f"{image_path} / {label_path}: expected 3-d images and 1-d labels")
        if len(images) != len(labels):
            raise TgddError(f"{image_path} has {len(images)} images but {label_path} has {len(labels)} labels")
        if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise TgddError(f"{label_path} has labels outside 0..{len(class_names) - 1}")
        return RawSplit(np.ascontiguousarray(images.astype(np.uint8)[..., None]), labels, class_names)

    return load


def _download_torchvision(torchvision_name: str, root: Path) -> None:
    import torchvision.datasets as tvd

    cls = getattr(tvd, torchvision_name)
    for train in (True, False):
        cls(str(root), train=train, download=True)


register_dataset(
    DatasetSpec(
        name="digits",
        channels=1,
        image_size=16,
        num_classes=10,
        loader=load_digits,
        how_to_get="bundled with scikit-learn (pip install scikit-learn)",
        flip=False,
    )
)

FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

register_dataset(
    DatasetSpec(
        name="fashion_mnist",
        channels=1,
        image_size=28,
        num_classes=10,
        loader=idx_loader("FashionMNIST", FASHION_CLASSES),
        how_to_get="apt-get install dataset-fashion-mnist, copy the four IDX files into the data root, "
        "or set data.allow_download=true",
        mean=(0.2861,),
        std=(0.3530,),
        system_dirs=(Path("/usr/share/datasets/fashion-mnist"),),
    )
)

register_dataset(
    DatasetSpec(
        name="mnist",
        channels=1,
        image_size=28,
        num_classes=10,
        loader=idx_loader("MNIST", [str(d) for d in range(10)]),
        how_to_get="copy the four MNIST IDX files into the data root, or set data.allow_download=true",
        mean=(0.1307,),
        std=(0.3081,),
        flip=False,
        system_dirs=(Path("/usr/share/datasets/mnist"),),
    )
)

# The remaining datasets of the paper live in their own modules; importing them registers them.
from tgdd.data import image_folders, torchvision_formats  # noqa: E402, F401
