"""M3D: the kernel MMD against a double loop over the samples, the per-class and batched passes, the random
network kept for ``iterations_per_model`` updates, one end-to-end distillation on the tiny digits and a
stopped run resumed bit-identically."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tgdd import paths, steps
from tgdd.augment import DiffAugment
from tgdd.cards import METHODS
from tgdd.cards.m3d import M3DSettings
from tgdd.checkpoint import Checkpointer
from tgdd.data.prepared import ClassSampler, FreshBatches
from tgdd.errors import TgddError
from tgdd.methods.kernel_mmd import kernel_mmd, median_bandwidth, squared_distances
from tgdd.methods.loop import ImageState, Iteration, Space, run_phase
from tgdd.methods.m3d import RandomModelState, _RandomModels, kernel_phase, model_due
from tgdd.methods.matching import DM, mmd_loss
from tgdd.models import build_model
from tgdd.resolve import DistillSettings
from tgdd.runtime import seeded_init
from tgdd.synthetic import load_synthetic

from .conftest import tiny_config

ARCH = "convnet-1-w4"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- the kernel MMD -------------------------------------------------------------------------------


def _loop_mmd(x: torch.Tensor, y: torch.Tensor, k) -> float:
    """The biased MMD^2 written out sample by sample: 1/m^2 sum k(x,x') + 1/n^2 sum k(y,y') - 2/(mn) sum k(x,y)."""
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m)) / m**2
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n)) / n**2
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def _gaussian(sigmas2):
    return lambda a, b: sum(math.exp(-float(((a - b) ** 2).sum()) / (2 * s2)) for s2 in sigmas2)


def test_gaussian_mmd_is_the_double_loop_over_samples():
    x = torch.randn(5, 3, generator=_gen(0), dtype=torch.float64)
    y = torch.randn(4, 3, generator=_gen(1), dtype=torch.float64) + 0.7
    for bandwidths in ([1.5], [0.5, 2.0, 8.0]):
        expected = _loop_mmd(x, y, _gaussian(bandwidths))
        assert kernel_mmd(x, y, "gaussian", bandwidths).item() == pytest.approx(expected, rel=1e-12)
    pooled = torch.cat([x, y])
    d2 = [float(((pooled[i] - pooled[j]) ** 2).sum()) for i in range(9) for j in range(9) if i != j]
    median = sorted(d2)[(len(d2) - 1) // 2]  # torch's median: the lower of the two middle values
    assert median_bandwidth(x, y).item() == pytest.approx(median, rel=1e-12)
    expected = _loop_mmd(x, y, _gaussian([median]))
    assert kernel_mmd(x, y).item() == pytest.approx(expected, rel=1e-12)  # gaussian at the median by default


def test_linear_kernel_is_dms_mean_feature_distance():
    x = torch.randn(6, 4, generator=_gen(2), dtype=torch.float64)
    y = torch.randn(3, 4, generator=_gen(3), dtype=torch.float64)
    linear = kernel_mmd(x, y, "linear")
    assert linear.item() == pytest.approx(_loop_mmd(x, y, lambda a, b: float(a @ b)), rel=1e-12)
    torch.testing.assert_close(linear, mmd_loss(x, y))


def test_mmd_vanishes_on_the_same_sample_and_separates_higher_moments():
    x = torch.randn(8, 2, generator=_gen(4), dtype=torch.float64)
    assert kernel_mmd(x, x.clone(), "gaussian", [1.0]).item() == pytest.approx(0.0, abs=1e-14)
    # same mean, other spread: DM's distance cannot tell them apart, the Gaussian MMD does
    centred = x - x.mean(0)
    assert kernel_mmd(centred, 3 * centred, "linear").item() == pytest.approx(0.0, abs=1e-12)
    assert kernel_mmd(centred, 3 * centred, "gaussian", [1.0]).item() > 0.05
    with pytest.raises(ValueError, match="unknown kernel"):
        kernel_mmd(x, x, "cosine")


def test_gradient_is_finite_where_synthetic_rows_coincide():
    real = torch.randn(6, 5, generator=_gen(5))
    syn = torch.randn(1, 5, generator=_gen(6)).repeat(3, 1).requires_grad_(True)  # zero distances inside syn
    kernel_mmd(real, syn).backward()
    assert torch.isfinite(syn.grad).all() and syn.grad.abs().sum() > 0
    d = squared_distances(syn.detach(), syn.detach())
    assert (d >= 0).all() and d.diagonal().abs().max() < 1e-5


# --- the passes over the classes ----------------------------------------------------------------------


def _split(num_classes: int = 3, per_class: int = 6, size: int = 8) -> SimpleNamespace:
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images = torch.randint(0, 256, (len(labels), 1, size, size), dtype=torch.uint8, generator=_gen(7))
    return SimpleNamespace(
        images=images, labels=labels, num_classes=num_classes, mean=torch.tensor([0.45]), std=torch.tensor([0.3])
    )


def _ctx(own: M3DSettings, **changes) -> SimpleNamespace:
    base = dict(
        method="m3d", ipc=2, iterations=1, factor=1, init="real", lr_img=0.5, momentum=0.5, real_batch=4,
        max_syn_per_class=200, dsa_strategy="none", augment_semantics="idc", batched_classes=False,
        compile=False, log_every=1, checkpoint_every=0, image_update="per-class", image_space="pixels",
        real_batches="fresh", own=own.model_dump(mode="json"),
    )  # fmt: skip
    split = _split()
    return SimpleNamespace(
        cfg=SimpleNamespace(experts=SimpleNamespace(arch=ARCH)),
        settings=DistillSettings(**{**base, **changes}),
        train=split,
        sampler=ClassSampler(split, torch.device("cpu")),
        gen=_gen(8),
        device=torch.device("cpu"),
    )


def _net(seed: int = 0) -> torch.nn.Module:
    with seeded_init(seed):
        return build_model(ARCH, 1, 8, 3)


def _pass(ctx, net, batched: bool) -> tuple[torch.Tensor, dict]:
    space = Space(False, ctx.train.mean, ctx.train.std)
    state = ImageState(torch.rand(6, 1, 8, 8, generator=_gen(9)), ipc=2, lr=0.5, momentum=0.5)
    own = ctx.settings.of(M3DSettings)
    first = Iteration(ctx, FreshBatches(ctx.sampler, 4), DiffAugment("none"), space, net, None)
    run_phase(state, kernel_phase(first, own), "per-class", batched=False)  # momentum buffers for the probe
    ctx.gen = _gen(10)
    it = Iteration(ctx, FreshBatches(ctx.sampler, 4), DiffAugment("none"), space, net, None)
    terms = run_phase(state, kernel_phase(it, own), "per-class", batched)
    return state.images.detach(), terms


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
def test_batched_pass_is_the_per_class_update(kernel):
    own = M3DSettings(kernel=kernel)
    net = _net(3).eval()
    per_class, t1 = _pass(_ctx(own), net, batched=False)
    batched, t2 = _pass(_ctx(own), net, batched=True)
    torch.testing.assert_close(per_class, batched, rtol=1e-4, atol=1e-5)
    assert float(t1["mmd"]) == pytest.approx(float(t2["mmd"]), rel=1e-4) and float(t1["mmd"]) > 0


def test_per_class_loss_is_the_kernel_mmd_of_the_class_features():
    ctx = _ctx(M3DSettings(bandwidths=[2.0]))
    net = _net(4).eval()
    space = Space(False, ctx.train.mean, ctx.train.std)
    it = Iteration(ctx, FreshBatches(ctx.sampler, 4), DiffAugment("none"), space, net, None)
    images = torch.rand(2, 1, 8, 8, generator=_gen(11))
    ctx.gen = _gen(12)
    loss, terms = kernel_phase(it, ctx.settings.of(M3DSettings)).one(1, images)
    # the same draw, by hand: class 1's fresh real batch (normalised), its images normalised, the double loop
    ctx.gen = _gen(12)
    real = FreshBatches(ctx.sampler, 4).next(1, ctx.gen)
    with torch.no_grad():
        fr = net.features(space.network_input(real)).double()
        fs = net.features(space.network_input(images)).double()
    assert loss.item() == pytest.approx(_loop_mmd(fr, fs, _gaussian([2.0])), rel=1e-5)
    assert terms["loss"].item() == terms["mmd"].item() == loss.item()


# --- iteration per random model -----------------------------------------------------------------------


def _weights(net: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_a_random_network_serves_iterations_per_model_updates():
    assert [model_due(i, 3) for i in range(7)] == [True, False, False, True, False, False, True]
    ctx = _ctx(M3DSettings(iterations_per_model=2))
    state = RandomModelState(None, real=None)
    picker, nets = _RandomModels(state), (_net(0), _net(1))
    seen = []
    for i in range(5):
        state.iteration = i
        extractor, expert = picker.networks(ctx, nets)
        assert extractor is nets[0] and expert is None
        seen.append((state.model_seed, _weights(extractor)))
    assert seen[0][0] == seen[1][0] and _same(seen[0][1], seen[1][1])
    assert seen[2][0] == seen[3][0] and _same(seen[2][1], seen[3][1])
    assert len({s for s, _ in seen}) == 3 and not _same(seen[1][1], seen[2][1])
    # a resumed run (another picker, a network with other weights) rebuilds the state's network
    state.iteration = 5  # not due: the seed of iteration 4 serves it
    other = (_net(5), _net(6))
    _RandomModels(state).networks(ctx, other)
    assert _same(_weights(other[0]), seen[4][1])


def test_one_update_per_model_draws_dms_networks():
    ctx_dm, ctx_m3d = _ctx(M3DSettings()), _ctx(M3DSettings(iterations_per_model=1))
    state = RandomModelState(None, real=None)
    picker = _RandomModels(state)
    for i in range(3):
        state.iteration = i
        ours = _weights(picker.networks(ctx_m3d, (_net(0), _net(1)))[0])
        dms = _weights(DM().networks(ctx_dm, (_net(0), _net(1)))[0])
        assert _same(ours, dms)


# --- card, end to end, resume -------------------------------------------------------------------------


def test_card_defaults_and_settings_resolve_through_the_config(tmp_path):
    from tgdd.resolve import resolve_settings

    card = METHODS.get("m3d")
    assert card.image_update == "per-class" and card.image_space == "pixels" and card.real_batches == "epochs"
    assert not card.needs_trajectories and card.terms == ("loss", "mmd")
    cfg = tiny_config(tmp_path, "distill.method=m3d", "distill.ipc=10", "distill.iterations=null")
    s = resolve_settings(cfg)
    assert (s.iterations, s.factor, s.init, s.real_batch) == (10_000, 2, "mix", 128)
    assert s.lr_img == pytest.approx(0.1) and s.augment_semantics == "idc"
    assert s.own == {"kernel": "gaussian", "bandwidths": "median", "iterations_per_model": 1}
    cfg = tiny_config(tmp_path, "distill.method=m3d", "distill.m3d.bandwidths=[0.5,4]")
    assert resolve_settings(cfg).of(M3DSettings).bandwidths == [0.5, 4.0]
    with pytest.raises(Exception, match="bandwidths"):
        tiny_config(tmp_path, "distill.method=m3d", "distill.m3d.bandwidths=[0]")


E2E = [
    "distill.method=m3d",
    "distill.ipc=2",
    "distill.checkpoint_every=1",
    "distill.iterations=4",
    "distill.real_batch=16",
    "distill.m3d.iterations_per_model=2",
]


@pytest.fixture(scope="module")
def m3d_root(tmp_path_factory, prepared_root) -> Path:
    root = tmp_path_factory.mktemp("m3d")
    shutil.copytree(prepared_root / "data", root / "data")
    return root


def _recording_final_state(monkeypatch, final: dict, stop_at: int | None = None) -> None:
    """Checkpointer.after_iteration keeping the state after the 4th iteration in ``final`` and asking for a
    stop (as SIGTERM does) after iteration ``stop_at``."""
    original = Checkpointer.after_iteration

    def after_iteration(self, iteration, state):
        if iteration == 4:
            final.update(state())
        if iteration == stop_at:
            self.stop.signal = "SIGTERM"
        return original(self, iteration, state)

    monkeypatch.setattr(Checkpointer, "after_iteration", after_iteration)


@pytest.fixture(scope="module")
def uninterrupted(m3d_root: Path):
    cfg = tiny_config(m3d_root, *E2E)
    final: dict = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        _recording_final_state(monkeypatch, final)
        syn = load_synthetic(steps.distill(cfg)[0])
    return syn, (paths.synthetic_dir(cfg) / "losses.csv").read_text(), final


def test_end_to_end_moves_the_images_and_records_its_terms(m3d_root, uninterrupted):
    syn, losses, final = uninterrupted
    assert syn.images.shape == (20, 1, 16, 16) and syn.factor == 2
    assert torch.isfinite(syn.images).all()
    settings = syn.meta["settings"]
    assert settings["m3d"] == {"kernel": "gaussian", "bandwidths": "median", "iterations_per_model": 2}
    assert settings["init"] == "mix" and settings["image_update"] == "per-class"
    rows = list(csv.DictReader(losses.splitlines()))
    assert list(rows[0]) == ["iteration", "loss", "mmd"] and len(rows) == 4
    assert all(0 < float(r["mmd"]) <= 2 for r in rows)  # one Gaussian kernel: MMD^2 in [0, 2]
    start = load_synthetic(
        steps.distill(tiny_config(m3d_root, *E2E, "distill.iterations=0", "paths.results=" + str(m3d_root / "r0")))[0]
    )
    assert not torch.equal(start.images, syn.images)
    assert isinstance(final["model_seed"], int)
    again = load_synthetic(steps.distill(tiny_config(m3d_root, *E2E))[0])
    assert torch.equal(again.images, syn.images)


def _assert_same(a, b, where: str = "state") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_run_stopped_inside_a_networks_updates_resumes_bit_identically(m3d_root, uninterrupted, tmp_path, monkeypatch):
    shutil.copytree(m3d_root / "data", tmp_path / "data")
    cfg = tiny_config(tmp_path, *E2E)
    final: dict = {}
    _recording_final_state(monkeypatch, final, stop_at=3)  # iteration 3 reuses the network drawn at 2
    with pytest.raises(TgddError, match="stopped by SIGTERM"):
        steps.distill(cfg)
    blob = torch.load(paths.synthetic_dir(cfg) / "checkpoint.pt", weights_only=True)["state"]
    assert blob["iteration"] == 3 and isinstance(blob["model_seed"], int)
    _recording_final_state(monkeypatch, final)
    resumed = load_synthetic(steps.distill(cfg)[0])
    syn, losses, expected = uninterrupted
    assert torch.equal(resumed.images, syn.images)
    assert (paths.synthetic_dir(cfg) / "losses.csv").read_text() == losses
    _assert_same(final, expected)
