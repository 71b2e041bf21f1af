"""IDM against direct computations on tiny tensors, and end to end on tiny digits (docs/fidelity.md, IDM)."""

from __future__ import annotations

import copy
import csv
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tgdd import paths, steps
from tgdd.augment import DiffAugment, normalize
from tgdd.cards import METHODS
from tgdd.cards.idm import IDMSettings
from tgdd.checkpoint import Checkpointer
from tgdd.data.prepared import ClassSampler, FreshBatches
from tgdd.data.registry import get_dataset
from tgdd.errors import TgddError
from tgdd.methods.idm import (
    IDM,
    NetQueue,
    QueueNet,
    TrainingBatches,
    idm_class_loss,
    idm_phase,
    matching_mode,
    partition_and_expand,
)
from tgdd.methods.loop import ImageState, Iteration, Space, run_phase
from tgdd.models import build_model
from tgdd.resolve import DistillSettings, resolve_settings
from tgdd.runtime import seeded_init
from tgdd.synthetic import decode, images_needed, initial_images, load_synthetic, pooled_tiles

from .conftest import tiny_config

ARCH = "convnet-1-w4"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- partition and expand -------------------------------------------------------------------------


def test_partition_and_expand_is_number_sign_augment():
    x = torch.randn(3, 2, 8, 8, generator=_gen(0))
    out = partition_and_expand(x)
    assert out.shape == (12, 2, 8, 8)

    def up(q: torch.Tensor) -> torch.Tensor:  # the bilinear x2 upsampling written out (align_corners=False)
        n = q.shape[-1]
        src = ((torch.arange(2 * n) + 0.5) / 2 - 0.5).clamp(min=0)
        lo = src.floor().long()
        hi = (lo + 1).clamp(max=n - 1)
        t = (src - lo).view(-1)
        rows = q[..., lo, :] * (1 - t).view(-1, 1) + q[..., hi, :] * t.view(-1, 1)
        return rows[..., lo] * (1 - t) + rows[..., hi] * t

    quadrants = [x[:, :, :4, :4], x[:, :, 4:, :4], x[:, :, :4, 4:], x[:, :, 4:, 4:]]  # TL, BL, TR, BR
    for q, quadrant in enumerate(quadrants):  # quadrant-major: rows q*n .. q*n+n-1
        torch.testing.assert_close(out[q * 3 : q * 3 + 3], up(quadrant))
    # the same images as our decode, bit for bit, which lists them image-major, tiles row-major
    theirs_row = {0: 0, 1: 2, 2: 1, 3: 3}
    order = [theirs_row[k] * 3 + m for m in range(3) for k in range(4)]
    assert torch.equal(decode(x, 2), out[order])
    assert torch.equal(partition_and_expand(x, 1), x)


def test_partition_and_expand_refuses_what_their_code_cannot_cut_and_passes_gradients():
    with pytest.raises(TgddError, match="even size"):
        partition_and_expand(torch.zeros(1, 1, 7, 7))
    with pytest.raises(TgddError, match="use 1 or 2"):
        partition_and_expand(torch.zeros(1, 1, 9, 9), 3)
    x = torch.rand(2, 1, 4, 4, requires_grad=True)
    partition_and_expand(x).sum().backward()
    assert x.grad is not None and (x.grad > 0).all()


# --- initialisation -------------------------------------------------------------------------------


def _split(num_classes: int = 3, per_class: int = 6, size: int = 8, seed: int = 5) -> SimpleNamespace:
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images = torch.randint(0, 256, (len(labels), 1, size, size), dtype=torch.uint8, generator=_gen(seed))
    return SimpleNamespace(
        images=images,
        labels=labels,
        num_classes=num_classes,
        mean=torch.tensor([0.45]),
        std=torch.tensor([0.3]),
        class_names=[str(c) for c in range(num_classes)],
    )


