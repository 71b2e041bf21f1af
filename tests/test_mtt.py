"""MTT against direct computations on tiny tensors, and end to end on tiny digits (docs/fidelity.md, MTT)."""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import itertools
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tgdd import paths, steps
from tgdd.artifacts import torch_save
from tgdd.augment import DiffAugment
from tgdd.cards import METHODS
from tgdd.cards.mtt import MTTSettings, mtt_row
from tgdd.checkpoint import Checkpointer
from tgdd.data.prepared import ClassSampler, PreparedSplit
from tgdd.data.registry import get_dataset
from tgdd.errors import TgddError
from tgdd.experts import Trajectories, TrajectoryStore
from tgdd.methods import DistillContext
from tgdd.methods.mtt import (
    MTT,
    ExpertCycle,
    FlatLayout,
    MiniBatches,
    draw_start_epoch,
    matching_loss,
    student_forward,
    unroll,
)
from tgdd.models import build_model
from tgdd.resolve import checks_config, resolve_settings
from tgdd.runtime import seeded_init
from tgdd.synthetic import load_synthetic

from .conftest import tiny_config, with_trained_experts


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- the loss ---------------------------------------------------------------------------------------------


def test_matching_loss_is_the_normalised_parameter_distance():
    # the notes' worked example: theta*_t = (0, 0), theta*_{t+M} = (1, 1), theta_N = (0.5, 0.5)
    start, target = torch.zeros(2), torch.ones(2)
    assert matching_loss(torch.full((2,), 0.5), start, target).item() == pytest.approx(0.25)
    final = torch.randn(7, generator=_gen(0), dtype=torch.float64, requires_grad=True)
    start, target = torch.randn(7, generator=_gen(1), dtype=torch.float64), torch.randn(7, generator=_gen(2))
    target = target.double()
    loss = matching_loss(final, start, target)
    expected = ((final - target) ** 2).sum() / ((start - target) ** 2).sum()  # one vector, no per-layer terms
    torch.testing.assert_close(loss, expected)
    (grad,) = torch.autograd.grad(loss, final)
    torch.testing.assert_close(grad, 2 * (final - target).detach() / ((start - target) ** 2).sum())


# --- the student as one flat vector -----------------------------------------------------------------------


def test_flat_layout_forward_is_the_network_with_the_snapshot_loaded():
    with seeded_init(3):
        source = build_model("convnet-2-w8", 1, 16, 10)
    net = build_model("convnet-2-w8", 1, 16, 10)
    layout = FlatLayout.of(net)
    assert layout.names[0] == "body.0.weight" and layout.size == sum(p.numel() for p in net.parameters())
    theta = layout.flatten(source.state_dict(), torch.device("cpu"))
    torch.testing.assert_close(theta, torch.cat([p.detach().reshape(-1) for p in source.parameters()]))
    x = torch.randn(5, 1, 16, 16, generator=_gen(4))
    torch.testing.assert_close(student_forward(net, layout, theta, x), source(x))


# --- the unroll against a hand-written loop ---------------------------------------------------------------


def _hand_unroll(w, b, images, labels, lr, steps, batch, augment, gen):
    """distill.py l. 342-370 written out for a linear softmax model with separate weight and bias tensors."""
    w, b = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    chunks: list[torch.Tensor] = []
    for _ in range(steps):
        if not chunks:
            chunks = list(torch.split(torch.randperm(len(images), generator=gen), batch))
        pick = chunks.pop()
        x = augment(images[pick], gen)
        ce = F.cross_entropy(x.flatten(1) @ w.T + b, labels[pick])
        gw, gb = torch.autograd.grad(ce, (w, b), create_graph=True)
        w, b = w - lr * gw, b - lr * gb
    return w, b


