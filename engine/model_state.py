"""A model's state as plain data: JSON-able parameters plus named numeric arrays, nothing executable.

Every model that is snapshotted (``engine.policies``, ``engine.recommend.signal.CollaborativeSignal``) has the
same two verbs: ``to_state() -> ModelState`` and the class method ``from_state(state) -> model``. A state holds
only JSON values (``None``, booleans, numbers, strings, lists, string-keyed dicts) and numpy arrays of a few
numeric dtypes, so loading one can rebuild a model but never run code (:mod:`engine.snapshots` writes and
reads them). ``from_state`` checks what it reads: the typed getters below raise :class:`StateError` on a
missing key, a wrong type or a wrong shape.

>>> import numpy as np
>>> state = ModelState({"n_updates": 3, "alpha": 0.5, "ids": ["a", "b"]}, {"w": np.zeros((2, 4))})
>>> state.integer("n_updates"), state.number("alpha"), state.strings("ids")
(3, 0.5, ['a', 'b'])
>>> state.array("w", "<f8", (2, None)).shape
(2, 4)
>>> state.array("w", "<i8", (2, 4))
Traceback (most recent call last):
...
engine.model_state.StateError: array 'w' is float64, expected int64
>>> state.integer("alpha")
Traceback (most recent call last):
...
engine.model_state.StateError: 'alpha' must be an integer, not float
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ARRAY_DTYPES", "ModelState", "StateError", "Scalar"]

#: The dtypes a state's arrays may have (little-endian, fixed size, no objects).
ARRAY_DTYPES = frozenset({"<f8", "<f4", "<i8", "<i4", "<u8", "|b1"})
#: Item and action ids that survive JSON unchanged (and are hashable).
Scalar = str | int


class StateError(ValueError):
    """A state is missing something a model needs, or holds it with the wrong type or shape."""


def _type_name(value: object) -> str:
    return type(value).__name__


@dataclass(frozen=True, slots=True)
class ModelState:
    """``params``: JSON data (constructor parameters, counters, small structures); ``arrays``: numeric arrays."""

    params: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def _get(self, key: str) -> Any:
        try:
            return self.params[key]
        except KeyError:
            raise StateError(f"state has no {key!r}") from None

    def integer(self, key: str, minimum: int | None = None) -> int:
        value = self._get(key)
        if type(value) is not int:
            raise StateError(f"{key!r} must be an integer, not {_type_name(value)}")
        if minimum is not None and value < minimum:
            raise StateError(f"{key!r} must be >= {minimum}, got {value}")
        return value

    def optional_integer(self, key: str) -> int | None:
        return None if self._get(key) is None else self.integer(key)

    def number(self, key: str) -> float:
        value = self._get(key)
        if type(value) not in (int, float):
            raise StateError(f"{key!r} must be a number, not {_type_name(value)}")
        return float(value)

    def optional_number(self, key: str) -> float | None:
        return None if self._get(key) is None else self.number(key)

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise StateError(f"{key!r} must be a string, not {_type_name(value)}")
        return value

    def optional_text(self, key: str) -> str | None:
        return None if self._get(key) is None else self.text(key)

    def boolean(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise StateError(f"{key!r} must be a boolean, not {_type_name(value)}")
        return value

    def strings(self, key: str) -> list[str]:
        value = self._get(key)
        if not isinstance(value, list) or not set(map(type, value)) <= {str}:
            raise StateError(f"{key!r} must be a list of strings")
        return value

    def ids(self, key: str, allow_none: bool = False) -> list[Any]:
        """A list of ids (strings or integers; ``None`` too with ``allow_none``)."""
        value = self._get(key)
        allowed = {str, int, type(None)} if allow_none else {str, int}
        if not isinstance(value, list) or not set(map(type, value)) <= allowed:
            raise StateError(f"{key!r} must be a list of string or integer ids")
        return value

    def mapping(self, key: str) -> dict[str, Any]:
        value = self._get(key)
        if not isinstance(value, dict):
            raise StateError(f"{key!r} must be an object, not {_type_name(value)}")
        return value

    def array(self, key: str, dtype: str, shape: Sequence[int | None]) -> np.ndarray:
        """The array ``key``, of exactly ``dtype``, with ``shape`` (``None``: any length on that axis)."""
        try:
            arr = self.arrays[key]
        except KeyError:
            raise StateError(f"state has no array {key!r}") from None
        if arr.dtype != np.dtype(dtype):
            raise StateError(f"array {key!r} is {arr.dtype}, expected {np.dtype(dtype)}")
        if arr.ndim != len(shape) or any(w is not None and w != n for w, n in zip(shape, arr.shape, strict=True)):
            raise StateError(f"array {key!r} has shape {arr.shape}, expected {tuple(shape)}")
        return arr
