"""Networks by name.

Every network maps ``[N, C, H, W]`` images to logits and exposes ``features(x)``: the
flattened representation that distribution matching compares (for ConvNet, the output
of the last conv block, as SPEC §4 says). Names are either exact registry entries
(``resnet10-ap``) or patterns that a family parses (``convnet-3-bn-w64``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from tgdd.errors import TgddError
from tgdd.registry import suggestion

ModelFactory = Callable[[int, int, int], nn.Module]  # (channels, image_size, num_classes)


@dataclass(frozen=True)
class ModelFamily:
    """A pattern of names and the function that builds a network from a match."""

    pattern: re.Pattern[str]
    example: str
    build: Callable[[re.Match[str], int, int, int], nn.Module]


_EXACT: dict[str, ModelFactory] = {}
_FAMILIES: list[ModelFamily] = []


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register a network under one exact name."""

    def decorate(factory: ModelFactory) -> ModelFactory:
        if name in _EXACT:
            raise ValueError(f"model '{name}' is registered twice")
        _EXACT[name] = factory
        return factory

    return decorate


def register_family(pattern: str, example: str):
    """Register a family of networks whose names match ``pattern`` (a full-match regex)."""

    def decorate(build):
        _FAMILIES.append(ModelFamily(re.compile(pattern), example, build))
        return build

    return decorate


def _load_builtin() -> None:
    from tgdd.models import convnet, resnet, zoo  # noqa: F401


def model_names() -> list[str]:
    """Exact names plus one example per family, for help texts and errors."""
    _load_builtin()
    return sorted(_EXACT) + [family.example for family in _FAMILIES]


def check_model_name(name: str) -> str:
    """Validate a model name without building it; returns the name."""
    _load_builtin()
    if name in _EXACT or any(f.pattern.fullmatch(name) for f in _FAMILIES):
        return name
    raise TgddError(f"unknown model '{name}'.{suggestion(name, model_names())}")


def build_model(name: str, channels: int, image_size: int, num_classes: int) -> nn.Module:
    """Build a freshly initialised network (initialisation uses torch's global RNG)."""
    check_model_name(name)
    if name in _EXACT:
        return _EXACT[name](channels, image_size, num_classes)
    for family in _FAMILIES:
        match = family.pattern.fullmatch(name)
        if match:
            return family.build(match, channels, image_size, num_classes)
    raise AssertionError("unreachable")  # check_model_name guarantees a match
