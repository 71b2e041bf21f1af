"""The workflow layer for real: Snakemake (Snakefile, workflow/) and DVC (dvc.yaml) on a tiny
configuration, in a throwaway copy of the project (a git repository under tmp).

Every external command runs under `timeout`. The DVC tests share one reproduced project
(module fixture) and build on each other in file order: repro, up to date, report, a changed
parameter, a remote round trip.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tgdd.config import Config, build_config, config_dict

from .conftest import TINY
from .test_data import write_mnist_like

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# What the workflow needs of the project (src/tgdd only as a DVC dependency: the code that
# runs is the installed tgdd, i.e. this checkout).
PROJECT_FILES = ["Snakefile", "workflow", "config", "dvc.yaml", ".dvcignore", ".gitignore", "slurm", "slurm-ci"]
OUTPUT_DIRS = ["data/prepared", "results/experts", "results/synthetic", "results/eval", "results/tables"]
JOB_RULES = ["tgdd_prepare", "tgdd_trajectory", "tgdd_experts", "tgdd_distill", "tgdd_evaluate", "tgdd_report"]


def tiny_tree(**changes) -> dict:
    """The tests' tiny configuration: conftest's TINY with 2 methods x IPC 1 x 1 arch."""
    tree = json.loads(json.dumps(TINY))
    tree["distill"] = {**tree["distill"], "iterations": 3}
    tree["evaluate"] = {**tree["evaluate"], "archs": ["convnet-1-w16"], "epochs": 2}
    tree["matrix"] = {**tree["matrix"], "methods": ["tgdd", "random"], "ipcs": [1]}
    if "tracking" in Config.model_fields:  # no MLflow here: faster jobs, nothing written outside tmp
        tree["tracking"] = {"enabled": False}
    for dotted, value in changes.items():
        node = tree
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def write_config(path: Path, tree: dict) -> Path:
    """Every key written out (what `tgdd config` prints): DVC needs each tracked key present."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_dict(build_config(tree)), sort_keys=False))
    return path


def make_project(dst: Path, tree: dict | None = None) -> Path:
    """A copy of the workflow files with the tiny config as config/config.yaml."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst / name)
    shutil.copytree(REPO / "src" / "tgdd", dst / "src" / "tgdd", ignore=shutil.ignore_patterns("__pycache__"))
    write_config(dst / "config" / "config.yaml", tree or tiny_tree())
    return dst


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "tgdd tests",
        "GIT_AUTHOR_EMAIL": "tests@tgdd.invalid",
        "GIT_COMMITTER_NAME": "tgdd tests",
        "GIT_COMMITTER_EMAIL": "tests@tgdd.invalid",
    }


def run(cmd: list[str], cwd: Path, limit: int = 240, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command under `timeout` (killed 10 s after TERM); stdout and stderr together."""
    started = time.monotonic()
    proc = subprocess.run(
        ["timeout", "-k", "10", str(limit), *cmd],
        cwd=cwd,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=limit + 30,
    )
    proc.seconds = time.monotonic() - started  # type: ignore[attr-defined]
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode} after {proc.seconds:.0f} s:\n{proc.stdout[-6000:]}"
        )
    return proc


def snakemake(*args: str, cwd: Path, limit: int = 240, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(BIN / "snakemake"), *args], cwd, limit, check)


def dvc(*args: str, cwd: Path, limit: int = 240, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(BIN / "dvc"), *args], cwd, limit, check)


def job_counts(output: str) -> dict[str, int]:
    """Snakemake's 'Job stats' table as {rule: count} (without the total)."""
    table = output.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    counts.pop("total", None)
    return counts


def rules_run(output: str) -> list[str]:
    """The rules of the jobs a Snakemake run started (`rule X:` / `localrule X:` headers)."""
    return re.findall(r"^(?:local)?rule (\w+):$", output, flags=re.MULTILINE)


def digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for d in OUTPUT_DIRS
        for p in sorted((root / d).rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------------------------------------
# Single sources of truth
# ---------------------------------------------------------------------------------------------
def test_committed_schema_is_generated_from_the_config_model():
    spec = importlib.util.spec_from_file_location("write_schema", REPO / "workflow" / "scripts" / "write_schema.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = (REPO / "workflow" / "schemas" / "config.schema.json").read_text()
    assert committed == module.schema_text(), (
        "workflow/schemas/config.schema.json is stale: run python workflow/scripts/write_schema.py"
    )


def test_quick_preset_is_the_workflow_default():
    """One source of truth: config/quick.yaml is a link to the workflow's config/config.yaml."""
    quick = REPO / "config" / "quick.yaml"
    assert quick.is_symlink() and quick.resolve() == (REPO / "config" / "config.yaml").resolve()


def test_main_job_is_the_quick_matrix_through_snakemake(tmp_path):
    """`make run` (the README's main job) is `snakemake --cores all` on config/config.yaml: the
    five methods x IPC 1, 10 x two networks, one torch thread per job, MLflow left to the report;
    the training jobs declare one GPU each."""
    dry = run(["make", "-n", "run", "-o", f"{BIN.parent}/.installed", f"VENV={BIN.parent}"], REPO).stdout
    assert f"{BIN}/snakemake --cores all --configfile config/config.yaml" in dry
    quick = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert quick["threads"] == 1 and quick["tracking"]["log_steps"] is False
    project = make_project(tmp_path / "project", quick)
    out = snakemake("-n", "--cores", "2", cwd=project).stdout
    # Every job declares its GPU count: one for each step that trains networks, none otherwise.
    declared = re.findall(r"^rule (\w+):\n(?:    .*\n)*?    resources: .*\bgpu=(\d+)", out, flags=re.MULTILINE)
    assert len(declared) == 35
    assert {rule: int(gpus) for rule, gpus in declared} == {
        "tgdd_prepare": 0,
        "tgdd_trajectory": 1,
        "tgdd_experts": 0,  # the gather
        "tgdd_distill": 1,
        "tgdd_evaluate": 1,
        "tgdd_report": 0,
    }
    counts = job_counts(out)
    assert counts == {
        "all": 1,
        "tgdd_prepare": 1,
        "tgdd_trajectory": 2,
        "tgdd_experts": 1,
        "tgdd_distill": 10,
        "tgdd_evaluate": 20,
        "tgdd_report": 1,
    }


def test_methods_without_trajectories_need_no_experts(tmp_path):
    project = make_project(tmp_path / "project", tiny_tree(matrix__methods=["random"]))
    counts = job_counts(snakemake("-n", "--cores", "2", cwd=project).stdout)
    assert "tgdd_experts" not in counts
    assert counts["tgdd_distill"] == 1


def test_each_data_set_gets_its_per_dataset_matrix(tmp_path):
    tree = tiny_tree(matrix__datasets=["digits", "mnist"], matrix__seeds=[0, 1])
    tree["per_dataset"] = {
        "mnist": {
            "matrix": {"methods": ["random"], "ipcs": [1, 10]},
            "evaluate": {"archs": ["convnet-1-w16", "convnet-2-w64"], "protocol": "dc"},
        }
    }
    project = make_project(tmp_path / "project", tree)
    out = snakemake("-n", "-p", "--cores", "2", cwd=project).stdout  # a dry run needs no MNIST files
    assert job_counts(out) == {
        "tgdd_prepare": 2,
        "tgdd_trajectory": 2,  # digits: 2 trajectories, shared by both seeds (experts.seed); mnist needs none
        "tgdd_experts": 1,  # the gather
        "tgdd_distill": 2 * 2 + 2 * 2,  # digits: 2 seeds x 2 methods; mnist: 2 seeds x 2 IPCs
        "tgdd_evaluate": 4 * 1 + 4 * 2,
        "tgdd_report": 1,
        "all": 1,
    }, out[-3000:]
    assert "results/eval/mnist/random/ipc10/seed1/convnet-2-w64__dc.json" in out


@pytest.mark.slow
def test_every_data_set_keeps_its_tables_and_figures(tmp_path):
    """Two data sets through Snakemake, digits and a tiny Fashion-MNIST written here as IDX files
    (TGDD at IPC 1 only: 9 jobs): every table covers both, each has its t-SNE figure, and the
    report job declares them all (a rerun, under another spelling of the config file's name, has
    nothing to do). The paper publishes no TGDD number for either: the published comparison is empty."""
    tree = tiny_tree(matrix__datasets=["digits", "fashion_mnist"], matrix__methods=["tgdd"])
    project = make_project(tmp_path / "project", tree)
    write_mnist_like(project / "data" / "raw", n_train=40, n_test=20)
    tables = project / "results" / "tables"
    both = ["digits", "fashion_mnist"]
    figures = [tables / f"tsne_{dataset}_ipc1.png" for dataset in both]

    dry = snakemake("-n", "--cores", "2", cwd=project).stdout
    report_job = dry.split("rule tgdd_report:", 1)[1].split("\n\n", 1)[0]
    for path in [tables / "class_overlap.csv", *figures]:
        assert str(path.relative_to(project)) in report_job, report_job

    snakemake("--cores", "2", "--configfile", str(project / "config" / "config.yaml"), cwd=project, limit=400)
    assert sorted(set(pd.read_csv(tables / "summary.csv")["dataset"])) == both
    assert sorted(json.loads((tables / "metrics.json").read_text())) == both
    summary_md = (tables / "summary.md").read_text()
    assert "digits IPC 1" in summary_md and "fashion_mnist IPC 1" in summary_md
    assert (tables / "published_comparison.md").read_text() == "No cell matches a published one.\n"
    overlap = pd.read_csv(tables / "class_overlap.csv")
    assert sorted(zip(overlap["dataset"], overlap["method"], strict=True)) == [
        ("digits", "real"),
        ("digits", "tgdd"),
        ("fashion_mnist", "real"),
        ("fashion_mnist", "tgdd"),
    ]
    for figure in figures:
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Nothing to be done" in snakemake("-n", "--cores", "1", cwd=project).stdout


def test_invalid_config_is_refused_before_any_job(tmp_path):
    project = make_project(tmp_path / "project")
    bad = tmp_path / "bad.yaml"
    bad.write_text("distill:\n  iteratons: 3\n")
    proc = snakemake("-n", "--configfile", str(bad), "--cores", "1", cwd=project, check=False)
    assert proc.returncode != 0
    assert "unknown config key 'distill.iteratons' (distill). Did you mean 'iterations'?" in proc.stdout


def test_mtt_trajectories_too_short_are_refused_before_any_job(tmp_path):
    """MTT's start epochs need longer trajectories than experts.mtt.epochs gives: the whole workflow and the
    experts target alone (what DVC's experts stage runs) stop before training any, naming the keys."""
    tree = tiny_tree(matrix__methods=["mtt"], experts__mtt={"num_trajectories": 1, "epochs": 3},
                     distill__mtt={"max_start_epoch": 3, "expert_epochs": 2})  # fmt: skip
    project = make_project(tmp_path / "project", tree)
    for target in ([], ["experts"]):
        proc = snakemake("-n", "--cores", "1", *target, cwd=project, check=False)
        assert proc.returncode != 0, proc.stdout
        assert "need trajectories of at least 4 epochs, these have 3 (experts.mtt.epochs)" in proc.stdout
    assert not (project / "results").exists()
    ok = make_project(tmp_path / "ok", tiny_tree(matrix__methods=["mtt"], experts__mtt={"num_trajectories": 1,
                      "epochs": 4}, distill__mtt={"max_start_epoch": 3, "expert_epochs": 2}))  # fmt: skip
    assert "tgdd_experts" in snakemake("-n", "--cores", "1", cwd=ok).stdout  # 4 epochs: just enough


# ---------------------------------------------------------------------------------------------
# The real thing: dvc repro runs the Snakemake targets stage by stage
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory):
    """A git repository with the workflow and `dvc init`, reproduced once (the tiny matrix)."""
    project = make_project(tmp_path_factory.mktemp("dvc") / "project")
    run(["git", "init", "-q"], project)
    dvc("init", "-q", cwd=project)
    dvc("config", "core.analytics", "false", cwd=project)
    dvc("config", "core.check_update", "false", cwd=project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "tiny project"], project)
    repro = dvc("repro", cwd=project, limit=400)
    return project, repro


