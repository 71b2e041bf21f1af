"""`tgdd report`: every evaluation result in one CSV and paper-style Markdown tables.

``summary.csv`` keeps one row per evaluation JSON, i.e. per synthetic set (distillation seed),
network and protocol. The Markdown tables and ``metrics.json`` report one number per *cell*
(data set, IPC, method, network, protocol): the mean over distillation seeds of each seed's mean
accuracy, ± the sample standard deviation (ddof=1) of those seed means. With one seed the ± is
the population standard deviation (ddof=0) over that seed's evaluation runs, as `tgdd evaluate`
records it, and with one seed of one run there is no ±. Seeds evaluated with different epochs or
numbers of runs are never averaged together: each such setting is its own value, labelled.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from tgdd.artifacts import write_json, write_text
from tgdd.errors import TgddError

SUMMARY_COLUMNS = [
    "dataset",
    "ipc",
    "method",
    "arch",
    "protocol",
    "distill_seed",
    "experts_seed",
    "mean",
    "std",
    "n_runs",
    "epochs",
    "factor",
    "seeds",
    "origin",
    "variant",
    "variant_overrides",
]
CELL_KEYS = ["dataset", "ipc", "method", "variant", "arch", "protocol"]
"""What one number of the tables describes."""
SETTING_KEYS = ["epochs", "n_runs"]
"""Evaluation settings that seeds must share to be averaged together."""
STD_OVER_SEEDS = "seeds (ddof=1)"
STD_OVER_RUNS = "runs (ddof=0)"


def evaluation_files(eval_root: Path) -> list[Path]:
    """Every evaluation JSON under ``eval_root``: what the report tabulates (and logs)."""
    return sorted(Path(eval_root).rglob("*.json"))


def collect_results(eval_root: Path) -> pd.DataFrame:
    """One row per evaluation JSON under ``eval_root`` (columns :data:`SUMMARY_COLUMNS`): the
    per-seed rows of ``summary.csv``. Seeds absent from older files are left empty."""
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
                "distill_seed": r.get("distill_seed"),
                "experts_seed": r.get("experts_seed"),
                "mean": r["mean"],
                "std": r["std"],
                "n_runs": r["runs"],
                "epochs": r["protocol_settings"]["epochs"],
                "factor": r["factor"],
                "seeds": " ".join(map(str, r["seeds"])),  # the evaluation runs' seeds
                "origin": (r.get("origin") or {}).get("label", ""),  # imported sets (tgdd.interchange)
                "variant": r.get("variant") or "",  # matrix.variants ("": none)
                "variant_overrides": json.dumps(r["variant_overrides"], sort_keys=True) if r.get("variant") else "",
            }
        )
    if not rows:
        raise TgddError(f"no evaluation results under {eval_root}: run `tgdd evaluate` first")
    frame = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    # nullable integers: an absent seed is an empty field, a present one stays "1", not "1.0000"
    frame = frame.astype({"distill_seed": "Int64", "experts_seed": "Int64"})
    return frame.sort_values([*CELL_KEYS, "distill_seed"]).reset_index(drop=True)


# --------------------------------------------------------------------------- aggregation over seeds


def seed_statistics(seed_means: Sequence[float], run_std: float, n_runs: int) -> tuple[float, float | None, str | None]:
    """``(mean, std, what the std is over)`` of one cell from its seeds' mean accuracies.

    Two seeds or more: the mean of the seed means ± their sample std (ddof=1), the spread a new
    distillation would show. One seed: its mean ± ``run_std``, the std over its ``n_runs``
    evaluation runs (as recorded, ddof=0). One seed of one run: no std at all (``None``) rather
    than a ``± 0.0`` that reads as a measured spread."""
    if len(seed_means) == 0:
        raise ValueError("a cell without seeds")
    if len(seed_means) > 1:
        return float(np.mean(seed_means)), float(np.std(seed_means, ddof=1)), STD_OVER_SEEDS
    if n_runs > 1:
        return float(seed_means[0]), float(run_std), STD_OVER_RUNS
    return float(seed_means[0]), None, None


def aggregate(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per cell and evaluation setting (epochs, runs per seed) of the per-seed ``frame``:
    ``mean``, ``std``, ``std_over`` (:func:`seed_statistics`), ``n_seeds`` (evaluated synthetic
    sets), ``distill_seeds`` and ``split`` (True when the cell's seeds were evaluated under more
    than one setting, so it has more than one row: those are never averaged together)."""
    if "variant" not in frame:  # rows made without the variant axis
        frame = frame.assign(variant="")
    rows = []
    for key, group in frame.groupby([*CELL_KEYS, *SETTING_KEYS], sort=True):
        cell = dict(zip([*CELL_KEYS, *SETTING_KEYS], key, strict=True))
        mean, std, std_over = seed_statistics(group["mean"].tolist(), group["std"].iloc[0], int(cell["n_runs"]))
        seeds = group["distill_seed"] if "distill_seed" in group else pd.Series(dtype="Int64")
        rows.append(
            {
                **cell,
                "n_seeds": len(group),
                "distill_seeds": " ".join(str(int(s)) for s in seeds.dropna()),
                "mean": mean,
                "std": std,
                "std_over": std_over,
            }
        )
    out = pd.DataFrame(rows)
    return out.assign(split=out.groupby(CELL_KEYS)["epochs"].transform("size") > 1)


