"""FTD against direct computations on tiny tensors (the GSAM step written out, the moving average), its card,
its expert recipe, and end to end on tiny digits (docs/fidelity.md, FTD)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tgdd import cost, paths, steps
from tgdd.cards import METHODS
from tgdd.cards.ftd import FTDSettings, ftd_row
from tgdd.checkpoint import Checkpointer
from tgdd.data.registry import get_dataset
from tgdd.errors import TgddError
from tgdd.gsam import decompose, frozen_running_stats, gsam_step, perturbation
from tgdd.methods.ftd import FTD, ema_update
from tgdd.methods.mtt import MTT
from tgdd.protocols import Sharpness
from tgdd.resolve import expert_settings, resolve_settings, resolved_experts
from tgdd.stacked import train_stacked
from tgdd.synthetic import load_synthetic
from tgdd.train import train_classifier

from .conftest import tiny_config, with_trained_experts
from .test_mtt import _Checkpoints, _ctx, _Stop

# --- GSAM against the update written out --------------------------------------------------------------------


def _linear(seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(3, 2).double()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(5, 3, generator=gen, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1])


def _hand_gsam(w, b, x, y, lr, rho, alpha, adaptive):
    """buffer_FTD.py's GSAM step (gsam.py: perturb_weights, gradient_decompose, unperturb, SGD) written out
    for one linear layer, every parameter as one vector: the update theirs takes, in float64."""

    def grad(w, b):
        w, b = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
        gw, gb = torch.autograd.grad(F.cross_entropy(x @ w.T + b, y), (w, b))
        return torch.cat([gw.reshape(-1), gb])

    theta = torch.cat([w.reshape(-1), b])
    g = grad(w, b)
    if adaptive:  # ASAM: e = rho * theta^2 * g / || |theta| * g ||
        e = rho * theta**2 * g / torch.sqrt(((theta.abs() * g) ** 2).sum())
    else:
        e = rho * g / torch.sqrt((g**2).sum())
    moved = theta + e
    g_p = grad(moved[:6].view(2, 3), moved[6:])
    cos = (g @ g_p) / (g.norm() * g_p.norm())
    g_vertical = g - cos * g.norm() * g_p / g_p.norm()  # the part of g orthogonal to g_p
    assert abs(float(g_vertical @ g_p)) < 1e-12
    return theta - lr * (g_p - alpha * g_vertical)


@pytest.mark.parametrize("adaptive", [True, False])
def test_gsam_step_is_the_update_written_out(adaptive: bool):
    net = _linear(0)
    x, y = _batch()
    w, b = net.weight.detach().clone(), net.bias.detach().clone()
    expected = _hand_gsam(w, b, x, y, lr=0.5, rho=0.3, alpha=0.4, adaptive=adaptive)
    plain = torch.cat([w.reshape(-1), b]) - 0.5 * torch.cat(
        [g.reshape(-1) for g in torch.autograd.grad(F.cross_entropy(net(x), y), (net.weight, net.bias))]
    )
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    loss = gsam_step(
        net, lambda: F.cross_entropy(net(x), y), optimizer, Sharpness(rho=0.3, alpha=0.4, adaptive=adaptive)
    )
    got = torch.cat([net.weight.detach().reshape(-1), net.bias.detach()])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert (got - plain).abs().max() > 1e-3  # not the plain SGD step
    assert loss.item() == pytest.approx(F.cross_entropy(x @ w.T + b, y).item())  # the loss at w


def test_gsam_without_radius_or_gap_term_is_plain_sgd():
    x, y = _batch()
    sgd, sam = _linear(0), _linear(0)
    opt = torch.optim.SGD(sgd.parameters(), lr=0.5)
    F.cross_entropy(sgd(x), y).backward()
    opt.step()
    gsam_step(sam, lambda: F.cross_entropy(sam(x), y), torch.optim.SGD(sam.parameters(), lr=0.5), Sharpness(0.0, 0.0))
    assert torch.equal(sam.weight, sgd.weight) and torch.equal(sam.bias, sgd.bias)
    # alpha = 0: SAM's step, the gradient at w + e (non-adaptive e = rho g / ||g||)
    g = torch.tensor([3.0, 4.0])
    (e,) = perturbation([torch.ones(2)], [g], rho=0.5, adaptive=False)
    torch.testing.assert_close(e, torch.tensor([0.3, 0.4]))
    (e,) = perturbation([torch.tensor([2.0, 1.0])], [g], rho=0.5, adaptive=True)  # rho w^2 g / || |w| g ||
    torch.testing.assert_close(e, 0.5 * torch.tensor([4.0, 1.0]) * g / torch.tensor([6.0, 4.0]).norm())
    (d,) = decompose([g], [torch.tensor([1.0, 0.0])], alpha=0.5)  # g_v = (0, 4): d = (1, 0) - 0.5 * (0, 4)
    torch.testing.assert_close(d, torch.tensor([1.0, -2.0]))


def test_second_pass_leaves_batch_norm_statistics_alone():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 1, 0])
    ref = nn.BatchNorm1d(4)
    ref(net[0](x).detach())  # one forward at w: the running statistics GSAM's step should leave
    gsam_step(net, lambda: F.cross_entropy(net(x), y), torch.optim.SGD(net.parameters(), lr=0.1), Sharpness(0.05, 0.4))
    torch.testing.assert_close(net[1].running_mean, ref.running_mean)
    torch.testing.assert_close(net[1].running_var, ref.running_var)
    assert net[1].momentum == 0.1
    with frozen_running_stats(net):
        assert net[1].momentum == 0.0


def test_training_with_sharpness_steps_gsam(tmp_path):
    """train_classifier with a recipe's sharpness takes gsam_step on each batch it draws."""
    torch.manual_seed(0)
    images, labels = torch.rand(12, 1, 4, 4), torch.arange(12) % 3
    mean, std = torch.tensor([0.5]), torch.tensor([0.25])
    settings = dataclasses.replace(
        expert_settings(tiny_config(tmp_path), "ftd"), epochs=2, batch_size=5, augment="none", lr=0.1
    )
    assert settings.sharpness == Sharpness(rho=0.01, alpha=0.4, adaptive=True)

    def fresh() -> nn.Module:
        torch.manual_seed(3)
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))

    trained = train_classifier(fresh(), images, labels, settings, mean, std, torch.Generator().manual_seed(0),
                               np.random.default_rng(0))  # fmt: skip
    by_hand, gen = fresh().train(), torch.Generator().manual_seed(0)
    optimizer = torch.optim.SGD(by_hand.parameters(), lr=0.1)
    for _ in range(2):
        order = torch.randperm(12, generator=gen)
        for start in range(0, 12, 5):
            idx = order[start : start + 5]
            x = (images[idx] - mean) / std
            gsam_step(by_hand, lambda x=x, idx=idx: F.cross_entropy(by_hand(x), labels[idx]), optimizer,
                      settings.sharpness)  # fmt: skip
    for a, b in zip(trained.parameters(), by_hand.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    plain = train_classifier(fresh(), images, labels, dataclasses.replace(settings, sharpness=None), mean, std,
                             torch.Generator().manual_seed(0), np.random.default_rng(0))  # fmt: skip
    assert not torch.equal(plain[1].weight, trained[1].weight)


# --- the recipe ---------------------------------------------------------------------------------------------


def test_ftd_recipe_is_mtt_buffers_with_gsam_and_leaves_the_other_recipes_as_they_were(tmp_path):
    cfg = tiny_config(tmp_path)
    ftd, mtt = expert_settings(cfg, "ftd"), expert_settings(cfg, "mtt")
    assert dataclasses.replace(ftd, sharpness=None) == mtt  # buffer_FTD.py is buffer.py + GSAM
    assert ftd.sharpness == Sharpness(rho=0.01, alpha=0.4, adaptive=True)  # run_buffer.sh, argparse defaults
    record = resolved_experts(cfg, "ftd")
    assert record["recipe"] == "ftd" and record["sharpness"] == {"rho": 0.01, "alpha": 0.4, "adaptive": True}
    assert "sharpness" not in resolved_experts(cfg, "mtt") and "sharpness" not in resolved_experts(cfg)
    changed = tiny_config(tmp_path, "experts.ftd.rho=0.05")
    assert resolved_experts(changed, "ftd") != record and resolved_experts(changed, "mtt") == resolved_experts(
        cfg, "mtt"
    )


# --- the card -----------------------------------------------------------------------------------------------


def test_card_and_published_settings():
    card = METHODS.get("ftd")
    assert (card.expert_recipe, card.image_space, card.image_update) == ("ftd", "normalised", "summed")
    cifar10, cifar100, tiny = get_dataset("cifar10"), get_dataset("cifar100"), get_dataset("tinyimagenet")
    assert card.defaults(10, cifar10) == {**METHODS.get("mtt").defaults(10, cifar10), "lr_img": 100.0}
    own = FTDSettings().resolve(10, cifar10).model_dump()
    assert own == {
        "syn_steps": 30,
        "expert_epochs": 2,
        "max_start_epoch": 20,
        "batch_syn": 100,
        "lr_teacher": 0.001,
        "lr_lr": 1e-5,
        "expert_selection": "cycle",
        "experts_per_file": 10,
        "ema_decay": 0.9995,
    }  # fmt: skip  (run_distill.sh's CIFAR-10 command)
    c100 = FTDSettings().resolve(10, cifar100)  # the Readme's CIFAR-100 command
    assert (c100.syn_steps, c100.max_start_epoch, c100.lr_teacher, c100.ema_decay) == (20, 40, 0.01, 0.9995)
    assert card.defaults(10, cifar100)["lr_img"] == 1000.0
    assert FTDSettings().resolve(50, cifar100).batch_syn == 1000 and FTDSettings().resolve(1, cifar100).syn_steps == 40
    assert FTDSettings().resolve(1, cifar10).ema_decay == 0.9999 and ftd_row(1, cifar10)["lr_lr"] == 1e-7
    assert FTDSettings().resolve(10, tiny).batch_syn == 500 and card.defaults(1, tiny)["lr_img"] == 10000.0
    fashion, nette = get_dataset("fashion_mnist"), get_dataset("imagenette")
    assert FTDSettings().resolve(10, fashion) == FTDSettings().resolve(10, cifar10)  # CIFAR-10's rows
    assert card.published_row(10, nette) == ("tinyimagenet", 10) and card.published_row(50, tiny) == (
        "tinyimagenet",
        10,
    )
    assert FTDSettings(ema_decay=0.5).resolve(1, cifar10).ema_decay == 0.5
    with pytest.raises(Exception, match="ema_decay"):
        FTDSettings(ema_decay=1.0)


def test_settings_resolve_through_the_config_and_refuse_short_trajectories(tmp_path):
    s = resolve_settings(tiny_config(tmp_path, "distill.method=ftd", "distill.ipc=2", "distill.ftd.ema_decay=0.9"))
    assert (s.lr_img, s.augment_semantics, s.own["ema_decay"], s.own["max_start_epoch"]) == (100.0, "mtt", 0.9, 20)
    keys = ("distill.method=ftd", "distill.ftd.max_start_epoch=3", "distill.ftd.expert_epochs=2")
    with pytest.raises(TgddError, match=r"distill.ftd.max_start_epoch=3.*\(experts.ftd.epochs\)"):
        resolve_settings(tiny_config(tmp_path, *keys, "experts.ftd.epochs=3"))
    assert resolve_settings(tiny_config(tmp_path, *keys, "experts.ftd.epochs=4")).own["max_start_epoch"] == 3


# --- the moving average, on the MTT loop's fake inputs --------------------------------------------------------


def _ftd_ctx(tmp_path, checkpoint, *overrides: str):
    mtt = _ctx(tmp_path, checkpoint, *overrides)
    keys = [o.replace("distill.mtt.", "distill.ftd.") for o in (
        "distill.mtt.syn_steps=3", "distill.mtt.batch_syn=8", "distill.mtt.max_start_epoch=2",
        "distill.mtt.expert_epochs=2", "distill.mtt.experts_per_file=2", "distill.mtt.lr_lr=1e-3", *overrides,
    )]  # fmt: skip
    cfg = tiny_config(tmp_path, "distill.method=ftd", "distill.ipc=2", "experts.arch=convnet-1-w4",
                      "distill.iterations=5", "distill.lr_img=10", *keys)  # fmt: skip
    return dataclasses.replace(mtt, cfg=cfg, settings=resolve_settings(cfg))


def test_ema_update_is_the_average_written_out():
    avg, x = torch.tensor([1.0, -2.0, 4.0]), torch.tensor([3.0, 0.0, 4.0])
    torch.testing.assert_close(ema_update(avg, x, 0.75), torch.tensor([1.5, -1.5, 4.0]))
    assert torch.equal(ema_update(avg, x, 0.0), x)


def test_stored_set_is_the_moving_average_of_the_iterates(tmp_path):
    ckpts, mtt_ckpts = _Checkpoints(), _Checkpoints()
    out = FTD().run(_ftd_ctx(tmp_path, ckpts, "distill.ftd.ema_decay=0.6", "distill.lr_img=1000"))
    mtt = MTT().run(_ctx(tmp_path, mtt_ckpts, "distill.lr_img=1000"))  # the same draws: FTD's iterates are MTT's
    fresh = _ftd_ctx(tmp_path, None)
    average = FTD().initial_state(fresh, FTD().space(fresh)).images.images.detach().clone()  # the initial images
    for k in range(1, 6):
        assert torch.equal(ckpts.states[k]["images"], mtt_ckpts.states[k]["images"])
        average = 0.6 * average + (1.0 - 0.6) * ckpts.states[k]["images"]
        assert torch.equal(ckpts.states[k]["ema"], average)
    torch.testing.assert_close(out.images, average * 0.3 + 0.4)  # stored on the pixel scale
    assert (out.images - mtt.images).abs().max() > 1e-3  # the average, not the last iterate
    assert out.extra == mtt.extra and out.records == mtt.records  # the same matching, the same learned lr


def test_decay_zero_is_mtt_bit_for_bit(tmp_path):
    ftd = FTD().run(_ftd_ctx(tmp_path, None, "distill.ftd.ema_decay=0.0"))
    mtt = MTT().run(_ctx(tmp_path, None))
    assert torch.equal(ftd.images, mtt.images) and ftd.extra == mtt.extra and ftd.records == mtt.records


def test_stopped_run_resumes_bit_identically(tmp_path):
    whole = _Checkpoints()
    expected = FTD().run(_ftd_ctx(tmp_path, whole, "distill.ftd.ema_decay=0.7"))
    stopped = _Checkpoints(stop_at=3)
    with pytest.raises(_Stop):
        FTD().run(_ftd_ctx(tmp_path, stopped, "distill.ftd.ema_decay=0.7"))
    blob = stopped.states[3]
    assert "ema" in blob and not torch.equal(blob["ema"], blob["images"])
    resumed_ckpt = _Checkpoints(resume_blob=blob)
    resumed = FTD().run(_ftd_ctx(tmp_path, resumed_ckpt, "distill.ftd.ema_decay=0.7"))
    assert torch.equal(resumed.images, expected.images)
    assert resumed.extra == expected.extra and resumed.records == expected.records
    for key in ("images", "ema", "syn_lr", "generator"):
        assert torch.equal(resumed_ckpt.states[5][key], whole.states[5][key])


# --- end to end on tiny digits ------------------------------------------------------------------------------

E2E = (
    "distill.method=ftd", "distill.ipc=2", "experts.ftd.num_trajectories=2", "experts.ftd.epochs=3",
    "distill.ftd.syn_steps=3", "distill.ftd.max_start_epoch=2", "distill.ftd.expert_epochs=1",
    "distill.ftd.ema_decay=0.5",
)  # fmt: skip


@pytest.fixture(scope="module")
def ftd_root(prepared_root: Path, tmp_path_factory) -> Path:
    return with_trained_experts(prepared_root, tmp_path_factory, "ftd", *E2E)


def test_end_to_end_trains_gsam_experts_and_distills_the_average(ftd_root: Path):
    cfg = tiny_config(ftd_root, *E2E)
    first = load_synthetic(steps.distill(cfg)[0])
    again = load_synthetic(steps.distill(cfg)[0])
    assert first.images.shape == (20, 1, 16, 16) and torch.isfinite(first.images).all()
    assert torch.equal(first.images, again.images)
    assert first.meta["settings"]["ftd"]["ema_decay"] == 0.5 and first.meta["extra"]["syn_lr"] > 0
    assert first.meta["settings"]["published_row"] == {"dataset": "cifar10", "ipc": 10}  # IPC 2: not published
    blob = torch.load(paths.experts_dir(cfg, "ftd") / "trajectory_00.pt", weights_only=True)
    assert len(blob["snapshots"]) == 4 and blob["identity"]["recipe"]["sharpness"]["rho"] == 0.01
    # GSAM's trajectories are not MTT's: the same recipe without sharpness trains other weights
    assert not paths.experts_dir(cfg, "mtt").exists()


def test_end_to_end_stopped_run_resumes_bit_identically(ftd_root: Path, tmp_path, monkeypatch):
    """A stop requested after iteration 2 (as SIGTERM), then the same command: the same average, losses, lr."""
    cfg = tiny_config(ftd_root, *E2E)
    expected = load_synthetic(steps.distill(cfg)[0])
    losses = (paths.synthetic_dir(cfg) / "losses.csv").read_text()
    shutil.copytree(ftd_root / "data", tmp_path / "data")
    shutil.copytree(ftd_root / "results" / "experts", tmp_path / "results" / "experts")
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
    assert blob["iteration"] == 2 and not torch.equal(blob["ema"], blob["images"])
    monkeypatch.setattr(Checkpointer, "after_iteration", original)
    resumed = load_synthetic(steps.distill(cfg)[0])
    assert torch.equal(resumed.images, expected.images) and resumed.meta["extra"] == expected.meta["extra"]
    assert (paths.synthetic_dir(cfg) / "losses.csv").read_text() == losses


def test_stopped_gsam_expert_resumes_bit_identically(ftd_root: Path, tmp_path, monkeypatch):
    """An FTD expert stopped after its first epoch resumes to the snapshots of the uninterrupted run."""
    expected = torch.load(paths.experts_dir(tiny_config(ftd_root, *E2E), "ftd") / "trajectory_00.pt", weights_only=True)
    shutil.copytree(ftd_root / "data", tmp_path / "data")
    cfg = tiny_config(tmp_path, *E2E)
    original = Checkpointer.after_iteration

    def stop_after_one(self, iteration, state):
        if iteration == 1:
            self.stop.signal = "SIGTERM"
        return original(self, iteration, state)

    monkeypatch.setattr(Checkpointer, "after_iteration", stop_after_one)
    with pytest.raises(TgddError, match="stopped by SIGTERM"):
        steps.experts(cfg, index=0)
    monkeypatch.setattr(Checkpointer, "after_iteration", original)
    steps.experts(cfg, index=0)
    got = torch.load(paths.experts_dir(cfg, "ftd") / "trajectory_00.pt", weights_only=True)
    assert len(got["snapshots"]) == len(expected["snapshots"]) == 4
    for ours, theirs in zip(got["snapshots"], expected["snapshots"], strict=True):
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_gsam_experts_are_never_stacked(ftd_root: Path, tmp_path, caplog):
    """experts.stack=always trains a GSAM recipe one after another (the same files as the separate runs), and
    the stacked training itself refuses sharpness."""
    shutil.copytree(ftd_root / "data", tmp_path / "data")
    cfg = tiny_config(tmp_path, *E2E, "experts.stack=always")
    steps.experts(cfg)
    assert "not stacked: their GSAM steps do not stack" in caplog.text
    for index in range(2):
        name = f"trajectory_{index:02d}.pt"
        ours = torch.load(paths.experts_dir(cfg, "ftd") / name, weights_only=True)
        separate = torch.load(paths.experts_dir(tiny_config(ftd_root, *E2E), "ftd") / name, weights_only=True)
        assert "stacked_networks" not in ours
        for a, b in zip(ours["snapshots"], separate["snapshots"], strict=True):
            assert all(torch.equal(a[k], b[k]) for k in b)
    settings = expert_settings(cfg, "ftd")
    nets = [nn.Linear(2, 2), nn.Linear(2, 2)]
    gens, rngs = [torch.Generator(), torch.Generator()], [np.random.default_rng(0), np.random.default_rng(1)]
    with pytest.raises(ValueError, match="GSAM"):
        train_stacked(nets, torch.rand(4, 1, 2, 2), torch.arange(4) % 2, settings, torch.zeros(1), torch.ones(1),
                      gens, rngs)  # fmt: skip


def test_cost_counts_gsam_twice_and_ftd_iterations_as_mtt(tmp_path):
    cfg = tiny_config(tmp_path, "distill.method=ftd", "experts.ftd.epochs=3", "experts.mtt.epochs=3",
                      "distill.ftd.max_start_epoch=2", "distill.mtt.max_start_epoch=2")  # fmt: skip
    ftd, mtt = cost.trajectory_work(cfg, "ftd"), cost.trajectory_work(cfg, "mtt")
    assert ftd.flops == 2 * mtt.flops > 0 and ftd.train_steps == 2 * mtt.train_steps
    as_mtt = cfg.with_overrides("distill.method=mtt")
    assert cost.distill_work(cfg) == cost.distill_work(as_mtt)  # the same syn_steps and batch_syn here
    assert cost.held_snapshots_bytes(cfg) == cost.held_snapshots_bytes(as_mtt)  # one buffer file's experts
