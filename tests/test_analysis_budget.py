"""The class-overlap analysis at paper scale: its memory bound and the report job's request
(tgdd.analysis_budget) against the networks and the code they describe, the analysis after the
embedding run at TinyImageNet's size (40,000 decoded images x 2,048 features) in a subprocess
whose peak resident memory must stay within what the report rule requests, and that request
through Snakemake itself."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

from tgdd import analysis_budget as budget
from tgdd.analysis_budget import (
    BLOCK_MB,
    BYTES_PER_DISTANCE,
    MIB,
    DatasetWork,
    SetWork,
    activation_bytes,
    block_rows,
    convnet_cost,
    pairwise_bytes,
    peak_memory_mb,
    report_mem_mb,
    report_request,
    report_work,
)
from tgdd.config import load_config
from tgdd.errors import TgddError
from tgdd.models import build_model

from .test_workflow import REPO, make_project, snakemake, tiny_tree

PAPER = REPO / "config" / "paper.yaml"
TINY_N, TINY_D, TINY_C = 40_000, 2048, 200  # TinyImageNet IPC 50, f = 2, ConvNet-4 at 64 px


@pytest.fixture(scope="module")
def paper_works() -> dict[str, DatasetWork]:
    return {w.dataset: w for w in report_work(load_config(PAPER))}


@pytest.mark.parametrize(
    ("arch", "channels", "size"),
    [("convnet-3", 1, 28), ("convnet-3", 3, 32), ("convnet-4", 3, 64), ("convnet-5", 3, 128), ("convnet-2-w32", 3, 32)],
)
def test_convnet_cost_is_the_networks(arch, channels, size):
    model = build_model(arch, channels, size, 10).eval()
    macs = []
    hooks = [
        m.register_forward_hook(lambda mod, _, out: macs.append(out[0].numel() * mod.in_channels * 9))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    with torch.no_grad():
        features = model.features(torch.zeros(1, channels, size, size))
    for hook in hooks:
        hook.remove()
    dim, flops = convnet_cost(arch, channels, size)
    assert dim == features.shape[1] == model.feature_dim
    assert flops == 2 * sum(macs)
    assert convnet_cost("resnet18", 3, 32) is None


def test_blocks_hold_at_most_their_budget():
    for points in (1, 7, 1000, TINY_N, 1_000_000):
        rows = block_rows(points)
        assert 1 <= rows <= points
        assert rows == 1 or rows * points * BYTES_PER_DISTANCE <= BLOCK_MB * MIB
    assert block_rows(TINY_N) == 279  # 256 MiB / (40,000 x 24 B)


def test_paper_preset_request_is_bounded(paper_works):
    tiny = paper_works["tinyimagenet"]
    assert max(s.decoded for s in tiny.sets) == TINY_N and tiny.feature_dim == TINY_D
    assert tiny.num_classes == TINY_C and tiny.real_images == 50 * TINY_C
    assert tiny.embed_batch == 42  # ConvNet-4 at 64 px: 256 MiB of activations
    mem = report_mem_mb(list(paper_works.values()))
    assert mem == max(peak_memory_mb(w) for w in paper_works.values()) == peak_memory_mb(tiny)
    # the whole distance matrix of that set alone was 12.2 GiB; the bound of the whole job is far less
    assert TINY_N**2 * 8 / MIB > 12_000 > 2 * mem and mem < 8_000
    # ... and it is the sum of what the code holds: imports, the set's features (float32 + float64)
    # and one block, plus its stored images and the t-SNE samples
    assert mem * MIB > budget.BASE_MB * MIB + pairwise_bytes(TINY_N, TINY_D)
    runtime, requested = report_request(list(paper_works.values()), 8)
    assert requested == mem and runtime < 4320  # within the default cap, 72 h
    assert (runtime, mem) == (626, 3844)  # workflow/README.md, "Job resources"
    second = report_request(list(paper_works.values()), 8, attempt=2)
    assert second == (math.ceil(runtime * 1.5), math.ceil(mem * 1.5))
    capped = report_request(list(paper_works.values()), 8, 3, max_runtime_min=runtime + 1, max_mem_mb=mem + 1)
    assert capped == (runtime + 1, mem + 1)
    with pytest.raises(TgddError, match=r"tgdd report .*tinyimagenet.*exceeds TGDD_MAX_MEM_MB=1000"):
        report_request(list(paper_works.values()), 8, max_mem_mb=1000)
    with pytest.raises(TgddError, match=r"estimated .* exceeds TGDD_MAX_RUNTIME_MIN=60 \(60 min\)"):
        report_request(list(paper_works.values()), 8, max_runtime_min=60)


def test_the_bound_grows_with_the_work():
    small = DatasetWork(
        "x", 10, 3 * 32 * 32, 50_000, 2048, 1e8, activation_bytes("convnet-3", 3, 32), (SetWork(100, 2),)
    )
    bigger = [
        DatasetWork("x", 10, 3 * 32 * 32, 50_000, 2048, 1e8, small.activation_bytes, (SetWork(5000, 2),)),
        DatasetWork("x", 10, 3 * 32 * 32, 500_000, 2048, 1e8, small.activation_bytes, small.sets),
        DatasetWork("x", 10, 3 * 32 * 32, 50_000, 8192, 1e8, small.activation_bytes, (SetWork(5000, 2),)),
    ]
    for work in bigger:
        assert peak_memory_mb(work) > peak_memory_mb(small)
        assert budget.runtime_seconds(work) > budget.runtime_seconds(small)
    assert budget.runtime_seconds(bigger[0], threads=8) < budget.runtime_seconds(bigger[0], threads=1)


def test_sizing_the_report_does_not_import_torch():
    code = (
        "import sys; from pathlib import Path; from tgdd.config import load_config; "
        "from tgdd.analysis_budget import report_work, report_request; "
        f"print(report_request(report_work(load_config(Path({str(PAPER)!r}))), 8)); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- paper scale, measured

MEASURE = r"""
import json, re, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from tgdd.analysis import _as_arrays, _block_metrics, _distance_blocks, class_balance, overlap_metrics, tsne_sample
from tgdd.analysis_budget import block_rows, per_class_shown

