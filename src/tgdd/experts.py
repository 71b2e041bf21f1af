"""Expert trajectories (SPEC §2): N networks trained on the real data, each kept as its
initial weights plus one snapshot per epoch (E+1 snapshots).

One file per trajectory, each carrying its identity (data, resolved recipe, index, seed), so any
route (`tgdd experts`, one Snakemake job per trajectory, `tgdd pipeline`) recognises a finished
one and never retrains it; a small gather step writes the JSON manifest from the files.
Distillation checks every file up front (:func:`load_trajectories`), then loads each trajectory once,
when first used, and keeps it (never re-reading snapshots per iteration), unless the method bounds how
many it holds (:meth:`TrajectoryStore.keep_at_most`: MTT holds one buffer file's experts, as its authors' code).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tgdd.artifacts import content_digest, provenance, read_json, sha256_file, torch_load, torch_save, write_record
from tgdd.checkpoint import Checkpointer, stop_on_signals
from tgdd.config import Config
from tgdd.data.prepared import PreparedSplit
from tgdd.errors import TgddError
from tgdd.graphs import graph_backend
from tgdd.models import build_model
from tgdd.progress import bar
from tgdd.resolve import EXPERT_RECIPES, expert_recipe, expert_settings, num_trajectories
from tgdd.runtime import derive_seed, generator, numpy_rng, seeded_init
from tgdd.stacked import train_stacked, use_stacking
from tgdd.train import Resumable, accuracy, train_classifier

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"

StateDict = dict[str, torch.Tensor]


def trajectory_file(out_dir: Path, index: int) -> Path:
    return out_dir / trajectory_name(index)


def trajectory_name(index: int) -> str:
    return f"trajectory_{index:02d}.pt"


def _snapshot(model: nn.Module) -> StateDict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def expected_identity(cfg: Config, train_sha256: str, recipe: str = "tgdd") -> dict:
    """What every trajectory of ``cfg`` must match to be used: its data and its resolved recipe
    (:func:`tgdd.resolve.expert_recipe`; a trajectory trained with another learning rate or
    schedule is another trajectory, so it is retrained rather than kept). Each trajectory adds its
    index and seed."""
    return {"dataset": cfg.dataset, "train_sha256": train_sha256, "recipe": expert_recipe(cfg, recipe)}


def trajectory_identity(cfg: Config, train_sha256: str, index: int, recipe: str = "tgdd") -> dict:
    """A trajectory's identity: the set's, its index and the experts' seed (``experts.seed``, shared
    by every distillation seed unless it is null)."""
    return {**expected_identity(cfg, train_sha256, recipe), "index": index, "seed": cfg.experts_seed}


def trajectories_digest(identity: dict, content_sha256: Sequence[str]) -> str:
    """What a distillation from a set of trajectories records as its input: the set's identity and
    each trajectory's content digest, in order. Not the manifest's file hash: retraining a trajectory
    with the same seed (same snapshots) or under another code version changes nothing downstream."""
    return content_digest({"identity": identity, "trajectories": list(content_sha256)})


def prepared_train_sha256(cfg: Config) -> str:
    """The training split's hash from its prepared manifest (checked against the file on load)."""
    from tgdd import paths

    manifest = paths.prepared_dir(cfg) / "manifest.json"
    if not manifest.is_file():
        raise TgddError(f"no prepared data for '{cfg.dataset}' at {manifest.parent}: run `tgdd prepare` first")
    return read_json(manifest)["files"]["train.pt"]["sha256"]


def trajectory_header(path: Path) -> dict | None:
    """A trajectory file's identity and final accuracy, read without loading its snapshots (None:
    missing, unreadable or written by an older tgdd)."""
    if not path.is_file():
        return None
    try:
        blob = torch_load(path, "trajectory file", mmap=True)
    except TgddError:
        return None
    if not isinstance(blob, dict) or not isinstance(blob.get("identity"), dict):
        return None
    return {
        "identity": blob["identity"],
        "final_test_accuracy": blob.get("final_test_accuracy"),
        "content_sha256": blob.get("content_sha256"),
    }


def finished(cfg: Config, path: Path, train_sha256: str, index: int, recipe: str = "tgdd") -> bool:
    """Whether ``path`` holds trajectory ``index`` of ``cfg`` (its identity says so)."""
    header = trajectory_header(path)
    return header is not None and header["identity"] == trajectory_identity(cfg, train_sha256, index, recipe)


