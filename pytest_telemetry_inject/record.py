"""``Record``: the base of the records a warm ``pytest --inject-telemetry`` session makes
(a file's report, the cache's counters, the hook's state, ...): ``__slots__`` and an
``__init__`` of their own, and a dataclass's ``repr`` and equality (by the slots, in order).

Why not ``@dataclass``: making a dataclass compiles its ``__init__``, ``__repr__`` and
``__eq__`` from text, 0.4 to 1 ms each at import on the 2-core development VM, and a warm
session imported eleven of them: ~10 ms of every session's start (docs/plugin.md, Cost on
real test suites). A record's instances have no ``__dict__`` either: one object fewer each
for the garbage collector. ``Settings`` stays a dataclass: its fields are read by name, with
their defaults, by ``dataclasses.fields``.
"""

from __future__ import annotations

from typing import Any


class Record:
    __slots__: tuple[str, ...] = ()

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__qualname__}({fields})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.__slots__)

    __hash__: Any = None  # mutable, as a dataclass with eq and without frozen
