"""The machinery of the methods that optimise synthetic images (TGDD, DM, DANCE, DataDAM, IDM, MTT): the images
and their optimiser (:class:`ImageState`), the space they live in (:class:`Space`), a pass over the classes
(:class:`Phase`, :func:`run_phase`), every class's batches assembled once (:func:`class_batch`,
:func:`class_batches`), what a run continues from (:class:`LoopState`) and THE iteration loop
(:class:`ImageMethod`: resume, finiteness, records, progress, checkpoints). A method supplies its state and
its iteration; the loop around them is written here once, so that every method resumes, logs and stops alike."""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from tgdd.augment import DiffAugment, GroupDraws, StackedDraws, normalize
from tgdd.errors import TgddError
from tgdd.methods import DistillContext, DistillOutput
from tgdd.progress import bar

# --- the images ---------------------------------------------------------------------------------


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


# --- a pass over the classes --------------------------------------------------------------------

Terms = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Phase:
    """One pass over the classes, each class with a loss on its own images. ``one(c, images_c)``
    draws class c's batches and returns (loss, terms); the batched pass does every class in one
    forward pass, split in two: ``draw()`` makes its random draws (:func:`draw_class_batches`) and
    ``batched(images, drawn)`` computes from them (per-class losses, terms summed over classes) and
    draws nothing, so that it is a fixed computation a CUDA graph can replay. Terms are the method's
    named loss terms (its card's ``terms``), detached scalars. ``one`` is None for a loss defined
    only over every class at once (:attr:`tgdd.methods.matching.MatchingMethod.joint_classes`)."""

    one: Callable[[int, torch.Tensor], tuple[torch.Tensor, Terms]] | None
    batched: Callable[[torch.Tensor, Any], tuple[torch.Tensor, Terms]]
    draw: Callable[[], Any] = lambda: None


def add_terms(total: Terms, more: Terms) -> Terms:
    return {key: total.get(key, 0) + more.get(key, 0) for key in total.keys() | more.keys()}


def run_phase(state: ImageState, phase: Phase, update: str, batched: bool) -> Terms:
    """Step the images through one phase under the method's update rule (its card's
    ``image_update``): ``summed`` is one step on the sum of the class losses (DM), ``per-class`` one
    step per class, literally or as :meth:`ImageState.probe` + :meth:`ImageState.replay`."""
    if batched:
        return run_batched_phase(state, phase, update, phase.draw())
    if update == "summed":
        parts = [phase.one(c, state.images[state.rows(c)]) for c in range(state.num_classes)]
        losses, terms = torch.stack([p[0] for p in parts]), functools.reduce(add_terms, [p[1] for p in parts])
        state.step(losses.sum())
        return terms
    totals: Terms = {}
    for c in range(state.num_classes):
        loss, terms = phase.one(c, state.images[state.rows(c)])
        state.step(loss)
        totals = add_terms(totals, terms)
    return totals


def run_batched_phase(state: ImageState, phase: Phase, update: str, drawn: Any) -> Terms:
    """The batched pass of :func:`run_phase` on draws already made (``drawn``, from ``phase.draw()``):
    draws nothing, so that a CUDA graph can replay it."""
    if update == "summed":
        losses, terms = phase.batched(state.images, drawn)
        state.step(losses.sum())
        return terms
    probe = state.probe()
    losses, terms = phase.batched(probe, drawn)
    (grad,) = torch.autograd.grad(losses.sum(), probe)
    state.replay(grad)
    return terms


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


# --- every class's batches ----------------------------------------------------------------------


@dataclass(frozen=True)
class Iteration:
    """What one iteration's phases share: the run's context and this iteration's networks."""

    ctx: DistillContext
    real: Any  # tgdd.data.prepared.EpochBatches or FreshBatches (None for a phase without real batches)
    augment: DiffAugment
    space: Space
    extractor: nn.Module | None
    expert: nn.Module | None


Synthetic = Callable[[torch.Tensor], torch.Tensor]
"""A class's stored images -> its synthetic batch as the network takes it (decoded, expanded, normalised)."""


