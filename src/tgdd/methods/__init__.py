"""Distillation methods behind one small interface, in a registry.

A method's card declares its own settings (a validated section ``distill.<method>``, defaults
included), its published defaults for the shared ``distill`` keys, the names of the loss terms it
records, and the mechanisms of its authors' code that are not settings (how the synthetic images
are stepped, in which space, how real batches are drawn); its implementation turns a
:class:`DistillContext` into stored synthetic images. Adding a method is one card in
:data:`METHODS` plus its implementation module (docs/adding.md).

The registry holds cards, not implementations, so that validating a config, resolving a method's
settings, planning a pipeline or parsing the Snakefile never imports torch (about 3 s on a
laptop); :func:`load_method` imports the implementation when a method actually runs.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from tgdd.errors import TgddError
from tgdd.registry import Registry

if TYPE_CHECKING:
    import torch

    from tgdd.config import Config
    from tgdd.data.prepared import ClassSampler, PreparedSplit

from tgdd.data.registry import DatasetSpec

log = logging.getLogger(__name__)


class MethodSettings(BaseModel):
    """A method's own settings section, ``distill.<method>`` (validated strictly; ``null`` fields
    get their published value from :meth:`resolve`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def resolve(self, ipc: int, spec: DatasetSpec) -> MethodSettings:
        """These settings with every ``null`` replaced by the method's published value."""
        return self

    def check_config(self, cfg: Config, recipe: str) -> None:
        """Refuse (resolved) settings that cannot work with the rest of ``cfg``, e.g. with the trajectories of
        the method's expert ``recipe``: called when the settings resolve, so before any step runs."""


class TGDDSettings(MethodSettings):
    alpha: float | None = Field(None, ge=0, description="weight of L_SDC; null: 2.5 at IPC <= 10, 0.5 above (SPEC §3)")
    expert_region: int = Field(7, ge=1, description="L: the expert stage is drawn from j..min(j+L-1, E)")

    def resolve(self, ipc: int, spec: DatasetSpec) -> TGDDSettings:
        return self if self.alpha is not None else self.model_copy(update={"alpha": 2.5 if ipc <= 10 else 0.5})


class DANCESettings(MethodSettings):
    calib_weight: float = Field(
        1.0, ge=0, description="weight of the calibration cross-entropy (the authors' code adds it unweighted)"
    )
    calib_passes: int = Field(1, ge=0, description="calibration passes over the classes per iteration (iter_calib)")


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


S = TypeVar("S", bound=MethodSettings)


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


Defaults = Callable[[int, DatasetSpec], dict[str, Any]]

# How the synthetic images are stepped (MethodCard.image_update).
IMAGE_UPDATES = {
    "per-class": "IDC/DANCE/TGDD: one tensor holds every class's images and one SGD over it is stepped once per "
    "class, so a step also moves the other classes' images by their momentum buffers",
    "summed": "DC/DM: one SGD step per iteration on the sum of the class losses",
}
# Where they live (MethodCard.image_space).
IMAGE_SPACES = {
    "pixels": "the pixel scale of the data ([0,1]), normalised inside the forward pass, clamped to [0,1] at the "
    "start of every iteration (IDC/DANCE/TGDD)",
    "normalised": "the networks' (normalised) input space, never clamped (DC/DM); stored back on the pixel scale",
}


