"""``speed.py``'s report: ``<out>/speed_<device>.md`` (tables and sentences written from the measured
numbers) and ``.csv`` (one record per measured row)."""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tgdd_bench.fixtures import IN_MEMORY_SNAPSHOTS
from tgdd_bench.flops import PASSES, ConvKey, ConvSpec
from tgdd_bench.markdown import fmt, md_table
from tgdd_bench.speed.analysis import CSV_COLUMNS, Row, csv_record
from tgdd_bench.speed.plan import FM, PAPER_EPOCHS, REAL_PER_CLASS, Plan, Setting

SPEC_REFERENCE = (
    "SPEC §9 (the authors' code on a 2-core CPU, torch 2.14.1, 2 threads): one TGDD iteration at Fashion-MNIST "
    "IPC 10 ~8.4 s; one evaluation epoch of 400 decoded images ~2.6 s; one expert epoch (938 steps) 430–490 s."
)


def seconds_cell(row: Row) -> str:
    if len(row.seconds) == 1:
        return fmt(row.median, 3)
    return f"{fmt(row.median, 3)} ({fmt(min(row.seconds), 3)}–{fmt(max(row.seconds), 3)})"


def distill_table(rows: Sequence[Row]) -> str:
    headers = (
        "setting", "classes", "px", "ch", "arch", "IPC", "path", "s / iteration (min–max)", "it/s",
        "GFLOP / it", "achieved GFLOP/s", "attainable GFLOP/s", "achieved / attainable", "peak MiB",
        "trajectories in memory (N=5, E=60) MiB", "load avg", "timed",
    )  # fmt: skip
    return md_table(headers, [distill_cells(r) for r in rows])


def distill_cells(r: Row) -> tuple[object, ...]:
    return (
        r.name, r.classes, r.image_size, r.channels, r.arch, r.ipc, r.path, seconds_cell(r),
        fmt(r.units_per_s, 3), fmt(r.gflop, 1), fmt(r.achieved_gflops, 1), fmt(r.attainable_gflops, 1),
        fmt(r.ratio), fmt(r.peak_mib, 0), fmt(r.extra["trajectory_mib"], 0), load_cell(r), r.timing,
    )  # fmt: skip


OWN_ATTAINABLE = "Attainable with its threads and wait policy (timed in its process):"


def baseline(rows: dict[str, Row]) -> float | None:
    """Seconds per iteration of the per-class Fashion-MNIST IPC 10 baseline: the mean of its measurement
    before the levers and its repeat after them."""
    measured = [rows[name].median for name in ("fmnist-ipc10", "fmnist-ipc10-repeat") if name in rows]
    return statistics.mean(measured) if measured else None


def load_caveat(*rows: Row) -> str:
    """A warning when the load average differed by more than 1 between the measurements compared."""
    loads = [(r.load_start + r.load_end) / 2 for r in rows]
    if max(loads) - min(loads) <= 1.0:
        return ""
    spans = ", ".join(f"{r.name} {load_cell(r)}" for r in rows)
    return f" Caution: the load average differed between these measurements ({spans})."


def load_cell(row: Row) -> str:
    return f"{fmt(row.load_start, 1)}–{fmt(row.load_end, 1)}"


def spread_text(row: Row) -> str:
    return f"median {fmt(row.median, 2)} s, iterations {fmt(min(row.seconds), 2)}–{fmt(max(row.seconds), 2)} s"


def lever_section(rows: dict[str, Row]) -> str:
    base, again, t_base = rows.get("fmnist-ipc10"), rows.get("fmnist-ipc10-repeat"), baseline(rows)
    levers = [r for r in rows.values() if not r.lever.startswith("none") and r.dataset == FM and r.ipc == 10]
    if base is None or t_base is None or not levers:
        return "_No lever settings were measured._"
    body = [
        (
            base.name,
            "none (per-class, in-memory trajectories)",
            seconds_cell(base),
            "–",
            fmt(base.ratio),
            load_cell(base),
        )
    ]
    for r in [*levers, *([again] if again else [])]:
        speedup = "–" if r is again else fmt(t_base / r.median)
        body.append((r.name, r.lever, seconds_cell(r), speedup, fmt(r.ratio), load_cell(r)))
    headers = (
        "setting",
        "lever",
        "s / iteration (min–max)",
        "speed-up vs per-class",
        "achieved / attainable",
        "load avg",
    )
    text = [md_table(headers, body), ""]
    if again is not None:
        drift = abs(again.median - base.median) / t_base
        spread = max(max(r.seconds) - min(r.seconds) for r in (base, again)) / t_base
        text.append(
            f"The per-class baseline was measured before the levers ({spread_text(base)}) and again after them "
            f"({spread_text(again)}); speed-ups are against the mean of the two medians, {fmt(t_base, 2)} s. The "
            f"medians differ by {fmt(100 * drift, 0)}%, but one run's iterations spread by up to "
            f"{fmt(100 * spread, 0)}% of that: on this machine, lever effects smaller than about "
            f"{fmt(100 * max(drift, spread), 0)}% are not resolved.\n"
        )
    text += [lever_bullet(r, base, t_base) + load_caveat(base, r) for r in levers]
    return "\n".join(text)


