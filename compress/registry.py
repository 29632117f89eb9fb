"""One small registry type for every plug point (MODELS, DATASETS, IMPORTANCE, TASKS).

Filled by a decorator at import time, queried by name; a duplicate name is a programming error and
raises at once, an unknown name is a user error and says what was meant.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from targets.base import EdgecompError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object. ``@MODELS.register("mobilenet_v2")`` adds, ``MODELS.get("mobilenet_v2")`` looks up."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        if name not in self._items:
            raise EdgecompError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, self._items)}; known: {', '.join(self.names())}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
