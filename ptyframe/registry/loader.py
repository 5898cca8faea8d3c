"""Plugin loading: entry points of group ``ptyframe`` -> a :class:`Registry`.

Unlike pluggy's ``load_setuptools_entrypoints``, each entry point is registered under
``"distribution:name"`` (two distributions may reuse an entry-point name), and a plugin that
fails to import, whose hook fails, or that provides a bad or conflicting component is reported
with a :class:`PluginLoadWarning` naming the plugin and its distribution; the rest still loads.
With ``strict=True`` (or ``PTYFRAME_STRICT_PLUGINS=1``) each of these is a :class:`PluginError`.

The built-in plugins (distribution ``ptyframe``) are registered first, whatever the order of
``sys.path``: a third-party component reusing a built-in name or alias is refused (a warning,
or an error in strict mode), never a replacement.

Environment: ``PTYFRAME_BLOCK_PLUGINS`` (comma-separated entry-point names, ``dist:name`` or
distribution names) skips plugins without importing them.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import pluggy

from ptyframe.registry.hookspecs import PROJECT_NAME, ComponentSpecs, hookimpl
from ptyframe.registry.registry import (
    CORE_DISTRIBUTION,
    LOCAL,
    DuplicateComponent,
    PluginError,
    Registry,
)

__all__ = [
    "BLOCK_ENV",
    "CORE_DISTRIBUTION",
    "ENTRY_POINT_GROUP",
    "STRICT_ENV",
    "PluginError",
    "PluginLoadWarning",
    "default_registry",
    "hookimpl",
    "installed_plugins",
    "load_registry",
    "unmatched_blocks",
]

ENTRY_POINT_GROUP = "ptyframe"
BLOCK_ENV = "PTYFRAME_BLOCK_PLUGINS"
STRICT_ENV = "PTYFRAME_STRICT_PLUGINS"


class PluginLoadWarning(UserWarning):
    """A plugin, or one of its components, was skipped (an error in strict mode)."""


@attrs.frozen
class _PluginInfo:
    plugin: str  # entry-point name, or LOCAL
    distribution: str
    version: str

    def describe(self) -> str:
        dist = f"{self.distribution} {self.version}".strip()
        return f"plugin {self.plugin!r} (distribution {dist})"


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _env_list(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def _is_blocked(blocked: set[str], ep_name: str, dist: str) -> bool:
    keys = {ep_name, f"{dist}:{ep_name}", dist,
            f"{_normalize(dist)}:{ep_name}", _normalize(dist)}
    return not keys.isdisjoint(blocked)


class _Reporter:
    """Turns a problem into a warning, or into a PluginError in strict mode."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict

    def __call__(self, message: str, cause: BaseException | None = None) -> None:
        if self.strict:
            raise PluginError(message) from cause
        warnings.warn(PluginLoadWarning(message), stacklevel=2)


def unmatched_blocks(blocked: Iterable[str], group: str = ENTRY_POINT_GROUP) -> list[str]:
    """The names in ``blocked`` that match no installed plugin (entry-point name,
    ``dist:name`` or distribution)."""
    keys: set[str] = set()
    for ep in importlib.metadata.entry_points(group=group):
        dist = ep.dist.name if ep.dist is not None else "<unknown>"
        keys |= {ep.name, f"{dist}:{ep.name}", dist, f"{_normalize(dist)}:{ep.name}",
                 _normalize(dist)}
    return [name for name in blocked if name not in keys and _normalize(name) not in keys]


def installed_plugins(group: str = ENTRY_POINT_GROUP) -> list[str]:
    """``dist:name`` of every installed plugin entry point, sorted."""
    return sorted({f"{ep.dist.name if ep.dist else '<unknown>'}:{ep.name}"
                   for ep in importlib.metadata.entry_points(group=group)})


def _load_entry_points(pm: pluggy.PluginManager, group: str, blocked: set[str],
                       report: _Reporter, order: list[str],
                       infos: dict[str, _PluginInfo], registry: Registry) -> None:
    seen: set[tuple[str, str]] = set()
    entry_points = sorted(  # stable: the built-in distribution first, then sys.path order
        importlib.metadata.entry_points(group=group),
        key=lambda ep: ep.dist is None or _normalize(ep.dist.name) != CORE_DISTRIBUTION)
    for ep in entry_points:
        dist = ep.dist.name if ep.dist is not None else "<unknown>"
        version = ep.dist.version if ep.dist is not None else ""
        key = (_normalize(dist), ep.name)
        if key in seen:  # the same distribution found twice on sys.path
            continue
        seen.add(key)
        pm_name = f"{dist}:{ep.name}"
        info = _PluginInfo(ep.name, dist, version)
        if _is_blocked(blocked, ep.name, dist):
            pm.set_blocked(pm_name)
            registry.note_blocked(info.describe())
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            report(f"{info.describe()} failed to import {ep.value!r}: "
                   f"{type(exc).__name__}: {exc}", exc)
            continue
        if pm.is_registered(plugin):
            other = pm.get_name(plugin)
            warnings.warn(PluginLoadWarning(
                f"{info.describe()} points at {ep.value!r}, already loaded as plugin "
                f"{other!r}; skipped"), stacklevel=2)
            continue
        try:
            pm.register(plugin, name=pm_name)
        except Exception as exc:  # pluggy's validation of the hook implementations
            report(f"{info.describe()} could not be registered: {type(exc).__name__}: {exc}",
                   exc)
            continue
        order.append(pm_name)
        infos[pm_name] = info


