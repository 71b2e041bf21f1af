"""MLflow tracking of finished artifacts: synthetic sets, evaluations and the summary table.

Tracking only *reads* what the steps wrote (the synthetic set's metadata, ``losses.csv``,
``grid.png``, evaluation JSON files, ``summary.csv``), so it can run right after a step or
much later, and logging the same artifact twice reuses the run it logged the first time.

Layout, per experiment (one per project config, named by the caller, e.g. ``tgdd-<stem>``):

* one **distill** run per synthetic set, ``<dataset>-<method>-ipc<ipc>-seed<seed>``: params
  are the flattened resolved config plus the method's resolved ``settings.*``; metrics are
  the loss curve (every term the method records in ``losses.csv``, e.g. ``loss``, ``mmd``,
  ``sdc``, with the iteration as step); artifacts are
  ``grid.png``, ``losses.csv`` and ``config.yaml``;
* one **evaluate** run per evaluation file, nested under its distill run
  (``mlflow.parentRunId``), ``<arch>-<protocol>``: params are the protocol settings, runs
  and seeds; metrics ``accuracy_mean``, ``accuracy_std`` and ``accuracy_run`` (step = run);
* one **report** run per distinct ``summary.csv`` (table logged with ``log_table``).

Who logs: distill and evaluate log their own run when ``tracking.log_steps`` is true;
:func:`log_results` (called by ``tgdd report``) logs every evaluation the report tabulates that
is not logged yet, then the table, so nothing depends on the steps having logged.

Identity (what makes logging idempotent) is a set of tags searched with a filter string:
dataset, method, ipc, seed and ``synthetic_sha256`` for distill runs; ``eval_sha256`` for
evaluate runs; ``summary_sha256`` for report runs. Only FINISHED runs count, so a run left
behind by a crash is never reused (it is marked FAILED when possible).

Tracking URI: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<cwd>/mlflow.db``.
:func:`check_tracking` is meant to run before any compute; for an HTTP server it makes one
short request to ``/health`` and raises :class:`TgddError` if nothing answers.

Concurrency on SQLite: MLflow's SQL store creates and migrates the schema when it first
opens an empty database, without a lock, so several processes opening a fresh ``mlflow.db``
at once fail ("table ... already exists", "duplicate column name", alembic revision errors;
seen with 8 processes on MLflow 3.17.2). The idempotency check (search, then create) is a
second race. Therefore every logging call on a ``sqlite:`` URI holds an exclusive file lock
(``<db>.lock``, via ``filelock``) from opening the store to finishing the run; the calls are
short (milliseconds to a second), so serialising them costs nothing. Writers outside tgdd
(e.g. ``mlflow ui`` on the same file) can still make SQLite report "database is locked":
such errors are retried with bounded exponential backoff (6 attempts, about 16 s in all).
HTTP servers serialise on their side; no lock is taken for them.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote

import yaml

from tgdd.artifacts import read_json, sha256_file
from tgdd.config import flatten
from tgdd.errors import TgddError

# MLflow 3 sends usage telemetry unless told not to; a reproducibility tool should not phone
# home by default (set MLFLOW_DISABLE_TELEMETRY=false to allow it).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

T = TypeVar("T")

DB_NAME = "mlflow.db"
HEALTH_TIMEOUT_S = 5.0
LOCK_TIMEOUT_S = 600.0
_RETRIES = 6
_BATCH = 1000  # MLflow's limit of metrics per log_batch call
_PARAM_BATCH = 100  # and of params
_PARAM_MAX_CHARS = 6000


def tracking_uri(cwd: Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else an SQLite store ``mlflow.db`` in ``cwd``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        return uri
    return f"sqlite:///{(Path(cwd) / DB_NAME).resolve().as_posix()}"


def _sqlite_path(uri: str) -> Path | None:
    """The database file of an ``sqlite:///`` URI (None for other schemes and in-memory DBs)."""
    if not uri.startswith("sqlite://"):
        return None
    rest = uri.removeprefix("sqlite://").split("?", 1)[0]
    path = unquote(rest[1:])  # sqlite:///rel.db -> rel.db, sqlite:////abs.db -> /abs.db
    if not path or path == ":memory:":
        return None
    return Path(path).resolve()


