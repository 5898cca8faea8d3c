"""First-party propagators: multislice and the higher-order better_multislice and yoshida."""

from ptyframe.registry.hookspecs import hookimpl


@hookimpl
def ptyframe_register_components() -> list[type]:
    from .higher_order import BetterMultislice, Yoshida
    from .multislice import Multislice

    return [Multislice, BetterMultislice, Yoshida]