def expert_training_set(cfg: Config, train: PreparedSplit) -> PreparedSplit:
    """The training split, or a seeded class-balanced subset of it (``experts.train_per_class``)."""
    per_class = cfg.experts.train_per_class
    if per_class is None:
        return train
    gen = generator(cfg.experts_seed, "expert-subset")
    keep = []
    for c in range(train.num_classes):
        members = torch.nonzero(train.labels == c).flatten()
        keep.append(members[torch.randperm(len(members), generator=gen)[:per_class]])
    index = torch.sort(torch.cat(keep)).values
    return replace(train, images=train.images[index], labels=train.labels[index])


@dataclass
class ExpertRun:
    """One expert before training: its network (seeded initialisation), its random streams and
    its snapshots so far (the initial weights)."""

    index: int
    model: nn.Module
    gen: torch.Generator
    rng: np.random.Generator
    snapshots: list[StateDict]

    def resumable(self, checkpointer: Checkpointer) -> Resumable:
        """Per-epoch checkpoints of this run, carrying its snapshots so far."""
        return Resumable(
            checkpointer,
            save_extra=lambda: {"snapshots": self.snapshots},
            load_extra=lambda extra: self.snapshots.__setitem__(slice(None), extra["snapshots"]),
        )


def expert_run(cfg: Config, index: int, train: PreparedSplit, device: torch.device, recipe: str = "tgdd") -> ExpertRun:
    """Expert ``index`` of ``recipe``: its network and streams, each derived from the experts seed,
    the recipe's stream prefix and the index alone (so any route draws the same ones)."""
    channels, size = train.images.shape[1], train.images.shape[2]
    prefix = EXPERT_RECIPES.get(recipe).stream
    stream = (lambda name: f"{prefix}-{name}") if prefix else (lambda name: name)
    seed = cfg.experts_seed
    with seeded_init(derive_seed(seed, stream("expert-init"), index)):
        model = build_model(cfg.experts.arch, channels, size, train.num_classes).to(device)
    gen = generator(seed, stream("expert-train"), index, device=device)
    return ExpertRun(index, model, gen, numpy_rng(seed, stream("expert-cutmix"), index), [_snapshot(model)])


def train_trajectory(
    cfg: Config,
    index: int,
    train: PreparedSplit,
    test: PreparedSplit,
    device: torch.device,
    checkpointer: Checkpointer | None = None,
    recipe: str = "tgdd",
) -> tuple[list[StateDict], float]:
    """Train expert ``index`` of ``recipe`` and return its E+1 snapshots and final test accuracy."""
    run = expert_run(cfg, index, train, device, recipe)
    train = expert_training_set(cfg, train)
    train_classifier(
        run.model,
        train.as_float().to(device),
        train.labels.to(device),
        expert_settings(cfg, recipe),
        train.mean,
        train.std,
        gen=run.gen,
        rng=run.rng,
        on_epoch_end=lambda _epoch, m: run.snapshots.append(_snapshot(m)),
        progress=f"{recipe} expert {index + 1}/{num_trajectories(cfg, recipe)}",
        resumable=run.resumable(checkpointer) if checkpointer is not None else None,
    )
    return run.snapshots, accuracy(run.model, test.images, test.labels, test.mean, test.std)


def _write_trajectory(
    path: Path, identity: dict, index: int, snapshots: list[StateDict], test_acc: float, device: torch.device, **how
) -> None:
    """The trajectory file: identity, snapshots, content digest, final test accuracy (``how``: how
    it was trained, where that is not the default one network at a time)."""
    torch_save(
        path,
        {
            "identity": identity,
            "index": index,
            "final_test_accuracy": test_acc,
            "content_sha256": content_digest({"identity": identity, "snapshots": snapshots}),
            "snapshots": snapshots,
            **how,
            **provenance(str(device), timestamp=False),
        },
    )
    log.info("expert %d: final test accuracy %.2f%%", index, 100 * test_acc)


def train_one(
    cfg: Config,
    out_dir: Path,
    index: int,
    train: PreparedSplit,
    test: PreparedSplit,
    device: torch.device,
    recipe: str = "tgdd",
) -> Path:
    """Trajectory ``index`` of ``cfg``: kept if finished, else trained (resuming its epoch
    checkpoint) and written with its identity. Training reads nothing but the data: the
    trajectories of one set can run as separate jobs, in any order, at once."""
    path = trajectory_file(out_dir, index)
    if finished(cfg, path, train.sha256, index, recipe):
        log.info("expert %d: up to date (%s)", index, path)
        return path
    identity = trajectory_identity(cfg, train.sha256, index, recipe)
    with stop_on_signals() as stop:
        checkpointer = Checkpointer(path.with_suffix(".ckpt.pt"), cfg.experts.checkpoint_every, identity, stop)
        snapshots, test_acc = train_trajectory(cfg, index, train, test, device, checkpointer, recipe)
    _write_trajectory(path, identity, index, snapshots, test_acc, device)
    checkpointer.finish()
    return path


