"""A config turned into the settings each step runs with: resolution, one level above the config.

The configuration says what was asked (``null``: "the method's, protocol's or recipe's published
default"); the cards (:mod:`tgdd.cards`), the protocols and the expert recipes declare those
defaults. The functions here combine the two into what a step actually runs with, torch-free:
a distillation's :class:`DistillSettings` (:func:`resolve_settings`), an evaluation protocol's
training settings (:func:`protocol_settings`), an expert recipe's (:func:`expert_settings`,
:func:`expert_recipe`), and the records that artifacts store and freshness compares
(:func:`resolved_experts`, :func:`resolved_distill`, :func:`resolved_evaluation`). A default
changed in the code therefore changes what a step runs with exactly as an edited config does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

from tgdd.cards import METHODS
from tgdd.cards.base import MethodSettings
from tgdd.config import Config, ExpertsConfig, FTDExpertsConfig, MTTExpertsConfig, is_imported_method
from tgdd.data.registry import DatasetSpec, get_dataset
from tgdd.dsa_strategy import without_flip
from tgdd.errors import TgddError
from tgdd.protocols import PROTOCOLS, Sharpness, TrainSettings, subset_epochs
from tgdd.registry import Registry

log = logging.getLogger(__name__)

S = TypeVar("S", bound=MethodSettings)


@dataclass(frozen=True)
class DistillSettings:
    """``distill.*`` with every ``null`` replaced by the method's default: what actually ran.
    ``own`` is the method's own section, resolved (``distill.<method>``)."""

    method: str
    ipc: int
    iterations: int
    factor: int
    init: str
    lr_img: float
    momentum: float
    real_batch: int
    max_syn_per_class: int
    dsa_strategy: str
    augment_semantics: str
    batched_classes: bool | str  # or "auto": decided where the device is known (matching.batched_classes)
    compile: bool
    log_every: int
    checkpoint_every: int
    # the method's mechanisms (its card), recorded so that every synthetic set says how it was made
    image_update: str
    image_space: str
    real_batches: str
    cuda_graphs: str = "auto"  # replay the batched iteration as a CUDA graph: how, not what (NOT_RESULT_KEYS)
    own: dict[str, Any] = field(default_factory=dict)
    # the row of the method's published table its defaults were taken from, when the authors published none
    # at this IPC (MTT, IDM: {"dataset": "cifar10", "ipc": 10} at IPC 7); None: the IPC's own row or no table
    published_row: dict[str, Any] | None = None

    def record(self) -> dict[str, Any]:
        """The resolved settings as plain data, the method's own under its name (``tgdd: {alpha: ...}``):
        what a synthetic set stores as ``meta["settings"]`` and what freshness checks compare.
        ``published_row`` appears only when set, so that every other cell's record stays as it was."""
        shared = {k: v for k, v in asdict(self).items() if k != "own" and not (k == "published_row" and v is None)}
        return {**shared, self.method: dict(self.own)}

    def of(self, kind: type[S]) -> S:
        """The method's own settings as their typed section."""
        return kind.model_validate(self.own)


# --------------------------------------------------------------------------- evaluation protocols


def protocol_settings(cfg: Config, images_per_class: int | None = None) -> TrainSettings:
    """The protocol's training settings: epochs from the config if set, else the SPEC's rule for
    the 128 px subsets under protocol ``tgdd``, else the protocol's; flips removed for data sets
    whose labels a mirror image would change, where the protocol's code base does so."""
    protocol = PROTOCOLS.get(cfg.evaluate.protocol)
    settings = protocol.train
    spec = get_dataset(cfg.dataset)
    if cfg.evaluate.epochs is not None:
        settings = replace(settings, epochs=cfg.evaluate.epochs)
    elif cfg.evaluate.protocol == "tgdd" and spec.image_size >= 128 and images_per_class is not None:
        settings = replace(settings, epochs=subset_epochs(images_per_class, spec.num_classes))
    if protocol.drops_flip and not spec.flip:
        settings = replace(settings, augment=without_flip(settings.augment))
    if cfg.evaluate.augment == "none":  # the ablation's rows without augmentation: no DSA, no CutMix
        settings = replace(settings, augment="none", cutmix_prob=0.0)
    return settings