def lever_bullet(r: Row, base: Row, t_base: float) -> str:
    """One sentence on one lever, from its numbers."""
    speedup = t_base / r.median
    if r.lever == "batched classes":
        return (
            f"- **Batched classes**: {fmt(speedup)}x the per-class speed (every class in one forward pass; the "
            f"same update, tested in `tests/test_methods*.py`). Peak memory {fmt(r.peak_mib, 0)} MiB against "
            f"{fmt(base.peak_mib, 0)} MiB per-class."
        )
    if r.lever == "channels_last":
        effect = "a speed-up" if speedup > 1.02 else ("a slowdown" if speedup < 0.98 else "no clear effect")
        return (
            f"- **channels_last** (networks converted with `memory_format=torch.channels_last`, real batches too): "
            f"{fmt(speedup)}x, i.e. {effect} on this machine. The attainable conv rate in that layout is "
            f"{fmt(r.attainable_gflops, 1)} GFLOP/s against {fmt(base.attainable_gflops, 1)} GFLOP/s."
        )
    if r.lever == "trajectories re-read from disk":
        load = r.extra.get("disk_load_seconds", float("nan"))
        size = r.extra.get("disk_file_mib", float("nan"))
        return (
            f"- **Trajectories re-read from disk** (a {fmt(size, 0)} MiB file of E+1 = {PAPER_EPOCHS + 1} snapshots "
            f"`torch.load`ed every iteration, warm page cache): one load takes {fmt(1000 * load, 1)} ms, "
            f"{fmt(100 * load / t_base, 1)}% of an iteration, {fmt(load * 10_000 / 60, 1)} min over 10,000 "
            f"iterations (more from a cold or network file system). End to end the run differs from the baseline by "
            f"{fmt(r.median - t_base, 3)} s per iteration, against a spread of "
            f"{fmt(max(base.seconds) - min(base.seconds), 3)} s between the baseline's own iterations: the direct "
            "timing of the load is the number to use."
        )
    if r.lever == "OMP_WAIT_POLICY=PASSIVE":
        return (
            f"- **OMP_WAIT_POLICY=PASSIVE** (set in that process's environment): {fmt(speedup)}x. By default an "
            "idle OpenMP thread spins; when another process takes its core, every parallel region waits for it "
            "to be scheduled again, which on a shared CPU costs milliseconds per op. Passive waiting avoids "
            "that (on an idle machine spinning is usually as fast or faster; not measured here). "
            f"{OWN_ATTAINABLE} {fmt(r.attainable_gflops, 1)} GFLOP/s."
        )
    if r.lever == "torch.compile":
        return (
            f"- **torch.compile** (`distill.compile=true`: the extractor's features and the expert's forward, "
            f"compiled by inductor in the warm-up iteration, not timed): {fmt(speedup)}x the per-class speed, "
            f"{fmt(r.ratio)} of attainable. Inductor fuses instance norm, ReLU and pooling into few passes over "
            "the activations, the memory-bound part of the iteration (§5)."
        )
    return (
        f"- **{r.lever}** (torch.set_num_threads): {fmt(speedup)}x the speed with the run's threads. "
        f"{OWN_ATTAINABLE} {fmt(r.attainable_gflops, 1)} GFLOP/s."
    )


def training_table(rows: Sequence[Row]) -> str:
    headers = (
        "step", "arch", "batch", "augmentation", "s / unit", "unit", "GFLOP / unit", "achieved GFLOP/s",
        "attainable GFLOP/s", "achieved / attainable", "peak MiB", "timed",
    )  # fmt: skip
    text = md_table(headers, [training_cells(r) for r in rows])
    expert = next((r for r in rows if r.unit == "step"), None)
    if expert is not None:
        steps = math.ceil(60_000 / expert.extra["batch_size"])
        text += (
            f"\n\nAt this rate one expert epoch over 60,000 Fashion-MNIST images ({steps} steps) takes "
            f"~{fmt(steps * expert.median, 0)} s."
        )
    return text