def row_label(method: str, variant: str) -> str:
    """A table row's name: the method, and its variant in brackets where it has one."""
    return f"{method} [{variant}]" if variant else method


def _labelled(cells: pd.DataFrame) -> pd.DataFrame:
    """``cells`` with ``method`` replaced by :func:`row_label` (variants are rows of their own)."""
    return cells.assign(method=[row_label(m, v) for m, v in zip(cells["method"], cells["variant"], strict=True)])


def format_value(mean: float, std: float | None) -> str:
    """``71.7 ± 1.2``, or ``71.7`` alone when there is no std (one seed, one run)."""
    return f"{mean:.1f}" if std is None or pd.isna(std) else f"{mean:.1f} ± {std:.1f}"


def describe_setting(n_seeds: int, n_runs: int, epochs: int) -> str:
    """What a value of the tables is, in words: seeds, runs, epochs and which std."""
    seeds = f"{n_seeds} distillation seed{'s' if n_seeds > 1 else ''}"
    runs = f"{n_runs} evaluation run{'s' if n_runs > 1 else ''} of {epochs} epoch{'s' if epochs > 1 else ''}"
    runs += " each" if n_seeds > 1 else ""
    if n_seeds > 1:
        what = f"mean ± sample std (ddof=1) over the {n_seeds} seeds' mean accuracies"
    elif n_runs > 1:
        what = f"mean ± std (ddof=0) over the {n_runs} runs of that one seed"
    else:
        what = "that one run's accuracy, no std (n=1)"
    return f"{seeds} × {runs}: {what}"


def _settings(cells: pd.DataFrame) -> list[tuple[int, int, int]]:
    """The distinct ``(n_seeds, n_runs, epochs)`` of ``cells``, in a stable order."""
    return sorted({(int(r.n_seeds), int(r.n_runs), int(r.epochs)) for r in cells.itertuples()})


def _labelled_table(cells: pd.DataFrame, index: list[str], column: str, order: list[str] | None = None) -> str:
    """``cells`` (rows of :func:`aggregate` with a ``column`` to spread) as a Markdown table with
    its legend: one sentence when every value shares one setting, else a marker ``[a]``, ``[b]``
    ... on each value and one legend line per marker."""
    settings = _settings(cells)
    marks = {s: f"[{chr(ord('a') + i)}]" for i, s in enumerate(settings)} if len(settings) > 1 else {}
    text = [
        format_value(r.mean, r.std) + (f" {marks[(r.n_seeds, r.n_runs, r.epochs)]}" if marks else "")
        for r in cells.itertuples()
    ]
    joined = cells.assign(cell=text).groupby([*index, column], sort=True)["cell"].agg("; ".join).reset_index()
    wide = joined.pivot(index=index, columns=column, values="cell")
    if order is not None:
        wide = wide[order]
    table = wide.fillna("–").reset_index().rename_axis(columns=None).to_markdown(index=False, disable_numparse=True)
    if not marks:
        legend = f"Test accuracy (%), last epoch. Every value: {describe_setting(*settings[0])}."
    else:
        legend = "Test accuracy (%), last epoch. Values differ in seeds, runs or epochs:\n\n" + "\n".join(
            f"- {mark} {describe_setting(*setting)}" for setting, mark in marks.items()
        )
        if cells["split"].any():
            legend += (
                "\n\nA cell with two values or more: its seeds were evaluated with different epochs or runs;"
                " they are shown apart, never averaged."
            )
    return legend + "\n\n" + table


