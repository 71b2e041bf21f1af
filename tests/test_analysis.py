"""Class-overlap metrics on hand-made features, the blockwise pass against the whole distance
matrix, and `analyze` on a tiny digits run."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from tgdd import paths, steps
from tgdd.analysis import (
    analyze,
    class_balance,
    embed,
    knn_class_purity,
    overlap_metrics,
    silhouette,
    tsne_sample,
)
from tgdd.models import build_model
from tgdd.synthetic import decode

from .conftest import tiny_config

# two tight clusters far apart: class 0 around (0, 0), class 1 around (100, 0)
SEPARATED = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [100.0, 0.0], [101.0, 0.0], [100.0, 1.0]])
SEPARATED_Y = torch.tensor([0, 0, 0, 1, 1, 1])


def test_purity_and_silhouette_of_separated_clusters():
    assert knn_class_purity(SEPARATED, SEPARATED_Y, k=2) == 1.0
    assert knn_class_purity(SEPARATED, SEPARATED_Y, k=5) == 1.0  # k clipped to class size - 1 = 2
    assert silhouette(SEPARATED, SEPARATED_Y) > 0.98


def test_purity_of_interleaved_points():
    # points on a line, labels alternating: each point's nearest neighbours are the other label
    x = torch.arange(6.0).unsqueeze(1)
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    assert knn_class_purity(x, y, k=1) == 0.0
    # k=2: ends see {1 other, 1 same}; inner points see both sides (other label) -> 0
    assert knn_class_purity(x, y, k=2) == pytest.approx((0.5 + 0 + 0 + 0 + 0 + 0.5) / 6)
    assert silhouette(x, y) < 0


def test_purity_by_hand():
    # class 0: 0, 1; class 1: 2, 10  (1-D). k=1 for every point (classes have 2 points).
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    y = torch.tensor([0, 0, 1, 1])
    # nearest: 0->1 (same), 1->0 or 2 (tie at 1: index order -> 0, same), 2->1 (other), 10->2 (same)
    assert knn_class_purity(x, y, k=1) == pytest.approx(3 / 4)


def test_class_balance_by_hand():
    # class 0: spread 1 (points at +-1 from centroid); class 1: spread 3
    x = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [17.0, 0.0], [23.0, 0.0]])
    y = torch.tensor([0, 0, 1, 1])
    assert class_balance(x, y) == pytest.approx(1.0 / 2.0)  # std(1, 3) / mean(1, 3)
    assert class_balance(SEPARATED, SEPARATED_Y) == pytest.approx(0.0, abs=1e-12)  # identical shapes


def test_edge_cases():
    one_class = torch.randn(5, 3)
    same = torch.zeros(5, dtype=torch.long)
    assert knn_class_purity(one_class, same) == 1.0
    assert math.isnan(silhouette(one_class, same))
    assert math.isnan(class_balance(one_class, same))

    # class 2 has a single point: it is left out of purity, silhouette is undefined
    x = torch.cat([SEPARATED, torch.tensor([[50.0, 50.0]])])
    y = torch.cat([SEPARATED_Y, torch.tensor([2])])
    assert knn_class_purity(x, y, k=2) == 1.0
    assert math.isnan(silhouette(x, y))
    assert class_balance(x, y) == pytest.approx(0.0, abs=1e-12)

    singletons = torch.eye(3)
    assert math.isnan(knn_class_purity(singletons, torch.arange(3)))
    assert math.isnan(knn_class_purity(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long)))
    with pytest.raises(ValueError):
        knn_class_purity(SEPARATED, SEPARATED_Y[:3])


@pytest.mark.slow
def test_analyze_on_tiny_digits(prepared_root: Path, tmp_path: Path, caplog):
    shutil.copytree(prepared_root / "data", tmp_path / "data")
    cfg = tiny_config(tmp_path, "experts.num_trajectories=1", "distill.ipc=2")

    csv = paths.tables_dir(cfg) / "class_overlap.csv"
    png = paths.tables_dir(cfg) / "tsne_digits_ipc2.png"
    assert paths.class_overlap_file(cfg) == csv and paths.tsne_figure(cfg, 2) == png
    # Nothing to analyse: the table is still written (the workflow declares it), without rows.
    with caplog.at_level(logging.WARNING, logger="tgdd.analysis"):
        assert analyze(cfg) == [csv]  # nothing distilled yet
    assert pd.read_csv(csv).empty and "dataset" in pd.read_csv(csv).columns
    steps.distill(cfg.with_overrides("distill.method=random"))
    with caplog.at_level(logging.WARNING, logger="tgdd.analysis"):
        assert analyze(cfg) == [csv]  # a synthetic set but no trajectories: skipped, no error
    assert "no expert trajectories" in caplog.text
    assert pd.read_csv(csv).empty and not png.exists()

    steps.experts(cfg)
    steps.distill(cfg.with_overrides("distill.method=tgdd"))
    written = analyze(cfg, real_per_class=20, tsne_real_points=100)

    assert written == [csv, png]
    table = pd.read_csv(csv)
    assert list(table.columns) == [
        "dataset", "method", "ipc", "n_images", "knn_purity", "silhouette", "class_balance", "tsne_points"
    ]  # fmt: skip
    assert sorted(table["method"]) == ["random", "real", "tgdd"]
    rows = table.set_index("method")
    assert rows.loc["tgdd", "n_images"] == 10 * 2 * 4  # decoded: ipc x f^2 per class
    assert rows.loc["random", "n_images"] == 10 * 2
    assert rows.loc["real", "n_images"] == 10 * 20 and rows.loc["real", "ipc"] == 20
    # t-SNE draws at most tsne_points // classes per class of a set (every image when fewer), and
    # tsne_real_points // classes real ones per class: the column says how many
    assert rows.loc["tgdd", "tsne_points"] == 10 * 8 and rows.loc["real", "tsne_points"] == 10 * 10
    small = analyze(cfg, real_per_class=20, tsne_real_points=100, tsne_points=30, block_mb=0.001)
    assert small == [csv, png]
    sampled = pd.read_csv(csv).set_index("method")
    assert sampled.loc["tgdd", "tsne_points"] == 10 * 3 and sampled.loc["random", "tsne_points"] == 10 * 2
    # the metrics still use every image, and tiny blocks give the same numbers
    metric_columns = ["n_images", "knn_purity", "silhouette", "class_balance"]
    pd.testing.assert_frame_equal(sampled[metric_columns], rows[metric_columns])
    assert (table["dataset"] == "digits").all()
    assert table["knn_purity"].between(0, 1).all()
    assert table["silhouette"].between(-1, 1).all()
    assert (table["class_balance"] >= 0).all()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- blockwise == whole matrix


def whole_matrix_purity(x: torch.Tensor, y: torch.Tensor, k: int) -> float:
    """The definition, from the whole ``torch.cdist`` matrix: each point's min(k, n_c - 1) nearest
    others by a stable sort (ties in index order), singletons left out."""
    x = x.double()
    _, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
    k_point = torch.clamp(counts[inverse] - 1, max=k)
    dist = torch.cdist(x, x)
    dist.fill_diagonal_(math.inf)
    order = torch.sort(dist, dim=1, stable=True).indices
    fractions = [float((y[order[i, :kk]] == y[i]).double().mean()) for i, kk in enumerate(k_point.tolist()) if kk]
    return float(torch.tensor(fractions, dtype=torch.float64).mean())


BLOCKS_MB = [1e-4, 0.003, 0.02, 1000.0]  # 1 row, a few rows, rows that do not divide n, all rows


@pytest.mark.parametrize("block_mb", BLOCKS_MB)
def test_blockwise_metrics_equal_the_whole_matrix(block_mb):
    from sklearn.metrics import silhouette_score

    gen = torch.Generator().manual_seed(0)
    for n, d, classes in [(157, 12, 5), (90, 3, 9)]:
        x = torch.randn(n, d, generator=gen)
        y = torch.randint(0, classes, (n,), generator=gen)
        for k in (1, 5):
            assert knn_class_purity(x, y, k, block_mb=block_mb) == whole_matrix_purity(x, y, k)
        assert silhouette(x, y, block_mb=block_mb) == pytest.approx(
            silhouette_score(x.double().numpy(), y.numpy()), abs=1e-12
        )
        fused = overlap_metrics(x, y, 5, block_mb=block_mb)
        assert fused == {
            "knn_purity": knn_class_purity(x, y, 5),
            "silhouette": pytest.approx(silhouette(x, y), abs=1e-14),
            "class_balance": class_balance(x, y),
        }


@pytest.mark.parametrize("block_mb", BLOCKS_MB)
def test_ties_are_broken_by_index_order_in_every_block(block_mb):
    # integer points on a small grid: distances are exact and tied everywhere, so which tied
    # neighbour counts decides the number; the whole-matrix definition breaks ties by index
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 3, (120, 2), generator=gen).float()
    y = torch.randint(0, 4, (120,), generator=gen)
    for k in (1, 2, 5):
        assert knn_class_purity(x, y, k, block_mb=block_mb) == whole_matrix_purity(x, y, k)
    from sklearn.metrics import silhouette_score

    assert silhouette(x, y, block_mb=block_mb) == pytest.approx(
        silhouette_score(x.double().numpy(), y.numpy()), abs=1e-12
    )


def test_tsne_sample_is_seeded_and_bounded_per_class():
    labels = torch.tensor([0] * 7 + [1] * 2 + [2] * 5)
    pick = tsne_sample(labels, 3, 0, "tgdd", 10)
    assert torch.equal(pick, tsne_sample(labels, 3, 0, "tgdd", 10))  # same seed and names, same draw
    assert torch.equal(pick, pick.sort().values)
    assert torch.bincount(labels[pick]).tolist() == [3, 2, 3]  # class 1 has only 2: both
    draws = {tuple(tsne_sample(labels, 3, seed, "tgdd", 10).tolist()) for seed in range(8)}
    assert len(draws) > 1  # a random draw, not the first images
    assert tsne_sample(labels, 100, 0).tolist() == list(range(len(labels)))


@torch.no_grad()
def test_embed_decodes_batch_by_batch_like_the_whole_set():
    model = build_model("convnet-1-w16", 3, 16, 4).eval()
    gen = torch.Generator().manual_seed(0)
    stored = torch.rand(5, 3, 16, 16, generator=gen) * 1.4 - 0.2  # outside [0, 1]: clamped after decoding
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)
    cpu = torch.device("cpu")
    whole = embed(model, decode(stored, 2).clamp(0, 1), mean, std, cpu, batch_size=1000)
    for batch in (4, 7, 1000):  # 1 stored image (4 tiles) a batch, 1 (7 // 4), all
        torch.testing.assert_close(embed(model, stored, mean, std, cpu, batch_size=batch, factor=2), whole)
    uint8 = (torch.rand(6, 3, 16, 16, generator=gen) * 255).to(torch.uint8)
    torch.testing.assert_close(
        embed(model, uint8, mean, std, cpu, batch_size=4), embed(model, uint8.float() / 255, mean, std, cpu)
    )