@dataclass(frozen=True)
class MethodCard:
    """What the pipeline knows about a method before running it: torch-free, so that configs,
    the workflow and freshness checks see its resolved settings without importing torch."""

    module: str  # the module whose import registers the implementation (see `implements`)
    needs_trajectories: bool  # uses expert trajectories (so `tgdd experts` must run first)
    optimizes_images: bool  # runs distill.iterations of image updates (False: selects real images)
    summary: str
    defaults: Defaults  # (ipc, data set) -> published values of the shared keys a config leaves null
    settings: type[MethodSettings] = MethodSettings  # its own section, distill.<name>
    terms: tuple[str, ...] = ("loss",)  # the loss terms each record of losses.csv carries, by name
    expert_recipe: str = "tgdd"  # which trajectories, if it needs them (a key of tgdd.protocols.EXPERT_RECIPES)
    image_update: str = "per-class"  # a key of IMAGE_UPDATES
    image_space: str = "pixels"  # a key of IMAGE_SPACES
    real_batches: str = "epochs"  # a key of tgdd.data.prepared.REAL_BATCHES ('epochs' or 'fresh')
    # (ipc, data set) -> (data set, IPC) of the published row its defaults come from, for a method whose
    # defaults are a table of the authors' settings per data set and IPC (MTT, IDM); None: rules, no table
    published_row: Callable[[int, DatasetSpec], tuple[str, int]] | None = None


def tgdd_defaults(ipc: int, spec: DatasetSpec) -> dict[str, Any]:
    """SPEC §3 and the authors' arg_condense.py/reproduce_condense.py."""
    return {
        "iterations": 10_000,
        "factor": 2,
        "init": "mix",
        "lr_img": (0.01 if spec.image_size <= 64 else 0.1) * ipc,
        "real_batch": 128,
        "dsa_strategy": "color_crop_cutout",
        "augment_semantics": "idc",
    }


def dm_defaults(ipc: int, spec: DatasetSpec) -> dict[str, Any]:
    """DM's main_DM.py: 20k iterations, image lr 1 (on normalised images), 256 real per class, random
    real images as the start, DSA with the full strategy read one group per call."""
    return {
        "iterations": 20_000,
        "factor": 1,
        "init": "real",
        "lr_img": 1.0,
        "real_batch": 256,
        "dsa_strategy": "color_crop_cutout_flip_scale_rotate",
        "augment_semantics": "dsa",
    }


def selection_defaults(ipc: int, spec: DatasetSpec) -> dict[str, Any]:
    """Selection methods optimise nothing: the image-update keys do not apply (recorded as such)."""
    return {
        "iterations": 0,
        "factor": 1,
        "init": "real",
        "lr_img": 1.0,
        "real_batch": 1,
        "dsa_strategy": "none",
        "augment_semantics": "dsa",
    }


METHODS: Registry[MethodCard] = Registry("method")
METHODS.add(
    "tgdd",
    MethodCard(
        "tgdd.methods.matching",
        True,
        True,
        "TGDD: trajectory-guided distribution matching",
        tgdd_defaults,
        settings=TGDDSettings,
        terms=("loss", "mmd", "sdc"),
    ),
)
METHODS.add(
    "dm",
    MethodCard(
        "tgdd.methods.matching",
        False,
        True,
        "DM: distribution matching, random networks",
        dm_defaults,
        terms=("loss", "mmd"),
        image_update="summed",
        image_space="normalised",
        real_batches="fresh",
    ),
)
METHODS.add(
    "dance",
    MethodCard(
        "tgdd.methods.dance",
        True,
        True,
        "DANCE: interpolated encoder + calibration",
        tgdd_defaults,  # DANCE's reproduce_condense.py sets what TGDD's does
        settings=DANCESettings,
        terms=("loss", "mmd", "calibration"),
    ),
)
METHODS.add(
    "random",
    MethodCard("tgdd.methods.selection", False, False, "random real images per class", selection_defaults),
)
METHODS.add(
    "herding",
    MethodCard("tgdd.methods.herding", True, False, "herding in the expert's feature space", selection_defaults),
)


