"""The pipeline steps as plain functions of a config: what the CLI, `tgdd pipeline` and the
workflow layers call. Each returns the paths it wrote."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from tgdd import paths
from tgdd.config import Config
from tgdd.errors import TgddError

log = logging.getLogger(__name__)


def _device(cfg: Config):
    from tgdd.runtime import configure_determinism, configure_threads, resolve_device  # torch: only when computing

    configure_threads(cfg.threads)
    configure_determinism(cfg.deterministic)
    return resolve_device(cfg.device)


def prepare(cfg: Config) -> list[Path]:
    from tgdd.data.prepared import prepare_dataset
    from tgdd.data.registry import LoadContext, get_dataset

    spec = get_dataset(cfg.dataset)
    ctx = LoadContext((cfg.data.root, *spec.system_dirs), cfg.data.allow_download)
    out = prepare_dataset(spec, ctx, paths.prepared_dir(cfg))
    return [out / "train.pt", out / "test.pt", out / "manifest.json"]


def experts_recipe(cfg: Config) -> str:
    """The trajectories `tgdd experts` trains by default: those of ``distill.method`` (its card's
    recipe), else TGDD's."""
    from tgdd.cards import METHODS
    from tgdd.config import is_imported_method

    method = cfg.distill.method
    if is_imported_method(method) or not METHODS.get(method).needs_trajectories:
        return "tgdd"
    return METHODS.get(method).expert_recipe


def experts(cfg: Config, index: int | None = None, gather: bool = False, recipe: str | None = None) -> list[Path]:
    """Every trajectory of a recipe and its manifest; with ``index``, that one trajectory only (one
    workflow job); with ``gather``, only the manifest, from the finished trajectory files."""
    from tgdd.experts import gather as gather_manifest
    from tgdd.resolve import EXPERT_RECIPES, num_trajectories

    recipe = recipe or experts_recipe(cfg)
    EXPERT_RECIPES.get(recipe)
    out_dir = paths.experts_dir(cfg, recipe)
    if gather:
        return [gather_manifest(cfg, out_dir, recipe)]
    from tgdd.data.prepared import load_prepared
    from tgdd.experts import train_experts, train_one

    count = num_trajectories(cfg, recipe)
    if index is not None and not 0 <= index < count:
        raise TgddError(f"--index {index}: the {recipe} recipe has {count} trajectories")
    device = _device(cfg)
    train = load_prepared(paths.prepared_dir(cfg), "train", cfg.dataset)
    test = load_prepared(paths.prepared_dir(cfg), "test", cfg.dataset)
    if index is not None:
        return [train_one(cfg, out_dir, index, train, test, device, recipe)]
    return [train_experts(cfg, out_dir, train, test, device, recipe)]


def _logs_steps(cfg: Config) -> bool:
    """Whether distill and evaluate log their own runs (else the report logs them)."""
    return cfg.tracking.enabled and cfg.tracking.log_steps


def _check_tracking(cfg: Config, logs: bool) -> None:
    """Fail fast, before any compute, when the MLflow server this step logs to is unreachable."""
    if logs:
        from tgdd.tracking import check_tracking, tracking_uri

        check_tracking(tracking_uri(Path.cwd()))


def distill(cfg: Config) -> list[Path]:
    from tgdd.distill import run_distillation

    _check_tracking(cfg, _logs_steps(cfg))
    syn_path = run_distillation(cfg, _device(cfg))
    if _logs_steps(cfg):
        from tgdd.tracking import log_distillation

        log_distillation(cfg.tracking.experiment, syn_path)
    return [syn_path]


def evaluate(cfg: Config) -> list[Path]:
    from tgdd.evaluate import evaluate_synthetic

    _check_tracking(cfg, _logs_steps(cfg))
    written = evaluate_synthetic(cfg, _device(cfg))
    if _logs_steps(cfg):
        from tgdd.tracking import log_evaluation

        for path in written:
            log_evaluation(cfg.tracking.experiment, path)
    return written