def class_ids(counts: list[int], device: torch.device) -> torch.Tensor:
    """The class of every row of class-major batches of ``counts[c]`` rows per class."""
    return torch.repeat_interleave(torch.arange(len(counts), device=device), torch.tensor(counts, device=device))


def segment_mean(values: torch.Tensor, ids: torch.Tensor, groups: int) -> torch.Tensor:
    """Mean of the rows of ``values`` per group id: ``[n, d]`` -> ``[groups, d]`` (an empty group: 0).
    Counted by ``index_add`` rather than ``bincount``, which reads its size on the host on CUDA."""
    sums = torch.zeros(groups, values.shape[1], device=values.device, dtype=values.dtype).index_add(0, ids, values)
    ones = torch.ones(len(ids), device=values.device, dtype=values.dtype)
    counts = torch.zeros(groups, device=values.device, dtype=values.dtype).index_add(0, ids, ones).clamp(min=1)
    return sums / counts.unsqueeze(1)


def class_batch(
    it: Iteration, c: int, images: torch.Tensor, synthetic: Synthetic, real: bool = True
) -> tuple[torch.Tensor, ...]:
    """Class c's batches for a per-class loss: its next real batch (normalised; drawn first), then its
    synthetic batch ``synthetic(images)``, both under ONE augmentation draw (the authors'
    ``aug(torch.cat([real, syn]))``). ``real=False``: the synthetic batch alone, as ``(syn,)``."""
    gen = it.ctx.gen
    reals = (normalize(it.real.next(c, gen), it.space.mean, it.space.std),) if real else ()
    return it.augment.siamese(*reals, synthetic(images), gen=gen)


@dataclass(frozen=True)
class ClassBatches:
    """Every class's batches of one batched pass, concatenated class-major, with the class of each row."""

    real: torch.Tensor | None
    syn: torch.Tensor
    real_ids: torch.Tensor | None
    syn_ids: torch.Tensor
    num_classes: int


@dataclass(frozen=True)
class ClassDraws:
    """The random draws of one batched pass, made before its compute, in :func:`class_batch`'s order
    class after class: every class's real batch, then the synthetic rows each class keeps, then one
    augmentation draw per class. From these and the images, :func:`class_batches` is a fixed
    computation (no draw, no host synchronisation where the draws are stacked)."""

    real: torch.Tensor | None  # every class's real pixels in [0, 1], class-major (None: no real batches)
    real_ids: torch.Tensor | None
    syn_ids: torch.Tensor
    keep: torch.Tensor | None  # [classes, kept]: the rows of each class's synthetic batch kept (None: all)
    augmentation: StackedDraws | GroupDraws | None  # None: no augmentation

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """Every tensor of the draws, in a fixed order (what a CUDA graph reads from static buffers)."""
        values = () if self.augmentation is None else self._stacked().values
        return tuple(t for t in (self.real, self.real_ids, self.syn_ids, self.keep) if t is not None) + values

    def structure(self) -> tuple[Any, ...]:
        """What besides the tensors' shapes the compute depends on (part of a graph's key)."""
        aug = None if self.augmentation is None else self._stacked().transforms
        return (self.real is None, self.keep is None, aug)

    def with_tensors(self, tensors: Iterator[torch.Tensor]) -> ClassDraws:
        """These draws with their tensors taken, in :meth:`tensors`' order, from ``tensors``."""

        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else next(tensors)

        real, real_ids, syn_ids, keep = (take(t) for t in (self.real, self.real_ids, self.syn_ids, self.keep))
        aug = self.augmentation
        if aug is not None:
            aug = replace(self._stacked(), values=tuple(next(tensors) for _ in self._stacked().values))
        return ClassDraws(real, real_ids, syn_ids, keep, aug)

    def _stacked(self) -> StackedDraws:
        if not isinstance(self.augmentation, StackedDraws):
            raise TypeError("only stacked augmentation draws are fixed tensors (DiffAugment.fixed_transforms)")
        return self.augmentation


