"""Networks by name.

Every network maps ``[N, C, H, W]`` images to logits and exposes ``features(x)``: the
flattened representation that distribution matching compares (for ConvNet, the output
of the last conv block, as SPEC §4 says). Names are either exact registry entries
(``resnet10-ap``) or patterns that a family parses (``convnet-3-bn-w64``).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tgdd.errors import TgddError
from tgdd.registry import suggestion

if TYPE_CHECKING:
    from torch import nn

ModelFactory = Callable[[int, int, int], "nn.Module"]  # (channels, image_size, num_classes)


# The names are declared here, their builders live in modules imported on first build, so that
# validating a config or parsing the Snakefile never imports torch.
@dataclass(frozen=True)
class ModelFamily:
    """A pattern of names, an example for help texts, and the module that builds them."""

    pattern: re.Pattern[str]
    example: str
    module: str


FAMILIES: dict[str, ModelFamily] = {
    "convnet": ModelFamily(
        re.compile(r"convnet-(?P<depth>[1-9])(?P<norm>-in|-bn|-none)?(?:-w(?P<width>\d+))?"),
        "convnet-3[-bn|-none][-w64]",
        "tgdd.models.convnet",
    ),
    "resnet-ap": ModelFamily(
        re.compile(r"resnet(?P<n>10|18)-ap(?P<norm>-in|-bn|-none)?(?:-w(?P<width>\d+))?"),
        "resnet10-ap[-bn][-w16]",
        "tgdd.models.resnet",
    ),
}
"""Families of networks by key; a name matching ``pattern`` is built by ``module``."""

EXACT: dict[str, str] = {
    name: "tgdd.models.zoo"
    for name in ("resnet10", "resnet10-bn", "resnet18", "resnet18-bn", "densenet121", "vgg11", "vgg11-bn", "alexnet")
}
"""Networks registered under one exact name, and the module that builds them."""

_EXACT_BUILDERS: dict[str, ModelFactory] = {}
_FAMILY_BUILDERS: dict[str, Callable[[re.Match[str], int, int, int], nn.Module]] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register the builder of a network declared in :data:`EXACT`."""

    def decorate(factory: ModelFactory) -> ModelFactory:
        if name not in EXACT or name in _EXACT_BUILDERS:
            raise ValueError(f"model '{name}' is not declared in tgdd.models.EXACT, or registered twice")
        _EXACT_BUILDERS[name] = factory
        return factory

    return decorate


def register_family(key: str):
    """Register the builder of the family declared as ``FAMILIES[key]``; it receives the match."""

    def decorate(build):
        if key not in FAMILIES or key in _FAMILY_BUILDERS:
            raise ValueError(f"model family '{key}' is not declared in tgdd.models.FAMILIES, or registered twice")
        _FAMILY_BUILDERS[key] = build
        return build

    return decorate


def model_names() -> list[str]:
    """Exact names plus one example per family, for help texts and errors."""
    return sorted(EXACT) + [family.example for family in FAMILIES.values()]


def check_model_name(name: str) -> str:
    """Validate a model name without building it (and without importing torch); returns the name."""
    if name in EXACT or any(f.pattern.fullmatch(name) for f in FAMILIES.values()):
        return name
    raise TgddError(f"unknown model '{name}'.{suggestion(name, model_names())}")


def build_model(name: str, channels: int, image_size: int, num_classes: int) -> nn.Module:
    """Build a freshly initialised network (initialisation uses torch's global RNG)."""
    check_model_name(name)
    if name in EXACT:
        importlib.import_module(EXACT[name])
        return _EXACT_BUILDERS[name](channels, image_size, num_classes)
    for key, family in FAMILIES.items():
        match = family.pattern.fullmatch(name)
        if match:
            importlib.import_module(family.module)
            return _FAMILY_BUILDERS[key](match, channels, image_size, num_classes)
    raise AssertionError("unreachable")  # check_model_name guarantees a match
