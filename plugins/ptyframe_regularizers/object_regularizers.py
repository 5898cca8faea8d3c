"""Penalties on the object block O (n_slices, n_object_modes, Y, X), complex transmission.

All gradients are g = dR/d conj(O) (so dR = 2 Re <g, dO>), of O's shape and dtype, computed on
the device with ``device.xp`` and ``device.fft2``/``ifft2``. Unless a docstring says otherwise
every slice and every object mode is penalised. Weights are :mod:`ptyframe.core.schedules`
schedules (a plain number is a constant) evaluated at the epoch; a weight of 0 returns
(0.0, {}) without touching the arrays. Penalties are plain sums over pixels, so a weight is in
units of the data loss per pixel (counts for ``lsq``-type losses) and is tuned against it.
"""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar

import attrs
import numpy as np

from ptyframe.components import ModelContext
from ptyframe.core.physics import frequency_axis, gaussian_transfer
from ptyframe.core.validators import at_least, non_negative, positive, to_float

from ._common import (
    BlockPenalty,
    weight_field,
)

__all__ = [
    "AdaptiveTotalVariation", "L1Phase", "L1Absorption", "MixedVariance", "MissingWedge",
]

#: smallest |O|^2 used as a divisor (a zero transmission has no phase or absorption)
_TINY = 1e-30


def _sum(xp: Any, a: Any) -> float:
    """Sum of a real array accumulated in double precision."""
    return float(xp.sum(a, dtype=xp.float64))


def _abs2(a: Any) -> Any:
    return a.real * a.real + a.imag * a.imag


# ============================================================================ ATV
@attrs.define(kw_only=True)
class AdaptiveTotalVariation(BlockPenalty):
    """Adaptive total variation of the complex transmission O.

    R = weight * sum_{s, k, y, x} [ (|dx O|^p + |dy O|^p + eps)^(q/p) - eps^(q/p) ]

    with forward differences dx O[y, x] = O[y, x+1] - O[y, x] and dy O[y, x] = O[y+1, x] -
    O[y, x] inside each slice s and mode k. Boundary: no wrap-around (the object's opposite
    edges are unrelated); the difference across the last column (row) is taken as 0, i.e.
    mirror (Neumann) boundary. The constant eps^(q/p) per pixel is subtracted so that a
    uniform object costs 0. q = 1, p = 2 is the isotropic TV of O; p = 1 the anisotropic one;
    q = 2 a quadratic smoothness penalty.

    * ``weight``: weight of the penalty, >= 0 [atv_weight]
    * ``p``: exponent of the differences, >= 1 (2: isotropic TV, 1: anisotropic) [atv_p]
    * ``q``: outer exponent, > 0 (1: total variation, 2: quadratic smoothness) [atv_q]
    * ``eps``: smoothing constant, > 0, in units of |dO|^p: rounds the kink of the TV at zero
      gradient, |dO| ~ eps^(1/p)

    Reference: atv_weight, atv_q, atv_p (the reference uses periodic differences and a fixed
    eps = 1e-20).
    """

    name = "atv"
    weight: Any = weight_field(1.0)
    p: float = attrs.field(default=2.0, converter=to_float, validator=at_least(1))
    q: float = attrs.field(default=1.0, converter=to_float, validator=positive())
    eps: float = attrs.field(default=1e-6, converter=to_float, validator=positive())

    block: ClassVar[str] = "object"

    def penalty(self, obj: Any, w: float, device: Any) -> tuple[float, Any] | None:
        xp = device.xp
        p, q, eps = self.p, self.q, self.eps
        dx = xp.zeros_like(obj)
        dy = xp.zeros_like(obj)
        dx[..., :, :-1] = obj[..., :, 1:] - obj[..., :, :-1]
        dy[..., :-1, :] = obj[..., 1:, :] - obj[..., :-1, :]
        if p == 2.0:
            term = _abs2(dx) + _abs2(dy) + eps
        else:
            ax, ay = xp.abs(dx), xp.abs(dy)
            term = ax**p + ay**p + eps
        root = xp.sqrt(term) if q / p == 0.5 else term ** (q / p)
        value = w * (_sum(xp, root) - term.size * eps ** (q / p))
        # dR/d conj(dx) = w (q/p) T^(q/p - 1) (p/2) |dx|^(p-2) dx  (dx, dy overwritten)
        coef = root
        coef /= term
        coef *= 0.5 * w * q
        if p == 2.0:
            dx *= coef
            dy *= coef
        else:
            # |d|^(p-2) d -> 0 as d -> 0 for p > 1; for p = 1 take the subgradient 0 there
            dx *= coef * xp.where(ax > 0, xp.where(ax > 0, ax, 1.0) ** (p - 2.0), 0.0)
            dy *= coef * xp.where(ay > 0, xp.where(ay > 0, ay, 1.0) ** (p - 2.0), 0.0)
        # adjoint of the forward differences (the last column of dx and row of dy are 0)
        grad = xp.zeros_like(obj)
        grad[..., :, 1:] += dx[..., :, :-1]
        grad -= dx
        grad[..., 1:, :] += dy[..., :-1, :]
        grad -= dy
        return value, grad