class DataDAMSettings(MethodSettings):
    """DataDAM's own keys (main_DataDAM.py, utils.get_attention); docs/fidelity.md, section DataDAM."""

    power: float = Field(
        1.0,
        ge=1,
        description="p of the attention map, the channel sum of abs(f)^p (the authors' code calls it with 1; paper: 4)",
    )
    attention_layers: Literal["all-but-last"] | list[int] = Field(
        "all-but-last",
        description="ConvNet blocks (1 = first) whose post-ReLU maps are matched; all-but-last: 1..depth-1 "
        "(code and paper; the last block's output is the MMD feature)",
    )
    attention_weight: float = Field(
        100.0, ge=0, description="weight of each layer's attention term (the code's 100; the paper writes 1)"
    )
    task_balance: float | None = Field(
        None,
        ge=0,
        description="lambda: the MMD term weighs attention_weight*lambda; null: 0.01 up to 64 px, 0.02 above "
        "(README table, low/high resolution)",
    )
    norm: Literal["batch", "instance", "none"] = Field(
        "batch",
        description="norm of the random ConvNet (depth, width from experts.arch): batch, which the code forces; "
        "instance, the paper's",
    )

    def resolve(self, ipc: int, spec: DatasetSpec) -> DataDAMSettings:
        if self.task_balance is not None:
            return self
        return self.model_copy(update={"task_balance": 0.01 if spec.image_size <= 64 else 0.02})


def datadam_defaults(ipc: int, spec: DatasetSpec) -> dict[str, Any]:
    """DataDAM's README hyperparameter table (img/HPTable.png): 8000 iterations, image lr 1 up to IPC 50,
    10 above; main_DataDAM.py's defaults for what the table leaves out: 64 real images per class,
    random real images as the start, DSA's full strategy read one group per call (as DM)."""
    return {
        "iterations": 8000,
        "factor": 1,
        "init": "real",
        "lr_img": 1.0 if ipc <= 50 else 10.0,
        "real_batch": 64,
        "dsa_strategy": "color_crop_cutout_flip_scale_rotate",
        "augment_semantics": "dsa",
    }


METHODS.add(
    "datadam",
    MethodCard(
        "tgdd.methods.datadam",
        False,
        True,
        "DataDAM: attention matching across layers + last-layer MMD, random networks",
        datadam_defaults,
        settings=DataDAMSettings,
        terms=("loss", "attention", "mmd"),
        image_update="summed",
        image_space="normalised",
        real_batches="fresh",
    ),
)

# IDM's command.txt, one row per (data set, IPC): the keys its commands set per setting (the others are
# the argparse defaults of IDM_cifar10.py l. 22-70). "eval_interval" there is the period of the in-loop
# test evaluation, which is also where the queue's accuracy meters are reset (meter_reset_interval here).
_IDM_COMMANDS: dict[tuple[str, int], dict[str, Any]] = {
    ("cifar10", 1): {"ce_weight": 0.5, "real_batch": 5000, "interval": 5, "steps": 10, "reset": 100},
    ("cifar10", 10): {"ce_weight": 0.5, "real_batch": 256, "interval": 30, "steps": 10, "reset": 100},
    ("cifar10", 50): {"ce_weight": 0.1, "real_batch": 256, "interval": 30, "steps": 10, "reset": 500},
    ("cifar100", 1): {"ce_weight": 0.5, "real_batch": 5000, "interval": 5, "steps": 10, "reset": 100},
    ("cifar100", 10): {"ce_weight": 0.1, "real_batch": 256, "interval": 30, "steps": 50, "reset": 100},
    ("cifar100", 50): {"ce_weight": 0.1, "real_batch": 256, "interval": 30, "steps": 10, "reset": 500},
    ("tinyimagenet", 1): {"ce_weight": 0.5, "real_batch": 256, "interval": 30, "steps": 10, "reset": 100},
    ("tinyimagenet", 10): {"ce_weight": 0.5, "real_batch": 256, "interval": 30, "steps": 10, "reset": 500},
    ("tinyimagenet", 50): {"ce_weight": 0.8, "real_batch": 256, "interval": 30, "steps": 50, "reset": 1000},
}


def published_ipc(published: Iterable[int], ipc: int) -> int:
    """The row of a table published at the IPCs ``published`` that serves ``ipc``: the smallest published IPC
    >= ``ipc``, the largest above them all (the authors' settings for the nearest larger set)."""
    rows = sorted(published)
    return next((p for p in rows if ipc <= p), rows[-1])


