"""A stacked training of K networks (tgdd.stacked) equals K separate runs of train_classifier:
weights, batch-norm running statistics and test predictions, for every network of the evaluation
zoo, both protocols' augmentation semantics, CutMix on and off and a partial last batch."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from tgdd import steps
from tgdd.freshness import Freshness
from tgdd.models import EXACT, build_model
from tgdd.models.zoo import ALEXNET, VGG11, ZOO, ConvSpec, FeatureClassifier
from tgdd.protocols import PROTOCOLS, TrainSettings
from tgdd.runtime import generator, numpy_rng, seeded_init
from tgdd.stacked import can_stack, stack_refusal, train_stacked, use_stacking
from tgdd.train import train_classifier

from .conftest import tiny_config

# 20 images at batch 8: two full batches and a partial last one of 4.
N_IMAGES, BATCH = 20, 8
FAMILY_NETWORKS = (
    "convnet-2-w8",
    "convnet-2-bn-w8",
    "convnet-2-none-w8",
    "resnet10-ap-w4",
    "resnet10-ap-bn-w4",
    "resnet18-ap-w4",
    "resnet18-ap-bn-w4",
)
ZOO_NETWORKS = (*FAMILY_NETWORKS, *sorted(EXACT))


def scaled(cfg: tuple[ConvSpec, ...], divisor: int) -> tuple[ConvSpec, ...]:
    return tuple(spec if spec == "M" else (max(2, spec[0] // divisor), spec[1]) for spec in cfg)


TINY_ZOO = {
    "resnet": {"width": 4},
    "densenet": {"growth": 2},
    "vgg11": {"cfg": scaled(VGG11, 32)},
    "alexnet": {"cfg": scaled(ALEXNET, 32)},
}
"""Width arguments that shrink the zoo's fixed-size networks (same modules, same forward code,
fewer channels), so that each equivalence test takes seconds."""


def build_network(arch: str, channels: int, size: int, classes: int = 3) -> nn.Module:
    """``arch`` from the registry, or a zoo network of fixed size built narrow (:data:`TINY_ZOO`)."""
    if arch not in ZOO:
        return build_model(arch, channels, size, classes)
    narrow = next(kwargs for prefix, kwargs in TINY_ZOO.items() if arch.startswith(prefix))
    return FeatureClassifier(*ZOO[arch](channels, size, **narrow), classes)


def tiny_data(channels: int, size: int, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random images in [0,1] (default dtype), balanced labels, and held-out test images."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(N_IMAGES, channels, size, size, generator=gen).to(torch.get_default_dtype())
    test = torch.rand(30, channels, size, size, generator=gen).to(torch.get_default_dtype())
    return images, torch.arange(N_IMAGES) % classes, test


def build(arch: str, k: int, channels: int, size: int) -> nn.Module:
    with seeded_init(1000 + k):
        return build_network(arch, channels, size)


def train_both(
    arch: str, settings: TrainSettings, k: int = 2, channels: int = 1, size: int = 8
) -> tuple[list[nn.Module], list[nn.Module], torch.Tensor]:
    """The same K networks trained separately (today's loop) and stacked, and the test images."""
    images, labels, test = tiny_data(channels, size)
    mean, std = torch.full((channels,), 0.4), torch.full((channels,), 0.3)
    separate = [build(arch, i, channels, size) for i in range(k)]
    for i, model in enumerate(separate):
        train_classifier(model, images, labels, settings, mean, std, generator(i, "b"), numpy_rng(i, "c"))
    stacked = train_stacked(
        [build(arch, i, channels, size) for i in range(k)],
        images,
        labels,
        settings,
        mean,
        std,
        [generator(i, "b") for i in range(k)],
        [numpy_rng(i, "c") for i in range(k)],
    )
    return separate, stacked, (test - 0.4) / 0.3


def assert_same_networks(separate, stacked, test, rtol: float, atol: float) -> None:
    """Every parameter and buffer (running statistics, batch counts) and the test logits agree."""
    for one, other in zip(separate, stacked, strict=True):
        assert not other.training
        theirs = other.state_dict()
        for name, value in one.state_dict().items():
            torch.testing.assert_close(theirs[name], value, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")
        with torch.no_grad():
            torch.testing.assert_close(other(test), one.eval()(test), rtol=rtol, atol=atol)
    # the networks were trained apart: the streams are per network
    assert not torch.allclose(
        stacked[0].state_dict()["classifier.weight"], stacked[1].state_dict()["classifier.weight"]
    )


def settings_for(protocol: str, **changes) -> TrainSettings:
    return replace(PROTOCOLS.get(protocol).train, **{"epochs": 3, "batch_size": BATCH, **changes})


@pytest.fixture
def float64():
    """Double precision: the stacked and separate runs then agree to ~1e-12 per step, so the test
    tells a real difference from float rounding (a grouped convolution sums in another order)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


# --- float32, the default ConvNet (instance norm) --------------------------------------------------------------


@pytest.mark.parametrize(
    "protocol,changes",
    [
        ("tgdd", {}),  # IDC semantics, CutMix p0.5, lr steps at 2E//3 and 5E//6
        ("dc", {}),  # DSA semantics (one group per batch, cutout), no CutMix, momentum reset
        ("tgdd", {"cutmix_prob": 1.0}),
        ("tgdd", {"cutmix_prob": 0.0}),
        ("tgdd", {"augment_semantics": "dsa-all"}),
        ("dc", {"augment_semantics": "mtt"}),
        ("tgdd", {"augment": "none"}),
    ],
)
def test_stacked_convnet_equals_separate_runs(protocol, changes):
    separate, stacked, test = train_both("convnet-2-w8", settings_for(protocol, **changes), k=3, channels=3, size=16)
    assert_same_networks(separate, stacked, test, rtol=1e-4, atol=1e-5)


def test_stacked_batch_norm_keeps_per_network_running_statistics():
    settings = settings_for("dc")
    separate, stacked, test = train_both("convnet-2-bn-w8", settings, k=3, channels=3, size=16)
    assert_same_networks(separate, stacked, test, rtol=1e-4, atol=1e-5)
    means = [m.body[1].running_mean for m in stacked]
    assert not torch.allclose(means[0], means[1])  # each network's own statistics, not a shared one
    assert int(stacked[0].body[1].num_batches_tracked) == settings.trained_epochs() * 3  # 3 batches an epoch


# --- float64, every network of the zoo --------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ZOO_NETWORKS)
def test_every_zoo_network_stacks_and_equals_separate_runs(arch, float64):
    settings = replace(settings_for("tgdd", cutmix_prob=0.5), epochs=2)  # lr step after epoch 1
    separate, stacked, test = train_both(arch, settings, k=2, channels=1, size=8)
    assert can_stack(separate[0])
    assert_same_networks(separate, stacked, test, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("arch", ZOO_NETWORKS)
def test_one_stacked_step_equals_a_separate_step_to_double_rounding(arch, float64):
    """One step (the whole set as one batch): no room for amplification, so the agreement is that of
    float64 sums in another order. (Over many steps, instance norm of 2 px maps amplifies rounding:
    resnet18 at 8 px, 5e-16 after one step, 6e-10 after six.)"""
    settings = settings_for("tgdd", epochs=1, batch_size=N_IMAGES, cutmix_prob=1.0)
    separate, stacked, test = train_both(arch, settings, k=2, channels=1, size=8)
    assert_same_networks(separate, stacked, test, rtol=1e-10, atol=1e-11)


# --- refusals and the evaluation's choice ----------------------------------------------------------------------


def test_networks_that_cannot_stack_are_named_and_evaluate_falls_back(caplog):
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(4, 3))
    assert not can_stack(model)
    assert "Dropout" in stack_refusal(model)
    with caplog.at_level(logging.WARNING, logger="tgdd.stacked"):
        assert not use_stacking("always", torch.device("cpu"), [model, model], "dropout-net")
    assert "not stacked" in caplog.text and "Dropout" in caplog.text
    with pytest.raises(ValueError, match="cannot stack"):
        train_stacked([model, model], torch.rand(4, 1, 2, 2), torch.arange(4) % 3, settings_for("dc"),
                      torch.zeros(1), torch.ones(1), [generator(0, "b")] * 2, [numpy_rng(0, "c")] * 2)  # fmt: skip


def test_one_run_never_takes_the_stacked_path():
    model = build("convnet-1-w8", 0, 1, 8)
    for choice in ("auto", "always"):
        assert not use_stacking(choice, torch.device("cpu"), [model], "convnet-1-w8")
    assert not use_stacking("never", torch.device("cpu"), [model, model], "convnet-1-w8")
    assert use_stacking("always", torch.device("cpu"), [model, model], "convnet-1-w8")
    assert not use_stacking("auto", torch.device("cpu"), [model, model], "convnet-1-w8")  # the evaluation's only
    assert use_stacking("auto", torch.device("cpu"), [model, model], "convnet-1-w8", grouped_on_cpu=True)
    assert use_stacking("auto", torch.device("cuda"), [model, model], "convnet-1-w8")
    with pytest.raises(ValueError, match="K >= 2"):
        train_stacked([model], torch.rand(4, 1, 8, 8), torch.arange(4), settings_for("dc"), torch.zeros(1),
                      torch.ones(1), [generator(0, "b")], [numpy_rng(0, "c")])  # fmt: skip


def evaluation(root: Path, *overrides: str) -> dict:
    cfg = tiny_config(root, "distill.method=random", "distill.ipc=1", *overrides)
    return json.loads(steps.evaluate(cfg)[0].read_text())


def test_evaluate_stacked_equals_separate(prepared_root: Path, tmp_path: Path):
    shutil.copytree(prepared_root / "data", tmp_path / "data")
    steps.distill(tiny_config(tmp_path, "distill.method=random", "distill.ipc=1"))
    runs = ("evaluate.runs=3", "evaluate.epochs=3", "evaluate.archs=[convnet-1-bn-w16]")
    never = evaluation(tmp_path, *runs, "evaluate.stack_runs=never")
    always = evaluation(tmp_path, *runs, "evaluate.stack_runs=always")
    assert (never["stacked"], always["stacked"]) == (False, True)
    assert always["accuracies"] == pytest.approx(never["accuracies"], abs=0.5)  # 1 of 360 test images at most
    assert len(set(never["accuracies"])) == 3  # three networks with their own streams, not one three times
    # how the runs were trained is not what the evaluation is: no reason to redo it
    cell = tiny_config(tmp_path, "distill.method=random", "distill.ipc=1", *runs, "evaluate.stack_runs=never")
    assert Freshness().evaluation(cell, "convnet-1-bn-w16", synthetic_redone=False) is None
    # one run: today's loop whatever the choice, bit for bit
    one = ("evaluate.runs=1", "evaluate.epochs=3")
    single = evaluation(tmp_path, *one, "evaluate.stack_runs=always")
    assert single["stacked"] is False
    assert single["accuracies"] == evaluation(tmp_path, *one, "evaluate.stack_runs=never")["accuracies"]


def test_stacked_benchmark_writes_its_table(tmp_path: Path):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "stacked_eval.py"
    args = ["--epochs", "1", "--repeats", "1", "--ipcs", "1", "--out", str(tmp_path)]
    subprocess.run([sys.executable, str(script), *args], check=True, capture_output=True, timeout=600)
    table = (tmp_path / "stacked_eval_cpu.md").read_text()
    assert "torch " + torch.__version__ in table and "cores" in table
    rows = [
        line
        for line in table.splitlines()
        if line.startswith("| convnet-2-w32 | 1 |") or "resnet10-ap-w8 | 1 |" in line
    ]
    assert len(rows) == 2 and all(float(row.split("|")[-2]) > 0 for row in rows)
