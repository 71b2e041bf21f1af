"""Shared fixtures: a tiny configuration on the embedded digits and its prepared data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tgdd.config import Config, build_config

TINY = {
    "seed": 0,
    "dataset": "digits",
    "threads": 1,
    "experts": {"arch": "convnet-1-w16", "num_trajectories": 2, "epochs": 2},
    "distill": {"iterations": 4, "log_every": 1},
    "evaluate": {"archs": ["convnet-1-w16"], "runs": 2, "epochs": 2},
    "matrix": {"methods": ["tgdd", "dm", "random"], "ipcs": [1, 2]},
    "tracking": {"enabled": False},  # tests of tracking turn it on against their own store
}


def tiny_config(tmp_path: Path, *overrides: str) -> Config:
    tree = {**TINY, "paths": {"data": str(tmp_path / "data"), "results": str(tmp_path / "results")}}
    return build_config(tree, list(overrides))


def with_trained_experts(prepared_root: Path, tmp_path_factory, name: str, *overrides: str) -> Path:
    """A fresh root named ``name`` with a copy of the prepared digits and the experts that
    ``tiny_config(root, *overrides)`` trains (for module-scoped fixtures of distillation tests)."""
    from tgdd import steps

    root = tmp_path_factory.mktemp(name)
    shutil.copytree(prepared_root / "data", root / "data")
    steps.experts(tiny_config(root, *overrides))
    return root


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def prepared_root(tmp_path_factory) -> Path:
    """Digits prepared once per session (read-only for tests; copy before changing)."""
    from tgdd import steps

    root = tmp_path_factory.mktemp("prepared")
    steps.prepare(tiny_config(root))
    return root
