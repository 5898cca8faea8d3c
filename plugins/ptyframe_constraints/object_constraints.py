"""Constraints "by hand" on the object (transmission function O, (slices, modes, Y, X) complex).

Every filter here works per (slice, mode) plane over the plane's last two axes, with the FFT's
periodic boundary conditions (the object's margin is vacuum, so the wrap-around is harmless).
Phase phi = angle(O) in radians, absorption a = -log|O|.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

import attrs
import numpy as np

from ptyframe.components import Constraint, ModelContext
from ptyframe.core.physics import band_limit_mask, frequency_axis, gaussian_transfer
from ptyframe.core.schedules import Schedule
from ptyframe.core.validators import (
    boolean,
    finite,
    in_range,
    non_negative,
    positive,
    to_float,
)

from ._common import (
    BlockProjection,
    to_device_mask,
    when_field,
)

__all__ = ["GaussianFilter", "ChargeFlip", "FancySigma", "BandLimit", "RestartFromVacuum",
           "PhaseOnlyObject", "unwrapped_phase_spectrum", "flip_below"]


def _schedule_active(schedule: Schedule, epoch: int) -> bool:
    return bool(schedule(epoch))


def unwrapped_phase_spectrum(obj: Any, device: Any) -> Any:
    """FFT of the least-squares unwrapped phase of ``obj`` (zero mean), last two axes.

    The wrapped neighbour differences angle(O[y+1] conj O[y]) (and along x, periodic) are
    integrated by the FFT Poisson solver: phi_hat = (conj(e_y) D_y + conj(e_x) D_x) /
    (|e_y|^2 + |e_x|^2), e = exp(2 pi i f) - 1. Where every neighbour difference (across the
    periodic border too) is below pi, this is the true phase up to a constant, whatever the
    number of 2 pi wraps of angle(O).
    """
    xp = device.xp
    ny, nx = obj.shape[-2:]
    dy = xp.angle(xp.roll(obj, -1, axis=-2) * xp.conj(obj))
    dx = xp.angle(xp.roll(obj, -1, axis=-1) * xp.conj(obj))
    ey = np.exp(2j * np.pi * frequency_axis(ny))[:, None] - 1.0
    ex = np.exp(2j * np.pi * frequency_axis(nx))[None, :] - 1.0
    den = np.abs(ey) ** 2 + np.abs(ex) ** 2
    den[0, 0] = 1.0  # the mean is undetermined; the numerator is 0 there
    cdtype = obj.dtype
    num = (xp.asarray(np.conj(ey) / den, dtype=cdtype) * device.fft2(dy)
           + xp.asarray(np.conj(ex) / den, dtype=cdtype) * device.fft2(dx))
    return num


def flip_below(values: Any, delta: float, beta: float, xp: Any) -> Any:
    """Charge-flip rule: values below ``delta`` x (the plane's maximum) are multiplied by
    ``beta``; the others are kept. Planes are the last two axes."""
    threshold = delta * xp.max(values, axis=(-2, -1), keepdims=True)
    return xp.where(values < threshold, beta * values, values)


def _phase_and_absorption(obj: Any, xp: Any) -> tuple[Any, Any]:
    tiny = float(np.finfo(obj.real.dtype).tiny)
    return xp.angle(obj), -xp.log(xp.maximum(xp.abs(obj), tiny))


def _with_phase_and_absorption(obj: Any, phase: Any, new_phase: Any, absorption: Any,
                               new_absorption: Any, xp: Any) -> Any:
    """O * exp(-(a' - a) + i (phi' - phi)): pixels left alone stay bit-identical."""
    return obj * xp.exp((absorption - new_absorption) + 1j * (new_phase - phase))


# ============================================================================ Gaussian filter
@attrs.define(kw_only=True)
class GaussianFilter(Constraint):
    """Gaussian filter of the object's phase and/or amplitude (reference:
    ``apply_gaussian_filter`` / ``apply_gaussian_filter_amplitude``).

    * ``sigma_phase_px``: standard deviation of the Gaussian applied to the phase, object pixels
      (0 = phase not filtered; True in the reference = 1 px) [apply_gaussian_filter]
    * ``sigma_amplitude_px``: standard deviation of the Gaussian applied to |O|, object pixels
      (0 = amplitude not filtered; not both 0) [apply_gaussian_filter_amplitude]
    * ``when``: bool schedule of the epochs at which the filter is applied (after the epoch's
      optimizer step)

    The phase is filtered without wrapping problems: the filter acts on the least-squares
    unwrapped phase phi_u (FFT Poisson integration of the wrapped neighbour differences), and
    O <- |O|' exp(i [angle(O) + (G - 1) * phi_u]). Where neighbouring pixels differ by less
    than pi this is exactly exp(i G * phi) for the true (unwrapped) phase phi, however many
    times angle(O) wraps; a plain filter of angle(O) would smear every 2 pi jump. The
    amplitude filter is |O|' = G * |O| (phase kept). Convolutions are periodic (FFT), the
    Gaussian normalised (the mean phase and amplitude are kept). Resets the optimizer history.
    """

    name = "gaussian_filter"

    sigma_phase_px: float = attrs.field(default=1.0, converter=to_float,
                                        validator=non_negative())
    sigma_amplitude_px: float = attrs.field(default=0.0,
                                            converter=to_float,
                                            validator=non_negative())
    when: Schedule = when_field(True)

    def __attrs_post_init__(self) -> None:
        if self.sigma_phase_px == 0 and self.sigma_amplitude_px == 0:
            raise ValueError("sigma_phase_px, sigma_amplitude_px: expected at least one > 0, "
                             "found both 0 (the filter would do nothing)")

    def is_active(self, epoch: int) -> bool:
        return _schedule_active(self.when, epoch)

    def apply(self, params: MutableMapping[str, Any], epoch: int) -> bool:
        device = self.device
        xp = device.xp
        obj = params["object"]
        shape = obj.shape[-2:]
        new = obj
        if self.sigma_amplitude_px > 0:
            mag = xp.abs(obj)
            g = to_device_mask(gaussian_transfer(shape, self.sigma_amplitude_px), obj, device)
            smooth = device.ifft2(device.fft2(mag) * g).real
            unit = xp.where(mag > 0, obj / xp.where(mag > 0, mag, 1), 1)
            new = (smooth * unit).astype(obj.dtype, copy=False)
        if self.sigma_phase_px > 0:
            g = to_device_mask(gaussian_transfer(shape, self.sigma_phase_px), obj, device)
            correction = device.ifft2(unwrapped_phase_spectrum(obj, device) * (g - 1)).real
            new = new * xp.exp(1j * correction)
        params["object"] = new.astype(obj.dtype, copy=False)
        return True


# ============================================================================ charge flipping
@attrs.define(kw_only=True)
class ChargeFlip(Constraint):
    """Charge flipping of the object potential (reference: ``do_charge_flip``, ``cf_*``).

    * ``delta_phase``: phase threshold as a fraction of the plane's maximum phase; pixels below
      it are flipped [cf_delta_phase]
    * ``beta_phase``: factor applied to the phase of flipped pixels, in [-1, 1] (-1: classic
      flip, 1: phase left alone) [cf_beta_phase]
    * ``delta_abs``: absorption threshold as a fraction of the plane's maximum absorption
      -log|O| [cf_delta_abs]
    * ``beta_abs``: factor applied to the absorption of flipped pixels, in [-1, 1]
      [cf_beta_abs]
    * ``when``: bool schedule of the epochs at which the flip is applied (after the epoch's
      optimizer step) [do_charge_flip]

    Rule, per (slice, mode) plane, as in the reference (its deltas are "threshold ratios"):
    phase phi = angle(O) (radians, not unwrapped): every pixel with phi < ``delta_phase`` x
    max(phi) is replaced by ``beta_phase`` x phi; absorption a = -log|O| likewise with
    ``delta_abs`` and ``beta_abs``; pixels above the thresholds are left bit-identical.
    O <- exp(-a' + i phi'). ``beta`` = -1 is the classic flip, the defaults -0.95 a damped one;
    ``beta`` = 1 switches a channel off, ``delta`` = 0 with ``beta`` = 0 clips negatives.
    Resets the optimizer history.
    """

    name = "charge_flip"

    delta_phase: float = attrs.field(default=0.1, converter=to_float, validator=finite())
    beta_phase: float = attrs.field(default=-0.95, converter=to_float,
                                    validator=in_range(-1.0, 1.0))
    delta_abs: float = attrs.field(default=0.01, converter=to_float, validator=finite())
    beta_abs: float = attrs.field(default=-0.95, converter=to_float,
                                  validator=in_range(-1.0, 1.0))
    when: Schedule = when_field(True)

    def is_active(self, epoch: int) -> bool:
        return _schedule_active(self.when, epoch)

    def _new_phase(self, phase: Any, device: Any) -> Any:
        return flip_below(phase, self.delta_phase, self.beta_phase, device.xp)

    def _new_absorption(self, absorption: Any, device: Any) -> Any:
        return flip_below(absorption, self.delta_abs, self.beta_abs, device.xp)

    def apply(self, params: MutableMapping[str, Any], epoch: int) -> bool:
        device = self.device
        xp = device.xp
        obj = params["object"]
        phase, absorption = _phase_and_absorption(obj, xp)
        new_phase = self._new_phase(phase, device)
        new_absorption = self._new_absorption(absorption, device)
        params["object"] = _with_phase_and_absorption(
            obj, phase, new_phase, absorption, new_absorption, xp).astype(obj.dtype, copy=False)
        return True


@attrs.define(kw_only=True)
class FancySigma(ChargeFlip):
    """Deconvolve - flip - reconvolve, to enforce atomicity (reference: ``fancy_sigma``).

    * ``sigma_px``: standard deviation of the Gaussian for the phase, object pixels (the
      reference's value / sqrt(2)) [fancy_sigma]
    * ``sigma_abs_px``: the same for the absorption -log|O|, object pixels (0: plain charge
      flip of the absorption; the reference's second value / sqrt(2)) [fancy_sigma]
    * ``reconvolve_ratio``: standard deviation of the reconvolving Gaussian in units of the
      sigma, >= 0 (0 = no reconvolution)
    * ``wiener_epsilon``: regularisation constant eps of the Wiener deconvolution, > 0
      (dimensionless; the reference uses 0)
    * ``delta_phase``: flip threshold as a fraction of the maximum of the deconvolved phase
      map [cf_delta_phase]
    * ``beta_phase``: factor applied to flipped values of the deconvolved phase map, in
      [-1, 1] [cf_beta_phase]
    * ``delta_abs``: the same threshold for the absorption map [cf_delta_abs]
    * ``beta_abs``: the same factor for the absorption map [cf_beta_abs]
    * ``when``: bool schedule of the epochs at which the constraint is applied (after the
      epoch's optimizer step) [do_charge_flip]

    Per (slice, mode) plane, for the phase x = angle(O) (and for the absorption -log|O| when
    ``sigma_abs_px`` > 0; otherwise the absorption gets the plain charge flip):

    1. x0 = x - min(x) (the reference's offset, so thresholds are measured from the minimum);
    2. Wiener deconvolution by a Gaussian of standard deviation ``sigma_px`` (pixels):
       x_d = IFFT[FFT(x0) G (1 + eps) / (G^2 + eps)], G = exp(-2 pi^2 sigma^2 f^2), eps =
       ``wiener_epsilon`` (the reference divides by G unregularised), DC gain 1;
    3. the charge-flip rule of ``charge_flip`` on x_d (values < delta max(x_d) times beta;
       ``delta_phase`` = 0, ``beta_phase`` = 0 clips negatives);
    4. reconvolution by a Gaussian of ``reconvolve_ratio`` x sigma (0: none);
    5. min(x) added back (the reference leaves it out, shifting the mean phase/absorption).

    The reference's Gaussian exp(-r^2/s^2) has standard deviation s/sqrt(2). Resets the
    optimizer history.
    """

    name = "fancy_sigma"

    sigma_px: float = attrs.field(default=1.0, converter=to_float, validator=positive())
    sigma_abs_px: float = attrs.field(default=0.0, converter=to_float,
                                      validator=non_negative())
    reconvolve_ratio: float = attrs.field(default=1.0, converter=to_float,
                                          validator=non_negative())
    wiener_epsilon: float = attrs.field(default=1e-2, converter=to_float,
                                        validator=positive())

    def _deconvolve_flip_reconvolve(self, x: Any, sigma: float, delta: float, beta: float,
                                    device: Any) -> Any:
        xp = device.xp
        shape = x.shape[-2:]
        offset = xp.min(x, axis=(-2, -1), keepdims=True)
        g = gaussian_transfer(shape, sigma)
        eps = self.wiener_epsilon
        wiener = to_device_mask(g * (1.0 + eps) / (g * g + eps), x, device)
        x_d = device.ifft2(device.fft2(x - offset) * wiener).real
        x_f = flip_below(x_d, delta, beta, xp)
        if self.reconvolve_ratio > 0:
            g2 = to_device_mask(gaussian_transfer(shape, self.reconvolve_ratio * sigma), x,
                                device)
            x_f = device.ifft2(device.fft2(x_f) * g2).real
        return (x_f + offset).astype(x.dtype, copy=False)

    def _new_phase(self, phase: Any, device: Any) -> Any:
        return self._deconvolve_flip_reconvolve(phase, self.sigma_px, self.delta_phase,
                                                self.beta_phase, device)

    def _new_absorption(self, absorption: Any, device: Any) -> Any:
        if self.sigma_abs_px == 0:
            return super()._new_absorption(absorption, device)
        return self._deconvolve_flip_reconvolve(absorption, self.sigma_abs_px, self.delta_abs,
                                                self.beta_abs, device)


# ============================================================================ band limit
@attrs.define(kw_only=True)
class BandLimit(BlockProjection):
    """Band-limit cleaning of the full object (and optionally the probe) every step
    (reference: ``update_extra_cut`` with ``lazy_clean`` = False, and the probe's
    ``fourier_clean`` with ``damping_cutoff_multislice``).

    * ``cutoff``: band limit, fraction of Nyquist (radial, r = 2 |f| with f in cycles per
      pixel, as the propagator's ``damping_cutoff``) [damping_cutoff_multislice]
    * ``extra_cut``: the object is cut at ``cutoff`` - ``extra_cut``, fraction of Nyquist
      [update_extra_cut]
    * ``rolloff``: width of a sin^2 taper ending at the cutoff, fraction of Nyquist (0 = hard
      edge) [smooth_rolloff]
    * ``object``: whether to clean the object (false = the reference's lazy_clean = True)
      [lazy_clean]
    * ``probe``: whether to band-limit the probe too, at ``probe_cutoff``
    * ``probe_cutoff``: the probe's cutoff, fraction of Nyquist (None: ``cutoff``, no extra
      cut)
    * ``reset_tolerance``: relative L2 change of a block above which the optimizer history
      is reset
    * ``when``: bool schedule of the epochs at which the constraint is active (cleaning after
      the epoch's optimizer step, gradients masked during it)

    The object's 2-D spectrum (per slice and mode, over the whole object) is zeroed above
    ``cutoff`` - ``extra_cut``. The filter acts on O itself as in the reference; since it
    keeps f = 0 this is the same as filtering O - 1 (vacuum stays exactly 1), but not as
    filtering log O.

    While active, :meth:`project_gradient` applies the same masks to the gradients, so the
    iterates stay band-limited and :meth:`apply` only removes rounding: it returns True (reset
    the optimizer history) only when it changed a block by more than ``reset_tolerance``,
    e.g. the first time.
    """

    name = "band_limit"

    cutoff: float = attrs.field(default=2.0 / 3.0, converter=to_float,
                                validator=in_range(0.0, 1.5, low_open=True))
    extra_cut: float = attrs.field(default=0.005, converter=to_float,
                                   validator=non_negative())
    rolloff: float = attrs.field(default=0.0, converter=to_float,
                                 validator=non_negative())
    object: bool = attrs.field(default=True, validator=boolean())
    probe: bool = attrs.field(default=False, validator=boolean())
    probe_cutoff: float | None = attrs.field(
        default=None, converter=to_float,
        validator=in_range(0.0, 1.5, low_open=True, optional=True))
    reset_tolerance: float = attrs.field(default=1e-6, converter=to_float,
                                         validator=non_negative())
    when: Schedule = when_field(True)
    _masks: dict = attrs.field(factory=dict, init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if self.extra_cut >= self.cutoff:
            raise ValueError(f"extra_cut: expected a value below cutoff={self.cutoff:g}, "
                             f"found {self.extra_cut!r}")
        if self.rolloff >= self.cutoff - self.extra_cut:
            raise ValueError(f"rolloff: expected a width below cutoff - extra_cut = "
                             f"{self.cutoff - self.extra_cut:g}, found {self.rolloff!r}")
        if not (self.object or self.probe):
            raise ValueError("object, probe: expected at least one true, found both false")

    @property
    def object_cutoff(self) -> float:
        """The object's cutoff, fraction of Nyquist."""
        return self.cutoff - self.extra_cut

    def is_active(self, epoch: int) -> bool:
        return _schedule_active(self.when, epoch)

    def prepare(self, context: ModelContext) -> None:
        super().prepare(context)
        self._masks.clear()

    def _mask(self, array: Any, cutoff: float, device: Any) -> Any:
        key = (tuple(array.shape[-2:]), cutoff, str(array.real.dtype), device.kind)
        mask = self._masks.get(key)
        if mask is None:
            rolloff = min(self.rolloff, 0.5 * cutoff)
            mask = to_device_mask(band_limit_mask(array.shape[-2:], cutoff, rolloff), array,
                                  device)
            self._masks[key] = mask
        return mask

    def _blocks(self) -> list[tuple[str, float]]:
        out = []
        if self.object:
            out.append(("object", self.object_cutoff))
        if self.probe:
            out.append(("probe", self.cutoff if self.probe_cutoff is None
                        else self.probe_cutoff))
        return out

    def blocks(self) -> list[str]:
        return [block for block, _ in self._blocks()]

    def project(self, block: str, grad: Any, params: Mapping[str, Any], device: Any) -> Any:
        """IFFT[mask FFT(grad)] with the block's cutoff (linear: values and gradients alike)."""
        cutoff = dict(self._blocks())[block]
        return device.ifft2(device.fft2(grad) * self._mask(grad, cutoff, device)
                            ).astype(grad.dtype, copy=False)

    def retract(self, block: str, value: Any, params: Mapping[str, Any], device: Any) -> Any:
        return self.project(block, value, params, device)


# ============================================================================ restart
def _epochs(value: Any) -> tuple[int, ...]:
    values = tuple(value) if isinstance(value, (list, tuple)) else None
    if values is None or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                 and v >= 0 for v in values):
        raise ValueError(f"epochs: expected a list of integers >= 0, found {value!r}")
    return tuple(sorted({int(v) for v in values}))


@attrs.define(kw_only=True)
class RestartFromVacuum(Constraint):
    """Reset the object to vacuum (O = 1 in every slice and mode), keeping the probe and the
    other blocks (reference: ``restart_from_vacuum``).

    * ``epochs``: list of epochs (integers >= 0) at which the object is reset, after the
      epoch's optimizer step [restart_from_vacuum]
    * ``when``: bool schedule of further epochs at which the object is reset (default never)
      [restart_from_vacuum]

    Active at the epochs listed in ``epochs`` and wherever the schedule ``when`` is true.
    Both default to never, so the component does nothing unless told when, e.g.
    ``{"type": "restart_from_vacuum", "epochs": [20]}`` or ``when`` =
    ``{"type": "every", "n": 50, "offset": 50}``. Resets the optimizer history.
    """

    name = "restart_from_vacuum"

    epochs: tuple[int, ...] = attrs.field(default=(), converter=_epochs)
    when: Schedule = when_field(False)

    def is_active(self, epoch: int) -> bool:
        return epoch in self.epochs or _schedule_active(self.when, epoch)

    def apply(self, params: MutableMapping[str, Any], epoch: int) -> bool:
        device = self.device
        params["object"] = device.xp.ones_like(params["object"])
        return True


# ============================================================================ phase only
@attrs.define(kw_only=True)
class PhaseOnlyObject(BlockProjection):
    """Restrict the object to a pure phase, O = exp(i phi) (reference: ``phase_only_obj``).

    * ``reset_tolerance``: relative L2 change made by the retraction O <- O / |O| above which
      the optimizer history is reset
    * ``when``: bool schedule of the epochs at which the object is kept phase-only (gradients
      projected during the epoch, retraction after its optimizer step) [phase_only_obj]

    Gradient: for O = exp(i phi) the chain rule with dL = 2 Re<g, dO> and dO = i O dphi gives
    dL/dphi = 2 Re(conj(g) i O) = 2 Im(conj(O) g) per pixel. :meth:`project_gradient` maps the
    object gradient g to g' = i O Im(conj(O) g) / |O|^2, the orthogonal projection (for the
    real inner product Re<a, b>) of g onto the tangent direction i O of the circle |O| = const;
    for |O| = 1 it is the phase gradient (1/2 dL/dphi) mapped back into O, so a step -s g' is
    the first-order step in phi. It is idempotent, and Re(conj(O) g') = 0 keeps |O| fixed to
    first order (|O - s g'| - |O| = O(s^2)); where O = 0 the direction is undefined and g' = 0.

    :meth:`apply` is the retraction O <- O / |O| (O = 0 -> 1). Along projected steps it moves O
    only by the second-order term, which does not invalidate the optimizer's curvature
    history: it returns True (reset) only when the relative L2 change exceeds
    ``reset_tolerance``, i.e. the first time on a non-unimodular object or when gradients were
    not projected.
    """

    name = "phase_only_object"

    reset_tolerance: float = attrs.field(default=1e-2, converter=to_float,
                                         validator=non_negative())
    when: Schedule = when_field(True)

    def is_active(self, epoch: int) -> bool:
        return _schedule_active(self.when, epoch)

    def blocks(self) -> tuple[str, ...]:
        return ("object",)

    def retract(self, block: str, value: Any, params: Mapping[str, Any], device: Any) -> Any:
        """O / |O| (O = 0 -> 1)."""
        xp = device.xp
        mag = xp.abs(value)
        return xp.where(mag > 0, value / xp.where(mag > 0, mag, 1), 1).astype(value.dtype,
                                                                              copy=False)

    def project(self, block: str, grad: Any, params: Mapping[str, Any], device: Any) -> Any:
        """i O Im(conj(O) g) / |O|^2 (0 where O = 0)."""
        xp = device.xp
        obj = params["object"]
        power = obj.real**2 + obj.imag**2
        tangential = (obj.real * grad.imag - obj.imag * grad.real)  # Im(conj(O) g)
        coeff = xp.where(power > 0, tangential / xp.where(power > 0, power, 1), 0)
        return (1j * obj * coeff).astype(grad.dtype, copy=False)
