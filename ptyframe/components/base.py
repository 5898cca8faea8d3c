"""The root of every pluggable component, and the device contract of the model families."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

if TYPE_CHECKING:
    from ptyframe.core.device import Device

__all__ = ["Alias", "Component", "ModelComponent", "component_config", "jsonable"]


def jsonable(value: Any) -> Any:
    """JSON-ready form of a setting: ``to_config()`` of schedules and components, lists for
    tuples and numpy scalars/arrays, nested containers converted item by item."""
    if hasattr(value, "to_config"):
        return value.to_config()
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if hasattr(value, "tolist"):  # numpy scalars and small arrays
        return value.tolist()
    return value


def component_config(obj: Any) -> dict[str, Any]:
    """JSON-ready description ``{"type": name, field: value, ...}`` of an attrs component."""
    out: dict[str, Any] = {"type": type(obj).name}
    for field in attrs.fields(type(obj)):
        if not field.init or field.name.startswith("_"):
            continue
        out[field.name] = jsonable(getattr(obj, field.name))
    return out


def _frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(value or {}))


@attrs.frozen
class Alias:
    """Another registry name of a component, optionally with its own default settings.

    ``Alias("lbfgs", {"history_length": 10})``: ``{"type": "lbfgs"}`` builds the component with
    ``history_length=10`` unless the configuration sets it; the built component reports its
    canonical name in :meth:`Component.to_config`.
    """

    name: str
    defaults: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping,
                                              hash=False)


class Component(abc.ABC):  # noqa: B024 - families add the abstract methods
    """Base class of every component.

    Concrete components are ``attrs`` classes whose fields are their validated settings and set
    class attributes: ``kind`` (the abstract family, fixed by the family's base class),
    ``name`` (the registry name used in configuration files), optionally ``aliases`` (other
    names: strings or :class:`Alias` records carrying default settings) and ``summary`` (one
    line for listings; default: the first line of the class docstring).
    """

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str | Alias, ...]] = ()
    summary: ClassVar[str] = ""

    def to_config(self) -> dict[str, Any]:
        """Serialisable configuration that rebuilds this component through the registry."""
        return component_config(self)


class ModelComponent(Component):  # noqa: B024 - families add the abstract methods
    """A component that computes on the reconstruction's arrays (propagator, detector, loss,
    regularizer, constraint, optimizer).

    The device contract, the same for every such family: :meth:`prepare` is called once with
    a context (a :class:`~ptyframe.components.ModelContext`; propagators get its subset
    :class:`~ptyframe.components.PropagationGeometry`) whose ``device`` is the
    :class:`~ptyframe.core.device.Device` holding every array; per-call methods take no
    ``xp`` or ``device`` argument and use :attr:`device` (``self.device.xp``,
    ``self.device.fft2`` ...). An override of :meth:`prepare` calls ``super().prepare(context)``
    first.
    """

    def prepare(self, context: Any) -> None:
        """Bind ``context.device``; overrides precompute masks and kernels after calling this."""
        self._device = context.device

    @property
    def device(self) -> Device:
        """The Device given to :meth:`prepare`."""
        device = getattr(self, "_device", None)
        if device is None:
            raise RuntimeError(
                f"{type(self).__name__} ({self.kind} {self.name!r}) was used before "
                "prepare(context); an override of prepare must call super().prepare(context)")
        return device
