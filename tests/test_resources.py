"""Job resources from the work of each cell (tgdd.cost), the caps the user sets once, and the
cluster-safe defaults of the paper preset: the pure functions against hand-computed values, then
the route a user takes (`snakemake --profile slurm --configfile config/paper.yaml -n`)."""

from __future__ import annotations

import math
import re
import shutil

import pytest

from tgdd import paths
from tgdd.config import load_config
from tgdd.cost import RETRY_GROWTH, Limits, network, request
from tgdd.errors import TgddError
from tgdd.resolve import resolve_settings
from tgdd.runtime import resolve_device

from .test_workflow import REPO, make_project, snakemake, tiny_tree

PAPER = REPO / "config" / "paper.yaml"
DEFAULT = Limits()

# ConvNet-3 (width 128) on 3 x 32 x 32, MACs per image, by hand: conv 3->128 at 32 px, conv 128->128
# at 16 and at 8 px (3 x 3 kernels), the linear 128*4*4 -> 10.
CONV1, CONV2, CONV3, FC = 128 * 32 * 32 * 3 * 9, 128 * 16 * 16 * 128 * 9, 128 * 8 * 8 * 128 * 9, 2048 * 10
# ConvNet-5 on 3 x 128 x 128: conv at 128, 64, 32, 16, 8 px, the linear 2048 -> 10.
NET5 = [128 * 128 * 128 * 3 * 9, *(128 * s * s * 128 * 9 for s in (64, 32, 16, 8)), 2048 * 10]


def paper_cell(*overrides: str):
    return load_config(PAPER, list(overrides))


def minutes(h200_seconds: float, tflops: float = 28.0) -> int:
    """The documented rule: 5 min start-up + 2 x the H200 time scaled to the GPU's rate."""
    return 5 + math.ceil(2 * h200_seconds * 28.0 / tflops / 60)


def test_networks_are_counted_as_by_hand():
    net = network("convnet-3", "cifar10")
    assert (net.forward, net.features, net.first) == (CONV1 + CONV2 + CONV3 + FC, CONV1 + CONV2 + CONV3, CONV1)
    assert network("convnet-5", "imagenette").forward == sum(NET5)


def test_tgdd_cifar10_ipc10_distillation():
    cell = paper_cell(
        "distill.method=tgdd", "distill.ipc=10", "distill.iterations=10000", "distill.batched_classes=false"
    )
    s = resolve_settings(cell)
    assert (s.factor, s.real_batch, s.max_syn_per_class) == (2, 128, 200)  # TGDD's defaults, SPEC §3
    feat, fwd = CONV1 + CONV2 + CONV3, CONV1 + CONV2 + CONV3 + FC
    syn = 10 * 2**2  # IPC x f^2 decoded images per class
    flops = 10_000 * 2 * 10 * (128 * feat + 2 * syn * (feat + fwd))  # real: forward; syn: forward + input grad
    h200 = flops / 28e12 + 10_000 * 10 * 0.0066  # + one class step per class and iteration
    req = request(cell, "distill", DEFAULT)
    assert req.work.flops == flops
    assert req.runtime_min == minutes(h200) == 31
    assert request(cell, "distill", Limits(gpu_tflops=14)).runtime_min == minutes(h200, 14) == 56
    # memory: 4,000 MB (torch + CUDA) + 1.5 x (CIFAR-10 train + test as uint8 + 5 x 61 ConvNet-3 snapshots)
    snapshot = 4 * (128 * 3 * 9 + 128 + 2 * (128 * 128 * 9 + 128) + 3 * 256 + 2048 * 10 + 10)
    held = 60_000 * 3 * 32 * 32 + 5 * 61 * snapshot
    assert req.mem_mb == 500 * math.ceil((4000 + 1.5 * held / 1e6) / 500) == 5000


