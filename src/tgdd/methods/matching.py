"""Distribution-matching methods: TGDD and its baseline DM share one loop (SPEC §3) and differ in
the networks they use each iteration, the weight of the cross-entropy and the mechanisms of their
authors' code that their cards declare (how the images are stepped, in which space, how real
batches are drawn; see :mod:`tgdd.methods` and docs/fidelity.md)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tgdd.augment import DiffAugment, normalize
from tgdd.data.prepared import REAL_BATCHES
from tgdd.errors import TgddError
from tgdd.methods import METHODS, DistillContext, DistillOutput, DistillSettings, TGDDSettings, implements
from tgdd.models import build_model
from tgdd.progress import bar
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


def _frozen(model: nn.Module) -> nn.Module:
    """A matching network as the authors' code holds it: freshly built, so in training mode, and never
    stepped (their code computes its weight gradients and discards them; not computing them here
    changes the cost, not the update). Training mode matters only for batch norm, which then uses
    each forward's own batch statistics, as theirs does."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.train()


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _compiled(model: nn.Module) -> nn.Module:
    """``model`` with its forward and ``features`` compiled in place. The weights stay inputs of the
    compiled graphs, so loading another snapshot into the same module does not recompile."""
    model.compile()
    model.features = torch.compile(model.features)
    return model


class ImageState:
    """The synthetic images as the authors' code holds them: ONE leaf tensor with every class's
    images (class-major) and ONE ``torch.optim.SGD`` over it.

    Stepped once per class (IDC/DANCE/TGDD), a step for class c also moves every other class's
    images by their momentum buffers (their gradient is zero, not absent). :meth:`probe` and
    :meth:`replay` give the same update for all classes computed in one batched pass: the loss of
    class c depends only on its own images, so its gradient can be taken at the position its rows
    will have reached when its own step comes (momentum-only moves until then), and the optimiser
    then takes the class steps one by one with those gradients.
    """

    def __init__(self, images: torch.Tensor, ipc: int, lr: float, momentum: float) -> None:
        self.images = images.detach().clone().requires_grad_(True)
        self.ipc = ipc
        self.optimizer = torch.optim.SGD([self.images], lr=lr, momentum=momentum)

    @property
    def num_classes(self) -> int:
        return len(self.images) // self.ipc

    def rows(self, c: int) -> slice:
        return slice(c * self.ipc, (c + 1) * self.ipc)

    def step(self, loss: torch.Tensor) -> None:
        """One optimiser step on ``loss`` (the authors' ``zero_grad(); backward(); step()``)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def probe(self) -> torch.Tensor:
        """A leaf copy of the images in which class c's rows sit where c momentum-only steps move
        them: where they are when their own step comes in a pass over the classes."""
        positions = self.images.detach().clone()
        buffer = self.optimizer.state[self.images].get("momentum_buffer")
        if buffer is not None:
            group = self.optimizer.param_groups[0]
            buffer = buffer.clone()
            for c in range(1, self.num_classes):  # the step of class c-1 moves the classes after it
                rest = slice(c * self.ipc, None)
                buffer[rest].mul_(group["momentum"])
                positions[rest].add_(buffer[rest], alpha=-group["lr"])
        return positions.requires_grad_(True)

    def replay(self, grad: torch.Tensor) -> None:
        """The class steps of one pass, in order, with each class's gradient from ``grad``."""
        for c in range(self.num_classes):
            self.images.grad = torch.zeros_like(self.images)
            self.images.grad[self.rows(c)] = grad[self.rows(c)]
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


Terms = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Phase:
    """One pass over the classes, each class with a loss on its own images. ``one(c, images_c)``
    draws class c's batches and returns (loss, terms); ``batched(images)`` does every class in one
    forward pass and returns (per-class losses, terms summed over classes). Terms are the method's
    named loss terms (its card's ``terms``), detached scalars. ``one`` is None for a loss defined
    only over every class at once (:attr:`MatchingMethod.joint_classes`)."""

    one: Callable[[int, torch.Tensor], tuple[torch.Tensor, Terms]] | None
    batched: Callable[[torch.Tensor], tuple[torch.Tensor, Terms]]


