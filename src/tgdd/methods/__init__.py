"""Distillation methods behind one small interface, in a registry.

A method declares its published defaults (:meth:`Method.defaults`) and turns a
:class:`DistillContext` into stored synthetic images. Adding a method is one card in
:data:`METHODS` plus its implementation module.

The registry holds cards, not implementations, so that validating a config, planning a pipeline
or parsing the Snakefile never imports torch (about 3 s on a laptop); :func:`load_method` imports
the implementation when a method actually runs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tgdd.errors import TgddError
from tgdd.registry import Registry

if TYPE_CHECKING:
    import torch

    from tgdd.config import Config
    from tgdd.data.prepared import ClassSampler, PreparedSplit
    from tgdd.data.registry import DatasetSpec


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
    compile: bool
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
    def defaults(self, ipc: int, spec: DatasetSpec) -> dict[str, Any]: ...

    def run(self, ctx: DistillContext) -> DistillOutput: ...


@dataclass(frozen=True)
class MethodCard:
    """What the pipeline knows about a method before running it."""

    module: str  # the module whose import registers the implementation (see `implements`)
    needs_trajectories: bool  # uses expert trajectories (so `tgdd experts` must run first)
    optimizes_images: bool  # runs distill.iterations of image updates (False: selects real images)
    summary: str


METHODS: Registry[MethodCard] = Registry("method")
METHODS.add("tgdd", MethodCard("tgdd.methods.matching", True, True, "TGDD: trajectory-guided distribution matching"))
METHODS.add("dm", MethodCard("tgdd.methods.matching", False, True, "DM: distribution matching, random networks"))
METHODS.add("dance", MethodCard("tgdd.methods.dance", True, True, "DANCE: interpolated encoder + calibration"))
METHODS.add("random", MethodCard("tgdd.methods.selection", False, False, "random real images per class"))
METHODS.add("herding", MethodCard("tgdd.methods.herding", True, False, "herding in the expert's feature space"))

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


def resolve_settings(cfg: Config, spec: DatasetSpec) -> DistillSettings:
    """Fill the ``null`` keys of ``distill`` with the method's defaults for this IPC and data set."""
    method = load_method(cfg.distill.method)
    chosen = cfg.distill.model_dump()
    for key, value in method.defaults(cfg.distill.ipc, spec).items():
        if chosen.get(key) is None:
            chosen[key] = value
    missing = [k for k, v in chosen.items() if v is None]
    if missing:
        raise TgddError(f"method '{cfg.distill.method}' has no default for {missing}; set them in the config")
    return DistillSettings(**chosen)
