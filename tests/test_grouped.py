"""The grouped twin of K networks (tgdd.grouped) computes what vmap over the K networks computes:
logits, gradients of the stacked parameters and batch norm's running statistics, for every network
of the evaluation zoo that has a twin (all but DenseNet). Whole trainings through it against
separate runs are in tests/test_stacked.py (train_stacked takes the twin where there is one)."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import stack_module_state

from tgdd.grouped import can_group, depthwise_pool, grouped_forward, grouped_twin
from tgdd.stacked import stacked_forward, use_stacking

from .test_stacked import ZOO_NETWORKS, build, float64  # noqa: F401 (float64: a fixture)

NO_TWIN = {"densenet121"}  # concatenates channels: stacks through vmap


def one_step(forward, models: list[nn.Module], x: torch.Tensor, y: torch.Tensor):
    """Logits, gradients of every stacked parameter and the buffers after one training forward."""
    params, buffers = stack_module_state([copy.deepcopy(m).train() for m in models])
    logits = forward(params, buffers, x)
    F.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()
    return logits.detach(), {n: p.grad for n, p in params.items()}, buffers


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("arch", ZOO_NETWORKS)
def test_the_grouped_twin_computes_what_vmap_computes(arch):
    k, batch = 3, 5
    models = [build(arch, i, 1, 8).train() for i in range(k)]
    template = copy.deepcopy(models[0]).to("meta")
    grouped = grouped_forward(template, k)
    if arch in NO_TWIN:
        assert grouped is None and not can_group(models[0])
        return
    assert can_group(models[0])
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(k, batch, 1, 8, 8, generator=gen)
    y = torch.randint(3, (k, batch), generator=gen)
    logits, grads, buffers = one_step(grouped, models, x, y)
    want_logits, want_grads, want_buffers = one_step(stacked_forward(template), models, x, y)
    torch.testing.assert_close(logits, want_logits, rtol=1e-10, atol=1e-12)
    for name, grad in want_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-9, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")
    for name, value in want_buffers.items():  # running statistics move per network, through the views
        torch.testing.assert_close(buffers[name], value, rtol=1e-10, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")
    # each network its own: network 0's logits are those of network 0 alone
    with torch.no_grad():
        alone = copy.deepcopy(models[0]).train()(x[0])
    torch.testing.assert_close(logits[0], alone, rtol=1e-10, atol=1e-12)


@pytest.mark.usefixtures("float64")
def test_depthwise_pool_is_the_average_pool():
    x = torch.randn(4, 6, 8, 8, requires_grad=True)
    pooled = depthwise_pool(x, 2)
    want = F.avg_pool2d(x, 2, 2)
    assert torch.equal(pooled, want)
    (grad,) = torch.autograd.grad(pooled.square().sum(), x)
    (want_grad,) = torch.autograd.grad(want.square().sum(), x)
    torch.testing.assert_close(grad, want_grad, rtol=1e-12, atol=1e-14)


def test_what_has_no_twin():
    cat = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Dropout(0.5))  # a leaf without a twin
    assert grouped_twin(cat, 2) is None
    assert grouped_twin(nn.Linear(3, 2), 2) is None  # a bare leaf is no network
    overlapping = nn.Sequential(nn.AvgPool2d(3, stride=1), nn.Flatten(), nn.Linear(4, 2))
    twin = grouped_twin(overlapping, 2)
    assert isinstance(twin[0], nn.AvgPool2d)  # kept as it is: per channel, but not a depthwise conv


def test_auto_stacks_the_evaluation_on_the_cpu_where_there_is_a_twin(caplog):
    cpu = torch.device("cpu")
    convnet, densenet = build("convnet-2-w8", 0, 1, 8), build("densenet121", 0, 1, 8)
    assert use_stacking("auto", cpu, [convnet] * 3, "e", grouped_on_cpu=True)  # measured faster
    assert not use_stacking("auto", cpu, [densenet] * 3, "e", grouped_on_cpu=True)  # vmap: measured slower
    assert not use_stacking("auto", cpu, [convnet] * 3, "experts")  # experts: on CUDA only
    assert not use_stacking("auto", cpu, [convnet], "e", grouped_on_cpu=True)  # one run: today's loop
    with caplog.at_level(logging.WARNING):
        assert use_stacking("always", cpu, [densenet] * 2, "e")
    assert caplog.text == ""
