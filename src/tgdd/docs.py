"""Keeps generated parts of README.md (the configuration-key table) in sync with the code.

``python -m tgdd.docs`` rewrites the block between ``<!-- config-keys:start -->`` and
``<!-- config-keys:end -->``; a test fails when the README is stale.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tgdd.config import keys_markdown

START, END = "<!-- config-keys:start -->", "<!-- config-keys:end -->"


def render(readme: str) -> str:
    block = f"{START}\n{keys_markdown()}{END}"
    return re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _m: block, readme, flags=re.S)


def main(path: str = "README.md") -> int:
    readme = Path(path)
    readme.write_text(render(readme.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
