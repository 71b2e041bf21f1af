"""Report writing: Markdown tables and numbers (standard library only, so any script can use it cheaply)."""

from __future__ import annotations

from collections.abc import Sequence


def fmt(value: float, digits: int = 2) -> str:
    """``value`` with ``digits`` decimals."""
    return f"{value:.{digits}f}"


def plural(count: int, noun: str) -> str:
    """``count`` and ``noun``, with an ``s`` unless the count is one."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table of ``rows`` under ``headers``."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
