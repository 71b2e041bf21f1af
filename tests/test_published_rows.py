"""Methods whose defaults are a table of the authors' settings per data set and IPC (MTT, IDM) at an
IPC the authors did not publish: the row used is said once in the log and recorded in the settings
every synthetic set stores; at a published IPC, and for the methods without a table, nothing changes."""

from __future__ import annotations

import logging
import shutil

import pytest

from tgdd import paths, resolve, steps
from tgdd.cards.mtt import mtt_row
from tgdd.config import build_config
from tgdd.data.registry import get_dataset
from tgdd.resolve import resolve_settings
from tgdd.synthetic import load_synthetic

from .conftest import tiny_config


@pytest.fixture(autouse=True)
def _nothing_said_yet(monkeypatch):
    """Each test starts as a fresh process would: no row substitution logged yet."""
    monkeypatch.setattr(resolve, "_TOLD", set())


def _record(method: str, ipc: int, dataset: str = "cifar10") -> dict:
    cfg = build_config(
        {"dataset": dataset, "distill": {"method": method, "ipc": ipc}, "experts": {"mtt": {"epochs": 60}}}
    )
    return resolve_settings(cfg).record()


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tgdd.resolve" and r.levelno == logging.WARNING]


@pytest.mark.parametrize("ipc, row", [(7, 10), (20, 50), (2, 10), (100, 50)])
def test_mtt_at_an_unpublished_ipc_says_and_records_its_row(caplog, ipc, row):
    caplog.set_level(logging.WARNING, logger="tgdd.resolve")
    record = _record("mtt", ipc)
    assert record["published_row"] == {"dataset": "cifar10", "ipc": row}
    published = mtt_row(row, get_dataset("cifar10"))
    assert record["mtt"]["syn_steps"] == published["syn_steps"] and record["lr_img"] == published["lr_img"]
    for _ in range(3):  # every route resolves the settings several times: said once
        assert _record("mtt", ipc)["published_row"] == record["published_row"]
    assert _warnings(caplog) == [
        f"mtt: its authors published no settings at IPC {ipc}: the defaults from their table are the cifar10 "
        f"IPC {row} row's (recorded as published_row in the synthetic set's settings)"
    ]


def test_mtt_rows_of_other_data_sets(caplog):
    caplog.set_level(logging.WARNING, logger="tgdd.resolve")
    assert _record("mtt", 20, "cifar100")["published_row"] == {"dataset": "cifar100", "ipc": 50}
    assert _record("mtt", 5, "imagenette")["published_row"] == {"dataset": "imagenet-subsets", "ipc": 10}
    assert _record("mtt", 50, "imagenette")["published_row"] == {"dataset": "imagenet-subsets", "ipc": 10}
    assert len(_warnings(caplog)) == 3


def test_idm_does_the_same(caplog):
    caplog.set_level(logging.WARNING, logger="tgdd.resolve")
    record = _record("idm", 7)
    assert record["published_row"] == {"dataset": "cifar10", "ipc": 10} and record["real_batch"] == 256
    assert _warnings(caplog) == [
        "idm: its authors published no settings at IPC 7: the defaults from their table are the cifar10 IPC 10 "
        "row's (recorded as published_row in the synthetic set's settings)"
    ]


@pytest.mark.parametrize("method", ["mtt", "idm", "tgdd", "dm", "dance", "datadam", "random", "herding"])
def test_published_ipcs_and_methods_without_a_table_record_nothing_new(caplog, method):
    """The records of every published cell stay as they were (so nothing already made is redone)."""
    caplog.set_level(logging.WARNING, logger="tgdd.resolve")
    for ipc in (1, 10, 50):
        assert "published_row" not in _record(method, ipc)
    if method not in ("mtt", "idm"):
        assert "published_row" not in _record(method, 7)
    assert _warnings(caplog) == []


def test_the_synthetic_set_records_the_row(tmp_path, prepared_root, caplog):
    """`tgdd distill` of MTT at IPC 3 on digits (CIFAR-10's rows: 1, 10, 50): meta['settings'] names the
    IPC 10 row, and the distillation's log says so once."""
    shutil.copytree(prepared_root / "data", tmp_path / "data")
    mtt = [
        "distill.method=mtt",
        "distill.ipc=3",
        "distill.iterations=2",
        "experts.mtt.num_trajectories=1",
        "experts.mtt.epochs=2",
        "distill.mtt.syn_steps=2",
        "distill.mtt.max_start_epoch=1",
        "distill.mtt.expert_epochs=1",
    ]
    cfg = tiny_config(tmp_path, *mtt)
    steps.experts(cfg)
    caplog.set_level(logging.WARNING, logger="tgdd.resolve")
    steps.distill(cfg)
    syn = load_synthetic(paths.synthetic_file(cfg))
    assert syn.meta["settings"]["published_row"] == {"dataset": "cifar10", "ipc": 10}
    assert syn.meta["settings"]["mtt"]["syn_steps"] == 2  # set in the config: the row fills only the nulls
    assert syn.meta["settings"]["mtt"]["lr_lr"] == mtt_row(10, get_dataset("cifar10"))["lr_lr"]
    assert len(_warnings(caplog)) == 1 and "IPC 3" in _warnings(caplog)[0]
