"""First-party propagators: multislice (far field)."""

from ptyframe.hookspecs import hookimpl


@hookimpl
def ptyframe_register_components() -> list[type]:
    from .multislice import Multislice

    return [Multislice]
