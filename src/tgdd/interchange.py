"""Synthetic sets of other code bases in and out: `tgdd import-synthetic` and `tgdd export-synthetic`.

Three on-disk formats, as the code bases that write them store them (docs/interchange.md):

* ``dc``: DC/DSA/DM (``main.py``, ``main_DM.py``): one ``res_*.pt`` holding ``{"data": [[images,
  labels], ...], "accs_all_exps": {...}}``, one pair per experiment; images normalised with the data
  set's mean/std, labels class-major int64.
* ``idc``: IDC, DANCE and the TGDD authors' code: ``data_*.pt`` (``data.pt`` is what their test.py
  reads) holding ``[images, targets]``, images on the pixel scale ([0, 1], not clamped after the last
  step) and *before* multi-formation decoding, so the factor is not in the file and must be given.
* ``mtt``: MTT and DATM: ``images_best.pt`` and ``labels_best.pt``, bare tensors; images normalised
  with mean/std, or, with MTT's ``--zca``, ZCA-whitened pixels (kornia ``ZCAWhitening`` fitted on the
  [0, 1] training images, no mean/std normalisation), which only the ZCA transform can undo.

An imported set becomes an ordinary :class:`tgdd.synthetic.SyntheticSet` on the pixel scale, stored
where `tgdd evaluate` looks for method ``imported-<name>`` (:data:`tgdd.config.IMPORTED_PREFIX`),
with ``meta["origin"]`` saying where it came from and ``meta["inputs"]`` empty: nothing of our
prepared data went into it, so evaluation checks it with :func:`check_imported` instead of the
input hashes of a distilled set.

Normalisation is undone in float64 with the statistics as float32 (what torchvision's ``Normalize``
and tgdd's training apply) and rounded once to float32. That cannot restore every float32 pixel
bit for bit (values near 0 are denser than normalised float32 can hold), so `tgdd export-synthetic`
also writes :data:`SIDECAR` beside the files: the exact stored images. An import uses it only when
it names the very files imported (SHA-256) and converting its images reproduces their tensors bit
for bit; then ours -> theirs -> ours is exact. Every other file is converted from its own values.

The range rule (:func:`check_pixel_range`, :func:`check_normalised`), on the pixel scale after
undoing the stated normalisation: every value finite; at most 1 % of the values outside [-2, 3]
(0..255 data lie there); at most 25 % below -0.25 (a normalised tensor read as [0, 1] pixels has
every pixel darker than the data set's mean by a quarter standard deviation there); and a file
stated as normalised must hold at least 1 % of values below -0.25 (pixel images stored as if
normalised hold none). Unclamped sets pass: IDC/DANCE/TGDD's last step moves pixels a little, and
DM and MTT, which optimise in normalised space and never clamp, get room to overshoot (a DM-like
set with a fifth of its values below 0 and extremes of -1.0 and 1.6 passes; tested). The
thresholds are a judgement between those and the errors they catch, not fitted to published sets.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from tgdd import paths
from tgdd.artifacts import provenance, read_json, sha256_file, torch_load, torch_save
from tgdd.config import IMPORTED_PREFIX, Config, config_dict, is_imported_method
from tgdd.data.prepared import MANIFEST, load_prepared
from tgdd.data.registry import get_dataset
from tgdd.errors import TgddError
from tgdd.registry import Registry
from tgdd.synthetic import SyntheticSet, decode, decode_labels, load_synthetic, save_grid, save_synthetic

log = logging.getLogger(__name__)

SIDECAR = "tgdd_export.pt"  # written by export beside the files: the exact stored images

# The range rule (module docstring, docs/interchange.md).
FAR_BOUNDS = (-2.0, 3.0)
FAR_SHARE = 0.01
DARK_BOUND = -0.25
DARK_SHARE = 0.25
NORMALISED_DARK_SHARE = 0.01

_CHUNK = 4096  # images per float64 conversion step (bounds the memory of large sets)


# --------------------------------------------------------------------------- reading foreign files


def _numpy_globals() -> list[Any]:
    """What DC's result files hold beyond tensors, lists and dicts: numpy scalars (its accuracies
    are numpy floats). Allowed by name for the weights-only unpickler, nothing else is."""
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]

    kinds = ("bool", "float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8")
    return [
        np.dtype,
        multiarray.scalar,
        (multiarray.scalar, "numpy.core.multiarray.scalar"),  # as numpy < 2 pickles it
        *(type(np.dtype(kind)) for kind in kinds),
    ]


def load_foreign(path: Path, what: str) -> Any:
    """A torch file written by another code base, loaded without running any code from it."""
    path = Path(path)
    if not path.is_file():
        raise TgddError(f"{what} {path} does not exist")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = next((line.strip() for line in str(exc).splitlines() if "Unsupported global" in line), None)
        if refused is None:
            raise TgddError(f"{what} {path} is corrupt or not a torch file (it does not unpickle)") from None
        raise TgddError(
            f"{what} {path} holds objects other than tensors, numbers, lists and dicts; not loaded, "
            f"as that would run code from it ({refused.split(' was not')[0].removeprefix('WeightsUnpickler error: ')})"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TgddError(f"{what} {path} is corrupt or not a torch file ({first})") from None


Pair = tuple[torch.Tensor, torch.Tensor]


def _pair(obj: Any, what: str) -> Pair:
    if not (isinstance(obj, list | tuple) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj)):
        raise TgddError(f"{what} is not an [images, labels] pair of tensors")
    return obj[0], obj[1]


def _read_dc(files: list[Path]) -> list[Pair]:
    (path,) = files
    blob = load_foreign(path, "DC result file")
    data = blob.get("data") if isinstance(blob, dict) else None
    if not isinstance(data, list) or not data:
        raise TgddError(f"DC result file {path} lacks its 'data' list of [images, labels] pairs (main.py's res_*.pt)")
    return [_pair(pair, f"DC result file {path}, data[{i}]") for i, pair in enumerate(data)]


def _read_idc(files: list[Path]) -> list[Pair]:
    (path,) = files
    return [_pair(load_foreign(path, "IDC data file"), f"IDC data file {path}")]


def _read_mtt(files: list[Path]) -> list[Pair]:
    tensors = []
    for path, role in zip(files, ("images", "labels"), strict=True):
        obj = load_foreign(path, f"MTT {role} file")
        if not isinstance(obj, torch.Tensor):
            raise TgddError(f"MTT {role} file {path} holds a {type(obj).__name__}, not a tensor")
        tensors.append(obj)
    return [(tensors[0], tensors[1])]


def _write_dc(images: torch.Tensor, labels: torch.Tensor, names: Mapping[str, Any]) -> dict[str, Any]:
    name = f"res_{names['method']}_{names['dataset']}_{names['per_class']}ipc.pt"
    return {name: {"data": [[images, labels]], "accs_all_exps": {}}}


def _write_idc(images: torch.Tensor, labels: torch.Tensor, names: Mapping[str, Any]) -> dict[str, Any]:
    return {"data.pt": [images, labels]}


def _write_mtt(images: torch.Tensor, labels: torch.Tensor, names: Mapping[str, Any]) -> dict[str, Any]:
    return {"images_best.pt": images, "labels_best.pt": labels}


@dataclass(frozen=True)
class Format:
    """One foreign on-disk format: its files, how its images are stored, how to read and write it."""

    title: str  # what the files are, for messages and records
    roles: tuple[str, ...]  # the files an import takes, in order
    read: Callable[[list[Path]], list[Pair]]  # (images, labels) as stored: one pair per experiment
    write: Callable[[torch.Tensor, torch.Tensor, Mapping[str, Any]], dict[str, Any]]  # file name -> object
    normalised: bool  # images stored normalised (else on the pixel scale)
    stores_factor: bool  # images stored before multi-formation decoding: the factor must be given
    whitening: bool = False  # may be ZCA-whitened: an import must say whether it is
    experiments: bool = False  # one file may hold several experiments' sets
    # data sets whose statistics in that code base differ from the prepared data's: mean, std, why
    statistics: Mapping[str, tuple[tuple[float, ...], tuple[float, ...], str]] = field(default_factory=dict)
    refused: Mapping[str, str] = field(default_factory=dict)  # data set -> why its sets cannot be ours


_CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))

FORMATS: Registry[Format] = Registry("synthetic-set format")
FORMATS.add(
    "dc",
    Format(
        "DC/DSA/DM result file (res_*.pt)",
        ("result",),
        _read_dc,
        _write_dc,
        normalised=True,
        stores_factor=False,
        experiments=True,
    ),
)
FORMATS.add(
    "idc",
    Format(
        "IDC/DANCE/TGDD data file (data_*.pt)",
        ("data",),
        _read_idc,
        _write_idc,
        normalised=False,
        stores_factor=True,
    ),
)
FORMATS.add(
    "mtt",
    Format(
        "MTT/DATM images_best.pt + labels_best.pt",
        ("images", "labels"),
        _read_mtt,
        _write_mtt,
        normalised=True,
        stores_factor=False,
        whitening=True,
        statistics={
            "cifar100": (*_CIFAR10_STATS, "MTT's utils.py normalises CIFAR-100 with CIFAR-10's mean/std"),
        },
        refused={
            "imagefruit": "MTT's imagefruit has ImageNet class 948 (Granny Smith) where tgdd's (IDC's list) has "
            "n07760859 (custard apple): its labels name other classes than ours",
        },
    ),
)


# --------------------------------------------------------------------------- normalisations


class Normalisation(Protocol):
    def to_pixels(self, stored: torch.Tensor) -> torch.Tensor: ...

    def from_pixels(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def describe(self) -> str: ...

    def record(self) -> dict[str, Any]: ...


def _chunked(images: torch.Tensor, step: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``step`` in float64 over chunks of images, rounded once to float32."""
    return torch.cat([step(chunk.double()).float() for chunk in images.split(_CHUNK)]) if len(images) else images


