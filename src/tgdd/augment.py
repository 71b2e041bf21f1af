"""Differentiable siamese augmentation (DSA) and CutMix.

Written by hand rather than with kornia because the field's numbers depend on DSA's exact
parametrisation (additive brightness, per-image contrast, integer-shift crop, centred
cutout...) and on which transforms a strategy string applies per call, which differs between the
DC/DSA/DM and the IDC/DANCE/TGDD code bases (:data:`tgdd.dsa_strategy.SEMANTICS`). Every draw
comes from an explicit ``torch.Generator``, never the clock or the global RNG. Each transform
separates *drawing* its parameters (one per image, or one shared by a whole siamese call) from
*applying* them, so the same draw can be applied to a real and a synthetic batch alike and
gradients reach the input pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tgdd.dsa_strategy import GROUPS, IDC_AFTER, IDC_BEFORE, SEMANTICS, check_semantics, check_strategy


@dataclass(frozen=True)
class DSAParams:
    """The field's standard DSA ranges (DSA/DM code bases)."""

    scale: float = 1.2
    rotate: float = 15.0  # degrees
    crop_pad: float = 0.125
    cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    flip_prob: float = 0.5
    align_corners: bool = False  # of affine_grid/grid_sample in scale and rotate (MTT's code: True)


Draw = Callable[[int, int, torch.Generator, DSAParams, torch.device], torch.Tensor]
Apply = Callable[[torch.Tensor, torch.Tensor, DSAParams], torch.Tensor]


def _uniform(n: int, gen: torch.Generator, device: torch.device, cols: int = 1) -> torch.Tensor:
    return torch.rand(n, cols, generator=gen, device=device)


def _brightness(x: torch.Tensor, r: torch.Tensor, p: DSAParams) -> torch.Tensor:
    return x + (r.view(-1, 1, 1, 1) - 0.5) * p.brightness


def _saturation(x: torch.Tensor, r: torch.Tensor, p: DSAParams) -> torch.Tensor:
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (r.view(-1, 1, 1, 1) * p.saturation) + mean


def _contrast(x: torch.Tensor, r: torch.Tensor, p: DSAParams) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (r.view(-1, 1, 1, 1) + p.contrast) + mean


def _affine(x: torch.Tensor, theta: torch.Tensor, align_corners: bool) -> torch.Tensor:
    """``affine_grid``/``grid_sample`` (bilinear, zero padding). DC/DSA/DM and IDC/DANCE/TGDD call
    them with torch's default, since torch 1.3 ``align_corners=False``; MTT's copy of DSA passes
    ``align_corners=True``."""
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=align_corners)
    return F.grid_sample(x, grid, align_corners=align_corners)


def _scale(x: torch.Tensor, r: torch.Tensor, p: DSAParams) -> torch.Tensor:
    s = r * (p.scale - 1.0 / p.scale) + 1.0 / p.scale  # [n, 2]: sx, sy
    zeros = torch.zeros_like(s[:, 0])
    theta = torch.stack([torch.stack([s[:, 0], zeros, zeros], 1), torch.stack([zeros, s[:, 1], zeros], 1)], 1)
    return _affine(x, theta.to(x.dtype), p.align_corners)


def _rotate(x: torch.Tensor, r: torch.Tensor, p: DSAParams) -> torch.Tensor:
    angle = (r[:, 0] - 0.5) * 2 * p.rotate / 180 * math.pi
    cos, sin, zeros = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
    return _affine(x, theta.to(x.dtype), p.align_corners)


def _flip(x: torch.Tensor, r: torch.Tensor, p: DSAParams) -> torch.Tensor:
    return torch.where(r.view(-1, 1, 1, 1) < p.flip_prob, x.flip(3), x)


def _shift_steps(size: int, p: DSAParams) -> int:
    return int(size * p.crop_pad + 0.5)


def _crop(x: torch.Tensor, r: torch.Tensor, p: DSAParams) -> torch.Tensor:
    """Translate by whole pixels (at most crop_pad of the size), filling with zeros."""
    n, _, h, w = x.shape
    sh, sw = _shift_steps(h, p), _shift_steps(w, p)
    ty = torch.floor(r[:, 0] * (2 * sh + 1)).long() - sh  # integer in [-sh, sh]
    tx = torch.floor(r[:, 1] * (2 * sw + 1)).long() - sw
    rows = torch.arange(h, device=x.device).view(1, h) + ty.view(-1, 1)  # [n|1, h]
    cols = torch.arange(w, device=x.device).view(1, w) + tx.view(-1, 1)
    padded = F.pad(x, (1, 1, 1, 1))
    rows = (rows + 1).clamp(0, h + 1).expand(n, h)
    cols = (cols + 1).clamp(0, w + 1).expand(n, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows.view(n, h, 1), cols.view(n, 1, w)]
    return out.permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, r: torch.Tensor, p: DSAParams) -> torch.Tensor:
    """Zero a square of cutout*size, centred at a random position (it may hang over the edge)."""
    _, _, h, w = x.shape
    ch, cw = int(h * p.cutout + 0.5), int(w * p.cutout + 0.5)
    oy = torch.floor(r[:, 0] * (h + (1 - ch % 2))).long() - ch // 2  # top row of the square
    ox = torch.floor(r[:, 1] * (w + (1 - cw % 2))).long() - cw // 2
    rows = torch.arange(h, device=x.device).view(1, h)
    cols = torch.arange(w, device=x.device).view(1, w)
    in_rows = (rows >= oy.view(-1, 1)) & (rows < oy.view(-1, 1) + ch)
    in_cols = (cols >= ox.view(-1, 1)) & (cols < ox.view(-1, 1) + cw)
    keep = ~(in_rows.unsqueeze(2) & in_cols.unsqueeze(1))  # [n|1, h, w]
    return x * keep.unsqueeze(1).to(x.dtype)


