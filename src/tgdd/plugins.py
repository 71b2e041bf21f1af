"""Methods and protocols from outside the repository: ``TGDD_PLUGINS=module[,module...]`` names
modules imported when the method registry loads, before the configuration is built, so that
their cards (and own settings sections) and protocols are known to every entry point (the CLI,
`tgdd pipeline`, Snakemake jobs, which inherit the environment). A plugin registers exactly as a
built-in does (docs/adding.md)."""

from __future__ import annotations

import importlib
import os

from tgdd.errors import TgddError

ENV = "TGDD_PLUGINS"


def plugin_modules() -> list[str]:
    return [name.strip() for name in os.environ.get(ENV, "").split(",") if name.strip()]


def load_plugins() -> list[str]:
    """Import every module named in ``TGDD_PLUGINS``; returns their names."""
    names = plugin_modules()
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise TgddError(f"{ENV}: cannot import plugin module '{name}': {exc}") from None
    return names
