"""Killed and stopped distillations resume to the bit-identical result of an uninterrupted run."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tgdd import paths, steps
from tgdd.synthetic import load_synthetic

from .conftest import TINY, tiny_config, with_trained_experts

OVERRIDES = ["distill.method=tgdd", "distill.ipc=1", "distill.iterations=60", "distill.checkpoint_every=3"]


@pytest.fixture(scope="module")
def with_experts(tmp_path_factory, prepared_root) -> Path:
    return with_trained_experts(prepared_root, tmp_path_factory, "resume")


def _clone(src: Path, dst: Path) -> Path:
    shutil.copytree(src / "data", dst / "data")
    shutil.copytree(src / "results" / "experts", dst / "results" / "experts")
    tree = {**TINY, "paths": {"data": str(dst / "data"), "results": str(dst / "results")}}
    (dst / "tiny.yaml").write_text(yaml.safe_dump(tree))
    return dst / "tiny.yaml"


def _start(config: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tgdd.cli", "distill", "-q", "--config", str(config), *OVERRIDES],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert proc.poll() is None, f"distill ended before its first checkpoint: {proc.communicate()}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def uninterrupted(with_experts: Path) -> torch.Tensor:
    cfg = tiny_config(with_experts, *OVERRIDES)
    return load_synthetic(steps.distill(cfg)[0]).images


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_run_resumes_bit_identically(how, with_experts, uninterrupted, tmp_path):
    config = _clone(with_experts, tmp_path)
    cfg = tiny_config(tmp_path, *OVERRIDES)
    checkpoint = paths.synthetic_dir(cfg) / "checkpoint.pt"
    proc = _start(config)
    _wait_for(checkpoint, proc)
    time.sleep(0.3)
    proc.send_signal(how)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert not paths.synthetic_file(cfg).exists(), "a killed run must not leave a finished synthetic set"
    assert checkpoint.is_file()
    if how == signal.SIGTERM:
        assert "stopped by SIGTERM" in stderr and "rerun the same command to resume" in stderr
    resumed_from = torch.load(checkpoint, weights_only=True)["state"]["iteration"]
    assert 0 < resumed_from < 60
    rerun = _start(config)
    _, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    assert torch.equal(load_synthetic(paths.synthetic_file(cfg)).images, uninterrupted)
    assert not checkpoint.exists(), "a finished run removes its checkpoint"


def test_checkpoint_for_other_settings_is_ignored(with_experts, uninterrupted, tmp_path):
    _clone(with_experts, tmp_path)
    cfg = tiny_config(tmp_path, *OVERRIDES)
    checkpoint = paths.synthetic_dir(cfg) / "checkpoint.pt"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"identity": {"settings": "something else"}, "state": {}}, checkpoint)
    assert torch.equal(load_synthetic(steps.distill(cfg)[0]).images, uninterrupted)


def test_expert_training_resumes_bit_identically_after_sigterm(prepared_root, tmp_path):
    overrides = ["experts.num_trajectories=1", "experts.epochs=80"]
    reference = tmp_path / "reference"
    shutil.copytree(prepared_root / "data", reference / "data")
    steps.experts(tiny_config(reference, *overrides))
    expected = torch.load(paths.experts_dir(tiny_config(reference, *overrides)) / "trajectory_00.pt", weights_only=True)

    work = tmp_path / "work"
    shutil.copytree(prepared_root / "data", work / "data")
    tree = {**TINY, "paths": {"data": str(work / "data"), "results": str(work / "results")}}
    (work / "tiny.yaml").write_text(yaml.safe_dump(tree))
    cfg = tiny_config(work, *overrides)
    command = [sys.executable, "-m", "tgdd.cli", "experts", "-q", "--config", str(work / "tiny.yaml"), *overrides]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoint = paths.experts_dir(cfg) / "trajectory_00.ckpt.pt"
    _wait_for(checkpoint, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "stopped by SIGTERM" in stderr
    assert not (paths.experts_dir(cfg) / "trajectory_00.pt").exists()
    epoch = torch.load(checkpoint, weights_only=True)["state"]["epoch"]
    assert 0 < epoch < 80
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    resumed = torch.load(paths.experts_dir(cfg) / "trajectory_00.pt", weights_only=True)
    assert len(resumed["snapshots"]) == 81
    for got, want in zip(resumed["snapshots"], expected["snapshots"], strict=True):
        assert all(torch.equal(got[k], want[k]) for k in want)
    assert not checkpoint.exists()
