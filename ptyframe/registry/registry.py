"""Component registry: ``(kind, name) -> class``, with the plugin that provided each class.

The registry is a plain object (no global state). :func:`~ptyframe.registry.loader.load_registry`
 fills
one from the installed plugins; tests and scripts may build their own.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from ptyframe.components import COMPONENT_KINDS

__all__ = [
    "LOCAL",
    "ComponentConfigError",
    "ComponentNotFound",
    "PluginError",
    "RegisteredComponent",
    "Registry",
]

#: plugin / distribution name of components registered directly (not via an entry point)
LOCAL = "<local>"


class PluginError(RuntimeError):
    """A plugin failed to load or provided an invalid or conflicting component."""


class ComponentNotFound(KeyError):
    """No component of this kind and name is registered."""

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0]) if self.args else ""


class ComponentConfigError(ValueError):
    """A component configuration (``{"type": name, **settings}``) is invalid."""


def _provider(plugin: str, distribution: str, version: str = "") -> str:
    dist = f"{distribution} {version}".strip()
    return f"plugin {plugin!r} (distribution {dist})"


def _qualname(cls: Any) -> str:
    return f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', repr(cls))}"


@attrs.frozen(order=True)
class RegisteredComponent:
    """A registered component class and where it came from."""

    kind: str
    name: str
    cls: type = attrs.field(order=False, repr=_qualname)
    plugin: str = LOCAL
    distribution: str = LOCAL
    version: str = ""

    @property
    def provider(self) -> str:
        """Human-readable provenance, e.g. ``plugin 'losses' (distribution ptyframe 0.1.0)``."""
        return _provider(self.plugin, self.distribution, self.version)


class Registry:
    """Maps ``(kind, name)`` to a concrete component class; kinds are the keys of
    :data:`ptyframe.components.COMPONENT_KINDS`."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], RegisteredComponent] = {}

    # -- registration -----------------------------------------------------------------------
    def register(self, cls: type, plugin: str = LOCAL, distribution: str = LOCAL,
                 version: str = "") -> RegisteredComponent:
        """Register a concrete component class; raises :class:`PluginError` when it is invalid
        or when its ``(kind, name)`` is already taken by another class."""
        who = _provider(plugin, distribution, version)
        if not isinstance(cls, type):
            raise PluginError(f"{who} registered {cls!r}, which is not a class")
        kind = getattr(cls, "kind", None)
        family = COMPONENT_KINDS.get(kind) if isinstance(kind, str) else None
        if family is None or not issubclass(cls, family):
            families = ", ".join(f"{b.__name__} ({k!r})" for k, b in COMPONENT_KINDS.items())
            raise PluginError(
                f"{who} registered {_qualname(cls)} with kind {kind!r}, which is not a component "
                f"of a known kind; expected a subclass of one of: {families}"
            )
        if inspect.isabstract(cls):
            missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
            raise PluginError(
                f"{who} registered {_qualname(cls)}, which is abstract "
                f"(does not implement: {missing})"
            )
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name.strip():
            raise PluginError(
                f"{who} registered {_qualname(cls)} without a name: set the class attribute "
                f"`name` to a non-empty string (found {name!r})"
            )
        entry = RegisteredComponent(kind, name, cls, plugin, distribution, version)
        old = self._entries.get((kind, name))
        if old is not None:
            if old.cls is cls and (old.plugin, old.distribution) == (plugin, distribution):
                return old  # the same plugin registering the same class twice is harmless
            raise PluginError(
                f"duplicate {kind} {name!r}: {_qualname(cls)} from {who} conflicts with "
                f"{_qualname(old.cls)} from {old.provider}; block one of the two plugins "
                "(e.g. PTYFRAME_BLOCK_PLUGINS) or rename the component"
            )
        self._entries[(kind, name)] = entry
        return entry

    # -- lookup -------------------------------------------------------------------------------
    def entry(self, kind: str, name: str) -> RegisteredComponent:
        """The registration record of ``(kind, name)``; :class:`ComponentNotFound` if absent."""
        try:
            return self._entries[(kind, name)]
        except (KeyError, TypeError):
            pass
        if kind not in COMPONENT_KINDS:
            known = ", ".join(sorted(COMPONENT_KINDS))
            raise ComponentNotFound(f"unknown component kind {kind!r}; known kinds: {known}")
        available = ", ".join(repr(n) for n in self.names(kind)) or "none registered"
        raise ComponentNotFound(f"no {kind} named {name!r}; available: {available}")

    def get(self, kind: str, name: str) -> type:
        """The class registered as ``(kind, name)``; :class:`ComponentNotFound` if absent."""
        return self.entry(kind, name).cls

    def create(self, kind: str, config: Mapping[str, Any]) -> Any:
        """Instantiate a component from ``{"type": name, **settings}``.

        Raises :class:`ComponentNotFound` for an unknown name and :class:`ComponentConfigError`
        (a ``ValueError``) naming the component for missing ``type`` or bad settings.
        """
        if not isinstance(config, Mapping):
            raise ComponentConfigError(
                f"{kind} configuration: expected a mapping {{'type': name, ...}}, "
                f"found {config!r}"
            )
        settings = dict(config)
        name = settings.pop("type", None)
        if not isinstance(name, str) or not name:
            available = ", ".join(repr(n) for n in self.names(kind)) or "none registered"
            raise ComponentConfigError(
                f"{kind} configuration: expected a 'type' entry naming the component "
                f"(available: {available}), found {config.get('type')!r}"
            )
        entry = self.entry(kind, name)
        cls = entry.cls
        if attrs.has(cls):
            valid = [f.alias for f in attrs.fields(cls) if f.init]
            unknown = sorted(str(k) for k in settings if k not in valid)
            if unknown:
                raise ComponentConfigError(
                    f"{kind} {name!r} ({entry.provider}): unknown setting(s) "
                    f"{', '.join(map(repr, unknown))}; valid settings: "
                    f"{', '.join(valid) or 'none'}"
                )
        try:
            return cls(**settings)
        except (TypeError, ValueError) as exc:
            raise ComponentConfigError(
                f"{kind} {name!r} ({entry.provider}): invalid settings: {exc}"
            ) from exc

    # -- listing ------------------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        """Sorted names registered for ``kind`` (empty for an unknown kind)."""
        return sorted(name for (k, name) in self._entries if k == kind)

    def kinds(self) -> list[str]:
        """Sorted kinds that have at least one registered component."""
        return sorted({k for (k, _) in self._entries})

    def entries(self) -> list[RegisteredComponent]:
        """All registrations, sorted by (kind, name)."""
        return sorted(self._entries.values())

    def __contains__(self, key: object) -> bool:
        try:
            return key in self._entries
        except TypeError:  # unhashable key
            return False

    def __iter__(self) -> Iterator[RegisteredComponent]:
        return iter(self.entries())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<Registry with {len(self)} components>"
