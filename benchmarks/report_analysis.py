"""Peak memory and time of the class-overlap analysis of `tgdd report` at paper scale, on the CPU.

Usage::

    .venv/bin/python benchmarks/report_analysis.py [--quick] [--out benchmarks/results] [--threads N]

The paper's largest set is TinyImageNet at IPC 50 with f = 2: 40,000 decoded images, embedded by
ConvNet-4 at 64 px into 2,048 features. Each case runs the project's own code in its own subprocess on
generated inputs (no data files, no trained expert) and measures the process's peak resident set (VmHWM;
``tgdd_bench.machine.MemoryMeter`` explains why not ``ru_maxrss``):

- ``metrics``: :func:`tgdd.analysis.overlap_metrics` (exact kNN purity and silhouette from blocks of the
  distance matrix, class balance) on 40,000 x 2,048 float32 embeddings of 200 classes (class centres plus
  noise), against the bound :func:`tgdd.analysis_budget.pairwise_bytes` and the memory the workflow's report
  rule requests for the paper preset;
- ``embed``: :func:`tgdd.analysis.embed` of stored f = 2 images (decoded a batch at a time) through a
  randomly initialised ConvNet-4 at 64 px: the rate behind ``CONV_GFLOPS_PER_THREAD``;
- ``tsne``: one t-SNE panel of the largest size the figures draw (1,000 synthetic + 300 real points of
  2,048 features): the time behind ``TSNE_SECONDS_PER_PANEL``.

Writes ``<out>/report_analysis_cpu.md`` and the measurements as ``.json`` (``--render FILE.json`` prints
the report of a saved run again). ``--quick`` runs small sizes (a smoke test).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

MIB = 2**20
RESULT = "RESULT "


@dataclass(frozen=True)
class Sizes:
    points: int = 40_000  # TinyImageNet IPC 50, f = 2
    dim: int = 2048  # ConvNet-4 at 64 px
    classes: int = 200
    embed_stored: int = 256  # 1,024 decoded images
    tsne_points: int = 1000
    tsne_real: int = 300


QUICK = Sizes(points=4000, dim=256, classes=200, embed_stored=32, tsne_points=200, tsne_real=100)


def vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def vm_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def clustered(points: int, dim: int, classes: int, seed: int = 0):
    """float32 embeddings as ``embed`` returns them: class centres plus unit noise, filled in chunks
    so that generating them holds no second copy."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(points) % classes
    centres = 2.0 * torch.randn(classes, dim, generator=gen)
    features = torch.empty(points, dim)
    for start in range(0, points, 4096):
        stop = min(points, start + 4096)
        features[start:stop] = centres[labels[start:stop]] + torch.randn(stop - start, dim, generator=gen)
    return features, labels


def case_metrics(sizes: Sizes) -> dict:
    import torch  # noqa: F401

    from tgdd.analysis import overlap_metrics
    from tgdd.analysis_budget import BLOCK_MB, block_rows, pairwise_bytes

    features, labels = clustered(sizes.points, sizes.dim, sizes.classes)
    rss_before = vm_rss()
    reset_peak()
    start = time.perf_counter()
    metrics = overlap_metrics(features, labels)
    seconds = time.perf_counter() - start
    peak = vm_hwm()
    return {
        "seconds": seconds,
        "peak_mib": peak / MIB,
        "rss_before_mib": rss_before / MIB,
        "growth_mib": (peak - rss_before) / MIB,
        "growth_bound_mib": (pairwise_bytes(sizes.points, sizes.dim) - sizes.points * sizes.dim * 4) / MIB,
        "block_rows": block_rows(sizes.points),
        "block_mb": BLOCK_MB,
        "full_matrix_mib": sizes.points**2 * 8 / MIB,
        "gflop": 2.0 * sizes.points**2 * sizes.dim / 1e9,
        **metrics,
    }


