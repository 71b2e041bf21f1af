"""The presets, per-dataset settings, the evaluation-epochs rule and the report's published tables."""

from pathlib import Path

import pandas as pd
import pytest

from tgdd import steps
from tgdd.config import build_config, load_config
from tgdd.errors import TgddError
from tgdd.protocols import subset_epochs
from tgdd.report import comparison_tables, headline_metrics, published_results
from tgdd.resolve import protocol_settings

CONFIG = Path(__file__).parents[1] / "config"


def test_paper_preset_covers_the_ten_datasets_with_spec_settings():
    cfg = load_config(CONFIG / "paper.yaml")
    cells = steps.matrix_configs(cfg)
    by_dataset = {}
    for cell in cells:
        by_dataset.setdefault(cell.dataset, set()).add(cell.distill.ipc)
        assert cell.experts.num_trajectories == 5
        convnet = {"tinyimagenet": "convnet-4"}.get(
            cell.dataset, "convnet-5" if cell.dataset.startswith("image") else "convnet-3"
        )
        cross = ["resnet10-ap", "densenet121"] if cell.dataset == "cifar10" else []  # SPEC §7's table
        assert cell.evaluate.archs == [convnet, *cross] and cell.experts.arch == convnet
    assert len(by_dataset) == 10
    assert by_dataset["cifar100"] == {1, 10, 50} and by_dataset["imagewoof"] == {1, 10}
    subset = cfg.with_overrides("dataset=imagenette")
    assert (subset.experts.arch, subset.experts.epochs, subset.experts.batch_size) == ("convnet-5", 80, 128)
    assert cfg.with_overrides("dataset=tinyimagenet").experts.arch == "convnet-4"
    assert (cfg.experts.arch, cfg.experts.epochs) == ("convnet-3", 60)
    methods = {"tgdd", "dm", "dance", "idm", "datadam", "mtt", "ftd", "m3d", "random", "herding"}
    assert {c.distill.method for c in cells} == methods
    assert (cfg.experts.mtt.num_trajectories, cfg.experts.mtt.epochs) == (100, 50)  # MTT's buffer.py
    assert (cfg.experts.ftd.num_trajectories, cfg.experts.ftd.epochs, cfg.experts.ftd.rho) == (100, 50, 0.01)


def test_paper_preset_dry_run_lists_every_step(tmp_path, capsys):
    cfg = load_config(CONFIG / "paper.yaml", [f"paths.data={tmp_path}", f"paths.results={tmp_path}"])
    planned = steps.plan(cfg)
    kinds = pd.Series([step for step, _, _ in planned]).value_counts().to_dict()
    # 10 data sets prepared, experts per data set (seed 0) and recipe (TGDD's, MTT's, FTD's), 240 cells
    # distilled and evaluated, 1 report
    assert kinds == {"prepare": 10, "experts": 30, "distill": 240, "evaluate": 240, "report": 1}
    steps.pipeline(cfg, dry_run=True)
    assert capsys.readouterr().out.count("would run:") == 521


def test_command_line_overrides_win_over_per_dataset_settings():
    tree = {"per_dataset": {"cifar10": {"experts": {"epochs": 7}}}}
    assert build_config(tree, ["dataset=cifar10"]).experts.epochs == 7
    assert build_config(tree, ["dataset=cifar10", "experts.epochs=3"]).experts.epochs == 3
    assert build_config(tree, ["dataset=digits"]).experts.epochs == 60


def test_every_per_dataset_block_is_validated():
    with pytest.raises(TgddError, match=r"per_dataset.cifar10.*epochz.*Did you mean 'epochs'"):
        build_config({"per_dataset": {"cifar10": {"experts": {"epochz": 1}}}})
    with pytest.raises(TgddError, match="unknown dataset 'cifar11'"):
        build_config({"per_dataset": {"cifar11": {}}})


@pytest.mark.parametrize(
    ("per_class", "classes", "epochs"),
    [
        (1, 10, 3000),
        (4, 10, 2000),
        (40, 10, 1500),
        (200, 10, 1000),
        (400, 10, 500),
        (1000, 10, 300),
        (4, 100, 1300),  # 100 classes: int(2/3 e) rounded down to a multiple of 100
    ],
)
def test_subset_evaluation_epochs_follow_spec(per_class, classes, epochs):
    assert subset_epochs(per_class, classes) == epochs


