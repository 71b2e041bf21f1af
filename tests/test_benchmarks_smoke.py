"""benchmarks/: the FLOP counter (tgdd_bench.flops) against hand computations, each script end to end, and the
layout (scripts import the package, never each other)."""

from __future__ import annotations

import ast
import csv
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from torch import nn

from tgdd.models import build_model

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"


@pytest.fixture(scope="module")
def flops() -> ModuleType:
    """``tgdd_bench.flops``, imported as the scripts import it: with ``benchmarks/`` on ``sys.path``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(SCRIPT.parent))
        return importlib.import_module("tgdd_bench.flops")


def test_flops_of_a_single_conv(flops):
    conv = nn.Conv2d(3, 16, kernel_size=5, stride=2, padding=1)
    # output 15 x 15: N * Cout * Hout * Wout * Cin * k * k
    assert flops.count_macs(conv, (4, 3, 32, 32)) == 4 * 16 * 15 * 15 * 3 * 5 * 5
    assert flops.count_flops(conv, (4, 3, 32, 32)) == 2 * 4 * 16 * 15 * 15 * 3 * 5 * 5
    grouped = nn.Conv2d(8, 16, kernel_size=3, padding=1, groups=4)
    assert flops.count_macs(grouped, (2, 8, 10, 10)) == 2 * 16 * 10 * 10 * (8 // 4) * 3 * 3


def test_flops_of_convnet3_at_32px(flops):
    model = build_model("convnet-3", 3, 32, 10)
    conv1 = 32 * 32 * 128 * 3 * 9
    conv2 = 16 * 16 * 128 * 128 * 9
    conv3 = 8 * 8 * 128 * 128 * 9
    linear = 2048 * 10
    assert flops.count_macs(model, (2, 3, 32, 32)) == 2 * (conv1 + conv2 + conv3 + linear)
    assert flops.count_macs(model, (2, 3, 32, 32), call="features") == 2 * (conv1 + conv2 + conv3)
    # 28 px single-channel input is padded by 3 and acts as 32 px (SPEC §4)
    fashion = build_model("convnet-3", 1, 28, 10)
    assert flops.count_macs(fashion, (1, 1, 28, 28)) == 32 * 32 * 128 * 9 + conv2 + conv3 + linear


def test_iteration_flops_by_hand(flops):
    """Per class: real batch forward through the features; synthetic batch forward + input gradient through
    the features and through the whole expert. The batched path does the same work."""
    model = build_model("convnet-3", 3, 32, 10)
    shape = (1, 3, 32, 32)
    features, forward = flops.layer_calls(model, shape, "features"), flops.layer_calls(model, shape, "forward")
    f = 32 * 32 * 128 * 3 * 9 + 16 * 16 * 128 * 128 * 9 + 8 * 8 * 128 * 128 * 9
    full = f + 2048 * 10
    expected = 10 * 2 * (128 * f + 40 * 2 * f + 40 * 2 * full)
    for batched in (False, True):
        work = flops.distill_work(features, forward, real=128, syn=40, classes=10, batched=batched)
        assert sum(w.flops for w in work) == expected
    # a training step: forward, weight gradients, input gradients except the first layer's
    step = flops.training_work(forward, [64])
    assert sum(w.flops for w in step) == 2 * 64 * (3 * full - 32 * 32 * 128 * 3 * 9)


@pytest.mark.slow
def test_quick_run_writes_report(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    from tgdd_bench.speed.analysis import CSV_COLUMNS

    out = tmp_path / "results"
    command = [sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--threads", "1", "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    markdown = (out / "speed_cpu.md").read_text()
    for heading in ("## Headline", "## 4. Levers", "## 5. Where the time goes", "## 6. How time grows"):
        assert heading in markdown
    assert "achieved / attainable" in markdown and "self CPU" in markdown
    with (out / "speed_cpu.csv").open() as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        rows = list(reader)
    sections = {r["section"] for r in rows}
    assert sections == {"distillation", "training"}
    assert {r["path"] for r in rows} >= {"per-class", "batched"}
    numeric = ("seconds_per_unit", "units_per_s", "gflop_per_unit", "achieved_gflops", "attainable_gflops")
    for row in rows:
        for column in (*numeric, "achieved_over_attainable"):
            assert float(row[column]) > 0, (row["name"], column)
        if row["section"] == "distillation":
            assert float(row["peak_mem_mib"]) > 0, row["name"]


@pytest.mark.slow
def test_overhead_quick_run_measures_every_command(tmp_path):
    """benchmarks/overhead.py --quick: every command runs for real (a failing one fails the run)."""
    script = SCRIPT.with_name("overhead.py")
    done = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with (tmp_path / "overhead_cpu.csv").open() as handle:
        rows = {r["what"]: r for r in csv.DictReader(handle)}
    assert {"tgdd --help", "import torch"} <= set(rows)
    assert any(w.startswith("snakemake -n") for w in rows) and any(w.startswith("tgdd pipeline -n") for w in rows)
    for row in rows.values():
        assert 0 < float(row["min_s"]) <= float(row["median_s"]) <= float(row["max_s"]), row
    assert "| tgdd --help |" in (tmp_path / "overhead_cpu.md").read_text()


def imported_modules(path: Path) -> set[str]:
    """The top-level names of every absolute import in ``path``, those inside functions too."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_scripts_share_code_through_the_package_only():
    """No benchmark script imports another script, and the package imports none: the shared code is
    ``tgdd_bench``. ``gpu_cell_report.py`` imports neither (it runs on a Python without tgdd)."""
    folder = SCRIPT.parent
    scripts = {path.stem for path in folder.glob("*.py")}
    assert {"speed", "mtt_memory", "report_analysis", "gpu_check"} <= scripts
    for path in [*folder.glob("*.py"), *(folder / "tgdd_bench").rglob("*.py")]:
        assert not imported_modules(path) & scripts, path.name
    report_helper = imported_modules(folder / "gpu_cell_report.py") - set(sys.stdlib_module_names)
    assert report_helper <= {"torch"}  # torch only inside ``try`` (its version, where no record gave it)
    assert "tgdd_bench" in imported_modules(SCRIPT) and "tgdd_bench" in imported_modules(folder / "mtt_memory.py")


