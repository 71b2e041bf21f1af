"""Distribution-matching methods: TGDD and its baseline DM share one loop (SPEC §3) and
differ only in which networks they use each iteration and the weight of the cross-entropy."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from tgdd.augment import DiffAugment, normalize
from tgdd.data.registry import DatasetSpec
from tgdd.errors import TgddError
from tgdd.methods import DistillContext, DistillOutput, DistillSettings, implements
from tgdd.models import build_model
from tgdd.runtime import seeded_init
from tgdd.synthetic import decode, initial_images


@dataclass(frozen=True)
class Stages:
    """Which trajectory and which snapshots one TGDD iteration uses."""

    trajectory: int
    extractor: int  # j, uniform in 0..E
    expert: int  # j', uniform in j..min(j+L-1, E)


def sample_stages(gen: torch.Generator, num_trajectories: int, epochs: int, region: int) -> Stages:
    """SPEC §3 steps 1-2: trajectory i and stage j uniform; expert stage uniform in the
    expert region ``j..min(j+L-1, E)``, which includes j itself."""

    def uniform(low: int, high: int) -> int:  # inclusive bounds
        return int(torch.randint(low, high + 1, (1,), generator=gen, device=gen.device))

    i = uniform(0, num_trajectories - 1)
    j = uniform(0, epochs)
    return Stages(i, j, uniform(j, min(j + region - 1, epochs)))


def mmd_loss(real_features: torch.Tensor, syn_features: torch.Tensor) -> torch.Tensor:
    """L_MMD = || mean(real) - mean(syn) ||^2, summed over the flattened feature."""
    return (real_features.mean(0) - syn_features.mean(0)).pow(2).sum()


def class_loss(
    extractor: nn.Module,
    expert: nn.Module | None,
    real: torch.Tensor,
    syn: torch.Tensor,
    label: int,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss of one class on already augmented, normalised batches: (loss, L_MMD, L_SDC)."""
    with torch.no_grad():
        real_features = extractor.features(real)
    mmd = mmd_loss(real_features, extractor.features(syn))
    if expert is None or alpha == 0:
        sdc = torch.zeros((), device=syn.device)
    else:
        target = torch.full((len(syn),), label, device=syn.device, dtype=torch.long)
        sdc = F.cross_entropy(expert(syn), target)
    return mmd + alpha * sdc, mmd.detach(), sdc.detach()


def synthetic_batch(images: torch.Tensor, settings: DistillSettings, gen: torch.Generator) -> torch.Tensor:
    """One class's decoded training images, a random subset of ``max_syn_per_class`` beyond that."""
    syn = decode(images, settings.factor)
    if len(syn) > settings.max_syn_per_class:
        keep = torch.randperm(len(syn), generator=gen, device=gen.device)[: settings.max_syn_per_class]
        syn = syn[keep.to(syn.device)]
    return syn


def _class_ids(counts: list[int], device: torch.device) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(counts), device=device), torch.tensor(counts, device=device))


def segment_mean(values: torch.Tensor, ids: torch.Tensor, groups: int) -> torch.Tensor:
    """Mean of the rows of ``values`` per group id: ``[n, d]`` -> ``[groups, d]``."""
    sums = torch.zeros(groups, values.shape[1], device=values.device, dtype=values.dtype).index_add(0, ids, values)
    counts = torch.bincount(ids, minlength=groups).clamp(min=1).to(values.dtype)
    return sums / counts.unsqueeze(1)


def sgd_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One step on ``loss``; images that get no gradient (other classes) do not move, because
    SGD skips parameters whose gradient is None (momentum included)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _frozen(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def _compiled(model: nn.Module) -> nn.Module:
    """``model`` with its forward and ``features`` compiled in place. The weights stay inputs of the
    compiled graphs, so loading another snapshot into the same module does not recompile."""
    model.compile()
    model.features = torch.compile(model.features)
    return model


@dataclass
class LoopState:
    """Everything a matching run needs to continue exactly where it stopped."""

    images: list[torch.Tensor]  # one leaf tensor per class
    optimizer: torch.optim.Optimizer
    iteration: int = 0
    records: list[dict[str, float]] = field(default_factory=list)

    def to_checkpoint(self, gen: torch.Generator) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "images": [x.detach().cpu() for x in self.images],
            "optimizer": self.optimizer.state_dict(),
            "generator": gen.get_state(),
            "records": self.records,
        }

    def restore(self, blob: dict[str, Any], gen: torch.Generator) -> None:
        with torch.no_grad():
            for x, saved in zip(self.images, blob["images"], strict=True):
                x.copy_(saved)
        self.optimizer.load_state_dict(blob["optimizer"])
        gen.set_state(blob["generator"])
        self.iteration, self.records = blob["iteration"], list(blob["records"])