@pytest.mark.slow
def test_dvc_repro_runs_every_stage(dvc_project):
    project, repro = dvc_project
    out = repro.stdout
    for stage in ("prepare", "experts", "distill", "evaluate", "report"):
        assert f"Running stage '{stage}'" in out
    assert sorted(set(rules_run(out)) & set(JOB_RULES)) == sorted(JOB_RULES)
    # The run that made the tables ends by printing them (the workflow's onsuccess hook).
    report_stage = out.split("Running stage 'report'", 1)[1]
    assert (project / "results" / "tables" / "summary.md").read_text() in report_stage
    assert "tables: results/tables/" in report_stage
    summary = (project / "results" / "tables" / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + 2  # header + (tgdd, random) x IPC 1 x one arch
    metrics = json.loads((project / "results" / "tables" / "metrics.json").read_text())
    assert set(metrics["digits"]["ipc1"]) == {"tgdd", "random"}
    assert (project / "dvc.lock").is_file()
    assert (project / "logs" / "tgdd_report" / "report.log").is_file()
    assert list((project / "logs" / "benchmarks").rglob("*.tsv"))


@pytest.mark.slow
def test_snakemake_then_has_nothing_to_do(dvc_project):
    project, _ = dvc_project
    out = snakemake("--cores", "2", cwd=project).stdout
    assert "Nothing to be done" in out, out[-2000:]


@pytest.mark.slow
def test_snakemake_report_has_tables_and_images(dvc_project):
    project, _ = dvc_project
    snakemake("--report", "report.html", cwd=project)
    html = (project / "report.html").read_text(errors="replace")
    assert "summary.csv" in html and "grid.png" in html


@pytest.mark.slow
def test_dvc_repro_again_does_nothing(dvc_project):
    project, _ = dvc_project
    out = dvc("repro", cwd=project).stdout
    assert "Running stage" not in out
    assert out.count("didn't change") == 6 and "up to date" in out  # prepare ... continual, report


@pytest.mark.slow
def test_preparing_again_and_a_retrained_expert_change_nothing_downstream(dvc_project):
    """The same files prepared again, and an expert lost and retrained with the same seed, are the same
    bytes: DVC redoes no stage after them, Snakemake has nothing to do, no identity changes."""
    project, _ = dvc_project
    before = digest_tree(project)
    run([str(BIN / "tgdd"), "prepare", "--config", "config/config.yaml", "-q"], project)
    assert "up to date" in dvc("status", cwd=project).stdout
    assert "Nothing to be done" in snakemake("-n", "--cores", "1", cwd=project).stdout

    trajectory = next((project / "results" / "experts").rglob("trajectory_01.pt"))
    trajectory.unlink()
    run([str(BIN / "tgdd"), "experts", "--config", "config/config.yaml", "--index", "1", "-q"], project)
    assert digest_tree(project) == before
    assert "up to date" in dvc("status", cwd=project).stdout
    assert "Nothing to be done" in snakemake("-n", "--cores", "1", cwd=project).stdout


@pytest.mark.slow
def test_changed_distill_parameter_reruns_distill_and_downstream_only(dvc_project):
    project, _ = dvc_project
    config_file = project / "config" / "config.yaml"
    tree = yaml.safe_load(config_file.read_text())
    tree["distill"]["iterations"] = 4
    config_file.write_text(yaml.safe_dump(tree, sort_keys=False))
    experts_manifest = next((project / "results" / "experts").rglob("manifest.json"))
    experts_before = experts_manifest.stat().st_mtime_ns

    out = dvc("repro", cwd=project, limit=300).stdout
    for stage in ("prepare", "experts"):
        assert f"Stage '{stage}' didn't change" in out
    for stage in ("distill", "evaluate", "report"):
        assert f"Running stage '{stage}'" in out
    jobs = [r for r in rules_run(out) if r in JOB_RULES]
    assert sorted(jobs) == sorted(["tgdd_distill"] * 2 + ["tgdd_evaluate"] * 2 + ["tgdd_report"]), out[-3000:]
    assert experts_manifest.stat().st_mtime_ns == experts_before
    losses = (project / "results/synthetic/digits/tgdd/ipc1/seed0/losses.csv").read_text().splitlines()
    assert int(losses[-1].split(",")[0]) == 3  # iterations 0..3: the new setting was used
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "distill.iterations=4"], project)


