"""Element-wise kernels of the model's hot path, behind :class:`ptyframe.core.device.Device`.

* :class:`NumpyKernels` (default): array-namespace code (NumPy or CuPy), the reference.
* :class:`NumbaKernels`: the same operations fused into single-pass numba loops on CPU
  (``pip install ptyframe[numba]``); results equal the reference within round-off of the dtype
  (the window gather/scatter exactly: same accumulation order).

Choose with ``Device(fused="numba")``; ``Device.kernels`` is the instance in use.

:class:`PixelLoss` describes a pixel-wise loss in a form both kernel sets evaluate together
with the far-field intensity and the detector adjoint (:meth:`NumpyKernels.far_field_loss`):
a loss component offers one through ``LossMetric.pixel_loss()``.
"""

from __future__ import annotations

import importlib
from typing import Any

import attrs
import numpy as np

from ptyframe.core.validators import non_negative, one_of, to_float

__all__ = ["FUSED_KERNELS", "PIXEL_LOSS_KINDS", "NumbaKernels", "NumpyKernels", "PixelLoss",
           "make_kernels", "numba_available"]

#: kernel set names accepted by :func:`make_kernels` (and ``Device(fused=...)``)
FUSED_KERNELS = ("numpy", "numba")

#: pixel-wise loss forms the kernels know (see :class:`PixelLoss`)
PIXEL_LOSS_KINDS = ("amplitude", "poisson", "intensity")


@attrs.frozen(kw_only=True)
class PixelLoss:
    """A loss L = sum over pixels of f(I, m), I the modelled intensity (counts), m the prepared
    measurement of that pixel (``LossMetric.prepare_measured``).

    * ``kind``: ``"amplitude"``: f = (sqrt(I + eps) - m)^2 with m = sqrt(M), df/dI = 1 - m /
      sqrt(I + eps); ``"poisson"``: f = (I + eps) - m log(I + eps), df/dI = 1 - m / (I +
      eps); ``"intensity"``: f = (I - m)^2, df/dI = 2 (I - m) (eps unused)
    * ``epsilon``: intensity floor eps, counts (>= 0)
    """

    kind: str = attrs.field(validator=one_of(PIXEL_LOSS_KINDS))
    epsilon: float = attrs.field(default=0.0, converter=to_float, validator=non_negative())

    @property
    def code(self) -> int:
        """Index of ``kind`` in :data:`PIXEL_LOSS_KINDS` (the compiled kernels' switch)."""
        return PIXEL_LOSS_KINDS.index(self.kind)


def numba_available() -> bool:
    """True when numba imports (the ``numba`` extra is installed)."""
    try:
        importlib.import_module("numba")
    except ImportError:
        return False
    return True