def test_idm_imagenet_subset_distillation():
    cell = paper_cell("dataset=imagenette", "distill.method=idm", "distill.ipc=10", "distill.iterations=20000")
    s = resolve_settings(cell)
    own = s.own
    assert (s.factor, s.real_batch) == (2, 256) and s.batched_classes in (False, "auto")  # counted per class
    assert (own["match_nets"], own["fetch_net_num"], own["model_train_steps"], own["net_batch"]) == (1, 2, 10, 256)
    feat, fwd, first = sum(NET5[:5]), sum(NET5), NET5[0]
    matching = 2 * 10 * (256 * feat + 2 * 40 * feat)  # features only (IDM's head is in DM's pass)
    training = 20 * 2 * 256 * (3 * fwd - first)  # 2 nets x 10 SGD steps of 256 real images
    flops = 20_000 * (matching + training)
    h200 = flops / 28e12 + 20_000 * 10 * 0.0066 + 20_000 * 20 * 0.0034
    req = request(cell, "distill", DEFAULT)
    assert req.work.flops == flops and req.runtime_min == minutes(h200) == 847  # 14.1 h
    with pytest.raises(TgddError, match=r"tgdd distill imagenette idm IPC 10 seed 0: estimated 14\.1 h .* exceeds "
                       r"TGDD_MAX_RUNTIME_MIN=600 \(10\.0 h\): set TGDD_MAX_RUNTIME_MIN"):  # fmt: skip
        request(cell, "distill", Limits(max_runtime_min=600))


def test_mtt_expert_jobs_ask_for_minutes():
    cell = paper_cell("dataset=cifar10")
    # one MTT trajectory: 50 epochs of 50,000 images, batch 256, plain SGD (buffer.py)
    flops = 50 * 2 * 50_000 * (3 * (CONV1 + CONV2 + CONV3 + FC) - CONV1)
    h200 = flops / 28e12 + 50 * math.ceil(50_000 / 256) * 0.0034
    req = request(cell, "experts", DEFAULT, recipe="mtt")
    assert req.work.flops == flops and req.runtime_min == minutes(h200) == 7
    assert request(cell, "experts", DEFAULT, recipe="tgdd").runtime_min < 30  # 60 epochs of batch 64


def test_retries_grow_within_the_caps():
    req = request(paper_cell("dataset=imagenette", "distill.method=idm", "distill.ipc=10"), "distill", DEFAULT)
    limits = Limits(max_runtime_min=1000, max_mem_mb=6000)
    assert req.attempt(1, limits) == (847, 5000)
    assert req.attempt(2, limits) == (1000, 6000)  # 1.5 x the estimate, capped
    assert req.attempt(9, limits) == (1000, 6000)
    assert req.attempt(2, DEFAULT) == (math.ceil(847 * (1 + RETRY_GROWTH)), 7500)


def test_limits_come_from_the_environment():
    env = {"TGDD_GPU_TFLOPS": "12.5", "TGDD_MAX_RUNTIME_MIN": "2880", "TGDD_MAX_MEM_MB": ""}
    assert Limits.from_env(env) == Limits(gpu_tflops=12.5, max_runtime_min=2880)
    assert Limits.from_env({}) == DEFAULT and DEFAULT.max_runtime_min == 4320
    for bad in ("0", "-1", "2h"):
        with pytest.raises(TgddError, match=f"TGDD_MAX_RUNTIME_MIN='{bad}' must be a positive integer"):
            Limits.from_env({"TGDD_MAX_RUNTIME_MIN": bad})


def test_memory_over_the_cap_is_refused():
    cell = paper_cell("dataset=tinyimagenet")
    assert request(cell, "prepare", DEFAULT, gpu=False).mem_mb == 14_000
    with pytest.raises(TgddError, match="tgdd prepare tinyimagenet: estimated 14000 MB .* TGDD_MAX_MEM_MB=8000"):
        request(cell, "prepare", Limits(max_mem_mb=8000), gpu=False)


def test_cuda_that_is_not_there_is_one_clear_error():
    """The paper preset asks for CUDA: without a GPU a step stops at once, naming the ways out."""
    assert paper_cell().device == "cuda"
    assert paper_cell().tracking.log_steps is False  # only the report writes to MLflow's sqlite file
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(TgddError, match=r"^device=cuda, but torch sees 0 CUDA devices \(.*\): run this step where "
                       r"it gets a GPU .* or pass device=cpu"):  # fmt: skip
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


# ---------------------------------------------------------------------------------------------
# Through Snakemake and the SLURM profile (dry runs: no cluster needed).

RESOURCES = re.compile(r"^rule (\w+):\n(?:    .*\n)*?    wildcards: (.*)\n    resources: (.*)$", re.MULTILINE)


