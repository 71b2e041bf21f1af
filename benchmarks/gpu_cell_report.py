"""The report of ``benchmarks/gpu_cell.sh``: one paper cell's seconds per stage and its accuracy.

Called by the shell script after the last stage (or after the one that failed) with the stage table it
wrote (one tab-separated line per stage: name, seconds, units of work, unit, exit status, time limit) and the results
root of the run. Writes ``<out>/gpu_cell_<hardware>.md`` and prints it. Standard library only: it runs
under whatever ``python3`` the machine has (the GPU machine's, the venv's).

What it reports, and where each value comes from:

* the hardware: ``nvidia-smi`` (GPU model and driver) when the cell ran on CUDA, else the CPU model from
  ``/proc/cpuinfo``;
* torch and Python versions and the device, as the evaluation record wrote them (the versions that ran);
* seconds per stage as the shell timed them (each a whole ``tgdd`` process: start-up, data loading and
  writing included), their sum as ``total: <seconds> s``, and seconds per unit of work;
* the accuracy of every evaluated architecture: mean ± std over the runs of the evaluation JSON;
* the paper's DANCE number for the same cell (``src/tgdd/resources/published.csv``), labelled as such.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PUBLISHED = Path(__file__).resolve().parents[1] / "src" / "tgdd" / "resources" / "published.csv"
REFERENCE_METHOD = "dance"  # the reference: the paper's DANCE row at this cell


@dataclass(frozen=True)
class Stage:
    """One timed ``tgdd`` step: its seconds, how many units of work it did, its exit status and time limit."""

    name: str
    seconds: float
    units: float
    unit: str
    status: int
    limit: str


@dataclass(frozen=True)
class Hardware:
    """What the cell ran on: a one-line description and the short name the report file is named after."""

    description: str
    slug: str


def read_stages(path: Path) -> list[Stage]:
    """The shell's stage table (tab-separated: name, seconds, units, unit, exit status, time limit in s)."""
    stages = []
    for line in path.read_text().splitlines():
        if line.strip():
            name, seconds, units, unit, status, limit = line.split("\t")
            stages.append(Stage(name, float(seconds), float(units), unit, int(status), limit))
    return stages


def read_evaluations(results: Path) -> list[dict[str, Any]]:
    """Every evaluation JSON under ``<results>/eval`` (one per evaluated architecture), sorted by path."""
    return [json.loads(p.read_text()) for p in sorted((results / "eval").rglob("*.json"))]


def slug(text: str) -> str:
    """A file-name-safe form of a hardware name (``NVIDIA H200`` -> ``NVIDIA_H200``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "unknown"


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def hardware(device: str) -> Hardware:
    """The GPU (``nvidia-smi``: model, driver) when ``device`` is CUDA, else ``cpu: <model>``."""
    if device.startswith("cuda"):
        smi = shutil.which("nvidia-smi")
        if smi is None:
            return Hardware("cuda (nvidia-smi not found: model and driver unknown)", "cuda")
        query = [smi, "--query-gpu=name,driver_version", "--format=csv,noheader"]
        done = subprocess.run(query, capture_output=True, text=True, timeout=60, check=False)
        first = done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else ""
        if first:
            name, _, driver = (part.strip() for part in first.partition(","))
            return Hardware(f"{name}, driver {driver} (nvidia-smi)", slug(name))
        return Hardware(f"cuda (nvidia-smi failed: {done.stderr.strip()[:200]})", "cuda")
    return Hardware(f"cpu: {cpu_model()}", "cpu")


def software(evaluations: list[dict[str, Any]]) -> str:
    """torch and Python versions as the evaluation recorded them, else what this Python can import."""
    for record in evaluations:
        env = record.get("env", {})
        if env.get("torch"):
            return f"torch {env['torch']}, python {env.get('python', '?')} (as the evaluation recorded them)"
    try:
        import torch  # only when no evaluation was written (a stage failed before it)

        return f"torch {torch.__version__}, python {platform.python_version()} (the report helper's: no evaluation)"
    except ImportError:
        return "torch unknown (no evaluation record, and this Python has no torch)"


def published(method: str, dataset: str, ipc: int, family: str = "convnet") -> float | None:
    """The paper's accuracy of ``method`` at the cell (SPEC §7, ``published.csv``); None when not published."""
    if not PUBLISHED.is_file():
        return None
    with PUBLISHED.open() as handle:
        rows = csv.DictReader(line for line in handle if not line.startswith("#"))
        for row in rows:
            if row.get("variant"):  # a variant's number (the ablation), not the method's
                continue
            if (row["method"], row["dataset"], int(row["ipc"]), row["arch"]) == (method, dataset, ipc, family):
                return float(row["accuracy"])
    return None


