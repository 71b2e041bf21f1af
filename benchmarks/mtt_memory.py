"""Peak memory and seconds per iteration of MTT (tgdd.methods.mtt).

Usage::

    .venv/bin/python benchmarks/mtt_memory.py [--quick] [--out benchmarks/results] [--device auto] [--threads N]

MTT's memory is its unrolled student: every one of ``syn_steps`` student steps keeps its forward and the
backward recorded with ``create_graph=True`` until the final backward, so the peak grows linearly in
``syn_steps x batch_syn``. Each case runs the real ``MTT().run(ctx)`` in its own subprocess on random
inputs (a fake prepared split of random uint8 images, fake trajectories of three randomly initialised
snapshots repeated to the epochs the settings need, so they cost three snapshots of memory) and reports the
process's peak beyond imports, data and those snapshots (``tgdd_bench.machine.MemoryMeter``: peak
resident set on CPU, ``max_memory_allocated`` on CUDA). The trajectories a real run holds come on top and
are given in their own column (one buffer file of MTT's experts: 10 x 51 snapshots, what its cycle holds).

Writes ``<out>/mtt_memory_<device>.md`` and ``.csv``; speed.py's benchmark is TGDD's (its FLOP model,
conv microbenchmarks and levers are TGDD's iteration), so MTT's measurement lives here.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tgdd.cards.mtt import MTTSettings
from tgdd.config import build_config
from tgdd.data.prepared import ClassSampler
from tgdd.data.registry import get_dataset
from tgdd.experts import Trajectories
from tgdd.methods import DistillContext
from tgdd.methods.mtt import MTT, FlatLayout
from tgdd.models import build_model
from tgdd.resolve import resolve_settings
from tgdd.runtime import generator, resolve_device
from tgdd_bench.fixtures import fake_split, random_snapshot
from tgdd_bench.machine import MemoryMeter, busy_cores, describe_machine, now
from tgdd_bench.markdown import fmt, md_table

MIB = 2**20
RESULT_PREFIX = "RESULT "
MTT_EXPERTS, MTT_SNAPSHOTS = 100, 51  # buffer.py: 100 experts of 50 epochs (E+1 snapshots each)
MTT_PER_FILE = 10  # buffer.py's save_interval: the experts of one file, all that the cycle holds at once
FM = "fashion_mnist"
COLUMNS = (
    "name", "dataset", "arch", "ipc", "syn_steps", "batch_syn", "iterations", "seconds_per_iteration",
    "peak_mib", "peak_mib_per_step", "graph_mib", "trajectories_gib", "memory_method",
)  # fmt: skip


@dataclass(frozen=True)
class Case:
    """One MTT configuration, run in its own subprocess."""

    name: str
    dataset: str
    arch: str
    ipc: int
    syn_steps: int | None = None  # None: the published value (CIFAR-10's row for Fashion-MNIST)
    batch_syn: int | None = None  # None: the published value (every synthetic image)
    timed: int = 1  # timed iterations
    warmup: bool = False  # one untimed iteration first (its peak counts: every iteration is the same size)
    headline: bool = False


def full_plan() -> tuple[Case, ...]:
    """Fashion-MNIST IPC 10 with the published (CIFAR-10 IPC 10) syn_steps 30 and batch_syn 100, at width 128
    (the paper's ConvNet) and at the CPU preset's width 32; fewer steps and a half batch show the slope."""
    return (
        Case("fmnist-ipc10-w128", FM, "convnet-3", 10, headline=True),
        Case("fmnist-ipc10-w128-steps5", FM, "convnet-3", 10, syn_steps=5),
        Case("fmnist-ipc10-w128-steps10", FM, "convnet-3", 10, syn_steps=10),
        Case("fmnist-ipc10-w128-steps10-batch50", FM, "convnet-3", 10, syn_steps=10, batch_syn=50),
        Case("fmnist-ipc10-w32", FM, "convnet-3-w32", 10, timed=2, warmup=True, headline=True),
        Case("fmnist-ipc10-w32-steps10", FM, "convnet-3-w32", 10, syn_steps=10, timed=2, warmup=True),
    )


def quick_plan() -> tuple[Case, ...]:
    """A smoke run (seconds): a narrow network, two and six steps."""
    return (
        Case("quick-w16-steps2", FM, "convnet-3-w16", 2, syn_steps=2, headline=True),
        Case("quick-w16-steps6", FM, "convnet-3-w16", 2, syn_steps=6),
    )


class Clock:
    """Stands in for the checkpointer: stamps the end of every iteration and keeps the bytes of the tensors
    its graph saved for the backward (unique storages, recorded by :meth:`pack`), the allocator-independent
    part of the peak."""

    resume_blob = None

    def __init__(self, device: torch.device) -> None:
        self.device, self.ends = device, [now(device)]
        self.saved: dict[int, int] = {}
        self.graph_bytes: list[int] = []

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        self.saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    def after_iteration(self, iteration: int, state: Any) -> None:
        self.ends.append(now(self.device))
        self.graph_bytes.append(sum(self.saved.values()))
        self.saved = {}


def fake_trajectories(arch: str, dataset: str, epochs: int, device: torch.device) -> Trajectories:
    """One trajectory of ``epochs + 1`` snapshots made of three random ones repeated (shared storage)."""
    spec = get_dataset(dataset)
    base = [random_snapshot(arch, spec, seed, device) for seed in range(3)]
    return Trajectories([[base[j % 3] for j in range(epochs + 1)]], "random")


def worker(case: Case, device: torch.device) -> dict[str, Any]:
    spec = get_dataset(case.dataset)
    train = fake_split(spec, max(case.ipc, 16))
    own = {k: v for k, v in (("syn_steps", case.syn_steps), ("batch_syn", case.batch_syn)) if v is not None}
    iterations = case.timed + int(case.warmup)
    cfg = build_config(
        {
            "dataset": case.dataset,
            "experts": {"arch": case.arch},
            "distill": {"method": "mtt", "ipc": case.ipc, "iterations": iterations, "checkpoint_every": 0,
                        "mtt": own},
            "tracking": {"enabled": False},
        }
    )  # fmt: skip
    settings = resolve_settings(cfg, spec)
    resolved = settings.of(MTTSettings)
    epochs = resolved.max_start_epoch - 1 + resolved.expert_epochs
    trajectories = fake_trajectories(case.arch, case.dataset, epochs, device)
    clock = Clock(device)
    sampler = ClassSampler(train, device)
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)  # its first call imports torch._dynamo (~170 MiB)
    memory = MemoryMeter(device)  # baseline: imports, data and the three snapshots
    ctx = DistillContext(
        cfg=cfg, settings=settings, spec=spec, train=train, sampler=sampler, device=device,
        gen=generator(0, "mtt-memory", case.name, device=device), trajectories=trajectories, checkpoint=clock,
        progress=False,
    )  # fmt: skip
    started = now(device)
    clock.ends = [started]
    with torch.autograd.graph.saved_tensors_hooks(clock.pack, lambda tensor: tensor):
        MTT().run(ctx)
    peak = memory.extra_peak_mib()
    seconds = [b - a for a, b in zip(clock.ends, clock.ends[1:], strict=False)]
    params = FlatLayout.of(build_model(case.arch, spec.channels, spec.image_size, spec.num_classes)).size
    return {
        "syn_steps": resolved.syn_steps,
        "batch_syn": resolved.batch_syn,
        "seconds": seconds[int(case.warmup) :],
        "peak_mib": peak,
        "graph_mib": max(clock.graph_bytes) / MIB,
        "memory_method": memory.method,
        "trajectories_gib": MTT_PER_FILE * MTT_SNAPSHOTS * params * 4 / 2**30,
    }


def run_worker(case: Case, device: torch.device, threads: int, timeout: float) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", json.dumps(asdict(case)), "--device", str(device),
               "--threads", str(threads)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{case.name} failed:\n{done.stderr[-3000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith(RESULT_PREFIX))
    return json.loads(line[len(RESULT_PREFIX) :])


def record(case: Case, result: dict[str, Any]) -> dict[str, Any]:
    seconds = sorted(result["seconds"])
    return {
        "name": case.name,
        "dataset": case.dataset,
        "arch": case.arch,
        "ipc": case.ipc,
        "syn_steps": result["syn_steps"],
        "batch_syn": result["batch_syn"],
        "iterations": len(seconds),
        "seconds_per_iteration": seconds[len(seconds) // 2],
        "peak_mib": result["peak_mib"],
        "peak_mib_per_step": result["peak_mib"] / result["syn_steps"],
        "graph_mib": result["graph_mib"],
        "trajectories_gib": result["trajectories_gib"],
        "memory_method": result["memory_method"],
    }


def slope(rows: Sequence[dict[str, Any]], arch: str) -> tuple[float, float] | None:
    """Least-squares line peak = a + b * syn_steps * batch_syn over the cases of ``arch`` (None: < 2 cases)."""
    points = [(r["syn_steps"] * r["batch_syn"], r["peak_mib"]) for r in rows if r["arch"] == arch]
    if len({x for x, _ in points}) < 2:
        return None
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    b = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    return my - b * mx, b


def write_report(out: Path, device: torch.device, machine: dict[str, Any], quick: bool, rows: list[dict[str, Any]],
                 busy: float | None, duration: float) -> Path:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    stem = f"mtt_memory_{device.type}{'_quick' if quick else ''}"
    with (out / f"{stem}.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    table = md_table(
        ("case", "network", "syn_steps", "batch_syn", "s / iteration", "peak MiB", "peak MiB per step",
         "graph MiB (saved for backward)", f"{MTT_PER_FILE} x {MTT_SNAPSHOTS} snapshots held (GiB)"),
        [(r["name"], r["arch"], r["syn_steps"], r["batch_syn"], f"{fmt(r['seconds_per_iteration'], 1)}"
          f" ({plural(r['iterations'])})", fmt(r["peak_mib"], 0), fmt(r["peak_mib_per_step"], 1),
          fmt(r["graph_mib"], 0), fmt(r["trajectories_gib"], 2)) for r in rows],
    )  # fmt: skip
    fits = []
    for arch in sorted({r["arch"] for r in rows}):
        line = slope(rows, arch)
        if line is not None:
            a, b = line
            fits.append(
                f"- `{arch}`: peak ≈ {fmt(a, 0)} MiB + {fmt(b * 1000, 1)} MiB per 1000 (step x image), i.e. "
                f"{fmt(b * 100, 1)} MiB per step at batch_syn 100; extrapolated to 80 steps x 125 images (CIFAR-100 IPC 50's, the largest published at 32 px): "
                f"{fmt((a + b * 80 * 125) / 1024, 1)} GiB (least squares over the cases above)"
            )
    load = f"Other processes kept {fmt(busy)} of {machine['cores']} cores busy just before it started. " if busy else ""
    text = f"""# MTT: peak memory and time per iteration ({device.type}{", quick smoke run" if quick else ""})

Generated by `benchmarks/mtt_memory.py{" --quick" if quick else ""}` in {fmt(duration / 60, 1)} min. {load}Each case is
one process running the real `MTT().run(ctx)` on random inputs (Fashion-MNIST's shape: 28 px, padded to act as
32 px, so CIFAR's 32 px takes the same per step). Peak: {rows[0]["memory_method"]}, beyond imports, data and the
expert snapshots in memory. The last column is what MTT's own experts take in memory on top: `tgdd distill`
holds one buffer file's experts at a time ({MTT_PER_FILE} x {MTT_SNAPSHOTS} snapshots, float32; `distill.mtt.experts_per_file`), as
the authors' code does; all {MTT_EXPERTS} (`expert_selection=uniform`, their `--load_all`) take {MTT_EXPERTS // MTT_PER_FILE}x that. "Graph" is the sum of the unique
storages the unroll saved for its backward (`torch.autograd.graph.saved_tensors_hooks`), the part of the peak
that does not depend on the allocator; the peak adds the final backward's transients and what the allocator
keeps (glibc serves tensors under its 32 MiB mmap threshold from its heap, which holds on to freed blocks: the
narrow network's peak exceeds its graph by more).

{md_table(("machine", ""), list(machine.items()))}

{table}

Linear in syn_steps x batch_syn:

{chr(10).join(fits) if fits else "- (one case per network: no fit)"}
"""
    path = out / f"{stem}.md"
    path.write_text(text)
    return path


def plural(count: int) -> str:
    return f"{count} iteration{'' if count == 1 else 's'}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (seconds)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--only", help="run only the cases whose name contains this")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(RESULT_PREFIX + json.dumps(worker(Case(**json.loads(args.worker)), device)), flush=True)
        return 0
    busy = busy_cores(2.0)
    started = time.perf_counter()
    cases = [c for c in (quick_plan() if args.quick else full_plan()) if not args.only or args.only in c.name]
    rows = []
    for case in cases:
        rows.append(record(case, run_worker(case, device, torch.get_num_threads(), 3600.0)))
        r = rows[-1]
        print(f"[mtt_memory] {case.name}: {r['seconds_per_iteration']:.1f} s/iteration, peak {r['peak_mib']:.0f} MiB",
              file=sys.stderr, flush=True)  # fmt: skip
    machine = describe_machine(device, torch.get_num_threads())
    path = write_report(args.out, device, machine, args.quick, rows, busy, time.perf_counter() - started)
    print(f"[mtt_memory] wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    sys.exit(main())
