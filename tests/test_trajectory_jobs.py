"""One Snakemake job per expert trajectory (issue 12, part 1), through real Snakemake: the
trajectories of a set can run at once, a killed trajectory resumes from its epoch checkpoint while
finished ones stay untouched, more trajectories train only the new ones, and every route ends
with bit-identical synthetic sets."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from .test_workflow import BIN, env, job_counts, make_project, snakemake, tiny_tree

pytestmark = pytest.mark.slow

EXPERTS = "results/experts/digits/tgdd/convnet-1-w16/seed0"
SYNTHETIC = "results/synthetic/digits/tgdd/ipc1/seed0/synthetic.pt"


def tree(trajectories: int) -> dict:
    # enough epochs that a trajectory job is still training when the test looks for it
    return tiny_tree(matrix__methods=["tgdd"], experts__num_trajectories=trajectories, experts__epochs=12)


def trajectories(project: Path) -> dict[str, tuple[str, int]]:
    """{file name: (sha256, mtime_ns)} of the finished trajectory files."""
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted((project / EXPERTS).glob("trajectory_??.pt"))
    }


def job_processes(project: Path, pattern: str) -> list[int]:
    """Processes whose command line matches ``pattern`` and that run in ``project``."""
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found if Path(f"/proc/{pid}/cwd").resolve() == project.resolve()]


def set_trajectories(project: Path, count: int) -> None:
    path = project / "config" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["experts"]["num_trajectories"] = count
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def test_quick_matrix_dry_run_has_one_job_per_trajectory_and_a_gather(tmp_path):
    """The trajectories depend on the prepared data only (so they run at once, on as many GPUs);
    the gather depends on all of them; every distill job of a trajectory method on the gather."""
    quick = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "config.yaml").read_text())
    project = make_project(tmp_path / "project", quick)
    dag = snakemake("--dag", "--cores", "2", cwd=project).stdout
    labels = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)', dag, flags=re.MULTILINE))
    edges = re.findall(r"^\s*(\d+) -> (\d+)", dag, flags=re.MULTILINE)
    parents = {node: {labels[a] for a, b in edges if b == node} for node in labels}
    trajectory_nodes = [n for n, rule in labels.items() if rule == "tgdd_trajectory"]
    assert len(trajectory_nodes) == quick["experts"]["num_trajectories"] == 2
    assert all(parents[n] == {"tgdd_prepare"} for n in trajectory_nodes)  # not on each other
    gathers = [n for n, rule in labels.items() if rule == "tgdd_experts"]
    assert len(gathers) == 1 and parents[gathers[0]] == {"tgdd_prepare", "tgdd_trajectory"}
    assert sum(1 for a, b in edges if a in trajectory_nodes and b == gathers[0]) == 2


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """Two trajectories, then three: only the third is trained (the others keep hash and mtime)."""
    project = make_project(tmp_path_factory.mktemp("grow") / "project", tree(2))
    snakemake("--cores", "1", cwd=project, limit=600)
    before = trajectories(project)
    assert sorted(before) == ["trajectory_00.pt", "trajectory_01.pt"]
    set_trajectories(project, 3)
    dry = snakemake("-n", "--cores", "1", cwd=project).stdout
    counts = job_counts(dry)
    assert counts == {"all": 1, "tgdd_trajectory": 1, "tgdd_experts": 1, "tgdd_distill": 1, "tgdd_evaluate": 1,
                      "tgdd_report": 1}, dry[-3000:]  # fmt: skip
    assert "trajectory_02.pt" in dry.split("rule tgdd_trajectory:", 1)[1].split("\n\n", 1)[0]
    snakemake("--cores", "1", cwd=project, limit=600)
    after = trajectories(project)
    assert {k: after[k] for k in before} == before and "trajectory_02.pt" in after
    return project


def test_raising_num_trajectories_trains_only_the_new_one(uninterrupted):
    assert len(trajectories(uninterrupted)) == 3


def test_killed_trajectory_resumes_and_finished_ones_stay_untouched(uninterrupted, tmp_path):
    project = make_project(tmp_path / "project", tree(3))
    experts = project / EXPERTS
    proc = subprocess.Popen(
        [str(BIN / "snakemake"), "--cores", "1"], cwd=project, env=env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    killed = None
    deadline = time.monotonic() + 500
    while time.monotonic() < deadline and killed is None and proc.poll() is None:
        done = list(experts.glob("trajectory_??.pt")) if experts.is_dir() else []
        training = list(experts.glob("trajectory_??.ckpt.pt")) if experts.is_dir() else []
        if len(done) == 2 and training:  # the third trajectory job is past its first epoch
            killed = training[0].name.replace(".ckpt.pt", ".pt")
            job = job_processes(project, f"experts --config .* --index {killed[11:13]}")
            assert job, "the trajectory job's process was not found"
            for pid in job:
                os.kill(pid, signal.SIGTERM)  # what SLURM sends before a time limit
        time.sleep(0.05)
    out = proc.communicate(timeout=300)[0]
    assert killed is not None, out[-3000:]
    assert proc.returncode != 0, out[-3000:]  # the job stopped (its checkpoint written), the workflow failed
    assert not (experts / killed).exists() and (experts / killed.replace(".pt", ".ckpt.pt")).is_file()
    finished = trajectories(project)
    assert len(finished) == 2

    rerun = snakemake("--cores", "1", cwd=project, limit=600).stdout
    assert job_counts(rerun)["tgdd_trajectory"] == 1  # only the interrupted one
    after = trajectories(project)
    assert {k: after[k] for k in finished} == finished  # same hash, same mtime
    log = (
        project / f"logs/tgdd_trajectory/digits/tgdd/convnet-1-w16/seed0/{killed.replace('.pt', '.log')}"
    ).read_text()
    assert "resuming from checkpoint" in log
    # ... and the result is the uninterrupted run's, bit for bit.
    for name in after:
        ours, reference = (torch.load(p / EXPERTS / name, weights_only=True) for p in (project, uninterrupted))
        same = {k: v for k, v in ours["identity"].items() if k != "train_sha256"}  # (each project's own file)
        assert same == {k: v for k, v in reference["identity"].items() if k != "train_sha256"}, name
        for a, b in zip(ours["snapshots"], reference["snapshots"], strict=True):
            assert all(torch.equal(a[k], b[k]) for k in a), name
    ours = torch.load(project / SYNTHETIC, weights_only=False)["images"]
    reference = torch.load(uninterrupted / SYNTHETIC, weights_only=False)["images"]
    assert torch.equal(ours, reference)