def idm_row(ipc: int, spec: DatasetSpec) -> tuple[str, int]:
    """(data set, IPC) of the command.txt row that serves this data set and IPC: its data set's (CIFAR-10's
    for a data set IDM has no command for), at :func:`published_ipc`."""
    dataset = spec.name if spec.name in ("cifar100", "tinyimagenet") else "cifar10"
    return dataset, published_ipc((i for d, i in _IDM_COMMANDS if d == dataset), ipc)


def idm_command(ipc: int, spec: DatasetSpec) -> dict[str, Any]:
    """The command.txt row IDM publishes for this data set and IPC (:func:`idm_row`)."""
    return _IDM_COMMANDS[idm_row(ipc, spec)]


class IDMSettings(MethodSettings):
    """IDM's own keys (IDM_cifar10.py and its siblings, command.txt); docs/fidelity.md, section IDM.
    IDM uses every one of a class's 4*IPC expanded images each step: distill.max_syn_per_class does not
    apply to it."""

    net_num: int = Field(
        100,
        ge=1,
        description="queue capacity: a push into a queue of this many networks first pops the oldest (net_num)",
    )
    initial_nets: int = Field(
        3, ge=1, description="freshly initialised networks in the queue before the first iteration (hard-coded 3)"
    )
    net_generate_interval: int | None = Field(
        None,
        ge=1,
        description="iterations between pushes of fresh networks, iteration 0 included (net_generate_interval); "
        "null: 5 at IPC 1 on CIFAR-10/100 (and data sets without a command), else 30 (command.txt)",
    )
    net_push_num: int = Field(1, ge=1, description="fresh networks pushed at each push (net_push_num)")
    match_nets: int = Field(
        1,
        ge=1,
        description="queue networks drawn (uniformly, without repeats) each iteration for the image update, each "
        "one per-class pass (train_net_num; command.txt: 1)",
    )
    fetch_net_num: int = Field(
        2,
        ge=0,
        description="queue networks drawn each iteration, independently of the matching ones, and trained on real "
        "data after the image update (fetch_net_num)",
    )
    model_train_steps: int | None = Field(
        None,
        ge=0,
        description="SGD steps each drawn network takes per iteration (model_train_steps); null: 50 at CIFAR-100 "
        "IPC 10 and TinyImageNet IPC 50, else 10 (command.txt)",
    )
    net_batch: int = Field(
        256,
        ge=1,
        description="real images per training step, uniform over the training set, not augmented (trained_bs)",
    )
    net_lr: float = Field(0.01, gt=0, description="SGD learning rate of the queue networks (lr_net)")
    net_momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum of the queue networks (--net_decay)")
    net_weight_decay: float = Field(5e-4, ge=0, description="SGD weight decay of the queue networks (--net_decay)")
    ce_weight: float | None = Field(
        None,
        ge=0,
        description="weight of the class-aware cross-entropy, times the matching network's running top-1 training "
        "accuracy in percent (ce_weight); null: command.txt's for the data set and IPC (0.1 to 0.8)",
    )
    meter_reset_interval: int | None = Field(
        None,
        ge=0,
        description="iterations between resets of every queue network's accuracy meter, at the multiples after 0 "
        "(their code resets them at each in-loop test evaluation, every eval_interval; here on that cadence, "
        "without the test set); 0: never; null: command.txt's eval_interval (100 to 1000)",
    )

    def resolve(self, ipc: int, spec: DatasetSpec) -> IDMSettings:
        row = idm_command(ipc, spec)
        published = {
            "net_generate_interval": row["interval"],
            "model_train_steps": row["steps"],
            "ce_weight": row["ce_weight"],
            "meter_reset_interval": row["reset"],
        }
        return self.model_copy(update={k: v for k, v in published.items() if getattr(self, k) is None})


