"""The workflow on a real SLURM: `snakemake --profile slurm --profile slurm-ci` on the tiny
configuration, every job a SLURM job; a failing job is reported as failed, in bounded time.

Needs a running SLURM (`bash scripts/slurm-local.sh install && bash scripts/slurm-local.sh start`
on a single machine); skipped otherwise, unless TGDD_REQUIRE_SLURM=1 (then it fails).
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from .test_workflow import JOB_RULES, REPO, make_project, snakemake

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

PROFILES = ["--profile", "slurm", "--profile", "slurm-ci"]  # the cluster profile + this machine's overrides
GPU_RULES = {"tgdd_trajectory", "tgdd_distill", "tgdd_evaluate"}
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")


@pytest.fixture(scope="module")
def slurm():
    try:
        proc = subprocess.run(
            ["bash", str(REPO / "scripts" / "slurm-local.sh"), "status"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        running, detail = proc.returncode == 0, (proc.stdout + proc.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        running, detail = False, str(exc)
    if not running:
        message = f"no SLURM running ({detail or 'scripts/slurm-local.sh status failed'})"
        if os.environ.get("TGDD_REQUIRE_SLURM") == "1":
            pytest.fail(f"TGDD_REQUIRE_SLURM=1 but {message}")
        pytest.skip(f"{message}; start one: bash scripts/slurm-local.sh install && bash scripts/slurm-local.sh start")


# One SLURM run for all tests (the status polling of the executor makes each wave of jobs cost
# ~12-30 s): the tiny matrix plus one deliberately failing job, with --keep-going so the good
# jobs finish. IPC 1000 does not fit digits (at most ~180 images per class): `tgdd distill` exits 2.
BAD_TARGET = "results/synthetic/digits/random/ipc1000/seed0/synthetic.pt"


@pytest.fixture(scope="module")
def slurm_project(slurm, tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("slurm") / "project")
    proc = snakemake("all", BAD_TARGET, *PROFILES, "--keep-going", cwd=project, limit=420, check=False)
    return project, proc


def job_state(job_id: str) -> dict[str, str]:
    """`scontrol show job -d -o` as a dict (finished jobs stay visible for MinJobAge)."""
    out = subprocess.run(
        ["scontrol", "show", "job", "-d", "-o", job_id], capture_output=True, text=True, timeout=30
    ).stdout
    return dict(item.split("=", 1) for item in out.split() if "=" in item)


def test_every_job_is_a_slurm_job(slurm_project):
    project, proc = slurm_project
    out = proc.stdout
    submitted = SUBMITTED.findall(out)
    # 1 prepare + 2 trajectories + 1 gather + 2 distill + 2 evaluate + 1 report, and the failing distill job
    assert len(submitted) == 10, out[-4000:]
    trajectory_jobs = [job for job, log in submitted if "/rule_tgdd_trajectory/" in log]
    assert len(set(trajectory_jobs)) == 2  # each trajectory its own SLURM job (with its GPU, below)
    assert not re.search(r"^localrule tgdd_", out, flags=re.MULTILINE), "a tgdd step ran outside SLURM"
    rules = set()
    for job_id, log in submitted:
        assert os.path.isfile(log), f"no SLURM log {log}"
        rules.add(re.search(r"slurm_logs/rule_(\w+)/", log).group(1))
        state = job_state(job_id)
        want = "FAILED" if "_1000_" in log else "COMPLETED"
        assert state.get("JobState") == want, (log, state)
        assert state.get("Partition") == "debug", state
        # The rules' GPU requests (`gpu=1`) reach SLURM through the executor's `gpu` resource and
        # are granted (the test node advertises placeholder GPUs): exactly the training steps.
        wants_gpu = re.search(r"rule_(\w+)/", log).group(1) in GPU_RULES
        assert (state.get("TresPerJob") == "gres:gpu:1") == wants_gpu, (log, state)  # requested
        assert (state.get("JOB_GRES") == "gpu:1") == wants_gpu, (log, state)  # allocated
        # Sized from the cell's work (tgdd.cost), not by data set: tiny jobs ask for minutes.
        hours, minutes, _ = (int(x) for x in state["TimeLimit"].split(":"))
        assert 5 <= 60 * hours + minutes <= 15 or "rule_tgdd_report/" in log, (log, state["TimeLimit"])
    assert rules == set(JOB_RULES)
    for rule in JOB_RULES:
        assert list((project / ".snakemake" / "slurm_logs" / f"rule_{rule}").rglob("*.log")), rule


def test_slurm_outputs_are_the_cli_outputs(slurm_project):
    project, _ = slurm_project
    summary = (project / "results" / "tables" / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + 2
    for method in ("tgdd", "random"):
        assert (project / f"results/eval/digits/{method}/ipc1/seed0/convnet-1-w16__tgdd.json").is_file()
    # Nothing half-done and no lock left behind by the failure.
    assert "Nothing to be done" in snakemake("-n", *PROFILES, cwd=project).stdout


def test_failing_job_is_reported_as_failed(slurm_project):
    project, proc = slurm_project
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert proc.seconds < 400  # bounded: the run ends once the good jobs are done
    error = proc.stdout.split("Error in rule tgdd_distill:", 1)[1][:1500]
    assert "ipc=1000" in error and "FAILED" in error
    assert not (project / BAD_TARGET).exists()
    log = (project / "logs/tgdd_distill/digits/random/ipc1000/seed0.log").read_text()
    assert "tgdd distill: error: distill.ipc=1000" in log, log[-2000:]
