"""What a method's card is made of: its own settings section and the card itself.

A card declares, torch-free and without the configuration, what the pipeline knows about a method
before running it: its own settings (a validated section ``distill.<method>``, defaults included),
its published defaults for the shared ``distill`` keys, the names of the loss terms it records, its
expert recipe and the mechanisms of its authors' code that are not settings (how the synthetic
images are stepped, in which space, how real batches are drawn). The configuration builds its
``distill`` sections from the cards (:mod:`tgdd.config`); :mod:`tgdd.resolve` turns a config into
the settings a method runs with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from tgdd.data.registry import DatasetSpec

if TYPE_CHECKING:
    from tgdd.protocols import TrainSettings


class MethodSettings(BaseModel):
    """A method's own settings section, ``distill.<method>`` (validated strictly; ``null`` fields
    get their published value from :meth:`resolve`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def resolve(self, ipc: int, spec: DatasetSpec) -> MethodSettings:
        """These settings with every ``null`` replaced by the method's published value."""
        return self

    def check_experts(self, experts: TrainSettings) -> None:
        """Refuse (resolved) settings that cannot work with the trajectories of the method's expert recipe,
        trained with ``experts``: called when the settings resolve, so before any step runs."""


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


@dataclass(frozen=True, kw_only=True)
class MethodCard:
    """What the pipeline knows about a method before running it: torch-free, so that configs,
    the workflow and freshness checks see its resolved settings without importing torch."""

    module: str  # the module whose import registers the implementation (tgdd.methods.implements)
    needs_trajectories: bool  # uses expert trajectories (so `tgdd experts` must run first)
    optimizes_images: bool  # runs distill.iterations of image updates (False: selects real images)
    summary: str
    defaults: Defaults  # (ipc, data set) -> published values of the shared keys a config leaves null
    settings: type[MethodSettings] = MethodSettings  # its own section, distill.<name>
    terms: tuple[str, ...] = ("loss",)  # the loss terms each record of losses.csv carries, by name
    expert_recipe: str = "tgdd"  # which trajectories, if it needs them (a key of tgdd.resolve.EXPERT_RECIPES)
    image_update: str = "per-class"  # a key of IMAGE_UPDATES
    image_space: str = "pixels"  # a key of IMAGE_SPACES
    real_batches: str = "epochs"  # a key of tgdd.data.prepared.REAL_BATCHES ('epochs' or 'fresh')
    # (ipc, data set) -> (data set, IPC) of the published row its defaults come from, for a method whose
    # defaults are a table of the authors' settings per data set and IPC (MTT, IDM); None: rules, no table
    published_row: Callable[[int, DatasetSpec], tuple[str, int]] | None = None


def published_ipc(published: Iterable[int], ipc: int) -> int:
    """The row of a table published at the IPCs ``published`` that serves ``ipc``: the smallest published IPC
    >= ``ipc``, the largest above them all (the authors' settings for the nearest larger set)."""
    rows = sorted(published)
    return next((p for p in rows if ipc <= p), rows[-1])