def test_mix_pooled_tiles_four_independent_average_pooled_draws():
    draws = [torch.rand(2, 1, 8, 8, generator=_gen(k)) for k in range(4)]
    tiled = pooled_tiles(draws, 2)
    # their l. 142-145: draw 1 top-left, 2 bottom-left, 3 top-right, 4 bottom-right, each 2x2 averaged
    pooled = [F.avg_pool2d(d, 2) for d in draws]
    torch.testing.assert_close(tiled[:, :, :4, :4], pooled[0])
    torch.testing.assert_close(tiled[:, :, 4:, :4], pooled[1])
    torch.testing.assert_close(tiled[:, :, :4, 4:], pooled[2])
    torch.testing.assert_close(tiled[:, :, 4:, 4:], pooled[3])
    with pytest.raises(TgddError, match="multiple of f"):
        pooled_tiles([torch.rand(1, 1, 7, 7)] * 4, 2)

    split = _split()
    sampler = ClassSampler(split, torch.device("cpu"))
    assert images_needed("mix-pooled", 4, 2) == 4  # each draw needs IPC distinct images, not 4*IPC
    init = initial_images(sampler, 3, 2, 2, "mix-pooled", _gen(9))
    replay = _gen(9)
    for c in range(3):  # class by class, quadrant by quadrant, each a fresh random draw
        expected = pooled_tiles([sampler.sample(c, 2, replay) for _ in range(4)], 2)
        assert torch.equal(init[2 * c : 2 * c + 2], expected)


# --- the queue ------------------------------------------------------------------------------------


def _own(**changes) -> IDMSettings:
    base = dict(
        net_num=5, initial_nets=3, net_generate_interval=2, net_push_num=1, match_nets=1, fetch_net_num=2,
        model_train_steps=2, net_batch=4, net_lr=0.05, net_momentum=0.9, net_weight_decay=5e-4,
        ce_weight=0.5, meter_reset_interval=3,
    )  # fmt: skip
    return IDMSettings(**{**base, **changes})


def _settings(own: IDMSettings, **changes) -> DistillSettings:
    base = dict(
        method="idm", ipc=1, iterations=1, factor=2, init="mix-pooled", lr_img=0.2,
        momentum=0.5, real_batch=3, max_syn_per_class=200, dsa_strategy="none", augment_semantics="dsa",
        batched_classes=False, compile=False, log_every=1, checkpoint_every=0,
        image_update="per-class", image_space="normalised", real_batches="fresh",
        own=own.model_dump(mode="json"),
    )  # fmt: skip
    return DistillSettings(**{**base, **changes})


def _ctx(own: IDMSettings, **changes) -> SimpleNamespace:
    split = _split()
    return SimpleNamespace(
        cfg=SimpleNamespace(experts=SimpleNamespace(arch=ARCH)),
        settings=_settings(own, **changes),
        train=split,
        sampler=ClassSampler(split, torch.device("cpu")),
        gen=_gen(6),
        device=torch.device("cpu"),
    )


def _shared(ctx: SimpleNamespace) -> dict:
    space = Space(True, ctx.train.mean, ctx.train.std)
    batches = TrainingBatches(ctx.sampler, ctx.settings.of(IDMSettings).net_batch, space.mean, space.std)
    augment = DiffAugment(ctx.settings.dsa_strategy, "dsa")
    return {"augment": augment, "space": space, "batches": batches, "batched": ctx.settings.batched_classes is True}


def _params(member: QueueNet) -> list[torch.Tensor]:
    return [p.detach().clone() for p in member.net.parameters()]


