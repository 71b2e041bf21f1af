"""A small name -> object registry with helpful errors.

Every pluggable part of tgdd (datasets, networks, distillation methods, evaluation
protocols) lives in one of these, so adding a variant is one new entry rather than
another branch in an ``if/elif`` chain.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from tgdd.errors import TgddError

T = TypeVar("T")


def suggestion(name: str, choices: list[str]) -> str:
    """Return a "did you mean" hint plus the valid choices, for error messages."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"{hint} Valid choices: {', '.join(sorted(choices))}."


class Registry(Generic[T]):
    """Maps names to entries; unknown names fail with the valid choices listed."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def decorate(entry: T) -> T:
            self.add(name, entry)
            return entry

        return decorate

    def add(self, name: str, entry: T) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise TgddError(f"unknown {self.kind} '{name}'.{suggestion(name, self.names())}") from None

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)
