import numpy as np
import pytest
import torch

from tgdd.augment import GROUPS, TRANSFORMS, DiffAugment, DSAParams, cutmix
from tgdd.dsa_strategy import without_flip


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("group", list(GROUPS))
def test_siamese_applies_one_draw_to_both_batches(group):
    aug = DiffAugment(group)
    x = torch.rand(5, 3, 16, 16)
    a, b = aug.siamese(x, x.clone(), gen=_gen())
    assert torch.equal(a, b)
    # one draw for the whole batch: identical images stay identical
    same = torch.rand(1, 3, 16, 16).expand(4, 3, 16, 16).contiguous()
    (out,) = aug.siamese(same, gen=_gen(1))
    assert torch.allclose(out, out[:1].expand_as(out))


@pytest.mark.parametrize("group", list(GROUPS))
def test_gradients_reach_input_pixels(group):
    x = torch.rand(3, 3, 16, 16, requires_grad=True)
    out = DiffAugment(group)(x, _gen())
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_explicit_generator_makes_draws_repeatable():
    aug = DiffAugment("color_crop_cutout_flip_scale_rotate")
    x = torch.rand(4, 3, 16, 16)
    assert torch.equal(aug(x, _gen(7)), aug(x, _gen(7)))
    assert not torch.equal(aug(x, _gen(7)), aug(x, _gen(8)))


def test_crop_is_an_integer_shift_with_zero_fill():
    x = torch.arange(64.0).view(1, 1, 8, 8)
    # r chosen so that ty = +1, tx = -1 at 8 px (shift range is +-1)
    r = torch.tensor([[2.5 / 3, 0.5 / 3]])
    out = TRANSFORMS["crop"].apply(x, r, DSAParams())
    expected = torch.zeros_like(x)
    expected[0, 0, :7, 1:] = x[0, 0, 1:, :7]
    assert torch.equal(out, expected)


def test_cutout_zeroes_a_square_of_half_the_size():
    x = torch.ones(1, 1, 16, 16)
    r = torch.tensor([[0.5, 0.5]])  # centre
    out = TRANSFORMS["cutout"].apply(x, r, DSAParams())
    assert int((out == 0).sum()) == 8 * 8


def test_colour_formulas_match_dsa():
    p = DSAParams()
    x = torch.rand(2, 3, 4, 4)
    r = torch.tensor([[0.25], [0.75]])
    assert torch.allclose(TRANSFORMS["brightness"].apply(x, r, p), x + (r.view(-1, 1, 1, 1) - 0.5) * p.brightness)
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(TRANSFORMS["contrast"].apply(x, r, p), (x - m) * (r.view(-1, 1, 1, 1) + p.contrast) + m)


def test_flip_and_identity_scale():
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(TRANSFORMS["flip"].apply(x, torch.zeros(2, 1), DSAParams()), x.flip(3))
    # r giving s = 1 on both axes is the identity
    p = DSAParams()
    r_one = torch.full((2, 2), (1 - 1 / p.scale) / (p.scale - 1 / p.scale))
    assert torch.allclose(TRANSFORMS["scale"].apply(x, r_one, p), x, atol=1e-5)


def test_without_flip():
    assert without_flip("color_crop_flip_scale_rotate") == "color_crop_scale_rotate"
    assert without_flip("flip") == "none"


def test_cutmix_mixes_a_box_and_reports_its_fraction():
    x = torch.cat([torch.zeros(1, 1, 16, 16), torch.ones(1, 1, 16, 16)])
    y = torch.tensor([0, 1])
    mixed, ya, yb, lam = cutmix(x, y, np.random.default_rng(3), 1.0, _gen(0))
    assert torch.equal(ya, y)
    for i in range(2):
        kept = (mixed[i] == x[i]).float().mean().item()
        if not torch.equal(yb[i : i + 1], y[i : i + 1]):
            assert kept == pytest.approx(lam)


@pytest.mark.parametrize("strategy", ["color_crop_cutout", "color_crop_cutout_flip_scale_rotate", "none"])
def test_per_group_siamese_equals_one_siamese_call_per_group(strategy):
    """The batched path gives every group exactly what a separate siamese call with its draw gives."""
    aug = DiffAugment(strategy)
    groups = 5
    real = torch.rand(groups * 3, 3, 16, 16)
    syn = torch.rand(groups * 2, 3, 16, 16)
    real_groups = torch.arange(groups).repeat_interleave(3)
    syn_groups = torch.arange(groups).repeat_interleave(2)
    out_real, out_syn = aug.siamese_per_group((real, syn), (real_groups, syn_groups), groups, gen=_gen(4))
    reference = _gen(4)
    draws = [aug.draw(1, reference, real.device) for _ in range(groups)] if aug.enabled else None
    for g in range(groups):
        r, s = real[real_groups == g], syn[syn_groups == g]
        if draws is not None:
            r, s = draws[g](r), draws[g](s)
        assert torch.allclose(out_real[real_groups == g], r, atol=1e-6)
        assert torch.allclose(out_syn[syn_groups == g], s, atol=1e-6)


def test_per_group_siamese_passes_gradients():
    x = torch.rand(6, 1, 8, 8, requires_grad=True)
    (out,) = DiffAugment("color_crop_cutout").siamese_per_group((x,), (torch.tensor([0, 0, 1, 1, 2, 2]),), 3, _gen())
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
