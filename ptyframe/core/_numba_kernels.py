"""Numba kernels of :mod:`ptyframe.core.fused` (imported only when numba is asked for).

Each kernel does in one pass over memory what the NumPy reference does in several; they are
compiled on first use per dtype signature and cached on disk by numba (``cache=True``).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def gather_windows(planes, corners, out):  # pragma: no cover - compiled
    """out[p, b] = planes[p, y_b:y_b + ny, x_b:x_b + nx]."""
    n_planes, n_b, ny, nx = out.shape
    for p in range(n_planes):
        for b in range(n_b):
            y0 = corners[b, 0]
            x0 = corners[b, 1]
            for i in range(ny):
                for j in range(nx):
                    out[p, b, i, j] = planes[p, y0 + i, x0 + j]


@numba.njit(cache=True, nogil=True)
def scatter_add_windows(target, corners, values):  # pragma: no cover - compiled
    """target[p, window_b] += values[p, b], windows in order b = 0, 1, ... (as the reference)."""
    n_planes, n_b, ny, nx = values.shape
    for p in range(n_planes):
        for b in range(n_b):
            y0 = corners[b, 0]
            x0 = corners[b, 1]
            for i in range(ny):
                for j in range(nx):
                    target[p, y0 + i, x0 + j] += values[p, b, i, j]


@numba.njit(cache=True, nogil=True, fastmath=True)
def spectral_gradients(H, spec, factor, qy, qx, probe_grad, do_positions, do_probe,
                       positions_out):  # pragma: no cover - compiled
    """One pass over H (M, B, P) and factor (B, P): positions_out[b] = sum_p X_b(p) (qy, qx)[p]
    / P with X_b(p) = sum_m Im(conj(H[m, b, p]) spec[m, p] factor[b, p]); probe_grad[m, p] +=
    sum_b H[m, b, p] conj(factor[b, p]). Products in the arrays' precision, sums in double
    precision (fastmath: the sums may be reordered)."""
    n_m, n_b, n_p = H.shape
    acc = np.zeros((n_m, n_p), dtype=np.complex128)
    for b in range(n_b):
        gy = 0.0
        gx = 0.0
        for m in range(n_m):
            for p in range(n_p):
                f = factor[b, p]
                h = H[m, b, p]
                if do_positions:
                    s = spec[m, p] * f
                    x = h.real * s.imag - h.imag * s.real
                    gy += x * qy[p]
                    gx += x * qx[p]
                if do_probe:
                    acc[m, p] += h * f.conjugate()
        if do_positions:
            positions_out[b, 0] = gy / n_p
            positions_out[b, 1] = gx / n_p
    if do_probe:
        for m in range(n_m):
            for p in range(n_p):
                probe_grad[m, p] += acc[m, p]


@numba.njit(cache=True, nogil=True)
def conj_mode_sum(a, g, out):  # pragma: no cover - compiled
    """out[l, r] = sum_m conj(a[l, m, r]) g[l, m, r], modes added in order m = 0, 1, ..."""
    n_l, n_m, n_r = a.shape
    for i in range(n_l):
        for r in range(n_r):
            out[i, r] = a[i, 0, r].conjugate() * g[i, 0, r]
        for m in range(1, n_m):
            for r in range(n_r):
                out[i, r] += a[i, m, r].conjugate() * g[i, m, r]


@numba.njit(cache=True, nogil=True)
def abs2_sum(flat, scale, out):  # pragma: no cover - compiled
    """out[r] = scale * sum_l |flat[l, r]|^2 (l in order)."""
    n_l, n_r = flat.shape
    for r in range(n_r):
        v = flat[0, r]
        out[r] = v.real * v.real + v.imag * v.imag
    for i in range(1, n_l):
        for r in range(n_r):
            v = flat[i, r]
            out[r] += v.real * v.real + v.imag * v.imag
    for r in range(n_r):
        out[r] *= scale


@numba.njit(cache=True, nogil=True)
def multiply_real(a, g, scale):  # pragma: no cover - compiled
    """a[l, r] *= g[r] * scale, in place."""
    n_l, n_r = a.shape
    for i in range(n_l):
        for r in range(n_r):
            a[i, r] *= g[r] * scale


@numba.njit(cache=True, nogil=True)
def conj_multiply(a, g, out):  # pragma: no cover - compiled
    """out[r] = conj(a[r]) g[r] (flat arrays)."""
    for r in range(a.shape[0]):
        out[r] = a[r].conjugate() * g[r]
