"""The pipeline steps as plain functions of a config: what the CLI, `tgdd pipeline` and the
workflow layers call. Each returns the paths it wrote."""

from __future__ import annotations

import logging
from pathlib import Path

from tgdd import paths
from tgdd.config import Config
from tgdd.runtime import configure_threads, resolve_device

log = logging.getLogger(__name__)


def _device(cfg: Config):
    configure_threads(cfg.threads)
    return resolve_device(cfg.device)


def prepare(cfg: Config) -> list[Path]:
    from tgdd.data.prepared import prepare_dataset
    from tgdd.data.registry import LoadContext, get_dataset

    spec = get_dataset(cfg.dataset)
    ctx = LoadContext((cfg.data.root, *spec.system_dirs), cfg.data.allow_download)
    out = prepare_dataset(spec, ctx, paths.prepared_dir(cfg))
    return [out / "train.pt", out / "test.pt", out / "manifest.json"]


def experts(cfg: Config) -> list[Path]:
    from tgdd.data.prepared import load_prepared
    from tgdd.experts import train_experts

    device = _device(cfg)
    train = load_prepared(paths.prepared_dir(cfg), "train", cfg.dataset)
    test = load_prepared(paths.prepared_dir(cfg), "test", cfg.dataset)
    return [train_experts(cfg, paths.experts_dir(cfg), train, test, device)]


def distill(cfg: Config) -> list[Path]:
    from tgdd.distill import run_distillation

    return [run_distillation(cfg, _device(cfg))]


def evaluate(cfg: Config) -> list[Path]:
    from tgdd.evaluate import evaluate_synthetic

    return evaluate_synthetic(cfg, _device(cfg))


def report(cfg: Config) -> list[Path]:
    from tgdd.report import write_report

    csv_path, md_path, markdown = write_report(cfg.paths.results / "eval", paths.tables_dir(cfg))
    print(markdown)
    return [csv_path, md_path]


def matrix_configs(cfg: Config) -> list[Config]:
    """One config per (dataset, seed, method, IPC) cell of ``matrix``."""
    cells = []
    m = cfg.matrix
    for dataset in m.datasets:
        for seed in m.seeds:
            for method in m.methods:
                for ipc in m.ipcs:
                    distill_cfg = cfg.distill.model_copy(update={"method": method, "ipc": ipc})
                    cells.append(cfg.model_copy(update={"dataset": dataset, "seed": seed, "distill": distill_cfg}))
    return cells


def pipeline(cfg: Config) -> list[Path]:
    """The whole matrix in one process, skipping outputs that already exist (a rerun resumes)."""
    from tgdd.methods import METHODS

    written: list[Path] = []
    cells = matrix_configs(cfg)
    for dataset_cfg in {(c.dataset): c for c in cells}.values():
        if not (paths.prepared_dir(dataset_cfg) / "manifest.json").is_file():
            written += prepare(dataset_cfg)
    needs_experts = {(c.dataset, c.seed): c for c in cells if METHODS.get(c.distill.method).needs_trajectories}
    for expert_cfg in needs_experts.values():
        written += experts(expert_cfg)  # finished trajectories are kept
    for cell in cells:
        label = f"{cell.dataset} {cell.distill.method} ipc{cell.distill.ipc} seed{cell.seed}"
        if not paths.synthetic_file(cell).is_file():
            log.info("distill %s", label)
            written += distill(cell)
        missing = [a for a in cell.evaluate.archs if not paths.evaluation_file(cell, a).is_file()]
        if missing:
            log.info("evaluate %s on %s", label, ", ".join(missing))
            written += evaluate(
                cell.model_copy(update={"evaluate": cell.evaluate.model_copy(update={"archs": missing})})
            )
    written += report(cfg)
    return written
