"""Read-only views of one fact of a registry's metadata, keyed by name.

Each registry (:func:`gradreg.register_dataset`, :func:`gradreg.register_model`,
:func:`gradreg.register_regularizer`) keeps what it knows about a name beside the name. Older module-level
tables (``DEFAULT_MODEL``, ``DEFAULT_RECIPE``, ``GRIDS``, ...) remain as these views, so code that imports
them reads the registry, including names registered later.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["MetadataView"]


class MetadataView(Mapping):
    """``{name: info.<field>}`` over ``registry`` (name -> metadata object), live and read-only.

    Names whose value is unset (None, False or empty) are left out, as the old tables listed only the
    names a fact applies to.
    """

    def __init__(self, registry: Mapping[str, Any], field: str):
        self._registry, self._field = registry, field

    def _value(self, name: str) -> Any:
        return getattr(self._registry[name], self._field)

    def __getitem__(self, name: str) -> Any:
        value = self._value(name)
        if value is None or value is False or value == ():
            raise KeyError(name)
        return value

    def __iter__(self) -> Iterator[str]:
        return (n for n in list(self._registry) if n in self)

    def __contains__(self, name: object) -> bool:
        try:
            self[name]  # type: ignore[index]
        except (KeyError, TypeError):
            return False
        return True

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._field}: {dict(self)!r})"
