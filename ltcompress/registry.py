"""One generic name -> object registry, used for methods, datasets and model aliases.

Entries may be registered lazily as ``"module:attr"`` strings so that listing names and descriptions
never imports torch or timm (``ltcompress --help`` and ``list-methods`` stay instant).
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any, Generic, Iterator, TypeVar

from ltcompress.errors import UsageError

T = TypeVar("T")


def closest(name: str, candidates: list[str], n: int = 3) -> list[str]:
    """Names a user probably meant: difflib matches, then prefix/substring matches."""
    hits = difflib.get_close_matches(name, candidates, n=n, cutoff=0.6)
    low = name.lower()
    for c in candidates:
        if len(hits) >= n:
            break
        if c not in hits and (c.startswith(low) or low in c):
            hits.append(c)
    return hits


def did_you_mean(name: str, candidates: list[str]) -> str:
    hits = closest(name, candidates)
    return f" Did you mean: {', '.join(hits)}?" if hits else ""


@dataclass
class Entry(Generic[T]):
    name: str
    target: Any  # the object, or a "module:attr" string while `lazy`
    meta: dict[str, Any] = field(default_factory=dict)
    lazy: bool = False

    def load(self) -> T:
        if self.lazy:
            module, _, attr = self.target.partition(":")
            self.target = getattr(importlib.import_module(module), attr)
            self.lazy = False
        loaded: T = self.target
        return loaded


class Registry(Generic[T]):
    """Maps names to objects; unknown names raise UsageError (exit 2) naming the closest valid ones.

    `plugins` names an entry-point group (``ltcompress.methods``): on first lookup, every entry point of the
    group installed by another package is loaded. It names a module that registers its entries when imported,
    or a function in one that does when called; a plugin that fails to load is a warning, never a crash."""

    def __init__(self, kind: str, plugins: str | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._plugins = plugins

    def register(self, name: str, target: Any, *, lazy: bool = False, **meta: Any) -> None:
        """`lazy`: `target` is a ``"module:attr"`` string imported on first use."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = Entry(name, target, dict(meta), lazy)

    def __contains__(self, name: object) -> bool:
        return name in self._all()

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def names(self) -> list[str]:
        return list(self._all())

    def _all(self) -> dict[str, Entry[T]]:
        if self._plugins is not None:
            group, self._plugins = self._plugins, None  # once, and never again from inside a plugin
            load_plugins(group)
        return self._entries

    def entry(self, name: str) -> Entry[T]:
        self._all()
        try:
            return self._entries[name]
        except KeyError:
            raise UsageError(
                f"unknown {self.kind} {name!r}.{did_you_mean(name, self.names())} Valid: {', '.join(self.names())}."
            ) from None

    def get(self, name: str) -> T:
        return self.entry(name).load()


def load_plugins(group: str) -> list[str]:
    """Load every entry point of `group` (see Registry); returns the names of those that loaded."""
    import logging
    from importlib.metadata import entry_points

    loaded = []
    for point in entry_points(group=group):
        try:
            target = point.load()
            if callable(target) and not isinstance(target, type):
                target()
            loaded.append(point.name)
        except Exception as exc:  # another package's bug must not take the CLI down
            logging.getLogger("ltcompress").warning(
                "plugin %r (%s, entry point group %s) failed to load: %s: %s",
                point.name,
                point.value,
                group,
                type(exc).__name__,
                exc,
            )
    return loaded