def continual(cfg: Config) -> list[Path]:
    """The class-incremental evaluation of the cell's synthetic set, one file per ``continual.steps``
    count (:mod:`tgdd.continual`)."""
    from tgdd.continual import continual_synthetic

    return continual_synthetic(cfg, _device(cfg))


def report(cfg: Config) -> list[Path]:
    from tgdd.report import evaluation_files, write_report

    _check_tracking(cfg, cfg.tracking.enabled)
    from tgdd.analysis import analyze

    eval_root = cfg.paths.results / "eval"
    written, markdown = write_report(eval_root, paths.tables_dir(cfg))
    written += analyze(cfg)  # every data set of the matrix, in one table
    from tgdd.report_continual import write_continual_report
    from tgdd.report_efficiency import write_efficiency_report

    written += write_efficiency_report(eval_root, paths.tables_dir(cfg))  # accuracy against seconds and memory
    written += write_continual_report(cfg.paths.results / "continual", paths.tables_dir(cfg))
    print(markdown)
    if cfg.tracking.enabled:
        from tgdd.tracking import log_results

        summary = paths.tables_dir(cfg) / "summary.csv"
        _, warnings = log_results(cfg.tracking.experiment, evaluation_files(eval_root), summary)
        for warning in warnings:
            log.warning("MLflow: %s", warning)
    return written


def import_synthetic(cfg: Config, fmt: str, files: list[Path], **options) -> list[Path]:
    """A synthetic set written by another code base, as the tgdd set of method ``imported-<name>``
    (options: :class:`tgdd.interchange.ImportOptions`)."""
    from tgdd.interchange import ImportOptions, import_synthetic

    return import_synthetic(cfg, fmt, files, ImportOptions(**options))


def export_synthetic(cfg: Config, fmt: str, **options) -> list[Path]:
    """The synthetic set of ``cfg`` in another code base's format (options: ``out_dir``, ``zca``,
    ``mean``, ``std`` of :func:`tgdd.interchange.export_synthetic`)."""
    from tgdd.interchange import export_synthetic

    return export_synthetic(cfg, fmt, **options)


def matrix_configs(cfg: Config) -> list[Config]:
    """One config per (dataset, seed, method, IPC, variant) cell of ``matrix`` (each data set's own
    ``per_dataset`` settings, including its methods and IPCs, applied; each variant's overrides last)."""
    cells = []
    for dataset in cfg.matrix.datasets:
        dataset_cfg = cfg.with_overrides(f"dataset={dataset}")
        m = dataset_cfg.matrix
        variants = [f"variant={name}" for name in m.variants] or [None]
        for seed in m.seeds:
            for method in m.methods:
                for ipc in m.ipcs:
                    for variant in variants:
                        cell = [f"seed={seed}", f"distill.method={method}", f"distill.ipc={ipc}"]
                        cells.append(dataset_cfg.with_overrides(*cell, *([variant] if variant else [])))
    return cells


def plan(cfg: Config) -> list[tuple[str, Config, str]]:
    """The steps ``pipeline`` would run now, in order, each with why: what is missing, and what
    was made under other settings or from inputs that changed since (:mod:`tgdd.freshness`)."""
    from tgdd.cards import METHODS
    from tgdd.freshness import Freshness
    from tgdd.resolve import check_cells

    fresh = Freshness()
    steps_to_run: list[tuple[str, Config, str]] = []
    cells = matrix_configs(cfg)
    check_cells(cells)
    for dataset_cfg in {c.dataset: c for c in cells}.values():
        if not (paths.prepared_dir(dataset_cfg) / "manifest.json").is_file():
            steps_to_run.append(("prepare", dataset_cfg, "missing"))
    experts_cells = {}
    for c in cells:
        card = METHODS.get(c.distill.method)
        if card.needs_trajectories:
            experts_cells.setdefault(paths.experts_dir(c, card.expert_recipe), (c, card.expert_recipe))
    retrained = set()
    for expert_dir, (c, recipe) in experts_cells.items():
        reason = fresh.experts(c, recipe)
        if reason:
            steps_to_run.append(("experts", c.with_overrides(f"distill.method={c.distill.method}"), reason))
            retrained.add(expert_dir)
    for cell in cells:
        card = METHODS.get(cell.distill.method)
        redone = paths.experts_dir(cell, card.expert_recipe) in retrained
        reason = fresh.distill(cell, redone, card.needs_trajectories, card.expert_recipe)
        if reason:
            steps_to_run.append(("distill", cell, reason))
        reasons = {a: fresh.evaluation(cell, a, synthetic_redone=reason is not None) for a in cell.evaluate.archs}
        redo = {a: r for a, r in reasons.items() if r}
        if redo:
            why = "; ".join(dict.fromkeys(redo.values()))
            steps_to_run.append(("evaluate", cell.with_overrides("evaluate.archs=[" + ",".join(redo) + "]"), why))
        if cell.continual.enabled:
            steps_to_run += _continual_plan(fresh, cell, synthetic_redone=reason is not None)
    steps_to_run.append(("report", cfg, "always"))
    return steps_to_run


