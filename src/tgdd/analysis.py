"""Class overlap and balance of synthetic sets in a trained expert's feature space.

The paper claims TGDD's synthetic sets are more evenly spread and overlap less across
classes than DM's. :func:`analyze_dataset` embeds every synthetic set of a data set (and a fixed,
class-balanced sample of real *training* images, never the test set) with a trained expert
and measures three things per set (:func:`knn_class_purity`, :func:`silhouette`,
:func:`class_balance`). :func:`analyze` does this for every data set of the matrix and writes
one table across them all (``tables/class_overlap.csv``, a ``dataset`` column), plus one t-SNE
figure per data set and IPC (``tables/tsne_<dataset>_ipc<k>.png``, one panel per method); the
paths come from :mod:`tgdd.paths`.

Caveat: the metrics are computed on the *decoded* synthetic images, so with multi-formation
(factor f > 1) the f*f tiles of one stored image are neighbours of each other and count as
same-class neighbours; a set with f = 1 (``random``) has no such help.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from tgdd import paths
from tgdd.artifacts import atomic_write, read_json, sha256_file, torch_load
from tgdd.augment import normalize
from tgdd.config import Config
from tgdd.data.prepared import PreparedSplit, load_prepared
from tgdd.errors import TgddError
from tgdd.experts import MANIFEST, expected_identity
from tgdd.models import build_model
from tgdd.runtime import generator, resolve_device
from tgdd.synthetic import load_synthetic

log = logging.getLogger(__name__)

COLUMNS = ["dataset", "method", "ipc", "n_images", "knn_purity", "silhouette", "class_balance"]
REAL = "real"


# --------------------------------------------------------------------------- metrics


def _as_arrays(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(features).detach().to("cpu", torch.float64).flatten(1)
    y = torch.as_tensor(labels).detach().to("cpu").long().flatten()
    if len(x) != len(y):
        raise ValueError(f"{len(x)} feature rows but {len(y)} labels")
    return x, y


def knn_class_purity(features: torch.Tensor, labels: torch.Tensor, k: int = 5) -> float:
    """Mean over points of the fraction of a point's k nearest *other* points (Euclidean
    distance in feature space) that share its label; 1 = every neighbourhood is pure.

    k is clipped per point to ``min(k, n_c - 1)``, where ``n_c`` is the size of the point's
    class, so that a perfectly separated set scores 1 whatever its images per class (with 2
    images per class this is the 1-nearest-neighbour agreement). Points alone in their class
    have no possible same-class neighbour and are left out; NaN when no point remains.
    Ties in distance are broken by index order.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    x, y = _as_arrays(features, labels)
    n = len(x)
    if n < 2:
        return math.nan
    _, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
    k_point = torch.clamp(counts[inverse] - 1, max=k)  # [n]
    keep = k_point > 0
    if not keep.any():
        return math.nan
    dist = torch.cdist(x, x)
    dist.fill_diagonal_(math.inf)
    k_max = int(k_point.max())
    nearest = torch.topk(dist, k_max, dim=1, largest=False, sorted=True).indices  # [n, k_max]
    same = (y[nearest] == y[:, None]).double()
    within_k = torch.arange(k_max)[None, :] < k_point[:, None]
    purity = (same * within_k).sum(1) / k_point.clamp(min=1)
    return float(purity[keep].mean())


