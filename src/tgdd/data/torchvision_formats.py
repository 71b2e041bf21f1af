"""Readers of torchvision's on-disk formats for CIFAR-10, CIFAR-100 and SVHN.

The files are read directly rather than through ``torchvision.datasets``: those classes
verify the MD5 sums of the official archives, which hand-made test files (and partial
copies) cannot pass, and they fail with assertions or bare tracebacks instead of naming
the file that is wrong. Every failure here is a :class:`TgddError` naming the file.

The small helpers :func:`candidate_dirs` and :func:`missing_files_error` are shared with
:mod:`tgdd.data.image_folders`.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tgdd.data.registry import DatasetSpec, LoadContext, RawSplit, register_dataset
from tgdd.errors import TgddError

# --------------------------------------------------------------------------- shared helpers


def candidate_dirs(roots: Iterable[Path], subdirs: Sequence[str]) -> tuple[Path, ...]:
    """``root/subdir`` for every root (outer) and subdir (inner); ``""`` means the root itself.

    Lets a data root hold a dataset either in its conventional folder or be that folder.
    """
    return tuple(root / sub if sub else root for root in roots for sub in subdirs)


def missing_files_error(dataset: str, missing: Sequence[str], looked_in: Sequence[Path], how_to_get: str) -> TgddError:
    """One line saying which files of ``dataset`` are missing, where we looked, and how to get them."""
    looked = ", ".join(str(d) for d in looked_in) or "(no data roots given)"
    return TgddError(f"{dataset}: missing {', '.join(missing)}; looked in: {looked}. To get them: {how_to_get}")


def locate_dir(dataset: str, dirs: Sequence[Path], names: Sequence[str], how_to_get: str) -> Path:
    """The first of ``dirs`` holding every file in ``names``.

    When none does, the error lists the files missing from the most complete directory, so a
    partial copy is reported as precisely as an absent one.
    """
    best_missing = list(names)
    for directory in dirs:
        missing = [name for name in names if not (directory / name).is_file()]
        if not missing:
            return directory
        if len(missing) < len(best_missing):
            best_missing = missing
    raise missing_files_error(dataset, best_missing, dirs, how_to_get)


def check_labels(labels: np.ndarray, num_classes: int, path: Path) -> None:
    """Reject labels outside ``0..num_classes-1``: they would silently index the wrong class."""
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise TgddError(f"{path} has labels outside 0..{num_classes - 1} (found {labels.min()}..{labels.max()})")


def download_with_torchvision(class_name: str, root: Path, variants: Sequence[dict[str, Any]]) -> None:
    """Fetch a dataset into ``root`` with torchvision's downloader (only when the user allowed it)."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, class_name)
    for kwargs in variants:
        cls(str(root), download=True, **kwargs)


