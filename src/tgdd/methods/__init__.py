"""Distillation methods behind one small interface, in a registry.

A method declares its published defaults (:meth:`Method.defaults`) and turns a
:class:`DistillContext` into stored synthetic images. Adding a method is one new entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from tgdd.config import Config
from tgdd.data.prepared import ClassSampler, PreparedSplit
from tgdd.data.registry import DatasetSpec
from tgdd.errors import TgddError
from tgdd.registry import Registry


@dataclass(frozen=True)
class DistillSettings:
    """``distill.*`` with every ``null`` replaced by the method's default: what actually ran."""

    method: str
    ipc: int
    iterations: int
    factor: int
    init: str
    alpha: float
    expert_region: int
    lr_img: float
    momentum: float
    real_batch: int
    max_syn_per_class: int
    dsa_strategy: str
    batched_classes: bool
    log_every: int
    checkpoint_every: int


@dataclass
class DistillContext:
    cfg: Config
    settings: DistillSettings
    spec: DatasetSpec
    train: PreparedSplit
    sampler: ClassSampler
    device: torch.device
    gen: torch.Generator
    trajectories: Any = None  # tgdd.experts.Trajectories for methods that need them
    checkpoint: Any = None  # tgdd.checkpoint.Checkpointer for resumable methods
    progress: bool = True


@dataclass
class DistillOutput:
    images: torch.Tensor  # stored images, floats in [0,1], class-major
    records: list[dict[str, float]] = field(default_factory=list)  # loss curve rows


class Method(Protocol):
    needs_trajectories: bool

    def defaults(self, ipc: int, spec: DatasetSpec) -> dict[str, Any]: ...

    def run(self, ctx: DistillContext) -> DistillOutput: ...


METHODS: Registry[Method] = Registry("method")


def _load_builtin() -> None:
    from tgdd.methods import dance, herding, matching, selection  # noqa: F401


_load_builtin()


def resolve_settings(cfg: Config, spec: DatasetSpec) -> DistillSettings:
    """Fill the ``null`` keys of ``distill`` with the method's defaults for this IPC and data set."""
    method = METHODS.get(cfg.distill.method)
    chosen = cfg.distill.model_dump()
    for key, value in method.defaults(cfg.distill.ipc, spec).items():
        if chosen.get(key) is None:
            chosen[key] = value
    missing = [k for k, v in chosen.items() if v is None]
    if missing:
        raise TgddError(f"method '{cfg.distill.method}' has no default for {missing}; set them in the config")
    return DistillSettings(**chosen)