def paper_table(frame: pd.DataFrame) -> str:
    """Rows: method; columns: dataset / IPC; values: mean ± std over distillation seeds
    (:func:`seed_statistics`); one table per arch and protocol, each with its legend."""
    blocks = []
    for (arch, protocol), group in _labelled(aggregate(frame)).groupby(["arch", "protocol"], sort=True):
        cells = group.assign(column=group["dataset"] + " IPC " + group["ipc"].astype(str))
        order = cells.sort_values(["dataset", "ipc"])["column"].drop_duplicates().tolist()
        blocks.append(f"### {arch}, protocol `{protocol}`\n\n" + _labelled_table(cells, ["method"], "column", order))
    return "\n\n".join(blocks) + "\n"


def cross_arch_table(frame: pd.DataFrame) -> str:
    """Rows: data set / IPC / method; columns: architecture (one table per protocol), values as
    in :func:`paper_table`."""
    blocks = []
    for protocol, group in _labelled(aggregate(frame)).groupby("protocol", sort=True):
        blocks.append(
            f"### Cross-architecture, protocol `{protocol}`\n\n"
            + _labelled_table(group, ["dataset", "ipc", "method"], "arch")
        )
    return "\n\n".join(blocks) + "\n"


DEFAULT_SOURCE = "the TGDD paper's numbers (SPEC §7)"
PUBLISHED_SOURCES = {
    "ftd_paper": "FTD's own paper's numbers (Du et al., CVPR 2023, Table 1; their CIFAR commands use ZCA)"
}
"""Where each table of published.csv comes from, where it is not the TGDD paper."""


def published_results() -> pd.DataFrame:
    """The paper's numbers quoted in SPEC §7 (``ipc`` 0: whole data set), shipped as package data."""
    from importlib.resources import files

    text = files("tgdd.resources").joinpath("published.csv").read_text()
    table = pd.read_csv(io.StringIO(text), comment="#", dtype={"variant": str})
    return table.assign(variant=table["variant"].fillna(""))  # rows of a variant (the ablation) name it


def arch_family(arch: str) -> str:
    """``convnet-3-w64`` -> ``convnet``: the published tables name architectures without variants."""
    for family in ("convnet", "resnet10-ap", "densenet121"):
        if arch.startswith(family):
            return family
    return arch


