"""Methods and protocols from outside the repository: ``TGDD_PLUGINS=module[,module...]`` names
modules that register cards (:data:`tgdd.cards.METHODS`), implementations and protocols exactly as
the built-in ones do (docs/adding.md).

A method's card adds its settings section to the configuration's schema, which :mod:`tgdd.config`
builds when it is imported: so the entry points call :func:`load_plugins` before they import it
(the CLI, :func:`tgdd.cli.main`, which `tgdd pipeline` and every Snakemake job run, and the
Snakefile, ``workflow/rules/common.smk``; the jobs inherit the environment); so does any other
program that takes plugins. Importing ``tgdd.config`` runs no plugin; a config naming a method
registered after that import is refused with this advice (``tgdd.config._check_method``). A plugin
module imports the declarations it registers into (``tgdd.cards``, ``tgdd.methods``,
``tgdd.protocols``), never ``tgdd.config``."""

from __future__ import annotations

import importlib
import os

from tgdd.errors import TgddError

ENV = "TGDD_PLUGINS"


def plugin_modules() -> list[str]:
    return [name.strip() for name in os.environ.get(ENV, "").split(",") if name.strip()]


def load_plugins() -> list[str]:
    """Import every module named in ``TGDD_PLUGINS`` (each once: a second call imports nothing); returns their
    names."""
    names = plugin_modules()
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise TgddError(f"{ENV}: cannot import plugin module '{name}': {exc}") from None
    return names