def check_tracking(uri: str) -> None:
    """Raise :class:`TgddError` now if ``uri`` cannot be logged to (call before any compute)."""
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT_S) as response:
                response.read(64)
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                return  # it answers; credentials are MLflow's business
            raise TgddError(
                f"MLflow tracking server {uri} is unreachable: /health answered HTTP {exc.code} {exc.reason}"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TgddError(f"MLflow tracking server {uri} is unreachable: {reason}") from None
        return
    db = _sqlite_path(uri)
    if db is not None and not db.parent.is_dir():
        raise TgddError(f"MLflow tracking store {uri} is unusable: directory {db.parent} does not exist")


# --------------------------------------------------------------------------- plumbing


def _is_locked_error(exc: BaseException) -> bool:
    return "database is locked" in str(exc).lower()


@contextmanager
def _session(experiment: str) -> Iterator[tuple[MlflowClient, str]]:
    """A client and the experiment id, under the SQLite file lock when the store is SQLite."""
    from filelock import FileLock, Timeout
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = tracking_uri(Path.cwd())
    db = _sqlite_path(uri)
    lock: Any = nullcontext()
    if db is not None:
        # Importing the SQL store takes ~1.5 s of CPU: do it before, not while, holding the lock.
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

        lock = FileLock(str(db) + ".lock", timeout=LOCK_TIMEOUT_S)
    try:
        with lock:
            client = MlflowClient(tracking_uri=uri)
            try:
                yield client, _experiment_id(client, experiment, db)
            except MlflowException as exc:
                if _is_locked_error(exc):
                    raise
                raise TgddError(f"MLflow logging to {uri} failed: {exc.message}") from exc
    except Timeout:
        raise TgddError(f"MLflow store {uri}: lock {db}.lock still held after {LOCK_TIMEOUT_S:.0f} s") from None


def _with_retries(experiment: str, body: Callable[[MlflowClient, str], T]) -> T:
    """Run ``body(client, experiment_id)`` in a session, retrying "database is locked"."""
    delay = 0.5
    for attempt in range(_RETRIES):
        try:
            with _session(experiment) as (client, experiment_id):
                return body(client, experiment_id)
        except Exception as exc:
            if attempt == _RETRIES - 1 or not _is_locked_error(exc):
                raise
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def _experiment_id(client: MlflowClient, name: str, db: Path | None) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage != "active":
            raise TgddError(f"MLflow experiment '{name}' is deleted: restore it or choose another name")
        return found.experiment_id
    location = None
    if db is not None:  # artifacts beside the database, not in whatever the cwd happens to be
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
        location = (db.parent / "mlruns" / safe).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by another process (HTTP stores are not locked)
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _quote(value: Any) -> str:
    text = str(value)
    if "'" in text:
        raise TgddError(f"cannot search MLflow for a tag value with a quote: {text!r}")
    return f"'{text}'"


def _find(client: MlflowClient, experiment_id: str, tags: dict[str, Any]) -> Run | None:
    """The oldest FINISHED run of the experiment carrying all ``tags``."""
    clauses = [f"tags.{key} = {_quote(value)}" for key, value in tags.items()]
    clauses.append("attributes.status = 'FINISHED'")
    runs = client.search_runs(
        [experiment_id], " AND ".join(clauses), max_results=1, order_by=["attributes.start_time ASC"]
    )
    return runs[0] if runs else None


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, list | tuple | dict) else str(value)
    return text[:_PARAM_MAX_CHARS]


def _str_tags(tags: dict[str, Any]) -> dict[str, str]:
    return {key: str(value) for key, value in tags.items() if value is not None}


@contextmanager
def _new_run(client: MlflowClient, experiment_id: str, name: str, tags: dict[str, Any]) -> Iterator[str]:
    """Create a run; FINISHED when the block succeeds, FAILED (never reused) when it raises."""
    run = client.create_run(experiment_id, tags=_str_tags(tags), run_name=name)
    run_id = run.info.run_id
    try:
        yield run_id
    except BaseException:
        with suppress(Exception):  # the store itself may be what failed
            client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")