def _register_extra(pm: pluggy.PluginManager, extra: Sequence[Any], report: _Reporter,
                    order: list[str], infos: dict[str, _PluginInfo]) -> None:
    for index, plugin in enumerate(extra):
        label = getattr(plugin, "__name__", type(plugin).__name__)
        pm_name = f"{LOCAL}:{index}:{label}"
        try:
            pm.register(plugin, name=pm_name)
        except Exception as exc:
            report(f"local plugin {label!r} could not be registered: "
                   f"{type(exc).__name__}: {exc}", exc)
            continue
        order.append(pm_name)
        infos[pm_name] = _PluginInfo(LOCAL, LOCAL, "")


def _as_classes(result: Any) -> list[Any] | None:
    if result is None:
        return []
    if isinstance(result, (str, bytes, type)) or not isinstance(result, Iterable):
        return None
    return list(result)


def _refused(registry: Registry, exc: DuplicateComponent, report: _Reporter) -> None:
    """A second provider of a name: a built-in name stays built-in (the other is reachable
    only as ``dist:name``); between two third parties the plain name becomes ambiguous."""
    record, holder = exc.record, exc.existing
    builtin = _normalize(holder.distribution) == CORE_DISTRIBUTION
    if _normalize(record.distribution) == CORE_DISTRIBUTION:
        builtin = False  # cannot happen (built-ins load first); never let it replace anyway
    registry.keep_qualified(record, contested=not builtin)
    if builtin:
        report(f"{record.provider} offers {record.kind} {record.name!r}, the name of a built-in "
               f"component from {holder.provider}: the built-in one is used; write "
               f"'{record.distribution}:{record.name}' as the type to use the plugin's", exc)
    else:
        report(f"{exc}; until then {record.kind} {record.name!r} cannot be used unqualified",
               exc)


def load_registry(strict: bool = False, blocked: Iterable[str] = (), group: str = ENTRY_POINT_GROUP,
                  include_entry_points: bool = True,
                  extra_plugins: Sequence[Any] = ()) -> Registry:
    """Load the installed plugins (and ``extra_plugins``, modules or objects with hookimpls)
    into a new :class:`Registry`.

    ``blocked`` holds entry-point names, ``"dist:name"`` or distribution names to skip; the
    ``PTYFRAME_BLOCK_PLUGINS`` variable adds to it and ``PTYFRAME_STRICT_PLUGINS=1`` sets
    ``strict``. Non-strict: a failing plugin or a bad/duplicate component gives a
    :class:`PluginLoadWarning` and is skipped (the first provider of a name is kept, the
    built-in distribution being loaded first).
    Strict: the same raise :class:`PluginError`.
    """
    strict = strict or _env_flag(STRICT_ENV)
    blocked_set = set(blocked) | set(_env_list(BLOCK_ENV))
    blocked_set |= {_normalize(b) for b in blocked_set}
    report = _Reporter(strict)

    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(ComponentSpecs)
    order: list[str] = []
    infos: dict[str, _PluginInfo] = {}
    registry = Registry()
    if include_entry_points:
        _load_entry_points(pm, group, blocked_set, report, order, infos, registry)
    _register_extra(pm, extra_plugins, report, order, infos)

    impls = {impl.plugin_name: impl
             for impl in pm.hook.ptyframe_register_components.get_hookimpls()}
    for pm_name in order:  # entry-point order, then extra_plugins: the first provider wins
        impl = impls.get(pm_name)
        if impl is None:
            continue
        info = infos[pm_name]
        try:
            classes = _as_classes(impl.function())
        except Exception as exc:
            report(f"{info.describe()} failed in ptyframe_register_components: "
                   f"{type(exc).__name__}: {exc}", exc)
            continue
        if classes is None:
            report(f"{info.describe()}: ptyframe_register_components must return a list of "
                   "component classes")
            continue
        for cls in classes:
            try:
                registry.register(cls, plugin=info.plugin, distribution=info.distribution,
                                  version=info.version)
            except DuplicateComponent as exc:
                _refused(registry, exc, report)
            except PluginError as exc:
                if strict:
                    raise
                report(str(exc))
    return registry


def default_registry() -> Registry:
    """A freshly loaded registry of every installed plugin (no caching)."""
    return load_registry()
