"""First-party optimizers of ptyframe: gradient descent, conjugate gradient, L-BFGS.

All three are one line-searched quasi-Newton method (:class:`QuasiNewton`) with a different
curvature history length; they are registered exactly as a third-party plugin would be.
"""

from ptyframe.registry.hookspecs import hookimpl


@hookimpl
def ptyframe_register_components():
    from .quasi_newton import ConjugateGradient, GradientDescent, QuasiNewton

    return [QuasiNewton, GradientDescent, ConjugateGradient]