def _log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(key, _param_value(value)) for key, value in params.items()]
    for start in range(0, len(items), _PARAM_BATCH):
        client.log_batch(run_id, params=items[start : start + _PARAM_BATCH])


def _log_metrics(client: MlflowClient, run_id: str, points: list[tuple[str, float, int]]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(key, value, now, step) for key, value, step in points]
    for start in range(0, len(items), _BATCH):
        client.log_batch(run_id, metrics=items[start : start + _BATCH])


def _loss_points(losses_csv: Path) -> list[tuple[str, float, int]]:
    """``(key, value, iteration)`` for every loss term (each column but ``iteration``) of each row
    of ``losses.csv``: the terms are the method's own (its card's ``terms``)."""
    points = []
    with open(losses_csv, newline="") as handle:
        reader = csv.DictReader(handle)
        terms = [name for name in reader.fieldnames or [] if name != "iteration"]
        for row in reader:
            step = int(float(row["iteration"]))
            for key in terms:
                raw = (row.get(key) or "").strip()
                if raw:
                    value = float(raw)
                    points.append((key, value if math.isfinite(value) else float("nan"), step))
    return points


# --------------------------------------------------------------------------- distill


def _distill_identity(meta: dict[str, Any], synthetic_sha256: str) -> dict[str, Any]:
    return {
        "stage": "distill",
        "dataset": meta["dataset"],
        "method": meta["method"],
        "ipc": meta["ipc"],
        "seed": meta["seed"],
        "synthetic_sha256": synthetic_sha256,
    }


def _log_distillation(client: MlflowClient, experiment_id: str, syn_path: Path) -> str:
    from tgdd.synthetic import load_synthetic

    syn_path = Path(syn_path)
    meta = load_synthetic(syn_path).meta
    try:
        identity = _distill_identity(meta, sha256_file(syn_path))
    except KeyError as exc:
        raise TgddError(f"synthetic set {syn_path} metadata lacks {exc}") from None
    existing = _find(client, experiment_id, identity)
    if existing is not None:
        return existing.info.run_id

    out_dir = syn_path.parent
    code = meta.get("code") or {}
    tags = {
        **identity,
        "git_commit": code.get("git_commit"),
        "git_dirty": code.get("git_dirty"),
        "data_sha256": (meta.get("inputs") or {}).get("train_sha256"),
        "factor": meta.get("factor"),
        "synthetic_file": str(syn_path.resolve()),
        "variant": meta.get("variant"),  # matrix.variants (absent: none)
    }
    params = flatten(meta.get("config") or {})
    params.update({f"settings.{key}": value for key, value in flatten(meta.get("settings") or {}).items()})
    name = f"{meta['dataset']}-{meta['method']}-ipc{meta['ipc']}-seed{meta['seed']}"
    name += f"-{meta['variant']}" if meta.get("variant") else ""
    with _new_run(client, experiment_id, name, tags) as run_id:
        _log_params(client, run_id, params)
        losses = out_dir / "losses.csv"
        if losses.is_file():
            _log_metrics(client, run_id, _loss_points(losses))
            client.log_artifact(run_id, str(losses))
        if (out_dir / "grid.png").is_file():
            client.log_artifact(run_id, str(out_dir / "grid.png"))
        client.log_text(run_id, yaml.safe_dump(meta.get("config") or {}, sort_keys=False), "config.yaml")
    return run_id


def log_distillation(experiment: str, syn_path: Path) -> str:
    """Log the synthetic set at ``syn_path`` (once) and return its run id."""
    return _with_retries(experiment, lambda client, exp_id: _log_distillation(client, exp_id, syn_path))


# --------------------------------------------------------------------------- evaluate


