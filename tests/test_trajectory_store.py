"""The trajectory store: files loaded when first used, checked before the run, and bounded on request
(MTT holds one buffer file's experts, as its authors' code; docs/fidelity.md, MTT)."""

from __future__ import annotations

import json
import random
import shutil
from collections import OrderedDict

import pytest
import torch

from tgdd import paths, steps
from tgdd.artifacts import sha256_file, torch_save
from tgdd.data.prepared import load_prepared
from tgdd.errors import TgddError
from tgdd.experts import Trajectories, TrajectoryStore, load_trajectories

from .conftest import tiny_config

EPOCHS = 2


def _snapshot(i: int, j: int) -> dict[str, torch.Tensor]:
    return {"w": torch.full((3,), float(10 * i + j)), "b": torch.tensor([float(i - j)])}


def _files(tmp_path, count: int = 5):
    files = []
    for i in range(count):
        files.append(
            torch_save(tmp_path / f"trajectory_{i:02d}.pt", {"snapshots": [_snapshot(i, j) for j in range(EPOCHS + 1)]})
        )
    return files


def _lru(accesses: list[int], limit: int | None) -> tuple[int, int, list[int]]:
    """Loads, peak held and what is held last, for a least-recently-used cache written out."""
    held: OrderedDict[int, None] = OrderedDict()
    loads = peak = 0
    for i in accesses:
        if i in held:
            held.move_to_end(i)
            continue
        while limit is not None and held and len(held) + 1 > limit:
            held.popitem(last=False)
        held[i] = None
        loads += 1
        peak = max(peak, len(held))
    return loads, peak, list(held)


def test_nothing_is_read_until_used_and_every_trajectory_is_then_kept(tmp_path):
    store = TrajectoryStore(_files(tmp_path), EPOCHS)
    assert (len(store), store.epochs, store.loads, store.held) == (5, EPOCHS, 0, [])
    first = store[3]
    assert [torch.equal(first[j]["w"], _snapshot(3, j)["w"]) for j in range(EPOCHS + 1)] == [True] * 3
    assert store[3] is first and store.loads == 1  # held: not read again
    for i in range(5):
        assert torch.equal(store[i][EPOCHS]["b"], _snapshot(i, EPOCHS)["b"])
    assert store.loads == 5 and store.held == [0, 1, 2, 3, 4]  # least recently used first
    assert torch.equal(store[-1][0]["w"], _snapshot(4, 0)["w"])
    assert len(store[1:3]) == 2
    with pytest.raises(IndexError):
        store[5]


@pytest.mark.parametrize("limit", [1, 2, 3, None])
def test_a_bound_is_a_least_recently_used_cache_and_never_exceeded(tmp_path, limit):
    store = TrajectoryStore(_files(tmp_path), EPOCHS)
    store.keep_at_most(limit)
    rng = random.Random(7)
    accesses = [rng.randrange(5) for _ in range(60)]
    for i in accesses:
        got = store[i]
        assert torch.equal(got[1]["w"], _snapshot(i, 1)["w"])  # a reloaded trajectory is the file's
        assert limit is None or len(store.held) <= limit
    assert (store.loads, store.peak_held, store.held) == _lru(accesses, limit)


def test_bounding_later_drops_the_oldest_and_a_bound_below_one_is_refused(tmp_path):
    store = TrajectoryStore(_files(tmp_path), EPOCHS)
    for i in (0, 1, 2, 3):
        store[i]
    store.keep_at_most(2)
    assert store.held == [2, 3]
    with pytest.raises(ValueError, match="at least 1"):
        store.keep_at_most(0)


def test_a_file_changed_or_removed_during_the_run_is_a_clear_error(tmp_path):
    files = _files(tmp_path, 2)
    store = TrajectoryStore(files, EPOCHS)
    torch_save(files[1], {"snapshots": [_snapshot(9, j) for j in range(EPOCHS + 1)]})  # other weights, same name
    with pytest.raises(TgddError, match=r"trajectory_01.pt changed during the run: rerun `tgdd experts`"):
        store[1]
    files[0].unlink()
    with pytest.raises(TgddError, match=r"trajectory_00.pt changed during the run"):
        store[0]


def test_list_trajectories_ignore_a_bound():
    runs = [[_snapshot(i, j) for j in range(EPOCHS + 1)] for i in range(2)]
    trajectories = Trajectories(runs, "fake")
    trajectories.keep_at_most(1)
    assert trajectories.epochs == EPOCHS and trajectories.snapshots is runs


def test_load_checks_every_file_first_and_reads_none(tmp_path, prepared_root):
    shutil.copytree(prepared_root / "data", tmp_path / "data")
    cfg = tiny_config(tmp_path)
    steps.experts(cfg)
    train = load_prepared(paths.prepared_dir(cfg), "train", cfg.dataset)
    trajectories = load_trajectories(cfg, paths.experts_dir(cfg), train)
    store = trajectories.snapshots
    assert isinstance(store, TrajectoryStore) and store.loads == 0
    assert trajectories.epochs == cfg.experts.epochs and len(store) == cfg.experts.num_trajectories
    blob = torch.load(paths.experts_dir(cfg) / "trajectory_01.pt", weights_only=True)
    assert all(torch.equal(store[1][-1][k], v) for k, v in blob["snapshots"][-1].items())
    # a file with another snapshot count (its checksum recorded anew) is refused before any run
    short = {**blob, "snapshots": blob["snapshots"][:-1]}
    torch_save(paths.experts_dir(cfg) / "trajectory_01.pt", short)
    manifest_path = paths.experts_dir(cfg) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["trajectories"][1]["sha256"] = sha256_file(paths.experts_dir(cfg) / "trajectory_01.pt")
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(TgddError, match=rf"trajectory_01.pt has {cfg.experts.epochs} snapshots, expected"):
        load_trajectories(cfg, paths.experts_dir(cfg), train)