def add_terms(total: Terms, more: Terms) -> Terms:
    return {key: total.get(key, 0) + more.get(key, 0) for key in total.keys() | more.keys()}


def run_phase(state: ImageState, phase: Phase, update: str, batched: bool) -> Terms:
    """Step the images through one phase under the method's update rule (its card's
    ``image_update``): ``summed`` is one step on the sum of the class losses (DM), ``per-class`` one
    step per class, literally or as :meth:`ImageState.probe` + :meth:`ImageState.replay`."""
    if update == "summed":
        if batched:
            losses, terms = phase.batched(state.images)
        else:
            parts = [phase.one(c, state.images[state.rows(c)]) for c in range(state.num_classes)]
            losses, terms = torch.stack([p[0] for p in parts]), functools.reduce(add_terms, [p[1] for p in parts])
        state.step(losses.sum())
        return terms
    if batched:
        probe = state.probe()
        losses, terms = phase.batched(probe)
        (grad,) = torch.autograd.grad(losses.sum(), probe)
        state.replay(grad)
        return terms
    totals: Terms = {}
    for c in range(state.num_classes):
        loss, terms = phase.one(c, state.images[state.rows(c)])
        state.step(loss)
        totals = add_terms(totals, terms)
    return totals


@dataclass
class LoopState:
    """Everything a matching run needs to continue exactly where it stopped."""

    images: ImageState
    real: Any  # tgdd.data.prepared.EpochBatches or FreshBatches
    iteration: int = 0
    records: list[dict[str, float]] = field(default_factory=list)

    def to_checkpoint(self, gen: torch.Generator) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "images": self.images.images.detach().cpu(),
            "optimizer": self.images.optimizer.state_dict(),
            "real_batches": self.real.state_dict(),
            "generator": gen.get_state(),
            "records": self.records,
        }

    def restore(self, blob: dict[str, Any], gen: torch.Generator) -> None:
        with torch.no_grad():
            self.images.images.copy_(blob["images"])
        self.images.optimizer.load_state_dict(blob["optimizer"])
        self.real.load_state_dict(blob["real_batches"])
        gen.set_state(blob["generator"])
        self.iteration, self.records = blob["iteration"], list(blob["records"])


