"""Robust amplitude loss: a Huber penalty on the amplitude residual.

With the amplitude residual ``r = sqrt(I + eps) - sqrt(M)`` (I: modelled intensity, M:
measured counts) the loss is

    L = sum h(r),   h(r) = r^2                      for |r| <= delta
                         = 2 delta |r| - delta^2    for |r| >  delta

i.e. ``lsq_sqrt`` for small residuals and a linear (L1-like) penalty for large ones, so that a
few outlier pixels (hot pixels, a saturated or badly gain-corrected region, cosmic rays) pull
on the reconstruction with a bounded force. Written as ``h(r) = c (2 r - c)`` with
``c = clip(r, -delta, delta)``, its derivative is ``h'(r) = 2 c``, and since
``dr/dI = 1 / (2 sqrt(I + eps))``:

    dL/dI = c / sqrt(I + eps).

For Poisson counts ``sqrt(M)`` has a standard deviation of about 1/2 (the square root is
variance stabilising), so ``delta`` of a few halves (default 1.5, i.e. 3 sigma) leaves
ordinary shot noise in the quadratic regime. With ``delta`` -> infinity this is exactly
ptyframe's ``lsq_sqrt``.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from ptyframe.components import LossMetric

__all__ = ["HuberSqrt"]


def _positive_finite(_inst: Any, attribute: attrs.Attribute, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name}: expected a finite number > 0, found {value!r}")


def _non_negative(_inst: Any, attribute: attrs.Attribute, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name}: expected a finite number >= 0, found {value!r}")


@attrs.define(kw_only=True)
class HuberSqrt(LossMetric):
    """Huber penalty on the amplitude residual sqrt(I + eps) - sqrt(M) (robust to outliers).

    ``delta``: residual (in sqrt-counts) where the penalty turns from quadratic to linear;
    ``epsilon``: intensity floor (counts) keeping the amplitude differentiable at I = 0.
    dL/dI = clip(r, -delta, delta) / sqrt(I + eps) with r = sqrt(I + eps) - sqrt(M).
    """

    name = "huber_sqrt"

    delta: float = attrs.field(default=1.5, converter=float, validator=_positive_finite)
    epsilon: float = attrs.field(default=1e-6, converter=float, validator=_non_negative)

    def prepare_measured(self, measured: Any) -> Any:
        """sqrt(M), computed once per dataset instead of at every evaluation."""
        return self.device.xp.sqrt(measured)

    def value_and_grad(self, intensity: Any, measured: Any) -> tuple[float, Any]:
        # ``measured`` is what prepare_measured returned: sqrt(M). ``self.device`` is the
        # Device given to prepare(context). Work arrays are reused in place to keep the memory
        # of a batch at two intensity-sized arrays.
        xp = self.device.xp
        amp = intensity + self.epsilon if self.epsilon else intensity.copy()
        xp.sqrt(amp, out=amp)
        residual = amp - measured
        clipped = xp.clip(residual, -self.delta, self.delta)
        # h(r) = c (2 r - c): r^2 inside the threshold, 2 delta |r| - delta^2 outside
        residual *= 2.0
        residual -= clipped
        residual *= clipped
        value = float(residual.sum(dtype=xp.float64))
        clipped /= amp
        return value, clipped
