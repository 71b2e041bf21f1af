"""IDM's card: a queue of partly trained networks, partition and expand, an accuracy-weighted
cross-entropy; its published settings per data set and IPC (command.txt; docs/fidelity.md, section IDM)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tgdd.cards.base import MethodCard, MethodSettings, published_ipc
from tgdd.data.registry import DatasetSpec

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

    stack_nets: Literal["auto", "always", "never"] = Field(
        "auto",
        description="train the fetched networks of an iteration as one stacked training (torch.func: step s of "
        "every fetched network together; the same batches, drawn in the same order, each network with its own "
        "momentum and meter; equal to one after another within float rounding). auto: on CUDA, not on the CPU; "
        "one network and networks that cannot stack: one after another; how, not what: never a reason to redo a "
        "set",
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


IDM = MethodCard(
    module="tgdd.methods.idm",
    needs_trajectories=False,
    optimizes_images=True,
    summary="IDM: queue of partly trained networks, partition and expand, accuracy-weighted cross-entropy",
    defaults=idm_defaults,
    settings=IDMSettings,
    terms=("loss", "mmd", "ce", "accuracy"),
    image_update="per-class",
    image_space="normalised",
    real_batches="fresh",
    published_row=idm_row,
)
