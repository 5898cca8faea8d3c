"""Pixel-wise losses between modelled intensity I and measured counts M.

Each returns the summed loss and dL/dI. Floors (``epsilon``, in the units of the data, i.e.
counts) keep the losses differentiable where the model is ~0 and are used consistently in the
value and its gradient, so finite-difference checks hold exactly.
"""

from __future__ import annotations

from typing import Any

import attrs

from ptyframe.components import LossMetric

__all__ = ["LeastSquaresSqrt", "PoissonML", "LeastSquares"]


def _non_negative(_inst: Any, attribute: attrs.Attribute, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name}: expected a number >= 0, found {value!r}")


def _positive(_inst: Any, attribute: attrs.Attribute, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name}: expected a number > 0, found {value!r}")


@attrs.define(kw_only=True)
class LeastSquaresSqrt(LossMetric):
    """Amplitude least squares: L = sum (sqrt(I + eps) - sqrt(M))^2 (robust default).

    dL/dI = 1 - sqrt(M) / sqrt(I + eps).
    """

    name = "lsq_sqrt"
    epsilon: float = attrs.field(default=1e-6, converter=float, validator=_non_negative)

    def prepare_measured(self, measured: Any, xp: Any) -> Any:
        return xp.sqrt(measured)

    def value_and_grad(self, intensity: Any, measured: Any, xp: Any) -> tuple[float, Any]:
        amp = intensity + self.epsilon if self.epsilon else intensity.copy()
        xp.sqrt(amp, out=amp)
        diff = amp - measured
        value = float((diff * diff).sum(dtype=xp.float64))
        diff /= amp
        return value, diff


@attrs.define(kw_only=True)
class PoissonML(LossMetric):
    """Poisson negative log-likelihood: L = sum (I + eps) - M log(I + eps).

    dL/dI = 1 - M / (I + eps). ``epsilon`` (counts) is the intensity floor that keeps the
    loss finite and the step sizes sane where the model is ~0 but counts were recorded.
    """

    name = "ml"
    epsilon: float = attrs.field(default=1e-2, converter=float, validator=_positive)

    def value_and_grad(self, intensity: Any, measured: Any, xp: Any) -> tuple[float, Any]:
        floored = intensity + self.epsilon
        value = float(floored.sum(dtype=xp.float64) - (measured * xp.log(floored)).sum(
            dtype=xp.float64))
        grad = measured / floored
        xp.subtract(1.0, grad, out=grad)
        return value, grad


@attrs.define(kw_only=True)
class LeastSquares(LossMetric):
    """Intensity least squares: L = sum (I - M)^2, dL/dI = 2 (I - M)."""

    name = "lsq"

    def value_and_grad(self, intensity: Any, measured: Any, xp: Any) -> tuple[float, Any]:
        diff = intensity - measured
        value = float((diff * diff).sum(dtype=xp.float64))
        diff *= 2.0
        return value, diff
