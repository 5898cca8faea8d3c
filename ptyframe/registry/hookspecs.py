"""pluggy hook specifications of the ``ptyframe`` plugin project."""

from __future__ import annotations

import pluggy

PROJECT_NAME = "ptyframe"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class ComponentSpecs:
    """Hooks a plugin implements (decorate with :data:`hookimpl`)."""

    @hookspec
    def ptyframe_register_components(self) -> list[type]:
        """Return the component classes this plugin provides.

        Import heavy modules inside the implementation, not at plugin import time. Each class
        must be a concrete subclass of one of the families in :mod:`ptyframe.components` with a
        non-empty ``name``.
        """