def test_protocol_epochs_rule_applies_to_128px_only_and_yields_to_the_config():
    assert protocol_settings(build_config({}, ["dataset=imagenette"]), images_per_class=40).epochs == 1500
    assert protocol_settings(build_config({}, ["dataset=imagenette"]), images_per_class=4).epochs == 2000
    assert protocol_settings(build_config({}, ["dataset=cifar10"]), images_per_class=4).epochs == 1500
    assert protocol_settings(build_config({}, ["dataset=imagenette", "evaluate.epochs=5"]), 4).epochs == 5
    assert protocol_settings(build_config({}, ["evaluate.protocol=dc"]), 4).epochs == 1000


def test_published_numbers_match_spec_and_sit_beside_ours():
    published = published_results()
    row = published.query("table == 'main' and method == 'tgdd' and dataset == 'cifar100' and ipc == 50")
    assert row["accuracy"].item() == 54.6
    assert len(published.query("table == 'cross_arch'")) == 9
    ours = pd.DataFrame(
        [
            {"dataset": "cifar10", "ipc": 10, "method": "tgdd", "arch": "convnet-3", "protocol": "tgdd",
             "mean": 60.0, "std": 1.0, "n_runs": 3, "epochs": 300},
            {"dataset": "cifar10", "ipc": 50, "method": "dm", "arch": "resnet10-ap", "protocol": "tgdd",
             "mean": 50.0, "std": 2.0, "n_runs": 3, "epochs": 300},
        ]
    )  # fmt: skip
    text = comparison_tables(ours)
    lines = [line.replace(" ", "") for line in text.splitlines()]
    assert "|cifar10|10|convnet-3|tgdd|60.0±1.0|71.9|1|3|300|" in lines  # n_seeds, n_runs, epochs
    assert "`cross_arch`" in text and "58.6" in text
    assert headline_metrics(ours)["cifar10"]["ipc10"]["tgdd"]["convnet-3/tgdd"] == {
        "mean": 60.0, "std": 1.0, "std_over": "runs (ddof=0)", "n_seeds": 1, "n_runs": 3, "epochs": 300
    }  # fmt: skip


def _planned(name: str, tmp_path) -> dict[str, int]:
    cfg = load_config(CONFIG / name, [f"paths.data={tmp_path}", f"paths.results={tmp_path}"])
    return pd.Series([step for step, _, _ in steps.plan(cfg)]).value_counts().to_dict()


def test_ablation_preset_is_the_papers_four_rows(tmp_path):
    cfg = load_config(CONFIG / "paper_ablation.yaml")
    cells = steps.matrix_configs(cfg)
    assert {(c.dataset, c.distill.ipc) for c in cells} == {("cifar10", 10), ("cifar10", 50), ("cifar100", 10),
                                                           ("cifar100", 50)}  # fmt: skip
    rows = {c.variant: c for c in cells if c.dataset == "cifar10" and c.distill.ipc == 10}
    assert list(rows) == ["none", "augmentation", "augmentation+mmd", "full"]
    assert (rows["none"].distill.iterations, rows["none"].distill.dsa_strategy, rows["none"].evaluate.augment) == (
        0, "none", "none")  # fmt: skip
    assert (rows["augmentation"].distill.iterations, rows["augmentation"].evaluate.augment) == (0, "protocol")
    assert rows["augmentation+mmd"].distill.tgdd.alpha == 0.0 and rows["full"].variant_overrides == {}
    # one set of experts per data set, shared by the four rows; 16 cells distilled and evaluated
    assert _planned("paper_ablation.yaml", tmp_path) == {"prepare": 2, "experts": 2, "distill": 16, "evaluate": 16,
                                                         "report": 1}  # fmt: skip
    published = published_results().query("table == 'ablation'")
    assert published.set_index(["variant", "dataset", "ipc"])["accuracy"].to_dict()[("none", "cifar10", 10)] == 55.2
    assert sorted(published["variant"].unique()) == sorted(rows)


def test_sensitivity_preset_sweeps_one_key_per_variant(tmp_path):
    cells = steps.matrix_configs(load_config(CONFIG / "paper_sensitivity.yaml"))
    swept = {next(iter(c.variant_overrides)) for c in cells}
    assert swept == {"distill.tgdd.alpha", "experts.num_trajectories", "experts.epochs", "distill.tgdd.expert_region"}
    assert all(len(c.variant_overrides) == 1 for c in cells)
    # own trajectories for N = 1..4 and E = 20, 40 (N = 5 and E = 60 are the shared ones)
    assert _planned("paper_sensitivity.yaml", tmp_path)["experts"] == 7


def test_continual_preset_runs_both_step_counts_on_cifar100(tmp_path):
    cfg = load_config(CONFIG / "paper_continual.yaml")
    assert cfg.continual.enabled and cfg.continual.steps == [5, 10] and cfg.dataset == "cifar100"
    assert _planned("paper_continual.yaml", tmp_path)["continual"] == 5  # one step per cell, both counts in it