@dataclass(frozen=True)
class Transform:
    """One DSA transform: how many uniform numbers it draws per image and how it applies them."""

    columns: int
    apply: Apply


TRANSFORMS: dict[str, Transform] = {
    "brightness": Transform(1, _brightness),
    "saturation": Transform(1, _saturation),
    "contrast": Transform(1, _contrast),
    "scale": Transform(2, _scale),
    "rotate": Transform(1, _rotate),
    "flip": Transform(1, _flip),
    "crop": Transform(2, _crop),
    "cutout": Transform(2, _cutout),
}


@dataclass(frozen=True)
class DrawnAugmentation:
    """Parameters of one draw: the transforms to apply and their uniform numbers."""

    transforms: tuple[str, ...]
    values: tuple[torch.Tensor, ...]

    def __call__(self, x: torch.Tensor, params: DSAParams = DSAParams()) -> torch.Tensor:
        for name, value in zip(self.transforms, self.values, strict=True):
            x = TRANSFORMS[name].apply(x, value, params)
        return x


def _uniform_index(count: int, gen: torch.Generator) -> int:
    return int(torch.randint(count, (1,), generator=gen, device=gen.device))


def _one_group(groups: list[str], gen: torch.Generator) -> list[str]:
    """DC/DSA/DM (``aug_mode='S'``): one group of the strategy, uniformly."""
    return [groups[_uniform_index(len(groups), gen)]]


def _idc_groups(groups: list[str], gen: torch.Generator) -> list[str]:
    """IDC/DANCE/TGDD's DiffAug: flip and color if named, one of the other (geometric) groups
    uniformly, cutout if named; in that order whatever the order of the string."""
    geometric = [g for g in groups if g not in IDC_BEFORE + IDC_AFTER]
    chosen = [g for g in IDC_BEFORE if g in groups]
    if geometric:
        chosen.append(geometric[_uniform_index(len(geometric), gen)] if len(geometric) > 1 else geometric[0])
    return chosen + [g for g in IDC_AFTER if g in groups]


GROUP_CHOICE: dict[str, Callable[[list[str], torch.Generator], list[str]]] = {
    "dsa": _one_group,
    "idc": _idc_groups,
    "dsa-all": lambda groups, _gen: list(groups),
    "mtt": _one_group,
}
# The semantics whose code base samples scale and rotate with align_corners=True.
ALIGN_CORNERS = {"mtt"}
assert set(GROUP_CHOICE) == set(SEMANTICS)