def draw_class_batches(it: Iteration, per_class: int, kept: int | None = None, real: bool = True) -> ClassDraws:
    """The draws of a batched pass over ``per_class`` synthetic images per class (as the phase's
    :data:`Synthetic` yields them), of which each class keeps a random ``kept`` if it has more
    (``synthetic_batch``'s subset); ``real=False``: no real batches."""
    ctx = it.ctx
    gen, device, num_classes = ctx.gen, ctx.device, ctx.train.num_classes
    reals = [it.real.next(c, gen) for c in range(num_classes)] if real else []
    keep = None
    if kept is not None and per_class > kept:
        picks = [torch.randperm(per_class, generator=gen, device=gen.device)[:kept] for _ in range(num_classes)]
        keep = torch.stack(picks).to(device)
    syn_ids = class_ids([kept if keep is not None else per_class] * num_classes, device)
    augmentation = it.augment.draw_groups(num_classes, gen, device) if it.augment.enabled else None
    if not real:
        return ClassDraws(None, None, syn_ids, keep, augmentation)
    return ClassDraws(torch.cat(reals), class_ids([len(r) for r in reals], device), syn_ids, keep, augmentation)


def class_batches(it: Iteration, images: torch.Tensor, synthetic: Synthetic, drawn: ClassDraws) -> ClassBatches:
    """:func:`class_batch` for every class in one go, from the draws ``drawn`` (:func:`draw_class_batches`):
    every class's real batch, every class's synthetic batch (the rows it keeps), each class's augmentation
    draw shared by its real and synthetic rows (independent between classes)."""
    ipc = it.ctx.settings.ipc
    num_classes = len(images) // ipc
    syns = [synthetic(images[c * ipc : (c + 1) * ipc]) for c in range(num_classes)]
    syn = torch.cat(syns)
    if drawn.keep is not None:
        offsets = torch.arange(num_classes, device=drawn.keep.device).view(-1, 1) * len(syns[0])
        syn = syn[(drawn.keep + offsets).flatten()]
    aug = drawn.augmentation
    if drawn.real is None:
        (syn,) = (syn,) if aug is None else aug.apply((syn,), (drawn.syn_ids,))
        return ClassBatches(None, syn, None, drawn.syn_ids, num_classes)
    both = (normalize(drawn.real, it.space.mean, it.space.std), syn)
    real_rows, syn = both if aug is None else aug.apply(both, (drawn.real_ids, drawn.syn_ids))
    return ClassBatches(real_rows, syn, drawn.real_ids, drawn.syn_ids, num_classes)


# --- what a run continues from ------------------------------------------------------------------


@dataclass
class LoopState:
    """Everything a run needs to continue exactly where it stopped: the images and their optimiser, the
    iteration reached and the records so far, plus the method's own state (:meth:`own_state`), which a
    checkpoint holds between the image optimiser and the generator."""

    images: ImageState
    iteration: int = field(default=0, kw_only=True)
    records: list[dict[str, float]] = field(default_factory=list, kw_only=True)

    def own_state(self) -> dict[str, Any]:
        """The method's own part of a checkpoint (none here)."""
        return {}

    def load_own_state(self, blob: dict[str, Any]) -> None:
        """Restore what :meth:`own_state` saved."""

    def to_checkpoint(self, gen: torch.Generator) -> dict[str, Any]:
        """Copies, not views of the live state: a caller may keep it while the run goes on."""
        return {
            "iteration": self.iteration,
            "images": self.images.images.detach().cpu(),
            "optimizer": copy.deepcopy(self.images.optimizer.state_dict()),
            **self.own_state(),
            "generator": gen.get_state(),
            "records": list(self.records),
        }

    def restore(self, blob: dict[str, Any], gen: torch.Generator) -> None:
        with torch.no_grad():
            self.images.images.copy_(blob["images"])
        self.images.optimizer.load_state_dict(copy.deepcopy(blob["optimizer"]))
        self.load_own_state(blob)
        gen.set_state(blob["generator"])
        self.iteration, self.records = int(blob["iteration"]), list(blob["records"])


