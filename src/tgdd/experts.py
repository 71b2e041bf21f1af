"""Expert trajectories (SPEC §2): N networks trained on the real data, each kept as its
initial weights plus one snapshot per epoch (E+1 snapshots).

One file per trajectory plus a JSON manifest. Distillation loads every trajectory into
memory once (:func:`load_trajectories`) and never re-reads snapshots per iteration.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from tgdd.artifacts import provenance, read_checked, read_json, sha256_file, torch_load, torch_save, write_json
from tgdd.checkpoint import Checkpointer, StopRequested, stop_on_signals
from tgdd.config import Config, section_settings
from tgdd.data.prepared import PreparedSplit
from tgdd.errors import TgddError
from tgdd.models import build_model
from tgdd.runtime import derive_seed, generator, numpy_rng, seeded_init
from tgdd.train import Resumable, TrainSettings, accuracy, train_classifier

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"

StateDict = dict[str, torch.Tensor]


def expert_settings(cfg: Config) -> TrainSettings:
    """The authors' pretrain.py recipe with the config's values: lr x0.2 after epochs 2E//3 and 5E//6."""
    e = cfg.experts
    return TrainSettings(
        epochs=e.epochs,
        batch_size=e.batch_size,
        lr=e.lr,
        momentum=e.momentum,
        weight_decay=e.weight_decay,
        schedule="idc",
        gamma=0.2,
        augment=e.augment,
        augment_semantics=e.augment_semantics,
        cutmix_prob=e.cutmix_prob,
        cutmix_beta=e.cutmix_beta,
    )


def trajectory_file(out_dir: Path, index: int) -> Path:
    return out_dir / f"trajectory_{index:02d}.pt"


def _snapshot(model: nn.Module) -> StateDict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def expected_identity(cfg: Config, train: PreparedSplit) -> dict:
    """What a trajectory set must match to be used under ``cfg``: its data, and every experts
    setting but how many trajectories and how often to checkpoint (a trajectory trained with
    another learning rate is another trajectory, so `tgdd experts` retrains rather than keeps it)."""
    recipe = section_settings(cfg, "experts", "num_trajectories", "checkpoint_every")
    return {"dataset": cfg.dataset, "num_classes": train.num_classes, "train_sha256": train.sha256, **recipe}


def expert_training_set(cfg: Config, train: PreparedSplit) -> PreparedSplit:
    """The training split, or a seeded class-balanced subset of it (``experts.train_per_class``)."""
    per_class = cfg.experts.train_per_class
    if per_class is None:
        return train
    gen = generator(cfg.seed, "expert-subset")
    keep = []
    for c in range(train.num_classes):
        members = torch.nonzero(train.labels == c).flatten()
        keep.append(members[torch.randperm(len(members), generator=gen)[:per_class]])
    index = torch.sort(torch.cat(keep)).values
    return replace(train, images=train.images[index], labels=train.labels[index])


def train_trajectory(
    cfg: Config,
    index: int,
    train: PreparedSplit,
    test: PreparedSplit,
    device: torch.device,
    checkpointer: Checkpointer | None = None,
) -> tuple[list[StateDict], float]:
    """Train expert ``index`` and return its E+1 snapshots and final test accuracy."""
    channels, size = train.images.shape[1], train.images.shape[2]
    with seeded_init(derive_seed(cfg.seed, "expert-init", index)):
        model = build_model(cfg.experts.arch, channels, size, train.num_classes).to(device)
    snapshots = [_snapshot(model)]
    train = expert_training_set(cfg, train)
    resumable = None
    if checkpointer is not None:
        resumable = Resumable(
            checkpointer,
            save_extra=lambda: {"snapshots": snapshots},
            load_extra=lambda extra: snapshots.__setitem__(slice(None), extra["snapshots"]),
        )
    images = train.as_float().to(device)
    train_classifier(
        model,
        images,
        train.labels.to(device),
        expert_settings(cfg),
        train.mean,
        train.std,
        gen=generator(cfg.seed, "expert-train", index, device=device),
        rng=numpy_rng(cfg.seed, "expert-cutmix", index),
        on_epoch_end=lambda _epoch, m: snapshots.append(_snapshot(m)),
        progress=f"expert {index + 1}/{cfg.experts.num_trajectories}",
        resumable=resumable,
    )
    return snapshots, accuracy(model, test.images, test.labels, test.mean, test.std)