def training_cells(r: Row) -> tuple[object, ...]:
    return (
        r.path, r.arch, r.extra["batch_size"], f"{r.extra['augment']} + CutMix p{r.extra['cutmix_prob']}",
        fmt(r.median, 3), r.unit if r.unit == "step" else f"epoch of {r.extra['images']} images",
        fmt(r.gflop, 2), fmt(r.achieved_gflops, 1), fmt(r.attainable_gflops, 1), fmt(r.ratio), fmt(r.peak_mib, 0),
        r.timing,
    )  # fmt: skip


def conv_table(times: dict[ConvKey, list[float]]) -> str:
    """Per shape and pass, the median rate over the processes that timed it."""
    by_shape: dict[tuple[ConvSpec, int, bool], dict[str, float]] = {}
    for (spec, batch, channels_last, kind), seconds in times.items():
        by_shape.setdefault((spec, batch, channels_last), {})[kind] = statistics.median(seconds)
    body = []
    for (spec, batch, channels_last), passes in sorted(
        by_shape.items(), key=lambda kv: (kv[0][2], kv[0][0].height, kv[0][0].in_channels, kv[0][1])
    ):
        gflop = 2 * batch * spec.out_channels * spec.in_channels // spec.groups * math.prod(spec.kernel)
        gflop *= _output_pixels(spec) / 1e9
        cells = [f"{fmt(gflop / passes[p], 1)}" if p in passes else "–" for p in PASSES]
        body.append((spec.describe(), batch, "channels_last" if channels_last else "NCHW", fmt(gflop, 2), *cells))
    headers = (
        "conv (in -> out)",
        "batch",
        "layout",
        "GFLOP / pass",
        "fwd GFLOP/s",
        "input-grad GFLOP/s",
        "weight-grad GFLOP/s",
    )
    return md_table(headers, body)


def _output_pixels(spec: ConvSpec) -> int:
    out = [
        (size + 2 * pad - dil * (k - 1) - 1) // stride + 1
        for size, pad, dil, k, stride in zip(
            (spec.height, spec.width), spec.padding, spec.dilation, spec.kernel, spec.stride, strict=True
        )
    ]
    return out[0] * out[1]


def profile_section(profile: dict[str, Any], setting: Setting) -> str:
    total = profile["total_self_cpu_seconds"]
    body = [
        (
            f"`{e['op']}`",
            e["family"],
            fmt(1000 * e["self_seconds"], 1),
            fmt(100 * e["self_seconds"] / total, 1),
            e["calls"],
        )
        for e in profile["top"]
    ]
    top = md_table(("op", "family", "self CPU ms", "% of self CPU", "calls"), body)
    families = md_table(
        ("family", "self CPU ms", "%"),
        [(k, fmt(1000 * v, 1), fmt(100 * v / total, 1)) for k, v in profile["families"].items()],
    )
    conv = profile["families"].get("convolution", 0.0) / total
    rest = [(k, v / total) for k, v in profile["families"].items() if k != "convolution"][:5]
    where = ", ".join(f"{k} {fmt(100 * share, 0)}%" for k, share in rest)
    return (
        f"One iteration of `{setting.name}` ({setting.path}, run after its timed iterations, in the same process) under `torch.profiler` took "
        f"{fmt(profile['iteration_seconds'], 2)} s wall-clock (profiler overhead included), "
        f"{fmt(total, 2)} s of self CPU time on the main thread.\n\n"
        f"Top-10 ops by self CPU time:\n\n{top}\n\nBy op family (every op, classified by name):\n\n{families}\n\n"
        f"Convolutions (forward and backward) are {fmt(100 * conv, 0)}% of the self CPU time; the rest goes to "
        f"{where}."
    )


def ratio_text(rows: dict[str, Row], a: str, b: str) -> tuple[float, float] | None:
    """(time ratio, FLOP ratio) of setting b over setting a, or None when either is missing."""
    if a not in rows or b not in rows:
        return None
    return rows[b].median / rows[a].median, rows[b].gflop / rows[a].gflop


def versus_flops(ratios: tuple[float, float]) -> str:
    """How a time ratio compares with the FLOP ratio of the same pair of settings."""
    q = ratios[0] / ratios[1]
    if q > 1.25:
        return "faster than the FLOPs (the non-convolution work grows more)"
    if q < 0.8:
        return "slower than the FLOPs (larger batches run at a higher rate and fixed costs are amortised)"
    return "roughly in proportion to the FLOPs"


