"""Numba kernels of :mod:`ptyframe.core.fused` (imported only when numba is asked for).

Each kernel does in one pass over memory what the NumPy reference does in several; they are
compiled on first use per dtype signature and cached on disk by numba (``cache=True``).
Inner loops run over contiguous 1-D row views (index from 0: no wrap-around checks, so LLVM
vectorises them); measured 5-10x faster than indexing the full arrays. Kernels that divide use
``error_model="numpy"`` (IEEE results, no ZeroDivisionError check per element): the check
alone kept the amplitude loss from vectorising (measured 25x slower).
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
                src = planes[p, y0 + i, x0:x0 + nx]
                dst = out[p, b, i]
                for j in range(nx):
                    dst[j] = src[j]


@numba.njit(cache=True, nogil=True)
def scatter_add_windows(target, corners, values):  # pragma: no cover - compiled
    """target[p, window_b] += values[p, b], windows in order b = 0, 1, ... (as the reference)."""
    n_planes, n_b, ny, nx = values.shape
    for p in range(n_planes):
        for b in range(n_b):
            y0 = corners[b, 0]
            x0 = corners[b, 1]
            for i in range(ny):
                dst = target[p, y0 + i, x0:x0 + nx]
                src = values[p, b, i]
                for j in range(nx):
                    dst[j] += src[j]


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
        f_row = factor[b]
        for m in range(n_m):
            h_row = H[m, b]
            s_row = spec[m]
            a_row = acc[m]
            for p in range(n_p):
                f = f_row[p]
                h = h_row[p]
                if do_positions:
                    s = s_row[p] * f
                    x = h.real * s.imag - h.imag * s.real
                    gy += x * qy[p]
                    gx += x * qx[p]
                if do_probe:
                    a_row[p] += h * f.conjugate()
        if do_positions:
            positions_out[b, 0] = gy / n_p
            positions_out[b, 1] = gx / n_p
    if do_probe:
        for m in range(n_m):
            g_row = probe_grad[m]
            a_row = acc[m]
            for p in range(n_p):
                g_row[p] += a_row[p]


@numba.njit(cache=True, nogil=True)
def conj_mode_sum(a, g, out):  # pragma: no cover - compiled
    """out[l, r] = sum_m conj(a[l, m, r]) g[l, m, r], modes added in order m = 0, 1, ..."""
    n_l, n_m, n_r = a.shape
    for i in range(n_l):
        o_row = out[i]
        a_row = a[i, 0]
        g_row = g[i, 0]
        for r in range(n_r):
            o_row[r] = a_row[r].conjugate() * g_row[r]
        for m in range(1, n_m):
            a_row = a[i, m]
            g_row = g[i, m]
            for r in range(n_r):
                o_row[r] += a_row[r].conjugate() * g_row[r]


@numba.njit(cache=True, nogil=True)
def abs2_sum(flat, scale, out):  # pragma: no cover - compiled
    """out[r] = scale * sum_l |flat[l, r]|^2 (l in order)."""
    n_l, n_r = flat.shape
    row = flat[0]
    for r in range(n_r):
        v = row[r]
        out[r] = v.real * v.real + v.imag * v.imag
    for i in range(1, n_l):
        row = flat[i]
        for r in range(n_r):
            v = row[r]
            out[r] += v.real * v.real + v.imag * v.imag
    for r in range(n_r):
        out[r] *= scale


@numba.njit(cache=True, nogil=True)
def multiply_real(a, g, scale):  # pragma: no cover - compiled
    """a[l, r] *= g[r] * scale, in place."""
    n_l, n_r = a.shape
    for i in range(n_l):
        row = a[i]
        for r in range(n_r):
            row[r] *= g[r] * scale


@numba.njit(cache=True, nogil=True)
def conj_multiply(a, g, out):  # pragma: no cover - compiled
    """out[r] = conj(a[r]) g[r] (flat arrays)."""
    for r in range(a.shape[0]):
        out[r] = a[r].conjugate() * g[r]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def amplitude_loss(intensity, sqrt_measured, epsilon):  # pragma: no cover - compiled
    """sum (sqrt(I + eps) - sqrt(M))^2 (double precision), and I <- 1 - sqrt(M) / sqrt(I +
    eps) in place (flat arrays)."""
    total = 0.0
    for r in range(intensity.shape[0]):
        a = np.sqrt(intensity[r] + epsilon)
        d = a - sqrt_measured[r]
        total += d * d
        intensity[r] = d / a
    return total


@numba.njit(cache=True, nogil=True)
def slice_adjoint(a, g, t, out):  # pragma: no cover - compiled
    """out[l, r] = sum_m conj(a[l, m, r]) g[l, m, r] and g[l, m, r] *= conj(t[l, r]), in one
    pass over a and g."""
    n_l, n_m, n_r = a.shape
    for i in range(n_l):
        o_row = out[i]
        t_row = t[i]
        for r in range(n_r):
            o_row[r] = 0
        for m in range(n_m):
            a_row = a[i, m]
            g_row = g[i, m]
            for r in range(n_r):
                gv = g_row[r]
                o_row[r] += a_row[r].conjugate() * gv
                g_row[r] = gv * t_row[r].conjugate()


#: pixels per block of :func:`far_field_loss` (the block's intensities stay in L1 cache)
_BLOCK = 512


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz"},
            error_model="numpy")
def far_field_loss(far, measured, kind, epsilon, intensity_scale, grad_scale,
                   work):  # pragma: no cover - compiled
    """Block by block over the pixels r of far (L, N): I = intensity_scale sum_l |far[l, r]|^2,
    f and g = df/dI of the pixel loss ``kind`` (0 amplitude, 1 poisson, 2 intensity; see
    ptyframe.core.fused.PixelLoss), far[l, r] *= grad_scale g; returns sum f (double
    precision). ``work``: real buffer of at least min(N, _BLOCK) values."""
    n_l, n = far.shape
    block = min(_BLOCK, work.shape[0])
    total = 0.0
    for start in range(0, n, block):
        stop = min(start + block, n)
        w = stop - start
        inten = work[:w]
        row = far[0, start:stop]
        for r in range(w):
            v = row[r]
            inten[r] = v.real * v.real + v.imag * v.imag
        for i in range(1, n_l):
            row = far[i, start:stop]
            for r in range(w):
                v = row[r]
                inten[r] += v.real * v.real + v.imag * v.imag
        m = measured[start:stop]
        if kind == 0:
            for r in range(w):
                a = np.sqrt(inten[r] * intensity_scale + epsilon)
                d = a - m[r]
                total += d * d
                inten[r] = (d / a) * grad_scale
        elif kind == 1:
            for r in range(w):
                f = inten[r] * intensity_scale + epsilon
                lg = np.log(f)
                total += np.float64(f) - np.float64(m[r]) * np.float64(lg)
                inten[r] = ((f - m[r]) / f) * grad_scale  # 1 - m / f
        else:
            for r in range(w):
                d = inten[r] * intensity_scale - m[r]
                total += d * d
                inten[r] = (d + d) * grad_scale  # no int: stays in the dtype
        for i in range(n_l):
            row = far[i, start:stop]
            for r in range(w):
                row[r] *= inten[r]
    return total


@numba.njit(cache=True, nogil=True)
def shifted_waves(spec, ey, ex, scale, out):  # pragma: no cover - compiled
    """out[m, b, i, j] = (spec[m, i, j] scale) (ey[b, i] ex[b, j]): probe spectra times the
    separable sub-pixel shift factor, built on the fly (no (B, ny, nx) factor array)."""
    n_m, n_b, ny, nx = out.shape
    for m in range(n_m):
        for b in range(n_b):
            x_row = ex[b]
            for i in range(ny):
                e = ey[b, i]
                s_row = spec[m, i]
                o_row = out[m, b, i]
                for j in range(nx):
                    o_row[j] = (s_row[j] * scale) * (e * x_row[j])


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz"},
            error_model="numpy")
def spectral_gradients_separable(H, spec, ey, ex, qy, qx, probe_grad, do_positions, do_probe,
                                 positions_out):  # pragma: no cover - compiled
    """:func:`spectral_gradients` with the factor A_b = ey[b, i] ex[b, j] built on the fly and
    the separable frequencies: H (M, B, ny, nx), spec and probe_grad (M, ny, nx), ey (B, ny),
    ex (B, nx), qy (ny,), qx (nx,) real (2 pi q, cycles per pixel).

    Real and imaginary parts in separate real arrays (complex arithmetic kept LLVM from
    vectorising: measured 2.5x slower); sums within one call in the arrays' precision (as the
    reference's sum and matrix product), the per-measurement totals in double precision."""
    n_m, n_b, ny, nx = H.shape
    n_p = ny * nx
    zero = qy[0] * 0
    acc_r = np.zeros((n_m, ny, nx), dtype=qy.dtype)
    acc_i = np.zeros((n_m, ny, nx), dtype=qy.dtype)
    col = np.zeros(nx, dtype=qy.dtype)
    f_r = np.empty(nx, dtype=qy.dtype)
    f_i = np.empty(nx, dtype=qy.dtype)
    for b in range(n_b):
        gy = 0.0
        col[:] = zero
        x_row = ex[b]
        for i in range(ny):
            e = ey[b, i]
            for j in range(nx):
                f = e * x_row[j]
                f_r[j] = f.real
                f_i[j] = f.imag
            row_sum = zero
            for m in range(n_m):
                h_row = H[m, b, i]
                s_row = spec[m, i]
                a_r = acc_r[m, i]
                a_i = acc_i[m, i]
                for j in range(nx):
                    hr = h_row[j].real
                    hi = h_row[j].imag
                    if do_positions:
                        sr = s_row[j].real * f_r[j] - s_row[j].imag * f_i[j]
                        si = s_row[j].real * f_i[j] + s_row[j].imag * f_r[j]
                        x = hr * si - hi * sr  # Im(conj(h) s)
                        row_sum += x
                        col[j] += x
                    if do_probe:  # h conj(f)
                        a_r[j] += hr * f_r[j] + hi * f_i[j]
                        a_i[j] += hi * f_r[j] - hr * f_i[j]
            gy += row_sum * qy[i]
        if do_positions:
            gx = 0.0
            for j in range(nx):
                gx += col[j] * qx[j]
            positions_out[b, 0] = gy / n_p
            positions_out[b, 1] = gx / n_p
    if do_probe:
        for m in range(n_m):
            for i in range(ny):
                g_row = probe_grad[m, i]
                a_r = acc_r[m, i]
                a_i = acc_i[m, i]
                for j in range(nx):
                    g_row[j] += a_r[j] + 1j * a_i[j]