def idm_defaults(ipc: int, spec: DatasetSpec) -> dict[str, Any]:
    """IDM's command.txt and argparse defaults: 20000 iterations, image lr 0.2 (SGD momentum 0.5, one step
    per class), 2x2 partition and expand, each stored image started from four average-pooled random real
    images (TinyImageNet: one full random image, IDM_tiny.py's inverted branch), the real batch of the
    command (5000 at IPC 1 on CIFAR), DSA's full strategy read one group per call (as DM)."""
    return {
        "iterations": 20_000,
        "factor": 2,
        "init": "real" if spec.name == "tinyimagenet" else "mix-pooled",
        "lr_img": 0.2,
        "real_batch": idm_command(ipc, spec)["real_batch"],
        "dsa_strategy": "color_crop_cutout_flip_scale_rotate",
        "augment_semantics": "dsa",
    }


METHODS.add(
    "idm",
    MethodCard(
        "tgdd.methods.idm",
        False,
        True,
        "IDM: queue of partly trained networks, partition and expand, accuracy-weighted cross-entropy",
        idm_defaults,
        settings=IDMSettings,
        terms=("loss", "mmd", "ce", "accuracy"),
        image_update="per-class",
        image_space="normalised",
        real_batches="fresh",
        published_row=idm_row,
    ),
)

# MTT's published settings, one row per (data set, IPC): the authors' table (readme.md, "a full list of
# hyper-parameters", an image; transcribed by a third-party benchmark whose values "are provided by the
# author", which the README's own CIFAR-100 IPC 1 command matches) and, for the 128 px ImageNet subsets, the
# README's command (batch_syn 20 at IPC 10 from the author's issue #1). batch_syn None: every synthetic image
# each step (their default, K*IPC). "zca": the cell was published with ZCA whitening, which tgdd does not
# implement (docs/fidelity.md, MTT): those cells run in the normalised pixel space here.
_MTT_TABLE: dict[tuple[str, int], dict[str, Any]] = {
    ("cifar10", 1): {"syn_steps": 50, "expert_epochs": 2, "max_start_epoch": 2, "batch_syn": None,
                     "lr_img": 100.0, "lr_lr": 1e-7, "lr_teacher": 0.01, "zca": True},
    ("cifar10", 10): {"syn_steps": 30, "expert_epochs": 2, "max_start_epoch": 20, "batch_syn": None,
                      "lr_img": 100.0, "lr_lr": 1e-5, "lr_teacher": 0.001, "zca": True},
    ("cifar10", 50): {"syn_steps": 30, "expert_epochs": 2, "max_start_epoch": 40, "batch_syn": None,
                      "lr_img": 1000.0, "lr_lr": 1e-5, "lr_teacher": 0.001, "zca": False},
    ("cifar100", 1): {"syn_steps": 20, "expert_epochs": 3, "max_start_epoch": 20, "batch_syn": None,
                      "lr_img": 1000.0, "lr_lr": 1e-5, "lr_teacher": 0.01, "zca": True},
    ("cifar100", 10): {"syn_steps": 20, "expert_epochs": 2, "max_start_epoch": 20, "batch_syn": None,
                       "lr_img": 1000.0, "lr_lr": 1e-5, "lr_teacher": 0.01, "zca": False},
    ("cifar100", 50): {"syn_steps": 80, "expert_epochs": 2, "max_start_epoch": 40, "batch_syn": 125,
                       "lr_img": 1000.0, "lr_lr": 1e-5, "lr_teacher": 0.01, "zca": True},
    ("tinyimagenet", 1): {"syn_steps": 10, "expert_epochs": 2, "max_start_epoch": 10, "batch_syn": None,
                          "lr_img": 10000.0, "lr_lr": 1e-4, "lr_teacher": 0.01, "zca": False},
    ("tinyimagenet", 10): {"syn_steps": 20, "expert_epochs": 2, "max_start_epoch": 40, "batch_syn": 200,
                           "lr_img": 10000.0, "lr_lr": 1e-4, "lr_teacher": 0.01, "zca": False},
    ("tinyimagenet", 50): {"syn_steps": 20, "expert_epochs": 2, "max_start_epoch": 40, "batch_syn": 300,
                           "lr_img": 10000.0, "lr_lr": 1e-4, "lr_teacher": 0.01, "zca": False},
    ("imagenet-subsets", 1): {"syn_steps": 20, "expert_epochs": 2, "max_start_epoch": 10, "batch_syn": None,
                              "lr_img": 1000.0, "lr_lr": 1e-6, "lr_teacher": 0.01, "zca": False},
    ("imagenet-subsets", 10): {"syn_steps": 20, "expert_epochs": 2, "max_start_epoch": 10, "batch_syn": 20,
                               "lr_img": 1000.0, "lr_lr": 1e-6, "lr_teacher": 0.01, "zca": False},
}  # fmt: skip