def silhouette(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean silhouette coefficient (``sklearn.metrics.silhouette_score``, Euclidean): per point
    ``(b - a) / max(a, b)`` with ``a`` its mean distance to its own class and ``b`` to the
    nearest other class; in [-1, 1], higher = tighter, better separated classes.

    NaN when there are fewer than 2 labels or some label has fewer than 2 points (its
    silhouette would be defined as 0 by convention, which says nothing about overlap).
    """
    from sklearn.metrics import silhouette_score

    x, y = _as_arrays(features, labels)
    _, counts = torch.unique(y, return_counts=True)
    if len(counts) < 2 or int(counts.min()) < 2:
        return math.nan
    return float(silhouette_score(x.numpy(), y.numpy(), metric="euclidean"))


def class_balance(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Coefficient of variation (population std / mean) across classes of each class's
    spread, the mean Euclidean distance of its points to its centroid; 0 = every class is
    spread equally, higher = less balanced.

    Classes with fewer than 2 points (no spread) are left out; NaN when fewer than 2
    classes remain or every spread is 0.
    """
    x, y = _as_arrays(features, labels)
    spreads = []
    for c in torch.unique(y):
        members = x[y == c]
        if len(members) >= 2:
            spreads.append(float((members - members.mean(0)).norm(dim=1).mean()))
    if len(spreads) < 2:
        return math.nan
    spread = np.asarray(spreads)
    if spread.mean() == 0:
        return math.nan
    return float(spread.std() / spread.mean())


def overlap_metrics(features: torch.Tensor, labels: torch.Tensor, k: int = 5) -> dict[str, float]:
    return {
        "knn_purity": knn_class_purity(features, labels, k),
        "silhouette": silhouette(features, labels),
        "class_balance": class_balance(features, labels),
    }


# --------------------------------------------------------------------------- embedding


def load_expert(cfg: Config, train: PreparedSplit, device: torch.device) -> nn.Module | None:
    """The last snapshot of trajectory 0 as an eval-mode network, or None (with a warning)
    when no complete trajectories matching ``cfg`` exist. A trajectory file that fails its
    checksum is an error, not a skip."""
    out_dir = paths.experts_dir(cfg)
    manifest_path = out_dir / MANIFEST
    if not manifest_path.is_file():
        log.warning("class-overlap analysis skipped: no expert trajectories at %s", out_dir)
        return None
    manifest = read_json(manifest_path)
    if not manifest.get("complete") or not manifest.get("trajectories"):
        log.warning("class-overlap analysis skipped: the trajectories at %s are incomplete", out_dir)
        return None
    if manifest.get("identity") != expected_identity(cfg, train.sha256):
        log.warning("class-overlap analysis skipped: the trajectories at %s do not match the config", out_dir)
        return None
    record = min(manifest["trajectories"], key=lambda r: r["index"])
    path = out_dir / record["file"]
    if not path.is_file():
        log.warning("class-overlap analysis skipped: trajectory file %s is missing", path)
        return None
    if sha256_file(path) != record["sha256"]:
        raise TgddError(f"trajectory file {path} fails its checksum (truncated or changed): rerun `tgdd experts`")
    state = torch_load(path, "trajectory file")["snapshots"][-1]
    channels, size = train.images.shape[1], train.images.shape[2]
    model = build_model(cfg.experts.arch, channels, size, train.num_classes)
    model.load_state_dict(state)
    return model.to(device).eval()


@torch.no_grad()
def embed(
    model: nn.Module,
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    device: torch.device,
    batch_size: int = 256,
) -> torch.Tensor:
    """``model.features`` of images in [0,1], normalised with the training split's mean/std."""
    mean, std = mean.to(device), std.to(device)
    out = [
        model.features(normalize(images[i : i + batch_size].to(device).float(), mean, std)).flatten(1).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out) if out else torch.empty(0, 0)


def real_sample(train: PreparedSplit, per_class: int, seed: int) -> torch.Tensor:
    """Indices of up to ``per_class`` training images per class, drawn with a seeded
    generator, class by class (within a class in random order)."""
    gen = generator(seed, "analysis-real-sample")
    picks = []
    for c in range(train.num_classes):
        pool = torch.nonzero(train.labels == c).flatten()
        picks.append(pool[torch.randperm(len(pool), generator=gen)[:per_class]])
    return torch.cat(picks)


def _first_per_class(labels: torch.Tensor, per_class: int) -> torch.Tensor:
    """Positions of the first ``per_class`` entries of every label (a random subset of a
    :func:`real_sample`, which is in random order within each class)."""
    keep = torch.zeros(len(labels), dtype=torch.bool)
    for c in torch.unique(labels):
        keep[torch.nonzero(labels == c).flatten()[:per_class]] = True
    return torch.nonzero(keep).flatten()


# --------------------------------------------------------------------------- analysis


@dataclass
class _Embedded:
    method: str
    ipc: int
    features: torch.Tensor
    labels: torch.Tensor
    metrics: dict[str, float]


def synthetic_files(cfg: Config) -> list[Path]:
    """Every ``synthetic.pt`` of ``cfg.dataset`` and ``cfg.seed`` (all methods and IPCs)."""
    root = cfg.paths.results / "synthetic" / cfg.dataset
    return sorted(root.glob(f"*/ipc*/seed{cfg.seed}/synthetic.pt"))


def analyzed_datasets(cfg: Config) -> list[str]:
    """The data sets `tgdd report` analyses: the config's own, then every one of its matrix."""
    return list(dict.fromkeys([cfg.dataset, *cfg.matrix.datasets]))


def analyze(
    cfg: Config,
    *,
    k: int = 5,
    real_per_class: int = 50,
    tsne_real_points: int = 300,
) -> list[Path]:
    """Analyse every data set of :func:`analyzed_datasets` (each with its ``per_dataset``
    settings) and write one class-overlap table across them all, with a ``dataset`` column, and
    their t-SNE figures (:func:`analyze_dataset`). The table is always written, with no rows for
    a data set that has no synthetic sets or no usable trajectories (a warning says which), so
    that the workflow can declare it. Returns the table's path, then the figures'."""
    rows: list[dict] = []
    figures: list[Path] = []
    for dataset in analyzed_datasets(cfg):
        dataset_rows, dataset_figures = analyze_dataset(
            cfg.with_overrides(f"dataset={dataset}"),
            k=k,
            real_per_class=real_per_class,
            tsne_real_points=tsne_real_points,
        )
        rows += dataset_rows
        figures += dataset_figures
    table = pd.DataFrame(rows, columns=COLUMNS)
    return [atomic_write(paths.class_overlap_file(cfg), lambda tmp: table.to_csv(tmp, index=False)), *figures]


def analyze_dataset(
    cfg: Config,
    *,
    k: int = 5,
    real_per_class: int = 50,
    tsne_real_points: int = 300,
) -> tuple[list[dict], list[Path]]:
    """Embed every synthetic set of ``cfg.dataset`` (seed ``cfg.seed``) and a class-balanced
    real training sample with a trained expert; write one t-SNE figure per IPC
    (:func:`tgdd.paths.tsne_figure`). Returns the table rows (synthetic sets by IPC and method,
    then the real sample) and the figures' paths; none when there are no synthetic sets or no
    usable trajectories."""
    files = synthetic_files(cfg)
    if not files:
        log.warning("class-overlap analysis skipped: no synthetic sets for %s seed %d", cfg.dataset, cfg.seed)
        return [], []
    train = load_prepared(paths.prepared_dir(cfg), "train", cfg.dataset)
    device = resolve_device(cfg.device)
    model = load_expert(cfg, train, device)
    if model is None:
        return [], []

    pick = real_sample(train, real_per_class, cfg.seed)
    real_labels = train.labels[pick]
    real_features = embed(model, train.images[pick].float().div_(255.0), train.mean, train.std, device)
    per_class = int(torch.bincount(real_labels).max())  # the "ipc" of the real sample
    real = _Embedded(REAL, per_class, real_features, real_labels, overlap_metrics(real_features, real_labels, k))

    sets: list[_Embedded] = []
    for path in files:
        syn = load_synthetic(path)
        if syn.meta.get("dataset", cfg.dataset) != cfg.dataset:
            raise TgddError(f"synthetic set {path} is for '{syn.meta.get('dataset')}', not '{cfg.dataset}'")
        images, labels = syn.decoded()
        features = embed(model, images.clamp(0, 1), train.mean, train.std, device)
        method = str(syn.meta.get("method", path.parents[2].name))
        ipc = int(syn.meta.get("ipc", path.parents[1].name.removeprefix("ipc")))
        sets.append(_Embedded(method, ipc, features, labels, overlap_metrics(features, labels, k)))
    sets.sort(key=lambda s: (s.ipc, s.method))

    rows = [
        {"dataset": cfg.dataset, "method": s.method, "ipc": s.ipc, "n_images": len(s.labels), **s.metrics}
        for s in [*sets, real]
    ]
    for s in sets:
        log.info(
            "%s %s ipc%d: kNN purity %.3f, silhouette %.3f, class balance (CV) %.3f",
            cfg.dataset,
            s.method,
            s.ipc,
            s.metrics["knn_purity"],
            s.metrics["silhouette"],
            s.metrics["class_balance"],
        )

    shown = _first_per_class(real.labels, max(1, tsne_real_points // train.num_classes))
    figures = []
    for ipc in sorted({s.ipc for s in sets}):
        panels = [s for s in sets if s.ipc == ipc]
        path = paths.tsne_figure(cfg, ipc)
        figures.append(_tsne_figure(path, panels, real.features[shown], real.labels[shown], train.num_classes, cfg))
    return rows, figures


def _tsne(features: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    n = len(features)
    if n < 3:
        return np.zeros((n, 2))
    perplexity = min(30.0, (n - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)


def _class_colours(num_classes: int):
    from matplotlib import colormaps

    name = "tab10" if num_classes <= 10 else "tab20" if num_classes <= 20 else "turbo"
    cmap = colormaps[name]
    if name == "turbo":
        return [cmap(i / max(1, num_classes - 1)) for i in range(num_classes)]
    return [cmap(i) for i in range(num_classes)]


def _tsne_figure(
    path: Path,
    panels: list[_Embedded],
    real_features: torch.Tensor,
    real_labels: torch.Tensor,
    num_classes: int,
    cfg: Config,
) -> Path:
    """One panel per method: a joint t-SNE of the real sample (small, faint dots) and the
    method's synthetic images (large, black-edged markers), both coloured by class."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    colours = np.asarray(_class_colours(num_classes))
    cols = len(panels)
    fig = Figure(figsize=(4.2 * cols, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, cols, squeeze=False)[0]
    n_real = len(real_labels)
    for ax, s in zip(axes, panels, strict=True):
        joint = torch.cat([real_features, s.features]).numpy().astype(np.float64)
        xy = _tsne(joint, cfg.seed)
        ax.scatter(xy[:n_real, 0], xy[:n_real, 1], s=6, c=colours[real_labels.numpy()], alpha=0.35, linewidths=0)
        ax.scatter(
            xy[n_real:, 0],
            xy[n_real:, 1],
            s=70,
            c=colours[s.labels.numpy()],
            marker="*",
            edgecolors="black",
            linewidths=0.5,
        )
        purity = s.metrics["knn_purity"]
        ax.set_title(f"{s.method} (kNN purity {purity:.2f})" if not math.isnan(purity) else f"{s.method}")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{cfg.dataset}, IPC {panels[0].ipc}: t-SNE of expert features (dots: real, stars: synthetic)")
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