def planned(output: str) -> list[tuple[str, dict[str, str], dict[str, str]]]:
    """(rule, wildcards, resources) of every job a dry run lists."""
    jobs = []
    for rule, wildcards, resources in RESOURCES.findall(output):
        jobs.append((rule, dict(w.split("=", 1) for w in wildcards.split(", ")),
                     dict(r.split("=", 1) for r in resources.split(", "))))  # fmt: skip
    return jobs


@pytest.fixture(scope="module")
def paper_project(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("resources") / "project")
    shutil.copy2(PAPER, project / "config" / "paper.yaml")
    return project


@pytest.mark.slow
def test_paper_dry_run_through_the_slurm_profile(paper_project, monkeypatch):
    """What the README tells a cluster user to run first: every job planned within the caps, the
    CPU-only jobs on the CPU partition without a GPU, the GPU jobs on the GPU partition."""
    monkeypatch.setenv("TGDD_SLURM_PARTITION", "gpu-part")
    monkeypatch.setenv("TGDD_SLURM_CPU_PARTITION", "cpu-part")
    monkeypatch.setenv("TGDD_SLURM_ACCOUNT", "myproject")
    cfg = load_config(PAPER, ["dataset=imagenette", "distill.method=idm", "distill.ipc=10"])
    targets = [str(paths.synthetic_file(cfg)), str(paths.experts_dir(load_config(PAPER), "mtt") / "manifest.json")]
    out = snakemake(*targets, "-n", "--profile", "slurm", "--configfile", "config/paper.yaml", cwd=paper_project,
                    limit=400).stdout  # fmt: skip
    jobs = planned(out)
    rules = {rule for rule, _, _ in jobs}
    assert rules == {"tgdd_prepare", "tgdd_trajectory", "tgdd_experts", "tgdd_distill"}, out[-3000:]
    for rule, wildcards, res in jobs:
        cpu_only = rule in ("tgdd_prepare", "tgdd_experts")
        assert res["slurm_partition"] == ("cpu-part" if cpu_only else "gpu-part"), (rule, res)
        assert res["gpu"] == ("0" if cpu_only else "1") and res["slurm_account"] == "myproject", (rule, res)
        assert int(res["runtime"]) <= DEFAULT.max_runtime_min and int(res["mem_mb"]) <= DEFAULT.max_mem_mb
        if rule == "tgdd_trajectory":
            assert wildcards["recipe"] == "mtt" and int(res["runtime"]) <= 15, res  # minutes, not hours
    distill = [res for rule, _, res in jobs if rule == "tgdd_distill"]
    assert [(r["runtime"], r["mem_mb"]) for r in distill] == [("847", "5000")]  # test_idm_imagenet_subset_...
    assert sum(rule == "tgdd_trajectory" for rule, _, _ in jobs) == 100


@pytest.mark.slow
def test_a_job_over_the_cap_stops_the_planning(tmp_path, monkeypatch):
    """TGDD_MAX_RUNTIME_MIN below a job's estimate: the dry run fails with the job named, nothing runs."""
    project = make_project(tmp_path / "project", tiny_tree())
    monkeypatch.setenv("TGDD_MAX_RUNTIME_MIN", "5")  # every GPU job needs at least 5 min start-up + its work
    proc = snakemake("-n", "--profile", "slurm", "--profile", "slurm-ci", cwd=project, check=False)
    assert proc.returncode != 0
    assert re.search(
        r"tgdd \w+ digits.*: estimated \d+ min .* exceeds TGDD_MAX_RUNTIME_MIN=5 \(5 min\)", proc.stdout
    ), proc.stdout[-3000:]
    monkeypatch.setenv("TGDD_MAX_RUNTIME_MIN", "soon")
    proc = snakemake("-n", "--profile", "slurm", cwd=project, check=False)
    assert proc.returncode != 0 and "TGDD_MAX_RUNTIME_MIN='soon' must be a positive integer" in proc.stdout
    assert not (project / "results").exists()


def test_paper_preset_without_a_gpu_stops_at_once(tmp_path, capsys):
    """`tgdd experts` of the paper preset on this CPU machine: exit 2, one line, nothing trained."""
    import torch

    from tgdd.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args = ["experts", "--config", str(PAPER), "dataset=digits", f"paths.data={tmp_path}", f"paths.results={tmp_path}"]
    assert main([*args, "--index", "0", "tracking.enabled=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "device=cuda, but torch sees 0 CUDA devices" in err, err
    assert not list(tmp_path.rglob("*.pt"))
