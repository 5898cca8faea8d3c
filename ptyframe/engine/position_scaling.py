"""Per-position Gauss-Newton scaling of the scan-position update.

Moving probe n by a small shift d (pixels) changes its exit wave by about
``-d . grad O(r) P(r - c_n)`` (single-slice picture), so the Gauss-Newton curvature of the loss
along each axis a is proportional to the *local object-gradient energy* under the probe::

    h_n,a = sum_r |P(r - c_n)|^2 |d_a O(r)|^2          (d_a: central difference, per pixel)

summed over probe modes, object slices and object modes. A position over flat, featureless
object has little curvature (its gradient says little), one over strong atomic contrast a lot.
The preconditioner ``M_n,a = mean(h) / (h_n,a + floor * mean(h))`` equalises the step each
position takes for a given error, the ``floor`` keeping featureless positions from being sent
far on a weak gradient. Its overall scale is left to the optimizer (dimensionless, mean ~1).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ptyframe.core.device import Device

__all__ = ["object_gradient_energy", "position_preconditioner"]


def object_gradient_energy(obj: Any, device: Device) -> tuple[Any, Any]:
    """(E_y, E_x): ``sum |d_a O|^2`` over slices and modes, each (Y, X), per pixel^2.

    ``obj``: (n_slices, n_modes, Y, X) complex transmission on the device. Central differences
    inside, one-sided at the edges (``xp.gradient``).
    """
    xp = device.xp
    planes = obj.reshape(-1, *obj.shape[-2:])
    e_y = xp.zeros(obj.shape[-2:], dtype=device.real_dtype)
    e_x = xp.zeros(obj.shape[-2:], dtype=device.real_dtype)
    for plane in planes:
        gy, gx = xp.gradient(plane)
        e_y += (gy.real**2 + gy.imag**2).astype(device.real_dtype, copy=False)
        e_x += (gx.real**2 + gx.imag**2).astype(device.real_dtype, copy=False)
    return e_y, e_x


def position_preconditioner(obj: Any, probe: Any, corners: Any, device: Device,
                            floor: float = 0.1) -> Any:
    """Diagonal preconditioner (N, 2) for the ``positions`` block (see the module docstring).

    ``obj``: (n_slices, n_modes, Y, X); ``probe``: (..., ny, nx) (all leading axes summed);
    ``corners``: (N, 2) window corners in pixels; ``floor``: fraction of the mean curvature
    added to every position (> 0).
    """
    if not floor > 0:
        raise ValueError(f"floor: expected a number > 0, found {floor!r}")
    xp = device.xp
    ny, nx = probe.shape[-2:]
    Y, X = obj.shape[-2:]
    weight = (probe.real**2 + probe.imag**2).reshape(-1, ny, nx).sum(axis=0)
    kernel = xp.zeros((Y, X), dtype=device.real_dtype)
    kernel[:ny, :nx] = weight
    k_hat = xp.conj(xp.fft.rfft2(kernel))
    rows = xp.clip(xp.floor(corners[:, 0]).astype(np.int64), 0, Y - 1)
    cols = xp.clip(xp.floor(corners[:, 1]).astype(np.int64), 0, X - 1)
    out = []
    for energy in object_gradient_energy(obj, device):
        # correlation: C(c) = sum_r K(r) E(c + r), at every corner c of the object grid
        corr = xp.fft.irfft2(xp.fft.rfft2(energy) * k_hat, s=(Y, X))
        out.append(xp.maximum(corr[rows, cols], 0.0))
    h = xp.stack(out, axis=1)
    mean = float(h.mean())
    if not np.isfinite(mean) or mean <= 0:
        return xp.ones(h.shape, dtype=device.real_dtype)
    return (mean / (h + floor * mean)).astype(device.real_dtype, copy=False)