def test_queue_pushes_pops_resets_and_trains_on_their_cadence():
    own = _own()
    ctx = _ctx(own)
    method = IDM()
    shared = _shared(ctx)
    state = method.initial_state(ctx, shared["space"])
    queue = state.queue
    assert len(queue) == 3  # their hard-coded 3 before the loop
    events: list[tuple] = []
    draws: list[list[int]] = []
    push, reset, draw = queue.push, queue.reset_meters, queue.draw
    queue.push = lambda gen: (events.append(("push", state.iteration)), push(gen))[1]
    queue.reset_meters = lambda: (events.append(("reset", state.iteration)), reset())[1]

    def recording_draw(k, gen):
        draws.append(draw(k, gen))
        return draws[-1]

    queue.draw = recording_draw
    expected = list(queue.members)  # the queue simulated directly: append fresh, pop the oldest when full
    for it in range(10):
        state.iteration = it
        before = [(m, _params(m), m.seen) for m in queue.members]
        accuracy_before = {id(m): m.accuracy() for m in queue.members}
        terms = method.iteration(ctx, state, shared)
        if it % 2 == 0:
            if len(expected) == 5:
                expected.pop(0)
            expected.append(queue.members[-1])
        assert [id(m) for m in queue.members] == [id(m) for m in expected]
        matched, trained = draws[-2], draws[-1]
        assert len(matched) == 1 and len(trained) == 2 and len(set(trained)) == 2
        # the weight is the matched net's meter before this iteration's training (one term per class);
        # 0 for a net pushed this iteration or just reset
        weight = 0.0 if ("reset", it) in events else accuracy_before.get(id(queue.members[matched[0]]), 0.0)
        assert float(terms["accuracy"]) / 3 == pytest.approx(weight)
        trained_members = {id(queue.members[i]) for i in trained}
        for member, params, seen in before:
            if member not in queue.members:
                continue
            moved = any(not torch.equal(a, b) for a, b in zip(params, _params(member), strict=True))
            assert moved == (id(member) in trained_members)  # matching never steps a network
            if id(member) in trained_members:
                reset_now = ("reset", it) in events
                assert member.seen == (0 if reset_now else seen) + 2 * 4  # 2 steps of 4 images
    assert [e for e in events if e[0] == "reset"] == [("reset", 3), ("reset", 6), ("reset", 9)]
    assert [it for kind, it in events if kind == "push"] == [0, 2, 4, 6, 8]
    assert events.index(("reset", 6)) < events.index(("push", 6))  # reset first, as their eval block
    assert len(queue) == 5


def test_training_steps_are_sgd_on_uniform_real_batches_and_count_pre_step_hits():
    own = _own(model_train_steps=3, net_batch=5)
    split = _split()
    sampler = ClassSampler(split, torch.device("cpu"))
    queue = NetQueue(lambda: build_model(ARCH, 1, 8, 3), own, torch.device("cpu"))
    queue.fill(_gen(1))
    batches = TrainingBatches(sampler, own.net_batch, split.mean, split.std)
    member = queue.members[1]
    net = copy.deepcopy(member.net)
    params = [p.detach().clone() for p in net.parameters()]
    buffers = [None] * len(params)
    replay = _gen(2)
    hits = 0
    for _ in range(3):  # written out: their get_images(None, 256), CE, SGD with momentum and weight decay
        pick = torch.randperm(len(split.labels), generator=replay)[:5]
        x = normalize(split.images[pick].float() / 255, split.mean, split.std)
        y = split.labels[pick]
        for p, value in zip(net.parameters(), params, strict=True):
            p.data.copy_(value)
        logits = net(x)
        hits += int((logits.argmax(1) == y).sum())
        grads = torch.autograd.grad(F.cross_entropy(logits, y), list(net.parameters()))
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            d = g + own.net_weight_decay * p
            buffers[i] = d if buffers[i] is None else own.net_momentum * buffers[i] + d
            params[i] = p - own.net_lr * buffers[i]
    queue.train(1, batches, _gen(2))
    for got, want in zip(member.net.parameters(), params, strict=True):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)
    assert member.seen == 15 and int(member.correct) == hits
    assert member.accuracy() == pytest.approx(100.0 * hits / 15)
    assert queue.members[0].seen == 0 and queue.members[0].accuracy() == 0.0  # untrained: weight 0
    member.reset()
    assert member.seen == 0 and member.accuracy() == 0.0


def test_queue_state_round_trips_networks_optimisers_and_meters():
    own = _own()
    build = lambda: build_model(ARCH, 1, 8, 3)  # noqa: E731
    split = _split()
    batches = TrainingBatches(ClassSampler(split, torch.device("cpu")), 4, split.mean, split.std)
    queue = NetQueue(build, own, torch.device("cpu"))
    queue.fill(_gen(1))
    queue.train(0, batches, _gen(2))
    copy_ = NetQueue(build, own, torch.device("cpu"))
    copy_.load_state_dict(queue.state_dict())
    queue.train(0, batches, _gen(3))  # momentum buffers must have come along for the same next step
    copy_.train(0, batches, _gen(3))
    for a, b in zip(queue.members, copy_.members, strict=True):
        assert (a.seen, int(a.correct)) == (b.seen, int(b.correct))
        for p, q in zip(a.net.parameters(), b.net.parameters(), strict=True):
            assert torch.equal(p, q)