def mtt_row_key(ipc: int, spec: DatasetSpec) -> tuple[str, int]:
    """(data set, IPC) of the published MTT row that serves this data set and IPC: its data set's (the 128 px
    ImageNet subsets share one; CIFAR-10's for a data set MTT publishes nothing for: Fashion-MNIST, MNIST, SVHN,
    digits), at :func:`published_ipc` (the smallest published IPC >= ``ipc``, the largest above it)."""
    if spec.name in ("cifar100", "tinyimagenet"):
        dataset = spec.name
    else:
        dataset = "imagenet-subsets" if spec.image_size >= 128 else "cifar10"
    return dataset, published_ipc((i for d, i in _MTT_TABLE if d == dataset), ipc)


def mtt_row(ipc: int, spec: DatasetSpec) -> dict[str, Any]:
    """The published MTT row for this data set and IPC (:func:`mtt_row_key`)."""
    return _MTT_TABLE[mtt_row_key(ipc, spec)]


class MTTSettings(MethodSettings):
    """MTT's own keys (distill.py's arguments); docs/fidelity.md, section MTT. ``null``: the published row for
    the data set and IPC (:func:`mtt_row`)."""

    syn_steps: int | None = Field(
        None, ge=1, description="N: unrolled student SGD steps on the synthetic set per iteration (syn_steps); "
        "null: published (10 to 80)"
    )  # fmt: skip
    expert_epochs: int | None = Field(
        None, ge=1, description="M: the target is the expert M epochs after the start (expert_epochs); null: "
        "published (2; 3 at CIFAR-100 IPC 1)"
    )  # fmt: skip
    max_start_epoch: int | None = Field(
        None, ge=1, description="the start epoch is uniform on 0..max_start_epoch-1 (max_start_epoch); the "
        "trajectories need max_start_epoch-1+expert_epochs epochs; null: published (2 to 40)"
    )  # fmt: skip
    batch_syn: int | None = Field(
        None, ge=1, description="synthetic images per student step, chunks of one shuffled order (batch_syn); "
        "null: published (every image, K*IPC, except CIFAR-100 IPC 50: 125, TinyImageNet IPC 10/50: 200/300, "
        "ImageNet subsets IPC 10: 20)"
    )  # fmt: skip
    lr_teacher: float | None = Field(
        None, gt=0, description="initial value of the learnable student lr syn_lr (lr_teacher); null: published "
        "(0.01; 0.001 at CIFAR-10 IPC 10 and 50)"
    )  # fmt: skip
    lr_lr: float | None = Field(
        None, gt=0, description="SGD lr (momentum 0.5) of syn_lr (lr_lr); null: published (1e-7 to 1e-4)"
    )
    expert_selection: Literal["cycle", "uniform"] = Field(
        "cycle", description="cycle: experts without replacement, file by file in shuffled order (their default); "
        "uniform: one uniform draw per iteration (their --load_all; every trajectory held in memory)"
    )  # fmt: skip
    experts_per_file: int = Field(
        10, ge=1, description="the cycle takes trajectories a file of this many at a time, as buffer.py saved "
        "them (save_interval 10): trajectory i is in file i // experts_per_file; at most this many are held in memory"
    )  # fmt: skip

    def resolve(self, ipc: int, spec: DatasetSpec) -> MTTSettings:
        row = mtt_row(ipc, spec)
        published = {k: row[k] for k in ("syn_steps", "expert_epochs", "max_start_epoch", "lr_teacher", "lr_lr")}
        published["batch_syn"] = row["batch_syn"] or spec.num_classes * ipc
        return self.model_copy(update={k: v for k, v in published.items() if getattr(self, k) is None})

    def check_config(self, cfg: Config, recipe: str) -> None:
        from tgdd.protocols import expert_settings

        self.check_epochs(expert_settings(cfg, recipe).trained_epochs())

    def check_epochs(self, epochs: int) -> None:
        """The start epoch reaches max_start_epoch-1 and the target expert_epochs beyond it: refuse
        trajectories of ``epochs`` epochs that are too short (the draw is never clipped)."""
        need = self.max_start_epoch - 1 + self.expert_epochs
        if need > epochs:
            raise TgddError(
                f"mtt: distill.mtt.max_start_epoch={self.max_start_epoch} and distill.mtt.expert_epochs="
                f"{self.expert_epochs} need trajectories of at least {need} epochs, these have {epochs} "
                "(experts.mtt.epochs): lower the two keys or train longer trajectories"
            )