def scaling_section(rows: dict[str, Row]) -> str:
    """How time grows with IPC, classes and resolution, written from the measured numbers."""
    parts = []
    ipc10, ipc50 = ratio_text(rows, "fmnist-ipc1", "fmnist-ipc10"), ratio_text(rows, "fmnist-ipc1", "fmnist-ipc50")
    if ipc10:
        text = f"**IPC.** From IPC 1 to IPC 10 (Fashion-MNIST, 10 classes) the time per iteration grows {fmt(ipc10[0])}x for {fmt(ipc10[1])}x the FLOPs"
        if ipc50:
            text += f", and to IPC 50 {fmt(ipc50[0])}x for {fmt(ipc50[1])}x the FLOPs"
        text += (
            ". The 128 real images per class are a fixed cost and the synthetic batch (IPC x f^2 decoded images, "
            "capped at 200 per class) goes forward and backward through two networks, so the work grows "
            f"sub-linearly in IPC; time grows {versus_flops(ipc50 or ipc10)}."
        )
        text += load_caveat(*(rows[n] for n in ("fmnist-ipc1", "fmnist-ipc10", "fmnist-ipc50") if n in rows))
        parts.append(text)
    classes = ratio_text(rows, "cifar10-ipc10", "cifar100-ipc10")
    if classes:
        small, large = rows["cifar10-ipc10"], rows["cifar100-ipc10"]
        text = (
            f"**Classes.** From 10 to 100 classes at 32 px (CIFAR-10 to CIFAR-100, IPC 10) the time grows "
            f"{fmt(classes[0], 1)}x for {fmt(classes[1], 1)}x the FLOPs. The class steps are independent, so the work "
            "is linear in the number of classes"
        )
        if 0.8 <= classes[0] / classes[1] <= 1.25:
            text += " and so, within 25%, is the measured time."
        else:
            text += f"; the measured time is {fmt(classes[0] / classes[1])} of linear."
        parts.append(text + load_caveat(small, large))
    if "cifar10-ipc10" in rows and "tinyimagenet-ipc10" in rows:
        small, large = rows["cifar10-ipc10"], rows["tinyimagenet-ipc10"]
        per_class = (large.median / large.classes) / (small.median / small.classes)
        flops = (large.gflop / large.classes) / (small.gflop / small.classes)
        parts.append(
            f"**Resolution.** Per class, 64 px with ConvNet-4 (TinyImageNet) costs {fmt(per_class, 1)}x a 32 px ConvNet-3 "
            f"class (CIFAR-10) for {fmt(flops, 1)}x the FLOPs (4x the pixels in every layer but the extra block's)."
            + load_caveat(small, large)
        )
    channels = ratio_text(rows, "fmnist-ipc10", "cifar10-ipc10")
    if channels:
        parts.append(
            f"**Input channels.** 3-channel 32 px input (CIFAR-10) against 1-channel 28 px (Fashion-MNIST, padded to act "
            f"as 32 px): {fmt(channels[0])}x the time for {fmt(channels[1])}x the FLOPs; only the first conv differs."
            + load_caveat(rows["fmnist-ipc10"], rows["cifar10-ipc10"])
        )
    if parts:
        projections = ", ".join(
            f"{name} {fmt(rows[name].median * 10_000 / 3600, 1)} h"
            for name in ("fmnist-ipc10", "fmnist-ipc50", "cifar100-ipc10", "tinyimagenet-ipc10")
            if name in rows
        )
        parts.append(f"**10,000 iterations** (the paper's budget) at these rates: {projections}.")
    return "\n\n".join(parts) if parts else "_Too few settings measured to compare._"


def headline(rows: dict[str, Row], profile: dict[str, Any] | None) -> str:
    lines = []
    base, batched, t_base = rows.get("fmnist-ipc10"), rows.get("fmnist-ipc10-batched"), baseline(rows)
    if base is not None:
        lines.append(
            f"- Fashion-MNIST IPC 10 (per-class, the default path): {fmt(base.median, 2)} s / iteration, "
            f"{fmt(base.achieved_gflops, 1)} GFLOP/s achieved against {fmt(base.attainable_gflops, 1)} GFLOP/s attainable "
            f"for its convolutions: **{fmt(100 * base.ratio, 0)}% of attainable**."
        )
    if t_base is not None and batched is not None:
        lines.append(
            f"- Batched classes: {fmt(batched.median, 2)} s / iteration, **{fmt(t_base / batched.median)}x** the "
            f"per-class speed, {fmt(100 * batched.ratio, 0)}% of attainable."
        )
    if t_base is not None:
        others = [r for r in rows.values() if not r.lever.startswith("none") and r.lever != "batched classes"]
        effects = ", ".join(f"{r.lever} {fmt(t_base / r.median)}x" for r in others)
        if effects:
            lines.append(f"- Other levers, speed relative to per-class (>1 is faster): {effects}.")
    if profile is not None:
        total = profile["total_self_cpu_seconds"]
        conv = profile["families"].get("convolution", 0.0) / total
        rest = [(k, v / total) for k, v in profile["families"].items() if k != "convolution"][:4]
        where = ", ".join(f"{k} {fmt(100 * share, 0)}%" for k, share in rest)
        lines.append(
            f"- In the profiled iteration convolutions take {fmt(100 * conv, 0)}% of the self CPU time; the rest "
            f"is mostly {where} (§5)."
        )
    return "\n".join(lines)


