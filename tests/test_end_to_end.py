"""The CLI steps end to end on a tiny digits configuration, and determinism of the outputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tgdd import paths, steps
from tgdd.cli import main
from tgdd.errors import TgddError
from tgdd.synthetic import load_synthetic

from .conftest import TINY, tiny_config


def _write_config(tmp_path: Path) -> Path:
    tree = {**TINY, "paths": {"data": str(tmp_path / "data"), "results": str(tmp_path / "results")}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """prepare -> experts -> distill (3 methods x 2 IPCs) -> evaluate -> report, through the CLI."""
    root = tmp_path_factory.mktemp("e2e")
    config = _write_config(root)
    assert main(["prepare", "--config", str(config), "-q"]) == 0
    assert main(["experts", "--config", str(config), "-q"]) == 0
    for method in ("tgdd", "dm", "random"):
        for ipc in (1, 2):
            overrides = [f"distill.method={method}", f"distill.ipc={ipc}"]
            assert main(["distill", "--config", str(config), "-q", *overrides]) == 0
            assert main(["evaluate", "--config", str(config), "-q", *overrides]) == 0
    assert main(["report", "--config", str(config), "-q"]) == 0
    return root


def test_pipeline_artifacts(tiny_run: Path):
    cfg = tiny_config(tiny_run)
    manifest = json.loads((paths.experts_dir(cfg) / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["trajectories"]) == 2
    assert all(0 <= t["final_test_accuracy"] <= 1 for t in manifest["trajectories"])
    blob = torch.load(paths.experts_dir(cfg) / "trajectory_00.pt", weights_only=True)
    assert len(blob["snapshots"]) == cfg.experts.epochs + 1

    syn_cfg = cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"method": "tgdd", "ipc": 2})})
    syn = load_synthetic(paths.synthetic_file(syn_cfg))
    assert syn.images.shape == (10 * 2, 1, 16, 16) and syn.factor == 2
    # clamped to [0, 1] before each iteration, stored after the last step unclamped (as the authors')
    assert syn.images.min() > -0.5 and syn.images.max() < 1.5 and not torch.equal(syn.images, syn.images.clamp(0, 1))
    assert (syn.meta["settings"]["init"], syn.meta["settings"]["augment_semantics"]) == ("mix", "idc")
    assert syn.meta["settings"]["tgdd"]["alpha"] == 2.5 and syn.meta["config"]["seed"] == 0
    assert syn.meta["code"]["git_commit"] is not None
    assert (paths.synthetic_dir(syn_cfg) / "grid.png").read_bytes()[:4] == b"\x89PNG"
    losses = pd.read_csv(paths.synthetic_dir(syn_cfg) / "losses.csv")
    assert list(losses.columns) == ["iteration", "loss", "mmd", "sdc"] and len(losses) == 4

    result = json.loads(paths.evaluation_file(syn_cfg, "convnet-1-w16").read_text())
    assert result["runs"] == 2 and len(set(result["seeds"])) == 2 and len(result["accuracies"]) == 2
    assert result["protocol_settings"]["epochs"] == 2 and "flip" not in result["protocol_settings"]["augment"]
    assert result["mean"] == pytest.approx(sum(result["accuracies"]) / 2)
    assert result["train_images"] == 10 * 2 * 4  # decoded: ipc x f^2 per class

    summary = pd.read_csv(cfg.paths.results / "tables" / "summary.csv")
    for column in ["dataset", "ipc", "method", "arch", "protocol", "mean", "std", "n_runs"]:
        assert column in summary.columns
    assert len(summary) == 6 and set(summary["method"]) == {"tgdd", "dm", "random"}
    markdown = (cfg.paths.results / "tables" / "summary.md").read_text()
    assert "digits IPC 1" in markdown and "±" in markdown


def test_random_selection_picks_real_training_images(tiny_run: Path):
    cfg = tiny_config(tiny_run, "distill.method=random", "distill.ipc=2")
    syn = load_synthetic(paths.synthetic_file(cfg))
    train = torch.load(paths.prepared_dir(cfg) / "train.pt", weights_only=True)
    pool = train["images"].float() / 255
    for image, label in zip(syn.images, syn.labels, strict=True):
        same = (pool == image).flatten(1).all(1)
        assert same.any() and int(train["labels"][same.nonzero()[0]]) == int(label)


def test_same_seed_gives_bit_identical_synthetic_sets(tiny_run: Path, tmp_path: Path):
    shutil.copytree(tiny_run / "data", tmp_path / "data")
    shutil.copytree(tiny_run / "results" / "experts", tmp_path / "results" / "experts")
    for method in ("tgdd", "dm"):
        cfg = tiny_config(tmp_path, f"distill.method={method}", "distill.ipc=2")
        again = load_synthetic(steps.distill(cfg)[0])
        first = load_synthetic(paths.synthetic_file(tiny_config(tiny_run, f"distill.method={method}", "distill.ipc=2")))
        assert torch.equal(again.images, first.images)


def test_distillation_moves_images_away_from_their_initialisation(tiny_run: Path):
    cfg = tiny_config(tiny_run, "distill.method=tgdd", "distill.ipc=2")
    syn = load_synthetic(paths.synthetic_file(cfg))
    train = torch.load(paths.prepared_dir(cfg) / "train.pt", weights_only=True)
    pool = train["images"].float() / 255
    assert not any((pool == image).flatten(1).all(1).any() for image in syn.images)


def test_evaluation_is_repeatable(tiny_run: Path, tmp_path: Path):
    shutil.copytree(tiny_run, tmp_path / "copy")
    cfg = tiny_config(tmp_path / "copy", "distill.method=dm", "distill.ipc=1")
    first = json.loads(
        paths.evaluation_file(tiny_config(tiny_run, "distill.method=dm", "distill.ipc=1"), "convnet-1-w16").read_text()
    )
    second = json.loads(steps.evaluate(cfg)[0].read_text())
    assert first["accuracies"] == second["accuracies"]


def test_missing_inputs_give_clear_errors(tmp_path: Path, tiny_run: Path):
    cfg = tiny_config(tmp_path)
    with pytest.raises(TgddError, match="run `tgdd prepare` first"):
        steps.distill(cfg)
    shutil.copytree(tiny_run / "data", tmp_path / "data")
    with pytest.raises(TgddError, match="no expert trajectories .* run `tgdd experts` first"):
        steps.distill(cfg)
    with pytest.raises(TgddError, match="no synthetic set .* run `tgdd distill` first"):
        steps.evaluate(cfg)
    shutil.copytree(tiny_run / "results" / "experts", tmp_path / "results" / "experts")
    with pytest.raises(TgddError, match=r"do not match the config \(recipe\.epochs: have 2, config wants 3;"):
        steps.distill(tiny_config(tmp_path, "experts.epochs=3"))
    with pytest.raises(TgddError, match="distill.ipc=500 needs 2000 real images per class"):  # mix: f*f each
        steps.distill(tiny_config(tmp_path, "distill.ipc=500"))
    with pytest.raises(TgddError, match="distill.ipc=500 needs 500 real images per class"):
        steps.distill(tiny_config(tmp_path, "distill.ipc=500", "distill.init=real"))


def test_cli_errors_are_one_line_and_nonzero(tmp_path: Path):
    config = _write_config(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "tgdd.cli", "distill", "--config", str(config), "distill.ipcc=3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown config key 'distill.ipcc'" in proc.stderr and "Did you mean 'ipc'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_expert_training_subset_is_class_balanced_and_seeded(prepared_root):
    from tgdd.data.prepared import load_prepared
    from tgdd.experts import expert_training_set

    cfg = tiny_config(prepared_root, "experts.train_per_class=7")
    train = load_prepared(paths.prepared_dir(cfg), "train", "digits")
    subset = expert_training_set(cfg, train)
    assert torch.bincount(subset.labels).tolist() == [7] * 10
    assert torch.equal(subset.images, expert_training_set(cfg, train).images)
    assert not torch.equal(subset.images, expert_training_set(cfg.with_overrides("experts.seed=1"), train).images)
    # the experts' seed, not the run's: distillation seeds share one set of experts
    assert torch.equal(subset.images, expert_training_set(cfg.with_overrides("seed=1"), train).images)
    assert expert_training_set(tiny_config(prepared_root), train) is train