def train_experts(cfg: Config, out_dir: Path, train: PreparedSplit, test: PreparedSplit, device: torch.device) -> Path:
    """Train every missing trajectory (finished ones are kept: a rerun resumes) and write the manifest."""
    identity = expected_identity(cfg, train)
    manifest_path = out_dir / MANIFEST
    done: dict[str, dict] = {}
    if manifest_path.is_file():
        old = read_json(manifest_path)
        if old.get("identity") == identity:
            done = {t["file"]: t for t in old.get("trajectories", [])}
    records = []
    with stop_on_signals() as stop:
        for index in tqdm(range(cfg.experts.num_trajectories), desc="trajectories", leave=False):
            path = trajectory_file(out_dir, index)
            record = done.get(path.name)
            if record and path.is_file() and sha256_file(path) == record["sha256"]:
                records.append(record)
                continue
            records.append(_train_and_save(cfg, index, identity, path, train, test, device, stop))
            write_json(manifest_path, _manifest(cfg, identity, records, device))  # progress survives a kill
    write_json(manifest_path, _manifest(cfg, identity, records, device))
    return manifest_path


def _train_and_save(
    cfg: Config,
    index: int,
    identity: dict,
    path: Path,
    train: PreparedSplit,
    test: PreparedSplit,
    device: torch.device,
    stop: StopRequested,
) -> dict:
    """Train one trajectory (resuming its epoch checkpoint if any), save it, return its record."""
    checkpoint = path.with_suffix(".ckpt.pt")
    ckpt_identity = {**identity, "index": index, "seed": cfg.seed, "experts": cfg.experts.model_dump(mode="json")}
    checkpointer = Checkpointer(checkpoint, cfg.experts.checkpoint_every, ckpt_identity, stop)
    snapshots, test_acc = train_trajectory(cfg, index, train, test, device, checkpointer)
    torch_save(path, {"identity": identity, "index": index, "snapshots": snapshots})
    checkpointer.finish()
    log.info("expert %d: final test accuracy %.2f%%", index, 100 * test_acc)
    return {"file": path.name, "sha256": sha256_file(path), "index": index, "final_test_accuracy": test_acc}


def _manifest(cfg: Config, identity: dict, records: list[dict], device: torch.device) -> dict:
    return {
        "identity": identity,
        "seed": cfg.seed,
        "experts": cfg.experts.model_dump(mode="json"),
        "complete": len(records) == cfg.experts.num_trajectories,
        "trajectories": records,
        **provenance(str(device)),
    }


@dataclass(frozen=True)
class Trajectories:
    """Every trajectory's snapshots, in memory: ``snapshots[i][j]`` is trajectory i after epoch j."""

    snapshots: list[list[StateDict]]
    manifest_sha256: str

    @property
    def epochs(self) -> int:
        return len(self.snapshots[0]) - 1


def load_trajectories(cfg: Config, out_dir: Path, train: PreparedSplit) -> Trajectories:
    """Load and verify the trajectories that ``cfg`` asks for (dataset, arch, epochs, data hash)."""
    manifest_path = out_dir / MANIFEST
    if not manifest_path.is_file():
        raise TgddError(f"no expert trajectories at {out_dir}: run `tgdd experts` first")
    manifest = read_json(manifest_path)
    identity = expected_identity(cfg, train)
    found = manifest.get("identity", {})
    mismatched = [f"{k}: have {found.get(k)!r}, config wants {v!r}" for k, v in identity.items() if found.get(k) != v]
    if mismatched:
        raise TgddError(f"trajectories at {out_dir} do not match the config ({'; '.join(mismatched)})")
    if not manifest.get("complete"):
        raise TgddError(f"trajectories at {out_dir} are incomplete: rerun `tgdd experts` to finish them")
    snapshots = []
    for record in manifest["trajectories"]:
        path = out_dir / record["file"]
        if not path.is_file():
            raise TgddError(f"trajectory file {path} is missing: rerun `tgdd experts`")
        try:
            data = read_checked(path, record["sha256"], "trajectory file")
        except TgddError as exc:
            raise TgddError(f"{exc}: rerun `tgdd experts`") from None
        blob = torch_load(path, "trajectory file", data)
        if len(blob["snapshots"]) != cfg.experts.epochs + 1:
            raise TgddError(
                f"trajectory file {path} has {len(blob['snapshots'])} snapshots, expected {cfg.experts.epochs + 1}"
            )
        snapshots.append(blob["snapshots"])
    return Trajectories(snapshots, sha256_file(manifest_path))
