"""First-party data-fidelity losses: lsq_sqrt (amplitude), ml (Poisson), lsq (intensity),
lsq_sqrt_2 (modified Gaussian), and the virtual-detector (compressed-data) losses
lsq_compressed, gaussian_compressed, poisson_compressed."""

from ptyframe.registry.hookspecs import hookimpl


@hookimpl
def ptyframe_register_components() -> list[type]:
    from .compressed_losses import CompressedGaussian, CompressedLeastSquares, CompressedPoisson
    from .intensity_losses import LeastSquares, LeastSquaresSqrt, ModifiedGaussian, PoissonML

    return [LeastSquaresSqrt, PoissonML, LeastSquares, ModifiedGaussian,
            CompressedLeastSquares, CompressedGaussian, CompressedPoisson]
