"""`tgdd pipeline` redoes exactly what a config change affects, from the artifacts' own records
(the single-process counterpart of Snakemake's params trigger)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tgdd import paths, steps
from tgdd.errors import TgddError
from tgdd.freshness import changes

from .conftest import tiny_config

MATRIX = ("matrix.methods=[tgdd,random]", "matrix.ipcs=[1]")


def planned(root: Path, *overrides: str) -> dict[tuple[str, str], str]:
    """{(step, method or ''): reason} of the plan under the tiny config plus ``overrides``."""
    found = {}
    for step, cfg, reason in steps.plan(tiny_config(root, *MATRIX, *overrides)):
        key = (step, cfg.distill.method if step in ("distill", "evaluate") else "")
        assert key not in found, key
        found[key] = reason
    return found


@pytest.fixture(scope="module")
def done(prepared_root, tmp_path_factory) -> Path:
    """The tiny matrix (TGDD and random, IPC 1) run to the end by `tgdd pipeline`."""
    root = tmp_path_factory.mktemp("fresh")
    shutil.copytree(prepared_root / "data", root / "data")
    steps.pipeline(tiny_config(root, *MATRIX))
    return root


def test_a_finished_matrix_plans_only_the_report(done):
    assert planned(done) == {("report", ""): "always"}


def test_changed_distill_setting_redoes_distillation_and_its_evaluations(done):
    plan = planned(done, "distill.iterations=5")
    assert plan == {
        ("distill", "tgdd"): "distill.iterations: 4 -> 5",
        ("evaluate", "tgdd"): "its synthetic set is (re)distilled",
        ("distill", "random"): "distill.iterations: 4 -> 5",
        ("evaluate", "random"): "its synthetic set is (re)distilled",
        ("report", ""): "always",
    }


def test_changed_evaluate_setting_redoes_evaluations_only(done):
    assert planned(done, "evaluate.epochs=3") == {
        ("evaluate", "tgdd"): "evaluate.epochs: 2 -> 3",
        ("evaluate", "random"): "evaluate.epochs: 2 -> 3",
        ("report", ""): "always",
    }


def test_changed_expert_setting_retrains_and_redoes_only_methods_that_use_trajectories(done):
    assert planned(done, "experts.lr=0.02") == {
        ("experts", ""): "experts.lr: 0.01 -> 0.02",
        ("distill", "tgdd"): "its expert trajectories are (re)trained",
        ("evaluate", "tgdd"): "its synthetic set is (re)distilled",
        ("report", ""): "always",
    }


def test_changed_inputs_are_noticed_without_any_config_change(done, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(done, root)
    # Another synthetic set in place of the evaluated one (same settings, other content).
    cfg = tiny_config(root, *MATRIX, "distill.method=random", "distill.ipc=1")
    synthetic = paths.synthetic_file(cfg)
    synthetic.write_bytes(synthetic.read_bytes() + b"\0")
    # An evaluation written before evaluations recorded their settings.
    tgdd_cfg = tiny_config(root, *MATRIX, "distill.method=tgdd", "distill.ipc=1")
    old = paths.evaluation_file(tgdd_cfg, "convnet-1-w16")
    result = json.loads(old.read_text())
    del result["evaluate"]
    old.write_text(json.dumps(result))
    assert planned(root) == {
        ("evaluate", "random"): "its synthetic set changed",
        ("evaluate", "tgdd"): "written by an older tgdd, without its evaluate settings",
        ("report", ""): "always",
    }


def test_rerun_after_a_change_brings_everything_up_to_date(done, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(done, root)
    steps.pipeline(tiny_config(root, *MATRIX, "evaluate.epochs=3"))
    assert planned(root, "evaluate.epochs=3") == {("report", ""): "always"}
    cfg = tiny_config(root, *MATRIX, "distill.method=tgdd", "distill.ipc=1")
    assert json.loads(paths.evaluation_file(cfg, "convnet-1-w16").read_text())["protocol_settings"]["epochs"] == 3


def test_expert_training_recipe_is_part_of_the_trajectories_identity(done, tmp_path):
    """`tgdd experts` with another learning rate retrains (it used to keep the old files), and
    distillation refuses trajectories of another recipe, naming the setting."""
    root = tmp_path / "copy"
    shutil.copytree(done, root)
    cfg = tiny_config(root, *MATRIX)
    first = paths.experts_dir(cfg) / "trajectory_00.pt"
    before = first.read_bytes()
    steps.experts(tiny_config(root, *MATRIX, "experts.checkpoint_every=2"))  # no recipe change: kept
    assert first.read_bytes() == before
    steps.experts(tiny_config(root, *MATRIX, "experts.lr=0.02"))
    assert first.read_bytes() != before
    with pytest.raises(TgddError, match=r"lr: have 0\.02, config wants 0\.01"):
        steps.distill(tiny_config(root, *MATRIX, "distill.method=tgdd", "distill.ipc=1"))


def test_changes_lists_each_differing_key():
    assert changes({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": None}, "s") == ["s.b: 2 -> 3", "s.c: (none) -> None"]
    assert changes({"a": [1, 2]}, {"a": [1, 2]}, "s") == []
