"""The efficiency part of `tgdd report` (the paper's Figure 1): what each synthetic set cost to distil
(``meta["efficiency"]``, :mod:`tgdd.efficiency`) beside the accuracy of its evaluations, as
``efficiency.csv`` (one row per evaluation), ``efficiency.md`` (one row per method, IPC and variant:
accuracy mean over distillation seeds, seconds and memory) and ``efficiency.png`` (accuracy against
distillation seconds and against peak memory, one labelled point per method and IPC).

Distillation seconds are the measured seconds per iteration x the iterations of the method (for a
resumed run, the rate of its last part); a selection method (random, herding) runs no iterations and
shows its measured seconds. Sets without a record (imported, or distilled by an older tgdd) are left out.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from tgdd.artifacts import atomic_write, write_text

KEYS = ["dataset", "arch", "protocol", "method", "ipc", "variant"]
"""One point of the figure, one row of the table."""
FILES = ("efficiency.csv", "efficiency.md", "efficiency.png")


def _meta(path: Path) -> dict | None:
    from tgdd.synthetic import load_synthetic_meta

    try:
        return load_synthetic_meta(path) if path.is_file() else None
    except Exception:  # an unreadable set is the report's to skip here (tgdd evaluate refuses it elsewhere)
        return None


def collect_efficiency(eval_root: Path) -> pd.DataFrame:
    """One row per evaluation whose synthetic set records its efficiency."""
    from tgdd.report import evaluation_files

    rows = []
    for path in evaluation_files(eval_root):
        r = json.loads(path.read_text())
        meta = _meta(Path(r.get("synthetic_file", "")))
        e = (meta or {}).get("efficiency")
        if not e:
            continue
        per_iteration = e.get("seconds_per_iteration")  # None: a selection method, no iterations
        iterations = (meta.get("settings") or {}).get("iterations") or 0 if per_iteration is not None else 0
        seconds = per_iteration * iterations if per_iteration is not None else e["seconds"]
        memory = e.get("peak_device_memory_mib")
        rows.append(
            {
                "dataset": r["dataset"],
                "arch": r["arch"],
                "protocol": r["protocol"],
                "method": r["method"],
                "ipc": r["ipc"],
                "variant": r.get("variant") or "",
                "distill_seed": r.get("distill_seed"),
                "accuracy": r["mean"],
                "iterations": iterations,
                "seconds_per_iteration": per_iteration,
                "distill_seconds": seconds,
                "peak_host_memory_mib": e.get("peak_host_memory_mib"),
                "peak_device_memory_mib": memory,
                "device": e.get("device"),
            }
        )
    return pd.DataFrame(rows)


def aggregate_efficiency(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per :data:`KEYS`: accuracy and seconds averaged over distillation seeds, memory their maximum."""
    agg = frame.groupby(KEYS, sort=True).agg(
        accuracy=("accuracy", "mean"),
        n_seeds=("accuracy", "size"),
        iterations=("iterations", "first"),
        seconds_per_iteration=("seconds_per_iteration", "mean"),
        distill_seconds=("distill_seconds", "mean"),
        peak_host_memory_mib=("peak_host_memory_mib", "max"),
        peak_device_memory_mib=("peak_device_memory_mib", "max"),
        device=("device", lambda d: ", ".join(sorted(set(map(str, d))))),
    )
    return agg.reset_index()


def _number(value, digits: int) -> str:
    return "–" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def efficiency_table(cells: pd.DataFrame) -> str:
    """Markdown: per data set, network and protocol, one row per method, IPC and variant."""
    blocks = []
    for (dataset, arch, protocol), group in cells.groupby(["dataset", "arch", "protocol"], sort=True):
        table = pd.DataFrame(
            {
                "method": [f"{m} ({v})" if v else m for m, v in zip(group["method"], group["variant"], strict=True)],
                "IPC": group["ipc"].astype(str),
                "accuracy (%)": [_number(a, 1) for a in group["accuracy"]],
                "s / iteration": [_number(s, 4) for s in group["seconds_per_iteration"]],
                "iterations": group["iterations"].astype(str),
                "distillation s": [_number(s, 1) for s in group["distill_seconds"]],
                "peak host MiB": [_number(m, 0) for m in group["peak_host_memory_mib"]],
                "peak device MiB": [_number(m, 0) for m in group["peak_device_memory_mib"]],
                "device": group["device"],
                "seeds": group["n_seeds"].astype(str),
            }
        )
        blocks.append(
            f"### {dataset}, {arch}, protocol `{protocol}`\n\n"
            "Accuracy: mean over distillation seeds of each seed's mean test accuracy. Seconds: wall time per "
            "iteration as measured (checkpoint writes excluded) x iterations, mean over seeds; memory: peak over "
            "seeds (device: torch.cuda.max_memory_allocated, – off CUDA). Measured on the machine that "
            "distilled each set: compare within one machine.\n\n"
            + table.to_markdown(index=False, disable_numparse=True)
        )
    return "\n\n".join(blocks) + "\n"


def efficiency_figure(path: Path, cells: pd.DataFrame) -> Path:
    """Per data set, network and protocol, two panels: accuracy against distillation seconds (log
    scale) and against peak memory (device where every point has it, else host), points labelled."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = list(cells.groupby(["dataset", "arch", "protocol"], sort=True)) or [(("none", "", ""), cells)]
    fig = Figure(figsize=(11, 4.2 * len(groups)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(groups), 2, squeeze=False)
    for row, ((dataset, arch, protocol), group) in zip(axes, groups, strict=True):
        if group.empty:
            for ax in row:
                ax.text(0.5, 0.5, "no synthetic set records its efficiency", ha="center", va="center")
            continue
        device = group["peak_device_memory_mib"].notna().all()
        memory = group["peak_device_memory_mib" if device else "peak_host_memory_mib"].to_numpy(dtype=float)
        labels = [f"{m} IPC {i}" + (f" ({v})" if v else "") for m, i, v in
                  zip(group["method"], group["ipc"], group["variant"], strict=True)]  # fmt: skip
        seconds = np.maximum(group["distill_seconds"].to_numpy(dtype=float), 1e-3)
        for ax, x, xlabel, log in (
            (row[0], seconds, "distillation seconds (log)", True),
            (row[1], memory, f"peak {'GPU' if device else 'host'} memory (MiB)", False),
        ):
            ax.scatter(x, group["accuracy"], s=40)
            for xi, yi, text in zip(x, group["accuracy"], labels, strict=True):
                ax.annotate(text, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize="small")
            if log:
                ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(f"{dataset}, {arch}, protocol {protocol}", fontsize="medium")
            ax.grid(alpha=0.3)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def write_efficiency_report(eval_root: Path, tables_dir: Path) -> list[Path]:
    """efficiency.csv, efficiency.md and efficiency.png, always (with a note when no set records one)."""
    frame = collect_efficiency(eval_root)
    if frame.empty:
        note = "No evaluated synthetic set records its efficiency (imported, or distilled by an older tgdd).\n"
        return [
            write_text(tables_dir / "efficiency.csv", ",".join(KEYS) + "\n"),
            write_text(tables_dir / "efficiency.md", note),
            efficiency_figure(tables_dir / "efficiency.png", pd.DataFrame(columns=KEYS)),
        ]
    cells = aggregate_efficiency(frame)
    return [
        write_text(tables_dir / "efficiency.csv", frame.to_csv(index=False, float_format="%.6g")),
        write_text(tables_dir / "efficiency.md", efficiency_table(cells)),
        efficiency_figure(tables_dir / "efficiency.png", cells),
    ]
