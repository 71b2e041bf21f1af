"""MLflow tracking against real MLflow: a real server fed with real pipeline artifacts, the
fail-fast reachability check, and many processes sharing one SQLite store."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import torch

from tgdd import paths, steps, tracking
from tgdd.artifacts import sha256_file
from tgdd.cards import METHODS as METHOD_CARDS
from tgdd.config import config_dict, flatten
from tgdd.errors import TgddError
from tgdd.synthetic import SyntheticSet, load_synthetic, save_grid, save_synthetic

from .conftest import tiny_config, with_trained_experts

EXPERIMENT = "tgdd-tiny"
METHODS = ("tgdd", "random")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _child_env() -> dict[str, str]:
    """The environment for MLflow subprocesses: the default store, no telemetry."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return env


def _http(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


class Server:
    def __init__(self, root: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(root / "server.log", "wb")  # noqa: SIM115 (closed in stop)
        env = _child_env()
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "mlflow", "server"),
                *("--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"),
                *("--backend-store-uri", f"sqlite:///{root / 'm.db'}"),
                *("--artifacts-destination", str(root / "artifacts")),
            ],
            cwd=root,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"mlflow server exited with {self.process.returncode}: {self._log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        pytest.fail(f"mlflow server did not answer /health within {timeout:.0f} s: {self._log_tail()}")

    def _log_tail(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()

    def experiment_id(self, name: str) -> str:
        query = urllib.parse.urlencode({"experiment_name": name})
        return _http(f"{self.url}/api/2.0/mlflow/experiments/get-by-name?{query}")["experiment"]["experiment_id"]

    def runs(self, experiment_id: str) -> list[dict]:
        found, token = [], None
        while True:
            body = {"experiment_ids": [experiment_id], "max_results": 1000}
            if token:
                body["page_token"] = token
            page = _http(f"{self.url}/api/2.0/mlflow/runs/search", body)
            found += page.get("runs", [])
            token = page.get("next_page_token")
            if not token:
                return found

    def metric_history(self, run_id: str, key: str) -> list[dict]:
        query = urllib.parse.urlencode({"run_id": run_id, "metric_key": key, "max_results": 25000})
        return _http(f"{self.url}/api/2.0/mlflow/metrics/get-history?{query}").get("metrics", [])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 (it boots while the pipeline fixture computes)."""
    handle = Server(tmp_path_factory.mktemp("mlflow-server"))
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def pipeline_root(server, prepared_root, tmp_path_factory) -> Path:
    """experts -> distill -> evaluate (tgdd and random, IPC 1) -> report on the tiny config."""
    root = with_trained_experts(prepared_root, tmp_path_factory, "tracking-pipeline")
    for method in METHODS:
        cfg = tiny_config(root, f"distill.method={method}", "distill.ipc=1")
        steps.distill(cfg)
        steps.evaluate(cfg)
    steps.report(tiny_config(root))
    return root


def _tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def _params(run: dict) -> dict[str, str]:
    return {p["key"]: p["value"] for p in run["data"].get("params", [])}


def _metrics(run: dict) -> dict[str, float]:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


def test_server_runs_match_result_files(server, pipeline_root, monkeypatch):
    server.wait()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.chdir(pipeline_root)
    assert tracking.tracking_uri(pipeline_root) == server.url
    tracking.check_tracking(server.url)

    cells = [tiny_config(pipeline_root, f"distill.method={m}", "distill.ipc=1") for m in METHODS]
    syn_files = [paths.synthetic_file(c) for c in cells]
    eval_files = [paths.evaluation_file(c, "convnet-1-w16") for c in cells]
    summary = paths.tables_dir(cells[0]) / "summary.csv"

    # The random cell is logged evaluation-first: its parent is created from eval["synthetic_file"].
    parent_ids = {syn_files[0]: tracking.log_distillation(EXPERIMENT, syn_files[0])}
    child_ids = {path: tracking.log_evaluation(EXPERIMENT, path) for path in eval_files}
    report_id = tracking.log_report(EXPERIMENT, summary)
    parent_ids[syn_files[1]] = tracking.log_distillation(EXPERIMENT, syn_files[1])

    # Idempotent: logging everything again returns the same runs and creates none.
    assert [tracking.log_distillation(EXPERIMENT, p) for p in syn_files] == [parent_ids[p] for p in syn_files]
    assert [tracking.log_evaluation(EXPERIMENT, p) for p in eval_files] == [child_ids[p] for p in eval_files]
    assert tracking.log_report(EXPERIMENT, summary) == report_id

    runs = {run["info"]["run_id"]: run for run in server.runs(server.experiment_id(EXPERIMENT))}
    assert len(runs) == 5 and set(runs) == {*parent_ids.values(), *child_ids.values(), report_id}
    assert all(run["info"]["status"] == "FINISHED" for run in runs.values())

    for syn_path, eval_path in zip(syn_files, eval_files, strict=True):
        meta = load_synthetic(syn_path).meta
        parent = runs[parent_ids[syn_path]]
        tags, params = _tags(parent), _params(parent)
        assert parent["info"]["run_name"] == f"digits-{meta['method']}-ipc1-seed0"
        assert tags["stage"] == "distill" and tags["method"] == meta["method"]
        assert (tags["dataset"], tags["ipc"], tags["seed"]) == ("digits", "1", "0")
        assert tags["synthetic_sha256"] == sha256_file(syn_path)
        assert tags["data_sha256"] == meta["inputs"]["train_sha256"]
        assert tags["git_commit"] == meta["code"]["git_commit"]
        assert tags["git_dirty"] == str(meta["code"]["git_dirty"])
        for key, value in flatten(meta["config"]).items():
            assert params[key] == tracking._param_value(value), key
        for key, value in flatten(meta["settings"]).items():  # the method's own section too (settings.tgdd.alpha)
            assert params[f"settings.{key}"] == tracking._param_value(value), key
        assert params["distill.method"] == meta["method"]

        with open(syn_path.parent / "losses.csv", newline="") as handle:
            reader = csv.DictReader(handle)
            rows, columns = list(reader), reader.fieldnames
        if meta["method"] == "tgdd":
            assert len(rows) == 4
        assert columns == ["iteration", *METHOD_CARDS.get(meta["method"]).terms]
        for key in METHOD_CARDS.get(meta["method"]).terms:
            history = server.metric_history(parent_ids[syn_path], key)
            assert len(history) == len(rows)
            assert sorted(int(m["step"]) for m in history) == [int(r["iteration"]) for r in rows]
            by_step = {int(m["step"]): m["value"] for m in history}
            for row in rows:
                assert by_step[int(row["iteration"])] == pytest.approx(float(row[key]), rel=1e-9, abs=1e-12)

        result = json.loads(eval_path.read_text())
        child = runs[child_ids[eval_path]]
        tags, params, metrics = _tags(child), _params(child), _metrics(child)
        assert child["info"]["run_name"] == "convnet-1-w16-tgdd"
        assert tags["mlflow.parentRunId"] == parent_ids[syn_path]
        assert tags["stage"] == "evaluate" and tags["arch"] == "convnet-1-w16" and tags["protocol"] == "tgdd"
        assert tags["synthetic_sha256"] == result["synthetic_sha256"] and tags["method"] == result["method"]
        assert metrics["accuracy_mean"] == pytest.approx(result["mean"])
        assert metrics["accuracy_std"] == pytest.approx(result["std"])
        history = server.metric_history(child_ids[eval_path], "accuracy_run")
        assert [m["value"] for m in sorted(history, key=lambda m: int(m["step"]))] == pytest.approx(
            result["accuracies"]
        )
        assert params["epochs"] == str(result["protocol_settings"]["epochs"]) == "2"
        assert params["runs"] == "2" and json.loads(params["seeds"]) == result["seeds"]

    report = runs[report_id]
    assert _tags(report)["stage"] == "report" and _tags(report)["summary_sha256"] == sha256_file(summary)
    artifacts = _http(f"{server.url}/api/2.0/mlflow/artifacts/list?run_id={report_id}")
    assert {"summary.json", "summary.csv"} <= {f["path"] for f in artifacts["files"]}
    artifacts = _http(f"{server.url}/api/2.0/mlflow/artifacts/list?run_id={parent_ids[syn_files[0]]}")
    assert {"grid.png", "losses.csv", "config.yaml"} <= {f["path"] for f in artifacts["files"]}
    assert len(pd.read_csv(summary)) == 2


def test_unreachable_server_fails_fast():
    url = f"http://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    with pytest.raises(TgddError, match=f"MLflow tracking server {url} is unreachable"):
        tracking.check_tracking(url)
    assert time.monotonic() - start < 10


def test_tracking_uri_defaults_to_sqlite_in_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(tmp_path) == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    tracking.check_tracking(tracking.tracking_uri(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example.invalid:5000")
    assert tracking.tracking_uri(tmp_path) == "http://example.invalid:5000"
    with pytest.raises(TgddError, match="does not exist"):
        tracking.check_tracking(f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}")


def _fake_synthetic(root: Path, seed: int) -> Path:
    """A small synthetic set in the real on-disk format (distinct per seed)."""
    cfg = tiny_config(root, "distill.method=dm", "distill.ipc=1", f"seed={seed}")
    images = torch.rand(10, 1, 16, 16, generator=torch.Generator().manual_seed(seed))
    meta = {
        "dataset": "digits",
        "method": "dm",
        "ipc": 1,
        "factor": 1,
        "seed": seed,
        "settings": {"method": "dm", "ipc": 1, "factor": 1},
        "config": config_dict(cfg),
        "inputs": {"train_sha256": "0" * 64},
        "code": {"git_commit": None, "git_dirty": None},
    }
    path = paths.synthetic_file(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / "losses.csv").write_text("iteration,loss,mmd,sdc\n0,1.5,1.0,0.2\n1,1.25,0.75,0.2\n")
    save_grid(path.parent / "grid.png", images, 1)
    save_synthetic(path, SyntheticSet(images, torch.arange(10), 1, meta))
    return path


_WORKER = """
import sys
from pathlib import Path
from tgdd import tracking
print("RUN", tracking.log_distillation(sys.argv[1], Path(sys.argv[2])))
"""


def test_eight_processes_share_one_sqlite_store(tmp_path, monkeypatch):
    """Eight processes log at once to a fresh default store: no run lost, no locking error.

    (Without the file lock this fails: MLflow's schema creation races on an empty database.)"""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    syn_files = [_fake_synthetic(tmp_path, seed) for seed in range(8)]
    env = _child_env()
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, EXPERIMENT, str(path)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for path in syn_files
    ]
    outcomes = [worker.communicate(timeout=240) for worker in workers]
    failures = [err[-2000:] for worker, (_, err) in zip(workers, outcomes, strict=True) if worker.returncode]
    assert not failures, failures
    assert not any("database is locked" in err for _, err in outcomes)
    run_ids = {line.split()[1] for out, _ in outcomes for line in out.splitlines() if line.startswith("RUN ")}
    assert len(run_ids) == 8

    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    client = MlflowClient(tracking_uri=tracking.tracking_uri(tmp_path))
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    assert len(runs) == 8 and {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(int(r.data.tags["seed"]) for r in runs) == list(range(8))
    assert all(len(client.get_metric_history(r.info.run_id, "loss")) == 2 for r in runs)
    assert experiment.artifact_location.startswith((tmp_path / "mlruns").as_uri())
    # Logged again from this process: found, not duplicated.
    assert tracking.log_distillation(EXPERIMENT, syn_files[3]) in run_ids
    assert len(client.search_runs([experiment.experiment_id])) == 8
    # An evaluation whose synthetic set was never logged and is gone: one clear error, no run.
    orphan = tmp_path / "orphan.json"
    orphan.write_text(
        json.dumps(
            {
                "dataset": "digits",
                "method": "dm",
                "ipc": 1,
                "distill_seed": 99,
                "arch": "convnet-1-w16",
                "protocol": "tgdd",
                "synthetic_sha256": "f" * 64,
                "synthetic_file": str(tmp_path / "gone.pt"),
                "mean": 10.0,
                "std": 0.0,
            }
        )
    )
    with pytest.raises(TgddError, match="is gone and was never logged"):
        tracking.log_evaluation(EXPERIMENT, orphan)
    assert len(client.search_runs([experiment.experiment_id], run_view_type=3)) == 8


def test_steps_log_to_the_default_sqlite_store_when_enabled(pipeline_root, tmp_path, monkeypatch):
    """With tracking on, `tgdd distill` / `evaluate` log their runs (here to ./mlflow.db)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    shutil.copytree(pipeline_root / "data", tmp_path / "data")
    shutil.copytree(pipeline_root / "results" / "experts", tmp_path / "results" / "experts")
    cfg = tiny_config(
        tmp_path, "distill.method=random", "distill.ipc=1", "tracking.enabled=true", "tracking.experiment=steps"
    )
    steps.distill(cfg)
    steps.evaluate(cfg)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("steps")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["stage"] for r in runs) == ["distill", "evaluate"]


def test_with_log_steps_false_the_report_logs_every_run(pipeline_root, tmp_path, monkeypatch):
    """tracking.log_steps=false: distill and evaluate never touch MLflow (an unreachable server
    does not stop them); `tgdd report` then logs the distill run, its nested evaluate run and the
    table, once."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(pipeline_root / "data", tmp_path / "data")
    shutil.copytree(pipeline_root / "results" / "experts", tmp_path / "results" / "experts")
    overrides = ("tracking.enabled=true", "tracking.log_steps=false", "tracking.experiment=deferred")
    cfg = tiny_config(tmp_path, "distill.method=random", "distill.ipc=1", *overrides)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")
    steps.distill(cfg)
    steps.evaluate(cfg)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert not (tmp_path / "mlflow.db").exists()

    report_cfg = tiny_config(tmp_path, *overrides)
    steps.report(report_cfg)
    steps.report(report_cfg)  # again: nothing new
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("deferred").experiment_id])
    by_stage = {r.data.tags["stage"]: r for r in runs}
    assert sorted(r.data.tags["stage"] for r in runs) == ["distill", "evaluate", "report"]
    distill_run, evaluate_run = by_stage["distill"], by_stage["evaluate"]
    assert distill_run.data.tags["synthetic_sha256"] == sha256_file(paths.synthetic_file(cfg))
    assert evaluate_run.data.tags["mlflow.parentRunId"] == distill_run.info.run_id
    result = json.loads(paths.evaluation_file(cfg, "convnet-1-w16").read_text())
    assert evaluate_run.data.metrics["accuracy_mean"] == pytest.approx(result["mean"])
    assert len(client.get_metric_history(distill_run.info.run_id, "loss")) == len(
        (paths.synthetic_dir(cfg) / "losses.csv").read_text().splitlines()[1:]
    )

    # An evaluation whose synthetic set is gone and was never logged: a warning, not a failed report.
    orphan = tmp_path / "orphan.json"
    orphan.write_text(
        json.dumps(
            {
                **result,
                "distill_seed": 99,
                "synthetic_sha256": "f" * 64,
                "synthetic_file": str(tmp_path / "gone.pt"),
            }
        )
    )
    summary = paths.tables_dir(report_cfg) / "summary.csv"
    report_id, warnings = tracking.log_results("deferred", [orphan], summary)
    assert report_id == by_stage["report"].info.run_id
    assert len(warnings) == 1 and "gone.pt is gone and was never logged" in warnings[0]
    assert len(client.search_runs([client.get_experiment_by_name("deferred").experiment_id])) == 3


def test_unreachable_server_fails_the_step_before_any_compute(pipeline_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")
    shutil.copytree(pipeline_root / "data", tmp_path / "data")
    cfg = tiny_config(tmp_path, "distill.method=random", "distill.ipc=1", "tracking.enabled=true")
    with pytest.raises(TgddError, match=r"MLflow tracking server http://127.0.0.1:\d+ is unreachable"):
        steps.distill(cfg)
    assert not paths.synthetic_dir(cfg).exists()
