"""Bad input gets one clear error, a non-zero exit, and corrupts nothing (README's table)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from tgdd import paths, steps
from tgdd.artifacts import sha256_file
from tgdd.cli import main
from tgdd.errors import TgddError
from tgdd.synthetic import load_synthetic

from .conftest import tiny_config, with_trained_experts


@pytest.fixture(scope="module")
def ready(tmp_path_factory, prepared_root) -> Path:
    """Prepared digits, trajectories and one TGDD synthetic set (IPC 1)."""
    root = with_trained_experts(prepared_root, tmp_path_factory, "bad")
    steps.distill(tiny_config(root, "distill.ipc=1"))
    return root


def _copy(ready: Path, tmp_path: Path) -> Path:
    shutil.copytree(ready, tmp_path / "w")
    return tmp_path / "w"


def test_truncated_trajectory_file(ready, tmp_path):
    root = _copy(ready, tmp_path)
    cfg = tiny_config(root, "distill.ipc=2")
    trajectory = paths.experts_dir(cfg) / "trajectory_01.pt"
    trajectory.write_bytes(trajectory.read_bytes()[:1000])
    with pytest.raises(TgddError, match=r"trajectory_01.pt fails its checksum \(truncated or changed\)"):
        steps.distill(cfg)
    assert not paths.synthetic_file(cfg).exists()


def test_trajectories_of_another_architecture_or_class_count(ready, tmp_path):
    root = _copy(ready, tmp_path)
    experts = paths.experts_dir(tiny_config(root))
    other = paths.experts_dir(tiny_config(root, "experts.arch=convnet-2-w16"))
    other.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(experts, other)
    with pytest.raises(
        TgddError, match=r"do not match the config \(recipe.arch: have 'convnet-1-w16', config wants 'convnet-2-w16'\)"
    ):
        steps.distill(tiny_config(root, "experts.arch=convnet-2-w16"))
    manifest = experts / "manifest.json"
    recorded = json.loads(manifest.read_text())
    recorded["identity"]["train_sha256"] = "0" * 64  # trajectories of other training data (another class count...)
    manifest.write_text(json.dumps(recorded))
    with pytest.raises(TgddError, match=r"train_sha256: have '0{64}', config wants '[0-9a-f]{64}'"):
        steps.distill(tiny_config(root))


def test_synthetic_set_from_other_trajectories_or_data_is_refused(ready, tmp_path):
    root = _copy(ready, tmp_path)
    cfg = tiny_config(root, "distill.ipc=1")
    syn_path = paths.synthetic_file(cfg)
    shutil.rmtree(paths.experts_dir(cfg))
    steps.experts(tiny_config(root, "seed=0", "experts.lr=0.02"))  # retrained: a new manifest
    with pytest.raises(TgddError, match="was distilled from other trajectories"):
        steps.evaluate(tiny_config(root, "distill.ipc=1", "experts.lr=0.02"))
    blob = torch.load(syn_path, weights_only=True)
    blob["meta"]["inputs"]["train_sha256"] = "0" * 64
    torch.save(blob, syn_path)
    with pytest.raises(TgddError, match="was distilled from other training data"):
        steps.evaluate(cfg)


def _poison_last_snapshot(cfg) -> None:
    """Put NaN into trajectory 1's last snapshot (and re-record its hash, as a bad expert would have)."""
    experts = paths.experts_dir(cfg)
    path = experts / "trajectory_01.pt"
    blob = torch.load(path, weights_only=True)
    for tensor in blob["snapshots"][-1].values():
        tensor.fill_(float("nan"))
    torch.save(blob, path)
    manifest = json.loads((experts / "manifest.json").read_text())
    manifest["trajectories"][1]["sha256"] = sha256_file(path)
    (experts / "manifest.json").write_text(json.dumps(manifest))


def test_nan_loss_names_the_iteration_and_keeps_the_last_good_checkpoint(ready, tmp_path):
    root = _copy(ready, tmp_path)
    _poison_last_snapshot(tiny_config(root))
    for seed_offset in range(10):  # the stage draw is seeded: find a run whose first NaN comes after iteration 0
        cfg = tiny_config(
            root, "distill.ipc=2", "distill.checkpoint_every=1", "distill.iterations=40", f"seed={seed_offset}"
        )
        if seed_offset:  # the poisoned trajectories, under this seed's path
            shutil.copytree(paths.experts_dir(tiny_config(root)), paths.experts_dir(cfg))
        with pytest.raises(
            TgddError, match=r"loss became nan at iteration (\d+); the last good checkpoint is kept"
        ) as info:
            steps.distill(cfg)
        failed_at = int(re.search(r"iteration (\d+)", str(info.value)).group(1))
        assert not paths.synthetic_file(cfg).exists()
        if failed_at > 0:
            checkpoint = torch.load(paths.synthetic_dir(cfg) / "checkpoint.pt", weights_only=True)
            assert checkpoint["state"]["iteration"] == failed_at
            assert all(torch.isfinite(x).all() for x in checkpoint["state"]["images"])
            return
    pytest.fail("no seed produced a NaN after iteration 0")


def test_unwritable_output_directory(ready, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cfg = tiny_config(ready, f"paths.results={blocker / 'results'}", "distill.method=random")
    with pytest.raises(TgddError, match="cannot write to .*a-file"):
        steps.distill(cfg)


def test_corrupt_synthetic_set_and_prepared_file_exit_nonzero_with_one_line(ready, tmp_path, capsys):
    root = _copy(ready, tmp_path)
    cfg = tiny_config(root, "distill.ipc=1")
    paths.synthetic_file(cfg).write_bytes(b"garbage")
    with pytest.raises(TgddError, match="synthetic set .* is corrupt or truncated"):
        load_synthetic(paths.synthetic_file(cfg))
    overrides = [f"paths.data={root / 'data'}", f"paths.results={root / 'results'}", "distill.ipc=1"]
    args = ["evaluate", *overrides, "dataset=digits", "experts.arch=convnet-1-w16", "evaluate.archs=[convnet-1-w16]"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "corrupt or truncated" in err


def test_unknown_names_exit_2_before_any_compute(capsys, tmp_path):
    for override, message in [
        ("dataset=imagenet", "unknown dataset 'imagenet'"),
        ("distill.method=ftdx", "unknown method 'ftdx'"),
        ("evaluate.archs=[resnet19]", "unknown model 'resnet19'"),
        ("distill.ipc=-1", "distill.ipc"),
        ("seed=abc", "seed"),
    ]:
        assert main(["distill", f"paths.results={tmp_path}", override]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())