# --- the loss and the image update -----------------------------------------------------------------


def _net(seed: int = 0):
    with seeded_init(seed):
        return build_model(ARCH, 1, 8, 3)


def test_class_loss_is_mmd_plus_accuracy_weighted_cross_entropy():
    net = _net().eval()
    real = torch.randn(6, 1, 8, 8, generator=_gen(1))
    syn = torch.randn(4, 1, 8, 8, generator=_gen(2))
    loss, mmd, ce = idm_class_loss(net, real, syn, 2, accuracy=40.0, ce_weight=0.5)
    direct_mmd = ((net.features(real).mean(0) - net.features(syn).mean(0)) ** 2).sum()
    direct_ce = F.cross_entropy(net(syn), torch.full((4,), 2))  # their second full forward
    torch.testing.assert_close(mmd, direct_mmd.detach())
    torch.testing.assert_close(ce, direct_ce.detach())
    torch.testing.assert_close(loss, direct_mmd + 0.5 * 40.0 * direct_ce)  # 0.5 x 40 % = 20 x CE
    assert idm_class_loss(net, real, syn, 2, 0.0, 0.5)[0].item() == pytest.approx(direct_mmd.item())


def test_matching_mode_freezes_weights_only_while_matching():
    net = _net().train()
    with matching_mode(net) as inside:
        assert not inside.training and not any(p.requires_grad for p in inside.parameters())
    assert all(p.requires_grad for p in net.parameters())


@pytest.mark.parametrize("batched", [False, True])
def test_one_pass_steps_the_one_tensor_once_per_class(batched: bool):
    own = _own()
    strategy = "color_crop_cutout_flip_scale_rotate"
    ctx = _ctx(own, dsa_strategy=strategy, batched_classes=batched)
    split, sampler = ctx.train, ctx.sampler
    space = Space(True, split.mean, split.std)
    net = _net(3).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    start = torch.randn(3, 1, 8, 8, generator=_gen(4))  # one stored image per class, normalised
    state = ImageState(start, ipc=1, lr=0.2, momentum=0.5)
    real = FreshBatches(sampler, 3)
    augment = DiffAugment(strategy, "dsa")
    phase = idm_phase(Iteration(ctx, real, augment, space, net, None), accuracy=25.0, ce_weight=0.5)
    terms = run_phase(state, phase, "per-class", batched)

    # written out: per class a fresh real batch, one DSA draw for real and expanded syn, the loss, one step
    # of ONE SGD over every class's rows (momentum moves the classes already stepped)
    replay, x, buf = _gen(6), start.clone(), None
    total = 0.0
    for c in range(3):
        real_c = normalize(sampler.sample(c, 3, replay), split.mean, split.std)
        drawn = augment.draw(1, replay, torch.device("cpu"))
        rows = x[c : c + 1].clone().requires_grad_(True)
        r, s = drawn(real_c), drawn(partition_and_expand(rows))
        loss = ((net.features(r).mean(0) - net.features(s).mean(0)) ** 2).sum() + 0.5 * 25.0 * F.cross_entropy(
            net(s), torch.full((4,), c)
        )
        total += loss.item()
        (g_c,) = torch.autograd.grad(loss, rows)
        g = torch.zeros_like(x)
        g[c : c + 1] = g_c
        buf = g if buf is None else 0.5 * buf + g
        x = x - 0.2 * buf
    if batched:  # the same update; the augmentation draws come in another order
        assert not torch.equal(state.images.detach(), start)
        assert float(terms["accuracy"]) == pytest.approx(75.0)
        return
    torch.testing.assert_close(state.images.detach(), x, rtol=1e-4, atol=1e-5)
    assert float(terms["loss"]) == pytest.approx(total, rel=1e-5)
    assert float(terms["accuracy"]) == pytest.approx(75.0)  # 25 % per class, summed over 3 classes


