"""Pixel-wise losses between modelled intensity I and measured counts M.

lsq_sqrt (amplitude), ml (Poisson), lsq (intensity), lsq_sqrt_2 (modified Gaussian).

Each returns the summed loss and dL/dI. Floors (``epsilon``, in the units of the data, i.e.
counts) keep the losses differentiable where the model is ~0 and are used consistently in the
value and its gradient, so finite-difference checks hold exactly.

``value_and_grad(..., overwrite=True)`` (used by the far-field model in its hot loop) may
destroy ``intensity`` and return the gradient in its memory, saving temporaries.
"""

from __future__ import annotations

from typing import Any

import attrs

from ptyframe.components import LossMetric
from ptyframe.core.fused import PixelLoss
from ptyframe.core.validators import non_negative, positive, to_float

__all__ = ["LeastSquaresSqrt", "PoissonML", "LeastSquares", "ModifiedGaussian"]


@attrs.define(kw_only=True)
class LeastSquaresSqrt(LossMetric):
    """Amplitude least squares: L = sum (sqrt(I + eps) - sqrt(M))^2 (robust default).

    dL/dI = 1 - sqrt(M) / sqrt(I + eps).

    * ``epsilon``: intensity floor eps added to the model before the square root, counts
      (>= 0); keeps the gradient finite where the model is ~0
    """

    name = "lsq_sqrt"
    can_overwrite = True
    epsilon: float = attrs.field(default=1e-6, converter=to_float, validator=non_negative())

    def prepare_measured(self, measured: Any) -> Any:
        return self.device.xp.sqrt(measured)

    def pixel_loss(self) -> PixelLoss:
        return PixelLoss(kind="amplitude", epsilon=self.epsilon)

    def value_and_grad(self, intensity: Any, measured: Any,
                       overwrite: bool = False) -> tuple[float, Any]:
        # ``measured`` holds sqrt(M) (prepare_measured); the Device's kernel (fused on CPU
        # with Device(fused="numba")) returns 1 - sqrt(M) / sqrt(I + eps) in place
        amp = intensity if overwrite else intensity.copy()
        return self.device.kernels.amplitude_loss(amp, measured, self.epsilon)


@attrs.define(kw_only=True)
class PoissonML(LossMetric):
    """Poisson negative log-likelihood: L = sum (I + eps) - M log(I + eps).

    dL/dI = 1 - M / (I + eps).

    * ``epsilon``: intensity floor eps added to the model, counts (> 0); keeps the loss finite
      and the step sizes sane where the model is ~0 but counts were recorded
    """

    name = "ml"
    can_overwrite = True
    epsilon: float = attrs.field(default=1e-2, converter=to_float, validator=positive())

    def pixel_loss(self) -> PixelLoss:
        return PixelLoss(kind="poisson", epsilon=self.epsilon)

    def value_and_grad(self, intensity: Any, measured: Any,
                       overwrite: bool = False) -> tuple[float, Any]:
        xp = self.device.xp
        floored = xp.add(intensity, self.epsilon, out=intensity if overwrite else None)
        value = float(floored.sum(dtype=xp.float64))
        log = xp.log(floored)
        log *= measured
        value -= float(log.sum(dtype=xp.float64))
        grad = xp.divide(measured, floored, out=floored)
        xp.subtract(1.0, grad, out=grad)
        return value, grad


@attrs.define(kw_only=True)
class LeastSquares(LossMetric):
    """Intensity least squares: L = sum (I - M)^2, dL/dI = 2 (I - M)."""

    name = "lsq"
    can_overwrite = True

    def pixel_loss(self) -> PixelLoss:
        return PixelLoss(kind="intensity")

    def value_and_grad(self, intensity: Any, measured: Any,
                       overwrite: bool = False) -> tuple[float, Any]:
        xp = self.device.xp
        diff = xp.subtract(intensity, measured, out=intensity if overwrite else None)
        value = float(xp.vdot(diff, diff)) if diff.dtype == xp.float64 else float(
            (diff * diff).sum(dtype=xp.float64))
        diff *= 2.0
        return value, diff


@attrs.define(kw_only=True)
class ModifiedGaussian(LossMetric):
    """Modified Gaussian (the reference's ``lsq_sqrt_2``), variance-weighted least squares:

    L = 1/2 sum_{M > t} (M - I)^2 / M + sum_{M <= t} I, with t = ``dark_threshold``.
    dL/dI = I / M - 1 where M > t and 1 where M <= t (dark pixels only push the
    model towards zero). Minimum at I = M (I >= 0); M is the Poisson variance of the counts.

    * ``dark_threshold``: measured counts t (> 0) at or below which a pixel counts as dark
    """

    name = "lsq_sqrt_2"
    can_overwrite = True
    dark_threshold: float = attrs.field(default=0.5, converter=to_float, validator=positive())

    def value_and_grad(self, intensity: Any, measured: Any,
                       overwrite: bool = False) -> tuple[float, Any]:
        xp = self.device.xp
        t = self.dark_threshold
        bright = measured > t
        # 1/M on bright pixels, 0 on dark ones (max() keeps the division finite)
        inv = xp.divide(bright, xp.maximum(measured, t), dtype=intensity.dtype)
        dark_sum = float(xp.sum(intensity * ~bright, dtype=xp.float64))
        grad = xp.subtract(intensity, measured, out=intensity if overwrite else None)
        grad *= inv  # I/M - 1 (bright), 0 (dark)
        value = 0.5 * float(xp.sum(grad * (grad * xp.maximum(measured, t)),
                                   dtype=xp.float64)) + dark_sum
        grad += ~bright  # 1 on dark pixels
        return value, grad