@dataclass(frozen=True)
class PixelScale:
    """Stored on the pixel scale already (IDC's format)."""

    def to_pixels(self, stored: torch.Tensor) -> torch.Tensor:
        return stored

    def from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels

    def describe(self) -> str:
        return "nothing (stored on the pixel scale)"

    def record(self) -> dict[str, Any]:
        return {"kind": "pixels"}


@dataclass(frozen=True)
class MeanStd:
    """``(x - mean) / std`` per channel, the statistics taken as float32 as torchvision's
    ``Normalize`` and tgdd's training hold them; undone as ``y * std + mean`` in float64."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str  # "prepared", "format" or "given"
    why: str = ""

    def _stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        def per_channel(values: tuple[float, ...]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32).double().view(1, -1, 1, 1)

        return per_channel(self.mean), per_channel(self.std)

    def to_pixels(self, stored: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats()
        return _chunked(stored, lambda y: y * std + mean)

    def from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats()
        return _chunked(pixels, lambda x: (x - mean) / std)

    def describe(self) -> str:
        return f"mean/std normalisation (mean {list(self.mean)}, std {list(self.std)}, {self.why or self.source})"

    def record(self) -> dict[str, Any]:
        return {
            "kind": "mean_std",
            "mean": list(self.mean),
            "std": list(self.std),
            "source": self.source,
            "why": self.why,
        }


@dataclass(frozen=True)
class Zca:
    """kornia's ``ZCAWhitening`` as MTT fits it: ``z = (x - mean_vector) @ transform_matrix`` on the
    flattened [0, 1] images; undone as ``z @ transform_inv + mean_vector`` (what its
    ``inverse_transform`` computes), in float64."""

    mean_vector: torch.Tensor  # [1, D]
    transform_inv: torch.Tensor  # [D, D]
    transform_matrix: torch.Tensor | None  # [D, D]; needed only to whiten (export)
    file: str
    sha256: str

    def to_pixels(self, stored: torch.Tensor) -> torch.Tensor:
        inv, mean = self.transform_inv.double(), self.mean_vector.double()
        return _chunked(stored, lambda z: (z.flatten(1) @ inv + mean).view_as(z))

    def from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.transform_matrix is None:
            raise TgddError(f"ZCA transform {self.file} lacks 'transform_matrix': whitening needs it")
        matrix, mean = self.transform_matrix.double(), self.mean_vector.double()
        return _chunked(pixels, lambda x: ((x.flatten(1) - mean) @ matrix).view_as(x))

    def describe(self) -> str:
        return f"ZCA whitening ({self.file})"

    def record(self) -> dict[str, Any]:
        return {"kind": "zca", "file": self.file, "sha256": self.sha256, "dims": int(self.mean_vector.numel())}


def load_zca(path: Path, dims: int) -> Zca:
    """A ZCA transform saved as a dict of kornia ``ZCAWhitening``'s attributes: ``mean_vector``
    ``[1, D]``, ``transform_inv`` ``[D, D]`` and, to whiten, ``transform_matrix`` ``[D, D]``;
    D = C*H*W of the images."""
    path = Path(path)
    blob = load_foreign(path, "ZCA transform")
    if not isinstance(blob, dict) or not {"mean_vector", "transform_inv"} <= blob.keys():
        raise TgddError(
            f"ZCA transform {path} must be a dict with 'mean_vector' [1, D] and 'transform_inv' [D, D] "
            "(kornia ZCAWhitening's attributes; 'transform_matrix' too, to export)"
        )
    tensors = {key: blob.get(key) for key in ("mean_vector", "transform_inv", "transform_matrix")}
    for key, value in tensors.items():
        if value is not None and not (isinstance(value, torch.Tensor) and value.is_floating_point()):
            raise TgddError(f"ZCA transform {path}: '{key}' is not a float tensor")
        if value is not None and not torch.isfinite(value).all():
            raise TgddError(f"ZCA transform {path}: '{key}' holds NaN or Inf")
    mean = tensors["mean_vector"].reshape(1, -1)
    if mean.shape[1] != dims:
        raise TgddError(f"ZCA transform {path} is for {mean.shape[1]} values per image, the images have {dims}")
    for key in ("transform_inv", "transform_matrix"):
        value = tensors[key]
        if value is not None and tuple(value.shape) != (dims, dims):
            raise TgddError(f"ZCA transform {path}: '{key}' is {list(value.shape)}, expected [{dims}, {dims}]")
    return Zca(mean, tensors["transform_inv"], tensors["transform_matrix"], str(path), sha256_file(path))


# --------------------------------------------------------------------------- the prepared data set


@dataclass(frozen=True)
class PreparedFacts:
    """What an import or export needs of the prepared data set: its geometry, classes and statistics."""

    dataset: str
    shape: tuple[int, int, int]  # C, H, W
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    stats_origin: str  # where the prepared mean/std come from
    manifest_sha256: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def prepared_facts(cfg: Config) -> PreparedFacts:
    directory = paths.prepared_dir(cfg)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise TgddError(
            f"no prepared data for '{cfg.dataset}' at {directory}: run `tgdd prepare` first "
            "(synthetic sets are converted with, checked against and evaluated on it)"
        )
    manifest = read_json(manifest_path)
    test = load_prepared(directory, "test", cfg.dataset)
    spec = get_dataset(cfg.dataset)
    origin = "the published constants" if spec.mean is not None else "computed from its training split"
    return PreparedFacts(
        dataset=cfg.dataset,
        shape=(int(manifest["channels"]), int(manifest["image_size"]), int(manifest["image_size"])),
        class_names=list(test.class_names),
        mean=tuple(manifest["mean"]),
        std=tuple(manifest["std"]),
        stats_origin=origin,
        manifest_sha256=sha256_file(manifest_path),
    )


def mean_std(
    fmt: Format, facts: PreparedFacts, mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None
) -> MeanStd:
    """The statistics a format's normalisation uses for a data set: given ones, else the format's
    own where its code base differs from ours, else the prepared data's (DC's and MTT's constants
    for the data sets they share with tgdd are the ones tgdd prepares with; tested)."""
    channels = facts.shape[0]
    if mean is not None and std is not None:
        if len(mean) != channels or len(std) != channels:
            raise TgddError(f"--mean and --std need {channels} values each for {facts.dataset}")
        if any(s <= 0 for s in std):
            raise TgddError(f"--std must be positive, got {list(std)}")
        return MeanStd(tuple(mean), tuple(std), "given", "given on the command line")
    if facts.dataset in fmt.statistics:
        fmean, fstd, why = fmt.statistics[facts.dataset]
        return MeanStd(fmean, fstd, "format", why)
    return MeanStd(facts.mean, facts.std, "prepared", f"those of the prepared {facts.dataset}, {facts.stats_origin}")


# --------------------------------------------------------------------------- checks


def check_images(images: torch.Tensor, facts: PreparedFacts, what: str) -> torch.Tensor:
    """Float images ``[N, C, H, W]`` of the prepared data set's geometry, as float32."""
    if not images.is_floating_point():
        raise TgddError(f"{what}: images are {images.dtype}, not floats (0..255 integers?)")
    if images.ndim != 4 or len(images) == 0:
        raise TgddError(f"{what}: images have shape {list(images.shape)}, expected [N, C, H, W] with N > 0")
    if tuple(images.shape[1:]) != facts.shape:
        got, want = "x".join(map(str, images.shape[1:])), "x".join(map(str, facts.shape))
        raise TgddError(f"{what}: images are {got} (CxHxW), prepared {facts.dataset} is {want}")
    return images.detach().to(torch.float32).contiguous()