def _plain_phase(ctx, space: Space, net, real_batch: int):
    it = Iteration(ctx, FreshBatches(ctx.sampler, real_batch), DiffAugment("none"), space, net, None)
    return idm_phase(it, accuracy=30.0, ce_weight=0.5)


def test_batched_pass_is_the_per_class_update():
    own = _own()
    results = []
    for batched in (False, True):
        ctx = _ctx(own, batched_classes=batched, ipc=2)
        space = Space(True, ctx.train.mean, ctx.train.std)
        net = _net(3).eval()
        state = ImageState(torch.randn(6, 1, 8, 8, generator=_gen(4)), ipc=2, lr=0.2, momentum=0.5)
        # a momentum buffer from an earlier pass, so the probe's momentum-only moves matter
        run_phase(state, _plain_phase(ctx, space, net, 3), "per-class", batched=False)
        ctx.gen = _gen(7)
        run_phase(state, _plain_phase(ctx, space, net, 6), "per-class", batched)
        results.append(state.images.detach())
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-5)


# --- card and settings ----------------------------------------------------------------------------


def test_published_settings_per_data_set_and_ipc():
    card = METHODS.get("idm")
    assert card.terms == ("loss", "mmd", "ce", "accuracy") and not card.needs_trajectories
    assert (card.image_update, card.image_space, card.real_batches) == ("per-class", "normalised", "fresh")
    cifar10, cifar100, tiny = (get_dataset(n) for n in ("cifar10", "cifar100", "tinyimagenet"))
    d = card.defaults(1, cifar10)
    assert d == {
        "iterations": 20_000, "factor": 2, "init": "mix-pooled", "lr_img": 0.2, "real_batch": 5000,
        "dsa_strategy": "color_crop_cutout_flip_scale_rotate", "augment_semantics": "dsa",
    }  # fmt: skip
    assert card.defaults(10, cifar10)["real_batch"] == 256 and card.defaults(1, tiny)["real_batch"] == 256
    assert card.defaults(10, tiny)["init"] == "real"  # IDM_tiny.py: one whole real image per stored image

    def own(ipc, spec, **kw):
        r = IDMSettings(**kw).resolve(ipc, spec)
        return (r.ce_weight, r.net_generate_interval, r.model_train_steps, r.meter_reset_interval)

    assert own(1, cifar10) == (0.5, 5, 10, 100)
    assert own(10, cifar10) == (0.5, 30, 10, 100)
    assert own(50, cifar10) == (0.1, 30, 10, 500)
    assert own(1, cifar100) == (0.5, 5, 10, 100)
    assert own(10, cifar100) == (0.1, 30, 50, 100)
    assert own(50, cifar100) == (0.1, 30, 10, 500)
    assert own(1, tiny) == (0.5, 30, 10, 100)
    assert own(10, tiny) == (0.5, 30, 10, 500)
    assert own(50, tiny) == (0.8, 30, 50, 1000)
    digits = get_dataset("digits")  # no command: CIFAR-10's, at the smallest published IPC >= ipc
    assert own(2, digits) == own(10, cifar10) and own(20, digits) == own(100, digits) == own(50, cifar10)
    assert own(1, cifar10, ce_weight=0.3, meter_reset_interval=0) == (0.3, 5, 10, 0)  # set keys win
    fixed = IDMSettings()
    assert (fixed.net_num, fixed.initial_nets, fixed.match_nets, fixed.fetch_net_num, fixed.net_batch) == (
        100, 3, 1, 2, 256
    )  # fmt: skip
    assert (fixed.net_lr, fixed.net_momentum, fixed.net_weight_decay) == (0.01, 0.9, 5e-4)


def test_settings_resolve_through_the_config(tmp_path):
    cfg = tiny_config(tmp_path, "distill.method=idm", "distill.ipc=1", "distill.idm.ce_weight=0.3")
    s = resolve_settings(cfg)
    assert s.own["ce_weight"] == 0.3 and s.own["net_generate_interval"] == 5 and s.real_batch == 5000
    assert s.record()["idm"]["meter_reset_interval"] == 100 and s.init == "mix-pooled"
    with pytest.raises(TgddError, match="unknown config key .distill.idm.eval_interval"):
        tiny_config(tmp_path, "distill.method=idm", "distill.idm.eval_interval=5")


