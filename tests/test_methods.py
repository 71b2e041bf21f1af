"""The SPEC §3 formulas and sampling rules against direct computations on tiny tensors."""

from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from tgdd.config import build_config
from tgdd.data.registry import get_dataset
from tgdd.methods import resolve_settings
from tgdd.methods.matching import class_loss, mmd_loss, sample_stages
from tgdd.models import build_model


def test_stage_and_expert_ranges_cover_spec_exactly():
    gen = torch.Generator().manual_seed(0)
    epochs, region = 6, 3
    seen = Counter()
    for _ in range(6000):
        s = sample_stages(gen, num_trajectories=3, epochs=epochs, region=region)
        assert 0 <= s.trajectory < 3
        assert 0 <= s.extractor <= epochs
        assert s.extractor <= s.expert <= min(s.extractor + region - 1, epochs)
        seen[(s.extractor, s.expert)] += 1
    expected = {(j, k) for j in range(epochs + 1) for k in range(j, min(j + region - 1, epochs) + 1)}
    assert set(seen) == expected  # every allowed pair occurs, the expert region includes j itself
    by_stage = Counter(j for (j, _), n in seen.items() for _ in range(n))
    assert min(by_stage.values()) > 0.7 * 6000 / (epochs + 1)  # stage uniform over 0..E


def test_mmd_is_squared_distance_of_mean_features():
    real, syn = torch.randn(7, 5), torch.randn(3, 5)
    direct = sum((real[:, d].mean() - syn[:, d].mean()) ** 2 for d in range(5))
    assert mmd_loss(real, syn).item() == pytest.approx(direct.item(), rel=1e-5)


def test_class_loss_is_mmd_plus_alpha_cross_entropy():
    torch.manual_seed(0)
    ext = build_model("convnet-1-w8", 1, 8, 4).eval()
    exp = build_model("convnet-1-w8", 1, 8, 4).eval()
    real, syn = torch.randn(6, 1, 8, 8), torch.randn(3, 1, 8, 8, requires_grad=True)
    loss, mmd, sdc = class_loss(ext, exp, real, syn, label=2, alpha=2.5)
    direct_mmd = (ext.features(real).mean(0) - ext.features(syn).mean(0)).pow(2).sum()
    direct_ce = F.cross_entropy(exp(syn), torch.full((3,), 2))
    assert mmd.item() == pytest.approx(direct_mmd.item(), rel=1e-5)
    assert sdc.item() == pytest.approx(direct_ce.item(), rel=1e-5)
    assert loss.item() == pytest.approx(direct_mmd.item() + 2.5 * direct_ce.item(), rel=1e-5)
    loss.backward()
    assert syn.grad.abs().sum() > 0
    # no expert (DM): the cross-entropy term vanishes
    loss_dm, _, sdc_dm = class_loss(ext, None, real, syn.detach(), label=2, alpha=0.0)
    assert sdc_dm.item() == 0 and loss_dm.item() == pytest.approx(direct_mmd.item(), rel=1e-5)


@pytest.mark.parametrize(
    ("method", "ipc", "dataset", "expected"),
    [
        (
            "tgdd",
            1,
            "digits",
            {"tgdd.alpha": 2.5, "lr_img": 0.01, "factor": 2, "real_batch": 128, "iterations": 10_000},
        ),
        ("tgdd", 10, "cifar10", {"tgdd.alpha": 2.5, "lr_img": 0.1, "tgdd.expert_region": 7}),
        ("tgdd", 50, "cifar10", {"tgdd.alpha": 0.5, "lr_img": 0.5}),
        ("tgdd", 10, "imagenette", {"lr_img": 1.0}),
        ("dm", 10, "cifar10", {"lr_img": 1.0, "factor": 1, "real_batch": 256, "iterations": 20_000}),
        ("dance", 10, "cifar10", {"dance.calib_weight": 1.0, "dance.calib_passes": 1, "lr_img": 0.1}),
    ],
)
def test_method_defaults_follow_spec(method, ipc, dataset, expected):
    cfg = build_config({}, [f"distill.method={method}", f"distill.ipc={ipc}", f"dataset={dataset}"])
    record = resolve_settings(cfg, get_dataset(dataset)).record()
    for key, value in expected.items():
        section, _, name = key.rpartition(".")
        assert (record[section][name] if section else record[key]) == pytest.approx(value)


def test_explicit_values_win_over_defaults():
    cfg = build_config({}, ["distill.tgdd.alpha=0.7", "distill.factor=1", "distill.iterations=5"])
    settings = resolve_settings(cfg, get_dataset("digits"))
    assert (settings.own["alpha"], settings.factor, settings.iterations) == (0.7, 1, 5)


