"""Training settings and the named evaluation protocols (SPEC §5 and the DC/DSA/DM one).

Plain data, apart from the training loop, so that configs and the Snakefile can check protocol
names without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from tgdd.registry import Registry


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    milestones: tuple[float, ...]  # fractions of training at which lr is multiplied by gamma
    gamma: float
    augment: str  # DSA strategy, per image ('none' to disable)
    cutmix_prob: float
    cutmix_beta: float = 1.0

    def milestone_epochs(self) -> list[int]:
        return sorted({round(self.epochs * f) for f in self.milestones})


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    train: TrainSettings


PROTOCOLS: Registry[Protocol] = Registry("evaluation protocol")
PROTOCOLS.add(
    "tgdd",
    Protocol(
        "tgdd",
        "SPEC §5: SGD 0.01 m0.9 wd5e-4, batch 64, lr x0.2 at 2/3 and 5/6, DSA + CutMix p0.5",
        TrainSettings(1500, 64, 0.01, 0.9, 5e-4, (2 / 3, 5 / 6), 0.2, "color_crop_flip_scale_rotate", 0.5),
    ),
)
PROTOCOLS.add(
    "dc",
    Protocol(
        "dc",
        "DC/DSA/DM: SGD 0.01 m0.9 wd5e-4, batch 256, lr x0.1 at 1/2, DSA, no CutMix",
        TrainSettings(1000, 256, 0.01, 0.9, 5e-4, (1 / 2,), 0.1, "color_crop_cutout_flip_scale_rotate", 0.0),
    ),
)
