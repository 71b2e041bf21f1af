"""FTD's card: MTT's trajectory matching from expert buffers trained with GSAM (its own expert recipe,
``experts.ftd``), plus an exponential moving average of the synthetic images, which is the set it
stores; its published settings per data set and IPC (docs/fidelity.md, section FTD)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from tgdd.cards.base import MethodCard, published_ipc
from tgdd.cards.mtt import MTTSettings, mtt_defaults
from tgdd.data.registry import DatasetSpec

# FTD's published settings, one row per (data set, IPC): Table 7 of the paper, "Hyperparameter values we used
# for the main result table", shipped as the image docs/parameters.png of their repository (AngusDujw/
# FTD-distillation at 711532a); its CIFAR-10 IPC 10 and CIFAR-100 IPC 10 columns are also the commands of
# distill/run_distill.sh and the Readme. batch_syn None: every synthetic image each step (their "-", the
# default K*IPC). alpha: the table's alpha row, GSAM's surrogate-gap coefficient of the expert buffers, which
# tgdd's expert recipe takes once per data set (experts.ftd.alpha), not per IPC: recorded, not used here.
_FTD_TABLE: dict[tuple[str, int], dict[str, Any]] = {
    ("cifar10", 1): {"syn_steps": 50, "expert_epochs": 2, "max_start_epoch": 2, "batch_syn": None,
                     "lr_img": 100.0, "lr_lr": 1e-7, "lr_teacher": 0.01, "alpha": 0.3, "ema_decay": 0.9999},
    ("cifar10", 10): {"syn_steps": 30, "expert_epochs": 2, "max_start_epoch": 20, "batch_syn": None,
                      "lr_img": 100.0, "lr_lr": 1e-5, "lr_teacher": 0.001, "alpha": 0.3, "ema_decay": 0.9995},
    ("cifar10", 50): {"syn_steps": 30, "expert_epochs": 2, "max_start_epoch": 40, "batch_syn": None,
                      "lr_img": 1000.0, "lr_lr": 1e-5, "lr_teacher": 0.01, "alpha": 1.0, "ema_decay": 0.999},
    ("cifar100", 1): {"syn_steps": 40, "expert_epochs": 3, "max_start_epoch": 20, "batch_syn": None,
                      "lr_img": 1000.0, "lr_lr": 1e-5, "lr_teacher": 0.01, "alpha": 1.0, "ema_decay": 0.9995},
    ("cifar100", 10): {"syn_steps": 20, "expert_epochs": 2, "max_start_epoch": 40, "batch_syn": None,
                       "lr_img": 1000.0, "lr_lr": 1e-5, "lr_teacher": 0.01, "alpha": 1.0, "ema_decay": 0.9995},
    ("cifar100", 50): {"syn_steps": 80, "expert_epochs": 2, "max_start_epoch": 40, "batch_syn": 1000,
                       "lr_img": 1000.0, "lr_lr": 1e-5, "lr_teacher": 0.01, "alpha": 1.0, "ema_decay": 0.999},
    ("tinyimagenet", 1): {"syn_steps": 30, "expert_epochs": 2, "max_start_epoch": 10, "batch_syn": None,
                          "lr_img": 10000.0, "lr_lr": 1e-4, "lr_teacher": 0.01, "alpha": 1.0, "ema_decay": 0.999},
    ("tinyimagenet", 10): {"syn_steps": 20, "expert_epochs": 2, "max_start_epoch": 40, "batch_syn": 500,
                           "lr_img": 10000.0, "lr_lr": 1e-4, "lr_teacher": 0.01, "alpha": 1.0, "ema_decay": 0.999},
}  # fmt: skip


def ftd_row_key(ipc: int, spec: DatasetSpec) -> tuple[str, int]:
    """(data set, IPC) of the published FTD row that serves this data set and IPC: its data set's for CIFAR-100
    and TinyImageNet, TinyImageNet's for the 128 px ImageNet subsets (FTD publishes none; the largest images it
    does), CIFAR-10's for the rest (Fashion-MNIST, MNIST, SVHN, digits), at :func:`published_ipc` (the smallest
    published IPC >= ``ipc``, the largest above them: TinyImageNet IPC 10's for its IPC 50)."""
    if spec.name in ("cifar100", "tinyimagenet"):
        dataset = spec.name
    else:
        dataset = "tinyimagenet" if spec.image_size >= 128 else "cifar10"
    return dataset, published_ipc((i for d, i in _FTD_TABLE if d == dataset), ipc)


def ftd_row(ipc: int, spec: DatasetSpec) -> dict[str, Any]:
    """The published FTD row for this data set and IPC (:func:`ftd_row_key`)."""
    return _FTD_TABLE[ftd_row_key(ipc, spec)]


class FTDSettings(MTTSettings):
    """FTD's own keys: MTT's (distill_FTD.py's arguments are distill.py's) and the EMA decay. ``null``: the
    published row for the data set and IPC (:func:`ftd_row`)."""

    section: ClassVar[str] = "ftd"

    syn_steps: int | None = Field(
        None, ge=1, description="N: unrolled student SGD steps on the synthetic set per iteration (syn_steps); "
        "null: published (20 to 80)"
    )  # fmt: skip
    batch_syn: int | None = Field(
        None, ge=1, description="synthetic images per student step, chunks of one shuffled order (batch_syn); "
        "null: published (every image, K*IPC, except CIFAR-100 IPC 50: 1000, TinyImageNet IPC 10: 500)"
    )  # fmt: skip
    lr_teacher: float | None = Field(
        None, gt=0, description="initial value of the learnable student lr syn_lr (lr_teacher); null: published "
        "(0.01; 0.001 at CIFAR-10 IPC 10)"
    )  # fmt: skip
    ema_decay: float | None = Field(
        None, ge=0, lt=1, description="decay of the moving average of the synthetic images that is the stored set "
        "(ema_decay; 0: the last iterate, MTT's set); null: published (0.999 to 0.9999)"
    )  # fmt: skip

    def resolve(self, ipc: int, spec: DatasetSpec) -> FTDSettings:
        row = ftd_row(ipc, spec)
        keys = ("syn_steps", "expert_epochs", "max_start_epoch", "lr_teacher", "lr_lr", "ema_decay")
        published = {k: row[k] for k in keys}
        published["batch_syn"] = row["batch_syn"] or spec.num_classes * ipc
        return self.model_copy(update={k: v for k, v in published.items() if getattr(self, k) is None})


def ftd_defaults(ipc: int, spec: DatasetSpec) -> dict[str, Any]:
    """MTT's defaults (distill_FTD.py keeps distill.py's: 5000 iterations, real start, DSA with MTT's semantics,
    normalised images) with FTD's published image lr."""
    return {**mtt_defaults(ipc, spec), "lr_img": ftd_row(ipc, spec)["lr_img"]}


FTD = MethodCard(
    module="tgdd.methods.ftd",
    needs_trajectories=True,
    optimizes_images=True,
    summary="FTD: MTT from flat (GSAM-trained) expert trajectories, storing a moving average of the images",
    defaults=ftd_defaults,
    settings=FTDSettings,
    terms=("loss", "syn_lr", "start_epoch"),
    expert_recipe="ftd",
    image_update="summed",
    image_space="normalised",
    published_row=ftd_row_key,
)
