"""Scan geometry from measured bright-field parallax shifts: a linear fit with uncertainties.

Physics (tcBF conventions, see ``plugins/ptyframe_direct/tcbf.py``): the virtual image of the
bright-field detector pixel at physical frequency k (1/Å) is translated, in the scan frame, by

    sigma(k) = R(theta)^T s(k) + o,   s(k) = -lambda (C10 I + C) k   (to first order),

with R(theta) the scan rotation acting on (y, x) column vectors ([[cos, sin], [-sin, cos]]),
C10 the defocus coefficient (Å, C10 = -defocus), C the symmetric traceless matrix of the
two-fold astigmatism (norm |C12|, Å) and o a common offset. The shifts are thus a linear map
sigma = A k + o, and every 2 x 2 matrix splits uniquely into a conformal part (a scaled rotation,
magnitude m1 = lambda |C10|, angle -theta) and an anticonformal part (magnitude
m2 = lambda |C12|). Consequences used by :func:`fit_parallax`:

* rotation and defocus come from the conformal part, up to the pair
  (C10, theta) ~ (-C10, theta + 180 deg) that predicts the same shifts: the branch within
  90 deg of a prior rotation is taken;
* a transposed detector (ky, kx swapped, a reflection P) maps A to A P, which swaps the
  conformal and anticonformal magnitudes: the shifts alone cannot tell "defocus with a
  transposed detector" from "astigmatism larger than the defocus". The hypothesis with
  |C12| < |C10| is taken; the ratio ``astigmatism_ratio`` = min(m1, m2) / max(m1, m2) says how
  clear the choice is (1: undecidable);
* the scan step scale: the shifts are in Å of the scan frame, so a scan step wrong by a factor
  f makes the measured shifts (and C10) wrong by 1/f; shifts alone cannot separate the two.
"""

from __future__ import annotations

import math

import attrs
import numpy as np

__all__ = ["ParallaxFit", "fit_parallax"]

_SWAP = np.array([[0.0, 1.0], [1.0, 0.0]])


@attrs.frozen(kw_only=True)
class ParallaxFit:
    """A linear fit of parallax shifts.

    Attributes
    ----------
    rotation_deg: scan rotation, degrees, the branch within 90 deg of the prior.
    c10_A: defocus coefficient, Å (C10 = -defocus).
    c12_A: magnitude of the two-fold astigmatism, Å.
    transpose: whether the detector axes are swapped against the scan (relative to the
        frame of the frequencies given).
    explained: fraction of the variance of the measured shifts explained by the fit (0..1).
    astigmatism_ratio: |C12| / |C10| of the chosen transpose hypothesis (0..1; near 1 the
        transpose cannot be told from the shifts).
    rotation_sigma_deg: standard error of the rotation, degrees.
    c10_sigma_A: standard error of C10, Å.
    residual_rms_A: RMS distance between measured and fitted shifts, Å.
    parallax_rms_A: RMS of the fitted shifts about their mean, Å.
    n_shifts: number of measured shifts.
    """

    rotation_deg: float
    c10_A: float
    c12_A: float
    transpose: bool
    explained: float
    astigmatism_ratio: float
    rotation_sigma_deg: float
    c10_sigma_A: float
    residual_rms_A: float
    parallax_rms_A: float
    n_shifts: int


def _wrap_deg(angle: float) -> float:
    """Angle in [-180, 180) degrees."""
    return (angle + 180.0) % 360.0 - 180.0