@dataclass
class MatchingState(LoopState):
    """:class:`LoopState` plus the per-class real batches (their position in their epochs, if any)."""

    real: Any  # tgdd.data.prepared.EpochBatches or FreshBatches

    def own_state(self) -> dict[str, Any]:
        return {"real_batches": self.real.state_dict()}

    def load_own_state(self, blob: dict[str, Any]) -> None:
        self.real.load_state_dict(blob["real_batches"])


# --- the loop -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """What one iteration reports: its loss, its record values (the card's terms, in order) and whether the
    method's own learned state stayed finite (the images are checked by the loop)."""

    loss: float
    values: dict[str, float]
    finite: bool = True


def term_means(totals: Terms, terms: tuple[str, ...], num_classes: int, device: torch.device) -> Measured:
    """The class means of the terms a pass over the classes summed (0 for a term it did not report), in
    one host sync; the loss is the first term."""
    return measured_means(term_totals(totals, terms, device), terms, num_classes)


def term_totals(totals: Terms, terms: tuple[str, ...], device: torch.device) -> torch.Tensor:
    """The summed terms as one tensor in the card's order (0 for a term the pass did not report)."""
    zero = torch.zeros((), device=device)
    return torch.stack([totals.get(t, zero) for t in terms])


def measured_means(totals: torch.Tensor, terms: tuple[str, ...], num_classes: int) -> Measured:
    """:func:`term_totals`' class means, read in one host sync; the loss is the first term."""
    means = (totals / num_classes).tolist()
    return Measured(means[0], dict(zip(terms, means, strict=True)))


Step = Callable[[LoopState], Measured]
"""One iteration: steps the state once (not its iteration count) and says what it measured."""


class ImageMethod:
    """A method that optimises synthetic images, run by ONE loop (:meth:`run`). A method supplies its
    state (:meth:`initial_state`) and, once that state is restored from a checkpoint, its iteration
    (:meth:`prepare`); optionally its checks and its output. The loop refuses non-finite results, keeps a
    record every ``log_every`` iterations (and of the last), shows progress and checkpoints after every
    iteration as the checkpointer decides."""

    unstable = "images"  # what the error names when the state besides the loss became non-finite
    remedy = "lower distill.lr_img"  # what the error advises

    def check(self, ctx: DistillContext) -> None:
        """Refuse what the method cannot run, before any compute (nothing here)."""

    def space(self, ctx: DistillContext) -> Space:
        s, train = ctx.settings, ctx.train
        return Space(s.image_space == "normalised", train.mean.to(ctx.device), train.std.to(ctx.device))

    def initial_state(self, ctx: DistillContext, space: Space) -> LoopState:
        raise NotImplementedError

    def prepare(self, ctx: DistillContext, state: LoopState, space: Space) -> Step:
        raise NotImplementedError

    def output(self, ctx: DistillContext, state: LoopState, space: Space) -> DistillOutput:
        return DistillOutput(space.to_pixels(state.images.images.detach()), state.records)

    def run(self, ctx: DistillContext) -> DistillOutput:
        self.check(ctx)
        space = self.space(ctx)
        state = self.initial_state(ctx, space)
        if ctx.checkpoint is not None and ctx.checkpoint.resume_blob is not None:
            state.restore(ctx.checkpoint.resume_blob, ctx.gen)
        step = self.prepare(ctx, state, space)
        s = ctx.settings
        progress = bar(show=ctx.progress, total=s.iterations, initial=state.iteration, desc=f"distill {s.method}")
        while state.iteration < s.iterations:
            it = state.iteration
            measured = step(state)
            finite = math.isfinite(measured.loss)
            if not (finite and measured.finite and bool(torch.isfinite(state.images.images).all())):
                what = f"loss became {measured.loss}" if not finite else f"{self.unstable} became non-finite"
                raise TgddError(
                    f"{s.method}: {what} at iteration {it}; the last good checkpoint is kept ({self.remedy} and rerun)"
                )
            if it % s.log_every == 0 or it == s.iterations - 1:
                state.records.append({"iteration": it, **measured.values})
            state.iteration += 1
            progress.update()
            if ctx.checkpoint is not None:
                ctx.checkpoint.after_iteration(state.iteration, lambda: state.to_checkpoint(ctx.gen))
        progress.close()
        return self.output(ctx, state, space)