def train_group(
    cfg: Config,
    out_dir: Path,
    indices: Sequence[int],
    train: PreparedSplit,
    test: PreparedSplit,
    device: torch.device,
    recipe: str = "tgdd",
) -> list[Path]:
    """Trajectories ``indices`` of ``cfg`` as one stacked training (:func:`tgdd.stacked.train_stacked`),
    each written to its own file with its own identity, each checkpointed in its own file in the
    format of a separate run: an interrupted group resumes as a group, or each trajectory alone
    (``tgdd experts --index``). Members whose checkpoint is at another epoch than the most common
    start train alone first."""
    settings = expert_settings(cfg, recipe)
    paths_ = {index: trajectory_file(out_dir, index) for index in indices}
    identities = {index: trajectory_identity(cfg, train.sha256, index, recipe) for index in indices}
    with stop_on_signals() as stop:
        checkpointers = {
            i: Checkpointer(paths_[i].with_suffix(".ckpt.pt"), cfg.experts.checkpoint_every, identities[i], stop)
            for i in indices
        }
        starts = {i: (c.resume_blob or {}).get("epoch", 0) for i, c in checkpointers.items()}
        common = max(set(starts.values()), key=lambda e: (list(starts.values()).count(e), -e))
        group = [i for i in indices if starts[i] == common]
        for index in (i for i in indices if starts[i] != common):
            snapshots, test_acc = train_trajectory(cfg, index, train, test, device, checkpointers[index], recipe)
            _write_trajectory(paths_[index], identities[index], index, snapshots, test_acc, device)
            checkpointers[index].finish()
        if len(group) == 1:
            snapshots, test_acc = train_trajectory(cfg, group[0], train, test, device, checkpointers[group[0]], recipe)
            results = [(snapshots, test_acc, {})]
        else:
            runs = [expert_run(cfg, index, train, device, recipe) for index in group]
            subset = expert_training_set(cfg, train)
            graphs = graph_backend(cfg.experts.cuda_graphs, device, f"{recipe} experts")
            train_stacked(
                [run.model for run in runs],
                subset.as_float().to(device),
                subset.labels.to(device),
                settings,
                subset.mean,
                subset.std,
                [run.gen for run in runs],
                [run.rng for run in runs],
                progress=f"{recipe} experts {', '.join(str(i + 1) for i in group)} stacked",
                on_epoch_end=lambda _epoch, models: [
                    run.snapshots.append(_snapshot(model)) for run, model in zip(runs, models, strict=True)
                ],
                resumables=[run.resumable(checkpointers[run.index]) for run in runs],
                graphs=graphs,
            )
            how = {  # trained with K-1 others as one stacked training; steps replayed from CUDA graphs
                "stacked_networks": len(runs),
                "cuda_graph_replays": graphs.replays if graphs is not None else 0,
            }
            results = [
                (run.snapshots, accuracy(run.model, test.images, test.labels, test.mean, test.std), how) for run in runs
            ]
    for index, (snapshots, test_acc, how) in zip(group, results, strict=True):
        _write_trajectory(paths_[index], identities[index], index, snapshots, test_acc, device, **how)
        checkpointers[index].finish()
    return [paths_[index] for index in indices]


def gather(cfg: Config, out_dir: Path, recipe: str = "tgdd") -> Path:
    """Write the manifest of the trajectories of ``recipe`` under ``cfg`` from their files (each
    must be finished: its identity matches), with each file's SHA-256."""
    train_sha256 = prepared_train_sha256(cfg)
    records = []
    for index in range(num_trajectories(cfg, recipe)):
        path = trajectory_file(out_dir, index)
        header = trajectory_header(path)
        if header is None or header["identity"] != trajectory_identity(cfg, train_sha256, index, recipe):
            why = "missing" if header is None else "trained under other settings or data"
            again = f"tgdd experts --recipe {recipe} --index {index}"
            raise TgddError(f"trajectory {path} is {why}: run `tgdd experts --recipe {recipe}` (or `{again}`)")
        content = header["content_sha256"] or _content_of(path)  # None: written by an older tgdd
        record = {"file": path.name, "sha256": sha256_file(path), "index": index}
        records.append({**record, "content_sha256": content, "final_test_accuracy": header["final_test_accuracy"]})
    identity = expected_identity(cfg, train_sha256, recipe)
    manifest = {
        "identity": identity,
        "recipe": recipe,
        "seed": cfg.experts_seed,
        "experts": cfg.experts.model_dump(mode="json", exclude={"stack", "cuda_graphs"}),  # how, not what
        "complete": True,
        "trajectories": records,
        "trajectories_sha256": trajectories_digest(identity, [r["content_sha256"] for r in records]),
        **provenance("cpu", timestamp=False),
    }
    return write_record(out_dir / MANIFEST, manifest)