# ============================================================================ L1 norms
def _smooth_abs(xp: Any, t: Any, eps: float) -> tuple[Any, Any]:
    """sqrt(t^2 + eps^2) - eps (a differentiable |t|, 0 at t = 0) and its derivative."""
    root = xp.sqrt(t * t + eps * eps)
    return root - eps, t / root


class _SmoothL1OfObject(BlockPenalty):
    """weight * sum (sqrt(f^2 + eps^2) - eps) of a real field f(O) of the object whose
    derivative is df / d conj(O) = chain * O / |O|^2 (``chain`` a class constant); subclasses
    give f (:meth:`field`) and eps (:meth:`smoothing`)."""

    chain: ClassVar[complex]

    @abc.abstractmethod
    def field(self, obj: Any, mag2: Any, xp: Any) -> Any:
        """f(O) from the object and |O|^2 (floored at a tiny value)."""

    @abc.abstractmethod
    def smoothing(self) -> float:
        """eps, in the unit of f."""

    block: ClassVar[str] = "object"

    def penalty(self, obj: Any, w: float, device: Any) -> tuple[float, Any] | None:
        xp = device.xp
        mag2 = xp.maximum(_abs2(obj), _TINY)
        penalty, slope = _smooth_abs(xp, self.field(obj, mag2, xp), self.smoothing())
        grad = (self.chain * w) * (slope / mag2) * obj
        return w * _sum(xp, penalty), grad


@attrs.define(kw_only=True)
class L1Phase(_SmoothL1OfObject):
    """L1 norm of the object's phase: promotes a sparse phase (atoms on empty background).

    R = weight * sum_{s, k, y, x} (sqrt(phi^2 + eps_rad^2) - eps_rad),  phi = angle(O) in
    (-pi, pi] (rad).

    The smoothing makes |phi| differentiable: quadratic phi^2 / (2 eps_rad) for |phi| <<
    eps_rad, |phi| - eps_rad beyond. Gradient: g = weight * phi / sqrt(phi^2 + eps^2) *
    i / (2 conj(O)).

    * ``weight``: weight of the penalty, >= 0 [phase_norm_weight]
    * ``eps_rad``: smoothing width, radians (> 0): quadratic penalty for |phi| << eps_rad

    Reference: phase_norm_weight (the reference uses sign(phi), eps = 0).
    """

    name = "l1_phase"
    #: d phi / d conj(O) = i / (2 conj(O)) = i O / (2 |O|^2)
    chain: ClassVar[complex] = 0.5j
    weight: Any = weight_field(1.0)
    eps_rad: float = attrs.field(default=1e-3, converter=to_float, validator=positive())

    def field(self, obj: Any, mag2: Any, xp: Any) -> Any:
        return xp.angle(obj)

    def smoothing(self) -> float:
        return self.eps_rad


@attrs.define(kw_only=True)
class L1Absorption(_SmoothL1OfObject):
    """L1 norm of the absorptive potential a = -log|O| (dimensionless, 0 for a pure phase).

    R = weight * sum_{s, k, y, x} (sqrt(a^2 + eps^2) - eps),  a = -log|O|.

    Same smoothing as ``l1_phase`` (quadratic below ``eps``). Gradient: g = weight * a /
    sqrt(a^2 + eps^2) * (-1 / (2 conj(O))).

    * ``weight``: weight of the penalty, >= 0 [abs_norm_weight]
    * ``eps``: smoothing width in units of a = -log|O| (> 0, dimensionless): quadratic penalty
      for |a| << eps

    Reference: abs_norm_weight (the reference uses sign(a), eps = 0).
    """

    name = "l1_absorption"
    #: d a / d conj(O) = -1 / (2 conj(O)) = -O / (2 |O|^2)
    chain: ClassVar[complex] = -0.5
    weight: Any = weight_field(1.0)
    eps: float = attrs.field(default=1e-3, converter=to_float, validator=positive())

    def field(self, obj: Any, mag2: Any, xp: Any) -> Any:
        return -0.5 * xp.log(mag2)

    def smoothing(self) -> float:
        return self.eps