def check_labels(labels: torch.Tensor, count: int, num_classes: int, what: str) -> int:
    """Hard labels, one per image, in ``0..num_classes-1``, the same number in every class: returns it."""
    if labels.ndim == 2 and labels.is_floating_point():
        raise TgddError(
            f"{what}: labels are soft ({list(labels.shape)}, e.g. DATM's learned labels); tgdd trains on hard labels"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TgddError(f"{what}: labels are {labels.dtype}, expected integer class indices")
    if labels.ndim != 1 or len(labels) != count:
        raise TgddError(f"{what}: labels have shape {list(labels.shape)}, expected [{count}] (one per image)")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise TgddError(f"{what}: labels range over {low}..{high}, the data set's classes are 0..{num_classes - 1}")
    counts = torch.bincount(labels.long(), minlength=num_classes)
    if int(counts.min()) != int(counts.max()):
        c = int(counts.argmin())
        raise TgddError(
            f"{what}: classes hold {int(counts.min())} to {int(counts.max())} images (class {c}: {int(counts[c])}); "
            "a tgdd synthetic set has the same number in every class"
        )
    return int(counts[0])


def check_pixel_range(pixels: torch.Tensor, what: str, undone: str) -> None:
    """The range rule on the pixel scale (module docstring): refuse what cannot be [0, 1] images."""
    if not torch.isfinite(pixels).all():
        raise TgddError(f"{what}: images hold NaN or Inf")
    total = pixels.numel()
    low, high = FAR_BOUNDS
    far = int(((pixels < low) | (pixels > high)).sum()) / total
    if far > FAR_SHARE:
        raise TgddError(
            f"{what}: {far:.1%} of the values lie outside [{low:g}, {high:g}] after undoing {undone} "
            f"(min {float(pixels.min()):.3g}, max {float(pixels.max()):.3g}), not images in [0, 1] "
            "(0..255 data? range rule: docs/interchange.md)"
        )
    dark = int((pixels < DARK_BOUND).sum()) / total
    if dark > DARK_SHARE:
        raise TgddError(
            f"{what}: {dark:.1%} of the values lie below {DARK_BOUND:g} after undoing {undone}, not images in "
            "[0, 1] (normalised images given as pixels? range rule: docs/interchange.md)"
        )


def check_normalised(stored: torch.Tensor, what: str) -> None:
    """A file stated as normalised holds dark pixels below zero; [0, 1] pixel images do not."""
    share = int((stored < DARK_BOUND).sum()) / stored.numel()
    if share < NORMALISED_DARK_SHARE:
        raise TgddError(
            f"{what}: only {share:.1%} of the values lie below {DARK_BOUND:g}, as in [0, 1] pixel images, not "
            "normalised ones (pixel-scale images are --format idc; range rule: docs/interchange.md)"
        )


# --------------------------------------------------------------------------- import


@dataclass(frozen=True)
class ImportOptions:
    """What an import needs beyond the files; which options a format takes follows from its card."""

    name: str | None = None  # the set is method imported-<name>; default: the format's name
    factor: int | None = None  # stores_factor formats (idc): required
    zca: Path | None = None  # whitening formats (mtt): the set is ZCA-whitened with this transform
    no_zca: bool = False  # whitening formats: the set is not whitened
    experiment: int | None = None  # experiments formats (dc): which one
    mean: tuple[float, ...] | None = None  # statistics, instead of the format's or the prepared data's
    std: tuple[float, ...] | None = None
    source: str | None = None  # free text recorded with the set (paper, URL, script)


def _formats_that(has: Callable[[Format], bool]) -> str:
    return ", ".join(name for name in FORMATS.names() if has(FORMATS.get(name)))


def _check_options(name: str, fmt: Format, files: list[Path], opts: ImportOptions) -> None:
    if len(files) != len(fmt.roles):
        raise TgddError(f"format {name} takes {len(fmt.roles)} file(s) ({' and '.join(fmt.roles)}), got {len(files)}")
    if fmt.stores_factor and opts.factor is None:
        raise TgddError(
            f"format {name} stores images before multi-formation decoding: give the factor they were "
            "distilled with (--factor; IDC/DANCE/TGDD's default is 2)"
        )
    if not fmt.stores_factor and opts.factor is not None:
        raise TgddError(
            f"format {name} stores plain images: --factor applies to {_formats_that(lambda f: f.stores_factor)}"
        )
    if opts.factor is not None and opts.factor < 1:
        raise TgddError(f"--factor must be >= 1, got {opts.factor}")
    if fmt.whitening and opts.zca is None and not opts.no_zca:
        raise TgddError(
            f"format {name} may be ZCA-whitened (MTT's --zca, its usual setting on CIFAR): say --zca FILE "
            "(the transform) or --no-zca"
        )
    if not fmt.whitening and (opts.zca is not None or opts.no_zca):
        raise TgddError(
            f"format {name} is never ZCA-whitened: --zca/--no-zca apply to {_formats_that(lambda f: f.whitening)}"
        )
    if opts.zca is not None and opts.no_zca:
        raise TgddError("--zca and --no-zca contradict each other")
    if opts.experiment is not None and not fmt.experiments:
        raise TgddError(
            f"format {name} holds one set per file: --exp applies to {_formats_that(lambda f: f.experiments)}"
        )
    if (opts.mean is None) != (opts.std is None):
        raise TgddError("give --mean and --std together")
    if opts.mean is not None and (not fmt.normalised or opts.zca is not None):
        raise TgddError("--mean/--std apply to mean/std-normalised sets only")


def _experiment(pairs: list[Pair], chosen: int | None, path: Path) -> tuple[Pair, int | None]:
    if chosen is None:
        if len(pairs) > 1:
            raise TgddError(f"{path} holds {len(pairs)} experiments' sets: choose one with --exp 0..{len(pairs) - 1}")
        return pairs[0], None
    if not 0 <= chosen < len(pairs):
        raise TgddError(f"{path} holds {len(pairs)} experiments' sets: --exp {chosen} is not in 0..{len(pairs) - 1}")
    return pairs[chosen], chosen


def _foreign_view(syn: dict[str, Any], fmt: Format, norm: Normalisation) -> Pair:
    """A tgdd set's (images, labels) as ``fmt`` stores them."""
    images, labels, factor = syn["images"], syn["labels"], int(syn["factor"])
    if not fmt.stores_factor:
        images, labels = decode(images, factor), decode_labels(labels, factor)
    return norm.from_pixels(images.float()), labels


def _exported_by_tgdd(
    fmt: Format, files: list[Path], images: torch.Tensor, labels: torch.Tensor, norm: Normalisation
) -> dict[str, Any] | None:
    """The record `tgdd export-synthetic` left beside ``files``, if it is theirs: it names their
    SHA-256 and its images, converted as the format stores them, are their tensors bit for bit."""
    side = files[0].parent / SIDECAR
    if not side.is_file():
        return None
    try:
        blob = torch_load(side, "tgdd export record")
    except TgddError as exc:
        log.warning("%s: converting the files as they are", exc)
        return None
    recorded = blob.get("files") if isinstance(blob, dict) else None
    if not isinstance(recorded, dict) or any(recorded.get(p.name) != sha256_file(p) for p in files):
        log.info("%s is not the record of these files: converting them as they are", side)
        return None
    try:
        stored, stored_labels = _foreign_view(blob["synthetic"], fmt, norm)
    except (KeyError, TypeError, RuntimeError) as exc:
        log.info("%s cannot be read (%s): converting the files as they are", side, exc)
        return None
    if not (torch.equal(stored, images) and torch.equal(stored_labels.to(labels.dtype), labels)):
        log.info("%s does not reproduce these files under %s: converting them as they are", side, norm.describe())
        return None
    return blob


@dataclass(frozen=True)
class _Converted:
    """A foreign set on the pixel scale, class-major, and how it got there."""

    pixels: torch.Tensor
    labels: torch.Tensor
    factor: int
    norm: Normalisation
    experiment: int | None
    stored_dtype: str
    reordered: bool
    exported: dict[str, Any] | None  # the export record it was restored from


def _convert(name: str, fmt: Format, files: list[Path], opts: ImportOptions, facts: PreparedFacts) -> _Converted:
    what = f"{name} set {' + '.join(str(f) for f in files)}"
    (raw_images, raw_labels), experiment = _experiment(fmt.read(files), opts.experiment, files[0])
    images = check_images(raw_images, facts, what)
    check_labels(raw_labels, len(images), facts.num_classes, what)
    labels = raw_labels.long()
    norm: Normalisation = PixelScale()
    if fmt.normalised:
        norm = (
            load_zca(opts.zca, images[0].numel()) if opts.zca is not None else mean_std(fmt, facts, opts.mean, opts.std)
        )
        check_normalised(images, what)
    pixels = norm.to_pixels(images)
    check_pixel_range(pixels, what, norm.describe())
    dtype = str(raw_images.dtype).removeprefix("torch.")

    exported = _exported_by_tgdd(fmt, files, images, labels, norm)
    if exported is not None:  # our own set, exported earlier: its exact stored images
        syn = exported["synthetic"]
        factor = int(syn["factor"])
        if opts.factor is not None and opts.factor != factor:
            raise TgddError(f"{what} was exported by tgdd from a set with factor {factor}, not --factor {opts.factor}")
        return _Converted(syn["images"].float(), syn["labels"].long(), factor, norm, experiment, dtype, False, exported)
    order = torch.argsort(labels, stable=True)
    reordered = not torch.equal(order, torch.arange(len(labels)))
    return _Converted(pixels[order], labels[order], opts.factor or 1, norm, experiment, dtype, reordered, None)


def _origin(
    name: str, fmt: Format, files: list[Path], opts: ImportOptions, facts: PreparedFacts, conv: _Converted
) -> dict[str, Any]:
    """``meta["origin"]`` of an imported set: its files, how they were converted, a line for the report."""
    records = {
        role: {"path": str(p.resolve()), "sha256": sha256_file(p)} for role, p in zip(fmt.roles, files, strict=True)
    }
    source = conv.exported.get("source") if conv.exported is not None else None
    label = f"{fmt.title}: {', '.join(p.name for p in files)} (sha256 {records[fmt.roles[0]]['sha256'][:12]})"
    label += f", {opts.source}" if opts.source else ""
    label += f", exported by tgdd from {source.get('method')} seed {source.get('seed')}" if source else ""
    return {
        "format": name,
        "format_title": fmt.title,
        "files": records,
        "experiment": conv.experiment,
        "stored_dtype": conv.stored_dtype,
        "normalisation": conv.norm.record(),
        "factor_from": "the export record" if source else ("--factor" if opts.factor else "plain images"),
        "reordered_to_class_major": conv.reordered,
        "pixel_range": [float(conv.pixels.min()), float(conv.pixels.max())],
        "exported_by_tgdd": source,
        "source": opts.source,
        "prepared": {
            "dataset": facts.dataset,
            "image_shape": list(facts.shape),
            "manifest_sha256": facts.manifest_sha256,
        },
        "label": label,
    }


def import_synthetic(cfg: Config, fmt_name: str, files: list[Path], opts: ImportOptions) -> list[Path]:
    """Convert a synthetic set written by another code base into a tgdd synthetic set of
    ``cfg.dataset`` (seed slot ``cfg.seed``), method ``imported-<name>``. Returns the paths written."""
    fmt = FORMATS.get(fmt_name)
    files = [Path(f) for f in files]
    _check_options(fmt_name, fmt, files, opts)
    if cfg.dataset in fmt.refused:
        raise TgddError(f"format {fmt_name} on {cfg.dataset}: {fmt.refused[cfg.dataset]}")
    method = IMPORTED_PREFIX + (opts.name or fmt_name)
    is_imported_method(method)  # a malformed name fails here, before any work
    facts = prepared_facts(cfg)
    conv = _convert(fmt_name, fmt, files, opts, facts)
    ipc = len(conv.labels) // facts.num_classes
    out_cfg = cfg.with_overrides(f"distill.method={method}", f"distill.ipc={ipc}")
    meta = {
        "dataset": cfg.dataset,
        "method": method,
        "ipc": ipc,
        "factor": conv.factor,
        "seed": cfg.seed,  # the slot it is stored under (and its evaluation's seed), not a distillation's
        "num_classes": facts.num_classes,
        "class_names": facts.class_names,
        "settings": {},
        "config": config_dict(out_cfg),
        "inputs": {},  # nothing of our prepared data or trajectories went into it
        "origin": _origin(fmt_name, fmt, files, opts, facts, conv),
        **provenance("cpu"),
    }
    syn_path = paths.synthetic_file(out_cfg)
    grid = save_grid(paths.synthetic_dir(out_cfg) / "grid.png", conv.pixels, ipc)
    save_synthetic(syn_path, SyntheticSet(conv.pixels.contiguous(), conv.labels, conv.factor, meta))
    log.info(
        "imported as %s (IPC %d, f = %d): tgdd evaluate ... distill.method=%s distill.ipc=%d",
        method,
        ipc,
        conv.factor,
        method,
        ipc,
    )
    return [syn_path, grid]


def check_imported(cfg: Config, meta: dict[str, Any], syn_path: Path) -> None:
    """What `tgdd evaluate` checks of an imported set instead of input hashes it cannot have: that
    it was converted for the prepared data evaluation uses now (same geometry, and the same
    statistics where the conversion took the prepared data's)."""
    origin = meta["origin"]
    manifest_path = paths.prepared_dir(cfg) / MANIFEST
    manifest = read_json(manifest_path)
    shape = [manifest.get("channels"), manifest.get("image_size"), manifest.get("image_size")]
    recorded = (origin.get("prepared") or {}).get("image_shape")
    if recorded != shape:
        raise TgddError(
            f"imported set {syn_path} holds {recorded} (CxHxW) images, prepared {cfg.dataset} is {shape}: re-import it"
        )
    norm = origin.get("normalisation") or {}
    if norm.get("source") == "prepared" and (norm.get("mean"), norm.get("std")) != (
        manifest.get("mean"),
        manifest.get("std"),
    ):
        raise TgddError(
            f"imported set {syn_path} was converted with the mean/std of another `tgdd prepare` of {cfg.dataset} "
            f"({norm.get('mean')}, {norm.get('std')}; now {manifest.get('mean')}, {manifest.get('std')}): re-import it"
        )


# --------------------------------------------------------------------------- export


def export_synthetic(
    cfg: Config,
    fmt_name: str,
    out_dir: Path | None = None,
    zca: Path | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> list[Path]:
    """Write the synthetic set of ``cfg`` in a foreign format (plus :data:`SIDECAR`). Formats that
    store plain images get the decoded images (what `tgdd evaluate` trains on)."""
    fmt = FORMATS.get(fmt_name)
    if zca is not None and not fmt.whitening:
        raise TgddError(f"format {fmt_name} is never ZCA-whitened: --zca does not apply")
    if (mean is None) != (std is None):
        raise TgddError("give --mean and --std together")
    if mean is not None and (not fmt.normalised or zca is not None):
        raise TgddError("--mean/--std apply to mean/std-normalised formats only")
    syn_path = paths.synthetic_file(cfg)
    if not syn_path.is_file():
        raise TgddError(f"no synthetic set at {syn_path}: run `tgdd distill` (or `tgdd import-synthetic`) first")
    syn = load_synthetic(syn_path)
    for key, want in (("dataset", cfg.dataset), ("method", cfg.distill.method), ("ipc", cfg.distill.ipc)):
        if syn.meta.get(key) != want:
            raise TgddError(f"synthetic set {syn_path} has {key}={syn.meta.get(key)!r}, config asks for {want!r}")
    norm: Normalisation = PixelScale()
    if fmt.normalised:
        facts = prepared_facts(cfg)
        norm = load_zca(zca, int(syn.images[0].numel())) if zca is not None else mean_std(fmt, facts, mean, std)
    record = {"images": syn.images.float(), "labels": syn.labels.long(), "factor": syn.factor}
    images, labels = _foreign_view(record, fmt, norm)
    names = {"method": cfg.distill.method, "dataset": cfg.dataset, "per_class": len(labels) // syn.meta["num_classes"]}
    out_dir = Path(out_dir) if out_dir is not None else paths.export_dir(cfg, fmt_name)
    (out_dir / SIDECAR).unlink(missing_ok=True)  # a half-rewritten folder must not keep a stale record
    written = [torch_save(out_dir / name, obj) for name, obj in fmt.write(images, labels, names).items()]
    source = {key: syn.meta.get(key) for key in ("dataset", "method", "ipc", "factor", "seed")}
    source["synthetic_sha256"] = sha256_file(syn_path)
    side = {
        "format": fmt_name,
        "files": {p.name: sha256_file(p) for p in written},
        "synthetic": record,
        "normalisation": norm.record(),
        "source": source,
        **provenance("cpu"),
    }
    written.append(torch_save(out_dir / SIDECAR, side))
    if fmt.stores_factor and syn.factor > 1:
        log.info("%s holds images before decoding: read it with factor %d", written[0], syn.factor)
    return written
