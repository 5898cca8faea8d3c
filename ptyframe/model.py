"""Far-field ptychographic forward model and its hand-written gradient.

Per measurement n (window corner c_n = integer part i_n + fractional part f_n, in pixels):

1. shifted probe   P_n,m = IFFT[ FFT(P_m) * exp(-2 pi i q.f_n) ]            (m: probe modes)
2. exit wave       psi_n,k,m = Propagator(P_n,m, O_k[window i_n])         (k: object modes)
3. intensity       I_n = (1/K) sum_k sum_m |FFT_ortho(psi_n,k,m)|^2       (probe modes summed,
                                                                          object modes averaged)
4. loss            L = sum_n LossMetric(I_n, M_n)

Gradients follow the Wirtinger convention g = dL/d conj(p) (real blocks: 1/2 dL/dp) so that
dL = 2 Re <g, dp> for every block. Patterns are kept in FFT order (zero frequency at [0, 0]).

Parameter blocks (device arrays):
``object`` (n_slices, n_object_modes, Y, X) complex; ``probe`` (n_probe_modes, ny, nx) complex;
``positions`` (N, 2) real: window top-left corners in pixels (y, x).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from .components import LossMetric, PropagationGeometry, Propagator
from .device import Device

__all__ = ["FarFieldModel", "BLOCKS"]

#: refinable blocks understood by the far-field model
BLOCKS = ("object", "probe", "positions")


class FarFieldModel:
    """Forward model + loss over a set of measurements, evaluated in batches.

    Parameters
    ----------
    propagator, loss: components (``propagator.prepare`` is called here).
    device: the :class:`Device` holding every array.
    window: (ny, nx) probe window = detector grid.
    pixel_size_A, wavelength_A: sampling and wavelength.
    n_slices: object slices.
    measured: (N, ny, nx) measured intensities in FFT order, on ``device`` (or None for
        simulation only).
    batch_size: measurements per vectorised batch.
    """

    def __init__(self, propagator: Propagator, loss: LossMetric | None, device: Device,
                 window: tuple[int, int], pixel_size_A: float, wavelength_A: float,
                 n_slices: int, measured: Any | None, batch_size: int = 256) -> None:
        self.propagator = propagator
        self.loss = loss
        self.device = device
        self.window = (int(window[0]), int(window[1]))
        self.n_slices = int(n_slices)
        self.batch_size = max(1, int(batch_size))
        self.geometry = PropagationGeometry(self.window, pixel_size_A, wavelength_A,
                                            self.n_slices, device)
        propagator.prepare(self.geometry)
        xp = device.xp
        ny, nx = self.window
        # -2 pi i q, per axis, for shift ramps and their derivatives (cycles per pixel)
        self._qy = xp.asarray(np.fft.fftfreq(ny), dtype=device.real_dtype)
        self._qx = xp.asarray(np.fft.fftfreq(nx), dtype=device.real_dtype)
        self._row = xp.arange(ny)[:, None]
        self._col = xp.arange(nx)[None, :]
        self.measured = measured
        self._measured_prepared = (loss.prepare_measured(measured, xp)
                                   if (loss is not None and measured is not None) else None)

    # ------------------------------------------------------------------ helpers
    @property
    def n_measurements(self) -> int:
        return 0 if self.measured is None else int(self.measured.shape[0])

    def batches(self, n: int) -> Iterator[slice]:
        for start in range(0, n, self.batch_size):
            yield slice(start, min(start + self.batch_size, n))

    def _ramps(self, frac: Any) -> tuple[Any, Any]:
        """Separable sub-pixel shift ramps exp(-2 pi i q f): (B, ny, 1) and (B, 1, nx)."""
        xp = self.device.xp
        cdt = self.device.complex_dtype
        ey = xp.exp((-2j * np.pi) * frac[:, 0:1] * self._qy[None, :]).astype(cdt, copy=False)
        ex = xp.exp((-2j * np.pi) * frac[:, 1:2] * self._qx[None, :]).astype(cdt, copy=False)
        return ey[:, :, None], ex[:, None, :]

    def _window_index(self, corner_int: Any, obj_shape: tuple[int, ...]) -> Any:
        """Flat indices (B, ny, nx) of each window inside one (Y, X) object plane."""
        X = obj_shape[-1]
        return ((corner_int[:, 0, None, None] + self._row) * X
                + corner_int[:, 1, None, None] + self._col)

    def _gather(self, obj: Any, flat: Any) -> Any:
        """Object windows (n_slices, K, 1, B, ny, nx) for flat window indices (B, ny, nx)."""
        xp = self.device.xp
        S, K = obj.shape[:2]
        planes = obj.reshape(S * K, -1)
        windows = xp.take(planes, flat, axis=1)
        return windows.reshape(S, K, 1, *flat.shape)

    def _scatter(self, grad_obj: Any, flat: Any, grad_windows: Any) -> None:
        """grad_obj[s, k] (+)= windows scattered back; grad_windows (S, K, B, ny, nx)."""
        S, K = grad_obj.shape[:2]
        plane = grad_obj.shape[2] * grad_obj.shape[3]
        offsets = (self.device.xp.arange(S * K) * plane)[:, None, None, None]
        self.device.scatter_add(grad_obj, (offsets + flat[None]).reshape(-1),
                                grad_windows.reshape(-1))

    def check_blocks(self, params: Mapping[str, Any]) -> None:
        obj, probe, pos = params["object"], params["probe"], params["positions"]
        if obj.ndim != 4 or obj.shape[0] != self.n_slices:
            raise ValueError(f"object: expected shape (n_slices={self.n_slices}, modes, Y, X), "
                             f"found {obj.shape}")
        if probe.ndim != 3 or probe.shape[1:] != self.window:
            raise ValueError(f"probe: expected shape (modes, {self.window[0]}, "
                             f"{self.window[1]}), found {probe.shape}")
        if pos.ndim != 2 or pos.shape[1] != 2:
            raise ValueError(f"positions: expected shape (N, 2), found {pos.shape}")
        corners = self.device.to_host(pos)
        lo = np.floor(corners.min(axis=0))
        hi = np.floor(corners.max(axis=0)) + np.array(self.window)
        if lo.min() < 0 or hi[0] >= obj.shape[2] or hi[1] >= obj.shape[3]:
            raise ValueError(
                f"positions: probe windows reach pixels {lo.tolist()}..{hi.tolist()}, outside "
                f"the object of shape {obj.shape[2:]}; enlarge the object margin"
            )

    # ------------------------------------------------------------------ forward
    def _exit_waves(self, params: Mapping[str, Any], sel: slice, probe_spectrum: Any,
                    keep: bool) -> tuple[Any, dict[str, Any]]:
        xp = self.device.xp
        obj = params["object"]
        pos = params["positions"][sel]
        corner = xp.floor(pos)
        frac = (pos - corner).astype(self.device.real_dtype, copy=False)
        corner = corner.astype(np.int64)
        flat = self._window_index(corner, obj.shape)
        ey, ex = self._ramps(frac)
        # shifted probe spectra (M, B, ny, nx) and shifted probes
        ramp = ey * ex
        shifted_spectrum = probe_spectrum[:, None] * ramp[None]
        shifted_probe = self.device.ifft2(shifted_spectrum)
        transmission = self._gather(obj, flat)
        wave = shifted_probe[None]  # (1, M, B, ny, nx), broadcasts against object modes
        exit_wave, prop_cache = self.propagator.forward(wave, transmission, keep=keep)
        far = self.device.fft2(exit_wave, norm="ortho", overwrite=True)
        cache = {"flat": flat, "ramp": ramp, "shifted_spectrum": shifted_spectrum,
                 "prop": prop_cache, "far": far, "n_object_modes": obj.shape[1]}
        return far, cache

    @staticmethod
    def _intensity(far: Any, xp: Any) -> Any:
        K = far.shape[0]
        inten = (far.real * far.real)
        inten += far.imag * far.imag
        inten = inten.sum(axis=(0, 1)) if far.shape[0] * far.shape[1] > 1 else inten[0, 0]
        if K > 1:
            inten /= K
        return inten

    def intensities(self, params: Mapping[str, Any]) -> Any:
        """Modelled patterns (N, ny, nx) in FFT order."""
        xp = self.device.xp
        n = int(params["positions"].shape[0])
        out = xp.empty((n, *self.window), dtype=self.device.real_dtype)
        probe_spectrum = self.device.fft2(params["probe"])
        for sel in self.batches(n):
            far, _ = self._exit_waves(params, sel, probe_spectrum, keep=False)
            out[sel] = self._intensity(far, xp)
        return out

    # ------------------------------------------------------------------ loss + gradient
    def value_and_grad(self, params: Mapping[str, Any], refine: tuple[str, ...] | set[str]
                       = BLOCKS, indices: Any | None = None) -> tuple[float, dict[str, Any]]:
        """Total loss and gradients for the blocks in ``refine``.

        ``indices``: optional subset of measurement indices (contiguous slices of this array are
        evaluated as batches); default all measurements.
        """
        if self.loss is None or self._measured_prepared is None:
            raise ValueError("value_and_grad: the model was built without measured data")
        xp = self.device.xp
        refine = set(refine)
        unknown = refine - set(BLOCKS)
        if unknown:
            raise ValueError(f"refine: unknown blocks {sorted(unknown)}; expected among {BLOCKS}")
        obj, probe, positions = params["object"], params["probe"], params["positions"]
        n_total = int(positions.shape[0])
        grad_obj = xp.zeros_like(obj) if "object" in refine else None
        need_probe_side = bool({"probe", "positions"} & refine)
        grad_probe_spec = xp.zeros_like(probe) if "probe" in refine else None
        grad_pos = xp.zeros(positions.shape, dtype=positions.dtype) if "positions" in refine \
            else None
        probe_spectrum = self.device.fft2(probe)
        total = 0.0
        order = np.arange(n_total) if indices is None else np.asarray(indices)
        for sel_local in self.batches(order.size):
            idx = order[sel_local]
            contiguous = idx.size == idx[-1] - idx[0] + 1 and np.all(np.diff(idx) == 1)
            sel = slice(int(idx[0]), int(idx[-1]) + 1) if contiguous else xp.asarray(idx)
            far, cache = self._exit_waves(params, sel, probe_spectrum, keep=True)
            inten = self._intensity(far, xp)
            value, dldi = self.loss.value_and_grad(inten, self._measured_prepared[sel], xp)
            total += float(value)
            # dL/d conj(Psi) = dL/dI * dI/dPsi... with I = (1/K) sum |Psi|^2
            K = cache["n_object_modes"]
            if K > 1:
                dldi = dldi / K
            far *= dldi
            grad_exit = self.device.ifft2(far, norm="ortho", overwrite=True)
            del far
            grad_wave, grad_trans = self.propagator.vjp(grad_exit, cache["prop"])
            del grad_exit
            if grad_obj is not None:
                self._scatter(grad_obj, cache["flat"], grad_trans)
            del grad_trans
            if not need_probe_side:
                continue
            # gradient w.r.t. the shifted probes (M, B, ny, nx): sum over object modes
            spec = self.device.fft2(grad_wave[0], overwrite=True)  # FFT(g_Ps), unnormalised
            npx = self.window[0] * self.window[1]
            if grad_pos is not None:
                # dL/df = (2/npx) Re sum conj(G) * Phat_shifted * (-2 pi i q); real-block
                # convention keeps half of it.
                w = xp.conj(spec)
                w *= cache["shifted_spectrum"]
                w = w.sum(axis=0) if w.shape[0] > 1 else w[0]  # (B, ny, nx)
                wy = w.sum(axis=2)  # (B, ny)
                wx = w.sum(axis=1)  # (B, nx)
                gy = ((wy * (-2j * np.pi * self._qy)).sum(axis=1)).real / npx
                gx = ((wx * (-2j * np.pi * self._qx)).sum(axis=1)).real / npx
                grad_pos[sel, 0] += gy.astype(grad_pos.dtype, copy=False)
                grad_pos[sel, 1] += gx.astype(grad_pos.dtype, copy=False)
            if grad_probe_spec is not None:
                spec *= xp.conj(cache["ramp"])[None]
                grad_probe_spec += spec.sum(axis=1)
        grads: dict[str, Any] = {}
        if grad_obj is not None:
            grads["object"] = grad_obj
        if grad_probe_spec is not None:
            # adjoint of P -> IFFT(FFT(P) ramp) is G -> IFFT(conj(ramp) FFT(G))
            grads["probe"] = self.device.ifft2(grad_probe_spec)
        if grad_pos is not None:
            grads["positions"] = grad_pos
        return total, grads