def mtt_defaults(ipc: int, spec: DatasetSpec) -> dict[str, Any]:
    """MTT's distill.py: 5000 iterations, the published image lr (SGD momentum 0.5, one step per iteration,
    normalised space, never clamped), random distinct real images as the start (pix_init real), plain stored
    images, DSA's full strategy one group per call with per-image parameters and MTT's align_corners (semantics
    mtt). MTT matches no real batches during distillation: real_batch does not apply (recorded as 1)."""
    return {
        "iterations": 5000,
        "factor": 1,
        "init": "real",
        "lr_img": mtt_row(ipc, spec)["lr_img"],
        "real_batch": 1,
        "dsa_strategy": "color_crop_cutout_flip_scale_rotate",
        "augment_semantics": "mtt",
    }


METHODS.add(
    "mtt",
    MethodCard(
        "tgdd.methods.mtt",
        True,
        True,
        "MTT: matching training trajectories, an unrolled student with a learnable lr",
        mtt_defaults,
        settings=MTTSettings,
        terms=("loss", "syn_lr", "start_epoch"),
        expert_recipe="mtt",
        image_update="summed",
        image_space="normalised",
        published_row=mtt_row_key,
    ),
)

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


def resolve_settings(cfg: Config, spec: DatasetSpec | None = None) -> DistillSettings:
    """Fill the ``null`` keys of ``distill`` with the method's defaults for this IPC and data set and
    add the method's mechanisms: what a distillation actually runs with (torch-free)."""
    from tgdd.data.registry import get_dataset

    card = METHODS.get(cfg.distill.method)
    spec = spec or get_dataset(cfg.dataset)
    chosen = {k: v for k, v in cfg.distill.model_dump().items() if k not in METHODS}
    section = getattr(cfg.distill, cfg.distill.method).resolve(cfg.distill.ipc, spec)
    section.check_config(cfg, card.expert_recipe)
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
    """Whether ``method``'s settings section checks itself against the rest of the config
    (:meth:`MethodSettings.check_config`; MTT: trajectories long enough for its start epochs)."""
    return METHODS.get(method).settings.check_config is not MethodSettings.check_config


def check_cells(cells: Iterable[Config]) -> None:
    """Resolve every cell whose method :func:`checks_config`, so that `tgdd pipeline`, Snakemake and
    DVC refuse a bad combination before training anything for it."""
    for cell in cells:
        if checks_config(cell.distill.method):
            resolve_settings(cell)


from tgdd.plugins import load_plugins  # noqa: E402  (plugins register into the registries above)

load_plugins()