def write_report(
    out: Path, device: torch.device, machine: dict[str, Any], plan: Plan, quick: bool, rows: list[Row],
    times: dict[ConvKey, list[float]], profile: dict[str, Any], loads: tuple[float, float], duration: float,
    busy_before: float | None = None,
) -> tuple[Path, Path]:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    stem = f"speed_{device.type}"
    csv_path, md_path = out / f"{stem}.csv", out / f"{stem}.md"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(csv_record(r) for r in rows)
    by_name = {r.name: r for r in rows if r.section == "distillation"}
    profiled = next(s for s in plan.settings if s.name == plan.profile)
    shared = busy_before > 0.3 if busy_before is not None else loads[0] > 0.5
    measured = (
        f"Other processes kept {fmt(busy_before)} of the {machine['cores']} cores busy in the 2 s before it "
        "started (/proc/stat). "
        if busy_before is not None
        else ""
    )
    load_note = measured + (
        f"Load average (1 min) {fmt(loads[0])} when the benchmark started (it still carries the minute before "
        f"the start) and {fmt(loads[1])} when it ended, on {machine['cores']} cores. "
    )
    load_note += (
        "**The CPU was shared with other jobs while this ran, so absolute times are noisy and pessimistic**; "
        "compare ratios measured close together, and rerun on an idle machine for absolute numbers."
        if shared
        else "The machine was otherwise idle at the start."
    )
    machine_rows = [(k, v) for k, v in machine.items()]
    text = f"""# Distillation speed ({device.type}{", quick smoke run" if quick else ""})

Generated by `benchmarks/speed.py{" --quick" if quick else ""}` in {fmt(duration / 60, 1)} min. {load_note}

{md_table(("machine", ""), machine_rows)}

Inputs are random tensors (a fake prepared split of {REAL_PER_CLASS} random uint8 images per class, one fake
in-memory trajectory of {IN_MEMORY_SNAPSHOTS} randomly initialised snapshots); the timed code is the real
`TGDD().run(ctx)` and `train_classifier`. TGDD settings are the method's defaults (SPEC §3): f = 2, 128 real
images per class, all decoded synthetic images per class (at most 200), siamese DSA `color_crop_cutout`.
Peak memory is the process's peak beyond imports plus data ({rows[0].extra["memory_method"]}), each
configuration in its own subprocess; the trajectories a real run holds (N = 5, E = 60) come on top and are
given in their own column. FLOPs count Conv2d and Linear only (2 x MACs); an input or weight
gradient costs one forward's FLOPs. "Attainable" is the rate the convolutions of that configuration reach when
each of their shapes is timed alone (forward, input gradient, weight gradient; median over ~{plan.bench_seconds} s
per shape), in the configuration's own process right after its timed iterations, so with the same threads and
nearly the same machine load; achieved / attainable therefore says how close the whole iteration comes to doing
nothing but its convolutions.

## Headline

{headline(by_name, profile)}

{SPEC_REFERENCE}

## 1–3. Distillation: time, FLOPs, attainable rate, memory

{distill_table([r for r in rows if r.section == "distillation"])}

"timed" with class steps: the per-class path's steps are independent, so the big configurations time a few class
steps of one iteration (one warm-up class first) and multiply by the number of classes; the per-iteration network
loading is left out (milliseconds).

## 4. Levers (Fashion-MNIST, IPC 10)

{lever_section(by_name)}

## Expert and evaluation training steps

{training_table([r for r in rows if r.section == "training"])}

## Attainable convolution rates (microbenchmark, this run; median over the processes that timed each shape)

{conv_table(times)}

## 5. Where the time goes (profile)

{profile_section(profile, profiled)}

## 6. How time grows with IPC, classes and resolution

{scaling_section(by_name)}
"""
    md_path.write_text(text)
    return md_path, csv_path