# --------------------------------------------------------------------------- expert recipes


@dataclass(frozen=True)
class ExpertRecipe:
    """A code base's recipe for expert trajectories, read from its config section."""

    description: str
    section: Callable[[Config], ExpertsConfig | MTTExpertsConfig | FTDExpertsConfig]  # the section holding its keys
    settings: Callable[[Config], TrainSettings]
    stream: str  # prefix of its random streams ('' for the first recipe, whose streams predate recipes)


def _tgdd_settings(cfg: Config) -> TrainSettings:
    e = cfg.experts
    return TrainSettings(e.epochs, e.batch_size, e.lr, e.momentum, e.weight_decay, "idc", 0.2, e.augment,
                         e.augment_semantics, e.cutmix_prob, e.cutmix_beta)  # fmt: skip


def _mtt_settings(cfg: Config) -> TrainSettings:
    m = cfg.experts.mtt
    return TrainSettings(m.epochs, m.batch_size, m.lr, m.momentum, m.weight_decay, "constant", 1.0, m.augment,
                         m.augment_semantics, 0.0)  # fmt: skip


def _ftd_settings(cfg: Config) -> TrainSettings:
    f = cfg.experts.ftd
    return TrainSettings(f.epochs, f.batch_size, f.lr, f.momentum, f.weight_decay, "constant", 1.0, f.augment,
                         f.augment_semantics, 0.0, sharpness=Sharpness(f.rho, f.alpha, f.adaptive))  # fmt: skip


EXPERT_RECIPES: Registry[ExpertRecipe] = Registry("expert recipe")
EXPERT_RECIPES.add(
    "tgdd",
    ExpertRecipe(
        description="IDC/DANCE/TGDD pretrain.py: SGD 0.01 m0.9 wd5e-4, batch 64, lr x0.2 after 2E//3 and 5E//6, color_crop "
        "(IDC semantics) + CutMix p0.5 (section experts)",
        section=lambda cfg: cfg.experts,
        settings=_tgdd_settings,
        stream="",
    ),
)
EXPERT_RECIPES.add(
    "mtt",
    ExpertRecipe(
        description="MTT buffer.py: SGD 0.01, no momentum, no weight decay, constant lr, batch 256, DSA one group per batch "
        "(MTT's align_corners), no CutMix, 50 epochs (section experts.mtt)",
        section=lambda cfg: cfg.experts.mtt,
        settings=_mtt_settings,
        stream="mtt",
    ),
)
EXPERT_RECIPES.add(
    "ftd",
    ExpertRecipe(
        description="FTD buffer_FTD.py: MTT's buffers (SGD 0.01, no momentum, constant lr, batch 256, DSA, 50 epochs), "
        "each step a GSAM step: rho 0.01, alpha 0.4, adaptive (section experts.ftd)",
        section=lambda cfg: cfg.experts.ftd,
        settings=_ftd_settings,
        stream="ftd",
    ),
)


def expert_settings(cfg: Config, recipe: str = "tgdd") -> TrainSettings:
    """The training settings of ``recipe``'s trajectories under ``cfg``."""
    return EXPERT_RECIPES.get(recipe).settings(cfg)


def num_trajectories(cfg: Config, recipe: str = "tgdd") -> int:
    return EXPERT_RECIPES.get(recipe).section(cfg).num_trajectories


