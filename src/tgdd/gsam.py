"""GSAM, the sharpness-aware step FTD trains its expert buffers with (FTD's ``buffer/gsam/gsam.py``, after
Zhuang et al., "Surrogate Gap Guided Sharpness-Aware Minimization", ICLR 2022; docs/fidelity.md, FTD).

One step on one batch, as their ``GSAM.step``:

1. the gradient g at the weights w (``get_grad``);
2. the ascent to w + e with e = rho * g / ||g|| (``perturb_weights``); adaptive (ASAM, theirs by default):
   e = rho * w^2 * g / || |w| * g ||, elementwise;
3. the gradient g_p at w + e, batch norm's running statistics left as they were (its momentum 0);
4. the surrogate-gap term (``gradient_decompose``): the part of g orthogonal to g_p,
   g_v = g - cos(g, g_p) * ||g|| * g_p / ||g_p||, and the direction g_p - alpha * g_v;
5. back to w by subtracting e (``unperturb``: ``(w + e) - e``, as theirs rounds it), and one step of the
   base optimiser (their SGD) along that direction.

The pieces are small pure functions over lists of tensors (:func:`grad_norm`, :func:`perturbation`,
:func:`decompose`) tested against a hand-written update; :func:`gsam_step` applies them to a module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tgdd.protocols import Sharpness

EPS = 1e-12  # their perturb_eps: in the norms' denominators


def grad_norm(grads: Sequence[torch.Tensor], weights: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """``||g||`` over every tensor (the 2-norm of the per-tensor 2-norms, as theirs stacks them); with
    ``weights``: ``|| |w| * g ||`` (``_grad_norm(weight_adaptive=True)``)."""
    if weights is None:
        return torch.stack([g.norm(p=2) for g in grads]).norm(p=2)
    return torch.stack([(w.abs() * g).norm(p=2) for w, g in zip(weights, grads, strict=True)]).norm(p=2)


def perturbation(
    weights: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], rho: float, adaptive: bool
) -> list[torch.Tensor]:
    """The ascent e of ``perturb_weights``: ``g * rho / (norm + eps)`` (times ``w^2`` when adaptive, the norm
    then ``|| |w| * g ||``)."""
    scale = rho / (grad_norm(grads, weights if adaptive else None) + EPS)
    if adaptive:
        return [g * scale * w.pow(2) for w, g in zip(weights, grads, strict=True)]
    return [g * scale for g in grads]


def decompose(grads: Sequence[torch.Tensor], perturbed: Sequence[torch.Tensor], alpha: float) -> list[torch.Tensor]:
    """``gradient_decompose``: ``g_p - alpha * (g - cos * ||g|| * g_p / ||g_p||)`` with ``cos`` the cosine of
    the gradient ``g`` at w and ``g_p`` at w + e (both norms plain, not adaptive)."""
    inner = sum(torch.sum(g * p) for g, p in zip(grads, perturbed, strict=True))
    new_norm, old_norm = grad_norm(perturbed), grad_norm(grads)
    cosine = inner / (new_norm * old_norm + EPS)
    out = []
    for g, p in zip(grads, perturbed, strict=True):
        vertical = g - cosine * old_norm * p / (new_norm + EPS)
        out.append(torch.add(p, vertical, alpha=-alpha))  # their p.grad.add_(vertical, alpha=-alpha)
    return out


@contextlib.contextmanager
def frozen_running_stats(model: nn.Module) -> Iterator[None]:
    """Batch norm's running statistics unchanged by a forward pass (their ``disable_running_stats``:
    momentum 0 for the second pass, restored after)."""
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum


def gsam_step(
    model: nn.Module, loss_fn: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer, sharpness: Sharpness
) -> torch.Tensor:
    """One GSAM step of ``model`` on the batch ``loss_fn`` evaluates (the forward and the loss, called twice:
    at w and at w + e), stepping ``optimizer`` (the base SGD) once. Returns the loss at w (theirs reports it)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    used = [p for p in params if p.grad is not None]  # theirs skips parameters without a gradient
    grads = [p.grad.detach().clone() for p in used]
    with torch.no_grad():
        ascent = perturbation([p.detach() for p in used], grads, sharpness.rho, sharpness.adaptive)
        for p, e in zip(used, ascent, strict=True):
            p.add_(e)
    optimizer.zero_grad(set_to_none=True)
    with frozen_running_stats(model):
        loss_fn().backward()
    with torch.no_grad():
        direction = decompose(grads, [p.grad for p in used], sharpness.alpha)
        for p, d, e in zip(used, direction, ascent, strict=True):
            p.grad.copy_(d)
            p.sub_(e)
    optimizer.step()
    return loss.detach()