def status(key):
    return int(re.search(key + r":\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024

n, d, classes, blocks = (int(a) for a in sys.argv[1:5])
gen = torch.Generator().manual_seed(0)
labels = torch.arange(n) % classes
centres = 2.0 * torch.randn(classes, d, generator=gen)
features = torch.empty(n, d)  # float32, as `embed` returns them; filled without a second copy
for start in range(0, n, 4096):
    stop = min(n, start + 4096)
    features[start:stop] = centres[labels[start:stop]] + torch.randn(stop - start, d, generator=gen)
before = status("VmRSS")
Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here: the analysis's own peak
t = time.perf_counter()
if blocks:  # the first blocks of overlap_metrics' pass (each block the same size: the peak is the first's)
    x, y = _as_arrays(features, labels)
    _, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
    k_point = torch.clamp(counts[inverse] - 1, max=5)
    for _, (start, block) in zip(range(blocks), _distance_blocks(x, block_rows(n))):
        _block_metrics(block, start, inverse, counts, k_point, True, True)
        del block
    metrics = {"class_balance": class_balance(features, labels)}
else:
    metrics = overlap_metrics(features, labels)
shown = tsne_sample(labels, per_class_shown(classes, 1000), 0, "tgdd", 50)
kept = features[shown].clone()
print(json.dumps({"before": before, "peak": status("VmHWM"), "seconds": time.perf_counter() - t,
                  "shown": len(kept), **metrics}))
"""


def measure(n: int, d: int, classes: int, blocks: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE, str(n), str(d), str(classes), str(blocks)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_paper_size_analysis_stays_within_the_report_request(paper_works):
    """40,000 x 2,048 embeddings of 200 classes (TinyImageNet IPC 50, f = 2): the float64 copy, the
    blocks of the exact kNN/silhouette pass (two of 144: every block is the same size, so the first
    makes the peak; the whole pass takes minutes, benchmarks/results/report_analysis_cpu.md), class
    balance and the t-SNE sample. The process's peak stays within the report rule's request for the
    paper preset, and its growth over the embeddings within the bound of tgdd.analysis_budget."""
    result = measure(TINY_N, TINY_D, TINY_C, blocks=2)
    requested = report_mem_mb(list(paper_works.values()))
    growth = result["peak"] - result["before"]
    assert result["peak"] <= requested * MIB, (result["peak"] / MIB, requested)
    assert growth <= pairwise_bytes(TINY_N, TINY_D) - TINY_N * TINY_D * 4, growth / MIB
    assert growth >= TINY_N * TINY_D * 8  # the float64 copy is there: the measurement sees the work
    assert result["shown"] == 5 * TINY_C  # t-SNE: 1,000 of 40,000


@pytest.mark.slow
def test_whole_pass_stays_within_its_bound():
    """The whole blockwise pass (every block, both metrics) on 10,000 x 256 embeddings: the peak
    growth stays within the bound, far below the 763 MiB of the whole distance matrix."""
    n, d = 10_000, 256
    result = measure(n, d, 100, blocks=0)
    growth = result["peak"] - result["before"]
    assert growth <= pairwise_bytes(n, d) - n * d * 4 < n * n * 8, growth / MIB
    assert 0.9 < result["knn_purity"] <= 1 and 0 < result["silhouette"] < 1


# --------------------------------------------------------------------------- through Snakemake

RESOURCES = re.compile(r"^rule tgdd_report:\n(?:    .*\n)*?    threads: (\d+)\n    resources: (.*)$", re.MULTILINE)


def test_report_rule_requests_the_bound(tmp_path):
    """`snakemake -n` plans the report job with the request of tgdd.analysis_budget for its config
    (the tiny digits matrix, --cores 2: 2 threads) and passes the threads to `tgdd report`."""
    project = make_project(tmp_path / "project", tiny_tree())
    out = snakemake("-n", "-p", "--cores", "2", cwd=project).stdout
    match = RESOURCES.search(out)
    assert match, out[-3000:]
    threads, resources = int(match[1]), dict(r.split("=", 1) for r in match[2].split(", "))
    cfg = load_config(project / "config" / "config.yaml")
    runtime, mem = report_request(report_work(cfg), threads, max_runtime_min=4320, max_mem_mb=64_000)
    assert threads == 2 and resources["gpu"] == "0"
    assert (int(resources["runtime"]), int(resources["mem_mb"])) == (runtime, mem)
    # the job has no GPU: the analysis runs on its CPU threads whatever the config's device
    assert re.search(r"tgdd\S* report --config \S+ threads=2 device=cpu ", out), out[-3000:]


def test_a_report_over_the_memory_cap_stops_the_planning(tmp_path, monkeypatch):
    """TGDD_MAX_MEM_MB below the report's bound: the dry run fails at once naming the report."""
    project = make_project(tmp_path / "project", tiny_tree())
    monkeypatch.setenv("TGDD_MAX_MEM_MB", "1000")
    proc = snakemake("-n", cwd=project, check=False)
    assert proc.returncode != 0
    assert re.search(r"tgdd report digits: estimated \d+ MB of memory .* exceeds TGDD_MAX_MEM_MB=1000", proc.stdout), (
        proc.stdout[-3000:]
    )
