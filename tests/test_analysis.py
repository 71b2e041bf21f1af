"""Class-overlap metrics on hand-made features, and `analyze` on a tiny digits run."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from tgdd import paths, steps
from tgdd.analysis import analyze, class_balance, knn_class_purity, silhouette

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
    assert list(table.columns) == ["dataset", "method", "ipc", "n_images", "knn_purity", "silhouette", "class_balance"]
    assert sorted(table["method"]) == ["random", "real", "tgdd"]
    rows = table.set_index("method")
    assert rows.loc["tgdd", "n_images"] == 10 * 2 * 4  # decoded: ipc x f^2 per class
    assert rows.loc["random", "n_images"] == 10 * 2
    assert rows.loc["real", "n_images"] == 10 * 20 and rows.loc["real", "ipc"] == 20
    assert (table["dataset"] == "digits").all()
    assert table["knn_purity"].between(0, 1).all()
    assert table["silhouette"].between(-1, 1).all()
    assert (table["class_balance"] >= 0).all()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
