"""Keeps the generated part of the documentation (the configuration-key table) in sync with the code.

``python -m tgdd.docs [FILE]`` rewrites the block between ``<!-- config-keys:start -->`` and
``<!-- config-keys:end -->`` of FILE, by default ``docs/configuration.md`` (the README links to it
rather than carrying the long table); a test fails when the file is stale.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tgdd.config import keys_markdown

START, END = "<!-- config-keys:start -->", "<!-- config-keys:end -->"
TARGET = "docs/configuration.md"  # relative to the repository root, where `make generated` runs


def render(text: str) -> str:
    """``text`` with its key-table block (between START and END) regenerated from the config model."""
    if START not in text or END not in text:  # a moved or deleted block: say so, never pass silently
        raise ValueError(f"no {START} ... {END} block to regenerate")
    block = f"{START}\n{keys_markdown()}{END}"
    return re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _m: block, text, flags=re.S)


def main(path: str = TARGET) -> int:
    target = Path(path)
    target.write_text(render(target.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
