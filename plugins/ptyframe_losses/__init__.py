"""First-party data-fidelity losses: lsq_sqrt (amplitude), ml (Poisson), lsq (intensity)."""

from ptyframe.hookspecs import hookimpl


@hookimpl
def ptyframe_register_components() -> list[type]:
    from .intensity_losses import LeastSquares, LeastSquaresSqrt, PoissonML

    return [LeastSquaresSqrt, PoissonML, LeastSquares]
