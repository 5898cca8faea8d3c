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

With the counts, the same sum bounds the *information* the patterns hold about each position.
For a pure probe and Poisson counts, N_n electrons in pattern n, the Fisher information of the
counts about a shift along axis a is at most (the quantum limit of an intensity measurement)::

    F_n,a <= 4 N_n h_n,a / sum_r |P|^2                     (per pixel^2)

reached by a detector that records the whole pattern with ideal phase contrast.

Computed from a *reconstructed* object the bound also counts the object's noise as contrast
(measured on the project's simulator at 10^3 e/Å²: 2x the value from the true object). The
noise of a transmission reconstructed from ``D(r)`` electrons per object pixel has at least
the quantum-limited phase variance ``1/(4 D(r))`` per pixel, so, white, it adds at least
``var/2`` per axis to ``|d_a O|^2`` (central difference) and::

    F_noise,n = N_n / (2 sum |P|^2) sum_r |P(r - c_n)|^2 / D(c_n + r),
    D(x) = sum_m N_m |P(x - c_m)|^2 / sum |P|^2             (electrons per pixel)

to the bound: on a raster of area ``a`` per position, ``a / (2 pixel^2)``, the same at every
dose while the signal grows with it; each object mode, fitted to the same electrons, is at
least as noisy, so the term counts once per mode. With several slices the information is
computed on their product, the projected transmission (structure that cancels between slices,
which a multislice fit at low dose grows, moves no position). :func:`position_information`
subtracts this least noise term (``debias``), which keeps the estimate on the optimistic
side.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ptyframe.core.device import Device

__all__ = ["object_gradient_energy", "position_information", "position_preconditioner",
           "probe_weighted_energy"]


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


def probe_weighted_energy(obj: Any, probe: Any, corners: Any, device: Device) -> Any:
    """h (N, 2): ``sum_r |P(r - c_n)|^2 |d_a O(r)|^2`` per position and axis (y, x), in
    probe intensity per pixel^2 (see the module docstring).

    ``obj``: (n_slices, n_modes, Y, X); ``probe``: (..., ny, nx) (all leading axes summed);
    ``corners``: (N, 2) window corners in pixels.
    """
    xp = device.xp
    return xp.stack([xp.maximum(_correlate_at(energy, probe, corners, device), 0.0)
                     for energy in object_gradient_energy(obj, device)], axis=1)


def position_information(obj: Any, probe: Any, corners: Any, counts: Any,
                         device: Device, debias: bool = True) -> Any:
    """Upper bound (N, 2) of the Fisher information of each pattern's counts about its
    position, per axis (y, x), in 1/pixel^2: ``4 N_n h_n,a / sum |P|^2`` of the projected
    object, less (``debias``) the least contribution of the object's noise (floored at 0;
    see the module docstring).

    ``counts``: (N,) electrons per pattern (>= 0); the other arguments as in
    :func:`probe_weighted_energy`.
    """
    xp = device.xp
    counts = xp.asarray(counts, dtype=device.real_dtype)
    if counts.shape != (corners.shape[0],):
        raise ValueError(f"counts: expected shape ({corners.shape[0]},), found "
                         f"{tuple(counts.shape)}")
    power = float((probe.real**2 + probe.imag**2).sum())
    if not power > 0:
        raise ValueError(f"probe: expected a probe with intensity > 0, found {power!r}")
    projected = xp.prod(obj, axis=0)[None]  # (1, n_modes, Y, X): the thin-specimen picture
    h = probe_weighted_energy(projected, probe, corners, device)
    information = 4.0 * counts[:, None] * h / power
    if not debias:
        return information
    planes = int(obj.shape[1])  # each object mode is as noisy as one object
    noise = counts * _correlate_at(1.0 / _dose_map(probe, corners, counts, obj.shape[-2:],
                                                   device), probe, corners, device)
    return xp.maximum(information - (planes * noise / (2.0 * power))[:, None], 0.0)


def _probe_kernel(probe: Any, shape: tuple[int, int], device: Device) -> Any:
    """rfft2 of ``sum |P|^2`` placed at the origin of a (Y, X) grid."""
    xp = device.xp
    ny, nx = probe.shape[-2:]
    weight = (probe.real**2 + probe.imag**2).reshape(-1, ny, nx).sum(axis=0)
    kernel = xp.zeros(shape, dtype=device.real_dtype)
    kernel[:ny, :nx] = weight
    return xp.fft.rfft2(kernel)


def _corner_pixels(corners: Any, shape: tuple[int, int], device: Device) -> tuple[Any, Any]:
    xp = device.xp
    rows = xp.clip(xp.floor(corners[:, 0]).astype(np.int64), 0, shape[0] - 1)
    cols = xp.clip(xp.floor(corners[:, 1]).astype(np.int64), 0, shape[1] - 1)
    return rows, cols


def _correlate_at(field: Any, probe: Any, corners: Any, device: Device) -> Any:
    """``sum_r |P(r)|^2 field(c_n + r)`` (N,) at each window corner ``c_n``."""
    xp = device.xp
    shape = tuple(field.shape)
    k_hat = xp.conj(_probe_kernel(probe, shape, device))
    corr = xp.fft.irfft2(xp.fft.rfft2(field) * k_hat, s=shape)
    rows, cols = _corner_pixels(corners, shape, device)
    return corr[rows, cols]


def _dose_map(probe: Any, corners: Any, counts: Any, shape: tuple[int, int],
              device: Device) -> Any:
    """Electrons per object pixel (Y, X) (see the module docstring), floored at 1e-3 of its
    maximum so that unlit pixels (where the probe weight is nil anyway) stay finite."""
    xp = device.xp
    rows, cols = _corner_pixels(corners, shape, device)
    impulses = xp.zeros(shape, dtype=device.real_dtype)
    device.scatter_add(impulses, rows * shape[1] + cols,
                       xp.asarray(counts, dtype=device.real_dtype))
    power = float((probe.real**2 + probe.imag**2).sum())
    dose = xp.fft.irfft2(xp.fft.rfft2(impulses) * _probe_kernel(probe, shape, device),
                         s=shape) / power
    return xp.maximum(dose, 1e-3 * float(dose.max()))


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
    h = probe_weighted_energy(obj, probe, corners, device)
    mean = float(h.mean())
    if not np.isfinite(mean) or mean <= 0:
        return xp.ones(h.shape, dtype=device.real_dtype)
    return (mean / (h + floor * mean)).astype(device.real_dtype, copy=False)