class NumpyKernels:
    """Reference implementations with the array namespace ``xp`` (NumPy or CuPy)."""

    name = "numpy"

    def __init__(self, xp: Any) -> None:
        self.xp = xp

    def gather_windows(self, planes: Any, corners: Any, out: Any) -> Any:
        """``out[p, b] = planes[p, y_b:y_b + ny, x_b:x_b + nx]`` (CPU: one slice copy per
        window, no index arrays). ``planes`` (P, Y, X), ``corners`` (B, 2) int, ``out`` (P, B,
        ny, nx)."""
        ny, nx = out.shape[-2:]
        for b, (y, x) in enumerate(np.asarray(corners).tolist()):
            out[:, b] = planes[:, y:y + ny, x:x + nx]
        return out

    def scatter_add_windows(self, target: Any, corners: Any, values: Any) -> None:
        """``target[p, window_b] += values[p, b]`` in window order b = 0, 1, ... (exact
        accumulation order; np.add.at on complex64 was measured 10-40x slower)."""
        ny, nx = values.shape[-2:]
        for b, (y, x) in enumerate(np.asarray(corners).tolist()):
            target[:, y:y + ny, x:x + nx] += values[:, b]

    def abs2_sum(self, flat: Any, scale: float, out: Any, work: Any | None = None) -> Any:
        """``out = scale * sum_l |flat[l]|^2``: ``flat`` (L, ...) complex, ``out`` real of
        ``flat.shape[1:]``; ``work``: optional real buffer like ``out`` (needed when L > 1)."""
        xp = self.xp
        xp.square(xp.abs(flat[0], out=out), out=out)
        if flat.shape[0] > 1:
            tmp = work if work is not None else xp.empty_like(out)
            for w in flat[1:]:
                out += xp.square(xp.abs(w, out=tmp), out=tmp)
        if scale != 1.0:
            out *= scale
        return out

    def multiply_real(self, a: Any, g: Any, scale: float) -> Any:
        """``a *= g * scale`` in place, ``g`` real broadcast over the leading axes of ``a``."""
        a *= g * scale if scale != 1.0 else g
        return a

    def amplitude_loss(self, intensity: Any, sqrt_measured: Any, epsilon: float
                       ) -> tuple[float, Any]:
        """Amplitude least squares: (sum (sqrt(I + eps) - sqrt(M))^2 summed in double
        precision, dL/dI = 1 - sqrt(M) / sqrt(I + eps) in the memory of ``intensity``)."""
        xp = self.xp
        amp = intensity
        if epsilon:
            amp += epsilon
        xp.sqrt(amp, out=amp)
        diff = amp - sqrt_measured
        grad = xp.divide(diff, amp, out=amp)
        value = float(xp.square(diff, out=diff).sum(dtype=xp.float64))
        return value, grad

    def pixel_loss(self, intensity: Any, measured: Any, loss: PixelLoss) -> tuple[float, Any]:
        """(L, dL/dI) of :class:`PixelLoss` ``loss``, L summed in double precision, dL/dI in
        the memory of ``intensity``."""
        xp = self.xp
        if loss.kind == "amplitude":
            return self.amplitude_loss(intensity, measured, loss.epsilon)
        if loss.kind == "poisson":
            floored = intensity
            if loss.epsilon:
                floored += loss.epsilon
            value = float(floored.sum(dtype=xp.float64))
            log = xp.log(floored)
            log *= measured
            value -= float(log.sum(dtype=xp.float64))
            grad = xp.divide(measured, floored, out=floored)
            xp.subtract(1.0, grad, out=grad)
            return value, grad
        diff = xp.subtract(intensity, measured, out=intensity)
        value = float(xp.square(diff).sum(dtype=xp.float64))
        diff *= 2.0
        return value, diff

    def far_field_loss(self, far: Any, measured: Any, loss: PixelLoss, intensity_scale: float,
                       grad_scale: float, work: Any, work2: Any | None = None) -> float:
        """Far-field intensity, loss and detector adjoint in one call:
        I = intensity_scale sum_l |far[l]|^2, (L, g) = ``loss``(I, measured), far[l] *=
        grad_scale g in place; returns L. ``far`` (L, ...) complex C-contiguous, ``measured``
        and ``work`` (a real buffer, overwritten) of ``far.shape[1:]``; ``work2``: a second
        such buffer (needed when L > 1)."""
        inten = self.abs2_sum(far, intensity_scale, work, work2)
        value, grad = self.pixel_loss(inten, measured, loss)
        self.multiply_real(far, grad, grad_scale)
        return value

    def conj_multiply(self, a: Any, g: Any, out: Any) -> None:
        """``out = conj(a) g``, all of one shape; ``a`` may be overwritten."""
        xp = self.xp
        xp.multiply(xp.conjugate(a, out=a), g, out=out)

    def conj_mode_sum(self, a: Any, g: Any, out: Any, axis: int, work: Any) -> None:
        """``out = sum over axis of conj(a) g`` (keepdims), ``a`` and ``g`` of one shape,
        ``work`` a buffer of that shape (the product), ``a`` may be overwritten."""
        xp = self.xp
        xp.multiply(xp.conjugate(a, out=a), g, out=work)
        xp.sum(work, axis=axis, keepdims=True, out=out)

    def slice_adjoint(self, a: Any, g: Any, t: Any, out: Any, work: Any) -> None:
        """One multislice adjoint step: ``out = sum_m conj(a) g`` over the mode axis -4
        (keepdims) and ``g *= conj(t)``. ``a``, ``g`` (..., M, B, ny, nx); ``t``, ``out``
        (..., 1, B, ny, nx); ``work`` a buffer like ``g``; ``a`` and ``t`` may be
        overwritten."""
        xp = self.xp
        if a.shape[-4] == 1:
            self.conj_multiply(a, g, out)
        else:
            self.conj_mode_sum(a, g, out, a.ndim - 4, work)
        g *= xp.conjugate(t, out=t)

    def slice_adjoint_add(self, a: Any, g: Any, t: Any, out: Any, first: bool) -> None:
        """One probe mode's share of :meth:`slice_adjoint`, all arrays of one shape:
        ``out (+)= conj(a) g`` (``=`` when ``first``) and ``g *= conj(t)``; ``a`` and ``t``
        are not modified."""
        xp = self.xp
        if first:
            xp.multiply(xp.conjugate(a), g, out=out)
        else:
            out += xp.conjugate(a) * g
        g *= xp.conjugate(t)

    def spectral_gradients(self, H: Any, spec: Any, factor: Any, q2pi: Any,
                           probe_grad: Any | None, positions: bool) -> Any | None:
        """Gradients from H = FFT(dL/d conj(P_n)), (M, B, ny, nx), overwritten here.

        ``spec`` (M, ny, nx) probe spectra; ``factor`` (B, ny, nx) per-measurement spectral
        factors A_n; ``q2pi`` (ny * nx, 2) 2 pi q (cycles per pixel). Adds sum_b H conj(A_b)
        to ``probe_grad`` (M, ny, nx) when given; returns the positions gradient (B, 2),
        (1/npx) sum_q X_b(q) 2 pi q with X_b = sum_m Im(conj(H) spec A_b), when
        ``positions``, else None.
        """
        xp = self.xp
        out = None
        if positions:
            s_full = spec[:, None] * factor
            X = (xp.conj(H) * s_full).imag.sum(axis=0)
            del s_full
            npx = X.shape[-2] * X.shape[-1]
            out = (X.reshape(X.shape[0], npx) @ q2pi) / npx
        if probe_grad is not None:
            H *= xp.conj(factor)
            probe_grad += H.sum(axis=1)
        return out

    # With ``fuses_windows`` the model skips the gathered transmission windows for a single
    # slice whose propagator is a plain product (``Propagator.single_slice_product``): it calls
    # :meth:`window_product` and :meth:`window_adjoint` instead of gather, propagator and
    # scatter-add. The reference keeps the gather / propagator / scatter path.
    fuses_windows = False

    def window_product(self, wave: Any, planes: Any, corners: Any, out: Any) -> Any:
        """``out[k, m, b] = wave[k, m, b] planes[k, y_b:y_b + ny, x_b:x_b + nx]`` (``wave``
        broadcast over k when it has one row): window gather and exit-wave product. ``wave``
        (1 or K, M, B, ny, nx), ``planes`` (K, Y, X), ``corners`` (B, 2) int (host), ``out``
        (K, M, B, ny, nx); returns ``out``."""
        ny, nx = out.shape[-2:]
        for b, (y, x) in enumerate(np.asarray(corners).tolist()):
            self.xp.multiply(wave[:, :, b], planes[:, None, y:y + ny, x:x + nx],
                             out=out[:, :, b])
        return out

    def window_adjoint(self, a: Any, g: Any, planes: Any, corners: Any,
                       target: Any | None) -> Any:
        """Adjoint of :meth:`window_product` for the incident wave ``a`` (as its ``wave``)
        and dL/d conj(out) ``g``: ``target[k, window_b] += sum_m conj(a[k, m, b]) g[k, m, b]``
        (windows in order b = 0, 1, ...; skipped when ``target`` is None), then ``g[k, m, b]
        *= conj(planes[k, window_b])`` in place (dL/d conj(wave) before the sum over k);
        returns ``g``."""
        xp = self.xp
        ny, nx = g.shape[-2:]
        for b, (y, x) in enumerate(np.asarray(corners).tolist()):
            gb = g[:, :, b]
            if target is not None:
                prod = xp.conjugate(a[:, :, b]) * gb
                if prod.shape[1] == 1:
                    target[:, y:y + ny, x:x + nx] += prod[:, 0]
                else:
                    target[:, y:y + ny, x:x + nx] += xp.sum(prod, axis=1)
            gb *= xp.conjugate(planes[:, None, y:y + ny, x:x + nx])
        return g

    # With ``separable_shift`` the model hands the sub-pixel shift factor A_b = exp(-2 pi i
    # q.f_b) = ey[b, i] ex[b, j] over as its two factors (B, ny) and (B, nx) and never builds
    # the (B, ny, nx) array; the reference builds it here (the model then builds it itself).
    separable_shift = False

    def shifted_waves(self, spec: Any, ey: Any, ex: Any, scale: float, out: Any) -> Any:
        """``out[m, b] = (spec[m] scale) A_b`` with A_b = ey[b, :, None] ex[b, None, :];
        ``spec`` (M, ny, nx), ``out`` (M, B, ny, nx)."""
        factor = ey[:, :, None] * ex[:, None, :]
        return self.xp.multiply(spec[:, None] * scale, factor, out=out)

    def spectral_gradients_separable(self, H: Any, spec: Any, ey: Any, ex: Any, q2pi: Any,
                                     probe_grad: Any | None, positions: bool) -> Any | None:
        """:meth:`spectral_gradients` with A_b = ey[b, :, None] ex[b, None, :]."""
        factor = ey[:, :, None] * ex[:, None, :]
        return self.spectral_gradients(H, spec, factor, q2pi, probe_grad, positions)