def expert_recipe(cfg: Config, recipe: str = "tgdd") -> dict[str, Any]:
    """What makes a trajectory this config's, resolved (torch-free): its recipe, network, training
    data subset and every training setting as it runs. Not how many trajectories there are, nor how
    often a run is checkpointed: neither changes a trajectory."""
    settings = expert_settings(cfg, recipe)
    named = {} if recipe == "tgdd" else {"recipe": recipe}  # (the first recipe's records predate recipes)
    return {
        **named,
        "arch": cfg.experts.arch,
        "train_per_class": cfg.experts.train_per_class,
        **settings.record(),
        "trained_epochs": settings.trained_epochs(),
        "milestone_epochs": settings.milestone_epochs(),
    }


# --------------------------------------------------------------------------- distillation methods


def resolve_settings(cfg: Config, spec: DatasetSpec | None = None) -> DistillSettings:
    """Fill the ``null`` keys of ``distill`` with the method's defaults for this IPC and data set and
    add the method's mechanisms: what a distillation actually runs with (torch-free)."""
    card = METHODS.get(cfg.distill.method)
    spec = spec or get_dataset(cfg.dataset)
    chosen = {k: v for k, v in cfg.distill.model_dump().items() if k not in METHODS}
    section = getattr(cfg.distill, cfg.distill.method).resolve(cfg.distill.ipc, spec)
    if checks_config(cfg.distill.method):
        section.check_experts(expert_settings(cfg, card.expert_recipe))
    own = section.model_dump(mode="json")
    for key, value in card.defaults(cfg.distill.ipc, spec).items():
        if chosen.get(key) is None:
            chosen[key] = value
    missing = [k for k, v in chosen.items() if v is None] + [
        f"{cfg.distill.method}.{k}" for k, v in own.items() if v is None
    ]
    if missing:
        raise TgddError(f"method '{cfg.distill.method}' has no default for {missing}; set them in the config")
    mechanisms = {"image_update": card.image_update, "image_space": card.image_space, "real_batches": card.real_batches}
    row = unpublished_ipc_row(cfg.distill.method, cfg.distill.ipc, spec)
    return DistillSettings(**chosen, **mechanisms, own=own, published_row=row)


_TOLD: set[tuple[str, str, int]] = set()  # (method, data set, IPC) whose row substitution was logged


def unpublished_ipc_row(method: str, ipc: int, spec: DatasetSpec) -> dict[str, Any] | None:
    """The published row ``method``'s defaults come from when its authors published none at ``ipc``
    (``{"dataset": "cifar10", "ipc": 10}`` for MTT at IPC 7), else None. Said once per process in the log, as a
    warning: the row decides settings such as MTT's syn_steps and image lr, IDM's real batch."""
    card = METHODS.get(method)
    if card.published_row is None:
        return None
    dataset, row_ipc = card.published_row(ipc, spec)
    if row_ipc == ipc:
        return None
    if (method, spec.name, ipc) not in _TOLD:
        _TOLD.add((method, spec.name, ipc))
        log.warning(
            "%s: its authors published no settings at IPC %d: the defaults from their table are the %s IPC %d "
            "row's (recorded as published_row in the synthetic set's settings)",
            method, ipc, dataset, row_ipc,
        )  # fmt: skip
    return {"dataset": dataset, "ipc": row_ipc}


def checks_config(method: str) -> bool:
    """Whether ``method``'s settings section checks itself against the rest of the config: against the
    trajectories of its expert recipe (:meth:`MethodSettings.check_experts`; MTT: long enough for its
    start epochs)."""
    return METHODS.get(method).settings.check_experts is not MethodSettings.check_experts


def check_cells(cells: Iterable[Config]) -> None:
    """Resolve every cell whose method :func:`checks_config`, so that `tgdd pipeline`, Snakemake and
    DVC refuse a bad combination before training anything for it."""
    for cell in cells:
        if checks_config(cell.distill.method):
            resolve_settings(cell)


# --------------------------------------------------------------------------- what artifacts record