def _log_evaluation(client: MlflowClient, experiment_id: str, eval_path: Path) -> str:
    eval_path = Path(eval_path)
    result = read_json(eval_path)
    eval_sha = sha256_file(eval_path)
    existing = _find(client, experiment_id, {"stage": "evaluate", "eval_sha256": eval_sha})
    if existing is not None:
        return existing.info.run_id
    try:
        identity = {
            "stage": "distill",
            "dataset": result["dataset"],
            "method": result["method"],
            "ipc": result["ipc"],
            "seed": result["distill_seed"],
            "synthetic_sha256": result["synthetic_sha256"],
        }
        arch, protocol = result["arch"], result["protocol"]
    except KeyError as exc:
        raise TgddError(f"evaluation result {eval_path} lacks {exc}") from None

    parent = _find(client, experiment_id, identity)
    if parent is not None:
        parent_id = parent.info.run_id
    else:
        syn_path = Path(result.get("synthetic_file") or "")
        if not syn_path.is_file():
            raise TgddError(f"{eval_path}: its synthetic set {syn_path} is gone and was never logged to MLflow")
        if sha256_file(syn_path) != result["synthetic_sha256"]:
            raise TgddError(f"{eval_path}: synthetic set {syn_path} changed since it was evaluated")
        parent_id = _log_distillation(client, experiment_id, syn_path)

    code = result.get("code") or {}
    tags = {
        **{key: value for key, value in identity.items() if key != "stage"},
        "stage": "evaluate",
        "arch": arch,
        "protocol": protocol,
        "eval_sha256": eval_sha,
        "variant": result.get("variant"),
        "git_commit": code.get("git_commit"),
        "git_dirty": code.get("git_dirty"),
        "mlflow.parentRunId": parent_id,
    }
    params = dict(flatten(result.get("protocol_settings") or {}))
    params.update(runs=result.get("runs"), seeds=result.get("seeds"))
    accuracies = [float(a) for a in result.get("accuracies", [])]
    points = [("accuracy_mean", float(result["mean"]), 0), ("accuracy_std", float(result["std"]), 0)]
    points += [("accuracy_run", accuracy, run) for run, accuracy in enumerate(accuracies)]
    with _new_run(client, experiment_id, f"{arch}-{protocol}", tags) as run_id:
        _log_params(client, run_id, params)
        _log_metrics(client, run_id, points)
        client.log_artifact(run_id, str(eval_path))
    return run_id


def log_evaluation(experiment: str, eval_path: Path) -> str:
    """Log one evaluation JSON (once) as a child of its synthetic set's run; return its run id."""
    return _with_retries(experiment, lambda client, exp_id: _log_evaluation(client, exp_id, eval_path))


# --------------------------------------------------------------------------- report


def _log_report(client: MlflowClient, experiment_id: str, summary_csv: Path) -> str:
    import pandas as pd

    summary_csv = Path(summary_csv)
    if not summary_csv.is_file():
        raise TgddError(f"summary table {summary_csv} does not exist: run `tgdd report` first")
    digest = sha256_file(summary_csv)
    existing = _find(client, experiment_id, {"stage": "report", "summary_sha256": digest})
    if existing is not None:
        return existing.info.run_id
    frame = pd.read_csv(summary_csv)
    tags = {"stage": "report", "summary_sha256": digest, "rows": len(frame)}
    with _new_run(client, experiment_id, "report", tags) as run_id:
        client.log_table(run_id, data=frame, artifact_file="summary.json")
        # every table and figure the report wrote beside the summary (Markdown, class overlap, t-SNE)
        for path in sorted(summary_csv.parent.iterdir()):
            if path.suffix in (".csv", ".md", ".json", ".png") and path.is_file():
                client.log_artifact(run_id, str(path))
    return run_id


def log_report(experiment: str, summary_csv: Path) -> str:
    """Log the summary table (once per distinct content) and return the run id."""
    return _with_retries(experiment, lambda client, exp_id: _log_report(client, exp_id, summary_csv))


def log_results(experiment: str, eval_paths: list[Path], summary_csv: Path) -> tuple[str, list[str]]:
    """What `tgdd report` logs, in one session: every evaluation in ``eval_paths`` (with its
    synthetic set's run) that is not logged yet, then the summary table. Returns the report's run
    id and one warning per evaluation that could not be logged (its synthetic set is gone): those
    still count in the table, so they do not stop the report."""

    def body(client: MlflowClient, experiment_id: str) -> tuple[str, list[str]]:
        warnings = []
        for path in eval_paths:
            try:
                _log_evaluation(client, experiment_id, path)
            except TgddError as exc:
                warnings.append(str(exc))
        return _log_report(client, experiment_id, summary_csv), warnings

    return _with_retries(experiment, body)