@pytest.mark.parametrize("strategy", ["none", "color_crop_cutout_flip_scale_rotate"])
def test_unroll_and_its_gradients_match_the_loop_written_out(strategy: str):
    torch.manual_seed(0)
    dtype = torch.float64
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).to(dtype)
    layout = FlatLayout.of(net)
    w0, b0 = torch.randn(2, 16, dtype=dtype), torch.randn(2, dtype=dtype)
    target = torch.cat([torch.randn(2, 16, dtype=dtype).reshape(-1), torch.randn(2, dtype=dtype)])
    start = torch.cat([w0.reshape(-1), b0])
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    augment = DiffAugment(strategy, "mtt")

    def ours(images, lr):
        final = unroll(net, layout, start, images, labels, lr, steps=3, batch=3, augment=augment, gen=_gen(7))
        return matching_loss(final, start, target), final

    def theirs(images, lr):
        w, b = _hand_unroll(w0, b0, images, labels, lr, 3, 3, augment, _gen(7))
        final = torch.cat([w.reshape(-1), b])
        p = final.numel()
        return (((final - target) ** 2).sum() / p) / (((start - target) ** 2).sum() / p), final

    images = torch.randn(7, 1, 4, 4, dtype=dtype, requires_grad=True)
    lr = torch.tensor(0.3, dtype=dtype, requires_grad=True)
    loss, final = ours(images, lr)
    hand_loss, hand_final = theirs(images, lr)
    torch.testing.assert_close(final, hand_final)
    torch.testing.assert_close(loss, hand_loss)
    g_images, g_lr = torch.autograd.grad(loss, (images, lr))
    h_images, h_lr = torch.autograd.grad(hand_loss, (images, lr))
    torch.testing.assert_close(g_images, h_images)
    torch.testing.assert_close(g_lr, h_lr)
    assert g_images.abs().sum() > 0 and g_lr.abs() > 0  # second-order terms reach both
    if strategy == "none":  # and both are the derivative (central differences, float64)
        h = 1e-6
        up, down = ours(images.detach(), lr.detach() + h)[0], ours(images.detach(), lr.detach() - h)[0]
        assert g_lr.item() == pytest.approx(((up - down) / (2 * h)).item(), rel=1e-5)
        bump = torch.zeros_like(images)
        bump[4, 0, 1, 2] = h
        up, down = ours(images.detach() + bump, lr.detach())[0], ours(images.detach() - bump, lr.detach())[0]
        assert g_images[4, 0, 1, 2].item() == pytest.approx(((up - down) / (2 * h)).item(), rel=1e-5)


# --- the draws --------------------------------------------------------------------------------------------


def test_mini_batches_pop_the_last_chunk_of_each_shuffled_pass():
    batches, replay = MiniBatches(10, 4), _gen(0)
    gen = _gen(0)
    picks = [batches.next(gen) for _ in range(6)]
    first, second = torch.randperm(10, generator=replay), torch.randperm(10, generator=replay)
    # split into 4, 4, 2; popped from the end: the remainder first
    expected = [first[8:], first[4:8], first[:4], second[8:], second[4:8], second[:4]]
    for pick, want in zip(picks, expected, strict=True):
        assert torch.equal(pick, want)
    whole = MiniBatches(6, 6)
    assert sorted(whole.next(gen).tolist()) == list(range(6))  # batch_syn = K*IPC: every image each step


def test_start_epoch_is_uniform_below_max_start_epoch():
    gen, replay = _gen(1), _gen(1)
    draws = [draw_start_epoch(5, gen) for _ in range(400)]
    assert set(draws) == set(range(5))  # 0..4: the upper bound is exclusive, as np.random.randint
    assert draws == [int(torch.randint(0, 5, (1,), generator=replay)) for _ in range(400)]
    assert {draw_start_epoch(1, gen) for _ in range(20)} == {0}


def _shuffled(items, gen):
    return [items[k] for k in torch.randperm(len(items), generator=gen).tolist()]


