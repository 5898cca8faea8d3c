"""Axis calibrations with units -> the metadata keys :mod:`ptyframe.io.metadata` reads."""

from __future__ import annotations

import math

__all__ = ["detector_calibration", "scan_step_A"]

_LENGTH_TO_A = {"a": 1.0, "nm": 10.0, "pm": 0.01, "um": 1e4, "m": 1e10}
_RECIPROCAL_TO_INV_A = {"1/a": 1.0, "1/nm": 0.1, "1/pm": 100.0, "1/m": 1e-10}
_ANGLE_TO_MRAD = {"mrad": 1.0, "rad": 1e3, "urad": 1e-3}


def _norm(units: str | None) -> str:
    """'[n_m]', 'nm', 'Å^-1', 'A^-1', 'nm-1', '1 / nm', 'µm' -> canonical spellings."""
    u = str(units or "").strip().lower()
    for a, b in (("[", ""), ("]", ""), ("_", ""), (" ", ""), ("å", "a"), ("µ", "u"),
                 ("μ", "u"), ("angstrom", "a"), ("ang", "a")):
        u = u.replace(a, b)
    for suffix in ("^-1", "-1", "⁻¹"):
        if u.endswith(suffix) and not u.startswith("1/"):
            u = "1/" + u[: -len(suffix)]
    return u


def detector_calibration(scale: float, units: str | None) -> tuple[str, float] | None:
    """(metadata key, value) of a detector-axis scale: ``detector_pixel_size_inv_A`` for
    reciprocal lengths, ``detector_pixel_size_mrad`` for angles; None for pixels/unknown."""
    u = _norm(units)
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        return None
    if u in _RECIPROCAL_TO_INV_A:
        return "detector_pixel_size_inv_A", float(scale) * _RECIPROCAL_TO_INV_A[u]
    if u in _ANGLE_TO_MRAD:
        return "detector_pixel_size_mrad", float(scale) * _ANGLE_TO_MRAD[u]
    return None


def scan_step_A(scale: float, units: str | None) -> float | None:
    """A scan-axis scale in Å, or None for pixels/unknown units."""
    u = _norm(units)
    if u in _LENGTH_TO_A and isinstance(scale, (int, float)) and math.isfinite(scale) \
            and scale > 0:
        return float(scale) * _LENGTH_TO_A[u]
    return None
