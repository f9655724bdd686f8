"""Exact-name registries for pluggable components (encoders, connectors, adapters).

A registry is filled at import time by the ``register`` decorator and read-only afterwards.
Lookups are by exact name; a miss raises with the sorted valid names and the closest matches.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised when a registry lookup misses; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain message.
        return str(self.args[0])


class Registry(Generic[T]):
    """A named, duplicate-rejecting mapping from exact names to factories."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that adds ``obj`` under ``name``; a second use of the same name is an error."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str, *, key: str | None = None) -> T:
        """Returns the entry for ``name``; ``key`` (a dotted config key) is named in the error."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name, key)) from None

    def unknown_message(self, name: str, key: str | None = None) -> str:
        where = f"{key}: " if key else ""
        close = difflib.get_close_matches(str(name), self._entries, n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        return f"{where}unknown {self.kind} {name!r}{hint}; valid: {', '.join(sorted(self._entries))}"

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))
