"""The root of every pluggable component."""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import attrs

__all__ = ["Component", "component_config"]


def _jsonable(value: Any) -> Any:
    if hasattr(value, "to_config"):
        return value.to_config()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if hasattr(value, "tolist"):  # numpy scalars and small arrays
        return value.tolist()
    return value


def component_config(obj: Any) -> dict[str, Any]:
    """JSON-ready description ``{"type": name, field: value, ...}`` of an attrs component."""
    out: dict[str, Any] = {"type": type(obj).name}
    for field in attrs.fields(type(obj)):
        if not field.init or field.name.startswith("_"):
            continue
        out[field.name] = _jsonable(getattr(obj, field.name))
    return out


class Component(abc.ABC):  # noqa: B024 - families add the abstract methods
    """Base class of every component.

    Concrete components are ``attrs`` classes whose fields are their validated settings and set
    two class attributes: ``kind`` (the abstract family, fixed by the family's base class) and
    ``name`` (the registry name used in configuration files).
    """

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""

    def to_config(self) -> dict[str, Any]:
        """Serialisable configuration that rebuilds this component through the registry."""
        return component_config(self)
