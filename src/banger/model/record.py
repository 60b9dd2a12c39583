"""``Record``: a frozen, keyword-only value class that costs nothing to define.

Owns: the base of the API's request and reply types (``banger.model.api_types``): fields
from the class's annotations, defaults from its class attributes, ``__init__``,
``__eq__``, ``__repr__``, immutability, and ``fields``/``as_dict``. Type checkers see
it as a dataclass (PEP 681 ``dataclass_transform``).
Must not: import anything but the standard library.

Why not ``@dataclass``: it compiles a handful of methods per class with ``exec`` when
the module loads; for the ~30 types of the API that was about 8 ms of every CLI call
(``python -X importtime``), more than the rest of the client. Here the methods are
shared and nothing is compiled.
"""

from __future__ import annotations

from typing import Any, ClassVar, dataclass_transform


@dataclass_transform(kw_only_default=True, frozen_default=True)
class Record:
    _fields: ClassVar[tuple[str, ...]] = ()
    _defaults: ClassVar[dict[str, object]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        names: list[str] = []
        defaults: dict[str, object] = {}
        for klass in reversed(cls.__mro__):
            own = vars(klass)
            for name, annotation in own.get("__annotations__", {}).items():
                if name.startswith("_") or "ClassVar" in str(annotation):
                    continue
                if name not in names:
                    names.append(name)
                if name in own:
                    defaults[name] = own[name]
                else:
                    defaults.pop(name, None)
        cls._fields = tuple(names)
        cls._defaults = defaults

    def __init__(self, **kwargs: Any) -> None:
        unknown = kwargs.keys() - set(self._fields)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field {sorted(unknown)[0]!r}")
        for name in self._fields:
            if name in kwargs:
                value = kwargs[name]
            elif name in self._defaults:
                value = self._defaults[name]
            else:
                raise TypeError(f"{type(self).__name__} needs {name!r}")
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self._fields)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, n) for n in self._fields))

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._fields)
        return f"{type(self).__name__}({inner})"


def fields(record: Record | type[Record]) -> tuple[str, ...]:
    """The field names of a record (class or instance), in declaration order."""
    return record._fields


def defaults(record: type[Record]) -> dict[str, object]:
    """The fields that have a default, with it."""
    return dict(record._defaults)


def as_dict(value: object) -> Any:
    """Records (nested, in lists and dicts) as plain JSON-like values."""
    if isinstance(value, Record):
        return {n: as_dict(getattr(value, n)) for n in value._fields}
    if isinstance(value, list):
        return [as_dict(v) for v in value]
    if isinstance(value, dict):
        return {k: as_dict(v) for k, v in value.items()}
    return value
