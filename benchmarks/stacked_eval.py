"""Stacked against separate evaluation runs, side by side, on the main job's evaluation.

Usage::

    .venv/bin/python benchmarks/stacked_eval.py [--epochs 50] [--repeats 2] [--threads 1] [--ipcs 1 10] [--out benchmarks/results]

The main job (``config/config.yaml``) evaluates digits (1 channel, 16 px, 10 classes) IPC 1 and 10
sets (decoded: 40 and 400 images) on convnet-2-w32 and resnet10-ap-w8, 3 runs of 50 epochs under
protocol ``tgdd``, one torch thread per job. This script times exactly that training, with the
project's own code, on random images of that shape (speed does not depend on the pixels): the R
runs one after another (:func:`tgdd.train.train_classifier`, today's path) and the same R runs as
one stacked training (:func:`tgdd.stacked.train_stacked`), through vmap, on the grouped twin, and on it
compiled by ``torch.compile`` (compile time included). The modes alternate, each
measured ``--repeats`` times after an untimed one-epoch warm-up, and the fastest of each is kept (the machine is shared). It writes
``<out>/stacked_eval_<device>.md``: machine, torch version, seconds and the ratio separate/stacked
per cell, stacked through vmap and on the grouped twin (tgdd.grouped). ``evaluate.stack_runs: auto``
follows these ratios (tgdd.stacked.use_stacking).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import torch

from tgdd.artifacts import cpu_model
from tgdd.config import load_config
from tgdd.models import build_model
from tgdd.resolve import protocol_settings
from tgdd.runtime import derive_seed, generator, numpy_rng, seeded_init
from tgdd.stacked import train_stacked
from tgdd.train import train_classifier

ROOT = Path(__file__).resolve().parents[1]
CELLS = ((1, 40), (10, 400))  # (IPC, decoded images) of the main job's digits sets (factor 2)


MODES = ("separate", "vmap", "grouped", "compiled")
"""One after another (today's loop), stacked through vmap, stacked on the grouped twin (tgdd.grouped), and
on the grouped twin with its forward compiled by ``torch.compile`` (its compile time included: what a job pays)."""
COLUMNS = {
    "separate": "separate",
    "vmap": "stacked, vmap",
    "grouped": "stacked, grouped",
    "compiled": "grouped, compiled",
}


def time_runs(arch: str, images: torch.Tensor, labels: torch.Tensor, settings, runs: int, mode: str) -> float:
    """Seconds to train ``runs`` fresh networks of ``arch`` on ``images`` in ``mode`` (:data:`MODES`)."""
    seeds = [derive_seed(0, "evaluate", arch, run) for run in range(runs)]
    models = []
    for seed in seeds:
        with seeded_init(seed):
            models.append(build_model(arch, images.shape[1], images.shape[2], 10))
    gens = [generator(seed, "batches") for seed in seeds]
    rngs = [numpy_rng(seed, "cutmix") for seed in seeds]
    mean, std = torch.full((1,), 0.5), torch.full((1,), 0.25)
    if mode == "compiled":
        torch._dynamo.reset()  # a job compiles afresh (and dynamo's cache limit would fall back to eager silently)
    start = time.perf_counter()
    if mode == "separate":
        for model, gen, rng in zip(models, gens, rngs, strict=True):
            train_classifier(model, images, labels, settings, mean, std, gen, rng)
    else:
        grouped = mode in ("grouped", "compiled")
        train_stacked(
            models, images, labels, settings, mean, std, gens, rngs, grouped=grouped, compile=mode == "compiled"
        )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="default: the main job's (50)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="the main job's jobs use 1")
    parser.add_argument("--ipcs", type=int, nargs="+", default=[ipc for ipc, _ in CELLS], help="cells to time")
    parser.add_argument("--modes", nargs="+", choices=MODES[1:], default=list(MODES[1:]), help="stacked modes to time")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(ROOT / "config" / "config.yaml")
    settings = protocol_settings(cfg)
    if args.epochs is not None:
        settings = replace(settings, epochs=args.epochs)
    load_start = os.getloadavg()[0]
    modes = ["separate", *args.modes]
    rows = []
    for arch in cfg.evaluate.archs:
        for ipc, count in (cell for cell in CELLS if cell[0] in args.ipcs):
            gen = torch.Generator().manual_seed(ipc)
            images = torch.rand(count, 1, 16, 16, generator=gen)
            labels = torch.arange(count) % 10
            warm = replace(settings, epochs=1)
            for mode in modes:  # first calls pay for lazy initialisation: untimed
                time_runs(arch, images, labels, warm, cfg.evaluate.runs, mode)
            times: dict[str, list[float]] = {mode: [] for mode in modes}
            for _ in range(args.repeats):
                for mode in modes:
                    times[mode].append(time_runs(arch, images, labels, settings, cfg.evaluate.runs, mode))
            best = {mode: min(values) for mode, values in times.items()}
            rows.append((arch, ipc, count, best))
            print(f"{arch} IPC {ipc}: " + ", ".join(f"{mode} {best[mode]:.2f} s" for mode in modes))
    stacked = modes[1:]
    lines = [
        "# Stacked against separate evaluation runs (CPU)",
        "",
        "`benchmarks/stacked_eval.py`: the main job's evaluation (config/config.yaml: digits, 1 x 16 px, protocol "
        f"`tgdd`, {cfg.evaluate.runs} runs of {settings.epochs} epochs, batch {settings.batch_size}, "
        f"DSA `{settings.augment}` + CutMix p{settings.cutmix_prob}), the {cfg.evaluate.runs} runs one after another "
        "(`train_classifier`) or as one stacked training (`tgdd.stacked.train_stacked`) through vmap or on the "
        "grouped twin (`tgdd.grouped`, what it takes where there is one), also with its forward compiled "
        f"(`torch.compile`, compile time included); fastest of {args.repeats} after a one-epoch warm-up, the modes "
        "alternating.",
        "",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores (shared), {platform.system()} {platform.machine()}",
        f"- torch {torch.__version__}, {args.threads} thread(s); load average {load_start:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        "",
        "| network | IPC | decoded images | "
        + " | ".join(f"{COLUMNS[m]} (s)" for m in modes)
        + " | "
        + " | ".join(f"separate / {m}" for m in stacked)
        + " |",
        "|" + "---|" * (3 + len(modes) + len(stacked)),
        *(
            f"| {a} | {i} | {c} | "
            + " | ".join(f"{best[m]:.2f}" for m in modes)
            + " | "
            + " | ".join(f"{best['separate'] / best[m]:.2f}" for m in stacked)
            + " |"
            for a, i, c, best in rows
        ),
        "",
        "A ratio above 1: stacking is faster. `evaluate.stack_runs: auto` stacks on the CPU where there is a grouped "
        "twin (tgdd.stacked.use_stacking). Nothing is compiled where the compiled column is not faster than the "
        "grouped one (inductor's on-disk cache is warm after the warm-up: a first compile costs more).",
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "stacked_eval_cpu.md"
    path.write_text("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
