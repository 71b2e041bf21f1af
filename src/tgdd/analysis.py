"""Class overlap and balance of synthetic sets in a trained expert's feature space.

The paper claims TGDD's synthetic sets are more evenly spread and overlap less across
classes than DM's. :func:`analyze_dataset` embeds every synthetic set of a data set (and a fixed,
class-balanced sample of real *training* images, never the test set) with a trained expert
and measures three things per set on *all* its decoded images (:func:`knn_class_purity`,
:func:`silhouette`, :func:`class_balance`). :func:`analyze` does this for every data set of the
matrix and writes one table across them all (``tables/class_overlap.csv``, a ``dataset`` column),
plus one t-SNE figure per data set and IPC (``tables/tsne_<dataset>_ipc<k>.png``, one panel per
method); the paths come from :mod:`tgdd.paths`.

Bounded at paper scale (TinyImageNet IPC 50, f = 2: 40,000 decoded images of 2,048 features): the
metrics are exact (float64) but computed from blocks of the distance matrix of
:data:`~tgdd.analysis_budget.BLOCK_MB` at a time, never the whole ``n x n`` matrix (12.8 GB there),
in one pass shared by the kNN purity and the silhouette; sets are embedded a batch at a time and
analysed one after the other. t-SNE, which is for the eye and slow on a CPU, draws a seeded sample
of at most :data:`~tgdd.analysis_budget.TSNE_SYNTHETIC_POINTS` images per panel (the
``tsne_points`` column and each panel's title say how many). :mod:`tgdd.analysis_budget` bounds
the memory and time of all this, which sizes the workflow's report job.

Caveat: the metrics are computed on the *decoded* synthetic images, so with multi-formation
(factor f > 1) the f*f tiles of one stored image are neighbours of each other and count as
same-class neighbours; a set with f = 1 (``random``) has no such help.
"""

from __future__ import annotations

import logging
import math
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from tgdd import paths
from tgdd.analysis_budget import (
    BLOCK_MB,
    EMBED_BATCH,
    REAL_PER_CLASS,
    TSNE_REAL_POINTS,
    TSNE_SYNTHETIC_POINTS,
    analyzed_datasets,
    block_rows,
    embed_batch,
    per_class_shown,
)
from tgdd.artifacts import atomic_write, read_json, sha256_file, torch_load
from tgdd.augment import normalize
from tgdd.config import Config
from tgdd.data.prepared import PreparedSplit, load_prepared
from tgdd.errors import TgddError
from tgdd.experts import MANIFEST, expected_identity
from tgdd.models import build_model
from tgdd.runtime import configure_threads, generator, resolve_device
from tgdd.synthetic import decode, decode_labels, load_synthetic

log = logging.getLogger(__name__)

COLUMNS = ["dataset", "method", "ipc", "n_images", "knn_purity", "silhouette", "class_balance", "tsne_points"]
REAL = "real"


# --------------------------------------------------------------------------- metrics


