"""M3D (Zhang et al., AAAI 2024): DM's iteration, freshly initialised networks and all, with the distance
between a class's real and synthetic features taken as a kernel MMD (:mod:`tgdd.methods.kernel_mmd`)
instead of the distance between their means, on IDC's multi-formation images ("Factor & Up-sampling":
``distill.factor``), and one random network kept for ``iterations_per_model`` image updates ("Iteration
per Random Model"). Everything else is the loop and the matching machinery of :mod:`tgdd.methods.matching`
(docs/fidelity.md, section M3D)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tgdd.cards.m3d import M3DSettings
from tgdd.methods import DistillContext, implements
from tgdd.methods.kernel_mmd import kernel_mmd
from tgdd.methods.loop import (
    ClassDraws,
    Iteration,
    MatchingState,
    Phase,
    Space,
    Step,
    Terms,
    class_batch,
    class_batches,
)
from tgdd.methods.matching import DM, MatchingMethod, decoded_input, draw_synthetic_subsets, synthetic_batch
from tgdd.models import build_model
from tgdd.runtime import seeded_init


@dataclass
class RandomModelState(MatchingState):
    """:class:`MatchingState` plus the seed of the random network in use, so that a run stopped in the middle of
    a network's ``iterations_per_model`` updates resumes with the same network."""

    model_seed: int | None = None

    def own_state(self) -> dict[str, Any]:
        return {**super().own_state(), "model_seed": self.model_seed}

    def load_own_state(self, blob: dict[str, Any]) -> None:
        super().load_own_state(blob)
        self.model_seed = blob["model_seed"]


def model_due(iteration: int, per_model: int) -> bool:
    """Whether a fresh network is drawn before ``iteration``: at 0 and every ``per_model`` iterations after."""
    return iteration % per_model == 0


def kernel_phase(it: Iteration, settings: M3DSettings) -> Phase:
    """One pass over the classes: per class its real batch, its decoded synthetic batch, ONE augmentation draw
    for both (as every matching method here), features of the iteration's network (real ones without
    gradient), their kernel MMD (terms ``loss`` = ``mmd``). The batched variant embeds every class in one
    forward pass and takes each class's MMD on its own rows: the same losses."""
    ctx, s = it.ctx, it.ctx.settings
    kernel = settings.kernel
    bandwidths = None if settings.bandwidths == "median" else settings.bandwidths

    def synthetic(images: torch.Tensor) -> torch.Tensor:
        return it.space.network_input(synthetic_batch(images, s, ctx.gen))

    def one(c: int, images: torch.Tensor) -> tuple[torch.Tensor, Terms]:
        real, syn = class_batch(it, c, images, synthetic)
        with torch.no_grad():
            real_features = it.extractor.features(real)
        mmd = kernel_mmd(real_features, it.extractor.features(syn), kernel, bandwidths)
        return mmd, {"loss": mmd.detach(), "mmd": mmd.detach()}

    def batched(images: torch.Tensor, drawn: ClassDraws) -> tuple[torch.Tensor, Terms]:
        b = class_batches(it, images, decoded_input(it), drawn)
        with torch.no_grad():
            real_features = it.extractor.features(b.real)
        syn_features = it.extractor.features(b.syn)
        mmd = torch.stack(
            [
                kernel_mmd(real_features[b.real_ids == c], syn_features[b.syn_ids == c], kernel, bandwidths)
                for c in range(b.num_classes)
            ]
        )
        total = mmd.detach().sum()
        return mmd, {"loss": total, "mmd": total}

    return Phase(one, batched, lambda: draw_synthetic_subsets(it))


class M3D(DM):
    """DM with a kernel MMD and a random network kept for ``iterations_per_model`` updates."""

    def initial_state(self, ctx: DistillContext, space: Space) -> RandomModelState:
        base = super().initial_state(ctx, space)
        return RandomModelState(base.images, real=base.real)

    def prepare(self, ctx: DistillContext, state: RandomModelState, space: Space) -> Step:
        """The matching iteration of :class:`MatchingMethod`, its networks chosen by this run's state."""
        return MatchingMethod.prepare(_RandomModels(state), ctx, state, space)

    def phases(self, it: Iteration, nets: tuple[nn.Module, nn.Module]) -> list[Phase]:
        return [kernel_phase(it, it.ctx.settings.of(M3DSettings))]


class _RandomModels(M3D):
    """:class:`M3D` bound to one run's state: before an iteration where a network is due it draws the network's
    seed from the run's generator (as DM draws one every iteration: with ``iterations_per_model`` 1 the draws
    are DM's), records it in the state, and (re)builds the network from that seed whenever the one loaded is
    not the state's (after a resume too)."""

    def __init__(self, state: RandomModelState) -> None:
        self.state = state
        self.loaded: int | None = None

    def networks(self, ctx: DistillContext, nets: tuple[nn.Module, nn.Module]) -> tuple[nn.Module, nn.Module | None]:
        per_model = ctx.settings.of(M3DSettings).iterations_per_model
        if self.state.model_seed is None or model_due(self.state.iteration, per_model):
            self.state.model_seed = int(torch.randint(2**62, (1,), generator=ctx.gen, device=ctx.gen.device))
        extractor = nets[0]
        if self.loaded != self.state.model_seed:
            train = ctx.train
            with seeded_init(self.state.model_seed):
                fresh = build_model(self.arch(ctx), train.images.shape[1], train.images.shape[2], train.num_classes)
            extractor.load_state_dict(fresh.state_dict())
            self.loaded = self.state.model_seed
        return extractor, None


implements("m3d", M3D())
