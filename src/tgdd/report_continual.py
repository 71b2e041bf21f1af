"""The continual-learning part of `tgdd report`: every class-incremental evaluation (``tgdd continual``,
``results/continual/**.json``) in one CSV, a Markdown table per data set, IPC and step count (rows:
method; columns: the classes seen after each step) and a curve figure per data set, IPC and step
count: accuracy against classes seen, one line per method, the band ± one std.

A value is the mean ± population std (ddof=0, as DM's CL_DM.py) over every accuracy of the step:
orders x runs of each synthetic set, pooled over the distillation seeds (``n`` says how many).
Results trained with other epochs are never pooled: they are their own rows, labelled.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from tgdd.artifacts import atomic_write, write_text
from tgdd.errors import TgddError

GROUP = ["dataset", "ipc", "arch", "protocol", "epochs", "steps"]
"""One table and one figure per group."""
LINE = ["method", "variant"]
"""One row of a table, one line of a figure."""


def continual_files(root: Path) -> list[Path]:
    """Every class-incremental result under ``root`` (``results/continual``)."""
    return sorted(Path(root).rglob("*.json")) if Path(root).is_dir() else []


def collect_continual(root: Path) -> pd.DataFrame:
    """One row per result file and step: its accuracies (orders x runs) and what they describe."""
    rows = []
    for path in continual_files(root):
        try:
            r = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise TgddError(f"continual result {path} is not valid JSON ({exc})") from None
        for step, (seen, accs) in enumerate(zip(r["classes_seen"], r["accuracies"], strict=True)):
            rows.append(
                {
                    "dataset": r["dataset"],
                    "ipc": r["ipc"],
                    "method": r["method"],
                    "variant": r.get("variant") or "",
                    "arch": r["arch"],
                    "protocol": r["protocol"],
                    "epochs": r["protocol_settings"]["epochs"],
                    "steps": r["steps"],
                    "step": step + 1,
                    "classes_seen": seen,
                    "distill_seed": r.get("distill_seed"),
                    "accuracies": list(accs),
                }
            )
    return pd.DataFrame(rows)


def aggregate_continual(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per group, line and step: ``mean`` and ``std`` (ddof=0) over the pooled accuracies, ``n``
    of them, ``n_seeds`` distillation seeds."""
    rows = []
    for key, group in frame.groupby([*GROUP, *LINE, "step", "classes_seen"], sort=True):
        pooled = [a for accs in group["accuracies"] for a in accs]
        rows.append(
            {
                **dict(zip([*GROUP, *LINE, "step", "classes_seen"], key, strict=True)),
                "mean": float(np.mean(pooled)),
                "std": float(np.std(pooled)),
                "n": len(pooled),
                "n_seeds": group["distill_seed"].nunique(dropna=False),
            }
        )
    return pd.DataFrame(rows)


def line_label(method: str, variant: str) -> str:
    return f"{method} ({variant})" if variant else method


def continual_table(cells: pd.DataFrame) -> str:
    """The Markdown tables: per group, rows method (variant), columns the classes seen after each step."""
    blocks = []
    for key, group in cells.groupby(GROUP, sort=True):
        g = dict(zip(GROUP, key, strict=True))
        labelled = group.assign(
            line=[line_label(m, v) for m, v in zip(group["method"], group["variant"], strict=True)],
            column=[f"{s}: {c} classes" for s, c in zip(group["step"], group["classes_seen"], strict=True)],
            value=[f"{m:.1f} ± {s:.1f}" for m, s in zip(group["mean"], group["std"], strict=True)],
        )
        order = labelled.sort_values("step")["column"].drop_duplicates().tolist()
        wide = labelled.pivot(index="line", columns="column", values="value")[order].fillna("–")
        n = ", ".join(
            sorted({f"{int(r.n)} ({int(r.n_seeds)} seed{'s' if r.n_seeds > 1 else ''})" for r in group.itertuples()})
        )
        blocks.append(
            f"### {g['dataset']} IPC {g['ipc']}, {g['steps']} class-incremental steps ({g['arch']}, protocol "
            f"`{g['protocol']}`, {g['epochs']} epochs)\n\n"
            "Test accuracy (%) on the classes seen so far, last epoch, a network trained from scratch at every "
            "step on the synthetic images of those classes only. Each value: mean ± std (ddof=0) over class "
            f"orders x runs, pooled over distillation seeds; accuracies per value: {n}.\n\n"
            + wide.reset_index()
            .rename(columns={"line": "method"})
            .rename_axis(columns=None)
            .to_markdown(index=False, disable_numparse=True)
        )
    return "\n\n".join(blocks) + "\n"


def figure_file(tables_dir: Path, dataset: str, ipc: int, steps: int) -> Path:
    """The curve figure of one data set, IPC and step count (what the workflow declares)."""
    return Path(tables_dir) / f"continual_{dataset}_ipc{ipc}_steps{steps}.png"


def continual_figure(path: Path, cells: pd.DataFrame) -> Path:
    """Accuracy against classes seen, one line per method (variant) and, for each group of ``cells``
    sharing the file's data set, IPC and step count (several networks, protocols or epochs), one panel."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = list(cells.groupby(GROUP, sort=True))
    fig = Figure(figsize=(5.6 * len(panels), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (key, group) in zip(axes, panels, strict=True):
        g = dict(zip(GROUP, key, strict=True))
        for (method, variant), line in group.groupby(LINE, sort=True):
            line = line.sort_values("step")
            x, y, s = line["classes_seen"].to_numpy(), line["mean"].to_numpy(), line["std"].to_numpy()
            (drawn,) = ax.plot(x, y, marker="o", label=line_label(method, variant))
            ax.fill_between(x, y - s, y + s, color=drawn.get_color(), alpha=0.2, linewidth=0)
        ax.set_xlabel("classes seen")
        ax.set_ylabel("test accuracy (%) on the classes seen")
        ax.set_title(f"{g['dataset']} IPC {g['ipc']}, {g['steps']} steps\n{g['arch']}, {g['protocol']}, "
                     f"{g['epochs']} epochs; band: ± std over orders x runs", fontsize="medium")  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def write_continual_report(root: Path, tables_dir: Path) -> list[Path]:
    """continual.csv, continual.md and one figure per data set, IPC and step count; nothing when there
    are no class-incremental results."""
    frame = collect_continual(root)
    if frame.empty:
        return []
    cells = aggregate_continual(frame)
    written = [
        write_text(tables_dir / "continual.csv", cells.to_csv(index=False, float_format="%.4f")),
        write_text(tables_dir / "continual.md", continual_table(cells)),
    ]
    for (dataset, ipc, steps), group in cells.groupby(["dataset", "ipc", "steps"], sort=True):
        written.append(continual_figure(figure_file(tables_dir, dataset, ipc, steps), group))
    return written