def _continual_plan(fresh, cell: Config, synthetic_redone: bool) -> list[tuple[str, Config, str]]:
    """The cell's class-incremental evaluations to (re)do, as one step over the step counts that need it."""
    from tgdd.resolve import check_continual

    check_continual(cell)
    reasons = {n: fresh.continual(cell, n, synthetic_redone) for n in cell.continual.steps}
    redo = {n: r for n, r in reasons.items() if r}
    if not redo:
        return []
    why = "; ".join(dict.fromkeys(redo.values()))
    return [("continual", cell.with_overrides("continual.steps=[" + ",".join(map(str, redo)) + "]"), why)]


def describe(step: str, cfg: Config) -> str:
    d = cfg.distill
    if step in ("prepare", "report"):
        return f"{step} {cfg.dataset}" if step == "prepare" else step
    variant = f" variant {cfg.variant}" if cfg.variant is not None else ""
    if step == "experts":
        variant = variant if paths.experts_variant_suffix(cfg) else ""
        return f"experts {cfg.dataset} {experts_recipe(cfg)} {cfg.experts.arch} seed{cfg.experts_seed}{variant}"
    archs = f" on {', '.join(cfg.evaluate.archs)}" if step == "evaluate" else ""
    if step == "continual":
        archs = f" on {cfg.continual.arch} in {', '.join(map(str, cfg.continual.steps))} steps"
    return f"{step} {cfg.dataset} {d.method} ipc{d.ipc} seed{cfg.seed}{variant}{archs}"


def pipeline(cfg: Config, dry_run: bool = False) -> list[Path]:
    """The whole matrix in one process, skipping outputs that exist and are up to date (a rerun
    resumes; a changed setting redoes what depends on it; trajectories and checkpoints of
    interrupted steps are picked up by the steps themselves)."""
    written: list[Path] = []
    if dry_run:
        for step, step_cfg, reason in plan(cfg):
            print(f"would run: {describe(step, step_cfg)} ({reason})")
        return written
    _check_tracking(cfg, cfg.tracking.enabled)
    # Planned again once the data and the experts are made: what they feed is redone only if they
    # came out different (identities are content digests: the same data prepared again, an expert
    # retrained with the same seed, change nothing downstream).
    for upstream in (True, False):
        for step, step_cfg, reason in plan(cfg):
            if (step in UPSTREAM_STEPS) is not upstream:
                continue
            log.info("%s (%s)", describe(step, step_cfg), reason)
            started = time.perf_counter()
            written += MATRIX_STEPS[step](step_cfg)
            log.info("%s: done in %.1f s", describe(step, step_cfg), time.perf_counter() - started)
    return written


# The steps a plan is made of, by name, in their order (`tgdd <step>` runs the same functions).
MATRIX_STEPS: dict[str, Callable[..., list[Path]]] = {
    "prepare": prepare,
    "experts": experts,
    "distill": distill,
    "evaluate": evaluate,
    "continual": continual,
    "report": report,
}
UPSTREAM_STEPS = ("prepare", "experts")
