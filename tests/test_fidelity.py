"""Each mechanism of the authors' code (docs/fidelity.md) pinned to a direct computation written from
the facts of that code: the `mix` start, the real-batch order, the augmentation semantics, the
one-tensor image optimiser, the schedules, the decode padding."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tgdd.augment import TRANSFORMS, DiffAugment, DSAParams
from tgdd.data.prepared import EpochBatches, FreshBatches
from tgdd.methods.loop import ImageState, Phase, run_phase
from tgdd.protocols import PROTOCOLS, SCHEDULES, TrainSettings
from tgdd.synthetic import decode, initial_images, tile


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class _Sampler:
    """A ClassSampler over two hand-made classes: every pixel of an image = 100 * class + its position
    within the class (so < 100 images a class)."""

    def __init__(self, sizes: list[int], size: int = 4) -> None:
        from tgdd.data.prepared import ClassSampler

        labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
        order = torch.randperm(len(labels), generator=_gen(9))  # classes interleaved in file order
        labels = labels[order]
        position = torch.zeros(len(labels), dtype=torch.long)
        for c in range(len(sizes)):
            position[labels == c] = torch.arange(sizes[c])
        values = (100 * labels + position).to(torch.uint8)
        images = values.view(-1, 1, 1, 1).expand(-1, 1, size, size).contiguous()
        split = SimpleNamespace(images=images, labels=labels, num_classes=len(sizes))
        self.inner = ClassSampler(split, torch.device("cpu"))

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _values(images: torch.Tensor) -> list[int]:
    """Position of each image within its class (see _Sampler), from a constant image."""
    return [round(float(x.flatten()[0]) * 255) % 100 for x in images]


# --- initialisation --------------------------------------------------------------------------------


def test_mix_tiles_the_first_images_of_each_class_nearest_downsized_in_the_authors_positions():
    """IDC's Synthesizer.init('mix'): class c reads cls_idx[c][:ipc*f*f]; tile k = i*f + j of stored
    image m is image k*ipc + m, F.interpolate(size=tile) (nearest) into rows/cols of the layout."""
    sampler = _Sampler([9, 9])
    ipc, f = 2, 2
    out = initial_images(sampler, 2, ipc, f, "mix", _gen())
    for c in range(2):
        first = sampler.first(c, ipc * f * f)
        assert _values(first) == list(range(8))  # the first 8 in the data set's order
        for m in range(ipc):
            stored = out[c * ipc + m]
            for k in range(4):
                i, j = divmod(k, 2)
                expected = F.interpolate(first[k * ipc + m : k * ipc + m + 1], size=(2, 2), mode="nearest")[0]
                assert torch.equal(stored[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2], expected)


def test_mix_with_an_odd_size_gives_the_first_tiles_one_more_pixel():
    """s = H // f, the first H % f tiles along each axis are s + 1 px (IDC's h_r, w_r)."""
    images = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 7, 7).contiguous()
    out = tile(images, 2)[0, 0]
    assert torch.equal(out[:4, :4], torch.full((4, 4), 0.0)) and torch.equal(out[:4, 4:], torch.full((4, 3), 1.0))
    assert torch.equal(out[4:, :4], torch.full((3, 4), 2.0)) and torch.equal(out[4:, 4:], torch.full((3, 3), 3.0))
    # nearest, not an average: a checkerboard keeps pure values
    board = (torch.arange(16).view(4, 4) % 2 + torch.arange(16).view(4, 4) // 4 % 2) % 2
    small = tile(board.float().view(1, 1, 4, 4).repeat(4, 1, 1, 1), 2)
    assert set(small.unique().tolist()) <= {0.0, 1.0}


def test_initialisations_pick_first_or_seeded_random_images():
    sampler = _Sampler([30, 30])
    first = initial_images(sampler, 2, 3, 1, "real-first", _gen())
    assert _values(first[:3]) == [0, 1, 2]
    assert torch.equal(initial_images(sampler, 2, 3, 1, "mix", _gen()), first)  # f = 1: mix is the first IPC
    random_a = initial_images(sampler, 2, 3, 1, "real", _gen(1))
    assert torch.equal(random_a, initial_images(sampler, 2, 3, 1, "real", _gen(1)))  # seeded
    assert not torch.equal(random_a, first)
    mixed_random = initial_images(sampler, 2, 2, 2, "mix-random", _gen(2))
    assert not torch.equal(mixed_random, initial_images(sampler, 2, 2, 2, "mix", _gen(2)))


# --- real batches ----------------------------------------------------------------------------------


def test_epoch_batches_consume_one_shuffled_order_per_class_then_reshuffle():
    """IDC's ClassBatchSampler: SubsetRandomSampler + BatchSampler(min(n, batch), drop_last) repeated."""
    sampler = _Sampler([10, 3])
    batches = EpochBatches(sampler.inner, 4)
    gen, reference = _gen(5), _gen(5)
    seen = [_values(batches.next(0, gen)) for _ in range(5)]
    perm1 = torch.randperm(10, generator=reference).tolist()
    perm2 = torch.randperm(10, generator=reference).tolist()
    perm3 = torch.randperm(10, generator=reference).tolist()
    assert seen == [perm1[0:4], perm1[4:8], perm2[0:4], perm2[4:8], perm3[0:4]]  # the last 2 are dropped
    assert len(set(seen[0] + seen[1])) == 8  # without replacement within an order
    small = [_values(batches.next(1, gen)) for _ in range(2)]  # a class smaller than the batch: whole class
    assert all(sorted(b) == [0, 1, 2] for b in small)


def test_epoch_batches_resume_from_their_state():
    sampler = _Sampler([10])
    a, gen = EpochBatches(sampler.inner, 3), _gen(1)
    a.next(0, gen)
    state, gen_state = a.state_dict(), gen.get_state()
    after = [_values(a.next(0, gen)) for _ in range(4)]
    b, gen_b = EpochBatches(sampler.inner, 3), _gen()
    b.load_state_dict(state)
    gen_b.set_state(gen_state)
    assert [_values(b.next(0, gen_b)) for _ in range(4)] == after


def test_fresh_batches_draw_a_new_subset_every_step():
    sampler = _Sampler([10])
    batches, gen = FreshBatches(sampler.inner, 4), _gen(3)
    draws = [_values(batches.next(0, gen)) for _ in range(50)]
    assert all(len(set(d)) == 4 for d in draws)
    assert any(set(draws[i]) & set(draws[i + 1]) for i in range(49))  # may repeat across steps


# --- augmentation semantics ------------------------------------------------------------------------

COLOR = ("brightness", "saturation", "contrast")


def _combinations(strategy: str, semantics: str, draws: int = 600) -> Counter:
    aug, gen = DiffAugment(strategy, semantics), _gen(0)
    return Counter(aug.draw(1, gen, torch.device("cpu")).transforms for _ in range(draws))


def test_idc_matching_strategy_applies_color_crop_and_cutout_on_every_call():
    assert set(_combinations("color_crop_cutout", "idc")) == {(*COLOR, "crop", "cutout")}


def test_idc_evaluation_strategy_is_flip_color_and_one_geometric_op():
    seen = _combinations("color_crop_flip_scale_rotate", "idc")
    assert set(seen) == {("flip", *COLOR, op) for op in ("crop", "scale", "rotate")}
    assert min(seen.values()) > 600 / 3 * 0.8  # the geometric op is uniform


def test_idc_expert_strategy_is_color_then_crop():
    assert set(_combinations("color_crop", "idc")) == {(*COLOR, "crop")}
    assert set(_combinations("crop_color", "idc")) == {(*COLOR, "crop")}  # the order is IDC's, not the string's


def test_dsa_semantics_apply_one_group_per_call():
    seen = _combinations("color_crop_cutout_flip_scale_rotate", "dsa")
    assert set(seen) == {COLOR, ("crop",), ("cutout",), ("flip",), ("scale",), ("rotate",)}
    assert set(_combinations("color_crop_cutout", "dsa-all")) == {(*COLOR, "crop", "cutout")}


@pytest.mark.parametrize("semantics", ["idc", "dsa"])
def test_siamese_draw_is_shared_by_the_concatenated_real_and_synthetic_batch(semantics):
    """The authors' ``aug(torch.cat([real, syn]))`` with one draw for the batch: applying the draw to
    each part equals applying it to the concatenation."""
    aug = DiffAugment("color_crop_cutout_flip_scale_rotate", semantics)
    real, syn = torch.rand(5, 3, 12, 12), torch.rand(3, 3, 12, 12)
    out_real, out_syn = aug.siamese(real, syn, gen=_gen(4))
    drawn = aug.draw(1, _gen(4), real.device)
    whole = drawn(torch.cat([real, syn]))
    assert torch.allclose(torch.cat([out_real, out_syn]), whole, atol=1e-6)
    assert all(v.shape[0] == 1 for v in drawn.values)  # one parameter draw, not one per image


def test_training_draws_parameters_per_image():
    aug = DiffAugment("color_crop", "idc")
    drawn = aug.draw(6, _gen(2), torch.device("cpu"))
    assert all(v.shape[0] == 6 for v in drawn.values)
    same = torch.rand(1, 1, 16, 16).expand(6, 1, 16, 16).contiguous()
    out = aug(same, _gen(2))
    assert not torch.allclose(out[0], out[1])  # the same image, augmented differently


def test_scale_and_rotate_sample_with_torch_default_align_corners():
    """Both code bases call affine_grid/grid_sample with torch's defaults (align_corners=False)."""
    x = torch.rand(2, 1, 9, 9)
    p = DSAParams()
    r = torch.tensor([[0.1, 0.9], [0.7, 0.3]])
    s = r * (p.scale - 1 / p.scale) + 1 / p.scale
    theta = torch.zeros(2, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = s[:, 0], s[:, 1]
    expected = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
    assert torch.allclose(TRANSFORMS["scale"].apply(x, r, p), expected, atol=1e-6)
    angle = (r[:, 0] - 0.5) * 2 * p.rotate / 180 * torch.pi
    theta = torch.stack(
        [torch.stack([angle.cos(), -angle.sin(), 0 * angle], 1), torch.stack([angle.sin(), angle.cos(), 0 * angle], 1)],
        1,
    )
    expected = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
    assert torch.allclose(TRANSFORMS["rotate"].apply(x, r[:, :1], p), expected, atol=1e-6)


def test_protocols_and_methods_name_their_semantics():
    from tgdd.config import build_config
    from tgdd.resolve import protocol_settings, resolve_settings

    assert PROTOCOLS.get("tgdd").train.augment_semantics == "idc"
    assert PROTOCOLS.get("dc").train.augment_semantics == "dsa"
    digits = build_config({}, ["dataset=digits"])
    assert "flip" not in protocol_settings(digits).augment  # the TGDD code drops flips for digit sets
    assert "flip" in protocol_settings(digits.with_overrides("evaluate.protocol=dc")).augment  # DC's does not
    tgdd, dm = (resolve_settings(build_config({}, [f"distill.method={m}"])) for m in ("tgdd", "dm"))
    assert (tgdd.dsa_strategy, tgdd.augment_semantics) == ("color_crop_cutout", "idc")
    assert (dm.dsa_strategy, dm.augment_semantics) == ("color_crop_cutout_flip_scale_rotate", "dsa")


# --- the image optimiser ---------------------------------------------------------------------------


def _toy_phase(targets: torch.Tensor, ipc: int) -> Phase:
    """Class c's loss 0.5 * ||x_c - t_c||^2 * (c + 1): each class its own gradient scale."""

    def one(c: int, images: torch.Tensor):
        loss = 0.5 * (c + 1) * (images - targets[c * ipc : (c + 1) * ipc]).pow(2).sum()
        return loss, {"loss": loss.detach()}

    def batched(images: torch.Tensor, _drawn=None):
        per = 0.5 * (images - targets).pow(2).flatten(1).sum(1).view(-1, ipc).sum(1)
        weights = torch.arange(1, len(per) + 1, dtype=per.dtype)
        losses = per * weights
        return losses, {"loss": losses.detach().sum()}

    return Phase(one, batched)


def _authors_loop(x: torch.Tensor, targets: torch.Tensor, ipc: int, lr: float, m: float, iterations: int):
    """The authors' update written out: per class, grad is that class's gradient in its rows and
    zero elsewhere; buf = m * buf + grad (buf = grad at the very first step); x -= lr * buf."""
    x, buf, positions = x.clone(), None, []
    classes = len(x) // ipc
    for _ in range(iterations):
        for c in range(classes):
            grad = torch.zeros_like(x)
            rows = slice(c * ipc, (c + 1) * ipc)
            grad[rows] = (c + 1) * (x[rows] - targets[rows])
            buf = grad.clone() if buf is None else m * buf + grad
            x = x - lr * buf
        positions.append(x.clone())
    return positions


@pytest.mark.parametrize("batched", [False, True])
def test_one_tensor_sgd_stepped_per_class_moves_every_class_by_momentum(batched):
    ipc, lr, m = 2, 0.3, 0.5
    start, targets = torch.randn(6, 1, 2, 2, generator=_gen(1)), torch.randn(6, 1, 2, 2, generator=_gen(2))
    expected = _authors_loop(start, targets, ipc, lr, m, iterations=2)
    state = ImageState(start, ipc, lr, m)
    for k in range(2):
        run_phase(state, _toy_phase(targets, ipc), "per-class", batched=batched)
        assert torch.allclose(state.images.detach(), expected[k], atol=1e-6), f"iteration {k + 1}"
    # the momentum really carries over to the other classes: per-tensor SGD per class would differ
    separate = [start[c * ipc : (c + 1) * ipc].clone().requires_grad_(True) for c in range(3)]
    optimizer = torch.optim.SGD(separate, lr=lr, momentum=m)
    for _ in range(2):
        for c, x in enumerate(separate):
            optimizer.zero_grad(set_to_none=True)
            (0.5 * (c + 1) * (x - targets[c * ipc : (c + 1) * ipc]).pow(2).sum()).backward()
            optimizer.step()
    assert not torch.allclose(torch.cat([x.detach() for x in separate]), expected[1], atol=1e-3)


@pytest.mark.parametrize("batched", [False, True])
def test_summed_update_is_one_step_per_iteration(batched):
    """DM: loss = sum over classes, one zero_grad/backward/step per iteration."""
    ipc, lr, m = 2, 0.3, 0.5
    start, targets = torch.randn(6, 1, 2, 2, generator=_gen(3)), torch.randn(6, 1, 2, 2, generator=_gen(4))
    weights = torch.arange(1, 4, dtype=start.dtype).repeat_interleave(ipc).view(-1, 1, 1, 1)
    x, buf = start.clone(), None
    state = ImageState(start, ipc, lr, m)
    for _ in range(2):
        grad = weights * (x - targets)
        buf = grad.clone() if buf is None else m * buf + grad
        x = x - lr * buf
        run_phase(state, _toy_phase(targets, ipc), "summed", batched=batched)
        assert torch.allclose(state.images.detach(), x, atol=1e-6)


# --- schedules, decode -----------------------------------------------------------------------------


@pytest.mark.parametrize(("epochs", "milestones"), [(6, [4, 5]), (7, [4, 5]), (50, [33, 41]), (60, [40, 50])])
def test_idc_milestones_are_integer_epochs(epochs, milestones):
    assert SCHEDULES.get("idc").milestones(epochs) == tuple(milestones)
    assert SCHEDULES.get("idc").trained_epochs(epochs) == epochs


def test_dc_schedule_trains_one_more_epoch_and_restarts_momentum_at_its_step():
    dc = SCHEDULES.get("dc")
    assert dc.trained_epochs(1000) == 1001 and dc.milestones(1000) == (502,) and dc.reset_momentum
    assert dc.milestones(10) == (7,)


@pytest.mark.parametrize("schedule", ["idc", "dc"])
def test_training_follows_the_schedule(schedule, monkeypatch):
    """Epochs trained, the lr of every epoch, and (dc) a fresh momentum buffer after the lr step."""
    import numpy as np

    from tgdd.models import build_model
    from tgdd.train import train_classifier

    settings = TrainSettings(6, 8, 0.1, 0.9, 0.0, schedule, 0.2, "none", "dsa", 0.0)
    model = build_model("convnet-1-w8", 1, 8, 2)
    images, labels = torch.rand(16, 1, 8, 8), torch.arange(2).repeat(8)
    lrs, buffers = [], []

    def record(epoch, m):
        optimizer = m._recorder  # set below
        lrs.append(optimizer.param_groups[0]["lr"])
        buffers.append(bool(optimizer.state))

    class Recording(torch.optim.SGD):  # the training loop's optimiser, kept where `record` finds it
        def __init__(self, params, **kwargs):
            super().__init__(params, **kwargs)
            model._recorder = self

    monkeypatch.setattr(torch.optim, "SGD", Recording)
    train_classifier(model, images, labels, settings, torch.zeros(1), torch.ones(1), _gen(), np.random.default_rng(0),
                     on_epoch_end=record)  # fmt: skip
    expected_epochs = 6 if schedule == "idc" else 7
    assert len(lrs) == expected_epochs
    steps = settings.milestone_epochs()
    expected = [0.1 * 0.2 ** sum(e >= s for s in steps) for e in range(1, expected_epochs + 1)]
    assert lrs == pytest.approx(expected)  # the lr after each epoch: the next epoch's
    if schedule == "dc":
        assert buffers[steps[0] - 1] is False and all(buffers[steps[0] :])  # cleared at the step, rebuilt after


def test_decode_pads_a_ragged_edge_with_one_half():
    """IDC's decode_zoom pads H % f != 0 with value 0.5 before cutting ceil(H/f) px tiles."""
    x = torch.zeros(1, 1, 5, 5)
    out = decode(x, 2)  # tiles of 3 px from a 6 px padded image
    last = F.interpolate(F.pad(x, (0, 1, 0, 1), value=0.5)[:, :, 3:6, 3:6], size=(5, 5), mode="bilinear")
    assert torch.allclose(out[3:4], last) and out[3].max() > 0.2
    assert torch.equal(out[0], torch.zeros(1, 5, 5))


def test_mtt_expert_recipe_is_its_buffer_py():
    """A second recipe, its own section: SGD 0.01, no momentum or weight decay, constant lr, batch
    256, DSA one group per batch with MTT's align_corners, no CutMix, 50 epochs x 100 experts."""
    from tgdd.config import build_config
    from tgdd.paths import experts_dir
    from tgdd.resolve import expert_recipe, expert_settings, num_trajectories

    cfg = build_config({})
    mtt = expert_settings(cfg, "mtt")
    assert (mtt.lr, mtt.momentum, mtt.weight_decay, mtt.batch_size, mtt.epochs) == (0.01, 0.0, 0.0, 256, 50)
    assert mtt.milestone_epochs() == [] and mtt.cutmix_prob == 0.0 and mtt.augment_semantics == "mtt"
    assert DiffAugment(mtt.augment, mtt.augment_semantics).params.align_corners
    assert not DiffAugment(mtt.augment, "dsa").params.align_corners
    assert num_trajectories(cfg, "mtt") == 100 and num_trajectories(cfg) == 5
    assert expert_recipe(cfg, "mtt")["recipe"] == "mtt" and "recipe" not in expert_recipe(cfg)
    assert experts_dir(cfg, "mtt") != experts_dir(cfg) and experts_dir(cfg).parts[-3] == "tgdd"
    changed = build_config({}, ["experts.mtt.lr=0.02"])
    assert expert_recipe(changed) == expert_recipe(cfg)  # the other recipe's trajectories stay valid
    assert expert_recipe(changed, "mtt") != expert_recipe(cfg, "mtt")
