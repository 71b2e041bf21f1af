"""`tgdd report`: every evaluation result in one CSV and paper-style Markdown tables."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tgdd.artifacts import write_text
from tgdd.errors import TgddError

SUMMARY_COLUMNS = ["dataset", "ipc", "method", "arch", "protocol", "mean", "std", "n_runs", "epochs", "factor", "seeds"]


def collect_results(eval_root: Path) -> pd.DataFrame:
    """One row per evaluation JSON under ``eval_root``."""
    rows = []
    for path in sorted(Path(eval_root).rglob("*.json")):
        try:
            r = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise TgddError(f"evaluation result {path} is not valid JSON ({exc})") from None
        rows.append(
            {
                "dataset": r["dataset"],
                "ipc": r["ipc"],
                "method": r["method"],
                "arch": r["arch"],
                "protocol": r["protocol"],
                "mean": r["mean"],
                "std": r["std"],
                "n_runs": r["runs"],
                "epochs": r["protocol_settings"]["epochs"],
                "factor": r["factor"],
                "seeds": " ".join(map(str, r["seeds"])),
                "distill_seed": r.get("distill_seed"),
            }
        )
    if not rows:
        raise TgddError(f"no evaluation results under {eval_root}: run `tgdd evaluate` first")
    return pd.DataFrame(rows).sort_values(["dataset", "ipc", "method", "arch", "protocol"]).reset_index(drop=True)


def paper_table(frame: pd.DataFrame) -> str:
    """Rows: method; columns: dataset / IPC; cells: ``mean ± std`` (one table per arch and protocol)."""
    blocks = []
    for (arch, protocol), group in frame.groupby(["arch", "protocol"], sort=True):
        cells = group.assign(
            cell=group["mean"].map("{:.1f}".format) + " ± " + group["std"].map("{:.1f}".format),
            column=group["dataset"] + " IPC " + group["ipc"].astype(str),
        )
        wide = cells.pivot_table(index="method", columns="column", values="cell", aggfunc="first")
        order = cells.sort_values(["dataset", "ipc"])["column"].drop_duplicates().tolist()
        wide = wide[order].fillna("–")
        runs = sorted(group["n_runs"].unique())
        epochs = sorted(group["epochs"].unique())
        blocks.append(
            f"### {arch}, protocol `{protocol}`\n\n"
            f"Test accuracy (%), mean ± std over {'/'.join(map(str, runs))} runs, "
            f"{'/'.join(map(str, epochs))} epochs, last epoch.\n\n" + wide.reset_index().to_markdown(index=False)
        )
    return "\n\n".join(blocks) + "\n"


def write_report(eval_root: Path, tables_dir: Path) -> tuple[Path, Path, str]:
    frame = collect_results(eval_root)
    csv_path = write_text(tables_dir / "summary.csv", frame.to_csv(index=False, float_format="%.4f"))
    markdown = paper_table(frame)
    md_path = write_text(tables_dir / "summary.md", markdown)
    return csv_path, md_path, markdown
