"""`tgdd evaluate`: train fresh networks on a decoded synthetic set and test them on the real
test set, under a named protocol. Reports last-epoch accuracy (no selection on the test set)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from tgdd import paths
from tgdd.artifacts import provenance, read_json, sha256_file, write_json
from tgdd.config import Config, section_settings
from tgdd.data.prepared import PreparedSplit, load_prepared
from tgdd.errors import TgddError
from tgdd.graphs import graph_backend
from tgdd.models import build_model
from tgdd.progress import bar
from tgdd.resolve import protocol_settings, resolved_evaluation
from tgdd.runtime import derive_seed, generator, numpy_rng, seeded_init
from tgdd.stacked import train_stacked, use_stacking
from tgdd.synthetic import SyntheticSet, load_synthetic, synthetic_digest
from tgdd.train import accuracy, train_classifier

log = logging.getLogger(__name__)


def check_inputs(cfg: Config, meta: dict, syn_path: Path) -> None:
    """Refuse a synthetic set distilled from other data or other trajectories than the ones the
    config points at now (their hashes are recorded in the set). An imported set was made from no
    data of ours: its own checks are :func:`tgdd.interchange.check_imported`."""
    if "origin" in meta:
        from tgdd.interchange import check_imported

        check_imported(cfg, meta, syn_path)
        return
    inputs = meta.get("inputs", {})
    manifest = read_json(paths.prepared_dir(cfg) / "manifest.json")
    train_sha = manifest.get("files", {}).get("train.pt", {}).get("sha256")
    if inputs.get("train_sha256") != train_sha:
        raise TgddError(
            f"synthetic set {syn_path} was distilled from other training data than {paths.prepared_dir(cfg)}: redistill it"
        )
    recorded = inputs.get("trajectories_sha256")
    from tgdd.cards import METHODS
    from tgdd.experts import manifest_digest
    from tgdd.resolve import num_trajectories

    card = METHODS.get(cfg.distill.method)
    experts_manifest = paths.experts_dir(cfg, card.expert_recipe) / "manifest.json"
    if recorded is None and card.needs_trajectories:
        raise TgddError(
            f"synthetic set {syn_path} was distilled by an older tgdd (no trajectories digest): redistill it"
        )
    count = num_trajectories(cfg, card.expert_recipe) if card.needs_trajectories else 0
    if (
        recorded is not None
        and experts_manifest.is_file()
        and manifest_digest(read_json(experts_manifest), count) != recorded
    ):
        raise TgddError(
            f"synthetic set {syn_path} was distilled from other trajectories than {experts_manifest.parent}: redistill it"
        )


def load_checked(cfg: Config) -> tuple[Path, SyntheticSet, PreparedSplit]:
    """The synthetic set of ``cfg`` (its path and contents) and the real test split, once the set is
    known to be this cell's, made from the data and trajectories the config points at now: what
    every evaluation of a set (`tgdd evaluate`, `tgdd continual`) starts from."""
    syn_path = paths.synthetic_file(cfg)
    if not syn_path.is_file():
        raise TgddError(f"no synthetic set at {syn_path}: run `tgdd distill` first")
    syn = load_synthetic(syn_path)
    test = load_prepared(paths.prepared_dir(cfg), "test", cfg.dataset)
    meta = syn.meta
    for key, want in (("dataset", cfg.dataset), ("method", cfg.distill.method), ("ipc", cfg.distill.ipc)):
        if meta.get(key) != want:
            raise TgddError(f"synthetic set {syn_path} has {key}={meta.get(key)!r}, config asks for {want!r}")
    check_inputs(cfg, meta, syn_path)
    if meta.get("num_classes") != test.num_classes:
        raise TgddError(f"synthetic set {syn_path} has {meta.get('num_classes')} classes, test set {test.num_classes}")
    return syn_path, syn, test


def evaluate_synthetic(cfg: Config, device: torch.device, progress: bool = True) -> list[Path]:
    """Evaluate the synthetic set of ``cfg`` with every architecture in ``evaluate.archs``."""
    syn_path, syn, test = load_checked(cfg)
    meta = syn.meta
    syn_sha = sha256_file(syn_path)
    syn_content = synthetic_digest(syn)
    images, labels = syn.decoded()
    images, labels = images.to(device), labels.to(device)
    settings = protocol_settings(cfg, images_per_class=cfg.distill.ipc * syn.factor**2)  # = its record
    written = []
    for arch in cfg.evaluate.archs:
        seeds = [derive_seed(cfg.seed, "evaluate", arch, run) for run in range(cfg.evaluate.runs)]
        models = []
        for seed in seeds:
            with seeded_init(seed):
                models.append(build_model(arch, images.shape[1], images.shape[2], test.num_classes).to(device))
        gens = [generator(seed, "batches", device=device) for seed in seeds]
        rngs = [numpy_rng(seed, "cutmix") for seed in seeds]
        stacked = use_stacking(cfg.evaluate.stack_runs, device, models, f"evaluate {arch}", grouped_on_cpu=True)
        graphs = graph_backend(cfg.evaluate.cuda_graphs, device, f"evaluate {arch}") if stacked else None
        if stacked:
            train_stacked(models, images, labels, settings, test.mean, test.std, gens, rngs,
                          progress=f"{arch} {len(seeds)} runs stacked" if progress else None, graphs=graphs)  # fmt: skip
        else:
            for run, (model, gen, rng) in enumerate(
                bar(list(zip(models, gens, rngs, strict=True)), show=progress, desc=f"evaluate {arch}", leave=False)
            ):
                train_classifier(
                    model,
                    images,
                    labels,
                    settings,
                    test.mean,
                    test.std,
                    gen=gen,
                    rng=rng,
                    progress=f"{arch} run {run + 1}/{len(seeds)}" if progress else None,
                )
        accuracies = [100.0 * accuracy(model, test.images, test.labels, test.mean, test.std) for model in models]
        result = {
            "dataset": cfg.dataset,
            "method": cfg.distill.method,
            "ipc": cfg.distill.ipc,
            "factor": syn.factor,
            "arch": arch,
            "protocol": cfg.evaluate.protocol,
            "evaluate": section_settings(cfg, "evaluate", "archs"),
            "protocol_settings": resolved_evaluation(cfg, syn.factor)["protocol_settings"],
            "train_images": len(images),
            "runs": len(accuracies),
            "seeds": seeds,
            "accuracies": accuracies,
            "stacked": stacked,  # runs trained as one stacked training (tgdd.stacked): equal within float rounding
            "cuda_graph_replays": graphs.replays if graphs is not None else 0,  # steps replayed (tgdd.graphs)
            "mean": float(np.mean(accuracies)),
            "std": float(np.std(accuracies)),
            "std_kind": "population (ddof=0) over runs",
            "selection": "last epoch; the test set is never used for selection",
            "synthetic_sha256": syn_sha,
            "synthetic_content_sha256": syn_content,  # what freshness compares (tgdd.synthetic.synthetic_digest)
            "synthetic_file": str(syn_path),
            "test_sha256": test.sha256,
            "distill_seed": cfg.seed,
            **paths.variant_record(cfg),
            "experts_seed": meta.get("inputs", {}).get("experts_seed"),  # None: made without trajectories
            **({"origin": meta["origin"]} if "origin" in meta else {}),  # an imported set's (tgdd.interchange)
            **provenance(str(device)),
        }
        path = paths.evaluation_file(cfg, arch)
        write_json(path, result)
        written.append(path)
    return written
