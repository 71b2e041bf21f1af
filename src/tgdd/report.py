"""`tgdd report`: every evaluation result in one CSV and paper-style Markdown tables."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd

from tgdd.artifacts import write_json, write_text
from tgdd.errors import TgddError

SUMMARY_COLUMNS = ["dataset", "ipc", "method", "arch", "protocol", "mean", "std", "n_runs", "epochs", "factor", "seeds"]


def evaluation_files(eval_root: Path) -> list[Path]:
    """Every evaluation JSON under ``eval_root``: what the report tabulates (and logs)."""
    return sorted(Path(eval_root).rglob("*.json"))


def collect_results(eval_root: Path) -> pd.DataFrame:
    """One row per evaluation JSON under ``eval_root``."""
    rows = []
    for path in evaluation_files(eval_root):
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
                "origin": (r.get("origin") or {}).get("label", ""),  # imported sets (tgdd.interchange)
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
            f"{'/'.join(map(str, epochs))} epochs, last epoch.\n\n"
            + wide.reset_index().to_markdown(index=False, disable_numparse=True)
        )
    return "\n\n".join(blocks) + "\n"


def cross_arch_table(frame: pd.DataFrame) -> str:
    """Rows: data set / IPC / method; columns: architecture (one table per protocol)."""
    blocks = []
    for protocol, group in frame.groupby("protocol", sort=True):
        cells = group.assign(cell=group["mean"].map("{:.1f}".format) + " ± " + group["std"].map("{:.1f}".format))
        wide = cells.pivot_table(index=["dataset", "ipc", "method"], columns="arch", values="cell", aggfunc="first")
        blocks.append(
            f"### Cross-architecture, protocol `{protocol}`\n\n"
            + wide.fillna("–").reset_index().to_markdown(index=False, disable_numparse=True)
        )
    return "\n\n".join(blocks) + "\n"


def published_results() -> pd.DataFrame:
    """The paper's numbers quoted in SPEC §7 (``ipc`` 0: whole data set), shipped as package data."""
    from importlib.resources import files

    text = files("tgdd.resources").joinpath("published.csv").read_text()
    return pd.read_csv(io.StringIO(text), comment="#")


def arch_family(arch: str) -> str:
    """``convnet-3-w64`` -> ``convnet``: the published tables name architectures without variants."""
    for family in ("convnet", "resnet10-ap", "densenet121"):
        if arch.startswith(family):
            return family
    return arch


def comparison_tables(frame: pd.DataFrame, protocol: str = "tgdd") -> str:
    """For each published table, our cells beside the paper's, for the cells we have results for."""
    ours = frame[frame["protocol"] == protocol].assign(family=frame["arch"].map(arch_family))
    published = published_results()
    blocks = []
    for table, paper in published.groupby("table", sort=False):
        merged = paper.merge(
            ours, left_on=["method", "dataset", "ipc", "arch"], right_on=["method", "dataset", "ipc", "family"]
        )
        if merged.empty:
            continue
        merged = merged.assign(
            ours=merged["mean"].map("{:.1f}".format) + " ± " + merged["std"].map("{:.1f}".format),
            paper=merged["accuracy"].map("{:.1f}".format),
            runs=merged["n_runs"],
        )
        rows = merged[["dataset", "ipc", "arch_y", "method", "ours", "paper", "runs", "epochs"]].rename(
            columns={"arch_y": "arch"}
        )
        blocks.append(
            f"### Published table `{table}` beside ours (protocol `{protocol}`)\n\n"
            "`paper`: the TGDD paper's numbers (SPEC §7), full GPU budget, authors' protocol. `ours`: this run's "
            "budget (see `epochs`, `runs`), last-epoch accuracy, mean ± std. Different budgets: compare trends, not digits.\n\n"
            + rows.sort_values(["dataset", "ipc", "arch", "method"]).to_markdown(index=False, disable_numparse=True)
        )
    return "\n\n".join(blocks) + ("\n" if blocks else "")


def imported_sets(frame: pd.DataFrame) -> str:
    """One line per imported synthetic set in the tables: where it came from (``origin``)."""
    rows = frame[frame["origin"] != ""].drop_duplicates(["dataset", "ipc", "method"])
    if rows.empty:
        return ""
    lines = [f"- `{r.method}`, {r.dataset} IPC {r.ipc}: {r.origin}" for r in rows.itertuples()]
    return (
        "### Imported synthetic sets\n\n"
        "Not distilled here: made by another code base, converted by `tgdd import-synthetic` "
        "(docs/interchange.md) and evaluated under the same protocol as the rest.\n\n" + "\n".join(lines) + "\n"
    )


def headline_metrics(frame: pd.DataFrame) -> dict:
    """Nested ``dataset -> ipc<k> -> method -> arch/protocol -> {mean, std}``: DVC's metrics file."""
    metrics: dict = {}
    for row in frame.itertuples():
        cell = metrics.setdefault(row.dataset, {}).setdefault(f"ipc{row.ipc}", {}).setdefault(row.method, {})
        cell[f"{row.arch}/{row.protocol}"] = {"mean": round(row.mean, 4), "std": round(row.std, 4)}
    return metrics


def write_report(eval_root: Path, tables_dir: Path) -> tuple[list[Path], str]:
    """summary.csv, summary.md (paper-style and cross-architecture tables), comparison with the
    published numbers, and metrics.json. Returns the paths and the Markdown shown to the user."""
    frame = collect_results(eval_root)
    markdown = paper_table(frame) + "\n" + cross_arch_table(frame)
    if imported := imported_sets(frame):
        markdown += "\n" + imported
    written = [
        write_text(tables_dir / "summary.csv", frame.to_csv(index=False, float_format="%.4f")),
        write_text(tables_dir / "summary.md", markdown),
        write_text(
            tables_dir / "published_comparison.md", comparison_tables(frame) or "No cell matches a published one.\n"
        ),
        write_json(tables_dir / "metrics.json", headline_metrics(frame)),
    ]
    return written, markdown