# --------------------------------------------------------------------------- CIFAR (pickle)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays.

    CIFAR batches are pickles; a pickle may name any callable, so loading a downloaded one
    unrestricted would run whatever code it names. The allowed globals are exactly those
    numpy emits for arrays (old ``numpy.core`` paths are mapped to numpy 2's ``numpy._core``).
    """

    _ALLOWED = frozenset(
        {
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("numpy.core."):
            module = "numpy._core." + module.removeprefix("numpy.core.")
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def read_pickle_dict(path: Path) -> dict[str, Any]:
    """Load a pickled dict with its keys as ``str``.

    ``latin1`` is the encoding that reads Python 2 pickles (the official CIFAR files) byte for
    byte; keys may come back as ``str`` (Python 2 files) or ``bytes`` (Python 3 files), so
    both are normalised to ``str``.
    """
    try:
        with path.open("rb") as handle:
            obj = _ArrayUnpickler(handle, encoding="latin1").load()
    except Exception as exc:  # corrupt pickles raise almost anything (EOFError, ValueError, ...)
        raise TgddError(f"cannot read {path}: not a valid pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise TgddError(f"{path} holds a {type(obj).__name__}, expected a dict")
    return {_text(key): value for key, value in obj.items()}


def _text(value: Any) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _dict_entry(batch: dict[str, Any], key: str, path: Path) -> Any:
    if key not in batch:
        raise TgddError(f"{path} has no '{key}' entry (found: {', '.join(sorted(batch)) or 'none'})")
    return batch[key]


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its batches, and under which keys."""

    name: str
    folder: str
    files: dict[str, tuple[str, ...]]  # split -> batch files
    meta_file: str
    names_key: str
    labels_key: str
    num_classes: int
    torchvision_class: str
    how_to_get: str


CIFAR_SIDE = 32
_CIFAR_PIXELS = 3 * CIFAR_SIDE * CIFAR_SIDE


def _read_cifar_batch(path: Path, layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 32, 32, 3]`` (stored as CHW rows of 3072 bytes) and int64 labels of one batch."""
    batch = read_pickle_dict(path)
    data = np.asarray(_dict_entry(batch, "data", path))
    labels = np.asarray(_dict_entry(batch, layout.labels_key, path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _CIFAR_PIXELS:
        raise TgddError(f"{path}: 'data' must be uint8 [N, {_CIFAR_PIXELS}], got {data.dtype} {data.shape}")
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise TgddError(f"{path}: expected {len(data)} integer labels, got {labels.dtype} {labels.shape}")
    labels = labels.astype(np.int64)
    check_labels(labels, layout.num_classes, path)
    images = data.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE).transpose(0, 2, 3, 1)
    return images, labels


def _read_cifar_names(path: Path, layout: CifarLayout) -> list[str]:
    names = [_text(n) for n in _dict_entry(read_pickle_dict(path), layout.names_key, path)]
    if len(names) != layout.num_classes:
        raise TgddError(f"{path}: '{layout.names_key}' has {len(names)} names, expected {layout.num_classes}")
    return names


def cifar_loader(layout: CifarLayout) -> Callable[[LoadContext, str], RawSplit]:
    """Loader for a CIFAR variant: ``<root>/<folder>/`` (or the root being that folder)."""

    def load(ctx: LoadContext, split: str) -> RawSplit:
        dirs = candidate_dirs(ctx.roots, (layout.folder, ""))
        needed = (*layout.files[split], layout.meta_file)
        if ctx.allow_download and ctx.roots and not any(all((d / n).is_file() for n in needed) for d in dirs):
            download_with_torchvision(layout.torchvision_class, ctx.roots[0], [{"train": True}, {"train": False}])
        directory = locate_dir(layout.name, dirs, needed, layout.how_to_get)
        parts = [_read_cifar_batch(directory / name, layout) for name in layout.files[split]]
        images = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
        labels = np.concatenate([p[1] for p in parts])
        return RawSplit(images, labels, _read_cifar_names(directory / layout.meta_file, layout))

    return load


# --------------------------------------------------------------------------- SVHN (.mat)

SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
SVHN_HOW_TO_GET = (
    "download train_32x32.mat and test_32x32.mat from http://ufldl.stanford.edu/housenumbers/ "
    "into the data root (or <root>/svhn/), or set data.allow_download=true"
)


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 32, 32, 3]`` and labels 0..9 from an SVHN ``.mat`` (X is HxWxCxN; y=10 means 0)."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # loadmat reports truncation as OSError, IndexError, MatReadError, ...
        raise TgddError(f"cannot read {path}: not a readable .mat file ({type(exc).__name__}: {exc})") from None
    if "X" not in mat or "y" not in mat:
        raise TgddError(f"{path} lacks the SVHN variables 'X' and 'y'")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"])
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (CIFAR_SIDE, CIFAR_SIDE, 3):
        raise TgddError(f"{path}: 'X' must be uint8 [32, 32, 3, N], got {x.dtype} {x.shape}")
    if y.size != x.shape[3] or not np.issubdtype(y.dtype, np.number):
        raise TgddError(f"{path}: 'y' must hold {x.shape[3]} labels, got {y.dtype} {y.shape}")
    labels = y.reshape(-1).astype(np.int64)
    labels[labels == 10] = 0
    check_labels(labels, 10, path)
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2)), labels


def load_svhn(ctx: LoadContext, split: str) -> RawSplit:
    """SVHN cropped digits (format 2) from ``<root>/`` or ``<root>/svhn/``."""
    dirs = candidate_dirs(ctx.roots, ("", "svhn"))
    name = SVHN_FILES[split]
    if ctx.allow_download and ctx.roots and not any((d / name).is_file() for d in dirs):
        download_with_torchvision("SVHN", ctx.roots[0], [{"split": split}])
    directory = locate_dir("svhn", dirs, (name,), SVHN_HOW_TO_GET)
    images, labels = read_svhn_mat(directory / name)
    return RawSplit(images, labels, [str(d) for d in range(10)])


# --------------------------------------------------------------------------- registration

CIFAR10 = CifarLayout(
    name="cifar10",
    folder="cifar-10-batches-py",
    files={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    meta_file="batches.meta",
    names_key="label_names",
    labels_key="labels",
    num_classes=10,
    torchvision_class="CIFAR10",
    how_to_get="download and unpack https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz into the data root "
    "(giving cifar-10-batches-py/), or set data.allow_download=true",
)

CIFAR100 = CifarLayout(
    name="cifar100",
    folder="cifar-100-python",
    files={"train": ("train",), "test": ("test",)},
    meta_file="meta",
    names_key="fine_label_names",
    labels_key="fine_labels",
    num_classes=100,
    torchvision_class="CIFAR100",
    how_to_get="download and unpack https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz into the data root "
    "(giving cifar-100-python/), or set data.allow_download=true",
)

register_dataset(
    DatasetSpec(
        name=CIFAR10.name,
        channels=3,
        image_size=32,
        num_classes=10,
        loader=cifar_loader(CIFAR10),
        how_to_get=CIFAR10.how_to_get,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2023, 0.1994, 0.2010),
    )
)

register_dataset(
    DatasetSpec(
        name=CIFAR100.name,
        channels=3,
        image_size=32,
        num_classes=100,
        loader=cifar_loader(CIFAR100),
        how_to_get=CIFAR100.how_to_get,
        mean=(0.5071, 0.4866, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
    )
)

register_dataset(
    DatasetSpec(
        name="svhn",
        channels=3,
        image_size=32,
        num_classes=10,
        loader=load_svhn,
        how_to_get=SVHN_HOW_TO_GET,
        mean=(0.4377, 0.4438, 0.4728),
        std=(0.198, 0.201, 0.197),
        flip=False,
    )
)