# --- end to end -----------------------------------------------------------------------------------

E2E = [
    "distill.method=idm",
    "distill.ipc=2",
    "distill.checkpoint_every=1",
    "distill.idm.net_generate_interval=1",
    "distill.idm.net_num=4",
    "distill.idm.model_train_steps=2",
    "distill.idm.meter_reset_interval=2",
]


@pytest.fixture(scope="module")
def idm_root(prepared_root: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("idm")
    shutil.copytree(prepared_root / "data", root / "data")
    return root


def _recording_final_state(monkeypatch, final: dict, stop_at: int | None = None) -> None:
    """Checkpointer.after_iteration that keeps the state after the last (4th) iteration in ``final`` and
    requests a stop (as SIGTERM would) after iteration ``stop_at``."""
    original = Checkpointer.after_iteration

    def after_iteration(self, iteration, state):
        if iteration == 4:
            final.update(state())
        if iteration == stop_at:
            self.stop.signal = "SIGTERM"
        return original(self, iteration, state)

    monkeypatch.setattr(Checkpointer, "after_iteration", after_iteration)


@pytest.fixture(scope="module")
def uninterrupted(idm_root: Path):
    cfg = tiny_config(idm_root, *E2E)
    final: dict = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        _recording_final_state(monkeypatch, final)
        syn = load_synthetic(steps.distill(cfg)[0])
    return syn, (paths.synthetic_dir(cfg) / "losses.csv").read_text(), final


def test_end_to_end_is_deterministic_and_records_its_terms(idm_root, uninterrupted):
    syn, losses, _ = uninterrupted
    assert syn.images.shape == (20, 1, 16, 16) and syn.factor == 2
    assert torch.isfinite(syn.images).all()
    settings = syn.meta["settings"]
    assert settings["idm"]["net_num"] == 4 and settings["init"] == "mix-pooled"
    assert settings["image_space"] == "normalised" and settings["lr_img"] == 0.2
    rows = list(csv.DictReader(losses.splitlines()))
    assert list(rows[0]) == ["iteration", "loss", "mmd", "ce", "accuracy"] and len(rows) == 4
    assert float(rows[0]["accuracy"]) == 0.0  # nothing trained before the first image update
    assert all(float(r["ce"]) > 0 and float(r["mmd"]) > 0 for r in rows)
    again = load_synthetic(steps.distill(tiny_config(idm_root, *E2E))[0])
    assert torch.equal(again.images, syn.images)


def _tensors_equal(a: torch.Tensor, b: torch.Tensor, where: str) -> None:
    assert torch.equal(a, b), where


def _assert_same(a, b, where: str = "state", tensors=_tensors_equal) -> None:
    """``a`` and ``b`` of the same structure (dicts, lists, other values equal), their tensors
    compared by ``tensors(a, b, where)`` (default: equal)."""
    if isinstance(a, torch.Tensor):
        tensors(a, b, where)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}", tensors)
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]", tensors)
    else:
        assert a == b, where


def test_stopped_run_resumes_bit_identically(idm_root, uninterrupted, tmp_path, monkeypatch):
    shutil.copytree(idm_root / "data", tmp_path / "data")
    cfg = tiny_config(tmp_path, *E2E)
    final: dict = {}
    _recording_final_state(monkeypatch, final, stop_at=3)
    with pytest.raises(TgddError, match="stopped by SIGTERM"):
        steps.distill(cfg)
    blob = torch.load(paths.synthetic_dir(cfg) / "checkpoint.pt", weights_only=True)["state"]
    assert blob["iteration"] == 3 and len(blob["queue"]["members"]) == 4  # 3, a push at 0, then pop + push
    assert any(m["seen"] > 0 for m in blob["queue"]["members"])  # meters with counts cross the restart
    _recording_final_state(monkeypatch, final)
    resumed = load_synthetic(steps.distill(cfg)[0])
    syn, losses, expected = uninterrupted
    assert torch.equal(resumed.images, syn.images)
    assert (paths.synthetic_dir(cfg) / "losses.csv").read_text() == losses
    # the whole final state, queue included (networks, momentum buffers, meters), is the same
    _assert_same(final, expected)
