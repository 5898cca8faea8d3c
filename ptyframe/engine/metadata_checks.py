"""Sanity checks of the metadata against the data, before any long computation.

Each check raises one ``ValueError`` naming the parameter, what the data imply and what was
given:

* physical ranges: voltage within [1, 3000] kV, convergence semi-angle within (0, 200] mrad;
* the bright-field disc of the mean pattern: its radius (pixels) is
  ``alpha / (lambda dk)`` for semi-angle alpha (rad), wavelength lambda (Å) and detector
  pixel dk (1/Å). A measured radius off by more than :data:`DISC_TOLERANCE` means the
  convergence angle, the voltage or the detector calibration is wrong; the error gives the
  angle and the calibration the measured disc implies;
* the scan shape: in a row-major scan, pattern n and pattern n + cols are neighbours along the
  slow axis, so the bright-field signal correlates at lag ``cols``. When it correlates far
  better at lag ``rows`` (rows != cols), the shape was given transposed.
"""

from __future__ import annotations

import math

import numpy as np

from ptyframe.core.experiment import Experiment

__all__ = ["DISC_TOLERANCE", "bright_field_disc", "check_metadata", "check_scan_shape"]

#: accepted ratio between measured and expected bright-field radius (either way)
DISC_TOLERANCE = 1.25
VOLTAGE_RANGE_KV = (1.0, 3000.0)
MAX_CONVERGENCE_MRAD = 200.0


def bright_field_disc(mean_pattern: np.ndarray) -> tuple[float, tuple[float, float]] | None:
    """(radius in pixels, centre (y, x) in pixels) of the bright-field disc of a centred mean
    pattern: the pixels above half the way from the dark-field level (median of the outer
    ring) to the disc level (90th percentile), as an equivalent-area circle. None when no disc
    stands out (contrast below 3x, or the disc fills the detector)."""
    pattern = np.asarray(mean_pattern, dtype=float)
    if pattern.ndim != 2 or not np.all(np.isfinite(pattern)):
        return None
    ny, nx = pattern.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    r = np.hypot(yy - ny / 2, xx - nx / 2)
    outer = pattern[r >= 0.45 * min(ny, nx)]
    dark = float(np.median(outer)) if outer.size else 0.0
    bright = float(np.percentile(pattern, 90))
    if not bright > 3 * max(dark, 0.0) or bright <= 0:
        return None
    inside = pattern > 0.5 * (dark + bright)
    if inside[0].any() or inside[-1].any() or inside[:, 0].any() or inside[:, -1].any():
        return None  # the disc reaches the detector's edge: its size cannot be measured
    area = float(inside.sum())
    if area < 5:
        return None
    weights = np.where(inside, pattern, 0.0)
    centre = (float((weights * yy).sum() / weights.sum()),
              float((weights * xx).sum() / weights.sum()))
    return math.sqrt(area / math.pi), centre


def _check_voltage(experiment: Experiment) -> None:
    kv = experiment.voltage_kV
    if not VOLTAGE_RANGE_KV[0] <= kv <= VOLTAGE_RANGE_KV[1]:
        raise ValueError(f"voltage_kV: expected an accelerating voltage within "
                         f"[{VOLTAGE_RANGE_KV[0]:g}, {VOLTAGE_RANGE_KV[1]:g}] kV, found {kv:g}")


def _check_ranges(experiment: Experiment) -> None:
    alpha = experiment.convergence_angle_mrad
    if not 0 < alpha <= MAX_CONVERGENCE_MRAD:
        raise ValueError(f"convergence_angle_mrad: expected a probe semi-angle within "
                         f"(0, {MAX_CONVERGENCE_MRAD:g}] mrad, found {alpha:g}")


def check_metadata(experiment: Experiment, mean_pattern: np.ndarray | None) -> None:
    """The voltage's range, the bright-field disc (before the angle's range: its error
    names the values the data imply), the angle's range (see the module docstring)."""
    _check_voltage(experiment)
    kv, alpha = experiment.voltage_kV, experiment.convergence_angle_mrad
    if mean_pattern is None:
        _check_ranges(experiment)
        return
    dk = experiment.dk_inv_A
    expected = alpha * 1e-3 / (experiment.wavelength_A * dk)
    measured = bright_field_disc(mean_pattern)
    if measured is None:
        _check_ranges(experiment)
        return  # no disc stands out (strongly scattering sample, disc beyond the detector)
    radius, _ = measured
    ratio = radius / expected
    if 1 / DISC_TOLERANCE <= ratio <= DISC_TOLERANCE:
        _check_ranges(experiment)
        return
    implied_alpha = radius * experiment.wavelength_A * dk * 1e3
    implied_dk = alpha * 1e-3 / (experiment.wavelength_A * radius)
    raise ValueError(
        f"convergence_angle_mrad / detector_pixel_size_inv_A: the bright-field disc of the mean "
        f"pattern has a radius of {radius:.1f} px, but {alpha:g} mrad at {kv:g} kV with "
        f"{dk:.4g} 1/Å per pixel predicts {expected:.1f} px (ratio {ratio:.2f}). The data "
        f"imply convergence_angle_mrad = {implied_alpha:.3g} with this calibration, or "
        f"detector_pixel_size_inv_A = {implied_dk:.4g} with this angle; check voltage_kV too. "
        f"(check_metadata = false skips this check)")


def _lag_correlation(signal: np.ndarray, lag: int) -> float:
    a, b = signal[:-lag], signal[lag:]
    a = a - a.mean()
    b = b - b.mean()
    norm = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / norm) if norm > 0 else 0.0


def check_scan_shape(scan_shape: tuple[int, int] | None, bright_field: np.ndarray) -> None:
    """A transposed scan shape (see the module docstring); ``bright_field``: (N,) the
    bright-field signal per pattern in acquisition order."""
    if scan_shape is None:
        return
    rows, cols = (int(v) for v in scan_shape)
    signal = np.asarray(bright_field, dtype=float).ravel()
    if rows == cols or rows < 4 or cols < 4 or signal.size != rows * cols:
        return
    given = _lag_correlation(signal, cols)
    swapped = _lag_correlation(signal, rows)
    if swapped > 0.3 and swapped > given + 0.25:
        raise ValueError(
            f"scan_shape: the bright-field signal repeats every {rows} patterns (correlation "
            f"{swapped:.2f}) rather than every {cols} (correlation {given:.2f}): the data "
            f"imply scan_shape = [{cols}, {rows}] (rows, columns; row-major, y slow), found "
            f"[{rows}, {cols}]. (check_metadata = false skips this check)")
