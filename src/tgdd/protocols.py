"""Training settings, learning-rate schedules and the named evaluation protocols (SPEC §5 and the
DC/DSA/DM one).

Plain data, apart from the training loop, so that configs and the Snakefile can check protocol
names without importing torch; :mod:`tgdd.resolve` turns a config into the settings a protocol or
an expert recipe trains with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from tgdd.registry import Registry


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
class Sharpness:
    """A GSAM step instead of a plain one (FTD's buffer_FTD.py; :mod:`tgdd.gsam`): the ascent radius rho
    (constant), the surrogate-gap coefficient alpha and whether the ascent is ASAM's (scaled by |w|)."""

    rho: float
    alpha: float
    adaptive: bool = True


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
    sharpness: Sharpness | None = None  # each step a GSAM step (FTD's experts); None: plain SGD steps

    def record(self) -> dict[str, Any]:
        """The settings as plain data; ``sharpness`` only where set, so that every other record stays as it was."""
        fields = asdict(self)
        if self.sharpness is None:
            del fields["sharpness"]
        return fields

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
