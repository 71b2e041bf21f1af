"""The one loop every image-optimising method runs (tgdd.methods.loop.ImageMethod), on a toy method: its
records, its stop and bit-identical resume through the real checkpointer, its refusal of non-finite values."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tgdd.checkpoint import Checkpointer
from tgdd.errors import TgddError
from tgdd.methods.loop import ImageMethod, ImageState, LoopState, Measured, Space, Step


class Toy(ImageMethod):
    """Pulls the images towards a target drawn afresh from the run's generator every iteration (so a
    resume is exact only if the generator state travels with the checkpoint); ``poison`` makes
    iteration ``at`` leave ``value`` in the images (or, ``in_loss``, report it as the loss)."""

    def __init__(self, poison: tuple[int, float, bool] | None = None) -> None:
        self.poison = poison

    def initial_state(self, ctx, space: Space) -> LoopState:
        return LoopState(ImageState(torch.zeros(3, 1, 2, 2), ipc=1, lr=0.3, momentum=0.5))

    def prepare(self, ctx, state: LoopState, space: Space) -> Step:
        def step(state: LoopState) -> Measured:
            target = torch.rand(state.images.images.shape, generator=ctx.gen)
            loss = (state.images.images - target).pow(2).sum()
            state.images.step(loss)
            value = loss.item()
            if self.poison is not None and self.poison[0] == state.iteration:
                _, bad, in_loss = self.poison
                if in_loss:
                    value = bad
                else:
                    with torch.no_grad():
                        state.images.images[0, 0, 0, 0] = bad
            return Measured(value, {"loss": value, "half": value / 2})

        return step


def _ctx(checkpoint=None, iterations: int = 5, log_every: int = 3) -> SimpleNamespace:
    settings = SimpleNamespace(iterations=iterations, log_every=log_every, method="toy", image_space="normalised")
    train = SimpleNamespace(mean=torch.tensor([0.5]), std=torch.tensor([0.25]))
    gen = torch.Generator().manual_seed(3)
    return SimpleNamespace(
        settings=settings, train=train, device=torch.device("cpu"), gen=gen, checkpoint=checkpoint, progress=False
    )


def test_records_every_log_every_iterations_and_the_last_in_the_card_terms():
    out = Toy().run(_ctx())
    assert [r["iteration"] for r in out.records] == [0, 3, 4]
    assert all(list(r) == ["iteration", "loss", "half"] and r["half"] == r["loss"] / 2 for r in out.records)
    assert out.images.shape == (3, 1, 2, 2)


def test_a_stopped_run_resumes_bit_identically_from_its_checkpoint(tmp_path: Path):
    whole = Toy().run(_ctx())
    path = tmp_path / "checkpoint.pt"
    stopping = Checkpointer(path, every=0, identity={"toy": 1})
    stopping.stop.signal = "SIGTERM"  # as the signal handler sets it: checkpoint after this iteration, then stop
    with pytest.raises(TgddError, match="stopped by SIGTERM after iteration 1"):
        Toy().run(_ctx(stopping))
    blob = torch.load(path, weights_only=True)["state"]
    assert list(blob) == ["iteration", "images", "optimizer", "generator", "records"] and blob["iteration"] == 1
    resuming = Checkpointer(path, every=0, identity={"toy": 1})
    assert resuming.resume_blob is not None
    resumed = Toy().run(_ctx(resuming))
    assert torch.equal(resumed.images, whole.images) and resumed.records == whole.records


@pytest.mark.parametrize(
    ("poison", "message"),
    [
        ((2, math.inf, False), r"toy: images became non-finite at iteration 2; the last good checkpoint is kept "),
        ((1, math.nan, True), r"toy: loss became nan at iteration 1; the last good checkpoint is kept "),
    ],
)
def test_non_finite_values_stop_the_run_naming_the_iteration(tmp_path: Path, poison, message):
    checkpointer = Checkpointer(tmp_path / "checkpoint.pt", every=1, identity={})
    with pytest.raises(TgddError, match=message + r"\(lower distill.lr_img and rerun\)"):
        Toy(poison).run(_ctx(checkpointer))
    kept = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["state"]
    assert kept["iteration"] == poison[0] and torch.isfinite(kept["images"]).all()