def _content_of(path: Path) -> str:
    """The content digest of a trajectory file written before files carried one (its snapshots
    read once): finished trajectories of an older tgdd are gathered, not retrained."""
    blob = torch_load(path, "trajectory file")
    return content_digest({"identity": blob["identity"], "snapshots": blob["snapshots"]})


def manifest_digest(manifest: dict, count: int) -> str | None:
    """:func:`trajectories_digest` of the first ``count`` trajectories a manifest lists (None: an
    incomplete manifest, or one gathered by an older tgdd, without content digests)."""
    records = (manifest.get("trajectories") or [])[:count]
    if len(records) < count or any("content_sha256" not in r for r in records):
        return None
    return trajectories_digest(manifest.get("identity") or {}, [r["content_sha256"] for r in records])


def train_experts(
    cfg: Config, out_dir: Path, train: PreparedSplit, test: PreparedSplit, device: torch.device, recipe: str = "tgdd"
) -> Path:
    """Every trajectory of ``recipe`` (finished ones are kept, an interrupted one resumes), then the manifest."""
    missing = [
        index
        for index in range(num_trajectories(cfg, recipe))
        if not finished(cfg, trajectory_file(out_dir, index), train.sha256, index, recipe)
    ]
    with seeded_init(0):  # a network to ask whether the architecture stacks (no global RNG drawn)
        probe = build_model(cfg.experts.arch, train.images.shape[1], train.images.shape[2], train.num_classes)
    stack = use_stacking(cfg.experts.stack, device, [probe] * len(missing), f"{recipe} experts")
    if stack and expert_settings(cfg, recipe).sharpness is not None:  # GSAM's norms are per network
        log.warning("%s experts: trained one after another, not stacked: their GSAM steps do not stack", recipe)
        stack = False
    if stack:
        train_group(cfg, out_dir, missing, train, test, device, recipe)
    else:
        for index in bar(range(num_trajectories(cfg, recipe)), desc=f"{recipe} trajectories", leave=False):
            train_one(cfg, out_dir, index, train, test, device, recipe)
    return gather(cfg, out_dir, recipe)


class TrajectoryStore(Sequence):
    """Trajectory files, each loaded when first indexed (``store[i][j]``: trajectory i after epoch j).

    Holds every loaded trajectory unless :meth:`keep_at_most` bounds it; then the least recently used
    one is dropped before another is loaded, so at most that many are ever in memory. A file whose size
    or modification time differs from when the store was made is an error, not silently other weights
    (its SHA-256 is checked once, by :func:`load_trajectories`, not on every reload).
    Hand-written because ``functools.lru_cache`` cannot be bounded after creation nor report what it holds.
    """

    def __init__(self, files: Sequence[Path], epochs: int) -> None:
        self._files, self._epochs = [Path(f) for f in files], epochs
        self._stats = [_signature(f) for f in self._files]
        self._held: OrderedDict[int, list[StateDict]] = OrderedDict()
        self._limit: int | None = None
        self.loads = 0  # files read so far (what a bound costs in reading)
        self.peak_held = 0  # the most trajectories held at once

    def __len__(self) -> int:
        return len(self._files)

    @property
    def epochs(self) -> int:
        return self._epochs

    @property
    def held(self) -> list[int]:
        """Indices of the trajectories in memory, least recently used first."""
        return list(self._held)

    def keep_at_most(self, count: int | None) -> None:
        """Hold at most ``count`` trajectories from now on (None: every one loaded)."""
        if count is not None and count < 1:
            raise ValueError(f"keep_at_most needs a count of at least 1, got {count}")
        self._limit = count
        self._evict(0)

    def __getitem__(self, index):  # Sequence's int-or-slice signature
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = range(len(self))[index]  # negative indices, IndexError as for a list
        if index in self._held:
            self._held.move_to_end(index)
            return self._held[index]
        self._evict(1)
        snapshots = self._read(index)
        self._held[index] = snapshots
        self.loads += 1
        self.peak_held = max(self.peak_held, len(self._held))
        return snapshots

    def _evict(self, room: int) -> None:
        while self._limit is not None and self._held and len(self._held) + room > self._limit:
            self._held.popitem(last=False)

    def _read(self, index: int) -> list[StateDict]:
        path = self._files[index]
        if _signature(path) != self._stats[index]:
            raise TgddError(f"trajectory file {path} changed during the run: rerun `tgdd experts`, then this step")
        try:
            snapshots = torch_load(path, "trajectory file")["snapshots"]
        except TgddError as exc:
            raise TgddError(f"{exc}: rerun `tgdd experts`") from None
        _check_length(path, len(snapshots), self._epochs)
        return snapshots