# Keys that change how a step runs, not what it makes: never a reason to redo it. batched_classes:
# the same update as per class (docs/fidelity.md), an execution choice like the device ("auto" decides
# by device), so a set distilled batched on a GPU is not stale where a CPU would run it per class.
# stack_nets: IDM's fetched networks trained as one stacked training, equal within float rounding.
# cuda_graphs: an iteration replayed from a CUDA graph runs the same kernels on the same values.
# At any depth of a record (a method's own section included).
NOT_RESULT_KEYS = {"checkpoint_every", "batched_classes", "stack_nets", "cuda_graphs"}


def results_only(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` without the keys of :data:`NOT_RESULT_KEYS`, at any depth."""
    return {
        key: results_only(value) if isinstance(value, dict) else value
        for key, value in record.items()
        if key not in NOT_RESULT_KEYS
    }


def resolved_experts(cfg: Config, recipe: str = "tgdd") -> dict[str, Any]:
    """What makes each trajectory of ``recipe`` under ``cfg``: its resolved recipe (not how many there are)."""
    return expert_recipe(cfg, recipe)


def resolved_distill(cfg: Config) -> dict[str, Any] | None:
    """The settings a distillation of ``cfg`` runs with (``meta["settings"]`` of its synthetic set,
    less the keys in :data:`NOT_RESULT_KEYS`); None for an imported set, which is not distilled."""
    if is_imported_method(cfg.distill.method):
        return None
    return results_only(resolve_settings(cfg).record())


def resolved_evaluation(cfg: Config, factor: int | None = None) -> dict[str, Any]:
    """What an evaluation of ``cfg`` trains with: the protocol's resolved settings (epochs by the
    subsets' rule from the decoded images per class, IPC x f^2; ``factor``: the set's own, else the
    method's resolved one) and the number of runs."""
    if factor is None:
        distill = resolved_distill(cfg)
        factor = distill["factor"] if distill else 1
    per_class = cfg.distill.ipc * factor**2
    settings = protocol_settings(cfg, images_per_class=per_class)
    protocol = {
        **settings.record(),
        "trained_epochs": settings.trained_epochs(),
        "milestone_epochs": settings.milestone_epochs(),
    }
    return {"runs": cfg.evaluate.runs, "protocol": cfg.evaluate.protocol, "protocol_settings": protocol}


# --------------------------------------------------------------------------- continual learning


def continual_settings(cfg: Config, images_per_class: int | None = None) -> TrainSettings:
    """The training settings of every network of the class-incremental evaluation
    (:mod:`tgdd.continual`): :func:`protocol_settings` of ``continual.protocol`` and ``continual.epochs``
    (null: the protocol's), with the same rules (the subsets' epochs, flips removed where labels need it)."""
    c = cfg.continual
    as_evaluation = cfg.evaluate.model_copy(update={"protocol": c.protocol, "epochs": c.epochs})
    return protocol_settings(cfg.model_copy(update={"evaluate": as_evaluation}), images_per_class)


def check_continual(cfg: Config) -> None:
    """Refuse step counts that do not split the data set's classes into equal groups (before any compute)."""
    classes = get_dataset(cfg.dataset).num_classes
    uneven = [n for n in cfg.continual.steps if classes % n]
    if uneven:
        raise TgddError(f"continual.steps {uneven}: {cfg.dataset}'s {classes} classes do not split into equal steps")


def resolved_continual(cfg: Config, factor: int | None = None) -> dict[str, Any]:
    """What a class-incremental evaluation of ``cfg`` trains with (one step count's file records it and
    freshness compares it): class orders, runs per order and step, the network, the protocol and its
    resolved settings (``factor`` as in :func:`resolved_evaluation`)."""
    if factor is None:
        distill = resolved_distill(cfg)
        factor = distill["factor"] if distill else 1
    settings = continual_settings(cfg, images_per_class=cfg.distill.ipc * factor**2)
    protocol = {
        **settings.record(),
        "trained_epochs": settings.trained_epochs(),
        "milestone_epochs": settings.milestone_epochs(),
    }
    c = cfg.continual
    return {"orders": c.orders, "runs": c.runs, "arch": c.arch, "protocol": c.protocol, "protocol_settings": protocol}
