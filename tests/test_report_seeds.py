"""`tgdd report` over distillation seeds: tables and metrics.json aggregate seeds (issue 20,
defect 1), summary.csv keeps one row per seed, settings are never mixed, n=1 has no fake ±."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tgdd.cli import main
from tgdd.report import (
    STD_OVER_RUNS,
    STD_OVER_SEEDS,
    aggregate,
    collect_results,
    comparison_tables,
    headline_metrics,
    paper_table,
    seed_statistics,
)

from .conftest import TINY

RANDOM_IPC1 = ["distill.method=random", "distill.ipc=1"]  # random selection: distils instantly, no experts


def _config(root: Path) -> Path:
    tree = {**TINY, "paths": {"data": str(root / "data"), "results": str(root / "results")}}
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _distill_and_evaluate(config: Path, *overrides: str) -> None:
    assert main(["distill", "--config", str(config), "-q", *RANDOM_IPC1, *overrides]) == 0
    assert main(["evaluate", "--config", str(config), "-q", *RANDOM_IPC1, *overrides]) == 0


def _eval_json(root: Path, seed: int) -> dict:
    return json.loads((root / f"results/eval/digits/random/ipc1/seed{seed}/convnet-1-w16__tgdd.json").read_text())


def _markdown_cells(markdown: str, row: str) -> list[str]:
    """The cells of the first table row of ``markdown`` that starts with ``| row``."""
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {row} "))
    return [cell.strip() for cell in line.strip("|").split("|")]


@pytest.fixture(scope="module")
def three_seeds(tmp_path_factory) -> Path:
    """The user's route: prepare, then random IPC 1 distilled and evaluated at seeds 0, 1 and 2
    (2 runs of 2 epochs each), then the report, all through the CLI."""
    root = tmp_path_factory.mktemp("seeds")
    config = _config(root)
    assert main(["prepare", "--config", str(config), "-q"]) == 0
    for seed in (0, 1, 2):
        _distill_and_evaluate(config, f"seed={seed}")
    assert main(["report", "--config", str(config), "-q"]) == 0
    return root


def test_report_is_the_mean_over_distillation_seeds(three_seeds: Path):
    results = [_eval_json(three_seeds, seed) for seed in (0, 1, 2)]
    means = [r["mean"] for r in results]
    assert len(set(means)) > 1, "the test needs seeds that score differently"
    expected_mean, expected_std = float(np.mean(means)), float(np.std(means, ddof=1))
    tables = three_seeds / "results" / "tables"

    metrics = json.loads((tables / "metrics.json").read_text())["digits"]["ipc1"]["random"]
    assert metrics == {
        "convnet-1-w16/tgdd": {
            "mean": pytest.approx(expected_mean, abs=1e-4),
            "std": pytest.approx(expected_std, abs=1e-4),
            "std_over": STD_OVER_SEEDS,
            "n_seeds": 3,
            "n_runs": 2,
            "epochs": 2,
        }
    }

    summary_md = (tables / "summary.md").read_text()
    paper = summary_md.split("### Cross-architecture")[0]
    assert _markdown_cells(paper, "random") == ["random", f"{expected_mean:.1f} ± {expected_std:.1f}"]
    assert "3 distillation seeds × 2 evaluation runs of 2 epochs each" in paper
    assert "sample std (ddof=1)" in paper

    summary = pd.read_csv(tables / "summary.csv")
    assert list(summary["distill_seed"]) == [0, 1, 2] and len(summary) == 3
    assert {"distill_seed", "experts_seed", "origin", "n_runs", "epochs"} <= set(summary.columns)
    assert list(summary["mean"].round(4)) == [round(m, 4) for m in means]
    recorded = [r.get("experts_seed") for r in results]  # None for random: made without trajectories
    assert list(summary["experts_seed"].fillna(-1)) == [-1 if s is None else s for s in recorded]


def test_seeds_evaluated_differently_are_not_averaged(three_seeds: Path, tmp_path: Path):
    """A fourth seed evaluated with 1 run of 1 epoch: its own value beside the three seeds', both
    labelled, and a number without ± (n=1)."""
    shutil.copytree(three_seeds / "data", tmp_path / "data")
    shutil.copytree(three_seeds / "results", tmp_path / "results")
    config = _config(tmp_path)
    _distill_and_evaluate(config, "seed=3", "evaluate.epochs=1", "evaluate.runs=1")
    assert main(["report", "--config", str(config), "-q"]) == 0
    tables = tmp_path / "results" / "tables"
    fourth = _eval_json(tmp_path, 3)["accuracies"][0]
    three = [_eval_json(tmp_path, seed)["mean"] for seed in (0, 1, 2)]

    metrics = json.loads((tables / "metrics.json").read_text())["digits"]["ipc1"]["random"]
    assert set(metrics) == {"convnet-1-w16/tgdd/1ep_1runs", "convnet-1-w16/tgdd/2ep_2runs"}
    alone = metrics["convnet-1-w16/tgdd/1ep_1runs"]
    assert alone["mean"] == pytest.approx(fourth, abs=1e-4) and alone["std"] is None and alone["n_seeds"] == 1
    assert metrics["convnet-1-w16/tgdd/2ep_2runs"]["mean"] == pytest.approx(np.mean(three), abs=1e-4)

    paper = (tables / "summary.md").read_text().split("### Cross-architecture")[0]
    cell = _markdown_cells(paper, "random")[1]
    assert cell == f"{fourth:.1f} [a]; {np.mean(three):.1f} ± {np.std(three, ddof=1):.1f} [b]"
    assert "- [a] 1 distillation seed × 1 evaluation run of 1 epoch: that one run's accuracy, no std (n=1)" in paper
    assert "- [b] 3 distillation seeds × 2 evaluation runs of 2 epochs each" in paper
    assert "never averaged" in paper and "± 0.0" not in paper
    assert len(pd.read_csv(tables / "summary.csv")) == 4


def _row(seed: int | None, mean: float, std: float = 1.0, runs: int = 3, epochs: int = 300, **cell) -> dict:
    base = {"dataset": "cifar10", "ipc": 1, "method": "tgdd", "arch": "convnet-3", "protocol": "tgdd"}
    return {**base, **cell, "distill_seed": seed, "mean": mean, "std": std, "n_runs": runs, "epochs": epochs}


def test_two_seeds_give_their_mean_and_sample_std():
    frame = pd.DataFrame([_row(0, 60.0), _row(1, 64.0)])
    (cell,) = aggregate(frame).itertuples()
    assert (cell.mean, cell.std, cell.std_over, cell.n_seeds) == (62.0, pytest.approx(2 * 2**0.5), STD_OVER_SEEDS, 2)
    assert cell.distill_seeds == "0 1" and not cell.split
    assert "| tgdd     | 62.0 ± 2.8" in paper_table(frame)
    assert headline_metrics(frame)["cifar10"]["ipc1"]["tgdd"]["convnet-3/tgdd"]["n_seeds"] == 2


def test_one_seed_keeps_its_runs_std_and_one_run_has_none():
    assert seed_statistics([71.7], 1.2, n_runs=3) == (71.7, 1.2, STD_OVER_RUNS)
    assert seed_statistics([71.7], 0.0, n_runs=1) == (71.7, None, None)
    frame = pd.DataFrame([_row(0, 71.7, std=0.0, runs=1)])
    table = paper_table(frame)
    assert "| 71.7 " in table and "±" not in table.split("\n\n")[-1] and "(n=1)" in table
    assert headline_metrics(frame)["cifar10"]["ipc1"]["tgdd"]["convnet-3/tgdd"]["std"] is None


def test_mixed_epochs_or_runs_stay_apart_everywhere():
    rows = [_row(0, 60.0), _row(1, 64.0), _row(2, 50.0, epochs=100), _row(3, 55.0, runs=5)]
    frame = pd.DataFrame([{**row, "ipc": 10} for row in rows])
    agg = aggregate(frame)
    assert sorted(zip(agg["epochs"], agg["n_runs"], agg["n_seeds"], agg["mean"], strict=True)) == [
        (100, 3, 1, 50.0),
        (300, 3, 2, 62.0),
        (300, 5, 1, 55.0),
    ]
    assert agg["split"].all()
    assert set(headline_metrics(frame)["cifar10"]["ipc10"]["tgdd"]) == {
        "convnet-3/tgdd/100ep_3runs",
        "convnet-3/tgdd/300ep_3runs",
        "convnet-3/tgdd/300ep_5runs",
    }
    comparison = [line.replace(" ", "") for line in comparison_tables(frame).splitlines()]
    assert "|cifar10|10|convnet-3|tgdd|62.0±2.8|71.9|2|3|300|" in comparison
    assert "|cifar10|10|convnet-3|tgdd|50.0±1.0|71.9|1|3|100|" in comparison


def test_old_results_without_seed_keys_read_as_empty(tmp_path: Path):
    result = {
        "dataset": "digits", "ipc": 1, "method": "random", "arch": "convnet-1-w16", "protocol": "tgdd",
        "mean": 50.0, "std": 1.0, "runs": 2, "seeds": [1, 2], "factor": 1, "protocol_settings": {"epochs": 2},
    }  # fmt: skip
    (tmp_path / "a.json").write_text(json.dumps(result))
    (tmp_path / "b.json").write_text(json.dumps({**result, "mean": 52.0, "distill_seed": 1, "experts_seed": 0}))
    frame = collect_results(tmp_path)
    csv = frame.to_csv(index=False, float_format="%.4f").splitlines()
    assert csv[0].startswith("dataset,ipc,method,arch,protocol,distill_seed,experts_seed,mean,std")
    assert csv[1].startswith("digits,1,random,convnet-1-w16,tgdd,1,0,52.0000") and ",tgdd,,,50.0000" in csv[2]
    assert aggregate(frame)["n_seeds"].tolist() == [2]