@dataclass(frozen=True)
class Space:
    """The space the images are optimised in (the card's ``image_space``) and the conversions."""

    normalised: bool
    mean: torch.Tensor
    std: torch.Tensor

    def from_pixels(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(x, self.mean, self.std) if self.normalised else x

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std.view(1, -1, 1, 1) + self.mean.view(1, -1, 1, 1) if self.normalised else x

    def network_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.normalised else normalize(x, self.mean, self.std)


@dataclass(frozen=True)
class Iteration:
    """What one iteration's phases share: the run's context and this iteration's networks."""

    ctx: DistillContext
    real: Any
    augment: DiffAugment
    space: Space
    extractor: nn.Module
    expert: nn.Module | None


def matching_phase(it: Iteration, alpha: float) -> Phase:
    """SPEC §3 step 5: per class its real batch, its decoded synthetic batch, ONE augmentation draw
    for both (the authors' ``aug(torch.cat([real, syn]))`` with ``batch=True``), L_MMD + alpha L_SDC
    (terms ``loss``, ``mmd``, ``sdc``; no expert: L_SDC = 0)."""
    ctx, s = it.ctx, it.ctx.settings
    mean, std = it.space.mean, it.space.std

    def one(c: int, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        real = normalize(it.real.next(c, ctx.gen), mean, std)
        syn = it.space.network_input(synthetic_batch(images, s, ctx.gen))
        real, syn = it.augment.siamese(real, syn, gen=ctx.gen)
        loss, mmd, sdc = class_loss(it.extractor, it.expert, real, syn, c, alpha)
        return loss, {"loss": loss.detach(), "mmd": mmd, "sdc": sdc}

    def batched(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        num_classes = len(images) // s.ipc
        reals = [it.real.next(c, ctx.gen) for c in range(num_classes)]
        syns = [synthetic_batch(images[c * s.ipc : (c + 1) * s.ipc], s, ctx.gen) for c in range(num_classes)]
        real_ids = _class_ids([len(r) for r in reals], ctx.device)
        syn_ids = _class_ids([len(x) for x in syns], ctx.device)
        real, syn = normalize(torch.cat(reals), mean, std), it.space.network_input(torch.cat(syns))
        real, syn = it.augment.siamese_per_group((real, syn), (real_ids, syn_ids), num_classes, ctx.gen)
        with torch.no_grad():
            real_means = segment_mean(it.extractor.features(real), real_ids, num_classes)
        mmd = (real_means - segment_mean(it.extractor.features(syn), syn_ids, num_classes)).pow(2).sum(1)
        if it.expert is None or alpha == 0:
            sdc = torch.zeros_like(mmd)
        else:
            per_image = F.cross_entropy(it.expert(syn), syn_ids, reduction="none")
            sdc = segment_mean(per_image.unsqueeze(1), syn_ids, num_classes).squeeze(1)
        loss = mmd + alpha * sdc
        return loss, {"loss": loss.detach().sum(), "mmd": mmd.detach().sum(), "sdc": sdc.detach().sum()}

    return Phase(one, batched)


def batched_classes(ctx: DistillContext, mixes_statistics: bool, arch: str) -> bool:
    """Whether the classes run in one forward pass (``distill.batched_classes``; ``auto``: on CUDA,
    where it is 2.7x faster, unless the matching network's batch norm would mix the classes' batch
    statistics: ``mixes_statistics``), recorded in ``ctx.execution``. Asked for explicitly where it
    would mix them, it is an error."""
    choice = ctx.settings.batched_classes
    if choice is True and mixes_statistics:
        raise TgddError(
            f"distill.batched_classes with {arch}: its batch norm would mix the classes' batch statistics "
            "(set distill.batched_classes=false or auto)"
        )
    batched = choice is True or (choice == "auto" and ctx.device.type == "cuda" and not mixes_statistics)
    ctx.execution["batched_classes"] = batched
    return batched


class MatchingMethod:
    """The distribution-matching loop; subclasses choose the networks (and may add phases after
    the matching pass, as DANCE's calibration)."""

    joint_classes = False
    """True for a method whose loss is defined over every class in one forward pass (DataDAM: its
    authors' batch norm normalises all classes' images together): its phases always run batched,
    whatever ``distill.batched_classes`` says and with batch norm too, and have no per-class loss."""

    def arch(self, ctx: DistillContext) -> str:
        """The matching networks' architecture: the experts' (a method may derive its own)."""
        return ctx.cfg.experts.arch

    def networks(self, ctx: DistillContext, nets: tuple[nn.Module, nn.Module]) -> tuple[nn.Module, nn.Module | None]:
        raise NotImplementedError

    def phases(self, it: Iteration, nets: tuple[nn.Module, nn.Module]) -> list[Phase]:
        return [matching_phase(it, alpha=0.0)]

    def initial_state(self, ctx: DistillContext, space: Space) -> LoopState:
        s, train = ctx.settings, ctx.train
        init = initial_images(ctx.sampler, train.num_classes, s.ipc, s.factor, s.init, ctx.gen).to(ctx.device)
        images = ImageState(space.from_pixels(init), s.ipc, s.lr_img, s.momentum)
        return LoopState(images, REAL_BATCHES[s.real_batches](ctx.sampler, s.real_batch))

    def run(self, ctx: DistillContext) -> DistillOutput:
        s, train, device = ctx.settings, ctx.train, ctx.device
        num_classes = train.num_classes
        terms = METHODS.get(s.method).terms  # "loss" first
        channels, size = train.images.shape[1], train.images.shape[2]
        space = Space(s.image_space == "normalised", train.mean.to(device), train.std.to(device))
        state = self.initial_state(ctx, space)
        if ctx.checkpoint is not None and ctx.checkpoint.resume_blob is not None:
            state.restore(ctx.checkpoint.resume_blob, ctx.gen)
        augment = DiffAugment(s.dsa_strategy, s.augment_semantics)
        arch = self.arch(ctx)
        nets = tuple(_frozen(build_model(arch, channels, size, num_classes).to(device)) for _ in range(2))
        batched = self.joint_classes or batched_classes(ctx, has_batch_norm(nets[0]), arch)
        if s.compile:
            nets = tuple(_compiled(net) for net in nets)
        progress = bar(show=ctx.progress, total=s.iterations, initial=state.iteration, desc=f"distill {s.method}")
        while state.iteration < s.iterations:
            it = state.iteration
            extractor, expert = self.networks(ctx, nets)
            if not space.normalised:
                with torch.no_grad():
                    state.images.images.clamp_(0, 1)
            shared = Iteration(ctx, state.real, augment, space, extractor, expert)
            totals = functools.reduce(
                add_terms,
                [run_phase(state.images, phase, s.image_update, batched) for phase in self.phases(shared, nets)],
            )
            images_finite = torch.isfinite(state.images.images).all()
            zero = torch.zeros((), device=device)
            means = (torch.stack([totals.get(t, zero) for t in terms]) / num_classes).tolist()  # one host sync
            loss_v = means[0]
            if not (math.isfinite(loss_v) and bool(images_finite)):
                what = f"loss became {loss_v}" if not math.isfinite(loss_v) else "images became non-finite"
                raise TgddError(
                    f"{s.method}: {what} at iteration {it}; the last good checkpoint is kept "
                    "(lower distill.lr_img and rerun)"
                )
            if it % s.log_every == 0 or it == s.iterations - 1:
                state.records.append({"iteration": it, **dict(zip(terms, means, strict=True))})
            state.iteration += 1
            progress.update()
            if ctx.checkpoint is not None:
                ctx.checkpoint.after_iteration(state.iteration, lambda: state.to_checkpoint(ctx.gen))
        progress.close()
        return DistillOutput(space.to_pixels(state.images.images.detach()), state.records)


class TGDD(MatchingMethod):
    """Trajectory-guided matching (SPEC §3): features from a trajectory stage, class
    constraint from a slightly later snapshot of the same trajectory."""

    def networks(self, ctx: DistillContext, nets: tuple[nn.Module, nn.Module]) -> tuple[nn.Module, nn.Module | None]:
        traj = ctx.trajectories
        region = ctx.settings.of(TGDDSettings).expert_region
        stages = sample_stages(ctx.gen, len(traj.snapshots), traj.epochs, region)
        extractor, expert = nets
        extractor.load_state_dict(traj.snapshots[stages.trajectory][stages.extractor])
        expert.load_state_dict(traj.snapshots[stages.trajectory][stages.expert])
        return extractor, expert

    def phases(self, it: Iteration, nets: tuple[nn.Module, nn.Module]) -> list[Phase]:
        return [matching_phase(it, alpha=it.ctx.settings.of(TGDDSettings).alpha)]


class DM(MatchingMethod):
    """Distribution matching (Zhao & Bilen 2023): a freshly initialised network every iteration."""

    def networks(self, ctx: DistillContext, nets: tuple[nn.Module, nn.Module]) -> tuple[nn.Module, nn.Module | None]:
        seed = int(torch.randint(2**62, (1,), generator=ctx.gen, device=ctx.gen.device))
        train = ctx.train
        with seeded_init(seed):
            fresh = build_model(self.arch(ctx), train.images.shape[1], train.images.shape[2], train.num_classes)
        extractor = nets[0]
        extractor.load_state_dict(fresh.state_dict())
        return extractor, None


implements("tgdd", TGDD())
implements("dm", DM())
