"""Training settings, learning-rate schedules and the named evaluation protocols (SPEC §5 and the
DC/DSA/DM one).

Plain data, apart from the training loop, so that configs and the Snakefile can check protocol
names and resolve their settings without importing torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from tgdd.dsa_strategy import without_flip
from tgdd.registry import Registry

if TYPE_CHECKING:
    from tgdd.config import Config


@dataclass(frozen=True)
class Schedule:
    """How a code base turns its nominal epoch count E into epochs trained and lr steps."""

    description: str
    trained_epochs: Callable[[int], int]
    milestones: Callable[[int], tuple[int, ...]]  # epochs after which lr is multiplied by gamma
    reset_momentum: bool  # the optimiser is re-created at a milestone (momentum buffers dropped)


SCHEDULES: Registry[Schedule] = Registry("learning-rate schedule")
SCHEDULES.add(
    "idc",
    Schedule(
        "IDC/DANCE/TGDD train.py and pretrain.py: E epochs, MultiStepLR at epochs 2E//3 and 5E//6",
        trained_epochs=lambda e: e,
        milestones=lambda e: tuple(sorted({2 * e // 3, 5 * e // 6})),
        reset_momentum=False,
    ),
)
SCHEDULES.add(
    "constant",
    Schedule(
        "MTT buffer.py: E epochs at one learning rate",
        trained_epochs=lambda e: e,
        milestones=lambda e: (),
        reset_momentum=False,
    ),
)
SCHEDULES.add(
    "dc",
    Schedule(
        "DC/DSA/DM utils.evaluate_synset: E+1 epochs; after epoch E//2+2 (its ep == E//2+1) lr x gamma "
        "with a new SGD optimiser, so the momentum restarts",
        trained_epochs=lambda e: e + 1,
        milestones=lambda e: (e // 2 + 2,),
        reset_momentum=True,
    ),
)


@dataclass(frozen=True)
class TrainSettings:
    epochs: int  # the nominal E of the schedule (``trained_epochs`` says how many run)
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    schedule: str  # a name in SCHEDULES
    gamma: float
    augment: str  # DSA strategy, parameters per image ('none' to disable)
    augment_semantics: str  # how the strategy is read (tgdd.dsa_strategy.SEMANTICS)
    cutmix_prob: float
    cutmix_beta: float = 1.0

    def trained_epochs(self) -> int:
        return SCHEDULES.get(self.schedule).trained_epochs(self.epochs)

    def milestone_epochs(self) -> list[int]:
        return list(SCHEDULES.get(self.schedule).milestones(self.epochs))

    def resets_momentum(self) -> bool:
        return SCHEDULES.get(self.schedule).reset_momentum


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    train: TrainSettings
    drops_flip: bool  # remove 'flip' for data sets whose labels a mirror image changes


PROTOCOLS: Registry[Protocol] = Registry("evaluation protocol")
PROTOCOLS.add(
    "tgdd",
    Protocol(
        "tgdd",
        "SPEC §5, the TGDD code's train.py: SGD 0.01 m0.9 wd5e-4, batch 64, lr x0.2 at 2E//3 and 5E//6, "
        "DSA color_crop_flip_scale_rotate read as IDC does (flip + color + one of crop/scale/rotate, per image; "
        "no flip where it changes labels) + CutMix p0.5",
        TrainSettings(1500, 64, 0.01, 0.9, 5e-4, "idc", 0.2, "color_crop_flip_scale_rotate", "idc", 0.5),
        drops_flip=True,
    ),
)
PROTOCOLS.add(
    "dc",
    Protocol(
        "dc",
        "DC/DSA/DM utils.evaluate_synset: SGD 0.01 m0.9 wd5e-4, batch 256, E+1 epochs, lr x0.1 after epoch "
        "E//2+2 with the momentum restarted, DSA color_crop_cutout_flip_scale_rotate (one group per batch, "
        "flips on every data set, as that code does), no CutMix",
        TrainSettings(1000, 256, 0.01, 0.9, 5e-4, "dc", 0.1, "color_crop_cutout_flip_scale_rotate", "dsa", 0.0),
        drops_flip=False,
    ),
)


def subset_epochs(images_per_class: int, num_classes: int) -> int:
    """SPEC §5 (the authors' ``ipc_epoch``): evaluation epochs for the 128 px ImageNet subsets, by
    decoded images per class (IPC x f^2); for 100 classes two thirds of that, rounded down to a
    multiple of 100 (``int(2/3 * e)``, then ``- e % 100``)."""
    steps = ((1, 3000), (10, 2000), (50, 1500), (200, 1000), (500, 500))
    epochs = next((e for limit, e in steps if images_per_class <= limit), 300)
    if num_classes == 100:
        epochs = int(2 / 3 * epochs)
        epochs -= epochs % 100
    return epochs


def protocol_settings(cfg: Config, images_per_class: int | None = None) -> TrainSettings:
    """The protocol's training settings: epochs from the config if set, else the SPEC's rule for
    the 128 px subsets under protocol ``tgdd``, else the protocol's; flips removed for data sets
    whose labels a mirror image would change, where the protocol's code base does so."""
    from tgdd.data.registry import get_dataset

    protocol = PROTOCOLS.get(cfg.evaluate.protocol)
    settings = protocol.train
    spec = get_dataset(cfg.dataset)
    if cfg.evaluate.epochs is not None:
        settings = replace(settings, epochs=cfg.evaluate.epochs)
    elif cfg.evaluate.protocol == "tgdd" and spec.image_size >= 128 and images_per_class is not None:
        settings = replace(settings, epochs=subset_epochs(images_per_class, spec.num_classes))
    if protocol.drops_flip and not spec.flip:
        settings = replace(settings, augment=without_flip(settings.augment))
    return settings


@dataclass(frozen=True)
class ExpertRecipe:
    """A code base's recipe for expert trajectories, read from its config section."""

    description: str
    section: Callable[[Config], Any]  # the config section holding its keys
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


EXPERT_RECIPES: Registry[ExpertRecipe] = Registry("expert recipe")
EXPERT_RECIPES.add(
    "tgdd",
    ExpertRecipe(
        "IDC/DANCE/TGDD pretrain.py: SGD 0.01 m0.9 wd5e-4, batch 64, lr x0.2 after 2E//3 and 5E//6, color_crop "
        "(IDC semantics) + CutMix p0.5 (section experts)",
        lambda cfg: cfg.experts,
        _tgdd_settings,
        "",
    ),
)
EXPERT_RECIPES.add(
    "mtt",
    ExpertRecipe(
        "MTT buffer.py: SGD 0.01, no momentum, no weight decay, constant lr, batch 256, DSA one group per batch "
        "(MTT's align_corners), no CutMix, 50 epochs (section experts.mtt)",
        lambda cfg: cfg.experts.mtt,
        _mtt_settings,
        "mtt",
    ),
)


def expert_settings(cfg: Config, recipe: str = "tgdd") -> TrainSettings:
    """The training settings of ``recipe``'s trajectories under ``cfg``."""
    return EXPERT_RECIPES.get(recipe).settings(cfg)


def num_trajectories(cfg: Config, recipe: str = "tgdd") -> int:
    return EXPERT_RECIPES.get(recipe).section(cfg).num_trajectories


def expert_recipe(cfg: Config, recipe: str = "tgdd") -> dict:
    """What makes a trajectory this config's, resolved (torch-free): its recipe, network, training
    data subset and every training setting as it runs. Not how many trajectories there are, nor how
    often a run is checkpointed: neither changes a trajectory."""
    settings = expert_settings(cfg, recipe)
    named = {} if recipe == "tgdd" else {"recipe": recipe}  # (the first recipe's records predate recipes)
    return {
        **named,
        "arch": cfg.experts.arch,
        "train_per_class": cfg.experts.train_per_class,
        **asdict(settings),
        "trained_epochs": settings.trained_epochs(),
        "milestone_epochs": settings.milestone_epochs(),
    }