def evaluation_units(evaluations: list[dict[str, Any]]) -> float:
    """Evaluation epochs trained in all: runs x trained epochs, summed over architectures."""
    total = 0.0
    for record in evaluations:
        settings = record.get("protocol_settings", {})
        epochs = settings.get("trained_epochs", settings.get("epochs", 0))
        total += record.get("runs", 0) * epochs
    return total


def stage_rows(stages: list[Stage], evaluations: list[dict[str, Any]]) -> list[str]:
    """The stage table (Markdown): seconds and seconds per unit of work, a failed stage marked."""
    rows = ["| stage | command | seconds | seconds per unit |", "|---|---|---|---|"]
    for stage in stages:
        units = evaluation_units(evaluations) if stage.name == "evaluate" and evaluations else stage.units
        per_unit = f"{stage.seconds / units:.4g} per {stage.unit} ({units:g})" if units > 0 else ""
        status = "" if stage.status == 0 else f" (failed: exit {stage.status})"
        rows.append(f"| {stage.name}{status} | `tgdd {stage.name}` | {stage.seconds:.1f} | {per_unit} |")
    return rows


def accuracy_lines(evaluations: list[dict[str, Any]]) -> list[str]:
    """One ``accuracy:`` line per evaluated architecture: mean ± std over its runs."""
    lines = []
    for record in evaluations:
        settings = record.get("protocol_settings", {})
        epochs = settings.get("trained_epochs", settings.get("epochs", "?"))
        lines.append(
            f"accuracy: {record['mean']:.2f} ± {record['std']:.2f} % ({record['arch']}, protocol "
            f"{record['protocol']}, mean ± std over {record['runs']} runs of {epochs} epochs; std: "
            f"{record.get('std_kind', 'over runs')})"
        )
    return lines


def reference_line(dataset: str, ipc: int) -> str:
    """The published DANCE number of this cell, labelled; for a cell the paper lacks, its Fashion-MNIST IPC 10."""
    value = published(REFERENCE_METHOD, dataset, ipc)
    if value is not None:
        return f"published DANCE at this cell ({dataset} IPC {ipc}, ConvNet; the paper, SPEC §7): {value:.1f} %"
    fashion = published(REFERENCE_METHOD, "fashion_mnist", 10)
    known = f"{fashion:.1f} %" if fashion is not None else "unknown"
    return (
        f"published DANCE at this cell: none ({dataset} IPC {ipc} is not in the paper; a rehearsal). "
        f"The paper cell this script is for, fashion_mnist IPC 10: {known}"
    )


def render(args: argparse.Namespace, stages: list[Stage], evaluations: list[dict[str, Any]], hw: Hardware) -> str:
    """The whole report (Markdown)."""
    device = next((r.get("env", {}).get("device") for r in evaluations if r.get("env")), None) or args.device
    code = next((r.get("code") for r in evaluations if r.get("code")), None)
    lines = [f"# One paper cell end to end: {args.dataset} IPC {args.ipc}, {args.method} ({hw.description})", ""]
    lines += [
        f"- hardware: {hw.description}",
        f"- software: {software(evaluations)}; device {device}",
        f"- code: {json.dumps(code) if code else 'unknown'}",
        f"- settings: {args.settings}",
        f"- finished: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        "",
        "Each stage is one `tgdd` process, timed whole (Python and torch start-up, data loading and writing included).",
        "",
    ]
    lines += stage_rows(stages, evaluations)
    lines += ["", f"total: {sum(s.seconds for s in stages):.1f} s", ""]
    failed = next((s for s in stages if s.status != 0), None)
    if failed is not None:
        why = f"timed out: its limit is {failed.limit} s" if failed.status == 124 else f"exit {failed.status}"
        lines += [f"failed: {failed.name} ({why}); the later stages did not run", ""]
    lines += accuracy_lines(evaluations) or ["accuracy: none (no evaluation was written)"]
    lines += ["", reference_line(args.dataset, args.ipc), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=Path, required=True, help="the shell's stage table")
    parser.add_argument("--results", type=Path, required=True, help="the run's paths.results")
    parser.add_argument("--out", type=Path, required=True, help="folder of the report")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--ipc", type=int, required=True)
    parser.add_argument("--device", required=True, help="the device asked for (the record's wins)")
    parser.add_argument("--settings", default="", help="one line: the scale and the overrides")
    args = parser.parse_args(argv)
    stages, evaluations = read_stages(args.stages), read_evaluations(args.results)
    requested = next((r.get("env", {}).get("device") for r in evaluations if r.get("env")), None) or args.device
    hw = hardware(str(requested))
    text = render(args, stages, evaluations, hw)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gpu_cell_{hw.slug}.md"
    path.write_text(text)
    print(text)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
