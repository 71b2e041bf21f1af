"""IDM (Zhao et al., "Improved Distribution Matching for Dataset Condensation", CVPR 2023), as its
authors' code does it (github uitrbn/IDM, ``IDM_cifar10.py`` and its siblings; docs/fidelity.md,
section IDM).

DM's mean-feature matching with four changes:

* **a queue of networks** trained a few SGD steps on real data during distillation: it starts with
  ``initial_nets`` fresh networks; every ``net_generate_interval`` iterations (iteration 0 included)
  a fresh one is pushed, the oldest popped first once the queue holds ``net_num``; each iteration
  ``match_nets`` of them (uniformly, without repeats) are matched under, and after the image update
  ``fetch_net_num`` of them (drawn again, independently) take ``model_train_steps`` SGD steps each on
  uniform batches of the whole training set (no augmentation);
* **partition and expand**: each stored image is cut into its 2x2 quadrants, each upsampled x2
  bilinearly (``number_sign_augment``), so a class is matched with its 4*IPC expanded images;
* **class-aware cross-entropy**: per class ``L_mmd + ce_weight * acc * CE(net(syn_c), c)``, with
  ``acc`` the matching network's running top-1 accuracy (in percent) on the real batches it was
  trained on since its meter was last reset (0 while it has none);
* **one image step per class** (SGD lr 0.2, momentum 0.5, one tensor, normalised space).

The meters are reset every ``meter_reset_interval`` iterations: their code resets them at each in-loop
test evaluation; here the same cadence without any evaluation (nothing here reads the test set).

The fetched networks train one after another (their code) or, with ``stack_nets`` (auto: on CUDA), as one
stacked training (:meth:`NetQueue.train_stacked`): the same batches drawn in the same order, each network
with its own momentum and meter, equal within float rounding.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import stack_module_state

from tgdd.augment import DiffAugment, normalize
from tgdd.cards import METHODS
from tgdd.cards.idm import IDMSettings
from tgdd.data.prepared import REAL_BATCHES, ClassSampler
from tgdd.errors import TgddError
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
    run_phase,
    segment_mean,
    term_means,
)
from tgdd.methods.matching import mmd_loss
from tgdd.models import build_model
from tgdd.models.convnet import ConvNet
from tgdd.models.zoo import FeatureClassifier
from tgdd.runtime import seeded_init
from tgdd.stacked import (
    network_losses,
    network_optimizer_state,
    stacked_forward,
    stacked_optimizer_state,
    unstack_into,
    use_stacking,
)
from tgdd.synthetic import initial_images

log = logging.getLogger(__name__)

# --- partition and expand -----------------------------------------------------------------------


def partition_and_expand(images: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """``dc_utils.number_sign_augment``: ``[n, C, H, W]`` -> ``[4n, C, H, W]``, quadrant-major (rows
    ``q*n .. q*n+n-1`` are quadrant q of every image; q = top-left, bottom-left, top-right,
    bottom-right, cut at ``H // 2`` in both directions), each quadrant upsampled by
    ``F.interpolate(scale_factor=2, mode='bilinear')`` (``align_corners=False``). ``factor`` 1: the
    images themselves (their code without ``--aug``).

    The same images as :func:`tgdd.synthetic.decode` with f = 2 (bit for bit, tested) in another order;
    their code cannot expand an odd size (its quadrants differ in size), so neither does this."""
    if factor == 1:
        return images
    if factor != 2:
        raise TgddError(f"idm partitions each image 2x2 (number_sign_augment): distill.factor is {factor}, use 1 or 2")
    h, w = images.shape[2:]
    if h != w or h % 2:
        raise TgddError(f"idm's partition and expand needs square images of an even size, not {h}x{w} px")
    half = h // 2
    quadrants = [
        images[:, :, :half, :half],
        images[:, :, half:, :half],
        images[:, :, :half, half:],
        images[:, :, half:, half:],
    ]
    return torch.cat([F.interpolate(q, scale_factor=2, mode="bilinear", align_corners=False) for q in quadrants])


# --- the queue ----------------------------------------------------------------------------------


@dataclass(eq=False)  # members compare by identity
class QueueNet:
    """One queue member: the network, its own SGD and its accuracy meter (``torchnet``'s
    ``ClassErrorMeter(accuracy=True)``: top-1 hits and images counted since the last reset)."""

    net: nn.Module
    optimizer: torch.optim.SGD
    correct: torch.Tensor  # 0-dim int64 on the network's device (no host sync per training step)
    seen: int = 0

    def accuracy(self) -> float:
        """``meter.value()[0] if meter.n != 0 else 0``: ``(1 - errors / n) * 100``, in percent."""
        if self.seen == 0:
            return 0.0
        return (1.0 - float(self.seen - int(self.correct)) / self.seen) * 100.0

    def count(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """``meter.add(logits, labels)``: a hit when the top-1 class is the label."""
        self.correct += (logits.topk(1, dim=1).indices[:, 0] == labels).sum()
        self.seen += len(labels)

    def reset(self) -> None:
        self.correct.zero_()
        self.seen = 0


class TrainingBatches:
    """The queue's real batches, their ``get_images(None, trained_bs)``: every step a uniform random
    subset of the whole training set (no repeat within a batch), normalised, not augmented."""

    def __init__(self, sampler: ClassSampler, batch: int, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.images, self.batch, self.mean, self.std = sampler.images, batch, mean, std
        self.labels = sampler.labels.to(sampler.images.device)

    def pick(self, gen: torch.Generator) -> torch.Tensor:
        """The random part of a batch: which images (all that a batch draws from ``gen``)."""
        return torch.randperm(len(self.images), generator=gen, device=gen.device)[: self.batch]

    def take(self, pick: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The picked images, normalised, and their labels (no randomness)."""
        pick = pick.to(self.images.device)
        return normalize(self.images[pick].float().div_(255.0), self.mean, self.std), self.labels[pick]

    def next(self, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.take(self.pick(gen))


def momentum_state(optimizer: torch.optim.SGD) -> dict[str, Any]:
    """``optimizer.state_dict()`` with a zero momentum buffer for every parameter that has none yet (a
    network not trained since it was pushed), so that the fetched networks' states stack: SGD's first step
    sets ``buf = d_p``, from a zero buffer it computes ``0 * momentum + d_p``, the same value. Without
    momentum SGD keeps no state, nor does this."""
    saved = optimizer.state_dict()
    if optimizer.defaults["momentum"] == 0:
        return saved
    (group,) = optimizer.param_groups
    state = {
        i: saved["state"][i] if i in saved["state"] else {"momentum_buffer": torch.zeros_like(p)}
        for i, p in enumerate(group["params"])
    }
    return {**saved, "state": state}


def queue_stacks(own: IDMSettings, device: torch.device, net: nn.Module) -> bool:
    """Whether the fetched networks (``fetch_net_num`` of ``net``'s architecture) train as one stacked
    training: :func:`tgdd.stacked.use_stacking` under ``stack_nets`` (never one network alone, never networks
    that cannot stack, said in the log; auto: on CUDA)."""
    return use_stacking(own.stack_nets, device, [net] * own.fetch_net_num, "idm: the queue's fetched networks")


class NetQueue:
    """The queue of partly trained networks (``net_list``, ``optimizer_list``, ``acc_meters``)."""

    def __init__(self, build: Callable[[], nn.Module], own: IDMSettings, device: torch.device) -> None:
        self.build, self.own, self.device = build, own, device
        self.members: list[QueueNet] = []
        self._forward: Callable[..., torch.Tensor] | None = None  # the stacked forward, built once

    def _sgd(self, params: Any) -> torch.optim.SGD:
        own = self.own
        return torch.optim.SGD(params, lr=own.net_lr, momentum=own.net_momentum, weight_decay=own.net_weight_decay)

    def __len__(self) -> int:
        return len(self.members)

    def _member(self, net: nn.Module) -> QueueNet:
        return QueueNet(net, self._sgd(net.parameters()), torch.zeros((), dtype=torch.long, device=self.device))

    def fresh(self, gen: torch.Generator) -> QueueNet:
        """A freshly initialised network (their ``get_network``, seeded from ``gen`` instead of the clock)."""
        seed = int(torch.randint(2**62, (1,), generator=gen, device=gen.device))
        with seeded_init(seed):
            net = self.build()
        return self._member(net.to(self.device).train())

    def fill(self, gen: torch.Generator) -> None:
        """The queue before the first iteration: ``initial_nets`` fresh networks (their 3)."""
        self.members = [self.fresh(gen) for _ in range(self.own.initial_nets)]

    def push(self, gen: torch.Generator) -> None:
        """``net_push_num`` times: pop the oldest if the queue is full, append a fresh network."""
        for _ in range(self.own.net_push_num):
            if len(self.members) >= self.own.net_num:
                self.members.pop(0)
            self.members.append(self.fresh(gen))

    def draw(self, k: int, gen: torch.Generator) -> list[int]:
        """``random.shuffle(range(len))[:k]``: k distinct members, uniformly, in random order."""
        return torch.randperm(len(self.members), generator=gen, device=gen.device)[:k].tolist()

    def reset_meters(self) -> None:
        for member in self.members:
            member.reset()

    def train(self, index: int, batches: TrainingBatches, gen: torch.Generator) -> None:
        """Member ``index`` takes ``model_train_steps`` SGD steps in training mode, each on a fresh batch,
        counting its pre-step logits in its meter (their l. 349-359)."""
        member = self.members[index]
        member.net.train()
        for _ in range(self.own.model_train_steps):
            images, labels = batches.next(gen)
            logits = member.net(images)
            loss = F.cross_entropy(logits, labels)
            member.optimizer.zero_grad()
            loss.backward()
            member.optimizer.step()
            member.count(logits.detach(), labels)

    def train_fetched(self, indices: list[int], batches: TrainingBatches, gen: torch.Generator, stack: bool) -> None:
        """The fetched members ``indices`` take their steps: one after another (their l. 344-359), or with
        ``stack`` (:func:`queue_stacks`) and two or more of them as one stacked training (the same result
        within float rounding)."""
        if stack and len(indices) >= 2 and self.own.model_train_steps:
            self.train_stacked(indices, batches, gen)
            return
        for index in indices:
            self.train(index, batches, gen)

    def train_stacked(self, indices: list[int], batches: TrainingBatches, gen: torch.Generator) -> None:
        """:meth:`train` of every member in ``indices`` as ONE stacked training: the batches are picked first,
        in the order one after another picks them (all of the first member's steps, then the next's), then
        step s of every member runs as one forward/backward (:func:`tgdd.stacked.stacked_forward`) and one SGD
        over the stacked tensors. SGD is elementwise and the loss a sum of the members' own losses, so each
        member takes its own steps; its momentum enters from and returns to its own optimiser (the format its
        checkpoint holds), its meter counts its own pre-step logits."""
        members = [self.members[i] for i in indices]
        steps = self.own.model_train_steps
        picks = [[batches.pick(gen) for _ in range(steps)] for _ in members]
        nets = [member.net.train() for member in members]
        params, buffers = stack_module_state(nets)
        optimizer = self._sgd(list(params.values()))
        optimizer.load_state_dict(stacked_optimizer_state([momentum_state(m.optimizer) for m in members]))
        if self._forward is None:
            self._forward = stacked_forward(copy.deepcopy(nets[0]).to("meta").train())
        for step in range(steps):
            drawn = [batches.take(pick[step]) for pick in picks]
            images, labels = torch.stack([x for x, _ in drawn]), torch.stack([y for _, y in drawn])
            logits = self._forward(params, buffers, images)
            loss = network_losses(logits, labels).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            for member, member_logits, member_labels in zip(members, logits.detach(), labels, strict=True):
                member.count(member_logits, member_labels)
        unstack_into(nets, params, buffers)
        stacked = optimizer.state_dict()
        for k, member in enumerate(members):
            member.optimizer.load_state_dict(network_optimizer_state(stacked, k))

    def state_dict(self) -> dict[str, Any]:
        """A copy, not views: a queue loaded from it in the same process shares no tensor with this one
        (``Optimizer.load_state_dict`` keeps the tensors it is given where it can)."""
        return {
            "members": [
                {
                    "net": {k: v.detach().to("cpu", copy=True) for k, v in m.net.state_dict().items()},
                    "optimizer": copy.deepcopy(m.optimizer.state_dict()),
                    "correct": int(m.correct),
                    "seen": m.seen,
                }
                for m in self.members
            ]
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.members = []
        for saved in state["members"]:
            net = self.build().to(self.device)
            net.load_state_dict(saved["net"])
            member = self._member(net.train())
            member.optimizer.load_state_dict(saved["optimizer"])
            member.correct.fill_(int(saved["correct"]))
            member.seen = int(saved["seen"])
            self.members.append(member)


@dataclass
class IDMState(MatchingState):
    """:class:`MatchingState` plus the queue (networks, their optimisers' momentum, their meters), saved
    after the records."""

    queue: NetQueue | None = None

    def to_checkpoint(self, gen: torch.Generator) -> dict[str, Any]:
        return {**super().to_checkpoint(gen), "queue": self.queue.state_dict()}

    def restore(self, blob: dict[str, Any], gen: torch.Generator) -> None:
        super().restore(blob, gen)
        self.queue.load_state_dict(blob["queue"])


# --- the loss -----------------------------------------------------------------------------------


def logits_of(net: nn.Module, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """The network's logits on ``images`` whose :meth:`features` are ``features``: their second full
    forward ``net(img_syn)``; for the networks whose forward is ``classifier(features(x))`` (ConvNet
    and the feature-classifier zoo) the classifier on the same features, the same numbers."""
    if type(net) in (ConvNet, FeatureClassifier):
        return net.classifier(features)
    return net(images)


def idm_class_loss(
    net: nn.Module, real: torch.Tensor, syn: torch.Tensor, label: int, accuracy: float, ce_weight: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One class on augmented, normalised batches: (loss, L_mmd, CE) with ``loss = L_mmd + (CE * acc) *
    ce_weight`` (their l. 309-327, in their order of products)."""
    with torch.no_grad():
        real_features = net.features(real)
    syn_features = net.features(syn)
    mmd = mmd_loss(real_features, syn_features)
    target = torch.full((len(syn),), label, device=syn.device, dtype=torch.long)
    ce = F.cross_entropy(logits_of(net, syn, syn_features), target)
    return mmd + (ce * accuracy) * ce_weight, mmd.detach(), ce.detach()


def idm_phase(it: Iteration, accuracy: float, ce_weight: float) -> Phase:
    """One pass over the classes under the matching network ``it.extractor``: per class a fresh real
    batch, the class's expanded images, one DSA draw for both (their two ``DiffAugment`` calls with one
    seed), :func:`idm_class_loss`. Terms ``loss``, ``mmd``, ``ce`` (unweighted) and ``accuracy`` (the
    weight's accuracy, %, per class: the records' class mean is the accuracy itself)."""
    ctx, s = it.ctx, it.ctx.settings
    net = it.extractor
    acc = torch.tensor(accuracy, device=ctx.device)

    def expanded(images: torch.Tensor) -> torch.Tensor:
        return partition_and_expand(it.space.network_input(images), s.factor)

    def one(c: int, images: torch.Tensor) -> tuple[torch.Tensor, Terms]:
        real, syn = class_batch(it, c, images, expanded)
        loss, mmd, ce = idm_class_loss(net, real, syn, c, accuracy, ce_weight)
        return loss, {"loss": loss.detach(), "mmd": mmd, "ce": ce, "accuracy": acc}

    def batched(images: torch.Tensor, drawn: ClassDraws) -> tuple[torch.Tensor, Terms]:
        b = class_batches(it, images, expanded, drawn)
        with torch.no_grad():
            real_means = segment_mean(net.features(b.real), b.real_ids, b.num_classes)
        syn_features = net.features(b.syn)
        mmd = (real_means - segment_mean(syn_features, b.syn_ids, b.num_classes)).pow(2).sum(1)
        per_image = F.cross_entropy(logits_of(net, b.syn, syn_features), b.syn_ids, reduction="none")
        ce = segment_mean(per_image.unsqueeze(1), b.syn_ids, b.num_classes).squeeze(1)
        loss = mmd + (ce * accuracy) * ce_weight
        terms = {
            "loss": loss.detach().sum(),
            "mmd": mmd.detach().sum(),
            "ce": ce.detach().sum(),
            "accuracy": acc * b.num_classes,
        }
        return loss, terms

    return Phase(one, batched, lambda: draw_class_batches(it, s.ipc * s.factor**2))


@contextmanager
def matching_mode(net: nn.Module) -> Iterator[nn.Module]:
    """A queue network while the images are matched under it: ``net.eval()`` as theirs (no effect on
    instance norm), weights not requiring gradients (theirs computes them and the next training step's
    ``zero_grad`` discards them: the same update, less work)."""
    params = [p for p in net.parameters() if p.requires_grad]
    net.eval()
    for p in params:
        p.requires_grad_(False)
    try:
        yield net
    finally:
        for p in params:
            p.requires_grad_(True)


# --- the loop -----------------------------------------------------------------------------------


class IDM(ImageMethod):
    """The IDM loop (``IDM_cifar10.py`` l. 163-359; the loop itself is :class:`ImageMethod`'s), one iteration:

    1. reset every meter when ``it`` is a positive multiple of ``meter_reset_interval``;
    2. push when ``it % net_generate_interval == 0``;
    3. draw ``match_nets`` members; under each, one per-class pass of image steps (:func:`idm_phase`);
    4. draw ``fetch_net_num`` members and train each ``model_train_steps`` steps on real batches (one
       after another, or stacked: :meth:`NetQueue.train_fetched`).
    """

    def arch(self, ctx: DistillContext) -> str:
        """The queue networks' architecture: the experts' (as DM's random networks)."""
        return ctx.cfg.experts.arch

    def check(self, ctx: DistillContext) -> None:
        s = ctx.settings
        if s.compile:
            raise TgddError("idm: distill.compile is not supported (a queue of up to net_num networks)")
        if s.image_update != "per-class":
            raise TgddError(f"idm steps its images once per class, not '{s.image_update}'")
        size = ctx.train.images.shape[2:]
        partition_and_expand(torch.zeros(1, 1, *size), s.factor)  # refuses what their partition cannot cut

    def initial_state(self, ctx: DistillContext, space: Space) -> IDMState:
        s, train = ctx.settings, ctx.train
        init = initial_images(ctx.sampler, train.num_classes, s.ipc, s.factor, s.init, ctx.gen).to(ctx.device)
        images = ImageState(space.from_pixels(init), s.ipc, s.lr_img, s.momentum)
        channels, size = train.images.shape[1], train.images.shape[2]
        arch = self.arch(ctx)
        queue = NetQueue(lambda: build_model(arch, channels, size, train.num_classes), s.of(IDMSettings), ctx.device)
        queue.fill(ctx.gen)
        return IDMState(images, REAL_BATCHES[s.real_batches](ctx.sampler, s.real_batch), queue=queue)

    def iteration(self, ctx: DistillContext, state: IDMState, shared: dict[str, Any]) -> Terms:
        """One iteration (steps 1-4 above); the image steps' terms summed over classes and matching nets."""
        s, own, gen, queue = ctx.settings, ctx.settings.of(IDMSettings), ctx.gen, state.queue
        it = state.iteration
        if own.meter_reset_interval and it > 0 and it % own.meter_reset_interval == 0:
            queue.reset_meters()
        if it % own.net_generate_interval == 0:
            queue.push(gen)
        totals: list[Terms] = []
        for index in queue.draw(own.match_nets, gen):
            member = queue.members[index]
            with matching_mode(member.net) as net:
                view = Iteration(ctx, state.real, shared["augment"], shared["space"], net, None)
                phase = idm_phase(view, member.accuracy(), own.ce_weight)
                totals.append(run_phase(state.images, phase, s.image_update, shared["batched"]))
        stack = shared.get("stack", False)  # absent: one after another
        queue.train_fetched(queue.draw(own.fetch_net_num, gen), shared["batches"], gen, stack)
        return functools.reduce(add_terms, totals)

    def prepare(self, ctx: DistillContext, state: IDMState, space: Space) -> Step:
        """The iteration (:meth:`iteration`) with what it shares across iterations."""
        s, own = ctx.settings, ctx.settings.of(IDMSettings)
        terms = METHODS.get(s.method).terms  # "loss" first
        stack = queue_stacks(own, ctx.device, state.queue.members[0].net)
        ctx.execution["stacked_queue_training"] = stack
        log.info("idm: the %d fetched queue networks train %s", own.fetch_net_num,
                 "stacked" if stack else "one after another")  # fmt: skip
        shared = {
            "augment": DiffAugment(s.dsa_strategy, s.augment_semantics),
            "space": space,
            "batches": TrainingBatches(ctx.sampler, own.net_batch, space.mean, space.std),
            # the queue's networks match in eval mode: batch norm uses running statistics, no class mixes
            "batched": batched_classes(ctx, False, self.arch(ctx)),
            "stack": stack,
        }

        def step(state: IDMState) -> Measured:
            return term_means(self.iteration(ctx, state, shared), terms, ctx.train.num_classes, ctx.device)

        return step


implements("idm", IDM())
