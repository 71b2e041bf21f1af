"""Declarations apart from resolution: the cards import neither torch nor the config, importing the
config runs no plugin, and the entry points load ``TGDD_PLUGINS`` before the config is built."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tgdd.cards.base import MethodCard
from tgdd.cards.selection import selection_defaults

REPO = Path(__file__).resolve().parents[1]
TGDD = Path(sys.executable).parent / "tgdd"

PLUGIN = """
from pydantic import Field

from tgdd.cards import METHODS
from tgdd.cards.base import MethodCard, MethodSettings
from tgdd.cards.selection import selection_defaults


class NoteSettings(MethodSettings):
    offset: int = Field(0, ge=0, description="a key of the plugin's own section")


METHODS.add("note", MethodCard(module=__name__, needs_trajectories=False, optimizes_images=False,
                               summary="a plugin's method", defaults=selection_defaults, settings=NoteSettings))
"""


def python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def plugin_env(tmp_path) -> dict[str, str]:
    """An environment whose TGDD_PLUGINS names a plugin registering the method ``note``."""
    (tmp_path / "note_plugin.py").write_text(PLUGIN)
    return {**os.environ, "PYTHONPATH": str(tmp_path), "TGDD_PLUGINS": "note_plugin"}


def test_cards_import_neither_torch_nor_the_config():
    code = (
        "import sys, tgdd.cards, tgdd.protocols; "
        "print(sorted(m for m in ('torch', 'tgdd.config', 'tgdd.resolve', 'tgdd.methods') if m in sys.modules))"
    )
    assert python(code, dict(os.environ)).stdout.strip() == "[]"


def test_importing_the_config_runs_no_plugin(plugin_env):
    code = (
        "import sys, tgdd.config; print('note_plugin' in sys.modules, 'note' in tgdd.config.DistillConfig.model_fields)"
    )
    out = python(code, plugin_env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_the_cli_loads_plugins_before_the_config(plugin_env):
    listed = subprocess.run([str(TGDD), "list"], cwd=REPO, env=plugin_env, capture_output=True, text=True, timeout=120)
    assert "a plugin's method" in listed.stdout, listed.stderr
    shown = subprocess.run(
        [str(TGDD), "config", "distill.method=note", "distill.note.offset=3"],
        cwd=REPO, env=plugin_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "  note:\n    offset: 3\n" in shown.stdout


def test_a_plugin_loaded_after_the_config_is_refused_with_advice(plugin_env):
    code = (
        "from tgdd.config import build_config; from tgdd.plugins import load_plugins; load_plugins(); "
        "build_config({}, ['distill.method=note'])"
    )
    out = python(code, plugin_env)
    assert out.returncode != 0
    assert "method 'note' was registered after tgdd.config was imported" in out.stderr
    assert "load TGDD_PLUGINS first" in out.stderr


def test_card_fields_are_passed_by_keyword():
    with pytest.raises(TypeError):
        MethodCard("tgdd.methods.selection", False, False, "positional", selection_defaults)  # type: ignore[misc]
