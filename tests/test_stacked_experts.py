"""Expert trajectories trained as one stacked training (experts.stack) equal the separate runs
within float rounding, keep one file and identity each, and checkpoint each trajectory in its
separate run's own format: a stacked group resumes bit-identically as a group, and a stacked
checkpoint resumes a separate run (and the other way round)."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
import torch

from tgdd import paths, steps
from tgdd.checkpoint import Checkpointer, StopRequested
from tgdd.errors import TgddError
from tgdd.experts import load_trajectories
from tgdd.protocols import PROTOCOLS
from tgdd.runtime import generator, numpy_rng, seeded_init
from tgdd.stacked import network_optimizer_state, stacked_optimizer_state, train_stacked
from tgdd.train import Resumable, train_classifier

from .conftest import tiny_config
from .test_stacked import build, tiny_data

EXPERTS = ["experts.num_trajectories=3", "experts.epochs=3", "experts.train_per_class=12"]


def experts_with(root, prepared_root, stack: str) -> list[dict]:
    shutil.copytree(prepared_root / "data", root / "data")
    cfg = tiny_config(root, *EXPERTS, f"experts.stack={stack}")
    steps.experts(cfg)
    folder = paths.experts_dir(cfg)
    return [torch.load(folder / f"trajectory_{i:02d}.pt", weights_only=True) for i in range(3)]


def test_stacked_trajectories_equal_separate_ones_with_their_own_files(prepared_root, tmp_path):
    separate = experts_with(tmp_path / "separate", prepared_root, "never")
    stacked = experts_with(tmp_path / "stacked", prepared_root, "always")
    for one, other in zip(separate, stacked, strict=True):
        assert other["identity"] == one["identity"]  # the same trajectory, however trained
        assert other["stacked_networks"] == 3 and "stacked_networks" not in one
        assert len(other["snapshots"]) == len(one["snapshots"]) == 4
        for got, want in zip(other["snapshots"], one["snapshots"], strict=True):
            for name, value in want.items():
                torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-5)
        assert other["final_test_accuracy"] == pytest.approx(one["final_test_accuracy"], abs=0.02)
    # the trajectories are different experts, and the set loads for distillation
    assert not torch.equal(
        stacked[0]["snapshots"][-1]["classifier.weight"], stacked[1]["snapshots"][-1]["classifier.weight"]
    )
    cfg = tiny_config(tmp_path / "stacked", *EXPERTS, "experts.stack=always")
    assert len(load_trajectories(cfg, paths.experts_dir(cfg), _split(cfg), "tgdd").snapshots) == 3


def _split(cfg):
    from tgdd.data.prepared import load_prepared

    return load_prepared(paths.prepared_dir(cfg), "train", cfg.dataset)


# --- checkpoints: one per network, in the separate run's format -------------------------------------------------

SETTINGS = replace(PROTOCOLS.get("tgdd").train, epochs=4, batch_size=8)  # CutMix, lr steps after epochs 2 and 3


def fresh(k: int):
    models = [build("convnet-2-w8", i, 1, 8) for i in range(k)]
    return models, [generator(i, "b") for i in range(k)], [numpy_rng(i, "c") for i in range(k)]


def resumables(folder, k: int, stop: StopRequested) -> list[Resumable]:
    return [Resumable(Checkpointer(folder / f"net{i}.ckpt.pt", 1, {"net": i}, stop)) for i in range(k)]


def stacked_run(models, gens, rngs, stop_after: int | None = None, folder=None):
    images, labels, _ = tiny_data(1, 8)
    stop = StopRequested()

    def maybe_stop(epoch, _models):
        if epoch == stop_after:
            stop.signal = "SIGTERM"

    resume = resumables(folder, len(models), stop) if folder is not None else None
    return train_stacked(models, images, labels, SETTINGS, torch.full((1,), 0.4), torch.full((1,), 0.3), gens, rngs,
                         on_epoch_end=maybe_stop, resumables=resume)  # fmt: skip


def separate_run(model, gen, rng, resumable=None):
    images, labels, _ = tiny_data(1, 8)
    return train_classifier(model, images, labels, SETTINGS, torch.full((1,), 0.4), torch.full((1,), 0.3), gen, rng,
                            resumable=resumable)  # fmt: skip


def same(a, b) -> bool:
    return all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


def test_a_stopped_stacked_group_resumes_bit_identically(tmp_path):
    uninterrupted = stacked_run(*fresh(3))
    with pytest.raises(TgddError, match="stopped by SIGTERM"):
        stacked_run(*fresh(3), stop_after=2, folder=tmp_path)
    for i in range(3):  # every network's checkpoint was written before the stop
        assert torch.load(tmp_path / f"net{i}.ckpt.pt", weights_only=True)["state"]["epoch"] == 2
    resumed = stacked_run(*fresh(3), folder=tmp_path)
    assert all(same(a, b) for a, b in zip(resumed, uninterrupted, strict=True))


def test_a_stacked_checkpoint_resumes_a_separate_run_and_back(tmp_path):
    separate = [separate_run(*args) for args in zip(*fresh(2), strict=True)]
    with pytest.raises(TgddError):
        stacked_run(*fresh(2), stop_after=2, folder=tmp_path)
    # each network's stacked checkpoint resumes as a separate run (today's loop)
    for i, (model, gen, rng) in enumerate(zip(*fresh(2), strict=True)):
        resumable = Resumable(Checkpointer(tmp_path / f"net{i}.ckpt.pt", 0, {"net": i}))
        assert resumable.checkpointer.resume_blob["epoch"] == 2
        resumed = separate_run(model, gen, rng, resumable)
        for name, value in separate[i].state_dict().items():
            torch.testing.assert_close(resumed.state_dict()[name], value, rtol=1e-4, atol=1e-5)
    # separate runs' checkpoints resume as one stacked group
    back = tmp_path / "back"
    back.mkdir()
    for i, (model, gen, rng) in enumerate(zip(*fresh(2), strict=True)):
        stop = StopRequested()
        checkpointer = Checkpointer(back / f"net{i}.ckpt.pt", 1, {"net": i}, stop)
        images, labels, _ = tiny_data(1, 8)
        with pytest.raises(TgddError):
            train_classifier(model, images, labels, SETTINGS, torch.full((1,), 0.4), torch.full((1,), 0.3), gen, rng,
                             on_epoch_end=lambda e, _m, stop=stop: setattr(stop, "signal", "SIGTERM" if e == 2 else None),
                             resumable=Resumable(checkpointer))  # fmt: skip
    resumed = stacked_run(*fresh(2), folder=back)
    for one, other in zip(separate, resumed, strict=True):
        for name, value in one.state_dict().items():
            torch.testing.assert_close(other.state_dict()[name], value, rtol=1e-4, atol=1e-5)


def test_a_group_resumes_from_one_epoch_only(tmp_path):
    with pytest.raises(TgddError):
        stacked_run(*fresh(2), stop_after=2, folder=tmp_path)
    (tmp_path / "net1.ckpt.pt").unlink()
    with pytest.raises(ValueError, match="one epoch"):
        stacked_run(*fresh(2), folder=tmp_path)


def test_optimizer_state_splits_into_separate_ones_and_back():
    with seeded_init(0):
        params = [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(3))]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    sum(p.square().sum() for p in params).backward()
    optimizer.step()
    stacked = optimizer.state_dict()
    parts = [network_optimizer_state(stacked, k) for k in range(3)]
    assert torch.equal(parts[1]["state"][0]["momentum_buffer"], stacked["state"][0]["momentum_buffer"][1])
    assert parts[2]["param_groups"] == stacked["param_groups"]
    rebuilt = stacked_optimizer_state(parts)
    for index, entry in stacked["state"].items():
        assert torch.equal(rebuilt["state"][index]["momentum_buffer"], entry["momentum_buffer"])
