"""Fixed costs a user pays before any compute: CLI start-up, config validation, a Snakemake dry run,
a no-op `dvc repro`, and the imports behind them.

    .venv/bin/python benchmarks/overhead.py            # ~3 min on 2 cores (one tiny `dvc repro` included)
    .venv/bin/python benchmarks/overhead.py --quick    # fewer repeats, no DVC (the CI smoke test)

Every command runs in a fresh process, as a user would type it, in a temporary copy of the
project (the default quick config for the dry runs; a tiny config, reproduced once, for the no-op
`dvc repro`). Each is repeated and the median and range of the wall times are reported. Results:
``<out>/overhead_cpu.md`` and ``.csv``.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml

from tgdd.config import config_dict, load_config

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROJECT_FILES = ["Snakefile", "workflow", "config", "dvc.yaml", ".dvcignore", ".gitignore", "slurm", "slurm-ci"]
TINY_OVERRIDES = [  # a matrix that reproduces in about a minute: what matters here is the no-op after it
    "distill.iterations=2",
    "experts.epochs=1",
    "experts.num_trajectories=1",
    "evaluate.epochs=1",
    "evaluate.runs=1",
    "evaluate.archs=[convnet-1-w16]",
    "matrix.methods=[tgdd,random]",
    "matrix.ipcs=[1]",
    "tracking.enabled=false",
]


@dataclass
class Measurement:
    what: str
    command: str
    seconds: list[float]
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - started


def measure(what: str, command: list[str], cwd: Path, env: dict[str, str], repeats: int, note: str = "") -> Measurement:
    timed(command, cwd, env)  # warm the page cache and the bytecode caches, as on a second call
    seconds = [timed(command, cwd, env) for _ in range(repeats)]
    shown = " ".join(Path(c).name if c.startswith(str(BIN)) else c for c in command)
    print(f"{what}: median {statistics.median(seconds):.2f} s", flush=True)
    return Measurement(what, shown, seconds, note)


def make_project(dst: Path, overrides: list[str]) -> Path:
    """A copy of the workflow files, its config/config.yaml the default config plus ``overrides``."""
    dst.mkdir(parents=True)
    for name in PROJECT_FILES:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst / name)
    shutil.copytree(REPO / "src" / "tgdd", dst / "src" / "tgdd", ignore=shutil.ignore_patterns("__pycache__"))
    config = dst / "config" / "config.yaml"
    resolved = config_dict(load_config(REPO / "config" / "config.yaml", overrides))
    config.unlink()
    config.write_text(yaml.safe_dump(resolved, sort_keys=False))
    return dst


def environment() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}


def run_all(tmp: Path, repeats: int, with_dvc: bool) -> list[Measurement]:
    env = environment()
    python, tgdd, snakemake, dvc = (str(BIN / name) for name in ("python", "tgdd", "snakemake", "dvc"))
    quick = make_project(tmp / "quick", [])
    rows = [
        measure("Python start-up alone", [python, "-c", "pass"], quick, env, repeats, "the floor of every command"),
        measure("import torch", [python, "-c", "import torch"], quick, env, repeats, "paid by every compute step"),
        measure("import mlflow", [python, "-c", "import mlflow"], quick, env, repeats, "paid by steps that log"),
        measure("tgdd --help", [tgdd, "--help"], quick, env, repeats, "no heavy import"),
        measure(
            "tgdd config (validate the quick config)",
            [tgdd, "config", "--config", "config/config.yaml"],
            quick,
            env,
            repeats,
            "name checks without torch",
        ),
        measure(
            "tgdd pipeline -n (quick matrix, nothing done yet)",
            [tgdd, "pipeline", "-n", "--config", "config/config.yaml"],
            quick,
            env,
            repeats,
            "plans 34 steps",
        ),
        measure(
            "snakemake -n (quick matrix, nothing done yet)",
            [snakemake, "-n", "--cores", "all", "--quiet"],
            quick,
            env,
            repeats,
            "parses the Snakefile, validates every cell, builds the 34-job DAG",
        ),
    ]
    if with_dvc:
        tiny = make_project(tmp / "tiny", TINY_OVERRIDES)
        for command in (
            ["git", "init", "-q"],
            [dvc, "init", "-q"],
            ["git", "add", "-A"],
            ["git", "-c", "user.name=bench", "-c", "user.email=bench@tgdd.invalid", "commit", "-qm", "x"],
        ):
            subprocess.run(command, cwd=tiny, env=env, check=True, stdout=subprocess.DEVNULL)
        started = time.perf_counter()
        subprocess.run([dvc, "repro", "-q"], cwd=tiny, env=env, check=True, capture_output=True)
        first = time.perf_counter() - started
        print(f"first dvc repro (tiny matrix, not an overhead): {first:.1f} s", flush=True)
        rows.append(
            measure(
                "dvc repro with nothing to do (tiny matrix)",
                [dvc, "repro", "-q"],
                tiny,
                env,
                repeats,
                f"checks the hashes of 5 stages' deps and outs; the first repro took {first:.0f} s",
            )
        )
        rows.append(measure("dvc status", [dvc, "status", "-q"], tiny, env, repeats, "the same checks, no run"))
    return rows


def write_report(rows: list[Measurement], out: Path, started: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "overhead_cpu.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["what", "command", "median_s", "min_s", "max_s", "repeats"])
        for r in rows:
            writer.writerow(
                [r.what, r.command, f"{r.median:.3f}", f"{min(r.seconds):.3f}", f"{max(r.seconds):.3f}", len(r.seconds)]
            )
    load = os.getloadavg()[0]
    lines = [
        "# Fixed overheads (cpu)",
        "",
        f"Generated by `benchmarks/overhead.py` on {started} UTC: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, load average (1 min) {load:.2f} at the end. "
        "Wall time of each command in a fresh process, after one untimed warm-up call; median (min–max).",
        "",
        "| what | command | median s | min–max s | note |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.what} | `{r.command}` | {r.median:.2f} | {min(r.seconds):.2f}–{max(r.seconds):.2f} | {r.note} |"
        )
    (out / "overhead_cpu.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'overhead_cpu.md'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 repeats, no DVC (smoke test)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M")
    with tempfile.TemporaryDirectory(prefix="tgdd-overhead-") as tmp:
        rows = run_all(Path(tmp), repeats=2 if args.quick else 5, with_dvc=not args.quick)
    write_report(rows, args.out, started)


if __name__ == "__main__":
    main()
