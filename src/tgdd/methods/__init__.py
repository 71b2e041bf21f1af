"""Distillation methods behind one small interface.

A method is a card and an implementation. Its card (:mod:`tgdd.cards`, one module per method)
declares, torch-free, its own settings section, its published defaults and tables, its expert
recipe and the mechanisms of its authors' code; :mod:`tgdd.resolve` turns a config into the
:class:`~tgdd.resolve.DistillSettings` it runs with. Its implementation, a module of this package
named on the card, turns a :class:`DistillContext` into stored synthetic images
(:class:`DistillOutput`) and registers itself with :func:`implements` when imported;
:func:`load_method` imports it when the method actually runs (docs/adding.md).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tgdd.cards import METHODS

if TYPE_CHECKING:
    import torch

    from tgdd.checkpoint import Checkpointer
    from tgdd.config import Config
    from tgdd.data.prepared import ClassSampler, PreparedSplit
    from tgdd.data.registry import DatasetSpec
    from tgdd.experts import Trajectories
    from tgdd.resolve import DistillSettings


@dataclass
class DistillContext:
    """What a method's run is given: the config, its resolved settings, the data and where to compute."""

    cfg: Config
    settings: DistillSettings
    spec: DatasetSpec
    train: PreparedSplit
    sampler: ClassSampler
    device: torch.device
    gen: torch.Generator
    trajectories: Trajectories | None = None  # its recipe's expert trajectories, for methods that need them
    checkpoint: Checkpointer | None = None  # for resumable methods
    progress: bool = True
    # how the run was executed where the settings leave it open (batched_classes under "auto"):
    # filled by the method, stored as the synthetic set's meta["execution"]
    execution: dict[str, Any] = field(default_factory=dict)


@dataclass
class DistillOutput:
    images: torch.Tensor  # stored images, floats in [0,1], class-major
    records: list[dict[str, float]] = field(default_factory=list)  # loss curve rows
    # what else a method learned, stored as the synthetic set's meta["extra"] (MTT: its learned syn_lr)
    extra: dict[str, Any] = field(default_factory=dict)


class Method(Protocol):
    def run(self, ctx: DistillContext) -> DistillOutput: ...


_IMPLEMENTATIONS: dict[str, Method] = {}


def implements(name: str, method: Method) -> None:
    """Register the implementation of the method declared as ``name`` (at its module's import)."""
    if METHODS.get(name).module != method.__class__.__module__:
        raise ValueError(
            f"method '{name}' is declared in {METHODS.get(name).module}, not {method.__class__.__module__}"
        )
    _IMPLEMENTATIONS[name] = method


def load_method(name: str) -> Method:
    """The implementation of a method, imported on first use."""
    importlib.import_module(METHODS.get(name).module)
    return _IMPLEMENTATIONS[name]