@numba.njit(cache=True, nogil=True)
def slice_adjoint_add(a, g, t, out, first):  # pragma: no cover - compiled
    """out[r] (+)= conj(a[r]) g[r] (= when first), then g[r] *= conj(t[r]) (flat arrays)."""
    if first:
        for r in range(a.shape[0]):
            gv = g[r]
            out[r] = a[r].conjugate() * gv
            g[r] = gv * t[r].conjugate()
    else:
        for r in range(a.shape[0]):
            gv = g[r]
            out[r] += a[r].conjugate() * gv
            g[r] = gv * t[r].conjugate()


@numba.njit(cache=True, nogil=True)
def window_product(wave, planes, corners, out):  # pragma: no cover - compiled
    """out[k, m, b] = wave[k (or 0), m, b] planes[k, y_b:y_b + ny, x_b:x_b + nx]: the window
    gather and the product with the incident wave in one pass (no gathered-window array).
    wave (1 or K, M, B, ny, nx), planes (K, Y, X), corners (B, 2), out (K, M, B, ny, nx)."""
    n_k, n_m, n_b, ny, nx = out.shape
    one = wave.shape[0] == 1
    for k in range(n_k):
        kw = 0 if one else k
        for b in range(n_b):
            y0 = corners[b, 0]
            x0 = corners[b, 1]
            for m in range(n_m):
                for i in range(ny):
                    t_row = planes[k, y0 + i, x0:x0 + nx]
                    w_row = wave[kw, m, b, i]
                    o_row = out[k, m, b, i]
                    for j in range(nx):
                        o_row[j] = w_row[j] * t_row[j]