def fit_parallax(shifts_A: np.ndarray, k_inv_A: np.ndarray, wavelength_A: float,
                 prior_rotation_deg: float = 0.0) -> ParallaxFit:
    """Fit sigma = A k + o to measured shifts (G, 2) Å (scan frame, (y, x)) of bright-field
    pixels or groups at detector-frame frequencies ``k_inv_A`` (G, 2) 1/Å, (ky, kx); see the
    module docstring. ``wavelength_A``: electron wavelength, Å; ``prior_rotation_deg``: the
    rotation expected, degrees (resolves the 180-deg ambiguity)."""
    shifts = np.asarray(shifts_A, dtype=float)
    k = np.asarray(k_inv_A, dtype=float)
    if shifts.ndim != 2 or shifts.shape[1] != 2 or k.shape != shifts.shape:
        raise ValueError(f"shifts_A, k_inv_A: expected two (G, 2) arrays of the same shape, "
                         f"found {shifts.shape} and {k.shape}")
    g = len(shifts)
    if g < 4:
        raise ValueError(f"shifts_A: expected at least 4 measured shifts for a linear fit of "
                         f"6 parameters, found {g}")
    if not (np.all(np.isfinite(shifts)) and np.all(np.isfinite(k))):
        raise ValueError("shifts_A, k_inv_A: expected finite values, found NaN or inf")
    if not wavelength_A > 0:
        raise ValueError(f"wavelength_A: expected a positive wavelength in Å, found "
                         f"{wavelength_A!r}")
    design = np.column_stack([k, np.ones(g)])  # (G, 3): ky, kx, 1
    coef, *_ = np.linalg.lstsq(design, shifts, rcond=None)  # (3, 2)
    a = coef[:2].T  # sigma = a @ k + o, rows (y, x)
    resid = shifts - design @ coef
    rss = float(np.sum(resid**2))
    tss = float(np.sum((shifts - shifts.mean(axis=0))**2))
    explained = 1.0 - rss / tss if tss > 0 else 0.0
    dof = max(2 * g - 6, 1)
    sigma2 = rss / dof  # per shift component
    xtx_inv = np.linalg.pinv(design.T @ design)

    def parts(m: np.ndarray) -> tuple[float, float, float, float]:
        p = 0.5 * (m[0, 0] + m[1, 1])  # conformal: [[p, -q], [q, p]] = m1 R(phi)
        q = 0.5 * (m[1, 0] - m[0, 1])
        u = 0.5 * (m[0, 0] - m[1, 1])  # anticonformal: [[u, v], [v, -u]]
        v = 0.5 * (m[0, 1] + m[1, 0])
        return p, q, u, v

    p, q, u, v = parts(a)
    m_conf, m_anti = math.hypot(p, q), math.hypot(u, v)
    transpose = m_anti > m_conf
    if transpose:  # the detector-frame k is swapped: A_true = A P
        a = a @ _SWAP
        p, q, u, v = parts(a)
        m_conf, m_anti = math.hypot(p, q), math.hypot(u, v)
    # conformal part = -lambda C10 R(theta)^T: angle atan2(q, p) is theta for C10 < 0
    theta = math.degrees(math.atan2(q, p))
    c10 = -m_conf / wavelength_A
    if abs(_wrap_deg(theta - prior_rotation_deg)) > 90.0:
        theta, c10 = theta + 180.0, -c10
    # standard errors: the parameters of row r of ``a`` have covariance sigma2 * xtx_inv
    # (rows independent); gradients of phi = atan2(q, p) and m1 = hypot(p, q) w.r.t. the
    # entries of the (possibly swapped) matrix
    dp = np.array([[0.5, 0.0], [0.0, 0.5]])
    dq = np.array([[0.0, -0.5], [0.5, 0.0]])
    if transpose:  # d(a P)/d(a) permutes the columns
        dp, dq = dp @ _SWAP.T, dq @ _SWAP.T
    m1_sq = max(m_conf**2, 1e-300)
    dphi = (p * dq - q * dp) / m1_sq
    dm1 = (p * dp + q * dq) / max(m_conf, 1e-300)

    def variance(grad: np.ndarray) -> float:
        return float(sum(sigma2 * grad[r] @ xtx_inv[:2, :2] @ grad[r] for r in range(2)))

    fitted = design @ np.vstack([coef[:2], coef[2:]])
    return ParallaxFit(
        rotation_deg=_wrap_deg(theta), c10_A=float(c10), c12_A=m_anti / wavelength_A,
        transpose=bool(transpose), explained=float(max(explained, 0.0)),
        astigmatism_ratio=float(m_anti / m_conf) if m_conf > 0 else 1.0,
        rotation_sigma_deg=math.degrees(math.sqrt(variance(dphi))),
        c10_sigma_A=math.sqrt(variance(dm1)) / wavelength_A,
        residual_rms_A=math.sqrt(rss / g),
        parallax_rms_A=float(np.sqrt(np.mean(np.sum(
            (fitted - fitted.mean(axis=0))**2, axis=1)))),
        n_shifts=g)