def case_embed(sizes: Sizes) -> dict:
    import torch

    from tgdd.analysis import embed
    from tgdd.analysis_budget import activation_bytes, convnet_cost, embed_batch
    from tgdd.models import build_model

    model = build_model("convnet-4", 3, 64, 200).eval()
    gen = torch.Generator().manual_seed(0)
    stored = torch.rand(sizes.embed_stored, 3, 64, 64, generator=gen)
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)
    batch = embed_batch("convnet-4", 3, 64)
    embed(model, stored[:4], mean, std, torch.device("cpu"), batch, factor=2)  # warm-up
    rss_before = vm_rss()
    reset_peak()
    start = time.perf_counter()
    features = embed(model, stored, mean, std, torch.device("cpu"), batch, factor=2)
    seconds = time.perf_counter() - start
    dim, flops = convnet_cost("convnet-4", 3, 64)
    assert features.shape == (4 * sizes.embed_stored, dim), features.shape
    images = len(features)
    return {
        "seconds": seconds,
        "images": images,
        "images_per_s": images / seconds,
        "gflops": images * flops / seconds / 1e9,
        "growth_mib": (vm_hwm() - rss_before) / MIB,
        "batch": batch,
        "bound_mib": (images * dim * 4 + batch * (3 * 3 * 64 * 64 * 4 + activation_bytes("convnet-4", 3, 64))) / MIB,
    }


def case_tsne(sizes: Sizes) -> dict:
    import numpy as np

    from tgdd.analysis import _tsne

    points = sizes.tsne_points + sizes.tsne_real
    features, _ = clustered(points, sizes.dim, 10, seed=1)
    joint = features.numpy().astype(np.float64)
    rss_before = vm_rss()
    reset_peak()
    start = time.perf_counter()
    _tsne(joint, 0)
    return {
        "seconds": time.perf_counter() - start,
        "points": points,
        "growth_mib": (vm_hwm() - rss_before) / MIB,
    }


CASES = {"metrics": case_metrics, "embed": case_embed, "tsne": case_tsne}