@numba.njit(cache=True, nogil=True)
def window_adjoint(a, g, planes, corners, target, accumulate, row):  # pragma: no cover
    """Adjoint of :func:`window_product` in one pass over g: when ``accumulate``,
    target[k, window_b] += sum_m conj(a[k (or 0), m, b]) g[k, m, b] (modes added in order m =
    0, 1, ..., then windows in order b = 0, 1, ...: the reference's order); then g[k, m, b] *=
    conj(planes[k, window_b]) in place. ``row``: a work buffer of at least nx values.

    All complex arrays as real views (last axis 2 nx: re, im interleaved; complex arithmetic
    kept LLVM from vectorising, measured 1.35x slower), the same operations as the complex
    products (bitwise equal)."""
    n_k, n_m, n_b, ny, nx2 = g.shape
    nx = nx2 // 2
    one = a.shape[0] == 1
    for k in range(n_k):
        ka = 0 if one else k
        for b in range(n_b):
            y0 = corners[b, 0]
            x0 = 2 * corners[b, 1]
            for i in range(ny):
                t = planes[k, y0 + i, x0:x0 + nx2]
                for m in range(n_m):
                    gr = g[k, m, b, i]
                    if not accumulate:
                        for j in range(nx):
                            p = 2 * j
                            g0 = gr[p]
                            g1 = gr[p + 1]
                            gr[p] = g0 * t[p] + g1 * t[p + 1]
                            gr[p + 1] = g1 * t[p] - g0 * t[p + 1]
                        continue
                    ar = a[ka, m, b, i]
                    first = m == 0
                    for j in range(nx):
                        p = 2 * j
                        g0 = gr[p]
                        g1 = gr[p + 1]
                        a0 = ar[p]
                        a1 = ar[p + 1]
                        if first:
                            row[p] = a0 * g0 + a1 * g1
                            row[p + 1] = a0 * g1 - a1 * g0
                        else:
                            row[p] += a0 * g0 + a1 * g1
                            row[p + 1] += a0 * g1 - a1 * g0
                        gr[p] = g0 * t[p] + g1 * t[p + 1]
                        gr[p + 1] = g1 * t[p] - g0 * t[p + 1]
                if accumulate:
                    d = target[k, y0 + i, x0:x0 + nx2]
                    for p in range(nx2):
                        d[p] += row[p]