def comparison_tables(frame: pd.DataFrame, protocol: str = "tgdd") -> str:
    """For each published table, our cells beside the paper's, for the cells we have results for
    (one row per cell and evaluation setting, with its seeds, runs per seed and epochs)."""
    selected = frame[frame["protocol"] == protocol]
    if selected.empty:
        return ""
    ours = aggregate(selected)
    ours = ours.assign(family=ours["arch"].map(arch_family))
    published = published_results()
    blocks = []
    for table, paper in published.groupby("table", sort=False):
        merged = paper.merge(
            ours,
            left_on=["method", "variant", "dataset", "ipc", "arch"],
            right_on=["method", "variant", "dataset", "ipc", "family"],
        )
        if merged.empty:
            continue
        merged = _labelled(merged).assign(
            ours=[format_value(m, s) for m, s in zip(merged["mean"], merged["std"], strict=True)],
            paper=merged["accuracy"].map("{:.1f}".format),
        )
        rows = merged[["dataset", "ipc", "arch_y", "method", "ours", "paper", "n_seeds", "n_runs", "epochs"]].rename(
            columns={"arch_y": "arch"}
        )
        blocks.append(
            f"### Published table `{table}` beside ours (protocol `{protocol}`)\n\n"
            f"`paper`: {PUBLISHED_SOURCES.get(table, DEFAULT_SOURCE)}, full GPU budget, authors' protocol. `ours`: this run's "
            "budget (see `epochs`), last-epoch accuracy: mean ± sample std (ddof=1) over `n_seeds` distillation "
            "seeds of each seed's mean over its `n_runs` evaluation runs; with one seed, ± std (ddof=0) over its "
            "runs; with one run of one seed, the accuracy alone. Different budgets: compare trends, not digits.\n\n"
            + rows.sort_values(["dataset", "ipc", "arch", "method", "epochs", "n_runs"]).to_markdown(
                index=False, disable_numparse=True
            )
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
    """Nested ``dataset -> ipc<k> -> method -> arch/protocol -> {mean, std, std_over, n_seeds,
    n_runs, epochs}`` over distillation seeds (:func:`aggregate`): DVC's metrics file. A cell whose
    seeds were evaluated under different settings gets one key per setting,
    ``arch/protocol/<epochs>ep_<runs>runs``, never one averaged number."""
    metrics: dict = {}
    for row in _labelled(aggregate(frame)).itertuples():
        cell = metrics.setdefault(row.dataset, {}).setdefault(f"ipc{row.ipc}", {}).setdefault(row.method, {})
        key = f"{row.arch}/{row.protocol}" + (f"/{row.epochs}ep_{row.n_runs}runs" if row.split else "")
        cell[key] = {
            "mean": round(row.mean, 4),
            "std": None if row.std is None or pd.isna(row.std) else round(row.std, 4),
            "std_over": row.std_over,
            "n_seeds": int(row.n_seeds),
            "n_runs": int(row.n_runs),
            "epochs": int(row.epochs),
        }
    return metrics


def write_report(eval_root: Path, tables_dir: Path) -> tuple[list[Path], str]:
    """summary.csv (one row per seed), summary.md (paper-style and cross-architecture tables over
    seeds), comparison with the published numbers, and metrics.json (over seeds). Returns the
    paths and the Markdown shown to the user."""
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
    written += sweep_figures(frame, tables_dir)
    return written, markdown


# --------------------------------------------------------------------------- sweeps over variants


def swept_values(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``frame`` whose variant sets exactly one key to a number, with that key
    (``swept``) and value (``value``): the points of a sweep (e.g. ``distill.tgdd.alpha``), for
    keys that take two values or more."""
    keys, values = [], []
    for text in frame["variant_overrides"]:
        overrides = json.loads(text) if text else {}
        (key, value), *rest = list(overrides.items()) or [(None, None)]
        numeric = isinstance(value, int | float) and not isinstance(value, bool) and not rest
        keys.append(key if numeric else None)
        values.append(float(value) if numeric else None)
    swept = frame.assign(swept=keys, value=values)
    swept = swept[swept["swept"].notna()]
    points = swept.groupby("swept")["value"].transform("nunique")
    return swept[points >= 2]  # a sweep has two values or more


def sweep_figures(frame: pd.DataFrame, tables_dir: Path) -> list[Path]:
    """One figure per swept key (``sweep_<key>.png``): accuracy against the key's value, one line per
    data set, IPC, method, network and protocol, each point the mean over seeds ± its std (over
    seeds, or over runs with one seed: :func:`aggregate`)."""
    swept = swept_values(frame)
    if swept.empty:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tgdd.artifacts import atomic_write

    values = swept[["variant", "swept", "value"]].drop_duplicates()
    cells = aggregate(frame).merge(values, on="variant")
    written = []
    for key, group in cells.groupby("swept", sort=True):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        line_keys = ["dataset", "ipc", "method", "arch", "protocol"]
        for line, points in group.sort_values("value").groupby(line_keys, sort=True):
            label = "{} IPC {} {} ({}, {})".format(*line)
            std = points["std"].astype(float).fillna(0.0)
            ax.errorbar(points["value"], points["mean"], yerr=std, marker="o", capsize=3, label=label)
        ax.set_xlabel(key)
        ax.set_ylabel("test accuracy (%), last epoch")
        ax.set_title(f"sweep of {key} (± over seeds, or runs of one seed)", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = tables_dir / f"sweep_{key.replace('.', '_')}.png"
        written.append(atomic_write(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=120)))
        plt.close(fig)
    return written
