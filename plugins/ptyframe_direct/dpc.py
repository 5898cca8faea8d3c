"""Differential phase contrast: centre of mass, scan rotation, integrated DPC (iDPC).

Physics (ptyframe's conventions: I(k; R) = |FFT[P(r - R) O(r)](k)|^2 with numpy's FFT sign,
k in 1/Å). For a phase object O = exp(i phi) the centre of mass (COM) of each pattern is

    <k>(R) = sum_k k I(k; R) / sum_k I(k; R) = (1 / 2 pi) [|P|^2 * grad phi](R) + const,

i.e. the phase gradient (rad/Å) blurred by the probe intensity, divided by 2 pi (a plane wave
exp(2 pi i q.r) is diffracted to k = +q). Hence ``grad phi = 2 pi <k>`` and the Fourier
integration

    phi = IFFT[(ky F(gy) + kx F(gx)) / (2 pi i (high_pass + k^2 + low_pass k^4))],
    (gy, gx) = 2 pi (<ky>, <kx>)  [rad/Å],   k: scan spatial frequencies [1/Å],

returns the object phase in radians (blurred by the probe intensity). ``high_pass`` (1/Å^2)
and ``low_pass`` (Å^2) are Tikhonov terms damping low and high frequencies; with both 0 this is
the least-squares integral of the gradient field. The constant term (beam centre, probe tilt)
is unobservable: the mean COM over the scan is removed.

Units: the COM arrays of the result are scattering angles in mrad (``1e3 * lambda * <k>``,
scan frame, mean removed); the phase is in rad; images are sampled at the scan step
(``pixel_size_A`` = scan step; pixel (iy, ix) = scan point (iy, ix)).

Rotation: the COM is measured in the detector frame; the scan frame is rotated against it by
``theta`` (and possibly transposed, see :mod:`ptyframe_direct._common`). The correct frame
makes the COM field a gradient field, so ``theta`` (and the transpose state) is fitted by
minimising the curl of the rotated field -- an exact minimisation (the mean squared curl is a
quadratic form in cos/sin theta), defined modulo 180 degrees (theta + 180 negates the field and
the phase). The remaining ambiguity is resolved (``resolve_180``) either by a prior
(``"prior"``, default: the branch within 90 degrees of ``rotation_guess_deg``, by default the
experiment's ``scan_rotation_deg``, as the tcBF fit does) or by requiring the integrated phase
to have non-negative skewness (``"skewness"``: atoms are sharp positive phase peaks on a flat
background; this fails where the probe blur inverts the contrast, e.g. a strongly defocused
probe on a crystal lattice).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import attrs
import numpy as np

from ptyframe.components import DirectMethod, DirectResult
from ptyframe.core.device import Device
from ptyframe.core.experiment import Experiment
from ptyframe.core.physics import angle_to_frequency, spatial_frequencies
from ptyframe.core.validators import (
    at_least,
    boolean,
    finite,
    non_negative,
    one_of,
    positive,
    positive_int,
    to_float,
)

from ._common import (
    as_dataset,
    center_of_mass,
    curl_fraction,
    fit_rotation_by_curl,
    fourier_integrate,
    iter_scan_rows,
    scan_geometry,
    skewness,
    to_scan_frame,
)

__all__ = ["DPC", "IterativeDPC", "integrate_gradient_lsq", "spectral_gradient_ops"]


_LOG = logging.getLogger("ptyframe")
# the fitted rotation / transpose is flagged as ambiguous when the other transpose state is
# nearly as curl-free (smallest curl fractions within this ratio) ...
AMBIGUOUS_CURL_RATIO = 0.75
# ... or when no frame makes the COM field a gradient field (a strongly defocused probe: the
# COM is then not the probe-averaged phase gradient and the curl-minimising angle is biased)
MAX_CURL_FRACTION = 0.15


def rotation_ambiguity(orientation: dict[str, Any]) -> list[str]:
    """Plain sentences saying why a fitted DPC rotation / transpose cannot be trusted (empty
    when it can): see :data:`AMBIGUOUS_CURL_RATIO` and :data:`MAX_CURL_FRACTION`."""
    if not orientation.get("rotation_fitted"):
        return []
    out = []
    by = orientation.get("curl_fraction_by_transpose", {})
    best = float(orientation["curl_fraction"])
    others = [float(v) for k, v in by.items() if k != str(bool(orientation["transpose"]))]
    if others and best > AMBIGUOUS_CURL_RATIO * min(others):
        out.append(f"rotation: the transposed and untransposed detector frames are about "
                   f"equally curl-free (curl fractions {best:.3g} and {min(others):.3g}); the "
                   f"rotation and transpose are ambiguous, use tcBF (defocused data) to find "
                   f"them")
    if best > MAX_CURL_FRACTION:
        out.append(f"rotation: the centre-of-mass field is far from a gradient field in every "
                   f"frame (curl fraction {best:.3g} > {MAX_CURL_FRACTION}), as for a strongly "
                   f"defocused probe; the fitted rotation is unreliable, use tcBF to find it")
    return out


def _angle_diff(a: float, b: float) -> float:
    """|a - b| modulo 360, degrees in [0, 180]."""
    return abs((a - b + 180.0) % 360.0 - 180.0)


@attrs.define(kw_only=True)
class DPC(DirectMethod):
    """Integrated differential phase contrast (iDPC) from the centre of mass of each pattern.

    * ``high_pass``: Tikhonov term damping low scan frequencies in the Fourier integration,
      1/Å^2 (>= 0, 0 = none)
    * ``low_pass``: Tikhonov term damping high scan frequencies, Å^2 (>= 0, 0 = none)
    * ``rotation_deg``: rotation of the scan frame against the detector, degrees (None:
      fitted by minimising the curl of the COM field)
    * ``transpose``: whether the detector's (ky, kx) axes are swapped (None: fitted together
      with the rotation)
    * ``pad_factor``: zero-padding factor (>= 1) of the COM field before the Fourier
      integration
    * ``max_angle_mrad``: ignore detector pixels scattered beyond this angle, mrad (None: the
      whole detector)
    * ``resolve_180``: how the 180-degree ambiguity of a fitted rotation is resolved: "prior"
      (the branch within 90 degrees of ``rotation_guess_deg``) or "skewness" (positive phase
      peaks)
    * ``rotation_guess_deg``: prior rotation for ``resolve_180`` = "prior", degrees (None: the
      experiment's ``scan_rotation_deg``)
    * ``chunk_mb``: memory of one block of patterns streamed through the device, MiB (float32)

    Fourier integration: ``phi = IFFT[(ky F(gy) + kx F(gx)) / (2 pi i (high_pass + k^2 +
    low_pass k^4))]`` with g = 2 pi <k> (rad/Å), k the scan frequencies (1/Å).

    Result arrays: ``phase`` (sy, sx) rad; ``com_y``, ``com_x`` (sy, sx) COM in mrad in the
    scan frame, mean removed; ``intensity`` (sy, sx) counts per pattern (in the COM mask).
    Values: ``rotation_deg``, ``transpose``, ``rotation_fitted``, ``rotation_180_from``
    ("prior", "skewness" or "given"), ``curl_fraction``
    (mean curl^2 / mean(curl^2 + div^2), 0 for a perfect gradient field),
    ``curl_fraction_by_transpose``, ``com_units`` ("mrad"), ``origin_A``, ``pixel_size_yx_A``,
    ``rotation_ambiguous`` (the fitted rotation / transpose cannot be trusted: the other
    transpose state is nearly as curl-free, or the curl fraction exceeds 0.15 -- strongly
    defocused data; a warning recommending tcBF is logged) and ``warnings`` (sentences).
    """

    name = "dpc"
    high_pass: float = attrs.field(default=0.0, converter=to_float,
                                   validator=non_negative())
    low_pass: float = attrs.field(default=0.0, converter=to_float,
                                  validator=non_negative())
    rotation_deg: float | None = attrs.field(default=None, converter=to_float,
                                             validator=finite(unit="degrees", optional=True))
    transpose: bool | None = attrs.field(default=None, validator=boolean(optional=True))
    pad_factor: float = attrs.field(default=2.0, converter=to_float, validator=at_least(1))
    max_angle_mrad: float | None = attrs.field(default=None, converter=to_float,
                                               validator=positive(optional=True))
    resolve_180: str = attrs.field(default="prior", validator=one_of(("prior", "skewness")))
    rotation_guess_deg: float | None = attrs.field(default=None, converter=to_float,
                                                   validator=finite(unit="degrees", optional=True))
    chunk_mb: float = attrs.field(default=64.0, converter=to_float,
                                  validator=positive())

    # ------------------------------------------------------------------ stages
    def measure_com(self, dataset: Any, experiment: Experiment, device: Device
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Detector-frame COM (1/Å), shape (sy, sx) each, and the counts per pattern,
        streamed over blocks of scan rows (float32 on the device, never the whole 4D array)."""
        dataset = as_dataset(dataset, experiment)
        scan, _step = scan_geometry(dataset, experiment)
        xp = device.xp
        ky, kx = spatial_frequencies(dataset.pattern_shape, spacing_inv_A=experiment.dk_inv_A,
                                     centered=True, xp=xp, dtype=device.real_dtype)
        weight = None
        if self.max_angle_mrad is not None:
            k_max = angle_to_frequency(self.max_angle_mrad, experiment.wavelength_A)
            weight = ((ky * ky + kx * kx) <= k_max**2).astype(device.real_dtype)
        n = scan[0] * scan[1]
        cy = np.empty(n)
        cx = np.empty(n)
        total = np.empty(n)
        sx = scan[1]
        for y0, y1, block in iter_scan_rows(dataset, scan, self.chunk_mb * 2**20):
            b = device.asarray(block, dtype=device.real_dtype)
            ccy, ccx, tot = center_of_mass(b, ky, kx, xp, weight)
            cy[y0 * sx:y1 * sx] = device.to_host(ccy)
            cx[y0 * sx:y1 * sx] = device.to_host(ccx)
            total[y0 * sx:y1 * sx] = device.to_host(tot)
        return cy.reshape(scan), cx.reshape(scan), total.reshape(scan)

    def orient(self, com_y: np.ndarray, com_x: np.ndarray, step: tuple[float, float]
               ) -> dict[str, Any]:
        """Rotation and transpose: given settings, or the curl-minimising ones."""
        if self.rotation_deg is not None and self.transpose is not None:
            return {"rotation_deg": float(self.rotation_deg), "transpose": bool(self.transpose),
                    "rotation_fitted": False,
                    "curl_fraction": curl_fraction(com_y, com_x, step, self.rotation_deg,
                                                   self.transpose)}
        states = (False, True) if self.transpose is None else (bool(self.transpose),)
        fit = fit_rotation_by_curl(com_y, com_x, step, states)
        if self.rotation_deg is not None:  # rotation given, transpose fitted at that angle
            fracs = {str(t): curl_fraction(com_y, com_x, step, self.rotation_deg, t)
                     for t in states}
            tr = min(states, key=lambda t: fracs[str(t)])
            return {"rotation_deg": float(self.rotation_deg), "transpose": bool(tr),
                    "rotation_fitted": False, "curl_fraction": fracs[str(tr)],
                    "curl_fraction_by_transpose": fracs}
        fit["rotation_fitted"] = True
        return fit

    def integrate(self, com_y: np.ndarray, com_x: np.ndarray, step: tuple[float, float],
                  device: Device) -> Any:
        """Phase (rad, device array) from the scan-frame COM (1/Å, mean removed)."""
        gy = device.asarray(2 * np.pi * com_y, dtype=device.real_dtype)
        gx = device.asarray(2 * np.pi * com_x, dtype=device.real_dtype)
        return fourier_integrate(gy, gx, step, device, self.high_pass, self.low_pass,
                                 self.pad_factor)

    # ------------------------------------------------------------------ run
    def run(self, dataset: Any, experiment: Experiment, device: Device | None = None
            ) -> DirectResult:
        device = device if device is not None else Device("auto")
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        dataset = as_dataset(dataset, experiment)
        scan, step = scan_geometry(dataset, experiment)
        com_y_det, com_x_det, total = self.measure_com(dataset, experiment, device)
        timings["center_of_mass"] = time.perf_counter() - t0

        t1 = time.perf_counter()
        com_y_det = com_y_det - com_y_det.mean()
        com_x_det = com_x_det - com_x_det.mean()
        orientation = self.orient(com_y_det, com_x_det, step)
        timings["rotation"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        resolved = "given"
        prior = (experiment.scan_rotation_deg if self.rotation_guess_deg is None
                 else self.rotation_guess_deg)
        if orientation["rotation_fitted"] and self.resolve_180 == "prior":
            # theta and theta + 180 deg are equally curl-free: take the one near the prior
            angle = orientation["rotation_deg"]
            if _angle_diff(angle + 180.0, prior) < _angle_diff(angle, prior):
                orientation["rotation_deg"] = (angle + 360.0) % 360.0 - 180.0
            resolved = "prior"
        cy, cx = to_scan_frame(com_y_det, com_x_det, orientation["rotation_deg"],
                               orientation["transpose"])
        phase_dev = self.integrate(cy, cx, step, device)
        phase = device.to_host(phase_dev).astype(float)
        if orientation["rotation_fitted"] and self.resolve_180 == "skewness":
            resolved = "skewness"
            if skewness(phase) < 0:  # atoms are positive phase peaks
                phase = -phase
                cy, cx = -cy, -cx
                angle = orientation["rotation_deg"] + 180.0
                orientation["rotation_deg"] = (angle + 180.0) % 360.0 - 180.0
        timings["integration"] = time.perf_counter() - t2

        extra, phase = self._refine(phase, cy, cx, step, device, timings)
        timings["total"] = time.perf_counter() - t0
        lam_mrad = experiment.wavelength_A * 1e3
        values: dict[str, Any] = {
            "rotation_deg": float(orientation["rotation_deg"]),
            "transpose": bool(orientation["transpose"]),
            "rotation_fitted": bool(orientation["rotation_fitted"]),
            "rotation_180_from": resolved,
            "rotation_guess_deg": float(prior),
            "curl_fraction": float(orientation["curl_fraction"]),
            "com_units": "mrad",
            "phase_units": "rad",
            "origin_A": [0.0, 0.0],
            "pixel_size_yx_A": [float(step[0]), float(step[1])],
            "scan_shape": [int(scan[0]), int(scan[1])],
        }
        if "curl_fraction_by_transpose" in orientation:
            values["curl_fraction_by_transpose"] = orientation["curl_fraction_by_transpose"]
        warnings = rotation_ambiguity(orientation)
        values["rotation_ambiguous"] = bool(warnings)
        values["warnings"] = warnings
        for text in warnings:
            _LOG.warning("%s: %s", self.name, text)
        values.update(extra)
        arrays = {"phase": phase - phase.mean(), "com_y": cy * lam_mrad, "com_x": cx * lam_mrad,
                  "intensity": total}
        return DirectResult(method=self.name, arrays=arrays, values=values,
                            pixel_size_A=float(math.sqrt(step[0] * step[1])),
                            timings_s=timings,
                            units={"phase": "rad", "com_y": "mrad", "com_x": "mrad",
                                   "intensity": "counts"})

    def _refine(self, phase: np.ndarray, cy: np.ndarray, cx: np.ndarray,
                step: tuple[float, float], device: Device, timings: dict[str, float]
                ) -> tuple[dict[str, Any], np.ndarray]:
        """Hook for :class:`IterativeDPC`; plain DPC keeps the Fourier result."""
        return {}, phase


# ---------------------------------------------------------------------------- iterative DPC
def spectral_gradient_ops(shape: tuple[int, int], step: tuple[float, float], device: Device
                          ) -> tuple[Any, Any]:
    """The spectral gradient D: phi (Y, X) -> (d phi/dy, d phi/dx) (rad/Å for phi in rad) of
    real fields on a periodic scan-sampled grid, and its adjoint D^T (vy, vx) -> -div v.
    Nyquist frequencies are dropped (``nyquist_zero``), so both map real
    arrays to real arrays and <D phi, v> = <phi, D^T v> exactly."""
    ky, kx = spatial_frequencies(shape, step, nyquist_zero=True, xp=device.xp,
                                 dtype=device.real_dtype)
    dy_k = 2j * np.pi * ky
    dx_k = 2j * np.pi * kx

    def grad(phi: Any) -> tuple[Any, Any]:
        f = device.fft2(phi.astype(device.complex_dtype))
        return device.ifft2(dy_k * f).real, device.ifft2(dx_k * f).real

    def grad_adjoint(vy: Any, vx: Any) -> Any:
        f = -(dy_k * device.fft2(vy.astype(device.complex_dtype))
              + dx_k * device.fft2(vx.astype(device.complex_dtype)))
        return device.ifft2(f).real

    return grad, grad_adjoint


def integrate_gradient_lsq(grad_y: np.ndarray, grad_x: np.ndarray, step: tuple[float, float],
                           device: Device, start: np.ndarray | None = None,
                           high_pass: float = 0.0, low_pass: float = 0.0,
                           pad_factor: float = 2.0, n_iterations: int = 100,
                           tolerance: float = 1e-6) -> tuple[np.ndarray, dict[str, Any]]:
    """Least-squares phase (rad) from a gradient field (rad/Å) on a padded grid.

    Minimises ``1/2 sum_measured |D phi - g|^2 + 1/2 h |phi|^2 + 1/2 l |L phi|^2`` over phi on
    a grid padded to ``ceil(pad_factor * shape)``, where D is the spectral gradient (FFT over
    the padded grid), L the spectral Laplacian, and only the measured scan points enter the
    data term: the padding is free, so the periodic wrap-around of the FFT does not force the
    phase to match across opposite edges. ``h = 4 pi^2 high_pass`` and
    ``l = low_pass / (4 pi^2)`` make the unmasked solution equal to :func:`fourier_integrate`
    with the same ``high_pass`` / ``low_pass``. Solved by conjugate gradients on the (linear,
    symmetric positive semi-definite) normal equations from ``start`` (cropped, (sy, sx);
    None: the Fourier integral on the padded grid). Returns the phase (sy, sx) and
    ``{"iterations", "residual_rms_start", "residual_rms"}`` (rad/Å, RMS of D phi - g over the
    measured points).
    """
    xp = device.xp
    shape = tuple(int(s) for s in np.shape(grad_y))
    padded = tuple(max(s, int(math.ceil(pad_factor * s))) for s in shape)
    grad, div_adjoint = spectral_gradient_ops(padded, step, device)
    ky, kx = spatial_frequencies(padded, step, nyquist_zero=True, xp=xp, dtype=device.real_dtype)
    lap_k = -4 * np.pi**2 * (ky * ky + kx * kx)
    h = 4 * np.pi**2 * high_pass
    lw = low_pass / (4 * np.pi**2)
    mask = xp.zeros(padded, dtype=device.real_dtype)
    mask[:shape[0], :shape[1]] = 1
    gy = xp.zeros(padded, dtype=device.real_dtype)
    gx = xp.zeros(padded, dtype=device.real_dtype)
    gy[:shape[0], :shape[1]] = device.asarray(grad_y, dtype=device.real_dtype)
    gx[:shape[0], :shape[1]] = device.asarray(grad_x, dtype=device.real_dtype)

    def normal(phi: Any) -> Any:
        py, px = grad(phi)
        out = div_adjoint(mask * py, mask * px)
        if h:
            out = out + h * phi
        if lw:
            f = device.fft2(phi.astype(device.complex_dtype))
            out = out + lw * device.ifft2(lap_k * lap_k * f).real
        return out

    def residual_rms(phi: Any) -> float:
        py, px = grad(phi)
        r = mask * ((py - gy) ** 2 + (px - gx) ** 2)
        return float(math.sqrt(float(r.sum()) / (shape[0] * shape[1])))

    if start is None:
        phi = fourier_integrate(gy, gx, step, device, high_pass, low_pass, 1.0)
    else:
        phi = xp.zeros(padded, dtype=device.real_dtype)
        phi[:shape[0], :shape[1]] = device.asarray(start, dtype=device.real_dtype)
    phi = phi.astype(device.real_dtype)
    rms_start = residual_rms(phi)
    b = div_adjoint(mask * gy, mask * gx)
    r = b - normal(phi)
    p = r.copy()
    rr = float((r * r).sum())
    b_norm = math.sqrt(float((b * b).sum())) or 1.0
    it = 0
    for it in range(1, n_iterations + 1):  # noqa: B007 - reported below
        if math.sqrt(rr) <= tolerance * b_norm:
            it -= 1
            break
        ap = normal(p)
        pap = float((p * ap).sum())
        if pap <= 0:
            it -= 1
            break
        alpha = rr / pap
        phi = phi + alpha * p
        r = r - alpha * ap
        rr_new = float((r * r).sum())
        p = r + (rr_new / rr) * p
        rr = rr_new
    info = {"iterations": int(it), "residual_rms_start": rms_start,
            "residual_rms": residual_rms(phi)}
    out = device.to_host(phi[:shape[0], :shape[1]]).astype(float)
    return out - out.mean(), info


@attrs.define(kw_only=True)
class IterativeDPC(DPC):
    """Iterative DPC: least-squares fit of grad(phi) to the COM field, started from iDPC.

    * ``n_iterations``: maximum number of conjugate-gradient steps on the normal equations
    * ``tolerance``: stop when the normal-equation residual falls below this fraction of the
      right-hand side
    * ``pad_factor``: size factor (>= 1) of the padded grid on which the phase is fitted; the
      padding is left free

    Same settings as ``dpc`` (COM, rotation, ``high_pass``/``low_pass`` as Tikhonov weights).
    Only measured scan points enter the fit, so the free padding removes the periodic
    artefacts of the plain Fourier integral at the scan edges. Values add ``iterations``,
    ``residual_rms_start`` and ``residual_rms`` (rad/Å: RMS mismatch of grad(phi) with
    2 pi <k> over the scan, before and after).
    """

    name = "dpc_iterative"
    n_iterations: int = attrs.field(default=100, validator=positive_int())
    tolerance: float = attrs.field(default=1e-6, converter=to_float,
                                   validator=positive())

    def _refine(self, phase: np.ndarray, cy: np.ndarray, cx: np.ndarray,
                step: tuple[float, float], device: Device, timings: dict[str, float]
                ) -> tuple[dict[str, Any], np.ndarray]:
        t = time.perf_counter()
        out, info = integrate_gradient_lsq(2 * np.pi * cy, 2 * np.pi * cx, step, device,
                                           start=None, high_pass=self.high_pass,
                                           low_pass=self.low_pass, pad_factor=self.pad_factor,
                                           n_iterations=self.n_iterations,
                                           tolerance=self.tolerance)
        timings["least_squares"] = time.perf_counter() - t
        return info, out
