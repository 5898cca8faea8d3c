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

import inspect
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from .components import LossMetric, PropagationGeometry, Propagator
from .device import Device
from .experiment import windows_outside_object

__all__ = ["FarFieldModel", "BLOCKS"]


def _accepts(method: Any, keyword: str) -> bool:
    """Whether a component method takes the optional keyword ``keyword`` (work buffers and
    in-place operation are opt-in extensions of the component interfaces)."""
    try:
        return keyword in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False

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
        # spatial frequencies per axis (cycles per pixel), for the shift ramps exp(-2 pi i q f)
        self._qy = xp.asarray(np.fft.fftfreq(ny), dtype=device.real_dtype)
        self._qx = xp.asarray(np.fft.fftfreq(nx), dtype=device.real_dtype)
        self.measured = measured
        self._measured_prepared = (loss.prepare_measured(measured, xp)
                                   if (loss is not None and measured is not None) else None)
        # Per-batch work buffers, allocated on first use and reused by every later batch and
        # evaluation (no allocation, hence no page faults, inside an epoch).
        self._ws = device.workspace()
        self._propagator_ws = _accepts(propagator.forward, "workspace")
        self._loss_overwrite = loss is not None and _accepts(loss.value_and_grad, "overwrite")

    # ------------------------------------------------------------------ helpers
    @property
    def n_measurements(self) -> int:
        return 0 if self.measured is None else int(self.measured.shape[0])

    def batches(self, n: int) -> Iterator[slice]:
        for start in range(0, n, self.batch_size):
            yield slice(start, min(start + self.batch_size, n))

    def _ramps(self, frac: Any) -> tuple[Any, Any]:
        """Separable sub-pixel shift ramps exp(-2 pi i q f): (B, ny, 1) and (B, 1, nx).

        Built from real cos/sin (vectorised) rather than a complex exp."""
        return (self._phase_factor(frac[:, 0], self._qy)[:, :, None],
                self._phase_factor(frac[:, 1], self._qx)[:, None, :])

    def _phase_factor(self, f: Any, q: Any) -> Any:
        xp = self.device.xp
        phase = f.astype(self.device.real_dtype, copy=False)[:, None] * ((-2.0 * np.pi) * q)
        out = xp.empty(phase.shape, dtype=self.device.complex_dtype)
        xp.cos(phase, out=out.real)
        xp.sin(phase, out=out.imag)
        return out

    def _take_rows(self, name: str, array: Any, sel: Any) -> Any:
        """array[sel] for a slice (a view) or an index array (copied into a work buffer)."""
        if isinstance(sel, slice):
            return array[sel]
        out = self._ws.get(name, (int(sel.shape[0]), *array.shape[1:]), array.dtype)
        return self.device.xp.take(array, sel, axis=0, out=out)

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
        problem = windows_outside_object(self.device.to_host(pos), self.window, obj.shape)
        if problem:
            raise ValueError(problem)


    # ------------------------------------------------------------------ forward
    def _exit_waves(self, obj: Any, pos: Any, probe_spectrum: Any,
                    keep: bool) -> tuple[Any, dict[str, Any]]:
        """Far-field waves Psi (K, M, B, ny, nx) of one batch (positions ``pos``, (B, 2)).

        Every large array lives in the model's workspace: the returned ``far`` (and the
        cache) are overwritten by the next batch.
        """
        dev, xp, ws = self.device, self.device.xp, self._ws
        cdt = dev.complex_dtype
        S, K, Y, X = obj.shape
        M = probe_spectrum.shape[0]
        B = int(pos.shape[0])
        ny, nx = self.window
        corner = xp.floor(pos)
        frac = (pos - corner).astype(dev.real_dtype, copy=False)
        corner = corner.astype(np.int64)
        # ramp_n = exp(-2 pi i q.f_n) as one (B, ny, nx) outer product of the separable factors
        ey, ex = self._ramps(frac)
        ramp = xp.multiply(ey, ex, out=ws.get("ramp", (B, ny, nx), cdt))
        # shifted probes P_n,m = IFFT[Phat_m ramp_n], (1, M, B, ny, nx), in place
        wave = ws.get("wave", (1, M, B, ny, nx), cdt)
        xp.multiply(probe_spectrum[:, None], ramp, out=wave[0])
        wave = dev.ifft2(wave, overwrite=True)
        # object windows (S, K, 1, B, ny, nx) at the integer corners
        trans = ws.get("trans", (S, K, 1, B, ny, nx), cdt)
        dev.gather_windows(obj.reshape(S * K, Y, X), corner, trans.reshape(S * K, B, ny, nx))
        if self._propagator_ws:
            exit_wave, prop_cache = self.propagator.forward(wave, trans, keep=keep,
                                                            workspace=ws)
        else:
            exit_wave, prop_cache = self.propagator.forward(wave, trans, keep=keep)
        far = dev.fft2(exit_wave, norm="ortho", overwrite=True)
        cache = {"corner": corner, "ramp": ramp, "prop": prop_cache}
        return far, cache

    def _intensity(self, far: Any) -> Any:
        """I = (1/K) sum_k sum_m |Psi_k,m|^2, (B, ny, nx), in a work buffer.

        abs() then square() in place: two real passes, no complex temporaries (abs of a
        complex array is a fast vectorised loop; re^2 + im^2 needs a third pass).
        """
        xp, ws = self.device.xp, self._ws
        K = far.shape[0]
        waves = far.reshape(-1, *far.shape[2:])
        inten = ws.get("intensity", waves.shape[1:], self.device.real_dtype)
        xp.square(xp.abs(waves[0], out=inten), out=inten)
        if waves.shape[0] > 1:
            tmp = ws.get("intensity_tmp", waves.shape[1:], self.device.real_dtype)
            for w in waves[1:]:
                inten += xp.square(xp.abs(w, out=tmp), out=tmp)
        if K > 1:
            inten *= 1.0 / K
        return inten

    def intensities(self, params: Mapping[str, Any]) -> Any:
        """Modelled patterns (N, ny, nx) in FFT order."""
        xp = self.device.xp
        obj, positions = params["object"], params["positions"]
        n = int(positions.shape[0])
        out = xp.empty((n, *self.window), dtype=self.device.real_dtype)
        probe_spectrum = self.device.fft2(params["probe"])
        for sel in self.batches(n):
            far, _ = self._exit_waves(obj, positions[sel], probe_spectrum, keep=False)
            out[sel] = self._intensity(far)
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
        grad_probe_spec = xp.zeros_like(probe) if "probe" in refine else None
        grad_pos = xp.zeros(positions.shape, dtype=positions.dtype) if "positions" in refine \
            else None
        probe_spectrum = self.device.fft2(probe)
        shift_weights = (self._shift_gradient_weights(probe_spectrum) if grad_pos is not None
                         else None)
        total = 0.0
        order = np.arange(n_total) if indices is None else np.asarray(indices)
        for sel_local in self.batches(order.size):
            idx = order[sel_local]
            contiguous = idx.size == idx[-1] - idx[0] + 1 and np.all(np.diff(idx) == 1)
            sel = slice(int(idx[0]), int(idx[-1]) + 1) if contiguous else xp.asarray(idx)
            total += self._batch_value_and_grad(obj, self._take_rows("positions", positions, sel),
                                                probe_spectrum, sel, grad_obj, grad_probe_spec,
                                                grad_pos, shift_weights)
        grads: dict[str, Any] = {}
        if grad_obj is not None:
            grads["object"] = grad_obj
        if grad_probe_spec is not None:
            # adjoint of P -> IFFT(FFT(P) ramp) is G -> IFFT(conj(ramp) FFT(G))
            grads["probe"] = self.device.ifft2(grad_probe_spec)
        if grad_pos is not None:
            grads["positions"] = grad_pos
        return total, grads

    def _batch_value_and_grad(self, obj: Any, pos: Any, probe_spectrum: Any, sel: Any,
                              grad_obj: Any, grad_probe_spec: Any, grad_pos: Any,
                              shift_weights: Any) -> float:
        """Loss of one batch; its gradients are accumulated into the grad_* arrays (None:
        not refined). Everything large is done in place in the workspace buffers."""
        dev, xp = self.device, self.device.xp
        far, cache = self._exit_waves(obj, pos, probe_spectrum, keep=True)
        K = far.shape[0]
        inten = self._intensity(far)
        measured = self._take_rows("measured", self._measured_prepared, sel)
        if self._loss_overwrite:
            value, dldi = self.loss.value_and_grad(inten, measured, xp, overwrite=True)
        else:
            value, dldi = self.loss.value_and_grad(inten, measured, xp)
        # dL/d conj(Psi) = dL/dI Psi / K  (I = (1/K) sum |Psi|^2), back through the ortho FFT
        if K > 1:
            dldi = dldi * (1.0 / K)
        far *= dldi
        grad_exit = dev.ifft2(far, norm="ortho", overwrite=True)
        del far
        grad_wave, grad_trans = self.propagator.vjp(grad_exit, cache["prop"])
        if grad_obj is not None:
            S, K, Y, X = obj.shape
            dev.scatter_add_windows(grad_obj.reshape(S * K, Y, X), cache["corner"],
                                    grad_trans.reshape(S * K, *grad_trans.shape[-3:]))
        del grad_trans
        if grad_probe_spec is None and grad_pos is None:
            return float(value)
        # G = FFT(dL/d conj(P_shifted)) (unnormalised), summed over object modes: (1, M, B, ..)
        if grad_wave.shape[0] > 1:
            grad_wave = grad_wave.sum(axis=0, keepdims=True)
        spec = dev.fft2(grad_wave, overwrite=True)
        # H = G conj(ramp): the adjoint of the shift, per position (the ramp is not needed any
        # more, conjugate it in place)
        spec *= xp.conjugate(cache["ramp"], out=cache["ramp"])
        H = spec[0]  # (M, B, ny, nx)
        if grad_probe_spec is not None:
            grad_probe_spec += H.sum(axis=1)
        if grad_pos is not None:
            grad_pos[sel] += self._shift_gradient(H, shift_weights)
        return float(value)

    def _shift_gradient_weights(self, probe_spectrum: Any) -> Any:
        """U_m = conj(Phat_m) 2 pi i q as an (M, ny*nx, 2) matrix (q = (q_y, q_x))."""
        xp = self.device.xp
        M = probe_spectrum.shape[0]
        ny, nx = self.window
        conj_spec = xp.conj(probe_spectrum)
        u = xp.empty((M, ny, nx, 2), dtype=probe_spectrum.dtype)
        u[..., 0] = conj_spec * ((2j * np.pi) * self._qy)[:, None]
        u[..., 1] = conj_spec * ((2j * np.pi) * self._qx)[None, :]
        return u.reshape(M, ny * nx, 2)

    def _shift_gradient(self, H: Any, weights: Any) -> Any:
        """Position gradient (B, 2) of one batch from H = FFT(g_P) conj(ramp), (M, B, ny, nx).

        With the shifted spectrum Phat ramp and G = FFT(g_P):
        dL/df = (2/npx) Re sum_q conj(G) Phat ramp (-2 pi i q)
              = (2/npx) Re sum_q H conj(Phat) (2 pi i q)      (|ramp| = 1),
        and the real-block convention keeps half of it. The pixel sum is a matrix product with
        the precomputed weights: one pass over H, no temporary.
        """
        M, B, ny, nx = H.shape
        npx = ny * nx
        per_mode = self.device.xp.matmul(H.reshape(M, B, npx), weights)  # (M, B, 2)
        return (per_mode.real.sum(axis=0) / npx).astype(self.device.real_dtype, copy=False)
