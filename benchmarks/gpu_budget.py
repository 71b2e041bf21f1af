"""Expected GPU time of the paper preset, data set by data set, from its exact FLOP count.

    .venv/bin/python benchmarks/gpu_budget.py [--config config/paper.yaml] [--tflops 5 20]

No GPU needed: every cell of the config's matrix is resolved exactly as `tgdd` resolves it (method
defaults, per_dataset blocks, the evaluation-epoch rule of the 128 px subsets), and the Conv2d/Linear
FLOPs of its expert training, distillation and evaluation are counted with forward hooks by
`tgdd.cost` (the same model sizes the workflow's SLURM jobs: workflow/README.md, "Job resources").
Hours follow at the achieved rates given with ``--tflops``: the FLOPs are exact, the rate is the
assumption. Calibrate it with `benchmarks/gpu_check.sh` (it prints the rate a
GPU achieves on a TGDD iteration) and rerun with that number.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from tgdd.cards import METHODS
from tgdd.config import load_config
from tgdd.cost import distill_work, evaluation_work, trajectory_work
from tgdd.resolve import num_trajectories
from tgdd.steps import matrix_configs

REPO = Path(__file__).resolve().parents[1]


def budget(config: Path) -> dict[str, dict[str, float]]:
    """PFLOP per data set and stage (experts once per data set and seed, as the workflow shares them)."""
    cfg = load_config(config)
    table: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    experts_done = set()
    for cell in matrix_configs(cfg):
        row = table[cell.dataset]
        card = METHODS.get(cell.distill.method)
        key = (cell.dataset, cell.seed, cell.experts.arch, card.expert_recipe)
        if card.needs_trajectories and key not in experts_done:
            experts_done.add(key)
            one = trajectory_work(cell, card.expert_recipe).flops
            row["experts"] += num_trajectories(cell, card.expert_recipe) * one
        row["distill"] += distill_work(cell).flops
        row["evaluate"] += evaluation_work(cell).flops
    return {d: {k: v / 1e15 for k, v in stages.items()} for d, stages in table.items()}


def markdown(table: dict[str, dict[str, float]], rates: list[float], config: Path) -> str:
    stages = ("experts", "distill", "evaluate")
    head = ["data set", *[f"{s} PFLOP" for s in stages], "total PFLOP", *[f"hours at {r:g} TFLOP/s" for r in rates]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    totals = defaultdict(float)
    for dataset, row in table.items():
        total = sum(row.get(s, 0.0) for s in stages)
        for s in stages:
            totals[s] += row.get(s, 0.0)
        hours = [f"{total * 1e3 / r / 3600:.1f}" for r in rates]
        lines.append(
            f"| {dataset} | "
            + " | ".join(f"{row.get(s, 0.0):.1f}" for s in stages)
            + f" | {total:.1f} | "
            + " | ".join(hours)
            + " |"
        )
    grand = sum(totals.values())
    lines.append(
        "| **all** | "
        + " | ".join(f"{totals[s]:.1f}" for s in stages)
        + f" | {grand:.1f} | "
        + " | ".join(f"{grand * 1e3 / r / 3600:.0f}" for r in rates)
        + " |"
    )
    return (
        f"`{config.relative_to(REPO) if config.is_relative_to(REPO) else config}`, every cell of its matrix:\n\n"
        + "\n".join(lines)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "config" / "paper.yaml")
    parser.add_argument("--tflops", type=float, nargs="+", default=[5.0, 20.0], help="achieved rates to convert at")
    args = parser.parse_args()
    print(markdown(budget(args.config.resolve()), args.tflops, args.config.resolve()))


if __name__ == "__main__":
    main()