class MatchingMethod:
    """The per-class distribution-matching loop; subclasses choose the networks (and may add a
    second, separately stepped loss per class)."""

    def networks(self, ctx: DistillContext, nets: tuple[nn.Module, nn.Module]) -> tuple[nn.Module, nn.Module | None]:
        raise NotImplementedError

    def second_loss(
        self, ctx: DistillContext, nets: tuple[nn.Module, nn.Module], c: int, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A second loss on class c's images, stepped on its own after the matching step
        (DANCE's calibration); returns (weighted loss, unweighted term) or None."""
        return None

    def _per_class_step(
        self, ctx: DistillContext, state: LoopState, extractor: nn.Module, expert: nn.Module | None,
        augment: DiffAugment, mean: torch.Tensor, std: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """SPEC §3 as written: per class, its own batches, augmentation draw and SGD step.
        Returns the summed (loss, L_MMD, L_SDC) over classes."""
        s = ctx.settings
        totals = torch.zeros(3, device=ctx.device)
        for c, images in enumerate(state.images):
            real = normalize(ctx.sampler.sample(c, s.real_batch, ctx.gen), mean, std)
            syn = normalize(synthetic_batch(images, s, ctx.gen), mean, std)
            real, syn = augment.siamese(real, syn, gen=ctx.gen)
            loss, mmd, sdc = class_loss(extractor, expert, real, syn, c, s.alpha)
            sgd_step(state.optimizer, loss)
            totals += torch.stack([loss.detach(), mmd, sdc])
        return totals

    def _batched_step(
        self, ctx: DistillContext, state: LoopState, extractor: nn.Module, expert: nn.Module | None,
        augment: DiffAugment, mean: torch.Tensor, std: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """Every class in one forward pass and one step. Exactly the per-class update (each class's
        loss depends only on its own images, the networks are frozen and have no cross-sample
        terms in eval mode, and SGD updates each class's tensor on its own); only the order in
        which random numbers are drawn differs."""
        s, num_classes = ctx.settings, len(state.images)
        reals = [ctx.sampler.sample(c, s.real_batch, ctx.gen) for c in range(num_classes)]
        syns = [synthetic_batch(images, s, ctx.gen) for images in state.images]
        real_ids = _class_ids([len(r) for r in reals], ctx.device)
        syn_ids = _class_ids([len(x) for x in syns], ctx.device)
        real, syn = normalize(torch.cat(reals), mean, std), normalize(torch.cat(syns), mean, std)
        real, syn = augment.siamese_per_group((real, syn), (real_ids, syn_ids), num_classes, ctx.gen)
        with torch.no_grad():
            real_means = segment_mean(extractor.features(real), real_ids, num_classes)
        mmd = (real_means - segment_mean(extractor.features(syn), syn_ids, num_classes)).pow(2).sum(1)
        if expert is None or s.alpha == 0:
            sdc = torch.zeros_like(mmd)
        else:
            per_image = F.cross_entropy(expert(syn), syn_ids, reduction="none")
            sdc = segment_mean(per_image.unsqueeze(1), syn_ids, num_classes).squeeze(1)
        loss = mmd + s.alpha * sdc
        sgd_step(state.optimizer, loss.sum())
        return torch.stack([loss.detach().sum(), mmd.detach().sum(), sdc.detach().sum()])

    def initial_state(self, ctx: DistillContext) -> LoopState:
        s, train = ctx.settings, ctx.train
        init = initial_images(ctx.sampler, train.num_classes, s.ipc, s.factor, s.init, ctx.gen).to(ctx.device)
        per_class = [init[c * s.ipc : (c + 1) * s.ipc].clone().requires_grad_(True) for c in range(train.num_classes)]
        return LoopState(per_class, torch.optim.SGD(per_class, lr=s.lr_img, momentum=s.momentum))

    def run(self, ctx: DistillContext) -> DistillOutput:
        s, train, device = ctx.settings, ctx.train, ctx.device
        num_classes = train.num_classes
        channels, size = train.images.shape[1], train.images.shape[2]
        state = self.initial_state(ctx)
        if ctx.checkpoint is not None and ctx.checkpoint.resume_blob is not None:
            state.restore(ctx.checkpoint.resume_blob, ctx.gen)
        augment = DiffAugment(s.dsa_strategy)
        mean, std = train.mean.to(device), train.std.to(device)
        arch = ctx.cfg.experts.arch
        nets = tuple(_frozen(build_model(arch, channels, size, num_classes).to(device)) for _ in range(2))
        if s.compile:
            nets = tuple(_compiled(net) for net in nets)
        progress = tqdm(
            total=s.iterations, initial=state.iteration, desc=f"distill {s.method}", disable=not ctx.progress
        )
        while state.iteration < s.iterations:
            it = state.iteration
            extractor, expert = self.networks(ctx, nets)
            with torch.no_grad():
                for images in state.images:
                    images.clamp_(0, 1)
            step = self._batched_step if s.batched_classes else self._per_class_step
            totals = step(ctx, state, extractor, expert, augment, mean, std)
            for c, images in enumerate(state.images):
                second = self.second_loss(ctx, nets, c, images)
                if second is not None:
                    sgd_step(state.optimizer, second[0])
                    totals += torch.stack([second[0].detach(), torch.zeros_like(second[1]), second[1]])
            images_finite = torch.stack([torch.isfinite(x).all() for x in state.images]).all()
            loss_v, mmd_v, sdc_v = (totals / num_classes).tolist()  # one host sync per iteration
            if not (math.isfinite(loss_v) and bool(images_finite)):
                what = f"loss became {loss_v}" if not math.isfinite(loss_v) else "images became non-finite"
                raise TgddError(
                    f"{s.method}: {what} at iteration {it}; the last good checkpoint is kept "
                    "(lower distill.lr_img and rerun)"
                )
            if it % s.log_every == 0 or it == s.iterations - 1:
                state.records.append({"iteration": it, "loss": loss_v, "mmd": mmd_v, "sdc": sdc_v})
            state.iteration += 1
            progress.update()
            if ctx.checkpoint is not None:
                ctx.checkpoint.after_iteration(state.iteration, lambda: state.to_checkpoint(ctx.gen))
        progress.close()
        with torch.no_grad():
            images = torch.cat(state.images).clamp_(0, 1)
        return DistillOutput(images.detach(), state.records)


class TGDD(MatchingMethod):
    """Trajectory-guided matching (SPEC §3): features from a trajectory stage, class
    constraint from a slightly later snapshot of the same trajectory."""

    def defaults(self, ipc: int, spec: DatasetSpec) -> dict[str, Any]:
        return {
            "iterations": 10_000,
            "factor": 2,
            "alpha": 2.5 if ipc <= 10 else 0.5,
            "lr_img": (0.01 if spec.image_size <= 64 else 0.1) * ipc,
            "real_batch": 128,
        }

    def networks(self, ctx: DistillContext, nets: tuple[nn.Module, nn.Module]) -> tuple[nn.Module, nn.Module | None]:
        traj = ctx.trajectories
        stages = sample_stages(ctx.gen, len(traj.snapshots), traj.epochs, ctx.settings.expert_region)
        extractor, expert = nets
        extractor.load_state_dict(traj.snapshots[stages.trajectory][stages.extractor])
        expert.load_state_dict(traj.snapshots[stages.trajectory][stages.expert])
        return extractor, expert


class DM(MatchingMethod):
    """Distribution matching (Zhao & Bilen 2023): a freshly initialised network every iteration."""

    def defaults(self, ipc: int, spec: DatasetSpec) -> dict[str, Any]:
        return {"iterations": 20_000, "factor": 1, "alpha": 0.0, "lr_img": 1.0, "real_batch": 256}

    def networks(self, ctx: DistillContext, nets: tuple[nn.Module, nn.Module]) -> tuple[nn.Module, nn.Module | None]:
        seed = int(torch.randint(2**62, (1,), generator=ctx.gen, device=ctx.gen.device))
        train = ctx.train
        with seeded_init(seed):
            fresh = build_model(ctx.cfg.experts.arch, train.images.shape[1], train.images.shape[2], train.num_classes)
        extractor = nets[0]
        extractor.load_state_dict(fresh.state_dict())
        return extractor, None


implements("tgdd", TGDD())
implements("dm", DM())
