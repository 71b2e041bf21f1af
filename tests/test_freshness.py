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
from tgdd.synthetic import load_synthetic, save_synthetic

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


def cell(root: Path, method: str):
    return tiny_config(root, *MATRIX, f"distill.method={method}", "distill.ipc=1")


@pytest.fixture
def copy(done, tmp_path) -> Path:
    """A copy of the finished matrix, to change."""
    return Path(shutil.copytree(done, tmp_path / "copy"))


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
        ("distill", "tgdd"): "distill.iterations (resolved): 4 -> 5",
        ("evaluate", "tgdd"): "its synthetic set is (re)distilled",
        ("distill", "random"): "distill.iterations (resolved): 4 -> 5",
        ("evaluate", "random"): "its synthetic set is (re)distilled",
        ("report", ""): "always",
    }


def test_changed_evaluate_setting_redoes_evaluations_only(done):
    why = (
        "evaluate.protocol_settings.epochs (resolved): 2 -> 3, "
        "evaluate.protocol_settings.milestone_epochs (resolved): [1] -> [2], "
        "evaluate.protocol_settings.trained_epochs (resolved): 2 -> 3"
    )
    assert planned(done, "evaluate.epochs=3") == {
        ("evaluate", "tgdd"): why,
        ("evaluate", "random"): why,
        ("report", ""): "always",
    }


def test_changed_expert_setting_retrains_and_redoes_only_methods_that_use_trajectories(done):
    assert planned(done, "experts.lr=0.02") == {
        (
            "experts",
            "",
        ): "trajectory 0: experts.lr (resolved): 0.01 -> 0.02; trajectory 1: experts.lr (resolved): 0.01 -> 0.02",
        ("distill", "tgdd"): "its expert trajectories are (re)trained (kept if they come out the same)",
        ("evaluate", "tgdd"): "its synthetic set is (re)distilled",
        ("report", ""): "always",
    }


def test_changed_inputs_are_noticed_without_any_config_change(copy):
    # Another synthetic set in place of the evaluated one (same settings, other content).
    synthetic = paths.synthetic_file(cell(copy, "random"))
    syn = load_synthetic(synthetic)
    syn.images[0, 0, 0, 0] += 0.5
    save_synthetic(synthetic, syn)
    # An evaluation written before evaluations recorded their settings.
    old = paths.evaluation_file(cell(copy, "tgdd"), "convnet-1-w16")
    result = json.loads(old.read_text())
    del result["protocol_settings"]
    old.write_text(json.dumps(result))
    assert planned(copy) == {
        ("evaluate", "random"): "its synthetic set changed",
        ("evaluate", "tgdd"): "written by an older tgdd, without its resolved protocol settings",
        ("report", ""): "always",
    }


def test_rerun_after_a_change_brings_everything_up_to_date(copy):
    steps.pipeline(tiny_config(copy, *MATRIX, "evaluate.epochs=3"))
    assert planned(copy, "evaluate.epochs=3") == {("report", ""): "always"}
    result = json.loads(paths.evaluation_file(cell(copy, "tgdd"), "convnet-1-w16").read_text())
    assert result["protocol_settings"]["epochs"] == 3


def test_expert_training_recipe_is_part_of_the_trajectories_identity(copy):
    """`tgdd experts` with another learning rate retrains (it used to keep the old files), and
    distillation refuses trajectories of another recipe, naming the setting."""
    first = paths.experts_dir(tiny_config(copy, *MATRIX)) / "trajectory_00.pt"
    before = first.read_bytes()
    steps.experts(tiny_config(copy, *MATRIX, "experts.checkpoint_every=2"))  # no recipe change: kept
    assert first.read_bytes() == before
    steps.experts(tiny_config(copy, *MATRIX, "experts.lr=0.02"))
    assert first.read_bytes() != before
    with pytest.raises(TgddError, match=r"recipe\.lr: have 0\.02, config wants 0\.01"):
        steps.distill(cell(copy, "tgdd"))


def test_changes_lists_each_differing_key():
    assert changes({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": None}, "s") == ["s.b: 2 -> 3", "s.c: (none) -> None"]
    assert changes({"a": [1, 2]}, {"a": [1, 2]}, "s") == []
    assert changes({"t": {"alpha": 2.5}}, {"t": {"alpha": 1.0}}, "distill", " (resolved)") == [
        "distill.t.alpha (resolved): 2.5 -> 1.0"
    ]
    assert changes({"checkpoint_every": 1}, {"checkpoint_every": 5}, "x") == []  # never changes a result


def test_artifacts_of_the_old_semantics_are_stale(copy):
    """A synthetic set recorded before the fidelity change (no augmentation semantics, the old `real`
    start, the shared alpha) is redone, and says why."""
    from tgdd.artifacts import torch_load, torch_save

    synthetic = paths.synthetic_file(cell(copy, "tgdd"))
    blob = torch_load(synthetic, "synthetic set")
    settings = blob["meta"]["settings"]
    old = {k: v for k, v in settings.items() if k not in ("augment_semantics", "image_update", "tgdd")}
    blob["meta"]["settings"] = {**old, "init": "real", "alpha": 2.5, "expert_region": 7}
    torch_save(synthetic, blob)
    reason = planned(copy)[("distill", "tgdd")]
    assert "distill.augment_semantics (resolved): (none) -> 'idc'" in reason
    assert (
        "distill.init (resolved): 'real' -> 'mix'" in reason
        and "distill.tgdd.alpha (resolved): (none) -> 2.5" in reason
    )


def test_batched_classes_is_how_a_set_is_made_not_what_it_is(done):
    """distill.batched_classes: the same update (tests/test_methods.py), an execution choice recorded
    in the set ("auto" on this CPU: per class), never a reason to redistill."""
    from tgdd.synthetic import load_synthetic_meta

    meta = load_synthetic_meta(paths.synthetic_file(cell(done, "tgdd")))
    assert meta["settings"]["batched_classes"] == "auto" and meta["execution"] == {"batched_classes": False}
    assert planned(done, "distill.batched_classes=true") == {("report", ""): "always"}


def test_cuda_graphs_are_how_a_set_is_made_not_what_it_is(done):
    """distill.cuda_graphs: a replayed iteration runs the same kernels on the same values
    (tests/test_graphs_distill.py); recorded in the settings, never a reason to redistill."""
    from tgdd.synthetic import load_synthetic_meta

    assert load_synthetic_meta(paths.synthetic_file(cell(done, "tgdd")))["settings"]["cuda_graphs"] == "auto"
    assert planned(done, "distill.cuda_graphs=never") == {("report", ""): "always"}
    assert planned(done, "distill.compile=true") != {("report", ""): "always"}  # compiled kernels: another result