@pytest.mark.slow
def test_remote_round_trip_restores_outputs_and_snakemake_stays_quiet(dvc_project, tmp_path):
    project, _ = dvc_project
    dvc("remote", "add", "-d", "local", str(tmp_path / "remote"), cwd=project)
    dvc("push", cwd=project)
    before = digest_tree(project)
    assert before
    # A fresh clone has neither the outputs, nor the DVC cache, nor Snakemake's metadata.
    for d in [*OUTPUT_DIRS, ".dvc/cache", ".snakemake"]:
        shutil.rmtree(project / d)
    dvc("pull", cwd=project)
    assert digest_tree(project) == before
    assert "up to date" in dvc("status", cwd=project).stdout

    # DVC restores files without their timestamps; here upstream files come back newest,
    # the worst order for Snakemake's mtime trigger (no metadata to check checksums against):
    for f in (project / "data" / "prepared").rglob("*"):
        os.utime(f)
    assert "Nothing to be done" not in snakemake("-n", "--cores", "1", cwd=project).stdout
    # The documented fix after dvc pull/checkout: mark the outputs up to date, in DAG order.
    snakemake("--touch", "--cores", "1", cwd=project)
    assert "Nothing to be done" in snakemake("-n", "--cores", "1", cwd=project).stdout
    assert digest_tree(project) == before
    assert "up to date" in dvc("status", cwd=project).stdout