def _signature(path: Path) -> tuple[int, int] | None:
    """(size, mtime in ns) of a file, None if it is gone."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


@dataclass(frozen=True)
class Trajectories:
    """Every trajectory's snapshots: ``snapshots[i][j]`` is trajectory i after epoch j (a
    :class:`TrajectoryStore` from :func:`load_trajectories`, or plain lists in memory)."""

    snapshots: Sequence[list[StateDict]]
    content_sha256: str  # :func:`trajectories_digest`: what a distillation from them records

    @property
    def epochs(self) -> int:
        """Epochs per trajectory (E: each has E+1 snapshots); a store knows it without loading one."""
        if isinstance(self.snapshots, TrajectoryStore):
            return self.snapshots.epochs
        return len(self.snapshots[0]) - 1

    def keep_at_most(self, count: int | None) -> None:
        """Bound the trajectories held in memory (a no-op for trajectories given as lists)."""
        if isinstance(self.snapshots, TrajectoryStore):
            self.snapshots.keep_at_most(count)


def _check_length(path: Path, snapshots: int, epochs: int) -> None:
    if snapshots != epochs + 1:
        raise TgddError(f"trajectory file {path} has {snapshots} snapshots, expected {epochs + 1}")


def load_trajectories(cfg: Config, out_dir: Path, train: PreparedSplit, recipe: str = "tgdd") -> Trajectories:
    """The trajectories of ``recipe`` that ``cfg`` asks for (data, resolved recipe), every file checked
    now (present, its SHA-256, its snapshot count), so a bad one stops the run before it starts; each is
    loaded when the method first uses it (:class:`TrajectoryStore`)."""
    manifest_path = out_dir / MANIFEST
    if not manifest_path.is_file():
        raise TgddError(f"no expert trajectories at {out_dir}: run `tgdd experts` first")
    manifest = read_json(manifest_path)
    identity = expected_identity(cfg, train.sha256, recipe)
    found = _flat(manifest.get("identity", {}))
    mismatched = [
        f"{k}: have {found.get(k)!r}, config wants {v!r}" for k, v in _flat(identity).items() if found.get(k) != v
    ]
    if mismatched:
        raise TgddError(f"trajectories at {out_dir} do not match the config ({'; '.join(mismatched)})")
    count = num_trajectories(cfg, recipe)
    if not manifest.get("complete") or len(manifest.get("trajectories", [])) < count:
        raise TgddError(f"trajectories at {out_dir} are incomplete: rerun `tgdd experts` to finish them")
    epochs = expert_settings(cfg, recipe).trained_epochs()
    records = manifest["trajectories"][:count]
    digest = manifest_digest(manifest, count)
    if digest is None:
        raise TgddError(f"trajectories at {out_dir} were gathered by an older tgdd: rerun `tgdd experts`")
    store = TrajectoryStore([out_dir / r["file"] for r in records], epochs)  # size and mtime seen before the hash
    for record in records:
        path = out_dir / record["file"]
        if not path.is_file():
            raise TgddError(f"trajectory file {path} is missing: rerun `tgdd experts`")
        if sha256_file(path) != record["sha256"]:
            raise TgddError(f"trajectory file {path} fails its checksum (truncated or changed): rerun `tgdd experts`")
        try:
            blob = torch_load(path, "trajectory file", mmap=True)  # the snapshot count, without reading them
        except TgddError as exc:
            raise TgddError(f"{exc}: rerun `tgdd experts`") from None
        _check_length(path, len(blob["snapshots"]), epochs)
    return Trajectories(store, digest)


def _flat(identity: dict) -> dict:
    """``{"recipe": {"lr": 0.01}}`` -> ``{"recipe.lr": 0.01}`` (mismatch messages name the key)."""
    from tgdd.config import flatten

    return flatten(identity)
