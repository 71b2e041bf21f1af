"""Distillation speed near the hardware limit.

Usage::

    .venv/bin/python benchmarks/speed.py [--quick] [--out benchmarks/results] [--device auto] [--threads N]

Everything runs on random tensors, so no data files are needed: a fake :class:`PreparedSplit` of random
uint8 images with balanced labels, and fake in-memory :class:`Trajectories` of a few randomly
initialised networks. The timed code is the real one: ``TGDD().run(ctx)`` on a :class:`DistillContext`
built with ``build_config``, ``resolve_settings`` and a ``ClassSampler``, and ``train_classifier`` for
expert-training and evaluation-training steps.

Reported (``<out>/speed_<device>.md`` and ``.csv``):

1. analytic FLOPs: MACs of every Conv2d/Linear counted with forward hooks, FLOPs = 2 x MACs;
2. the attainable convolution rate, measured in the same run by timing every distinct conv shape
   (forward, input gradient, weight gradient), and achieved / attainable per configuration;
3. seconds per iteration, iterations/s and peak memory, each configuration in its own subprocess;
4. levers at Fashion-MNIST IPC 10: batched classes, channels_last, trajectories re-read from disk;
5. a ``torch.profiler`` summary of one iteration (top ops by self CPU time, grouped by kind);
6. how time grows with IPC, classes and resolution.

The measuring, the analysis and the report are ``tgdd_bench.speed`` (FLOPs in ``tgdd_bench.flops``, the
attainable rate in ``tgdd_bench.attainable``); this script is their entry point, and each measurement runs in
a fresh process of this script (``--worker``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tgdd.runtime import resolve_device
from tgdd_bench.attainable import conv_times_from_json
from tgdd_bench.flops import ConvKey
from tgdd_bench.machine import busy_cores, describe_machine
from tgdd_bench.speed.analysis import analyse_setting, analyse_task, distill_row, train_row
from tgdd_bench.speed.plan import full_plan, quick_plan
from tgdd_bench.speed.report import write_report
from tgdd_bench.speed.workers import RESULT_PREFIX, log, run_worker, worker_main

SCRIPT = Path(__file__).resolve()  # the workers run this script again, with --worker


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (``--worker``, ``--task`` and ``--bench-seconds`` are the workers')."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny subset for CI (< 60 s)")
    parser.add_argument("--out", type=Path, default=SCRIPT.parent / "results")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--bench-seconds", type=float, default=0.5, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every setting and training task of the plan in its own worker and write the report (or, as a
    worker, one measurement, printed as a ``RESULT`` line)."""
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    if args.worker:
        print(RESULT_PREFIX + json.dumps(worker_main(args.worker, args.task, device, args.bench_seconds)), flush=True)
        return 0
    busy_before = busy_cores(2.0)
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    plan = quick_plan() if args.quick else full_plan()
    machine = describe_machine(device, threads)
    analyses = {s.name: analyse_setting(s) for s in plan.settings}
    task_analyses = {t.name: analyse_task(t) for t in plan.train_tasks}
    log(f"{len(plan.settings)} settings and {len(plan.train_tasks)} training tasks, each in its own process")
    times: dict[ConvKey, list[float]] = {}
    rows = []
    profile: dict[str, Any] = {}
    for i, setting in enumerate(plan.settings, 1):
        kind = "profile" if setting.name == plan.profile else "distill"
        result = run_worker(SCRIPT, kind, setting, device, threads, plan)
        profile = result.pop("profile", profile)
        for key, seconds in conv_times_from_json(result.pop("conv_times")).items():
            times.setdefault(key, []).append(seconds)
        rows.append(distill_row(setting, analyses[setting.name], result))
        log(
            f"[{i}/{len(plan.settings)}] {setting.name}: {rows[-1].median:.3f} s/iteration, {rows[-1].ratio:.2f} of attainable"
        )
    for task in plan.train_tasks:
        result = run_worker(SCRIPT, "train", task, device, threads, plan)
        for key, seconds in conv_times_from_json(result.pop("conv_times")).items():
            times.setdefault(key, []).append(seconds)
        rows.append(train_row(task, task_analyses[task.name], result))
        log(f"{task.name}: {rows[-1].median:.3f} s/{rows[-1].unit}")
    duration = time.perf_counter() - started
    loads = (load_start, os.getloadavg()[0])
    md_path, csv_path = write_report(
        args.out, device, machine, plan, args.quick, rows, times, profile, loads, duration, busy_before
    )
    log(f"wrote {md_path} and {csv_path} in {duration / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
