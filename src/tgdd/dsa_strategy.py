"""DSA strategy strings (``color_crop_cutout``...), the semantics that read them, and validation.

Apart from :mod:`tgdd.augment` so that a config is validated without importing torch.

The same strategy string means different things in the two code bases this project reproduces:

- ``dsa`` (DC/DSA/DM, ``utils.DiffAugment`` with ``aug_mode='S'``): ONE group of the string, drawn
  uniformly, per call;
- ``idc`` (IDC/DANCE/TGDD, ``misc/augment.DiffAug``): ``flip`` (if named), then ``color`` (if
  named), then exactly one of the remaining, geometric groups (``crop``, ``scale``, ``rotate``)
  drawn uniformly, then ``cutout`` (if named), on every call;
- ``dsa-all`` (DSA's ``aug_mode='M'``): every group in the string's order.
"""

from __future__ import annotations

from tgdd.errors import TgddError

# A strategy names groups joined by '_'; 'color' is three transforms applied together.
GROUPS: dict[str, tuple[str, ...]] = {
    "color": ("brightness", "saturation", "contrast"),
    "crop": ("crop",),
    "cutout": ("cutout",),
    "flip": ("flip",),
    "scale": ("scale",),
    "rotate": ("rotate",),
}


# The groups IDC's DiffAug applies on every call, in its order, around the one geometric group.
IDC_BEFORE = ("flip", "color")
IDC_AFTER = ("cutout",)

SEMANTICS: dict[str, str] = {
    "dsa": "DC/DSA/DM: one group of the strategy per call, drawn uniformly",
    "idc": "IDC/DANCE/TGDD: flip, color, one of the geometric groups, cutout (those named), every call",
    "dsa-all": "DSA's 'M' mode: every group of the strategy in order",
    "mtt": "MTT's copy of DSA: one group per call, scale and rotate sampled with align_corners=True",
}


def check_semantics(semantics: str) -> str:
    if semantics not in SEMANTICS:
        raise TgddError(f"unknown augmentation semantics '{semantics}'; valid: {', '.join(SEMANTICS)}")
    return semantics


def check_strategy(strategy: str) -> str:
    """Validate a strategy string such as ``color_crop_cutout`` (``none`` disables augmentation)."""
    if strategy == "none":
        return strategy
    unknown = [g for g in strategy.split("_") if g not in GROUPS]
    if unknown or not strategy:
        raise TgddError(f"unknown augmentation group(s) {unknown} in '{strategy}'; valid: {', '.join(GROUPS)}, none")
    return strategy


def without_flip(strategy: str) -> str:
    """Drop 'flip' from a strategy (for data sets whose labels a mirror image changes)."""
    kept = [g for g in strategy.split("_") if g != "flip"]
    return "_".join(kept) or "none"
