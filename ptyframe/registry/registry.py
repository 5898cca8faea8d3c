"""Component registry: ``(kind, name) -> class``, with the plugin that provided each class.

Each registration is a :class:`ComponentRecord`: kind, name, class, aliases (with the default
settings each alias carries), a one-line summary and the plugin / distribution / version that
provided it. Names and aliases share one namespace per kind: a second provider of a name, or an
alias that collides with a name or alias, is a :class:`PluginError` naming both providers.

The registry is a plain object (no global state). :func:`~ptyframe.registry.loader.load_registry`
fills one from the installed plugins; tests and scripts may build their own.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

import attrs

from ptyframe.components import COMPONENT_KINDS, Alias

__all__ = [
    "LOCAL",
    "ComponentConfigError",
    "ComponentNotFound",
    "ComponentRecord",
    "AmbiguousComponent",
    "DuplicateComponent",
    "PluginError",
    "Registry",
    "class_aliases",
    "class_summary",
]

#: plugin / distribution name of components registered directly (not via an entry point)
LOCAL = "<local>"
#: the distribution of the built-in plugins
CORE_DISTRIBUTION = "ptyframe"


class PluginError(RuntimeError):
    """A plugin failed to load or provided an invalid or conflicting component."""


class DuplicateComponent(PluginError):
    """A ``(kind, name)`` is already registered by another provider. ``record`` is the refused
    one (still reachable as ``"distribution:name"`` when kept), ``existing`` the holder."""

    def __init__(self, message: str, record: ComponentRecord, existing: ComponentRecord) -> None:
        super().__init__(message)
        self.record = record
        self.existing = existing


class AmbiguousComponent(PluginError):
    """A name offered by two third-party distributions was used without saying which."""


class ComponentNotFound(KeyError):
    """No component of this kind and name is registered."""

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0]) if self.args else ""


class ComponentConfigError(ValueError):
    """A component configuration (``{"type": name, **settings}``) is invalid."""


def _provider(plugin: str, distribution: str, version: str = "") -> str:
    dist = f"{distribution} {version}".strip()
    return f"plugin {plugin!r} (distribution {dist})"


def _shown(value: Any, limit: int = 200) -> str:
    """``repr(value)``, cut to ``limit`` characters (a huge name is not echoed whole)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _normalize(distribution: str) -> str:
    """Distribution names compare as pip does (``My_Dist`` == ``my-dist``)."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _qualname(cls: Any) -> str:
    return f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', repr(cls))}"


def class_summary(cls: type) -> str:
    """One line describing ``cls``: its own ``summary`` attribute, else the first line of its
    own docstring (not an inherited one), else ""."""
    summary = cls.__dict__.get("summary") or ""
    if not summary:
        doc = cls.__dict__.get("__doc__") or ""
        summary = next((line.strip() for line in doc.splitlines() if line.strip()), "")
    return " ".join(str(summary).split())


def class_aliases(cls: type) -> tuple[Alias, ...]:
    """The aliases ``cls`` declares itself (``aliases`` is not inherited: a subclass with other
    settings is another component), as :class:`Alias` records."""
    declared = cls.__dict__.get("aliases", ())
    if isinstance(declared, (str, Alias)):
        declared = (declared,)
    return tuple(a if isinstance(a, Alias) else Alias(a) for a in declared)


def _frozen_defaults(value: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Mapping[str, Any]]:
    return MappingProxyType({k: MappingProxyType(dict(v)) for k, v in dict(value).items()})


def _settings(cls: type) -> set[str]:
    """The settings (init arguments) of an attrs component class."""
    return {f.alias for f in attrs.fields(cls) if f.init} if attrs.has(cls) else set()


@attrs.frozen(order=True, kw_only=True)
class ComponentRecord:
    """A registered component class and where it came from.

    ``aliases``: other names resolving to this component; ``alias_defaults``: settings an
    alias implies (``{"lbfgs": {"history_length": 10}}``), overridden by explicit ones;
    ``summary``: one line for listings (:func:`class_summary`); ``plugin`` / ``distribution``
    / ``version``: the provider.
    """

    kind: str
    name: str
    cls: type = attrs.field(order=False, repr=_qualname)
    aliases: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    summary: str = ""
    plugin: str = LOCAL
    distribution: str = LOCAL
    version: str = ""
    alias_defaults: Mapping[str, Mapping[str, Any]] = attrs.field(
        factory=dict, converter=_frozen_defaults, eq=False, order=False, repr=False)

    @classmethod
    def from_class(cls, kind: str, name: str, component: type, plugin: str = LOCAL,
                   distribution: str = LOCAL, version: str = "") -> ComponentRecord:
        """The record of ``component`` with the aliases and summary it declares."""
        aliases = class_aliases(component)
        return cls(kind=kind, name=name, cls=component, aliases=[a.name for a in aliases],
                   summary=class_summary(component), plugin=plugin,
                   distribution=distribution, version=version,
                   alias_defaults={a.name: a.defaults for a in aliases if a.defaults})

    @property
    def provider(self) -> str:
        """Human-readable provenance, e.g. ``plugin 'losses' (distribution ptyframe 0.1.0)``."""
        return _provider(self.plugin, self.distribution, self.version)

    def describe_alias(self, alias: str) -> str:
        """``alias`` with the settings it implies, e.g. ``lbfgs (history_length=10)``."""
        defaults = self.alias_defaults.get(alias, {})
        settings = ", ".join(f"{k}={v!r}" for k, v in defaults.items())
        return f"{alias} ({settings})" if settings else alias


class Registry:
    """Maps ``(kind, name)`` to a concrete component class; kinds are the keys of
    :data:`ptyframe.components.COMPONENT_KINDS`."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], ComponentRecord] = {}
        #: (kind, alias) -> the record the alias belongs to
        self._aliases: dict[tuple[str, str], ComponentRecord] = {}
        #: (kind, normalised distribution, name) -> record, for "distribution:name" look-ups
        self._qualified: dict[tuple[str, str, str], ComponentRecord] = {}
        #: (kind, name) offered by two third-party distributions: usable only qualified
        self._contested: dict[tuple[str, str], list[ComponentRecord]] = {}
        #: plugins skipped on request (descriptions), named when a look-up fails
        self.blocked: list[str] = []

    def note_blocked(self, description: str) -> None:
        """Record that a plugin was blocked (so that "not found" can say so)."""
        self.blocked.append(description)

    # -- registration -----------------------------------------------------------------------
    def register(self, cls: type, plugin: str = LOCAL, distribution: str = LOCAL,
                 version: str = "") -> ComponentRecord:
        """Register a concrete component class with the aliases it declares; raises
        :class:`PluginError` when it is invalid, when its ``(kind, name)`` is already taken by
        another class or when a name or alias collides with another one (nothing is
        registered then)."""
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
        if not isinstance(name, str) or not name.strip() or ":" in name:
            raise PluginError(
                f"{who} registered {_qualname(cls)} without a name (or with a colon): set "
                f"the class attribute `name` to a non-empty string without ':' (found {name!r})"
            )
        try:
            entry = ComponentRecord.from_class(kind, name, cls, plugin, distribution, version)
        except (TypeError, ValueError) as exc:
            raise PluginError(f"{who} registered {_qualname(cls)} with invalid aliases: "
                              f"{exc}") from exc
        old = self._entries.get((kind, name))
        if old is not None:
            if old.cls is cls and (old.plugin, old.distribution) == (plugin, distribution):
                return old  # the same plugin registering the same class twice is harmless
            raise DuplicateComponent(
                f"duplicate {kind} {name!r}: {_qualname(cls)} from {who} conflicts with "
                f"{_qualname(old.cls)} from {old.provider}; choose one by writing "
                f"'{distribution}:{name}' or '{old.distribution}:{name}' as the type, or "
                "block one of the two plugins (PTYFRAME_BLOCK_PLUGINS)", entry, old)
        self._check_aliases(entry, who)
        self._entries[(kind, name)] = entry
        for alias in entry.aliases:
            self._aliases[(kind, alias)] = entry
        self._qualified[(kind, _normalize(distribution), name)] = entry
        return entry

    def keep_qualified(self, record: ComponentRecord, contested: bool) -> None:
        """Keep a record refused for its name reachable as ``"distribution:name"``;
        ``contested``: the plain name then names no component (two third parties offer it)
        and using it is an :class:`AmbiguousComponent` error naming both."""
        self._qualified[(record.kind, _normalize(record.distribution), record.name)] = record
        if contested:
            holder = self._entries[(record.kind, record.name)]
            offers = self._contested.setdefault((record.kind, record.name), [holder])
            offers.append(record)

    def qualified_only(self) -> list[ComponentRecord]:
        """Records refused for their plain name, usable only as ``"distribution:name"``."""
        held = {id(r) for r in self._entries.values()}
        return sorted(r for r in self._qualified.values() if id(r) not in held)

    def contested(self) -> dict[tuple[str, str], list[ComponentRecord]]:
        """``(kind, name)`` offered by more than one third-party distribution."""
        return {k: list(v) for k, v in self._contested.items()}

    def _check_aliases(self, entry: ComponentRecord, who: str) -> None:
        """PluginError when the name or an alias of ``entry`` is taken by another record."""
        kind, what = entry.kind, _qualname(entry.cls)
        owner = self._aliases.get((kind, entry.name))
        if owner is not None:
            raise PluginError(
                f"duplicate {kind} {entry.name!r}: {what} from {who} takes a name that is an "
                f"alias of {owner.name!r} ({_qualname(owner.cls)}) from {owner.provider}")
        seen: set[str] = set()
        for alias in entry.aliases:
            if not isinstance(alias, str) or not alias.strip():
                raise PluginError(f"{who} registered {what} with an invalid alias {alias!r}: "
                                  "expected a non-empty string")
            if alias == entry.name or alias in seen:
                raise PluginError(f"{who} registered {what} with alias {alias!r} twice (or "
                                  "equal to its name)")
            seen.add(alias)
            unknown = sorted(set(entry.alias_defaults.get(alias, {})) - _settings(entry.cls))
            if attrs.has(entry.cls) and unknown:
                raise PluginError(f"{who} registered {what} with alias {alias!r} implying "
                                  f"unknown setting(s) {', '.join(map(repr, unknown))}")
            other = self._entries.get((kind, alias)) or self._aliases.get((kind, alias))
            if other is not None:
                role = "name" if other.name == alias else f"alias of {other.name!r}"
                raise PluginError(
                    f"duplicate {kind} {alias!r}: alias of {entry.name!r} ({what}) from {who} "
                    f"collides with the {role} ({_qualname(other.cls)}) from {other.provider}; "
                    "block one of the two plugins (e.g. PTYFRAME_BLOCK_PLUGINS) or rename")

    # -- lookup -------------------------------------------------------------------------------
    def entry(self, kind: str, name: str) -> ComponentRecord:
        """The registration record of ``(kind, name)``, ``name`` a name or an alias;
        :class:`ComponentNotFound` if absent."""
        try:
            found = self._entries.get((kind, name)) or self._aliases.get((kind, name))
        except TypeError:  # unhashable name
            found = None
        if isinstance(name, str) and ":" in name:
            return self._qualified_entry(kind, name)
        offers = self._contested.get((kind, name)) if found is not None else None
        if offers:
            choices = " or ".join(f"'{r.distribution}:{name}'" for r in offers)
            providers = "; ".join(r.provider for r in offers)
            raise AmbiguousComponent(
                f"{kind} {name!r} is offered by more than one plugin ({providers}); say which "
                f"one by writing {choices} as the type, or block the other plugin "
                "(PTYFRAME_BLOCK_PLUGINS)")
        if found is not None:
            return found
        if kind not in COMPONENT_KINDS:
            known = ", ".join(sorted(COMPONENT_KINDS))
            raise ComponentNotFound(f"unknown component kind {kind!r}; known kinds: {known}")
        available = ", ".join(repr(n) for n in self.names(kind, aliases=True)) or (
            "none registered")
        blocked = (f" (blocked on request: {'; '.join(self.blocked)})" if self.blocked
                   else "")
        raise ComponentNotFound(f"no {kind} named {_shown(name)}; available: "
                                f"{available}{blocked}")

    def _qualified_entry(self, kind: str, qualified: str) -> ComponentRecord:
        dist, _, name = qualified.partition(":")
        found = self._qualified.get((kind, _normalize(dist), name))
        if found is None:
            found = self._aliases.get((kind, name))
            if found is None or _normalize(found.distribution) != _normalize(dist):
                offered = sorted(f"{r.distribution}:{r.name}" for (k, _d, _n), r in
                                 self._qualified.items() if k == kind and r.name == name)
                raise ComponentNotFound(
                    f"no {kind} {name!r} from distribution {dist!r}; offered: "
                    f"{', '.join(offered) or 'by no distribution'}")
        return found

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
        bare = name.partition(":")[2] if ":" in name else name
        settings = {**entry.alias_defaults.get(bare, {}), **settings}
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
        except Exception as exc:
            if _normalize(entry.distribution) == CORE_DISTRIBUTION:
                raise  # a bug in ptyframe itself: let it show as one
            raise PluginError(f"{kind} {name!r} ({entry.provider}) failed while being "
                              f"created: {type(exc).__name__}: {exc}") from exc

    # -- listing ------------------------------------------------------------------------------
    def names(self, kind: str, aliases: bool = False) -> list[str]:
        """Sorted names registered for ``kind`` (empty for an unknown kind); with ``aliases``
        the aliases too."""
        names = [name for (k, name) in self._entries if k == kind]
        if aliases:
            names += [alias for (k, alias) in self._aliases if k == kind]
        return sorted(names)

    def kinds(self) -> list[str]:
        """Sorted kinds that have at least one registered component."""
        return sorted({k for (k, _) in self._entries})

    def entries(self) -> list[ComponentRecord]:
        """All registrations, sorted by (kind, name)."""
        return sorted(self._entries.values())

    def __contains__(self, key: object) -> bool:
        """Whether ``(kind, name)`` is registered, ``name`` a name or an alias."""
        try:
            return key in self._entries or key in self._aliases
        except TypeError:  # unhashable key
            return False

    def __iter__(self) -> Iterator[ComponentRecord]:
        return iter(self.entries())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<Registry with {len(self)} components>"
