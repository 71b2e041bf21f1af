"""`tgdd distill`: load inputs, check them, run a method, write the synthetic set."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import torch

from tgdd import paths
from tgdd.artifacts import provenance, write_text
from tgdd.cards import METHODS
from tgdd.checkpoint import Checkpointer, stop_on_signals
from tgdd.config import Config, config_dict
from tgdd.data.prepared import ClassSampler, PreparedSplit, load_prepared
from tgdd.data.registry import get_dataset
from tgdd.efficiency import Meter
from tgdd.errors import TgddError
from tgdd.experts import load_trajectories
from tgdd.methods import DistillContext, load_method
from tgdd.resolve import DistillSettings, resolve_settings
from tgdd.runtime import generator
from tgdd.synthetic import SyntheticSet, images_needed, save_grid, save_synthetic

log = logging.getLogger(__name__)


def check_ipc(settings: DistillSettings, sampler: ClassSampler, num_classes: int) -> None:
    """IPC must fit every class (times f*f real images each for the tiled ``mix`` initialisations)."""
    need = images_needed(settings.init, settings.ipc, settings.factor)
    smallest = min(sampler.class_size(c) for c in range(num_classes))
    if need > smallest:
        raise TgddError(
            f"distill.ipc={settings.ipc} needs {need} real images per class but the smallest class has {smallest}"
        )


def run_distillation(
    cfg: Config, device: torch.device, train: PreparedSplit | None = None, progress: bool = True
) -> Path:
    """Distill the synthetic set that ``cfg`` describes and return its path."""
    spec = get_dataset(cfg.dataset)
    train = train or load_prepared(paths.prepared_dir(cfg), "train", cfg.dataset)
    settings = resolve_settings(cfg, spec)
    sampler = ClassSampler(train, device)
    check_ipc(settings, sampler, train.num_classes)
    method = load_method(settings.method)
    inputs = {"train_sha256": train.sha256}
    trajectories = None
    card = METHODS.get(settings.method)
    if card.needs_trajectories:
        trajectories = load_trajectories(cfg, paths.experts_dir(cfg, card.expert_recipe), train, card.expert_recipe)
        inputs["trajectories_sha256"] = trajectories.content_sha256  # content, not file bytes (tgdd.experts)
        inputs["experts_seed"] = cfg.experts_seed
    identity = {"settings": settings.record(), "inputs": inputs, "seed": cfg.seed, "dataset": cfg.dataset}
    checkpointer = Checkpointer(paths.synthetic_dir(cfg) / "checkpoint.pt", settings.checkpoint_every, identity)
    ctx = DistillContext(
        cfg=cfg,
        settings=settings,
        spec=spec,
        train=train,
        sampler=sampler,
        device=device,
        gen=generator(cfg.seed, "distill", settings.method, settings.ipc, device=device),
        trajectories=trajectories,
        checkpoint=checkpointer,
        progress=progress,
    )
    resumed_at = int((checkpointer.resume_blob or {}).get("iteration", 0))
    meter = Meter(device).start()
    with stop_on_signals() as stop:
        checkpointer.stop = stop
        output = method.run(ctx)
    iterations = settings.iterations - resumed_at if card.optimizes_images else 0  # (selection: no iterations)
    efficiency = meter.record(iterations, checkpointer.write_seconds, checkpointer.clock)
    labels = torch.arange(train.num_classes).repeat_interleave(settings.ipc)
    meta = {
        "dataset": cfg.dataset,
        "method": settings.method,
        "ipc": settings.ipc,
        "factor": settings.factor,
        "seed": cfg.seed,
        **paths.variant_record(cfg),
        "num_classes": train.num_classes,
        "class_names": train.class_names,
        "settings": settings.record(),
        "config": config_dict(cfg),
        "inputs": inputs,
        **({"extra": output.extra} if output.extra else {}),  # what the method learned besides images
        **({"execution": ctx.execution} if ctx.execution else {}),  # how, where the settings left it open
        "efficiency": efficiency,  # a measurement (tgdd.efficiency): never compared by freshness
        **provenance(str(device), timestamp=False),
    }
    out_dir = paths.synthetic_dir(cfg)
    syn_path = paths.synthetic_file(cfg)
    write_text(out_dir / "losses.csv", _records_csv(output.records, METHODS.get(settings.method).terms))
    save_grid(out_dir / "grid.png", output.images.cpu(), settings.ipc)
    save_synthetic(syn_path, SyntheticSet(output.images.cpu(), labels, settings.factor, meta))
    checkpointer.finish()
    return syn_path


def _records_csv(records: list[dict[str, float]], terms: tuple[str, ...]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["iteration", *terms])
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()