# ============================================================================ mixed variance
@attrs.define(kw_only=True)
class MixedVariance(BlockPenalty):
    """Variance of the low-pass filtered object modes: keeps the modes alike at low spatial
    frequencies (they are states of one specimen) while letting them differ in fine detail.

    R = weight / K * sum_{s, k} || G_sigma * (O_{s,k} - mean_k O_{s,k}) ||^2

    over the K = n_object_modes modes of every slice s; G_sigma is a Gaussian blur of standard
    deviation ``sigma_px`` (object pixels) applied by FFT (periodic boundary), transfer
    function exp(-2 pi^2 sigma_px^2 f^2) with f in cycles per pixel. ``sigma_px = 0`` penalises
    the plain variance. Does nothing with a single object mode.

    * ``weight``: weight of the penalty, >= 0 [mixed_variance_weight]
    * ``sigma_px``: standard deviation of the Gaussian low-pass, object pixels, >= 0 (0 = plain
      variance; the reference's value s gives 1 / (sqrt(2) pi s)) [mixed_variance_sigma]

    Reference: mixed_variance_weight (same normalisation: the variance is divided by K) and
    mixed_variance_sigma, which is a width in frequency: the reference's filter
    exp(-f^2 / sigma_ref^2) is this one with sigma_px = 1 / (sqrt(2) pi sigma_ref); the
    default sigma_px = 0.45 corresponds to the reference's default sigma_ref = 0.5.
    """

    name = "mixed_variance"
    weight: Any = weight_field(1.0)
    sigma_px: float = attrs.field(default=0.45, converter=to_float, validator=non_negative())
    _transfer: Any = attrs.field(init=False, default=None, repr=False, eq=False)

    def transfer(self, shape: tuple[int, int], device: Any) -> Any:
        """The blur's transfer function (Y, X) in FFT order, real, on the device (cached)."""
        key = (tuple(shape), device.kind, np.dtype(device.real_dtype).name)
        if self._transfer is None or self._transfer[0] != key:
            self._transfer = (key, device.real(gaussian_transfer(shape, self.sigma_px)))
        return self._transfer[1]

    block: ClassVar[str] = "object"

    def penalty(self, obj: Any, w: float, device: Any) -> tuple[float, Any] | None:
        if obj.shape[1] < 2:
            return None
        xp = device.xp
        n_modes = obj.shape[1]
        h = self.transfer(obj.shape[-2:], device).astype(obj.real.dtype, copy=False)
        centred = obj - obj.mean(axis=1, keepdims=True)
        blurred = device.ifft2(device.fft2(centred) * h, overwrite=True)
        scale = w / n_modes
        value = scale * _sum(xp, _abs2(blurred))
        # G is real-symmetric (Hermitian) and commutes with the centring: g = scale G^H G C O
        grad = device.ifft2(device.fft2(blurred, overwrite=True) * (scale * h), overwrite=True)
        return value, grad