def test_each_method_has_its_own_validated_section():
    from tgdd.errors import TgddError

    cfg = build_config({}, ["distill.method=dance", "distill.dance.calib_weight=0.5", "distill.tgdd.alpha=3"])
    record = resolve_settings(cfg).record()
    assert record["dance"] == {"calib_weight": 0.5, "calib_passes": 1} and "tgdd" not in record
    with pytest.raises(TgddError, match=r"distill.alpha' is now distill.tgdd.alpha"):
        build_config({}, ["distill.alpha=1"])
    with pytest.raises(TgddError, match=r"distill.dance.calib_weight.*greater than or equal to 0"):
        build_config({}, ["distill.dance.calib_weight=-1"])
    with pytest.raises(TgddError, match=r"Did you mean 'alpha'"):
        build_config({}, ["distill.tgdd.alpah=1"])


@pytest.mark.parametrize("method", ["tgdd", "dm", "dance"])
def test_batched_classes_give_the_per_class_update(method, prepared_root, tmp_path):
    """With the randomness that differs between the two paths switched off (no augmentation,
    whole classes as the real batch), batched and per-class distillation agree."""
    import shutil

    from tgdd import steps
    from tgdd.synthetic import load_synthetic

    from .conftest import tiny_config

    shutil.copytree(prepared_root / "data", tmp_path / "data")
    steps.experts(tiny_config(tmp_path))
    common = [f"distill.method={method}", "distill.ipc=2", "distill.dsa_strategy=none", "distill.real_batch=1000"]
    per_class = load_synthetic(steps.distill(tiny_config(tmp_path, *common))[0]).images
    batched = load_synthetic(steps.distill(tiny_config(tmp_path, *common, "distill.batched_classes=true"))[0]).images
    initial = load_synthetic(steps.distill(tiny_config(tmp_path, *common, "distill.iterations=0"))[0]).images
    assert (per_class - initial).abs().max() > 1e-3  # the images did move
    assert torch.allclose(per_class, batched, atol=1e-5)


def test_segment_mean_is_the_mean_per_group():
    from tgdd.methods.matching import segment_mean

    values, ids = torch.randn(7, 3), torch.tensor([0, 2, 2, 0, 1, 2, 0])
    out = segment_mean(values, ids, 4)
    for g in range(3):
        assert torch.allclose(out[g], values[ids == g].mean(0), atol=1e-6)
    assert torch.equal(out[3], torch.zeros(3))


def test_every_declared_method_has_its_implementation():
    """The cards (torch-free) and the implementations (imported on use) name the same methods."""
    from tgdd.data.registry import get_dataset
    from tgdd.methods import _IMPLEMENTATIONS, METHODS, load_method

    for name in METHODS.names():
        method = load_method(name)
        assert method.__class__.__module__ == METHODS.get(name).module
        assert callable(method.run)
        iterations = METHODS.get(name).defaults(1, get_dataset("digits"))["iterations"]
        assert (iterations > 0) == METHODS.get(name).optimizes_images, name
    assert set(_IMPLEMENTATIONS) == set(METHODS.names())


def test_torch_free_names_agree_with_the_implementations():
    """Cards, config literals and the torch modules name the same mechanisms."""
    import typing

    from tgdd.augment import GROUP_CHOICE
    from tgdd.config import DistillConfig, Semantics
    from tgdd.data.prepared import REAL_BATCHES
    from tgdd.dsa_strategy import SEMANTICS
    from tgdd.methods import IMAGE_SPACES, IMAGE_UPDATES, METHODS
    from tgdd.synthetic import INITIALISATIONS

    init_names = set(typing.get_args(typing.get_args(DistillConfig.model_fields["init"].annotation)[0]))
    assert init_names == set(INITIALISATIONS)
    assert set(typing.get_args(Semantics)) == set(SEMANTICS) == set(GROUP_CHOICE)
    for name in METHODS.names():
        card = METHODS.get(name)
        assert card.image_update in IMAGE_UPDATES and card.image_space in IMAGE_SPACES
        assert card.real_batches in REAL_BATCHES
        defaults = card.defaults(10, get_dataset("cifar10"))
        assert defaults["init"] in INITIALISATIONS and defaults["augment_semantics"] in SEMANTICS


@pytest.mark.slow
def test_compiled_networks_give_the_eager_update(prepared_root, tmp_path):
    """distill.compile=true (torch.compile of the matching networks) changes speed, not the result."""
    import shutil

    from tgdd import steps
    from tgdd.synthetic import load_synthetic

    from .conftest import tiny_config

    shutil.copytree(prepared_root / "data", tmp_path / "data")
    steps.experts(tiny_config(tmp_path))
    common = ["distill.method=tgdd", "distill.ipc=1", "distill.iterations=3"]
    eager = load_synthetic(steps.distill(tiny_config(tmp_path, *common))[0])
    compiled = load_synthetic(steps.distill(tiny_config(tmp_path, *common, "distill.compile=true"))[0])
    assert compiled.meta["settings"]["compile"] is True
    assert torch.allclose(eager.images, compiled.images, atol=1e-4)
