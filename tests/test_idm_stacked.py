"""IDM's fetched queue networks trained as one stacked training (``distill.idm.stack_nets``) against
the same networks trained one after another (docs/fidelity.md, IDM, "stacked queue training")."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tgdd import paths, steps
from tgdd.cards.idm import IDMSettings
from tgdd.data.prepared import ClassSampler
from tgdd.errors import TgddError
from tgdd.methods.idm import IDM, NetQueue, TrainingBatches, queue_stacks
from tgdd.methods.loop import Space
from tgdd.models import build_model
from tgdd.resolve import NOT_RESULT_KEYS, resolved_distill
from tgdd.synthetic import load_synthetic

from .conftest import tiny_config
from .test_idm import E2E, _assert_same, _own, _recording_final_state, _settings, _split

ARCH = "convnet-1-w4"
CPU = torch.device("cpu")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tensors_close(a: torch.Tensor, b: torch.Tensor, where: str) -> None:
    assert isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype, where
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=where)


def _assert_close(a, b, where: str = "state") -> None:
    """``a`` and ``b`` of the same structure, their tensors equal within float32 rounding."""
    _assert_same(a, b, where, tensors=_tensors_close)


# --- the queue's training ---------------------------------------------------------------------------


def _queue(own: IDMSettings) -> NetQueue:
    queue = NetQueue(lambda: build_model(ARCH, 1, 8, 3), own, CPU)
    queue.fill(_gen(1))
    return queue


def _batches(own: IDMSettings) -> TrainingBatches:
    split = _split()
    return TrainingBatches(ClassSampler(split, CPU), own.net_batch, split.mean, split.std)


@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_stacked_training_of_a_trained_and_a_fresh_network_is_one_after_another(momentum: float):
    """Member 1 fresh (no momentum buffer yet), member 0 trained before: both take their steps together;
    weights, momentum buffers (their optimisers' state_dict, as a checkpoint holds them), meters and the
    generator (the same draws) are those of training 1, then 0."""
    own = _own(model_train_steps=3, net_batch=5, net_momentum=momentum)
    batches = _batches(own)
    separate = _queue(own)
    separate.train(0, batches, _gen(2))
    stacked = copy.deepcopy(separate)
    gen_separate, gen_stacked = _gen(3), _gen(3)
    separate.train_fetched([1, 0], batches, gen_separate, stack=False)
    calls = []
    train_stacked = stacked.train_stacked
    stacked.train_stacked = lambda *a: (calls.append(a[0]), train_stacked(*a))[1]
    stacked.train_fetched([1, 0], batches, gen_stacked, stack=True)
    assert calls == [[1, 0]]
    assert torch.equal(gen_separate.get_state(), gen_stacked.get_state())
    _assert_close(stacked.state_dict(), separate.state_dict())
    assert [m.seen for m in stacked.members] == [6 * 5, 3 * 5, 0]  # 3 + 3 steps, 3 steps, untrained
    if momentum:
        assert len(stacked.members[1].optimizer.state_dict()["state"]) == len(list(stacked.members[1].net.parameters()))
    else:
        assert stacked.members[1].optimizer.state_dict()["state"] == {}  # SGD without momentum keeps none
    # and the next training continues from the same momentum, either way
    separate.train_fetched([0, 1], batches, gen_separate, stack=False)
    stacked.train_fetched([0, 1], batches, gen_stacked, stack=True)
    _assert_close(stacked.state_dict(), separate.state_dict())


def test_stacked_training_one_network_or_no_step_is_the_separate_path():
    own = _own(model_train_steps=2)
    queue = _queue(own)
    queue.train_stacked = lambda *a: pytest.fail("one network or no step never stacks")
    queue.train_fetched([2], _batches(own), _gen(3), stack=True)
    no_steps = _own(model_train_steps=0)
    idle = _queue(no_steps)
    idle.train_stacked = queue.train_stacked
    idle.train_fetched([0, 1], _batches(no_steps), _gen(3), stack=True)
    assert all(m.seen == 0 and m.optimizer.state_dict()["state"] == {} for m in idle.members)


# --- the decision -----------------------------------------------------------------------------------


class _Dropping(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout()


def test_stack_nets_decides_by_device_count_and_network():
    net = build_model(ARCH, 1, 8, 3)
    cuda = torch.device("cuda")  # only the decision: nothing runs there
    assert IDMSettings().stack_nets == "auto"
    assert queue_stacks(_own(), cuda, net) and not queue_stacks(_own(), CPU, net)
    assert queue_stacks(_own(stack_nets="always"), CPU, net)
    assert not queue_stacks(_own(stack_nets="never"), cuda, net)
    assert not queue_stacks(_own(stack_nets="always", fetch_net_num=1), cuda, net)  # one network alone
    assert not queue_stacks(_own(stack_nets="always"), cuda, _Dropping())  # stack_refusal refuses it
    assert "stack_nets" in NOT_RESULT_KEYS


# --- the method's iterations ------------------------------------------------------------------------


def _ctx(choice: str) -> SimpleNamespace:
    own = _own(stack_nets=choice, net_generate_interval=2, model_train_steps=3, meter_reset_interval=4)
    split = _split()
    return SimpleNamespace(
        cfg=SimpleNamespace(experts=SimpleNamespace(arch=ARCH)),
        settings=_settings(own, ipc=2, real_batch=4, dsa_strategy="color_crop_cutout_flip_scale_rotate"),
        train=split,
        sampler=ClassSampler(split, CPU),
        gen=_gen(6),
        device=CPU,
        execution={},
    )


def _run(choice: str, iterations: int = 6) -> tuple[SimpleNamespace, dict, int]:
    """``iterations`` IDM iterations under ``stack_nets=choice``: the context, the final state as a
    checkpoint holds it (images, their momentum, queue, generator) and how many stacked trainings ran."""
    ctx = _ctx(choice)
    method = IDM()
    space = Space(True, ctx.train.mean, ctx.train.std)
    state = method.initial_state(ctx, space)
    stacked = []
    train_stacked = state.queue.train_stacked
    state.queue.train_stacked = lambda *a: (stacked.append(a[0]), train_stacked(*a))[1]
    step = method.prepare(ctx, state, space)
    for it in range(iterations):
        state.iteration = it
        step(state)
    return ctx, state.to_checkpoint(ctx.gen), len(stacked)


def test_stacked_iterations_equal_one_after_another():
    """Six iterations with pushes (fresh networks join trained ones), meter resets and three steps per
    fetched network: the synthetic images, their momentum, every queue network's weights and momentum
    buffers, its meter and the generator agree."""
    ctx, stacked, trainings = _run("always")
    assert ctx.execution["stacked_queue_training"] is True and trainings == 6
    ctx, separate, trainings = _run("never")
    assert ctx.execution["stacked_queue_training"] is False and trainings == 0
    _assert_close(stacked, separate)
    assert any(m["seen"] > 0 for m in stacked["queue"]["members"])


def test_auto_on_the_cpu_is_the_separate_path_bit_for_bit():
    ctx, auto, trainings = _run("auto", iterations=3)
    assert ctx.execution["stacked_queue_training"] is False and trainings == 0
    _assert_same(auto, _run("never", iterations=3)[1])


# --- end to end: a stacked run, stopped and resumed ----------------------------------------------------

STACKED = [*E2E, "distill.idm.stack_nets=always"]


@pytest.fixture(scope="module")
def idm_root(prepared_root: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("idm_stacked")
    shutil.copytree(prepared_root / "data", root / "data")
    return root


def _distill(cfg, stop_at: int | None = None) -> tuple:
    """Distil ``cfg``: (the synthetic set, or None where it was stopped after iteration ``stop_at``; the
    state after the 4th iteration, as a checkpoint holds it)."""
    final: dict = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        _recording_final_state(monkeypatch, final, stop_at)
        if stop_at is not None:
            with pytest.raises(TgddError, match="stopped by SIGTERM"):
                steps.distill(cfg)
            return None, final
        return load_synthetic(steps.distill(cfg)[0]), final


def test_stacked_run_equals_separate_and_resumes_bit_identically(idm_root, tmp_path):
    configs = {}
    for name, overrides in (("separate", E2E), ("stacked", STACKED), ("resumed", STACKED)):
        shutil.copytree(idm_root / "data", tmp_path / name / "data")
        configs[name] = tiny_config(tmp_path / name, *overrides)
    separate, separate_final = _distill(configs["separate"])
    stacked, stacked_final = _distill(configs["stacked"])
    assert stacked.meta["execution"]["stacked_queue_training"] is True
    assert separate.meta["execution"]["stacked_queue_training"] is False
    torch.testing.assert_close(stacked.images, separate.images, rtol=1e-5, atol=1e-6)
    _assert_close(stacked_final, separate_final)  # queue and generator included: the same format

    # stopped after iteration 3, resumed: the uninterrupted stacked run, bit for bit
    cfg = configs["resumed"]
    _distill(cfg, stop_at=3)
    blob = torch.load(paths.synthetic_dir(cfg) / "checkpoint.pt", weights_only=True)["state"]
    assert blob["iteration"] == 3 and any(m["seen"] > 0 for m in blob["queue"]["members"])
    resumed, resumed_final = _distill(cfg)
    assert torch.equal(resumed.images, stacked.images)
    _assert_same(resumed_final, stacked_final)


def test_stack_nets_is_never_a_reason_to_redo_a_distillation(tmp_path):
    """How the queue trains is not what it makes: the resolved record (the Snakemake rule's params,
    the freshness check) is the same whatever ``stack_nets`` says."""
    records = [
        resolved_distill(tiny_config(tmp_path, "distill.method=idm", f"distill.idm.stack_nets={choice}"))
        for choice in ("auto", "always", "never")
    ]
    assert records[0] == records[1] == records[2]
    assert "stack_nets" not in records[0]["idm"] and "net_num" in records[0]["idm"]
