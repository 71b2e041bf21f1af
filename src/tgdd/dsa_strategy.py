"""DSA strategy strings (``color_crop_cutout``...): their groups and validation.

Apart from :mod:`tgdd.augment` so that a config is validated without importing torch.
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
