"""DataDAM against direct computations written from the facts of its authors' code
(main_DataDAM.py, utils.get_attention; docs/fidelity.md, section DataDAM), and end to end on tiny digits."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tgdd import paths, steps
from tgdd.augment import DiffAugment, normalize
from tgdd.cards import METHODS
from tgdd.cards.datadam import DataDAMSettings
from tgdd.config import build_config
from tgdd.data.prepared import ClassSampler, FreshBatches
from tgdd.data.registry import get_dataset
from tgdd.errors import TgddError
from tgdd.methods.datadam import (
    DataDAM,
    attention_blocks,
    attention_map,
    attention_phase,
    class_mean_distance,
    datadam_loss,
    matching_arch,
)
from tgdd.methods.loop import ImageState, Iteration, Space, run_phase
from tgdd.methods.matching import _frozen, has_batch_norm
from tgdd.models import build_model
from tgdd.resolve import DistillSettings, resolve_settings
from tgdd.runtime import seeded_init
from tgdd.synthetic import load_synthetic

from .conftest import tiny_config


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _own(**changes) -> DataDAMSettings:
    return DataDAMSettings(**changes).resolve(10, get_dataset("cifar10"))


# --- the attention map and the loss terms ----------------------------------------------------------


@pytest.mark.parametrize("power", [1.0, 4.0])
def test_attention_map_is_the_l2_normalised_channel_sum_of_powers(power: float):
    """get_attention(f, param=1, exp=p, norm='l2'): A[n, j] = sum_c |f[n, c, j]|^p, then each row
    divided by its Euclidean norm."""
    f = torch.relu(torch.randn(3, 4, 2, 3, generator=_gen(1)))
    f[2] = 0  # an all-zero map stays zero (F.normalize's eps), as in theirs
    out = attention_map(f, power)
    assert out.shape == (3, 6)
    for n in range(2):
        a = [sum(abs(float(f[n, c, j // 3, j % 3])) ** power for c in range(4)) for j in range(6)]
        norm = sum(v * v for v in a) ** 0.5
        assert out[n].tolist() == pytest.approx([v / norm for v in a], rel=1e-5)
    assert torch.equal(out[2], torch.zeros(6))
    # the gradient is the formula's too (at p = 1 the channel sum is taken as an L1 norm)
    f = f.clone().requires_grad_(True)
    weights = torch.randn(3, 6, generator=_gen(4))
    (grad,) = torch.autograd.grad((attention_map(f, power) * weights).sum(), f)
    a = f.abs().pow(power).sum(1).flatten(1)
    direct = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)
    (expected,) = torch.autograd.grad((direct * weights).sum(), f)
    torch.testing.assert_close(grad, expected)


def test_class_mean_distance_is_the_authors_mse_b_per_class():
    """error(real, syn, 'MSE_B'): sum over classes and positions of (class mean of real - class mean
    of syn)^2, with real and syn concatenated class by class."""
    real, syn = torch.randn(3 * 4, 5, generator=_gen(2)), torch.randn(3 * 2, 5, generator=_gen(3))
    real_ids, syn_ids = torch.arange(3).repeat_interleave(4), torch.arange(3).repeat_interleave(2)
    out = class_mean_distance(real, syn, real_ids, syn_ids, 3)
    theirs = (real.reshape(3, 4, -1).mean(1) - syn.reshape(3, 2, -1).mean(1)) ** 2
    torch.testing.assert_close(out, theirs.sum(1))
    # a class with fewer real images (their reshape would fail): its own mean
    ids = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 2])
    out = class_mean_distance(real, syn, ids, syn_ids, 3)
    for k in range(3):
        expected = (real[ids == k].mean(0) - syn[syn_ids == k].mean(0)).pow(2).sum()
        assert float(out[k]) == pytest.approx(float(expected), rel=1e-5)


def _worked_example() -> tuple:
    """A tiny case worked by hand: 2 classes, 2 real images each,
    IPC 1, one attention layer with 2 channels of 1x2 positions ([channel][position]), 2-d embeddings."""
    real = torch.tensor(
        [[[1, 0], [1, 2]], [[2, 0], [0, 0]], [[0, 1], [0, 1]], [[1, 1], [1, 1]]], dtype=torch.float
    ).unsqueeze(2)  # [4, C=2, H=1, W=2]
    syn = torch.tensor([[[0, 3], [0, 0]], [[1, 0], [0, 0]]], dtype=torch.float).unsqueeze(2)
    real_emb = torch.tensor([[1, 2], [3, 4], [0, 1], [1, 1]], dtype=torch.float)
    syn_emb = torch.tensor([[0, 0], [1, 1]], dtype=torch.float)
    real_ids, syn_ids = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1])
    return ([real], real_emb), ([syn], syn_emb), real_ids, syn_ids


@pytest.mark.parametrize(
    ("power", "class_0_mean", "sam", "total"),
    [(1.0, [0.85355, 0.35355], 2.292893, 242.5393), (4.0, [0.56202, 0.49614], 1.716186, 184.8686)],
)
def test_worked_example(power, class_0_mean, sam, total):
    real_taps, syn_taps, real_ids, syn_ids = _worked_example()
    means = attention_map(real_taps[0][0], power).view(2, 2, 2).mean(1)
    assert means[0].tolist() == pytest.approx(class_0_mean, abs=1e-5)
    assert means[1].tolist() == pytest.approx([0.35355, 0.85355], abs=1e-5)
    assert attention_map(syn_taps[0][0], power).tolist() == [[0.0, 1.0], [1.0, 0.0]]
    own = _own(power=power)
    loss, attention, mmd = datadam_loss(real_taps, syn_taps, real_ids, syn_ids, 2, own, blocks=[0])
    assert float(attention.sum()) == pytest.approx(sam, abs=1e-5)
    assert float(mmd.sum()) == pytest.approx(13.25, abs=1e-5) and mmd.tolist() == pytest.approx([13.0, 0.25])
    assert float(loss.sum()) == pytest.approx(total, abs=1e-3)  # 100 * SAM + 100 * 0.01 * MMD


def test_total_loss_weights_and_layers():
    """loss = w * sum over the matched layers of SAM + w * lambda * MMD (the code: w = 100, lambda
    0.01; the paper's form: w = 1), per class; no matched layer leaves the MMD term alone."""
    torch.manual_seed(0)
    maps = [
        torch.relu(torch.randn(6, 3, 4, 4)),
        torch.relu(torch.randn(6, 3, 2, 2)),
        torch.relu(torch.randn(6, 3, 1, 1)),
    ]
    syn_maps = [torch.relu(torch.randn(3, 3, s, s)) for s in (4, 2, 1)]
    real_taps, syn_taps = (maps, torch.randn(6, 5)), (syn_maps, torch.randn(3, 5))
    real_ids, syn_ids = torch.arange(3).repeat_interleave(2), torch.arange(3)

    def sam(b: int) -> torch.Tensor:
        return class_mean_distance(attention_map(maps[b], 1), attention_map(syn_maps[b], 1), real_ids, syn_ids, 3)

    mmd = class_mean_distance(real_taps[1], syn_taps[1], real_ids, syn_ids, 3)
    for own, blocks in [(_own(), [0, 1]), (_own(attention_weight=1.0, task_balance=0.02), [0, 1]), (_own(), [2])]:
        loss, attention, term = datadam_loss(real_taps, syn_taps, real_ids, syn_ids, 3, own, blocks)
        expected_attention = sum(sam(b) for b in blocks)
        torch.testing.assert_close(attention, expected_attention)
        torch.testing.assert_close(term, mmd)
        w, lam = own.attention_weight, own.task_balance
        torch.testing.assert_close(loss, w * expected_attention + w * lam * mmd)
    loss, attention, _ = datadam_loss(real_taps, syn_taps, real_ids, syn_ids, 3, _own(), [])
    assert torch.equal(attention, torch.zeros(3))
    torch.testing.assert_close(loss, 100 * 0.01 * mmd)


def test_blocks_and_network_names():
    assert attention_blocks("all-but-last", 3) == [0, 1]  # the authors' range(len(taps) - 1)
    assert attention_blocks("all-but-last", 1) == []
    assert attention_blocks([3, 1], 3) == [0, 2]
    for bad in ([], [0], [4], [1, 1]):
        with pytest.raises(TgddError, match="attention_layers"):
            attention_blocks(bad, 3)
    assert matching_arch("convnet-3", "batch") == "convnet-3-bn"  # the authors' get_network forces batch norm
    assert matching_arch("convnet-4-w64", "instance") == "convnet-4-in-w64"  # the paper's
    assert matching_arch("convnet-2-bn-w32", "none") == "convnet-2-none-w32"
    with pytest.raises(TgddError, match="ConvNet"):
        matching_arch("resnet10-ap", "batch")


# --- the network and the update ----------------------------------------------------------------------


def _settings(**changes) -> DistillSettings:
    base = dict(
        method="datadam", ipc=2, iterations=1, factor=1, init="real", lr_img=0.7,
        momentum=0.5, real_batch=3, max_syn_per_class=200, dsa_strategy="none", augment_semantics="dsa",
        batched_classes=False, compile=False, log_every=1, checkpoint_every=0,
        image_update="summed", image_space="normalised", real_batches="fresh",
        own=_own(power=1.0).model_dump(mode="json"),
    )  # fmt: skip
    return DistillSettings(**{**base, **changes})


def _ctx(arch: str = "convnet-2-w4", **changes) -> SimpleNamespace:
    labels = torch.arange(3).repeat_interleave(5)
    images = torch.randint(0, 256, (15, 1, 8, 8), dtype=torch.uint8, generator=_gen(5))
    split = SimpleNamespace(images=images, labels=labels, num_classes=3)
    cfg = SimpleNamespace(experts=SimpleNamespace(arch=arch))
    return SimpleNamespace(
        cfg=cfg, settings=_settings(**changes), train=split, sampler=ClassSampler(split, torch.device("cpu")),
        gen=_gen(6), device=torch.device("cpu"),
    )  # fmt: skip


def test_network_is_a_fresh_frozen_batch_norm_convnet_in_training_mode():
    ctx = _ctx("convnet-2-w4")
    method = DataDAM()
    assert method.arch(ctx) == "convnet-2-bn-w4" and method.joint_classes
    nets = tuple(_frozen(build_model(method.arch(ctx), 1, 8, 3)) for _ in range(2))
    first = {k: v.clone() for k, v in method.networks(ctx, nets)[0].state_dict().items()}
    net, expert = method.networks(ctx, nets)
    assert expert is None and has_batch_norm(net) and net.training
    assert not any(p.requires_grad for p in net.parameters())
    assert any(not torch.equal(first[k], v) for k, v in net.state_dict().items())  # fresh every iteration
    replay = _gen(6)
    int(torch.randint(2**62, (1,), generator=replay))
    with seeded_init(int(torch.randint(2**62, (1,), generator=replay))):  # the second draw, seeded
        expected = build_model("convnet-2-bn-w4", 1, 8, 3)
    for key, value in expected.state_dict().items():
        assert torch.equal(net.state_dict()[key], value)
    paper = _ctx("convnet-2-w4", own=_own(norm="instance").model_dump(mode="json"))
    assert method.arch(paper) == "convnet-2-in-w4"


def _authors_loss(net: nn.Module, reals: list[torch.Tensor], syn: torch.Tensor, ipc: int, own: DataDAMSettings):
    """main_DataDAM.py l. 285-310 written out: forward hooks on every ReLU storing a clone, one
    forward of the concatenated real images (detached), one of the synthetic images, MSE_B by
    reshape, every tap but the last, 100 * error per layer + 100 * task_balance * error of the output."""
    store: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: store.append(out.clone()))
        for m in net.body
        if isinstance(m, nn.ReLU)
    ]
    real_out = net.features(torch.cat(reals)).detach()
    real_acts, store[:] = list(store), []
    syn_out = net.features(syn)
    syn_acts = list(store)
    for hook in hooks:
        hook.remove()
    k, n = len(reals), len(reals[0])

    def attention(f: torch.Tensor) -> torch.Tensor:
        a = (f.abs() ** own.power).sum(1).view(len(f), -1)
        return a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def error(r: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return ((r.reshape(k, n, -1).mean(1) - s.reshape(k, ipc, -1).mean(1)) ** 2).sum()

    loss = sum(
        own.attention_weight * error(attention(real_acts[layer].detach()), attention(syn_acts[layer]))
        for layer in range(len(real_acts) - 1)
    )
    return loss + own.attention_weight * own.task_balance * error(real_out, syn_out)


def test_summed_update_is_one_sgd_step_on_the_all_classes_loss():
    """Two iterations against the authors' loop written out: real batches drawn per class, ONE forward
    for all classes' real images and one for all synthetic ones under the batch-norm network in
    training mode (batch statistics over every class), one SGD step with momentum on the loss."""
    ctx = _ctx("convnet-2-w4")
    net = _frozen(build_model("convnet-2-bn-w4", 1, 8, 3))
    mean, std = torch.tensor([0.4]), torch.tensor([0.3])
    space = Space(True, mean, std)
    start = torch.randn(6, 1, 8, 8, generator=_gen(7))
    state = ImageState(start, ipc=2, lr=0.7, momentum=0.5)
    it = Iteration(ctx, FreshBatches(ctx.sampler, 3), DiffAugment("none", "dsa"), space, net, None)
    own = ctx.settings.of(DataDAMSettings)
    replay, x, buf = _gen(6), start.clone(), None
    for _ in range(2):
        terms = run_phase(state, attention_phase(it, own, blocks=[0]), "summed", batched=True)
        reals = [normalize(ctx.sampler.sample(c, 3, replay), mean, std) for c in range(3)]
        x_leaf = x.clone().requires_grad_(True)
        loss = _authors_loss(net, reals, x_leaf, 2, own)
        (grad,) = torch.autograd.grad(loss, x_leaf)
        buf = grad if buf is None else 0.5 * buf + grad
        x = x - 0.7 * buf
        assert float(terms["loss"]) == pytest.approx(loss.item(), rel=1e-4)
        torch.testing.assert_close(state.images.detach(), x, atol=1e-5, rtol=1e-4)
    # class by class, batch norm would normalise each class on its own: another loss
    per_class = sum(_authors_loss(net, [reals[c]], x[2 * c : 2 * c + 2], 2, own) for c in range(3))
    assert abs(float(per_class) - float(_authors_loss(net, reals, x, 2, own))) > 1e-3


def test_defaults_follow_the_published_settings():
    card = METHODS.get("datadam")
    assert (card.image_update, card.image_space, card.real_batches) == ("summed", "normalised", "fresh")
    assert card.terms == ("loss", "attention", "mmd") and not card.needs_trajectories
    cases = [("cifar10", 10, 1.0, 0.01), ("cifar10", 50, 1.0, 0.01), ("cifar100", 100, 10.0, 0.01)]
    cases += [("tinyimagenet", 10, 1.0, 0.01), ("imagenette", 10, 1.0, 0.02)]
    for dataset, ipc, lr, balance in cases:
        cfg = build_config({}, ["distill.method=datadam", f"distill.ipc={ipc}", f"dataset={dataset}"])
        record = resolve_settings(cfg, get_dataset(dataset)).record()
        assert (record["iterations"], record["real_batch"], record["factor"], record["init"]) == (8000, 64, 1, "real")
        assert (record["lr_img"], record["momentum"]) == (lr, 0.5)
        assert (record["dsa_strategy"], record["augment_semantics"]) == ("color_crop_cutout_flip_scale_rotate", "dsa")
        assert record["datadam"] == {
            "power": 1.0, "attention_layers": "all-but-last", "attention_weight": 100.0,
            "task_balance": balance, "norm": "batch",
        }  # fmt: skip
    cfg = build_config({}, ["distill.method=datadam", "distill.datadam.power=4", "distill.datadam.norm=instance"])
    assert resolve_settings(cfg).own["power"] == 4 and resolve_settings(cfg).own["norm"] == "instance"
    with pytest.raises(TgddError, match="norm"):
        build_config({}, ["distill.datadam.norm=layer"])


# --- end to end ------------------------------------------------------------------------------------


def test_end_to_end_on_tiny_digits_is_deterministic(prepared_root: Path, tmp_path: Path):
    shutil.copytree(prepared_root / "data", tmp_path / "data")
    common = ["distill.method=datadam", "distill.ipc=2", "experts.arch=convnet-3-w16"]
    cfg = tiny_config(tmp_path, *common)
    first = load_synthetic(steps.distill(cfg)[0])
    rows = list(csv.DictReader((paths.synthetic_dir(cfg) / "losses.csv").open()))
    again = load_synthetic(steps.distill(cfg)[0])
    # distill.batched_classes changes nothing: DataDAM's one path is its all-classes forward
    batched = load_synthetic(steps.distill(tiny_config(tmp_path, *common, "distill.batched_classes=true"))[0])
    initial = load_synthetic(steps.distill(tiny_config(tmp_path, *common, "distill.iterations=0"))[0])
    assert first.images.shape == (10 * 2, 1, 16, 16) and first.factor == 1
    assert torch.isfinite(first.images).all()
    assert torch.equal(first.images, again.images) and torch.equal(first.images, batched.images)
    assert (first.images - initial.images).abs().max() > 1e-3  # the images moved
    assert list(rows[0]) == ["iteration", "loss", "attention", "mmd"] and len(rows) == 4
    for row in rows:
        assert float(row["attention"]) > 0 and float(row["mmd"]) > 0
        expected = 100 * float(row["attention"]) + 100 * 0.01 * float(row["mmd"])
        assert float(row["loss"]) == pytest.approx(expected, rel=1e-4)
    settings = first.meta["settings"]
    assert settings["datadam"]["norm"] == "batch" and settings["image_update"] == "summed"
