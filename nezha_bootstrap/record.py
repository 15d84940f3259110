"""`Record`: equality, hash and repr over named fields, for small values that tests compare.

A frozen dataclass compiles six methods from text at every start (~1 ms each class); these are compiled once,
into the .pyc. A subclass names its fields in `compared` (equality and hash) and `shown` (repr: never a field
that may hold a secret), sets them in its own __init__, and declares them Final so that mypy refuses a change;
its __init__ takes exactly its fields, by those names (`replace` passes them all again, as dataclasses.replace).
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

R = TypeVar("R", bound="Record")


class Record:
    compared: ClassVar[tuple[str, ...]] = ()
    shown: ClassVar[tuple[str, ...]] = ()

    def _key(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.compared)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Record)
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}({', '.join(f'{name}={getattr(self, name)!r}' for name in self.shown)})"

    def replace(self: R, **changes: Any) -> R:
        """A copy with `changes`, made by __init__ from every field (as dataclasses.replace)."""
        return replaced(self, **changes)


T = TypeVar("T")


def replaced(value: T, **changes: Any) -> T:
    """A copy of a plain value with `changes`: its __init__ given every field again (as dataclasses.replace),
    for a class whose __init__ takes exactly its fields, by their names; `_private` attributes are not fields."""
    fields = {name: field for name, field in vars(value).items() if not name.startswith("_")}
    return type(value)(**{**fields, **changes})
