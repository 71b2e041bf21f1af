"""MTT (Cazenavette et al., "Dataset Distillation by Matching Training Trajectories", CVPR 2022), as its
authors' code does it (github GeorgeCazenavette/mtt-distillation, ``distill.py``; docs/fidelity.md,
section MTT).

Each iteration takes the next expert of a without-replacement cycle and a start epoch t uniform on
``0..max_start_epoch-1``, starts a student at the expert's parameters after epoch t and takes ``syn_steps``
plain SGD steps on (DSA-augmented mini-batches of) the synthetic set with ONE learnable scalar lr,
keeping the graph of every step and of its gradient (``create_graph``). The loss

    L = || theta_N - theta*_{t+M} ||^2 / || theta*_t - theta*_{t+M} ||^2

over the single vector of every parameter is back-propagated through the whole unroll into the pixels
(SGD ``lr_img``, momentum 0.5, one tensor, normalised space, never clamped) and into the lr (SGD ``lr_lr``,
momentum 0.5). The experts are MTT's own recipe (its buffer.py: constant lr 0.01, no momentum, 50 epochs),
trained by ``tgdd experts`` for a card with ``expert_recipe="mtt"``.

Memory grows linearly in ``syn_steps x batch_syn``: every step's forward and recorded backward stay alive
until the final backward (benchmarks/mtt_memory.py).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from tgdd.augment import DiffAugment
from tgdd.cards import METHODS
from tgdd.cards.mtt import MTTSettings
from tgdd.errors import TgddError
from tgdd.methods import DistillContext, DistillOutput, implements
from tgdd.methods.loop import ImageMethod, ImageState, LoopState, Measured, Space, Step
from tgdd.models import build_model
from tgdd.synthetic import initial_images

LR_MOMENTUM = 0.5  # optimizer_lr = SGD([syn_lr], lr=lr_lr, momentum=0.5), hard-coded (distill.py l. 139)


# --- the student's parameters as one vector -------------------------------------------------------------


@dataclass(frozen=True)
class FlatLayout:
    """A network's parameters as ONE flat vector, in ``named_parameters`` order (their ``ReparamModule``):
    :meth:`flatten` turns a snapshot into the vector, :meth:`views` the vector into the named, shaped views a
    functional forward takes. Buffers (batch norm's running statistics) are not part of it: the student keeps
    its own module's, as theirs does."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    numels: tuple[int, ...]

    @classmethod
    def of(cls, module: nn.Module) -> FlatLayout:
        named = list(module.named_parameters())
        return cls(tuple(n for n, _ in named), tuple(p.shape for _, p in named), tuple(p.numel() for _, p in named))

    @property
    def size(self) -> int:
        return sum(self.numels)

    def flatten(self, state: Mapping[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        """``torch.cat([p.reshape(-1) for p in params])`` over the snapshot's parameters (distill.py l. 328-332)."""
        return torch.cat([state[n].detach().to(device).reshape(-1) for n in self.names])

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = flat.split(self.numels)
        return {n: p.view(s) for n, p, s in zip(self.names, parts, self.shapes, strict=True)}


def student_forward(net: nn.Module, layout: FlatLayout, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``student_net(x, flat_param=theta)``: the network's forward with its parameters taken from ``theta``."""
    return functional_call(net, layout.views(theta), (x,))


# --- the three draws of an iteration --------------------------------------------------------------------


class MiniBatches:
    """The student's mini-batches of one iteration (distill.py l. 340-348): when none is left, a fresh
    ``randperm`` of every synthetic index split into chunks of ``batch``; each step pops the LAST chunk (so a
    short remainder chunk comes first). Without replacement within a pass, reshuffled per pass, not class
    balanced; a new instance per iteration (their ``indices_chunks = []``)."""

    def __init__(self, count: int, batch: int) -> None:
        self.count, self.batch = count, batch
        self.chunks: list[torch.Tensor] = []

    def next(self, gen: torch.Generator) -> torch.Tensor:
        if not self.chunks:
            order = torch.randperm(self.count, generator=gen, device=gen.device)
            self.chunks = list(torch.split(order, self.batch))
        return self.chunks.pop()


class ExpertCycle:
    """Which expert each iteration matches (distill.py l. 162-179, 305-322).

    ``cycle`` (their default): trajectories grouped in files of ``per_file`` (buffer.py's ``save_interval``;
    trajectory i in file i // per_file), the file order shuffled, a file's experts shuffled when it is loaded
    and taken one per iteration; after its last expert the next file is loaded and shuffled, and after the last
    file the file order is shuffled again. ``uniform`` (their ``--load_all``): one uniform draw per iteration."""

    def __init__(self, count: int, per_file: int, selection: str, gen: torch.Generator) -> None:
        self.count, self.selection = count, selection
        self.files = [list(range(s, min(s + per_file, count))) for s in range(0, count, per_file)]
        self.file_order: list[int] = []
        self.file_pos = 0
        self.order: list[int] = []
        self.pos = 0
        if selection == "cycle":  # before the loop: shuffle the files, load the first and shuffle it
            self.file_order = self._shuffled(list(range(len(self.files))), gen)
            self.order = self._shuffled(self.files[self.file_order[0]], gen)

    @staticmethod
    def _shuffled(items: list[int], gen: torch.Generator) -> list[int]:
        return [items[k] for k in torch.randperm(len(items), generator=gen, device=gen.device).tolist()]

    def next(self, gen: torch.Generator) -> int:
        if self.selection == "uniform":
            return int(torch.randint(self.count, (1,), generator=gen, device=gen.device))
        expert = self.order[self.pos]
        self.pos += 1
        if self.pos == len(self.order):
            self.pos = 0
            self.file_pos += 1
            if self.file_pos == len(self.files):
                self.file_pos = 0
                self.file_order = self._shuffled(self.file_order, gen)
            self.order = self._shuffled(self.files[self.file_order[self.file_pos]], gen)
        return expert

    def state_dict(self) -> dict[str, Any]:
        return {"file_order": list(self.file_order), "file_pos": self.file_pos, "order": list(self.order),
                "pos": self.pos}  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.file_order, self.file_pos = list(state["file_order"]), int(state["file_pos"])
        self.order, self.pos = list(state["order"]), int(state["pos"])


def draw_start_epoch(max_start_epoch: int, gen: torch.Generator) -> int:
    """``np.random.randint(0, max_start_epoch)``: uniform on 0..max_start_epoch-1 (distill.py l. 324)."""
    return int(torch.randint(0, max_start_epoch, (1,), generator=gen, device=gen.device))


# --- the unroll and the loss ----------------------------------------------------------------------------


def unroll(
    net: nn.Module,
    layout: FlatLayout,
    start: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    syn_lr: torch.Tensor,
    steps: int,
    batch: int,
    augment: DiffAugment,
    gen: torch.Generator,
) -> torch.Tensor:
    """theta_N after ``steps`` student steps from ``start`` (distill.py l. 342-370): per step the next
    mini-batch (:class:`MiniBatches`), a fresh per-image DSA draw, the mean cross-entropy of the functional
    forward, its gradient with ``create_graph=True`` and ``theta - syn_lr * grad`` (plain SGD: one scalar lr,
    no momentum, no weight decay). The graph of every step stays alive, so the result is differentiable
    (to second order) in ``images`` and ``syn_lr``."""
    theta = start.detach().clone().requires_grad_(True)  # their leaf student_params[0]
    batches = MiniBatches(len(images), batch)
    for _ in range(steps):
        pick = batches.next(gen).to(images.device)
        x = augment(images[pick], gen)
        ce = F.cross_entropy(student_forward(net, layout, theta, x), labels[pick])
        (grad,) = torch.autograd.grad(ce, theta, create_graph=True)
        theta = theta - syn_lr * grad
    return theta


def matching_loss(final: torch.Tensor, start: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2`` over the one vector, each sum divided
    by the parameter count first as theirs (distill.py l. 373-388; the division cancels up to rounding). The
    denominator carries no gradient."""
    count = final.numel()
    loss = F.mse_loss(final, target, reduction="sum") / count
    dist = F.mse_loss(start.detach(), target.detach(), reduction="sum") / count
    return loss / dist


# --- the loop -------------------------------------------------------------------------------------------


@dataclass
class MTTState(LoopState):
    """:class:`LoopState` plus the learnable lr, its optimiser and the expert cycle."""

    syn_lr: torch.Tensor  # the learnable scalar lr, a 0-dim leaf
    lr_optimizer: torch.optim.SGD
    experts: ExpertCycle

    def own_state(self) -> dict[str, Any]:
        return {
            "syn_lr": self.syn_lr.detach().cpu(),
            "lr_optimizer": copy.deepcopy(self.lr_optimizer.state_dict()),
            "experts": self.experts.state_dict(),
        }

    def load_own_state(self, blob: Mapping[str, Any]) -> None:
        with torch.no_grad():
            self.syn_lr.copy_(blob["syn_lr"])
        self.lr_optimizer.load_state_dict(copy.deepcopy(blob["lr_optimizer"]))
        self.experts.load_state_dict(blob["experts"])


class MTT(ImageMethod):
    """The MTT loop (distill.py l. 185-396; the loop itself is :class:`ImageMethod`'s), one iteration:

    1. the next expert (:class:`ExpertCycle`) and a start epoch t (:func:`draw_start_epoch`);
    2. theta_N by :func:`unroll` from theta*_t with the current images and syn_lr;
    3. :func:`matching_loss` against theta*_{t+M}; one backward; one step of each optimiser.
    """

    settings_type: type[MTTSettings] = MTTSettings  # its own section (a subclass's: FTD's)
    unstable = "images or syn_lr"
    remedy = "lower distill.lr_img or distill.mtt.lr_lr"

    def check(self, ctx: DistillContext) -> None:
        s, own = ctx.settings, ctx.settings.of(self.settings_type)
        if s.factor != 1:
            raise TgddError(f"{s.method} stores plain images: distill.factor is {s.factor}, use 1")
        if s.image_space != "normalised":
            raise TgddError(f"{s.method} optimises normalised images, not '{s.image_space}'")
        if s.compile:
            raise TgddError(
                f"{s.method}: distill.compile is not supported (a functional student unrolled with create_graph)"
            )
        traj = ctx.trajectories
        if traj is None or not traj.snapshots:
            raise TgddError(f"{s.method} needs expert trajectories (its recipe): run `tgdd experts` first")
        own.check_epochs(traj.epochs)  # the files' own length (the config's was checked when it resolved)

    def initial_state(self, ctx: DistillContext, space: Space) -> MTTState:
        s, own, train = ctx.settings, ctx.settings.of(self.settings_type), ctx.train
        if own.expert_selection == "cycle":  # one buffer file's experts in memory at a time, as theirs holds
            ctx.trajectories.keep_at_most(own.experts_per_file)
        init = initial_images(ctx.sampler, train.num_classes, s.ipc, 1, s.init, ctx.gen).to(ctx.device)
        images = ImageState(space.from_pixels(init), s.ipc, s.lr_img, s.momentum)
        syn_lr = torch.tensor(own.lr_teacher, device=ctx.device).requires_grad_(True)
        lr_optimizer = torch.optim.SGD([syn_lr], lr=own.lr_lr, momentum=LR_MOMENTUM)
        experts = ExpertCycle(len(ctx.trajectories.snapshots), own.experts_per_file, own.expert_selection, ctx.gen)
        return MTTState(images, syn_lr, lr_optimizer, experts)

    def prepare(self, ctx: DistillContext, state: MTTState, space: Space) -> Step:
        """The student network (its own parameters unused: the forward takes theta's views) and the iteration
        (steps 1-3 above; records ``loss``, the lr this iteration used and the start epoch)."""
        s, own, device, train = ctx.settings, ctx.settings.of(self.settings_type), ctx.device, ctx.train
        terms = METHODS.get(s.method).terms
        augment = DiffAugment(s.dsa_strategy, s.augment_semantics)
        channels, size = train.images.shape[1], train.images.shape[2]
        net = build_model(ctx.cfg.experts.arch, channels, size, train.num_classes).to(device).train()
        net.requires_grad_(False)  # its own parameters are never used: the forward takes theta's views
        layout = FlatLayout.of(net)
        labels = torch.arange(train.num_classes, device=device).repeat_interleave(s.ipc)  # class-major, fixed
        snapshots = ctx.trajectories.snapshots

        def step(state: MTTState) -> Measured:
            expert = state.experts.next(ctx.gen)
            start_epoch = draw_start_epoch(own.max_start_epoch, ctx.gen)
            start = layout.flatten(snapshots[expert][start_epoch], device)
            target = layout.flatten(snapshots[expert][start_epoch + own.expert_epochs], device)
            lr_used = state.syn_lr.detach().clone()
            final = unroll(
                net, layout, start, state.images.images, labels, state.syn_lr, own.syn_steps, own.batch_syn,
                augment, ctx.gen,
            )  # fmt: skip
            loss = matching_loss(final, start, target)
            state.images.optimizer.zero_grad(set_to_none=True)
            state.lr_optimizer.zero_grad(set_to_none=True)
            loss.backward(inputs=[state.images.images, state.syn_lr])  # (theirs also fills theta_0's, unused)
            state.images.optimizer.step()
            state.lr_optimizer.step()
            values = torch.stack([loss.detach(), lr_used, state.syn_lr.detach()]).tolist()  # one host sync
            row = {"loss": values[0], "syn_lr": values[1], "start_epoch": float(start_epoch)}
            return Measured(values[0], {t: row[t] for t in terms}, finite=all(map(math.isfinite, values)))

        return step

    def output(self, ctx: DistillContext, state: MTTState, space: Space) -> DistillOutput:
        """The images, and the lr learned beside them."""
        learned = {
            "syn_lr": float(state.syn_lr.detach()),
            "syn_lr_initial": ctx.settings.of(self.settings_type).lr_teacher,
        }
        return DistillOutput(space.to_pixels(state.images.images.detach()), state.records, extra=learned)


implements("mtt", MTT())