def test_gpu_budget_counts_scale_with_the_config(tmp_path, monkeypatch):
    """benchmarks/gpu_budget.py: more evaluation runs or trajectories scale exactly their stage."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import yaml

    import gpu_budget

    def counts(**sections):
        tree = {"dataset": "mnist", "matrix": {"datasets": ["mnist"], "methods": ["tgdd", "random"], "ipcs": [1]}}
        tree["experts"] = {"arch": "convnet-1-w16", "epochs": 1, **sections.get("experts", {})}
        tree["evaluate"] = {"archs": ["convnet-1-w16"], "epochs": 2, **sections.get("evaluate", {})}
        tree["distill"] = {"iterations": 3}
        path = tmp_path / "budget.yaml"
        path.write_text(yaml.safe_dump(tree))
        return gpu_budget.budget(path)["mnist"]

    base = counts(evaluate={"runs": 1}, experts={"num_trajectories": 1})
    assert all(base[stage] > 0 for stage in ("experts", "distill", "evaluate"))
    more_runs = counts(evaluate={"runs": 3}, experts={"num_trajectories": 1})
    assert more_runs["evaluate"] == pytest.approx(3 * base["evaluate"]) and more_runs["distill"] == base["distill"]
    more_experts = counts(evaluate={"runs": 1}, experts={"num_trajectories": 2})
    assert more_experts["experts"] == pytest.approx(2 * base["experts"])


def test_gpu_check_counts_flops_and_runs_the_cpu_side_without_cuda(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import gpu_check

    assert 0 < gpu_check.iteration_flops(10, 1) < gpu_check.iteration_flops(10, 10) < gpu_check.iteration_flops(100, 10)
    if not gpu_check.torch.cuda.is_available():
        monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--out", str(tmp_path)])
        assert gpu_check.main() == 0  # the CPU side ran and a repeat of its pass agreed
        assert "GPU side skipped: no CUDA device" in capsys.readouterr().out
        report = (tmp_path / "gpu_check_cpu.md").read_text()
        assert report.count("| yes |") == 4 and "| NO |" not in report
        assert "against separate runs" in report and "(tolerance 1.0e-03): ok" in report  # tgdd.stacked on the device
        section = report.split("## TGDD distillation, CUDA graphs vs eager", 1)[1]  # the steps' rehearsal on digits
        assert "| eager (never) | 0 |" in section and "| graphed (always) | 0 |" in section  # no replays without CUDA
        assert "max abs image difference 0.00e+00 (tolerance 0.0e+00; identical): ok" in section


def test_gpu_check_pass_leaves_the_shared_inputs_untouched(monkeypatch):
    """A pass builds its own leaves: on the CPU ``.to("cpu")`` returns the shared tensor itself, so marking it
    as requiring grad leaked into the next pass (on CUDA: a non-leaf copy whose ``.grad`` stayed None)."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import torch

    import gpu_check

    case = gpu_check.tiny_case()
    shared = {"real": case.real, "syn": case.syn, "mean": case.mean, "std": case.std}
    shared |= {f"drawn {i}": v for i, v in enumerate(case.drawn.values)}
    before = {name: t.clone() for name, t in shared.items()}
    weights = {name: p.clone() for name, p in case.extractor.named_parameters()}
    first = gpu_check.run_pass(case, torch.device("cpu"))
    for name, tensor in shared.items():
        assert tensor.is_leaf and not tensor.requires_grad and tensor.grad is None, name
        assert torch.equal(tensor, before[name]), name
    for model in (case.extractor, case.expert):
        assert all(p.grad is None and p.device.type == "cpu" for p in model.parameters())
    assert all(torch.equal(p, weights[name]) for name, p in case.extractor.named_parameters())
    second = gpu_check.run_pass(case, torch.device("cpu"))  # the same inputs give the same pass
    assert first[-1].abs().max() > 0  # an image gradient came back
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.slow
def test_mtt_memory_quick_run_measures_a_peak_that_grows_with_the_steps(tmp_path):
    """benchmarks/mtt_memory.py --quick: the real MTT loop in a subprocess per case, peak memory and time."""
    script = SCRIPT.with_name("mtt_memory.py")
    command = [sys.executable, str(script), "--quick", "--out", str(tmp_path), "--threads", "1", "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    with (tmp_path / "mtt_memory_cpu_quick.csv").open() as handle:
        rows = {r["name"]: r for r in csv.DictReader(handle)}
    two, six = rows["quick-w16-steps2"], rows["quick-w16-steps6"]
    assert (int(two["syn_steps"]), int(six["syn_steps"])) == (2, 6)
    assert 0 < float(two["peak_mib"]) < float(six["peak_mib"])  # the unroll's graph grows with the steps
    assert float(two["seconds_per_iteration"]) > 0
    assert "Linear in syn_steps x batch_syn" in (tmp_path / "mtt_memory_cpu_quick.md").read_text()


def _gpu_cell(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run benchmarks/gpu_cell.sh with this interpreter's tgdd, the report under ``tmp_path/out``."""
    out = tmp_path / "out"
    knobs = {"TGDD": f"{sys.executable} -m tgdd.cli", "PY": sys.executable, "DEVICE": "cpu", "EXTRA": "", **env}
    command = ["bash", str(SCRIPT.with_name("gpu_cell.sh")), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, **knobs})
    return done, out / "gpu_cell_cpu.md"


@pytest.mark.slow
def test_gpu_cell_rehearsal_on_digits_writes_the_report(tmp_path):
    """benchmarks/gpu_cell.sh at a tiny scale on the CPU: the four tgdd steps run and are timed, and the report
    has every stage, their sum as `total:` and the evaluation's mean ± std as `accuracy:`."""
    tiny = {"DATASET": "digits", "IPC": "1", "TRAJECTORIES": "1", "EPOCHS": "1", "ITERATIONS": "2", "RUNS": "1"}
    tiny |= {"EVAL_EPOCHS": "1", "RESULTS": str(tmp_path / "run")}
    tiny["EXTRA"] = "experts.arch=convnet-2-w16 evaluate.archs=[convnet-2-w16] threads=1"  # seconds, not minutes
    done, report = _gpu_cell(tmp_path, **tiny)
    assert done.returncode == 0, done.stderr[-3000:]
    text = report.read_text()
    seconds = {}
    for stage in ("prepare", "experts", "distill", "evaluate"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {stage} | `tgdd {stage}` |"))
        seconds[stage] = float(row.split("|")[3])
        assert seconds[stage] > 0
    total = next(line for line in text.splitlines() if line.startswith("total: "))
    assert total.endswith(" s") and float(total.split()[1]) == pytest.approx(sum(seconds.values()), abs=0.2)
    record = json.loads(next((tmp_path / "run" / "results" / "eval").rglob("convnet-2-w16__tgdd.json")).read_text())
    assert record["runs"] == 1 and record["protocol_settings"]["epochs"] == 1
    assert f"accuracy: {record['mean']:.2f} ± {record['std']:.2f} % (convnet-2-w16" in text
    assert "- hardware: cpu: " in text and "device cpu" in text and "published DANCE at this cell: none" in text
    assert "86.3" in text  # the paper cell's number, labelled as not this run's


def test_gpu_cell_stage_timeout_still_writes_the_report(tmp_path):
    """A stage past its own timeout stops the run with status 124, and the report says so."""
    done, report = _gpu_cell(tmp_path, DATASET="digits", PREPARE_TIMEOUT="0.05")
    assert done.returncode == 124, done.stderr[-3000:]
    text = report.read_text()
    assert "| prepare (failed: exit 124) |" in text and "failed: prepare (timed out: its limit is 0.05 s)" in text
    assert "accuracy: none" in text and "| experts" not in text


def test_gpu_cell_report_labels_the_published_dance_number(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import gpu_cell_report

    assert gpu_cell_report.published("dance", "fashion_mnist", 10) == 86.3
    line = gpu_cell_report.reference_line("fashion_mnist", 10)
    assert line.startswith("published DANCE at this cell (fashion_mnist IPC 10") and line.endswith("86.3 %")