def child(name: str, sizes: Sizes, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    result = CASES[name](sizes)
    print(RESULT + json.dumps(result), flush=True)


def run_case(name: str, quick: bool, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, __file__, "--child", name, "--threads", str(threads), *(["--quick"] if quick else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"case {name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT) :])


def paper_request() -> tuple[int, dict[str, int]]:
    """The memory the report rule requests for the paper preset, and each data set's bound."""
    from tgdd.analysis_budget import peak_memory_mb, report_mem_mb, report_work
    from tgdd.config import load_config

    works = report_work(load_config(Path(__file__).resolve().parents[1] / "config" / "paper.yaml"))
    return report_mem_mb(works), {w.dataset: peak_memory_mb(w) for w in works}


def markdown(run: dict) -> str:
    """The report of one run (what :func:`main` measured and saved as JSON)."""
    from tgdd import analysis_budget as budget
    from tgdd_bench.markdown import md_table

    results, sizes, threads, minutes, load = (
        run["results"], Sizes(**run["sizes"]), run["threads"], run["minutes"], run["load"]
    )  # fmt: skip
    request, per_dataset = paper_request()
    m, e, t = results["metrics"], results["embed"], results["tsne"]
    gemm_rate = m["gflop"] / m["seconds"] / threads
    lines = [
        "# Class-overlap analysis of `tgdd report`: peak memory and time (cpu)",
        "",
        f"Generated by `benchmarks/report_analysis.py` in {minutes:.1f} min on {threads} thread(s). Cores kept busy "
        f"by every process just before and after: {load[0]} / {load[1]} (of {os.cpu_count()}). Each case is one "
        "process running the project's code on generated inputs; peak = peak resident set (VmHWM), growth = "
        "peak minus the resident set after imports and inputs. On a shared machine times are pessimistic.",
        "",
        md_table(["machine", ""], list(run["machine"].items())),
        "",
        "## Metrics (kNN purity k = 5, silhouette, class balance) on every image, exact float64, blockwise",
        "",
        md_table(
            [
                "images x features (classes)",
                "s",
                "peak MiB",
                "growth MiB",
                "bound of growth MiB",
                "block",
                "whole n x n matrix MiB",
                "GFLOP/s per thread",
                "kNN purity",
                "silhouette",
            ],
            [
                [
                    f"{sizes.points:,} x {sizes.dim:,} ({sizes.classes})",
                    f"{m['seconds']:.1f}",
                    f"{m['peak_mib']:.0f}",
                    f"{m['growth_mib']:.0f}",
                    f"{m['growth_bound_mib']:.0f}",
                    f"{m['block_rows']} rows ({m['block_mb']} MiB)",
                    f"{m['full_matrix_mib']:.0f}",
                    f"{gemm_rate:.1f} (incl. bookkeeping)",
                    f"{m['knn_purity']:.4f}",
                    f"{m['silhouette']:.4f}",
                ]
            ],
        ),
        "",
        f"The report rule asks the paper preset for **{request} MiB** (the largest data set's bound, "
        "`tgdd.analysis_budget.peak_memory_mb`): "
        + ", ".join(f"{k} {v}" for k, v in per_dataset.items())
        + ". The old whole-matrix `torch.cdist` needed the last column for its distances alone.",
        "",
        "## Embedding (ConvNet-4, 64 px, stored f = 2 images decoded a batch at a time) and one t-SNE panel",
        "",
        md_table(
            ["case", "work", "s", "rate", "growth MiB", "assumed by `tgdd.analysis_budget`"],
            [
                [
                    "embed",
                    f"{e['images']:,} decoded images, batches of {e['batch']}",
                    f"{e['seconds']:.1f}",
                    f"{e['images_per_s']:.0f} images/s, {e['gflops'] / threads:.1f} GFLOP/s per thread",
                    f"{e['growth_mib']:.0f}",
                    f"{budget.CONV_GFLOPS_PER_THREAD} GFLOP/s per thread; {e['bound_mib']:.0f} MiB",
                ],
                [
                    "tsne",
                    f"{t['points']:,} points x {sizes.dim:,}",
                    f"{t['seconds']:.1f}",
                    "",
                    f"{t['growth_mib']:.0f}",
                    f"{budget.TSNE_SECONDS_PER_PANEL:.0f} s per panel, {budget.TSNE_MB} MiB",
                ],
                [
                    "metrics",
                    f"{m['gflop']:,.0f} GFLOP of distances",
                    f"{m['seconds']:.1f}",
                    f"{gemm_rate:.1f} GFLOP/s per thread",
                    "",
                    f"{budget.GEMM_GFLOPS_PER_THREAD} GFLOP/s per thread + {budget.NS_PER_DISTANCE:.0f} ns per distance",
                ],
            ],
        ),
        "",
        "The rates assumed by `tgdd.analysis_budget` (which sizes the report job, with a x "
        f"{budget.SAFETY:g} margin) are at or below these, measured with other jobs on the same cores; the "
        "metrics are exact, so their time does not depend on the data, only on images x features.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", choices=sorted(CASES))
    parser.add_argument("--render", type=Path, help="only write the report of a saved run (its .json)")
    args = parser.parse_args()
    sizes = QUICK if args.quick else Sizes()
    if args.child:
        child(args.child, sizes, args.threads)
        return
    if args.render:
        run = json.loads(args.render.read_text())
        print(markdown(run))
        return
    import torch

    from tgdd_bench.machine import busy_cores, describe_machine

    start = time.perf_counter()
    machine = describe_machine(torch.device("cpu"), args.threads)
    load_before = busy_cores(1.0)
    results = {}
    for name in CASES:
        print(f"[report_analysis] {name} ...", file=sys.stderr, flush=True)
        results[name] = run_case(name, args.quick, args.threads)
        print(f"[report_analysis] {name}: {results[name]}", file=sys.stderr, flush=True)
    run = {
        "machine": machine,
        "sizes": asdict(sizes),
        "threads": args.threads,
        "minutes": (time.perf_counter() - start) / 60,
        "load": [f"{load_before:.2f}" if load_before is not None else "?", f"{busy_cores(1.0) or 0:.2f}"],
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "report_analysis_cpu_quick" if args.quick else "report_analysis_cpu"
    (args.out / f"{stem}.json").write_text(json.dumps(run, indent=1) + "\n")
    text = markdown(run)
    (args.out / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
