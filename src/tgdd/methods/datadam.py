"""DataDAM (Sajedi et al., ICCV 2023): spatial attention matching across layers plus a last-layer
MMD, under a freshly initialised network every iteration, as its authors' code does it
(``main_DataDAM.py``, ``utils.get_attention``; docs/fidelity.md, section DataDAM).

Per iteration, one random ConvNet (batch norm, training mode: the authors' ``get_network`` forces
``batchnorm``), ONE forward over every class's real images and ONE over every class's synthetic
images, so that batch norm normalises each over all classes as theirs does; then

    loss = w * sum_{l in layers} SAM_l + w * lambda * MMD,

with ``SAM_l = sum_k || mean_{real_k} a_l - mean_{syn_k} a_l ||^2`` over the L2-normalised attention
maps ``a_l = normalise(sum_c |f_{l,c}|^p)`` of block l's post-ReLU activation, ``MMD = sum_k ||
mean_{real_k} emb - mean_{syn_k} emb ||^2`` over the last block's flattened output, ``w = 100``,
``lambda = task_balance``, and one SGD step on the sum (DM's update, in normalised space).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tgdd.cards.datadam import DataDAMSettings
from tgdd.errors import TgddError
from tgdd.methods import DistillContext, implements
from tgdd.methods.loop import ClassDraws, Iteration, Phase, Terms, class_batches, draw_class_batches, segment_mean
from tgdd.methods.matching import DM
from tgdd.models import FAMILIES
from tgdd.synthetic import decode

ARCH_SUFFIX = {"batch": "-bn", "instance": "-in", "none": "-none"}


def matching_arch(arch: str, norm: str) -> str:
    """The ConvNet DataDAM matches under: depth and width of ``arch`` (experts.arch), its norm
    ``norm`` (``distill.datadam.norm``). DataDAM hooks a ConvNet's blocks, so ``arch`` must be one."""
    match = FAMILIES["convnet"].pattern.fullmatch(arch)
    if match is None:
        raise TgddError(f"datadam matches a ConvNet's block activations; experts.arch is '{arch}' (use convnet-<d>)")
    width = f"-w{match['width']}" if match["width"] else ""
    return f"convnet-{match['depth']}{ARCH_SUFFIX[norm]}{width}"


def attention_blocks(layers: str | list[int], depth: int) -> list[int]:
    """0-based indices of the matched blocks: ``all-but-last`` is the authors' ``range(len(taps) - 1)``."""
    if layers == "all-but-last":
        return list(range(depth - 1))
    if not layers or len(set(layers)) != len(layers) or not all(1 <= b <= depth for b in layers):
        raise TgddError(
            f"distill.datadam.attention_layers={layers}: distinct blocks among 1..{depth} of the ConvNet, or all-but-last"
        )
    return [b - 1 for b in sorted(layers)]


def attention_map(activation: torch.Tensor, power: float) -> torch.Tensor:
    """``get_attention(f, param=1, exp=p, norm='l2')``: ``sum_c |f_c|^p`` over the channels of
    ``[N, C, H, W]``, flattened to ``[N, H*W]`` and divided by its L2 norm (at least 1e-12). At
    p = 1 the channel sum is an L1 norm, taken in one pass (the same values and gradient, sign(f))."""
    one_pass = power == 1
    summed = torch.linalg.vector_norm(activation, ord=1, dim=1) if one_pass else activation.abs().pow(power).sum(1)
    return F.normalize(summed.flatten(1), p=2.0, dim=1)


def class_mean_distance(
    real: torch.Tensor, syn: torch.Tensor, real_ids: torch.Tensor, syn_ids: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """``error(real, syn, "MSE_B")`` per class: ``|| mean of class k's real rows - mean of its synthetic
    rows ||^2`` over the flattened rows, ``[num_classes]`` (their sum is the authors' error)."""
    real_means = segment_mean(real.flatten(1), real_ids, num_classes)
    syn_means = segment_mean(syn.flatten(1), syn_ids, num_classes)
    return (real_means - syn_means).pow(2).sum(1)


def datadam_loss(
    real_taps: tuple[list[torch.Tensor], torch.Tensor],
    syn_taps: tuple[list[torch.Tensor], torch.Tensor],
    real_ids: torch.Tensor,
    syn_ids: torch.Tensor,
    num_classes: int,
    own: DataDAMSettings,
    blocks: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per class: (loss, attention, mmd), ``loss = w * attention + w * lambda * mmd`` with
    ``attention = sum over the matched blocks of SAM``; taps are :meth:`ConvNet.activations`."""
    (real_maps, real_emb), (syn_maps, syn_emb) = real_taps, syn_taps
    zero = torch.zeros(num_classes, device=syn_emb.device, dtype=syn_emb.dtype)
    attention = sum(
        (
            class_mean_distance(
                attention_map(real_maps[b].detach(), own.power),
                attention_map(syn_maps[b], own.power),
                real_ids,
                syn_ids,
                num_classes,
            )
            for b in blocks
        ),
        zero,
    )
    mmd = class_mean_distance(real_emb.detach(), syn_emb, real_ids, syn_ids, num_classes)
    loss = own.attention_weight * attention + own.attention_weight * own.task_balance * mmd
    return loss, attention, mmd


def attention_phase(it: Iteration, own: DataDAMSettings, blocks: list[int]) -> Phase:
    """One iteration of ``main_DataDAM.py`` (l. 271-317): per class a fresh real batch and the class's
    synthetic images under one siamese DSA draw (independent per class), then one forward for all
    real images and one for all synthetic images, the loss of :func:`datadam_loss`. Terms
    ``loss``, ``attention`` (unweighted, summed over the matched layers) and ``mmd`` (unweighted)."""
    s = it.ctx.settings

    def synthetic(images: torch.Tensor) -> torch.Tensor:
        return it.space.network_input(decode(images, s.factor))

    def batched(images: torch.Tensor, drawn: ClassDraws) -> tuple[torch.Tensor, Terms]:
        b = class_batches(it, images, synthetic, drawn)
        with torch.no_grad():
            real_taps = it.extractor.activations(b.real)
        syn_taps = it.extractor.activations(b.syn)
        loss, attention, mmd = datadam_loss(real_taps, syn_taps, b.real_ids, b.syn_ids, b.num_classes, own, blocks)
        terms = {"loss": loss.detach().sum(), "attention": attention.detach().sum(), "mmd": mmd.detach().sum()}
        return loss, terms

    return Phase(None, batched, lambda: draw_class_batches(it, s.ipc * s.factor**2))


class DataDAM(DM):
    """DM's loop (fresh seeded network each iteration, one summed step, normalised images, fresh
    real batches) with DataDAM's network and loss; its loss is defined over all classes at once."""

    joint_classes = True

    def arch(self, ctx: DistillContext) -> str:
        return matching_arch(ctx.cfg.experts.arch, ctx.settings.of(DataDAMSettings).norm)

    def blocks(self, ctx: DistillContext) -> list[int]:
        depth = int(FAMILIES["convnet"].pattern.fullmatch(self.arch(ctx))["depth"])
        return attention_blocks(ctx.settings.of(DataDAMSettings).attention_layers, depth)

    def phases(self, it: Iteration, nets) -> list[Phase]:
        return [attention_phase(it, it.ctx.settings.of(DataDAMSettings), self.blocks(it.ctx))]

    def check(self, ctx: DistillContext) -> None:
        self.blocks(ctx)  # refuse a bad network or layer list before any compute


implements("datadam", DataDAM())
