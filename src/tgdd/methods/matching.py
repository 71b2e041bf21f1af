"""Distribution-matching methods: TGDD and its baseline DM share one iteration (SPEC §3), run by the
loop of :mod:`tgdd.methods.loop`, and differ in the networks they use each iteration, the weight of the
cross-entropy and the mechanisms of their authors' code that their cards declare (how the images are
stepped, in which space, how real batches are drawn; see :mod:`tgdd.methods` and docs/fidelity.md).
DANCE and DataDAM extend :class:`MatchingMethod`."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tgdd.augment import DiffAugment
from tgdd.cards import METHODS
from tgdd.cards.tgdd import TGDDSettings
from tgdd.data.prepared import REAL_BATCHES
from tgdd.graphs import GraphBackend, GraphedStep, graph_backend
from tgdd.methods import DistillContext, implements
from tgdd.methods.loop import (
    ClassDraws,
    ImageMethod,
    ImageState,
    Iteration,
    MatchingState,
    Measured,
    Phase,
    Space,
    Step,
    Terms,
    add_terms,
    batched_classes,
    class_batch,
    class_batches,
    draw_class_batches,
    measured_means,
    run_batched_phase,
    run_phase,
    segment_mean,
    term_means,
    term_totals,
)
from tgdd.models import build_model
from tgdd.resolve import DistillSettings
from tgdd.runtime import seeded_init
from tgdd.synthetic import decode, initial_images

log = logging.getLogger(__name__)


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


def decoded_input(it: Iteration) -> Callable[[torch.Tensor], torch.Tensor]:
    """A class's stored images -> every decoded image as the network takes it: :func:`synthetic_batch`
    of a batched pass, whose subset comes from its draws (:func:`draw_synthetic_subsets`)."""
    factor = it.ctx.settings.factor
    return lambda images: it.space.network_input(decode(images, factor))


def draw_synthetic_subsets(it: Iteration, real: bool = True) -> ClassDraws:
    """The draws of a batched pass over :func:`decoded_input`, each class keeping at most
    ``max_syn_per_class`` decoded images (:func:`synthetic_batch`'s subset)."""
    s = it.ctx.settings
    return draw_class_batches(it, s.ipc * s.factor**2, s.max_syn_per_class, real=real)


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


def matching_phase(it: Iteration, alpha: float) -> Phase:
    """SPEC §3 step 5: per class its real batch, its decoded synthetic batch, ONE augmentation draw
    for both (the authors' ``aug(torch.cat([real, syn]))`` with ``batch=True``), L_MMD + alpha L_SDC
    (terms ``loss``, ``mmd``, ``sdc``; no expert: L_SDC = 0)."""
    ctx, s = it.ctx, it.ctx.settings

    def synthetic(images: torch.Tensor) -> torch.Tensor:
        return it.space.network_input(synthetic_batch(images, s, ctx.gen))

    def one(c: int, images: torch.Tensor) -> tuple[torch.Tensor, Terms]:
        real, syn = class_batch(it, c, images, synthetic)
        loss, mmd, sdc = class_loss(it.extractor, it.expert, real, syn, c, alpha)
        return loss, {"loss": loss.detach(), "mmd": mmd, "sdc": sdc}

    def batched(images: torch.Tensor, drawn: ClassDraws) -> tuple[torch.Tensor, Terms]:
        b = class_batches(it, images, decoded_input(it), drawn)
        with torch.no_grad():
            real_means = segment_mean(it.extractor.features(b.real), b.real_ids, b.num_classes)
        mmd = (real_means - segment_mean(it.extractor.features(b.syn), b.syn_ids, b.num_classes)).pow(2).sum(1)
        if it.expert is None or alpha == 0:
            sdc = torch.zeros_like(mmd)
        else:
            per_image = F.cross_entropy(it.expert(b.syn), b.syn_ids, reduction="none")
            sdc = segment_mean(per_image.unsqueeze(1), b.syn_ids, b.num_classes).squeeze(1)
        loss = mmd + alpha * sdc
        return loss, {"loss": loss.detach().sum(), "mmd": mmd.detach().sum(), "sdc": sdc.detach().sum()}

    return Phase(one, batched, lambda: draw_synthetic_subsets(it))


class MatchingMethod(ImageMethod):
    """The distribution-matching iteration, run by :class:`tgdd.methods.loop.ImageMethod`'s loop;
    subclasses choose the networks (and may add phases after the matching pass, as DANCE's calibration)."""

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

    def initial_state(self, ctx: DistillContext, space: Space) -> MatchingState:
        s, train = ctx.settings, ctx.train
        init = initial_images(ctx.sampler, train.num_classes, s.ipc, s.factor, s.init, ctx.gen).to(ctx.device)
        images = ImageState(space.from_pixels(init), s.ipc, s.lr_img, s.momentum)
        return MatchingState(images, REAL_BATCHES[s.real_batches](ctx.sampler, s.real_batch))

    def prepare(self, ctx: DistillContext, state: MatchingState, space: Space) -> Step:
        """The two matching networks (frozen, compiled if asked) and the iteration: this iteration's
        networks (:meth:`networks`), pixel-space images clamped to [0, 1], the phases (:meth:`phases`).
        Batched, the iteration makes every phase's draws first, then computes from them: a fixed
        computation, replayed from a CUDA graph where ``distill.cuda_graphs`` and the augmentation
        allow (:func:`iteration_graphs`)."""
        s, train, device = ctx.settings, ctx.train, ctx.device
        terms = METHODS.get(s.method).terms  # "loss" first
        channels, size = train.images.shape[1], train.images.shape[2]
        augment = DiffAugment(s.dsa_strategy, s.augment_semantics)
        arch = self.arch(ctx)
        nets = tuple(_frozen(build_model(arch, channels, size, train.num_classes).to(device)) for _ in range(2))
        batched = self.joint_classes or batched_classes(ctx, has_batch_norm(nets[0]), arch)
        if s.compile:
            nets = tuple(_compiled(net) for net in nets)
        backend = iteration_graphs(ctx, augment, batched)
        graphed: dict[Hashable, GraphedStep] = {}  # one per networks and draw structure (one for TGDD)
        images = state.images  # the run's images and optimiser: the loop steps this one state

        def clamp() -> None:
            if not space.normalised:
                with torch.no_grad():
                    images.images.clamp_(0, 1)

        def compute(phases: list[Phase], draws: list[ClassDraws]) -> torch.Tensor:
            """The batched iteration after its draws: its summed terms in the card's order. Draws nothing."""
            clamp()
            passes = [run_batched_phase(images, p, s.image_update, d) for p, d in zip(phases, draws, strict=True)]
            return term_totals(functools.reduce(add_terms, passes), terms, device)

        def step(state: MatchingState) -> Measured:
            extractor, expert = self.networks(ctx, nets)
            shared = Iteration(ctx, state.real, augment, space, extractor, expert)
            phases = self.phases(shared, nets)
            if not batched:
                clamp()
                totals = functools.reduce(add_terms, [run_phase(images, p, s.image_update, False) for p in phases])
                return term_means(totals, terms, train.num_classes, device)
            draws = [phase.draw() for phase in phases]
            if backend is None:
                return measured_means(compute(phases, draws), terms, train.num_classes)
            key = (id(extractor), id(expert), tuple(d.structure() for d in draws))
            if key not in graphed:  # its phases and draw structure, bound once: what a graph replays

                def replayable(*tensors: torch.Tensor, phases=phases, draws=draws) -> torch.Tensor:
                    rest = iter(tensors)
                    return compute(phases, [d.with_tensors(rest) for d in draws])

                graphed[key] = GraphedStep(replayable, images.optimizer, backend, f"distill {s.method}")
            totals = graphed[key](*(t for d in draws for t in d.tensors()))
            ctx.execution["cuda_graph_replays"] = backend.replays
            return measured_means(totals, terms, train.num_classes)

        return step


def iteration_graphs(ctx: DistillContext, augment: DiffAugment, batched: bool) -> GraphBackend | None:
    """The graph backend for the batched iteration under ``distill.cuda_graphs`` (:func:`tgdd.graphs.graph_backend`),
    or None for eager iterations: also where the classes run one after another (per-class steps) or where the
    augmentation chooses its transforms per class (``dsa`` semantics with several groups: DM, DataDAM, M3D), whose
    computation differs between iterations; said once in the log. Recorded in ``ctx.execution``."""
    s = ctx.settings
    backend = graph_backend(s.cuda_graphs, ctx.device, f"distill {s.method}")
    reason = None
    if backend is not None and not batched:
        reason = "its classes run one after another (distill.batched_classes)"
    elif backend is not None and not augment.fixed_transforms:
        reason = f"its augmentation chooses transforms per class ({s.augment_semantics} {s.dsa_strategy})"
    if reason is not None:
        level = logging.WARNING if s.cuda_graphs == "always" else logging.INFO
        log.log(level, "distill %s: iterations run eagerly, not from CUDA graphs: %s", s.method, reason)
        backend = None
    if backend is not None:
        ctx.execution["cuda_graph_replays"] = 0
    return backend


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
