"""First-party regularizers (filled in by their modules)."""

from ptyframe.hookspecs import hookimpl


@hookimpl
def ptyframe_register_components() -> list[type]:
    return []
