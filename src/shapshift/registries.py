"""The one shape of the package's declarative registries: named entries, each registered once (a leaf module).

Conditions (:mod:`shapshift.conditions`), agreement metrics (:mod:`shapshift.overlap`) and aggregations over the
generated tokens (:mod:`shapshift.aggregation`) are each a :class:`Registry`: a dict from name to entry, in
registration order, that refuses a name registered twice. (The estimators' registry, which validates each class
it takes, is :mod:`shapshift.explainers.registry`.)
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    """``name -> entry`` in registration order; ``kind`` names the entries in messages."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, entry: T) -> T:
        """Add ``entry`` (its ``name`` must be new); returns it."""
        name: Any = getattr(entry, "name")  # noqa: B009 - every entry type declares a name field
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is registered already")
        self[name] = entry
        return entry