def test_expert_cycle_goes_file_by_file_without_replacement():
    gen, replay = _gen(2), _gen(2)
    cycle = ExpertCycle(25, 10, "cycle", gen)
    files = [list(range(0, 10)), list(range(10, 20)), list(range(20, 25))]  # trajectory i in file i // 10
    drawn = [cycle.next(gen) for _ in range(75)]
    assert drawn == _replay_cycle(files, replay, 75)
    for one_pass in (drawn[:25], drawn[25:50], drawn[50:]):
        assert sorted(one_pass) == list(range(25))  # every expert once per pass
        runs = [k for k, _ in itertools.groupby(e // 10 for e in one_pass)]
        assert sorted(runs) == [0, 1, 2]  # one whole file after the other
    assert drawn[:25] != drawn[25:50]  # reshuffled between passes
    uniform, gen, replay = ExpertCycle(4, 10, "uniform", _gen(3)), _gen(3), _gen(3)
    draws = [uniform.next(gen) for _ in range(200)]  # (drawing nothing at construction)
    assert draws == [int(torch.randint(4, (1,), generator=replay)) for _ in range(200)]
    assert set(draws) == {0, 1, 2, 3}  # with replacement


def _replay_cycle(files, gen, count):
    """distill.py l. 170-179 and 307-322 with python's shuffles replaced by the generator's permutations."""
    expert_files = _shuffled(list(range(len(files))), gen)
    file_idx, expert_idx = 0, 0
    buffer = _shuffled(files[expert_files[file_idx]], gen)
    out = []
    for _ in range(count):
        out.append(buffer[expert_idx])
        expert_idx += 1
        if expert_idx == len(buffer):
            expert_idx = 0
            file_idx += 1
            if file_idx == len(expert_files):
                file_idx = 0
                expert_files = _shuffled(expert_files, gen)
            buffer = _shuffled(files[expert_files[file_idx]], gen)
    return out


def test_expert_cycle_state_round_trips():
    gen = _gen(4)
    cycle = ExpertCycle(7, 3, "cycle", gen)
    for _ in range(5):
        cycle.next(gen)
    copy_gen = _gen(0)
    copy_gen.set_state(gen.get_state())
    other = ExpertCycle(7, 3, "cycle", _gen(99))
    other.load_state_dict(copy.deepcopy(cycle.state_dict()))
    assert [cycle.next(gen) for _ in range(12)] == [other.next(copy_gen) for _ in range(12)]


# --- the card ---------------------------------------------------------------------------------------------


def test_card_and_published_settings():
    card = METHODS.get("mtt")
    assert (card.needs_trajectories, card.optimizes_images, card.expert_recipe) == (True, True, "mtt")
    assert (card.image_space, card.terms) == ("normalised", ("loss", "syn_lr", "start_epoch"))
    cifar10, fashion = get_dataset("cifar10"), get_dataset("fashion_mnist")
    shared = card.defaults(10, cifar10)
    assert shared == {
        "iterations": 5000, "factor": 1, "init": "real", "lr_img": 100.0, "real_batch": 1,
        "dsa_strategy": "color_crop_cutout_flip_scale_rotate", "augment_semantics": "mtt",
    }  # fmt: skip
    own = MTTSettings().resolve(10, cifar10).model_dump()
    assert own == {
        "syn_steps": 30, "expert_epochs": 2, "max_start_epoch": 20, "batch_syn": 100, "lr_teacher": 0.001,
        "lr_lr": 1e-5, "expert_selection": "cycle", "experts_per_file": 10,
    }  # fmt: skip
    assert MTTSettings().resolve(10, fashion) == MTTSettings().resolve(10, cifar10)  # CIFAR-10's rows
    assert card.defaults(1, fashion)["lr_img"] == 100.0 and card.defaults(50, fashion)["lr_img"] == 1000.0
    c100 = get_dataset("cifar100")
    assert MTTSettings().resolve(1, c100).expert_epochs == 3
    assert MTTSettings().resolve(50, c100).batch_syn == 125 and MTTSettings().resolve(50, c100).syn_steps == 80
    assert MTTSettings().resolve(10, c100).batch_syn == 1000  # every image: K * IPC
    tiny = get_dataset("tinyimagenet")
    assert (MTTSettings().resolve(1, tiny).batch_syn, MTTSettings().resolve(50, tiny).batch_syn) == (200, 300)
    assert card.defaults(10, tiny)["lr_img"] == 10000.0
    nette = get_dataset("imagenette")
    assert MTTSettings().resolve(10, nette).batch_syn == 20 and MTTSettings().resolve(10, nette).lr_lr == 1e-6
    assert mtt_row(5, cifar10) is mtt_row(10, cifar10) and mtt_row(100, cifar10) is mtt_row(50, cifar10)
    set_by_hand = MTTSettings(syn_steps=3, batch_syn=7).resolve(10, cifar10)
    assert (set_by_hand.syn_steps, set_by_hand.batch_syn, set_by_hand.expert_epochs) == (3, 7, 2)
    zca = sorted((d, i) for (d, i) in [("cifar10", 1), ("cifar10", 10), ("cifar10", 50), ("cifar100", 1),
                                       ("cifar100", 10), ("cifar100", 50)]
                 if mtt_row(i, get_dataset(d))["zca"])  # fmt: skip
    assert zca == [("cifar10", 1), ("cifar10", 10), ("cifar100", 1), ("cifar100", 50)]  # docs/fidelity.md


def test_settings_resolve_through_the_config(tmp_path):
    cfg = tiny_config(tmp_path, "distill.method=mtt", "distill.mtt.syn_steps=4", "distill.ipc=2")
    s = resolve_settings(cfg)
    assert (s.iterations, s.lr_img, s.augment_semantics, s.image_space) == (4, 100.0, "mtt", "normalised")
    assert s.own["syn_steps"] == 4 and s.own["batch_syn"] == 20 and s.own["max_start_epoch"] == 20  # CIFAR-10 IPC 10
    with pytest.raises(Exception, match="expert_selection"):
        tiny_config(tmp_path, "distill.method=mtt", "distill.mtt.expert_selection=random")


def test_too_short_trajectories_are_refused_naming_the_keys():
    own = MTTSettings(max_start_epoch=20, expert_epochs=2)
    own.check_epochs(21)  # start 19 + 2 = 21: just enough
    with pytest.raises(TgddError) as caught:
        own.check_epochs(20)
    message = str(caught.value)
    assert "\n" not in message and "need trajectories of at least 21 epochs, these have 20" in message
    for key in ("distill.mtt.max_start_epoch=20", "distill.mtt.expert_epochs=2", "experts.mtt.epochs"):
        assert key in message


def test_too_short_trajectories_of_the_config_are_refused_when_settings_resolve(tmp_path):
    keys = ("distill.method=mtt", "distill.mtt.max_start_epoch=3", "distill.mtt.expert_epochs=2")
    assert resolve_settings(tiny_config(tmp_path, *keys, "experts.mtt.epochs=4")).own["max_start_epoch"] == 3
    short = tiny_config(tmp_path, *keys, "experts.mtt.epochs=3", "matrix.methods=[tgdd,mtt]")
    with pytest.raises(TgddError, match=r"need trajectories of at least 4 epochs, these have 3 \(experts.mtt.epochs\)"):
        resolve_settings(short)
    with pytest.raises(TgddError, match="need trajectories of at least 4 epochs"):
        steps.plan(short.with_overrides("distill.method=tgdd"))  # the pipeline's plan: before any step
    assert not paths.experts_dir(short, "mtt").exists()
    assert checks_config("mtt") and not checks_config("tgdd")


# --- the loop on fake inputs: one iteration written out, resume -------------------------------------------

ARCH = "convnet-1-w4"


def _split(per_class: int = 4) -> PreparedSplit:
    labels = torch.arange(10).repeat_interleave(per_class)
    images = torch.randint(0, 256, (len(labels), 1, 16, 16), dtype=torch.uint8, generator=_gen(5))
    return PreparedSplit(images, labels, [str(c) for c in range(10)], torch.tensor([0.4]), torch.tensor([0.3]), "x")


def _trajectories(count: int = 3, epochs: int = 3) -> Trajectories:
    runs = []
    for i in range(count):
        with seeded_init(100 + i):
            net = build_model(ARCH, 1, 16, 10)
        snaps = []
        for _ in range(epochs + 1):
            snaps.append({k: v.detach().clone() for k, v in net.state_dict().items()})
            with torch.no_grad():
                for p in net.parameters():
                    p.add_(0.05 * torch.randn(p.shape, generator=_gen(len(snaps) + 10 * i)))
        runs.append(snaps)
    return Trajectories(runs, "fake")


class _Stop(Exception):
    pass


class _Checkpoints:
    """Stands in for tgdd.checkpoint.Checkpointer: keeps every state (through a weights-only save and load,
    as the real one writes them), optionally stops after ``stop_at`` iterations."""

    def __init__(self, resume_blob=None, stop_at: int | None = None) -> None:
        self.resume_blob, self.stop_at, self.states = resume_blob, stop_at, {}

    def after_iteration(self, iteration, state):
        buffer = io.BytesIO()
        torch.save(state(), buffer)
        self.states[iteration] = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
        if iteration == self.stop_at:
            raise _Stop


def _ctx(tmp_path, checkpoint, *overrides: str) -> DistillContext:
    cfg = tiny_config(
        tmp_path, "distill.method=mtt", "distill.ipc=2", f"experts.arch={ARCH}", "distill.iterations=5",
        "distill.mtt.syn_steps=3", "distill.mtt.batch_syn=8", "distill.mtt.max_start_epoch=2",
        "distill.mtt.expert_epochs=2", "distill.mtt.experts_per_file=2", "distill.lr_img=10",
        "distill.mtt.lr_lr=1e-3", *overrides,
    )  # fmt: skip
    split = _split()
    return DistillContext(
        cfg=cfg, settings=resolve_settings(cfg), spec=get_dataset("digits"), train=split,
        sampler=ClassSampler(split, torch.device("cpu")), device=torch.device("cpu"), gen=_gen(11),
        trajectories=_trajectories(), checkpoint=checkpoint, progress=False,
    )  # fmt: skip


def test_one_iteration_is_the_update_written_out(tmp_path):
    ctx = _ctx(tmp_path, None, "distill.iterations=1", "distill.lr_img=1000")
    out = MTT().run(ctx)
    s, own = ctx.settings, ctx.settings.of(MTTSettings)
    # replay: init (random distinct real images per class), the cycle's shuffles, the start epoch, the unroll
    gen = _gen(11)
    sampler = ClassSampler(ctx.train, torch.device("cpu"))
    init = torch.cat([sampler.sample(c, 2, gen) for c in range(10)])
    images = ((init - 0.4) / 0.3).requires_grad_(True)
    files = [[0, 1], [2]]  # experts_per_file 2
    order = _shuffled([0, 1], gen)
    expert = _shuffled(files[order[0]], gen)[0]
    if len(files[order[0]]) == 1:  # that file is done: the next one is loaded and shuffled at once
        _shuffled(files[order[1]], gen)
    start_epoch = int(torch.randint(0, 2, (1,), generator=gen))
    net = build_model(ARCH, 1, 16, 10)
    layout = FlatLayout.of(net)
    snaps = ctx.trajectories.snapshots[expert]
    start, target = layout.flatten(snaps[start_epoch], ctx.device), layout.flatten(snaps[start_epoch + 2], ctx.device)
    lr = torch.tensor(own.lr_teacher, requires_grad=True)
    labels = torch.arange(10).repeat_interleave(2)
    theta = start.clone().requires_grad_(True)
    augment, chunks = DiffAugment(s.dsa_strategy, "mtt"), []
    for _ in range(3):
        if not chunks:
            chunks = list(torch.split(torch.randperm(20, generator=gen), 8))
        pick = chunks.pop()
        x = augment(images[pick], gen)
        ce = F.cross_entropy(student_forward(net, layout, theta, x), labels[pick])
        theta = theta - lr * torch.autograd.grad(ce, theta, create_graph=True)[0]
    loss = (F.mse_loss(theta, target, reduction="sum") / theta.numel()) / (
        F.mse_loss(start, target, reduction="sum") / theta.numel()
    )
    g_images, g_lr = torch.autograd.grad(loss, (images, lr))
    # first SGD step with momentum 0.5: buffer = grad, so x - lr * grad (images) and lr - lr_lr * grad (syn_lr)
    update = (s.lr_img * g_images) * 0.3  # on the pixel scale
    assert update.abs().max() > 5e-4  # a step well above the comparison's tolerance (1e-5)
    torch.testing.assert_close(out.images, (images.detach() * 0.3 + 0.4) - update)
    assert out.extra["syn_lr"] == pytest.approx((lr - own.lr_lr * g_lr).item(), rel=1e-6)
    assert out.extra["syn_lr_initial"] == own.lr_teacher
    assert out.records == [
        {"iteration": 0, "loss": pytest.approx(loss.item(), rel=1e-6), "syn_lr": pytest.approx(own.lr_teacher),
         "start_epoch": float(start_epoch)}
    ]  # fmt: skip


def test_stopped_run_resumes_bit_identically(tmp_path):
    whole = _Checkpoints()
    expected = MTT().run(_ctx(tmp_path, whole))
    stopped = _Checkpoints(stop_at=3)
    with pytest.raises(_Stop):
        MTT().run(_ctx(tmp_path, stopped))
    blob = stopped.states[3]
    assert set(blob) == {"iteration", "images", "optimizer", "syn_lr", "lr_optimizer", "experts", "generator",
                         "records"}  # fmt: skip
    assert blob["lr_optimizer"]["state"][0]["momentum_buffer"] is not None  # the lr's momentum crosses too
    resumed_ckpt = _Checkpoints(resume_blob=blob)
    resumed = MTT().run(_ctx(tmp_path, resumed_ckpt))
    assert torch.equal(resumed.images, expected.images)
    assert resumed.extra == expected.extra and resumed.records == expected.records
    for key in ("images", "syn_lr", "generator"):
        assert torch.equal(resumed_ckpt.states[5][key], whole.states[5][key])
    assert resumed_ckpt.states[5]["experts"] == whole.states[5]["experts"]
    for key in ("optimizer", "lr_optimizer"):
        assert torch.equal(
            resumed_ckpt.states[5][key]["state"][0]["momentum_buffer"],
            whole.states[5][key]["state"][0]["momentum_buffer"],
        )
    assert expected.extra["syn_lr"] != pytest.approx(0.001)  # the lr did learn


def test_cycle_holds_one_buffer_file_of_experts_and_matches_in_memory(tmp_path):
    """From disk, the cycle keeps at most experts_per_file (2) trajectories in memory, reads each again
    when its file comes round, and distils exactly what trajectories held in memory give."""
    expected = MTT().run(_ctx(tmp_path, None, "distill.iterations=7"))
    files = [
        torch_save(tmp_path / f"trajectory_{i:02d}.pt", {"snapshots": snaps})
        for i, snaps in enumerate(_trajectories().snapshots)
    ]
    accesses: list[int] = []

    class Logged(TrajectoryStore):
        def __getitem__(self, index):
            accesses.append(index)
            return super().__getitem__(index)

    store = Logged(files, 3)
    ctx = dataclasses.replace(_ctx(tmp_path, None, "distill.iterations=7"), trajectories=Trajectories(store, "fake"))
    got = MTT().run(ctx)
    assert torch.equal(got.images, expected.images) and got.extra == expected.extra
    assert len(accesses) == 14  # start and target of each iteration's expert
    held: list[int] = []  # least recently used first, at most two: the cache written out
    loads = 0
    for i in accesses:
        if i in held:
            held.remove(i)
        else:
            held, loads = held[-1:], loads + 1
        held.append(i)
    assert (store.loads, store.peak_held, store.held) == (loads, 2, held)
    assert loads > 3  # a file's experts are read again when the file comes round
    uniform = TrajectoryStore(files, 3)
    ctx = dataclasses.replace(
        _ctx(tmp_path, None, "distill.iterations=7", "distill.mtt.expert_selection=uniform"),
        trajectories=Trajectories(uniform, "fake"),
    )
    MTT().run(ctx)
    assert uniform.loads == uniform.peak_held  # --load_all: every one read once and kept


def test_loop_refuses_short_trajectories_and_other_factors(tmp_path):
    with pytest.raises(TgddError, match="distill.mtt.max_start_epoch=3"):
        MTT().run(_ctx(tmp_path, None, "distill.mtt.max_start_epoch=3"))
    with pytest.raises(TgddError, match="distill.factor is 2"):
        MTT().run(_ctx(tmp_path, None, "distill.factor=2"))


# --- end to end on tiny digits ----------------------------------------------------------------------------

E2E = (
    "distill.method=mtt", "distill.ipc=2", "experts.mtt.num_trajectories=2", "experts.mtt.epochs=3",
    "distill.mtt.syn_steps=3", "distill.mtt.max_start_epoch=2", "distill.mtt.expert_epochs=1",
)  # fmt: skip


@pytest.fixture(scope="module")
def mtt_root(prepared_root: Path, tmp_path_factory) -> Path:
    return with_trained_experts(prepared_root, tmp_path_factory, "mtt", *E2E)


def test_end_to_end_trains_mtt_experts_distills_and_records_the_learned_lr(mtt_root: Path):
    cfg = tiny_config(mtt_root, *E2E)
    first = load_synthetic(steps.distill(cfg)[0])
    again = load_synthetic(steps.distill(cfg)[0])
    assert first.images.shape == (20, 1, 16, 16) and first.factor == 1
    assert torch.isfinite(first.images).all() and torch.equal(first.images, again.images)
    assert first.meta["settings"]["mtt"]["syn_steps"] == 3 and first.meta["settings"]["augment_semantics"] == "mtt"
    syn_lr = first.meta["extra"]["syn_lr"]
    assert syn_lr > 0 and syn_lr != pytest.approx(0.001) and first.meta["extra"]["syn_lr_initial"] == 0.001
    rows = list(csv.DictReader((paths.synthetic_dir(cfg) / "losses.csv").open()))
    assert list(rows[0]) == ["iteration", "loss", "syn_lr", "start_epoch"] and len(rows) == 4
    assert all(float(r["loss"]) > 0 and float(r["start_epoch"]) in (0.0, 1.0) for r in rows)
    # the trajectories it matched are MTT's recipe: 3 epochs (4 snapshots), not the tgdd recipe's 2
    assert "mtt" in str(paths.experts_dir(cfg, "mtt"))
    blob = torch.load(paths.experts_dir(cfg, "mtt") / "trajectory_00.pt", weights_only=True)
    assert len(blob["snapshots"]) == 4 and blob["identity"]["recipe"]["momentum"] == 0.0


def test_end_to_end_stopped_run_resumes_bit_identically(mtt_root: Path, tmp_path, monkeypatch):
    """A stop requested after iteration 2 (as SIGTERM), then the same command: the same set, losses and lr."""
    cfg = tiny_config(mtt_root, *E2E)
    expected = load_synthetic(steps.distill(cfg)[0])
    losses = (paths.synthetic_dir(cfg) / "losses.csv").read_text()
    shutil.copytree(mtt_root / "data", tmp_path / "data")
    shutil.copytree(mtt_root / "results" / "experts", tmp_path / "results" / "experts")
    cfg = tiny_config(tmp_path, *E2E)
    original = Checkpointer.after_iteration

    def stop_after_two(self, iteration, state):
        if iteration == 2:
            self.stop.signal = "SIGTERM"
        return original(self, iteration, state)

    monkeypatch.setattr(Checkpointer, "after_iteration", stop_after_two)
    with pytest.raises(TgddError, match="stopped by SIGTERM"):
        steps.distill(cfg)
    blob = torch.load(paths.synthetic_dir(cfg) / "checkpoint.pt", weights_only=True)["state"]
    assert blob["iteration"] == 2 and blob["syn_lr"] != pytest.approx(0.001)
    monkeypatch.setattr(Checkpointer, "after_iteration", original)
    resumed = load_synthetic(steps.distill(cfg)[0])
    assert torch.equal(resumed.images, expected.images) and resumed.meta["extra"] == expected.meta["extra"]
    assert (paths.synthetic_dir(cfg) / "losses.csv").read_text() == losses
