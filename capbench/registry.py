"""One small registry for capbench's named things: tasks, pruning methods, metrics, measurements.

A registry maps a name to an object (a class, a function, a spec) and fails on an unknown name with one line::

    unknown method 'magnitud'; known methods: first_order, magnitude, movement, random, soft_movement

``loader`` (optional) fills the registry on first use, e.g. by importing the built-in method modules or
reading ``tasks/*.yaml``; ``register`` also works as a decorator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from capbench.errors import CapbenchError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(
        self,
        kind: str,
        plural: str | None = None,
        loader: Callable[[Registry], None] | None = None,
        first: tuple[str, ...] = (),
    ):
        self.kind = kind  # e.g. "method": the word in "unknown method 'x'"
        self.plural = plural or f"{kind}s"
        self.first = first  # names listed first, in this order (built-ins), whatever order they registered in
        self._items: dict[str, T] = {}
        self._loader = loader
        self._loading = False

    def _load(self) -> None:
        if self._loader is not None and not self._loading:
            loader, self._loading = self._loader, True
            try:
                loader(self)
            finally:
                self._loading = False
            self._loader = None

    def register(self, name: str, obj: Any = None, *, replace: bool = False) -> Any:
        """Add ``obj`` under ``name`` (or, without ``obj``, return a decorator that does)."""
        if obj is None:
            return lambda target: self.register(name, target, replace=replace)
        self._load()
        if name in self._items and not replace and self._items[name] is not obj:
            raise CapbenchError(f"{self.kind} {name!r} is already registered; pick another name")
        self._items[name] = obj
        return obj

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def unknown(self, name: str, hint: str = "") -> CapbenchError:
        return unknown_error(self.kind, name, self.names(), self.plural, hint)

    def get(self, name: str) -> T:
        self._load()
        if name not in self._items:
            raise self.unknown(name)
        return self._items[name]

    def names(self) -> list[str]:
        """Registered names: ``first`` in its order, then the rest in registration order."""
        self._load()
        return [n for n in self.first if n in self._items] + [n for n in self._items if n not in self.first]

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._items[name]) for name in self.names()]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __getitem__(self, name: str) -> T:
        return self.get(name)


def unknown_error(kind: str, name: str, known, plural: str | None = None, hint: str = "") -> CapbenchError:
    """The one 'unknown <kind> 'x'; known <kinds>: a, b, c' error of every registry (``known`` as ordered)."""
    listed = ", ".join(known) or "none"
    return CapbenchError(f"unknown {kind} {name!r}; known {plural or kind + 's'}: {listed}{hint}")