class NumbaKernels(NumpyKernels):
    """The reference's operations as single-pass numba loops (CPU only)."""

    name = "numba"
    separable_shift = True

    def __init__(self, xp: Any) -> None:
        if xp is not np:
            raise ValueError("fused: expected 'numpy' on GPU ('numba' kernels are CPU-only), "
                             "found 'numba'")
        try:
            self._k = importlib.import_module("ptyframe.core._numba_kernels")
        except ImportError as exc:
            raise RuntimeError("fused 'numba': expected numba to be installed (pip install "
                               "ptyframe[numba]), found it missing") from exc
        super().__init__(xp)

    def gather_windows(self, planes: Any, corners: Any, out: Any) -> Any:
        self._k.gather_windows(planes, np.ascontiguousarray(corners, dtype=np.int64), out)
        return out

    def scatter_add_windows(self, target: Any, corners: Any, values: Any) -> None:
        self._k.scatter_add_windows(target, np.ascontiguousarray(corners, dtype=np.int64),
                                    values)

    def abs2_sum(self, flat: Any, scale: float, out: Any, work: Any | None = None) -> Any:
        if not (flat.flags.c_contiguous and out.flags.c_contiguous):
            return super().abs2_sum(flat, scale, out, work)
        n = out.size
        self._k.abs2_sum(flat.reshape(flat.shape[0], n), out.dtype.type(scale), out.reshape(n))
        return out

    def multiply_real(self, a: Any, g: Any, scale: float) -> Any:
        n = g.size
        if not a.flags.c_contiguous or a.shape[a.ndim - g.ndim:] != g.shape:
            return super().multiply_real(a, g, scale)
        self._k.multiply_real(a.reshape(-1, n), np.ascontiguousarray(g).reshape(n),
                              g.dtype.type(scale))
        return a

    def amplitude_loss(self, intensity: Any, sqrt_measured: Any, epsilon: float
                       ) -> tuple[float, Any]:
        if (not (intensity.flags.c_contiguous and sqrt_measured.flags.c_contiguous)
                or intensity.shape != sqrt_measured.shape
                or intensity.dtype != sqrt_measured.dtype):
            return super().amplitude_loss(intensity, sqrt_measured, epsilon)
        value = self._k.amplitude_loss(intensity.reshape(-1), sqrt_measured.reshape(-1),
                                       intensity.dtype.type(epsilon))
        return float(value), intensity

    def far_field_loss(self, far: Any, measured: Any, loss: PixelLoss, intensity_scale: float,
                       grad_scale: float, work: Any, work2: Any | None = None) -> float:
        n = measured.size
        real = work.dtype
        if (not (far.flags.c_contiguous and measured.flags.c_contiguous)
                or far.size != far.shape[0] * n or measured.dtype != real):
            return super().far_field_loss(far, measured, loss, intensity_scale, grad_scale,
                                          work, work2)
        return float(self._k.far_field_loss(
            far.reshape(far.shape[0], n), measured.reshape(n), loss.code,
            real.type(loss.epsilon), real.type(intensity_scale), real.type(grad_scale),
            work.reshape(-1)))

    def conj_multiply(self, a: Any, g: Any, out: Any) -> None:
        if not (a.flags.c_contiguous and g.flags.c_contiguous and out.flags.c_contiguous):
            return super().conj_multiply(a, g, out)
        self._k.conj_multiply(a.reshape(-1), g.reshape(-1), out.reshape(-1))

    def conj_mode_sum(self, a: Any, g: Any, out: Any, axis: int, work: Any) -> None:
        axis = axis % a.ndim
        if not (a.flags.c_contiguous and g.flags.c_contiguous and out.flags.c_contiguous):
            return super().conj_mode_sum(a, g, out, axis, work)
        lead = int(np.prod(a.shape[:axis], dtype=np.int64))
        rest = int(np.prod(a.shape[axis + 1:], dtype=np.int64))
        shape = (lead, a.shape[axis], rest)
        self._k.conj_mode_sum(a.reshape(shape), g.reshape(shape), out.reshape(lead, rest))

    def slice_adjoint(self, a: Any, g: Any, t: Any, out: Any, work: Any) -> None:
        if not all(x.flags.c_contiguous for x in (a, g, t, out)):
            return super().slice_adjoint(a, g, t, out, work)
        lead = int(np.prod(a.shape[:-4], dtype=np.int64))
        rest = int(np.prod(a.shape[-3:], dtype=np.int64))
        self._k.slice_adjoint(a.reshape(lead, a.shape[-4], rest),
                              g.reshape(lead, a.shape[-4], rest), t.reshape(lead, rest),
                              out.reshape(lead, rest))

    def slice_adjoint_add(self, a: Any, g: Any, t: Any, out: Any, first: bool) -> None:
        if not all(x.flags.c_contiguous for x in (a, g, t, out)):
            return super().slice_adjoint_add(a, g, t, out, first)
        self._k.slice_adjoint_add(a.reshape(-1), g.reshape(-1), t.reshape(-1), out.reshape(-1),
                                  first)

    def spectral_gradients(self, H: Any, spec: Any, factor: Any, q2pi: Any,
                           probe_grad: Any | None, positions: bool) -> Any | None:
        if probe_grad is not None and not probe_grad.flags.c_contiguous:
            return super().spectral_gradients(H, spec, factor, q2pi, probe_grad, positions)
        M, B = H.shape[0], H.shape[1]
        npx = H.shape[-2] * H.shape[-1]
        real = np.empty(0, dtype=H.real.dtype).dtype
        out = np.empty((B, 2), dtype=real)
        do_probe = probe_grad is not None
        probe = (probe_grad.reshape(M, npx) if do_probe
                 else np.zeros((M, npx), dtype=H.dtype))
        q = np.ascontiguousarray(np.asarray(q2pi, dtype=real).T)
        self._k.spectral_gradients(
            np.ascontiguousarray(H).reshape(M, B, npx),
            np.ascontiguousarray(spec, dtype=H.dtype).reshape(M, npx),
            np.ascontiguousarray(factor, dtype=H.dtype).reshape(B, npx),
            q[0], q[1], probe, positions, do_probe, out)
        return out if positions else None


    fuses_windows = True

    def window_product(self, wave: Any, planes: Any, corners: Any, out: Any) -> Any:
        if not (wave.flags.c_contiguous and planes.flags.c_contiguous and out.flags.c_contiguous
                and wave.dtype == planes.dtype == out.dtype):
            return super().window_product(wave, planes, corners, out)
        self._k.window_product(wave, planes, np.ascontiguousarray(corners, dtype=np.int64), out)
        return out

    def window_adjoint(self, a: Any, g: Any, planes: Any, corners: Any,
                       target: Any | None) -> Any:
        arrays = (a, g, planes) if target is None else (a, g, planes, target)
        if not all(x.flags.c_contiguous and x.dtype == g.dtype for x in arrays):
            return super().window_adjoint(a, g, planes, corners, target)
        real = g.real.dtype
        row = np.empty(2 * g.shape[-1], dtype=real)
        self._k.window_adjoint(a.view(real), g.view(real), planes.view(real),
                               np.ascontiguousarray(corners, dtype=np.int64),
                               planes.view(real) if target is None else target.view(real),
                               target is not None, row)
        return g

    def shifted_waves(self, spec: Any, ey: Any, ex: Any, scale: float, out: Any) -> Any:
        if not (spec.flags.c_contiguous and out.flags.c_contiguous
                and spec.dtype == out.dtype == ey.dtype == ex.dtype):
            return super().shifted_waves(spec, ey, ex, scale, out)
        real = np.empty(0, dtype=out.dtype).real.dtype
        self._k.shifted_waves(spec, np.ascontiguousarray(ey), np.ascontiguousarray(ex),
                              real.type(scale), out)
        return out

    def spectral_gradients_separable(self, H: Any, spec: Any, ey: Any, ex: Any, q2pi: Any,
                                     probe_grad: Any | None, positions: bool) -> Any | None:
        if ((probe_grad is not None and not probe_grad.flags.c_contiguous)
                or not spec.flags.c_contiguous or H.ndim != 4):
            return super().spectral_gradients_separable(H, spec, ey, ex, q2pi, probe_grad,
                                                        positions)
        M, B, ny, nx = H.shape
        real = np.empty(0, dtype=H.real.dtype).dtype
        out = np.empty((B, 2), dtype=real)
        do_probe = probe_grad is not None
        probe = probe_grad if do_probe else np.zeros((M, ny, nx), dtype=H.dtype)
        q = np.asarray(q2pi, dtype=real).reshape(ny, nx, 2)
        self._k.spectral_gradients_separable(
            np.ascontiguousarray(H), spec, np.ascontiguousarray(ey, dtype=H.dtype),
            np.ascontiguousarray(ex, dtype=H.dtype), np.ascontiguousarray(q[:, 0, 0]),
            np.ascontiguousarray(q[0, :, 1]), probe, positions, do_probe, out)
        return out if positions else None


def make_kernels(name: str, xp: Any) -> NumpyKernels:
    """The kernel set called ``name`` (see :data:`FUSED_KERNELS`) for the namespace ``xp``."""
    if name == "numpy":
        return NumpyKernels(xp)
    if name == "numba":
        return NumbaKernels(xp)
    raise ValueError(f"fused: expected one of {list(FUSED_KERNELS)}, found {name!r}")
