"""Continual learning through every route (`tgdd continual`, `tgdd pipeline`'s plan, Snakemake, the
report) and the efficiency records of every synthetic set (meta["efficiency"], the report's table and
scatter), on the tiny digits config (10 classes: steps 2 and 5, one order, one run, 2 epochs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tgdd import paths, steps
from tgdd.checkpoint import Checkpointer
from tgdd.cli import main
from tgdd.config import config_dict
from tgdd.continual import SELECTION, class_orders, evaluate_continual, run_seeds
from tgdd.data.prepared import load_prepared
from tgdd.efficiency import IterationClock
from tgdd.freshness import Freshness
from tgdd.report_continual import write_continual_report
from tgdd.report_efficiency import write_efficiency_report
from tgdd.resolve import continual_settings
from tgdd.synthetic import load_synthetic, load_synthetic_meta, save_synthetic, synthetic_digest

from .conftest import tiny_config
from .test_workflow import job_counts, make_project, snakemake, tiny_tree

CONTINUAL = ("continual.steps=[2,5]", "continual.orders=1", "continual.runs=1", "continual.epochs=2",
             "continual.arch=convnet-1-w16")  # fmt: skip
MATRIX = ("matrix.methods=[dm,random]", "matrix.ipcs=[1]", "evaluate.runs=1")


def cell(root: Path, method: str, *more: str):
    return tiny_config(root, *CONTINUAL, *MATRIX, f"distill.method={method}", "distill.ipc=1", *more)


def config_file(root: Path, *overrides: str) -> Path:
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config_dict(tiny_config(root, *CONTINUAL, *MATRIX, *overrides))))
    return path


@pytest.fixture(scope="module")
def done(tmp_path_factory, prepared_root) -> Path:
    """dm and random at IPC 1, distilled, evaluated and evaluated class-incrementally (through the CLI)."""
    root = tmp_path_factory.mktemp("continual")
    shutil.copytree(prepared_root / "data", root / "data")
    config = config_file(root)
    for method in ("dm", "random"):
        for step in ("distill", "evaluate", "continual"):
            assert main([step, "--config", str(config), f"distill.method={method}", "distill.ipc=1", "-q"]) == 0
    return root


# ---------------------------------------------------------------------------------------------
# tgdd continual
# ---------------------------------------------------------------------------------------------
def test_the_step_writes_one_file_per_step_count_with_the_protocols_record(done):
    cfg = cell(done, "dm")
    syn = load_synthetic(paths.synthetic_file(cfg))
    for n, seen in ((2, [5, 10]), (5, [2, 4, 6, 8, 10])):
        path = paths.continual_file(cfg, n)
        assert path == done / f"results/continual/digits/dm/ipc1/seed0/convnet-1-w16__steps{n}.json"
        r = json.loads(path.read_text())
        assert (r["steps"], r["classes_seen"], r["class_orders"]) == (n, seen, class_orders(10, 1))
        assert (r["protocol"], r["arch"], r["orders"], r["runs"]) == ("dc", "convnet-1-w16", 1, 1)
        assert r["protocol_settings"]["epochs"] == 2 and r["protocol_settings"]["schedule"] == "dc"
        assert [len(a) for a in r["accuracies"]] == [1] * n
        assert r["mean"] == [float(np.mean(a)) for a in r["accuracies"]]
        assert r["std"] == [float(np.std(a)) for a in r["accuracies"]]
        assert r["seeds"] == run_seeds(0, n, 1, 1) and r["selection"] == SELECTION
        assert r["synthetic_content_sha256"] == synthetic_digest(syn) and r["distill_seed"] == 0
        assert {"code", "env", "created"} <= r.keys()


def test_the_steps_accuracies_are_the_protocols_computed_directly(done):
    """The step runs tgdd.continual.evaluate_continual on the decoded set with the resolved dc settings."""
    cfg = cell(done, "random")
    syn = load_synthetic(paths.synthetic_file(cfg))
    test = load_prepared(paths.prepared_dir(cfg), "test", "digits")
    images, labels = syn.decoded()
    settings = continual_settings(cfg, images_per_class=1)
    assert settings.epochs == 2 and settings.augment == "color_crop_cutout_flip_scale_rotate"
    direct = evaluate_continual(images, labels, test.images, test.labels, test.mean, test.std, num_classes=10,
                                steps=2, orders=1, runs=1, arch="convnet-1-w16", settings=settings, seed=0,
                                device=torch.device("cpu"), progress=False)  # fmt: skip
    assert json.loads(paths.continual_file(cfg, 2).read_text())["accuracies"] == direct.accuracies


def test_steps_that_do_not_split_the_classes_are_refused_before_any_compute(done, capsys):
    config = config_file(done)
    assert main(["continual", "--config", str(config), "distill.method=random", "continual.steps=[3]"]) == 2
    assert "10 classes do not split into equal steps" in capsys.readouterr().err
    with pytest.raises(Exception, match="do not split"):
        steps.plan(tiny_config(done, *CONTINUAL, *MATRIX, "continual.enabled=true", "continual.steps=[4]"))


def test_the_plan_runs_it_after_evaluate_only_when_enabled_and_redoes_what_changed(done):
    base = (*CONTINUAL, *MATRIX)
    assert [s for s, *_ in steps.plan(tiny_config(done, *base))] == ["report"]  # off by default
    assert [s for s, *_ in steps.plan(tiny_config(done, *base, "continual.enabled=true"))] == ["report"]
    planned = steps.plan(tiny_config(done, *base, "continual.enabled=true", "continual.epochs=3"))
    redo = [(steps.describe(s, c), why) for s, c, why in planned if s == "continual"]
    assert [what for what, _ in redo] == [f"continual digits {m} ipc1 seed0 on convnet-1-w16 in 2, 5 steps"
                                          for m in ("dm", "random")]  # fmt: skip
    assert all("continual.protocol_settings.epochs (resolved): 2 -> 3" in why for _, why in redo)
    kinds = [s for s, *_ in planned]
    assert kinds.index("continual") > kinds.index("evaluate") if "evaluate" in kinds else True
    planned = steps.plan(tiny_config(done, *base, "continual.enabled=true", "continual.steps=[2,10]"))
    assert [(s, c.continual.steps, why) for s, c, why in planned if s == "continual"] == [
        ("continual", [10], "missing"),
        ("continual", [10], "missing"),
    ]
    fresh = Freshness()
    assert fresh.continual(cell(done, "dm"), 2, synthetic_redone=False) is None
    assert fresh.continual(cell(done, "dm", "continual.orders=2"), 2, False) == "continual.orders (resolved): 1 -> 2"
    assert fresh.continual(cell(done, "dm"), 2, synthetic_redone=True) == "its synthetic set is (re)distilled"


# ---------------------------------------------------------------------------------------------
# Efficiency records
# ---------------------------------------------------------------------------------------------
def test_every_synthetic_set_records_its_efficiency(done):
    e = load_synthetic_meta(paths.synthetic_file(cell(done, "dm")))["efficiency"]
    assert e["iterations_timed"] == 4 and e["seconds"] > 0
    assert 0 < 3 * e["seconds_per_iteration"] <= e["seconds"]  # iterations 2..4: set-up and warm-up left out
    assert e["seconds_per_iteration_of"] == "iterations 2..n (set-up and first iteration excluded)"
    assert e["peak_host_memory_mib"] > 50 and e["peak_device_memory_mib"] is None and e["device"] == "cpu"
    selection = load_synthetic_meta(paths.synthetic_file(cell(done, "random")))["efficiency"]
    assert selection["iterations_timed"] == 0 and selection["seconds_per_iteration"] is None


def test_efficiency_is_a_measurement_freshness_and_digests_ignore(done, tmp_path):
    root = Path(shutil.copytree(done, tmp_path / "copy"))
    cfg = cell(root, "dm")
    path = paths.synthetic_file(cfg)
    syn = load_synthetic(path)
    before = synthetic_digest(syn)
    syn.meta["efficiency"] = {**syn.meta["efficiency"], "seconds": 1e6, "peak_host_memory_mib": 1.0}
    save_synthetic(path, syn)
    assert synthetic_digest(load_synthetic(path)) == before
    assert Freshness().distill(cfg, False, False) is None
    assert Freshness().evaluation(cfg, "convnet-1-w16", synthetic_redone=False) is None
    assert Freshness().continual(cfg, 5, synthetic_redone=False) is None


def test_checkpoint_writes_are_timed_apart(tmp_path, monkeypatch):
    checkpointer = Checkpointer(tmp_path / "c.pt", every=2, identity={"a": 1})
    checkpointer.after_iteration(1, lambda: {"x": torch.zeros(3)})
    assert checkpointer.write_seconds == 0.0
    checkpointer.after_iteration(2, lambda: {"x": torch.zeros(3)})
    assert checkpointer.write_seconds > 0.0 and checkpointer.clock.ticks == 2
    clock, now = IterationClock(), iter([10.0, 12.0, 15.5, 16.0])
    monkeypatch.setattr("tgdd.efficiency.time.perf_counter", lambda: next(now))
    assert clock.seconds_per_iteration() is None
    for written in (0.0, 0.0, 1.5, 1.5):  # a 1.5 s checkpoint write during the third iteration
        clock.tick(written)
    assert clock.seconds_per_iteration() == pytest.approx((16.0 - 10.0 - 1.5) / 3)


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------
def test_the_report_tabulates_and_draws_the_continual_curves(done, tmp_path):
    written = write_continual_report(done / "results" / "continual", tmp_path)
    names = sorted(p.name for p in written)
    assert names == ["continual.csv", "continual.md", "continual_digits_ipc1_steps2.png",
                     "continual_digits_ipc1_steps5.png"]  # fmt: skip
    assert all((tmp_path / n).stat().st_size > 1000 for n in names if n.endswith(".png"))
    markdown = (tmp_path / "continual.md").read_text()
    assert "### digits IPC 1, 5 class-incremental steps (convnet-1-w16, protocol `dc`, 2 epochs)" in markdown
    assert "| 1: 2 classes" in markdown and "5: 10 classes" in markdown
    table = pd.read_csv(tmp_path / "continual.csv")
    for method in ("dm", "random"):
        r = json.loads(paths.continual_file(cell(done, method), 5).read_text())
        rows = table[(table["method"] == method) & (table["steps"] == 5)].sort_values("step")
        assert rows["mean"].tolist() == pytest.approx(r["mean"], abs=1e-4)
        assert rows["classes_seen"].tolist() == r["classes_seen"]
        line = next(x for x in markdown.split("\n\n")[5].splitlines() if x.startswith(f"| {method} "))
        assert f"{r['mean'][0]:.1f} ± 0.0" in line
    assert write_continual_report(tmp_path / "none", tmp_path / "t") == []


def test_the_report_tabulates_and_draws_the_efficiency(done, tmp_path):
    written = write_efficiency_report(done / "results" / "eval", tmp_path)
    assert [p.name for p in written] == ["efficiency.csv", "efficiency.md", "efficiency.png"]
    assert (tmp_path / "efficiency.png").stat().st_size > 1000
    frame = pd.read_csv(tmp_path / "efficiency.csv").set_index("method")
    e = load_synthetic_meta(paths.synthetic_file(cell(done, "dm")))["efficiency"]
    accuracy = json.loads(paths.evaluation_file(cell(done, "dm"), "convnet-1-w16").read_text())["mean"]
    assert frame.loc["dm", "seconds_per_iteration"] == pytest.approx(e["seconds_per_iteration"], rel=1e-5)
    assert frame.loc["dm", "distill_seconds"] == pytest.approx(4 * e["seconds_per_iteration"], rel=1e-5)
    assert frame.loc["dm", "accuracy"] == pytest.approx(accuracy, rel=1e-5)
    assert frame.loc["random", "iterations"] == 0
    markdown = (tmp_path / "efficiency.md").read_text()
    assert "### digits, convnet-1-w16, protocol `tgdd`" in markdown and "| dm " in markdown
    empty = write_efficiency_report(tmp_path / "no-eval", tmp_path / "empty")
    assert "No evaluated synthetic set records its efficiency" in empty[1].read_text() and empty[2].is_file()


def test_tgdd_report_writes_both(done):
    names = {p.name for p in steps.report(tiny_config(done, *CONTINUAL, *MATRIX))}
    assert {"efficiency.csv", "efficiency.md", "efficiency.png", "continual.csv", "continual.md"} <= names
    assert {"continual_digits_ipc1_steps2.png", "continual_digits_ipc1_steps5.png"} <= names


# ---------------------------------------------------------------------------------------------
# Snakemake
# ---------------------------------------------------------------------------------------------
def test_snakemake_plans_one_continual_job_per_cell_and_step_count_only_when_enabled(tmp_path):
    section = {"steps": [2, 5], "orders": 1, "runs": 1, "epochs": 2, "arch": "convnet-1-w16"}
    off = make_project(tmp_path / "off", tiny_tree(continual=section))
    assert "tgdd_continual" not in job_counts(snakemake("-n", "--cores", "1", cwd=off).stdout)
    on = make_project(tmp_path / "on", tiny_tree(continual={**section, "enabled": True}))
    out = snakemake("-n", "-p", "--cores", "1", cwd=on).stdout
    assert job_counts(out)["tgdd_continual"] == 4  # (tgdd, random) x steps 2 and 5
    assert "results/continual/digits/tgdd/ipc1/seed0/convnet-1-w16__steps5.json" in out
    assert "continual --config" in out and "'continual.steps=[2]'" in out
    assert "results/tables/continual_digits_ipc1_steps5.png" in out and "results/tables/efficiency.png" in out
    target = job_counts(snakemake("-n", "--cores", "1", "continual", cwd=on).stdout)
    assert target["tgdd_continual"] == 4 and "tgdd_report" not in target
