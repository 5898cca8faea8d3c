"""Shared pieces of the first-party constraints: validated settings, Fourier grids, filters.

Fourier conventions: frequencies f are in cycles per pixel (``fftfreq``), so Nyquist is 0.5;
"fraction of Nyquist" r = 2 |f|. Arrays are filtered over their last two axes (Y, X), with the
FFT's periodic boundary conditions.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import numpy as np

from ptyframe.core.physics import spatial_frequencies
from ptyframe.core.schedules import Schedule, as_schedule

__all__ = [
    "when_field", "relative_change",
    "gaussian_transfer", "fourier_filter",
    "to_device_mask",
]


def when_field(default: Any = True) -> Any:
    """The ``when`` setting: a Schedule of bool (plain values become a Constant)."""
    return attrs.field(default=default, converter=as_schedule, validator=_schedule_validator)


def _schedule_validator(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, Schedule):
        raise ValueError(f"{attribute.name}: expected a bool or a schedule, found {value!r}")


def relative_change(old: Any, new: Any, xp: Any) -> float:
    """||new - old|| / ||old|| (L2 over the whole array, accumulated in double precision)."""
    diff = float(xp.sum(xp.abs(new - old) ** 2, dtype=xp.float64))
    ref = float(xp.sum(xp.abs(old) ** 2, dtype=xp.float64))
    return math.sqrt(diff / ref) if ref > 0 else math.sqrt(diff)


def gaussian_transfer(shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Fourier transform (FFT order, value 1 at f = 0) of a normalised Gaussian of standard
    deviation ``sigma_px`` pixels: exp(-2 pi^2 sigma^2 |f|^2), f in cycles per pixel."""
    fy, fx = spatial_frequencies(shape, sparse=True)
    return np.exp(-2.0 * np.pi**2 * sigma_px**2 * (fy**2 + fx**2))


def to_device_mask(mask: np.ndarray, like: Any, device: Any) -> Any:
    """A real host mask on ``device`` in the real precision of the array ``like``."""
    real_dtype = like.real.dtype
    return device.xp.asarray(mask, dtype=real_dtype)


def fourier_filter(array: Any, transfer: Any, device: Any, real: bool = False) -> Any:
    """IFFT[transfer * FFT[array]] over the last two axes; ``real``: keep the real part."""
    out = device.ifft2(device.fft2(array) * transfer)
    return out.real if real else out