# ============================================================================ missing wedge
@attrs.define(kw_only=True)
class MissingWedge(BlockPenalty):
    """Penalty on the 3-D spectrum of a multislice object outside the transferred wedge.

    Ptychography of a specimen illuminated with a convergence semi-angle alpha transfers a
    3-D spatial frequency (kz, k_perp) only inside a double cone |kz| <~ alpha |k_perp|:
    depth information is missing at low lateral frequencies, where the slices tend to pick
    up spurious, slowly varying differences. This penalty suppresses that content:

    R = weight * sum_{kz, ky, kx, k} |W(kz, k_perp) F[O_k](kz, ky, kx)|^2,
    W = (2 / pi) arctan(beta^2 kz^2 / k_perp^2)

    with F the orthonormal 3-D FFT over (slice, y, x) of each object mode k (periodic along
    the slices), kz = fftfreq(n_slices, dz) and ky, kx = fftfreq(n, pixel_size_A) in 1/Å, dz
    the (mean) slice distance. W is 0 in the kz = 0 plane (the projected object is never
    penalised), 1/2 on the cone |kz| = |k_perp| / beta and tends to 1 for |kz| >> |k_perp| /
    beta; at k_perp = 0 it is 1 for kz != 0 (the "missing" axis). Because the constant 1 of
    vacuum only lives at kz = 0, penalising F[O] is the same as penalising F[O - 1]. A larger
    ``beta`` narrows the allowed wedge (beta ~ 1 / alpha for a probe of semi-angle alpha rad).
    Objects with one slice are skipped.

    * ``weight``: weight of the penalty, >= 0 (the reference's weight times n_slices * Y * X)
    * ``beta``: wedge parameter, > 0, dimensionless (~ 1 / alpha for a convergence semi-angle
      alpha in radians) [beta_wedge]

    Reference: beta_wedge (same weight function W; the reference applies it as a by-hand
    filter and, as a loss term, with an unnormalised FFT, i.e. its weight is this ``weight``
    divided by n_slices * Y * X).
    """

    name = "missing_wedge"
    weight: Any = weight_field(1.0)
    beta: float = attrs.field(default=1.0, converter=to_float, validator=positive())
    _pixel_size_A: float | None = attrs.field(init=False, default=None, repr=False, eq=False)
    _dz_A: float | None = attrs.field(init=False, default=None, repr=False, eq=False)
    _weights: Any = attrs.field(init=False, default=None, repr=False, eq=False)

    def prepare(self, context: ModelContext) -> None:
        super().prepare(context)
        self._pixel_size_A = float(context.pixel_size_A)
        self._weights = None
        thickness = context.slice_thickness_A
        if context.n_slices > 1:
            values = np.atleast_1d(np.asarray(thickness if thickness is not None else [],
                                              dtype=float))
            if values.size == 0 or not np.all(np.isfinite(values)) or np.any(values <= 0):
                raise ValueError(
                    f"missing_wedge: needs the slice distance; context.slice_thickness_A: "
                    f"expected positive Å values for {context.n_slices} slices, found "
                    f"{thickness!r}")
            self._dz_A = float(values.mean())

    def wedge_weights(self, shape: tuple[int, int, int], device: Any) -> Any:
        """W (n_slices, Y, X) in FFT order on the device (cached per shape)."""
        if self._pixel_size_A is None or self._dz_A is None:
            raise RuntimeError("missing_wedge: call prepare(context) before value_and_grad "
                               "(the slice distance and pixel size come from the context)")
        key = (tuple(shape), device.kind, np.dtype(device.real_dtype).name)
        if self._weights is None or self._weights[0] != key:
            kz = frequency_axis(shape[0], self._dz_A)[:, None, None]
            ky = frequency_axis(shape[1], self._pixel_size_A)[None, :, None]
            kx = frequency_axis(shape[2], self._pixel_size_A)[None, None, :]
            kperp2 = np.broadcast_to(ky**2 + kx**2, shape)
            kz2 = np.broadcast_to(kz**2, shape)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(kperp2 > 0, self.beta**2 * kz2 / np.where(kperp2 > 0, kperp2,
                                                                            1.0), np.inf)
            ratio = np.where(kz2 > 0, ratio, 0.0)
            self._weights = (key, device.real((2.0 / math.pi) * np.arctan(ratio)))
        return self._weights[1]

    block: ClassVar[str] = "object"

    def penalty(self, obj: Any, w: float, device: Any) -> tuple[float, Any] | None:
        if obj.shape[0] < 2:
            return None
        xp = device.xp
        n_slices, _, ny, nx = obj.shape
        weights = self.wedge_weights((n_slices, ny, nx), device)[:, None]
        weights = weights.astype(obj.real.dtype, copy=False)
        spectrum = xp.fft.fft(device.fft2(obj, norm="ortho"), axis=0, norm="ortho")
        spectrum *= weights
        value = w * _sum(xp, _abs2(spectrum))
        spectrum *= w * weights
        grad = device.ifft2(xp.fft.ifft(spectrum, axis=0, norm="ortho"), norm="ortho",
                            overwrite=True)
        return value, grad
