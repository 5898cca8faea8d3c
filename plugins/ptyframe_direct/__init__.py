"""First-party direct (non-iterative) methods: DPC, iterative DPC, tcBF, WDD, and the
initializer that starts an iterative reconstruction from a direct result."""

from ptyframe.registry.hookspecs import hookimpl


@hookimpl
def ptyframe_register_components() -> list[type]:
    from .dpc import DPC, IterativeDPC
    from .initializers import DirectPhaseObject
    from .tcbf import TiltCorrectedBF
    from .wdd import WDD

    return [DPC, IterativeDPC, TiltCorrectedBF, WDD, DirectPhaseObject]