@dataclass(frozen=True)
class DiffAugment:
    """DSA with a strategy string read under named ``semantics`` (see :data:`SEMANTICS`): which
    groups one call applies. Within a call, each transform's parameters are drawn per image
    (network training) or once for every image (:meth:`siamese`, distribution matching)."""

    strategy: str
    semantics: str = "dsa"
    params: DSAParams | None = None  # None: the DSA ranges, with the semantics' align_corners

    def __post_init__(self) -> None:
        check_semantics(self.semantics)
        check_strategy(self.strategy)
        if self.params is None:
            object.__setattr__(self, "params", DSAParams(align_corners=self.semantics in ALIGN_CORNERS))

    @property
    def enabled(self) -> bool:
        return self.strategy != "none"

    def draw(self, n: int, gen: torch.Generator, device: torch.device) -> DrawnAugmentation:
        """Draw parameters for ``n`` images (``n=1`` for one draw shared by every image)."""
        groups = GROUP_CHOICE[self.semantics](self.strategy.split("_"), gen)
        names = tuple(t for g in groups for t in GROUPS[g])
        values = tuple(_uniform(n, gen, device, TRANSFORMS[t].columns) for t in names)
        return DrawnAugmentation(names, values)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Independent parameters per image (network training)."""
        if not self.enabled:
            return x
        return self.draw(x.shape[0], gen, x.device)(x, self.params)

    def siamese(self, *batches: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        """One parameter draw applied to every image of every batch (distribution matching)."""
        if not self.enabled:
            return batches
        drawn = self.draw(1, gen, batches[0].device)
        return tuple(drawn(b, self.params) for b in batches)

    @property
    def fixed_transforms(self) -> bool:
        """Whether every draw applies the same transforms (no group is chosen at random): then every
        group of :meth:`draw_groups` applies them and one fixed computation augments all groups."""
        groups = self.strategy.split("_")
        if not self.enabled or self.semantics == "dsa-all":
            return True
        if self.semantics == "idc":
            return len([g for g in groups if g not in IDC_BEFORE + IDC_AFTER]) <= 1
        return len(groups) == 1

    def draw_groups(self, num_groups: int, gen: torch.Generator, device: torch.device) -> GroupDraws | StackedDraws:
        """One siamese draw per group, independent between groups, in group order (what
        :meth:`siamese_per_group` applies). Where every group applies the same transforms the draws
        come stacked (:class:`StackedDraws`: fixed tensors, applied without a host synchronisation)."""
        draws = tuple(self.draw(1, gen, device) for _ in range(num_groups))
        transforms = draws[0].transforms
        if all(d.transforms == transforms for d in draws):
            values = tuple(torch.cat([d.values[k] for d in draws]) for k in range(len(transforms)))
            return StackedDraws(transforms, values, self.params)
        return GroupDraws(draws, self.params)

    def siamese_per_group(
        self, batches: tuple[torch.Tensor, ...], groups: tuple[torch.Tensor, ...], num_groups: int, gen: torch.Generator
    ) -> tuple[torch.Tensor, ...]:
        """:meth:`siamese` for many groups at once: images of group ``g`` (``groups[b][i] == g``)
        in every batch share draw ``g``; different groups get independent draws. One call per
        distinct transform choice instead of one per group (the batched-classes fast path)."""
        if not self.enabled:
            return batches
        return self.draw_groups(num_groups, gen, batches[0].device).apply(batches, groups)


@dataclass(frozen=True)
class StackedDraws:
    """One siamese draw per group where every group applies the same transforms: each transform's
    values of every group stacked, ``[groups, columns]``. Applying them is one fixed computation on
    fixed-shape tensors (each image takes its group's row): what a CUDA graph can replay."""

    transforms: tuple[str, ...]
    values: tuple[torch.Tensor, ...]
    params: DSAParams

    def apply(self, batches: tuple[torch.Tensor, ...], groups: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Every image of ``batches`` augmented by its group's draw (``groups``: the group of each row)."""
        return tuple(
            DrawnAugmentation(self.transforms, tuple(v[group_of] for v in self.values))(batch, self.params)
            for batch, group_of in zip(batches, groups, strict=True)
        )


@dataclass(frozen=True)
class GroupDraws:
    """One siamese draw per group where groups apply different transforms (one group of the
    strategy chosen per draw): applied once per distinct choice to the rows of its groups."""

    draws: tuple[DrawnAugmentation, ...]
    params: DSAParams

    def apply(self, batches: tuple[torch.Tensor, ...], groups: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Every image of ``batches`` augmented by its group's draw (``groups``: the group of each row)."""
        device = batches[0].device
        num_groups = len(self.draws)
        by_choice: dict[tuple[str, ...], list[int]] = {}
        for g, drawn in enumerate(self.draws):
            by_choice.setdefault(drawn.transforms, []).append(g)
        outputs = []
        for batch, group_of in zip(batches, groups, strict=True):
            out = batch
            for names, members in by_choice.items():
                member_ids = torch.tensor(members, device=device)
                rows = torch.isin(group_of, member_ids).nonzero().flatten()
                if len(rows) == 0:
                    continue
                # per-image parameters: each image takes its group's draw
                position = torch.full((num_groups,), -1, dtype=torch.long, device=device)
                position[member_ids] = torch.arange(len(members), device=device)
                per_image = position[group_of[rows]]
                values = tuple(
                    torch.cat([self.draws[g].values[k] for g in members])[per_image] for k in range(len(names))
                )
                out = out.index_copy(0, rows, DrawnAugmentation(names, values)(batch[rows], self.params))
            outputs.append(out)
        return tuple(outputs)


def cutmix(
    x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator, beta: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """CutMix (Yun et al. 2019): paste a box from a shuffled batch; returns mixed images,
    both label sets and the kept fraction lambda (the loss is ``lam*CE(y) + (1-lam)*CE(y2)``)."""
    n, _, h, w = x.shape
    lam = float(rng.beta(beta, beta))
    perm = torch.randperm(n, generator=gen, device=gen.device).to(x.device)
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y0, y1 = np.clip(cy - ch // 2, 0, h), np.clip(cy + ch // 2, 0, h)
    x0, x1 = np.clip(cx - cw // 2, 0, w), np.clip(cx + cw // 2, 0, w)
    mixed = x.clone()
    mixed[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
    lam = 1.0 - float((y1 - y0) * (x1 - x0)) / (h * w)
    return mixed, y, y[perm], lam


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Pixel values in [0,1] -> the normalised input the networks see."""
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
