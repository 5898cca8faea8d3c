"""How the ``ptyframe`` command reports a failure.

* An exception raised inside a third-party plugin's code (whatever its type): one line naming
  the plugin and its distribution, exit status 4; the traceback only with
  ``PTYFRAME_TRACEBACK=1``.
* A user error (a bad value, a missing or unreadable file, a folder that holds another run, a
  busy folder, a plugin that cannot be loaded or chosen): one line, ``ptyframe: error: ...``,
  exit status 2.
* A run that stopped without progress (:class:`~ptyframe.engine.health.RunStalled`): one
  line, exit status 3.
* Anything else is a bug in ptyframe: the traceback and a line asking to report it, exit 1.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import traceback
from types import TracebackType
from typing import TextIO

from ptyframe.engine.health import RunStalled
from ptyframe.registry.registry import CORE_DISTRIBUTION, ComponentNotFound, PluginError

__all__ = ["USER_ERRORS", "report_failure", "plugin_of_traceback"]

#: exceptions that are the user's to fix (messages written for them)
USER_ERRORS = (ValueError, OSError, PluginError, ComponentNotFound)
REPORT_URL = "https://github.com/ptyframe/ptyframe/issues"
TRACEBACK_ENV = "PTYFRAME_TRACEBACK"


def _third_party_packages() -> dict[str, str]:
    """Top-level package of each third-party plugin entry point -> ``plugin 'x'
    (distribution d v)``."""
    out: dict[str, str] = {}
    for ep in importlib.metadata.entry_points(group="ptyframe"):
        dist = ep.dist.name if ep.dist is not None else "<unknown>"
        if dist.lower() == CORE_DISTRIBUTION:
            continue
        version = ep.dist.version if ep.dist is not None else ""
        top = ep.value.split(":")[0].split(".")[0].strip()
        out.setdefault(top, f"plugin {ep.name!r} (distribution {dist} {version})".replace(
            " )", ")"))
    return out


def plugin_of_traceback(tb: TracebackType | None) -> str | None:
    """The third-party plugin whose code is the innermost plugin frame of ``tb`` (None when
    no frame belongs to one)."""
    packages = _third_party_packages()
    found = None
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        top = module.split(".")[0]
        if top in packages:
            found = packages[top]
        tb = tb.tb_next
    return found


def report_failure(exc: BaseException, stream: TextIO | None = None) -> int:
    """Write the message for ``exc`` and return the exit status (see the module docstring)."""
    stream = stream if stream is not None else sys.stderr
    if isinstance(exc, RunStalled):
        print(f"ptyframe: error: {exc}", file=stream)
        return 3
    plugin = plugin_of_traceback(exc.__traceback__)
    if plugin is not None:
        if os.environ.get(TRACEBACK_ENV):
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=stream)
        print(f"ptyframe: error: {plugin} raised {type(exc).__name__}: {_shorten(str(exc))} "
              f"(a fault of that plugin; report it to its authors; {TRACEBACK_ENV}=1 shows "
              "the traceback)", file=stream)
        return 4
    if isinstance(exc, USER_ERRORS):
        print(f"ptyframe: error: {_shorten(str(exc))}", file=stream)
        return 2
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=stream)
    print(f"ptyframe: internal error ({type(exc).__name__}): this is a bug in ptyframe; "
          f"please report it with the traceback above at {REPORT_URL}", file=stream)
    return 1


def _shorten(message: str, limit: int = 2000) -> str:
    """A message cut to ``limit`` characters (a 100 kB expression is not echoed whole)."""
    if len(message) <= limit:
        return message
    return f"{message[:limit]}... [{len(message) - limit} more characters]"