def _as_arrays(
    features: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype | None = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``[n, d]`` (as ``dtype``: a copy; None: as they are) and labels ``[n]`` on the CPU."""
    x = torch.as_tensor(features).detach().to("cpu", dtype).flatten(1)
    y = torch.as_tensor(labels).detach().to("cpu").long().flatten()
    if len(x) != len(y):
        raise ValueError(f"{len(x)} feature rows but {len(y)} labels")
    return x, y


def _distance_blocks(x: torch.Tensor, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Exact Euclidean distances of rows ``start .. start + rows`` of ``x`` (float64) to every
    row, block by block: ``(start, [rows, n])``, from ``|a|^2 + |b|^2 - 2 a.b``, as ``torch.cdist``
    computes them, with each point's distance to itself set to exactly 0."""
    sq = torch.cat([(part * part).sum(1) for part in x.split(rows)])  # no n x d temporary
    for start in range(0, len(x), rows):
        stop = min(len(x), start + rows)
        block = torch.addmm(sq[None, :], x[start:stop], x.T, alpha=-2.0)
        block.add_(sq[start:stop, None]).clamp_min_(0).sqrt_()
        block[torch.arange(stop - start), torch.arange(start, stop)] = 0.0
        yield start, block
        del block  # before the next block is computed: one block alive at a time


def _same_among_nearest(block: torch.Tensor, same: torch.Tensor, k_rows: torch.Tensor) -> torch.Tensor:
    """Per row of a distance block (itself at +inf), how many of its ``k_rows`` nearest points
    are ``same`` (``[rows, n]``): every point nearer than the k-th distance, then the points tied
    with it in index order (the k-th itself included), as many as still needed. Rows with k = 0
    count 0. Reads whole rows: :func:`_same_among_knn` uses it for rows with a tie at the k-th place."""
    kth = torch.topk(block, max(1, int(k_rows.max())), dim=1, largest=False, sorted=True).values
    kth = kth.gather(1, (k_rows.clamp(min=1) - 1)[:, None])  # [rows, 1]
    nearer = block < kth
    tied = block == kth
    still = k_rows - nearer.sum(1)  # >= 1 where k >= 1: the k-th distance itself is a tie
    taken = tied & (tied.cumsum(1) <= still[:, None])
    count = ((nearer | taken) & same).sum(1)
    return torch.where(k_rows > 0, count, torch.zeros_like(count))


def _same_among_knn(block: torch.Tensor, own: torch.Tensor, labels: torch.Tensor, k_rows: torch.Tensor) -> torch.Tensor:
    """Per row of a distance block (itself at +inf; row labels ``own``), how many of its
    ``k_rows`` nearest points have its label, ties in distance broken by index order. The k + 1
    nearest from ``torch.topk`` settle every row whose k-th and (k+1)-th distances differ; the
    rows with a tie there are counted by :func:`_same_among_nearest`."""
    m = min(int(k_rows.max()) + 1, block.shape[1])
    values, nearest = torch.topk(block, m, dim=1, largest=False, sorted=True)
    within = torch.arange(m)[None, :] < k_rows[:, None]
    count = ((labels[nearest] == own[:, None]) & within).sum(1)
    kth = values.gather(1, (k_rows.clamp(min=1) - 1)[:, None])[:, 0]
    after = values.gather(1, k_rows.clamp(max=m - 1)[:, None])[:, 0]
    tie = torch.nonzero((k_rows > 0) & (k_rows < m) & (after == kth)).flatten()
    if len(tie):
        same = own[tie, None] == labels[None, :]
        count[tie] = _same_among_nearest(block[tie], same, k_rows[tie])
    return count


def _block_metrics(
    block: torch.Tensor,
    start: int,
    inverse: torch.Tensor,
    counts: torch.Tensor,
    k_point: torch.Tensor,
    purity: bool,
    silhouette: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """For the rows ``start ..`` of the distance matrix (``block``, changed in place): how many of
    each row's ``k_point`` nearest others share its class (``inverse``: class index of every
    point, ``counts``: class sizes), and each row's silhouette (``sklearn.metrics.silhouette_samples``);
    None for what is not asked."""
    stop = start + len(block)
    own = inverse[start:stop]
    rows = torch.arange(stop - start)
    values = None
    if silhouette:
        sums = torch.zeros(stop - start, len(counts), dtype=torch.float64).index_add_(1, inverse, block)
        a = sums[rows, own] / (counts[own] - 1)  # mean distance to the own class (itself at 0)
        sums[rows, own] = math.inf
        b = (sums / counts[None, :]).min(1).values  # to the nearest other class
        values = torch.nan_to_num((b - a) / torch.maximum(a, b))
    same = None
    if purity:
        block[rows, rows + start] = math.inf  # a point is not its own neighbour
        same = _same_among_knn(block, own, inverse, k_point[start:stop]).double()
    return same, values


def _pairwise_metrics(
    features: torch.Tensor,
    labels: torch.Tensor,
    k: int,
    *,
    want_purity: bool = True,
    want_silhouette: bool = True,
    block_mb: float = BLOCK_MB,
) -> tuple[float, float]:
    """kNN class purity and silhouette (see :func:`knn_class_purity`, :func:`silhouette`) from
    one pass over the distance matrix, ``block_mb`` MiB of it at a time; NaN for what is not
    asked or not defined. Exact in float64: the same numbers as from the whole matrix."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    x, y = _as_arrays(features, labels)
    n = len(x)
    _, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
    k_point = torch.clamp(counts[inverse] - 1, max=k)  # [n]
    keep = k_point > 0
    purity = want_purity and n >= 2 and bool(keep.any())
    sil_defined = want_silhouette and len(counts) >= 2 and int(counts.min()) >= 2
    if not (purity or sil_defined):
        return math.nan, math.nan
    same_total = torch.zeros(n, dtype=torch.float64)
    sil = torch.zeros(n, dtype=torch.float64)
    for start, block in _distance_blocks(x, block_rows(n, block_mb)):
        stop = start + len(block)
        same, values = _block_metrics(block, start, inverse, counts, k_point, purity, sil_defined)
        if purity:
            same_total[start:stop] = same
        if sil_defined:
            sil[start:stop] = values
        del block
    knn = float((same_total / k_point.clamp(min=1))[keep].mean()) if purity else math.nan
    return knn, float(sil.mean()) if sil_defined else math.nan


def knn_class_purity(features: torch.Tensor, labels: torch.Tensor, k: int = 5, *, block_mb: float = BLOCK_MB) -> float:
    """Mean over points of the fraction of a point's k nearest *other* points (Euclidean
    distance in feature space) that share its label; 1 = every neighbourhood is pure.

    k is clipped per point to ``min(k, n_c - 1)``, where ``n_c`` is the size of the point's
    class, so that a perfectly separated set scores 1 whatever its images per class (with 2
    images per class this is the 1-nearest-neighbour agreement). Points alone in their class
    have no possible same-class neighbour and are left out; NaN when no point remains.
    Ties in distance are broken by index order. Exact (float64), from blocks of the distance
    matrix of ``block_mb`` MiB: memory does not grow with ``n^2``.
    """
    return _pairwise_metrics(features, labels, k, want_silhouette=False, block_mb=block_mb)[0]


def silhouette(features: torch.Tensor, labels: torch.Tensor, *, block_mb: float = BLOCK_MB) -> float:
    """Mean silhouette coefficient (as ``sklearn.metrics.silhouette_score``, Euclidean): per point
    ``(b - a) / max(a, b)`` with ``a`` its mean distance to its own class and ``b`` to the
    nearest other class; in [-1, 1], higher = tighter, better separated classes. Exact (float64),
    from blocks of the distance matrix of ``block_mb`` MiB.

    NaN when there are fewer than 2 labels or some label has fewer than 2 points (its
    silhouette would be defined as 0 by convention, which says nothing about overlap).
    """
    return _pairwise_metrics(features, labels, 1, want_purity=False, block_mb=block_mb)[1]


def class_balance(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Coefficient of variation (population std / mean) across classes of each class's
    spread, the mean Euclidean distance of its points to its centroid; 0 = every class is
    spread equally, higher = less balanced.

    Classes with fewer than 2 points (no spread) are left out; NaN when fewer than 2
    classes remain or every spread is 0.
    """
    x, y = _as_arrays(features, labels, dtype=None)  # float64 class by class: no copy of the whole set
    spreads = []
    for c in torch.unique(y):
        members = x[y == c].double()
        if len(members) >= 2:
            spreads.append(float((members - members.mean(0)).norm(dim=1).mean()))
    if len(spreads) < 2:
        return math.nan
    spread = np.asarray(spreads)
    if spread.mean() == 0:
        return math.nan
    return float(spread.std() / spread.mean())


def overlap_metrics(
    features: torch.Tensor, labels: torch.Tensor, k: int = 5, *, block_mb: float = BLOCK_MB
) -> dict[str, float]:
    """The three metrics of a set, the first two from one blockwise pass over its distances."""
    knn, sil = _pairwise_metrics(features, labels, k, block_mb=block_mb)
    return {"knn_purity": knn, "silhouette": sil, "class_balance": class_balance(features, labels)}


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
    batch_size: int = EMBED_BATCH,
    factor: int = 1,
) -> torch.Tensor:
    """``model.features`` of images in [0,1] (uint8 images are divided by 255), normalised with the
    training split's mean/std, ``batch_size`` images at a time (their activations are the memory:
    :func:`tgdd.analysis_budget.embed_batch`). With ``factor`` f > 1 the images are stored
    multi-formation images: each batch is decoded into its f*f tiles (:func:`tgdd.synthetic.decode`)
    and clamped to [0,1] first, so that the decoded set, f^2 times the stored one, is never held."""
    mean, std = mean.to(device), std.to(device)
    step = max(1, batch_size // factor**2)
    out = []
    for i in range(0, len(images), step):
        batch = images[i : i + step]
        batch = batch.float().div_(255.0) if batch.dtype == torch.uint8 else decode(batch.float(), factor).clamp(0, 1)
        out.append(model.features(normalize(batch.to(device), mean, std)).flatten(1).cpu())
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


def tsne_sample(labels: torch.Tensor, per_class: int, seed: int, *names: object) -> torch.Tensor:
    """Positions (increasing) of at most ``per_class`` entries of every label, a random draw
    seeded by ``seed`` and ``names`` (every entry of a label that has no more): the synthetic
    images a t-SNE panel shows."""
    gen = generator(seed, "analysis-tsne", *names)
    picks = []
    for c in torch.unique(labels):
        pool = torch.nonzero(labels == c).flatten()
        picks.append(pool[torch.randperm(len(pool), generator=gen)[:per_class]])
    return torch.cat(picks).sort().values if picks else torch.empty(0, dtype=torch.long)


# --------------------------------------------------------------------------- analysis


@dataclass
class _Embedded:
    """One analysed set: its metrics on all ``n_images`` images, and the features and labels of
    the images its t-SNE panel shows."""

    method: str
    ipc: int
    n_images: int
    metrics: dict[str, float]
    shown_features: torch.Tensor
    shown_labels: torch.Tensor


def _summarise(
    method: str, ipc: int, features: torch.Tensor, labels: torch.Tensor, shown: torch.Tensor, k: int, block_mb: float
) -> _Embedded:
    metrics = overlap_metrics(features, labels, k, block_mb=block_mb)
    return _Embedded(method, ipc, len(labels), metrics, features[shown], labels[shown])  # copies: the set is freed


def synthetic_files(cfg: Config) -> list[Path]:
    """Every ``synthetic.pt`` of ``cfg.dataset`` and ``cfg.seed`` (all methods, IPCs and variants)."""
    root = cfg.paths.results / "synthetic" / cfg.dataset
    plain = root.glob(f"*/ipc*/seed{cfg.seed}/synthetic.pt")
    return sorted([*plain, *root.glob(f"*/ipc*/seed{cfg.seed}/variant-*/synthetic.pt")])


def analyze(
    cfg: Config,
    *,
    k: int = 5,
    real_per_class: int = REAL_PER_CLASS,
    tsne_real_points: int = TSNE_REAL_POINTS,
    tsne_points: int = TSNE_SYNTHETIC_POINTS,
    block_mb: float = BLOCK_MB,
) -> list[Path]:
    """Analyse every data set of :func:`~tgdd.analysis_budget.analyzed_datasets` (each with its
    ``per_dataset`` settings) and write one class-overlap table across them all, with a ``dataset``
    column, and their t-SNE figures (:func:`analyze_dataset`). The table is always written, with no
    rows for a data set that has no synthetic sets or no usable trajectories (a warning says which),
    so that the workflow can declare it. Returns the table's path, then the figures'."""
    configure_threads(cfg.threads)
    rows: list[dict] = []
    figures: list[Path] = []
    for dataset in analyzed_datasets(cfg):
        dataset_rows, dataset_figures = analyze_dataset(
            cfg.with_overrides(f"dataset={dataset}"),
            k=k,
            real_per_class=real_per_class,
            tsne_real_points=tsne_real_points,
            tsne_points=tsne_points,
            block_mb=block_mb,
        )
        rows += dataset_rows
        figures += dataset_figures
    table = pd.DataFrame(rows, columns=COLUMNS)
    return [atomic_write(paths.class_overlap_file(cfg), lambda tmp: table.to_csv(tmp, index=False)), *figures]


def analyze_dataset(
    cfg: Config,
    *,
    k: int = 5,
    real_per_class: int = REAL_PER_CLASS,
    tsne_real_points: int = TSNE_REAL_POINTS,
    tsne_points: int = TSNE_SYNTHETIC_POINTS,
    block_mb: float = BLOCK_MB,
) -> tuple[list[dict], list[Path]]:
    """Embed every synthetic set of ``cfg.dataset`` (seed ``cfg.seed``) and a class-balanced
    real training sample with a trained expert; write one t-SNE figure per IPC
    (:func:`tgdd.paths.tsne_figure`). Returns the table rows (synthetic sets by IPC and method,
    then the real sample) and the figures' paths; none when there are no synthetic sets or no
    usable trajectories.

    The metrics use every decoded image of a set (exact, blockwise: ``block_mb``); a t-SNE panel
    shows at most ``tsne_points`` of them (``max(1, tsne_points // classes)`` per class, drawn with
    :func:`tsne_sample`) and ``tsne_real_points`` real images; the ``tsne_points`` column says how
    many. Memory: the training split is released once the real sample is drawn, sets are decoded and
    embedded a batch at a time and analysed one at a time, and only their t-SNE samples are kept
    (:func:`tgdd.analysis_budget.peak_bytes` bounds it)."""
    files = synthetic_files(cfg)
    if not files:
        log.warning("class-overlap analysis skipped: no synthetic sets for %s seed %d", cfg.dataset, cfg.seed)
        return [], []
    train = load_prepared(paths.prepared_dir(cfg), "train", cfg.dataset)
    device = resolve_device(cfg.device)
    model = load_expert(cfg, train, device)
    if model is None:
        return [], []
    num_classes, mean, std = train.num_classes, train.mean, train.std
    batch = embed_batch(cfg.experts.arch, train.images.shape[1], train.images.shape[2])
    pick = real_sample(train, real_per_class, cfg.seed)
    real_labels, real_images = train.labels[pick], train.images[pick]
    del train  # the whole training split (1.2 GB for TinyImageNet) is not needed any more

    per_class = int(torch.bincount(real_labels).max())  # the "ipc" of the real sample
    real_shown = _first_per_class(real_labels, per_class_shown(num_classes, tsne_real_points))
    real_features = embed(model, real_images, mean, std, device, batch)
    real = _summarise(REAL, per_class, real_features, real_labels, real_shown, k, block_mb)
    del real_images, real_features

    shown_per_class = per_class_shown(num_classes, tsne_points)
    sets: list[_Embedded] = []
    for path in files:
        syn = load_synthetic(path)
        if syn.meta.get("dataset", cfg.dataset) != cfg.dataset:
            raise TgddError(f"synthetic set {path} is for '{syn.meta.get('dataset')}', not '{cfg.dataset}'")
        method = str(syn.meta.get("method", path.parents[2].name))
        method += f" [{syn.meta['variant']}]" if syn.meta.get("variant") else ""  # a variant is a row of its own
        ipc = int(syn.meta["ipc"])
        features = embed(model, syn.images, mean, std, device, batch, factor=syn.factor)
        labels = decode_labels(syn.labels, syn.factor)
        del syn
        shown = tsne_sample(labels, shown_per_class, cfg.seed, method, ipc)
        sets.append(_summarise(method, ipc, features, labels, shown, k, block_mb))
        del features
    sets.sort(key=lambda s: (s.ipc, s.method))

    rows = [
        {
            "dataset": cfg.dataset,
            "method": s.method,
            "ipc": s.ipc,
            "n_images": s.n_images,
            **s.metrics,
            "tsne_points": len(s.shown_labels),
        }
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

    figures = []
    for ipc in sorted({s.ipc for s in sets}):
        panels = [s for s in sets if s.ipc == ipc]
        path = paths.tsne_figure(cfg, ipc)
        figures.append(_tsne_figure(path, panels, real, num_classes, shown_per_class, cfg))
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
    real: _Embedded,
    num_classes: int,
    shown_per_class: int,
    cfg: Config,
) -> Path:
    """One panel per method: a joint t-SNE of the real sample (small, faint dots) and the
    method's synthetic images (large, black-edged markers), both coloured by class; the titles
    say how many images each panel shows of how many (the metrics use them all)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    colours = np.asarray(_class_colours(num_classes))
    cols = len(panels)
    fig = Figure(figsize=(4.2 * cols, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, cols, squeeze=False)[0]
    n_real = len(real.shown_labels)
    for ax, s in zip(axes, panels, strict=True):
        joint = torch.cat([real.shown_features, s.shown_features]).numpy().astype(np.float64)
        xy = _tsne(joint, cfg.seed)
        ax.scatter(xy[:n_real, 0], xy[:n_real, 1], s=6, c=colours[real.shown_labels.numpy()], alpha=0.35, linewidths=0)
        ax.scatter(
            xy[n_real:, 0],
            xy[n_real:, 1],
            s=70,
            c=colours[s.shown_labels.numpy()],
            marker="*",
            edgecolors="black",
            linewidths=0.5,
        )
        purity = s.metrics["knn_purity"]
        title = f"{s.method} (kNN purity {purity:.2f})" if not math.isnan(purity) else f"{s.method}"
        ax.set_title(f"{title}\n{len(s.shown_labels)} of {s.n_images} images shown", fontsize="medium")
        ax.set_xticks([])
        ax.set_yticks([])
    title = (
        f"{cfg.dataset}, IPC {panels[0].ipc}: t-SNE of expert features (dots: {n_real} real, stars: synthetic). "
        f"At most {shown_per_class} synthetic per class, drawn with seed {cfg.seed}; kNN purity on all images."
    )
    fig.suptitle(textwrap.fill(title, width=55 * cols), fontsize="medium")
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
