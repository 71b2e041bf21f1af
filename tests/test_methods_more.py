"""DANCE and herding against direct computations on tiny tensors, and end to end on tiny digits."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tgdd import paths, steps
from tgdd.augment import DiffAugment, normalize
from tgdd.cards import METHODS
from tgdd.experts import Trajectories
from tgdd.methods.dance import DANCE, calibration_loss, calibration_phase, interpolate_state
from tgdd.methods.herding import embed, herding_select
from tgdd.methods.loop import ImageState, Iteration, Space, run_phase
from tgdd.methods.matching import _frozen
from tgdd.models import build_model
from tgdd.resolve import DistillSettings
from tgdd.runtime import seeded_init
from tgdd.synthetic import load_synthetic

from .conftest import tiny_config, with_trained_experts

# --- herding ----------------------------------------------------------------------------


def brute_force_herding(features: torch.Tensor, k: int) -> list[int]:
    """Herding written out literally: try every unselected row, keep the best running mean."""
    target = features.mean(0)
    chosen: list[int] = []
    for _ in range(k):
        candidates = [r for r in range(len(features)) if r not in chosen]
        distances = [float((features[[*chosen, r]].mean(0) - target).norm()) for r in candidates]
        chosen.append(candidates[distances.index(min(distances))])
    return chosen


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_herding_matches_brute_force(seed: int):
    features = torch.randn(30, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    picks = herding_select(features, 8)
    assert picks.dtype == torch.long and picks.tolist() == brute_force_herding(features, 8)
    assert len(set(picks.tolist())) == 8
    nearest_to_mean = int((features - features.mean(0)).norm(dim=1).argmin())
    assert int(picks[0]) == nearest_to_mean


def test_herding_all_points_is_a_permutation_and_zero_is_empty():
    features = torch.randn(12, 4, generator=torch.Generator().manual_seed(3))
    assert sorted(herding_select(features, 12).tolist()) == list(range(12))
    assert herding_select(features, 0).tolist() == []
    with pytest.raises(ValueError):
        herding_select(features, 13)


def test_herding_mean_is_closer_than_random_subsets():
    gen = torch.Generator().manual_seed(4)
    features = torch.randn(60, 10, generator=gen)
    target, k = features.mean(0), 5
    herded = float((features[herding_select(features, k)].mean(0) - target).norm())
    random_gaps = [float((features[torch.randperm(60, generator=gen)[:k]].mean(0) - target).norm()) for _ in range(200)]
    assert herded < 0.5 * sum(random_gaps) / len(random_gaps)


def test_embed_batches_like_one_forward():
    model = build_model("convnet-1-w8", 1, 8, 4).eval()
    images = torch.randint(0, 256, (7, 1, 8, 8), dtype=torch.uint8)
    mean, std = torch.tensor([0.4]), torch.tensor([0.3])
    whole = model.features(normalize(images.float() / 255, mean, std))
    torch.testing.assert_close(embed(model, images, mean, std, batch=3), whole.detach())


# --- DANCE ------------------------------------------------------------------------------


def _state(seed: int, arch: str = "convnet-1-bn-w8") -> dict[str, torch.Tensor]:
    with seeded_init(seed):
        model = build_model(arch, 1, 8, 4)
    state = model.state_dict()
    for value in state.values():  # give the integer buffers distinct values per snapshot
        if not value.is_floating_point():
            value.fill_(seed)
    return state


def test_interpolate_state_is_convex_combination_with_exact_endpoints():
    start, end = _state(1), _state(2)
    assert any(not v.is_floating_point() for v in end.values())  # batch norm's counter is covered
    mixed = interpolate_state(start, end, 0.3)
    for key, value in end.items():
        if value.is_floating_point():
            torch.testing.assert_close(mixed[key], 0.3 * start[key] + 0.7 * value)
        else:
            assert torch.equal(mixed[key], value)  # non-float buffers come from the trained end
    for key in end:
        assert torch.equal(
            interpolate_state(start, end, 1.0)[key], start[key] if end[key].is_floating_point() else end[key]
        )
        assert torch.equal(interpolate_state(start, end, 0.0)[key], end[key])


def test_dance_networks_use_the_drawn_interpolation_and_the_trained_expert():
    trajectories = Trajectories([[_state(10 * i + j) for j in range(4)] for i in range(2)], "unused")
    nets = tuple(_frozen(build_model("convnet-1-bn-w8", 1, 8, 4)) for _ in range(2))
    ctx = SimpleNamespace(trajectories=trajectories, gen=torch.Generator().manual_seed(5))
    extractor, expert = DANCE().networks(ctx, nets)
    assert expert is None  # the matching step carries no cross-entropy
    replay = torch.Generator().manual_seed(5)
    i = int(torch.randint(2, (1,), generator=replay))
    lam = float(torch.rand((), generator=replay))
    expected = interpolate_state(trajectories.snapshots[i][0], trajectories.snapshots[i][3], lam)
    for key, value in extractor.state_dict().items():
        torch.testing.assert_close(value, expected[key])
    for key, value in nets[1].state_dict().items():
        assert torch.equal(value, trajectories.snapshots[i][3][key])


def _settings(**changes) -> DistillSettings:
    base = dict(
        method="dance", ipc=2, iterations=1, factor=1, init="mix", lr_img=0.5,
        momentum=0.5, real_batch=4, max_syn_per_class=200, dsa_strategy="none", augment_semantics="idc",
        batched_classes=False, compile=False, log_every=1, checkpoint_every=0,
        image_update="per-class", image_space="pixels", real_batches="epochs",
        own={"calib_weight": 2.0, "calib_passes": 1},
    )  # fmt: skip
    return DistillSettings(**{**base, **changes})


def test_calibration_pass_steps_each_class_on_its_weighted_expert_cross_entropy():
    torch.manual_seed(0)
    expert = _frozen(build_model("convnet-1-w8", 1, 8, 4))
    mean, std = torch.tensor([0.5]), torch.tensor([0.25])
    state = ImageState(torch.rand(8, 1, 8, 8), ipc=2, lr=0.5, momentum=0.5)
    before = state.images.detach().clone()
    ctx = SimpleNamespace(settings=_settings(), gen=torch.Generator(), device=torch.device("cpu"))
    it = Iteration(ctx, None, DiffAugment("none"), Space(False, mean, std), None, None)
    phase = calibration_phase(it, expert)

    def ce(images: torch.Tensor, c: int) -> float:
        return float(F.cross_entropy(expert(normalize(images, mean, std)), torch.full((len(images),), c)))

    loss, terms = phase.one(1, state.images[state.rows(1)])
    direct = calibration_loss(expert, normalize(before[2:4], mean, std), 1).item()
    assert terms["calibration"].item() == pytest.approx(ce(before[2:4], 1), rel=1e-5) == pytest.approx(direct, rel=1e-5)
    assert loss.item() == pytest.approx(2.0 * direct, rel=1e-5) == terms["loss"].item()
    run_phase(state, phase, "per-class", batched=False)
    after = state.images.detach()
    for c in range(4):  # every class moved down its own cross-entropy
        assert ce(after[2 * c : 2 * c + 2], c) < ce(before[2 * c : 2 * c + 2], c)


def test_dance_defaults():
    from tgdd.data.registry import get_dataset

    digits = METHODS.get("dance").defaults(10, get_dataset("digits"))
    assert {k: digits[k] for k in ("iterations", "factor", "real_batch", "init")} == {
        "iterations": 10_000, "factor": 2, "real_batch": 128, "init": "mix"
    }  # fmt: skip
    assert METHODS.get("dance").settings().model_dump() == {"calib_weight": 1.0, "calib_passes": 1}
    assert digits["lr_img"] == pytest.approx(0.1)
    assert (digits["dsa_strategy"], digits["augment_semantics"]) == ("color_crop_cutout", "idc")
    assert METHODS.get("dance").defaults(10, get_dataset("imagenette"))["lr_img"] == pytest.approx(1.0)


# --- end to end -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def with_experts(prepared_root: Path, tmp_path_factory) -> Path:
    return with_trained_experts(prepared_root, tmp_path_factory, "more_methods")


@pytest.mark.parametrize("method", ["dance", "herding"])
def test_end_to_end_shapes_range_and_determinism(with_experts: Path, method: str):
    cfg = tiny_config(with_experts, f"distill.method={method}", "distill.ipc=2")
    first = load_synthetic(steps.distill(cfg)[0])
    again = load_synthetic(steps.distill(cfg)[0])
    assert first.images.shape == (10 * 2, 1, 16, 16)
    # stored as the last step left them (the authors' code does not clamp after it): near [0, 1]
    assert torch.isfinite(first.images).all() and first.images.min() > -0.5 and first.images.max() < 1.5
    assert first.factor == (2 if method == "dance" else 1)
    assert torch.equal(first.images, again.images)
    if method == "dance":  # the calibration pass ran and its cross-entropy is logged under its own name
        rows = list(csv.DictReader((paths.synthetic_dir(cfg) / "losses.csv").open()))
        assert len(rows) == 4 and all(float(r["calibration"]) > 0 for r in rows)
        assert list(rows[0]) == ["iteration", "loss", "mmd", "calibration"]


def test_herding_outputs_herded_real_images_of_each_class(with_experts: Path):
    cfg = tiny_config(with_experts, "distill.method=herding", "distill.ipc=2")
    syn = load_synthetic(steps.distill(cfg)[0])
    train = torch.load(paths.prepared_dir(cfg) / "train.pt", weights_only=True)
    pool = train["images"].float() / 255
    for image, label in zip(syn.images, syn.labels, strict=True):
        same = (pool == image).flatten(1).all(1)
        assert same.any() and int(train["labels"][same.nonzero()[0]]) == int(label)
    # class 3's picks are herding on the trained expert's features
    snapshots = torch.load(paths.experts_dir(cfg) / "trajectory_00.pt", weights_only=True)["snapshots"]
    model = build_model(cfg.experts.arch, 1, 16, 10).eval()
    model.load_state_dict(snapshots[-1])
    members = train["images"][train["labels"] == 3]
    mean, std = torch.tensor(train["mean"]), torch.tensor(train["std"])
    picks = herding_select(embed(model, members, mean, std), 2)
    assert torch.equal(syn.images[6:8], members[picks].float() / 255)
