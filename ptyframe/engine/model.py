"""Ptychographic forward model and its hand-written gradient.

Per measurement n (window corner c_n = integer part i_n + fractional part f_n, in pixels):

1. probe spectrum  S_n,m = FFT(P_p(n),m) * A_n(q), with the per-measurement factor
                   A_n = exp(-2 pi i q.f_n)                  sub-pixel shift
                         * exp(-i chi_a(n)(q))               local aberrations (optional)
                         * plate_n(q)                         phase plate (optional)
                   (m: probe modes; p(n): probe marker; a(n): aberration marker)
2. incident wave   P_n,m = IFFT(S_n,m) * R_before,n(r)       R = exp(2 pi i r.t / lambda)
3. exit wave       psi_n,k,m = Propagator(P_n,m, O_k[window i_n], t_inside,n) * R_after,n(r)
4. intensity       I_n = c_n * Detector(psi_n) + s**2         (k: object modes)
                   The detector sums probe modes and averages object modes:
                   far field (default) (1/K) sum_k sum_m |FFT_ortho(psi_n,k,m)|^2.
5. loss            L = sum_n LossMetric(I_n, M_n)

r is measured in Å from the window centre (pixel N//2); t in radians; tilts follow the
reference's tilt_mode: 0 inside; 1 after; 2 before; 3 inside + after; 4 all three.

Gradients follow the Wirtinger convention g = dL/d conj(p) (real blocks: 1/2 dL/dp) so that
dL = 2 Re <g, dp> for every block.

Parameter blocks (device arrays), see :data:`ptyframe.components.PARAMETER_BLOCKS`:
``object`` (n_slices, n_object_modes, Y, X) complex; ``probe`` (n_probe_modes, ny, nx) or
(n_probes, n_probe_modes, ny, nx) complex; ``positions`` (N, 2) window corners in pixels;
optional ``tilts`` (N or 1, 6), ``beam_current`` (N,), ``static_background`` (measured grid,
detector pixel order), ``aberrations`` (n_sets, n_coefficients) Å.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from ptyframe.components import (
    PARAMETER_BLOCKS,
    Detector,
    LossMetric,
    ModelContext,
    PropagationGeometry,
    Propagator,
)
from ptyframe.core.device import Device
from ptyframe.core.experiment import windows_outside_object
from ptyframe.core.physics import aberration_basis, frequency_axis, spatial_frequencies
from ptyframe.engine.specs import TILT_MODES

__all__ = ["PtychographyModel", "FarFieldModel", "BLOCKS", "TILT_MODES"]

#: refinable blocks understood by the model (the block table's names)
BLOCKS = PARAMETER_BLOCKS

#: reads measured rows (host int indices) already in detector order, host or device arrays;
#: a reader with a ``stream(batches)`` method (e.g. :class:`ptyframe.io.stream.PatternStream`)
#: is given each evaluation's batches in advance so that it can read ahead
MeasuredReader = Callable[[np.ndarray], Any]


def _default_detector() -> Detector:
    """The registry's plain ``far_field`` detector (the core never imports plugins)."""
    from ptyframe.registry.loader import load_registry

    return load_registry().create("detector", {"type": "far_field"})


class PtychographyModel:
    """Forward model + loss over a set of measurements, evaluated in batches.

    Parameters
    ----------
    propagator, loss: components (``propagator.prepare`` is called here; the loss and the
        detector are prepared with ``context``).
    context: the :class:`ModelContext`: window (ny, nx), object pixel (Å), wavelength (Å),
        number of slices, number of measurements (needed when ``measured`` is a reader or
        None), the Device holding every array. :meth:`from_geometry` builds one.
    measured: (N, *measured_shape) measurements in the detector's pixel order on the
        device, or a callable ``rows(indices) -> array`` that streams them
        (``load_one_by_one``), or None for simulation only.
    detector: a :class:`Detector` (default: the registry's `far_field`, no padding).
    batch_size: measurements per vectorised batch.
    tilt_mode: which tilts are applied (see :data:`TILT_MODES`).
    probe_marker: (N,) int, which probe of a (n_probes, modes, ny, nx) probe each
        measurement uses; aberration_marker: (N,) int, which row of ``aberrations``.
    phase_plates: (N, ny, nx) complex factors on the probe spectrum, FFT order, on device.
    first_row: the measurement index of ``measured[0]`` (a rank of a data-parallel run holds
        only its own contiguous range of measurements); indices stay global.
    fuse_loss: evaluate intensity, loss and detector adjoint in one kernel when the loss has
        a pixel-wise form (``LossMetric.pixel_loss``) and the detector can fuse it
        (``Detector.fuses_pixel_loss``), without beam current or background blocks; the
        result equals the unfused path within round-off (False: always unfused).
    """

    def __init__(self, propagator: Propagator, loss: LossMetric | None,
                 context: ModelContext, measured: Any | None = None, *,
                 detector: Detector | None = None, batch_size: int = 256, tilt_mode: int = 0,
                 probe_marker: np.ndarray | None = None,
                 aberration_marker: np.ndarray | None = None,
                 phase_plates: Any | None = None, first_row: int = 0,
                 fuse_loss: bool = True) -> None:
        if tilt_mode not in TILT_MODES:
            raise ValueError(f"tilt_mode: expected one of {sorted(TILT_MODES)}, found "
                             f"{tilt_mode!r}")
        device = context.device
        self.propagator = propagator
        self.loss = loss
        self.device = device
        self.window = (int(context.window[0]), int(context.window[1]))
        self.n_slices = int(context.n_slices)
        self.batch_size = max(1, int(batch_size))
        self.pixel_size_A = float(context.pixel_size_A)
        self.wavelength_A = float(context.wavelength_A)
        self.tilt_mode = int(tilt_mode)
        self.tilt_before, self.tilt_inside, self.tilt_after = TILT_MODES[self.tilt_mode]
        self.geometry = PropagationGeometry(self.window, self.pixel_size_A, self.wavelength_A,
                                            self.n_slices, device)
        propagator.prepare(self.geometry)
        xp = device.xp
        ny, nx = self.window
        # spatial frequencies per axis (cycles per pixel), for the shift ramps exp(-2 pi i q f)
        fy, fx = frequency_axis(ny), frequency_axis(nx)
        self._qy = xp.asarray(fy, dtype=device.real_dtype)
        self._qx = xp.asarray(fx, dtype=device.real_dtype)
        q2pi = np.stack(np.meshgrid(2 * np.pi * fy, 2 * np.pi * fx, indexing="ij"),
                        axis=-1).reshape(ny * nx, 2)
        self._q2pi = xp.asarray(q2pi, dtype=device.real_dtype)
        # real-space coordinates (Å) from the window centre, scaled for tilt ramps 2 pi r / lambda
        scale = 2 * np.pi * self.pixel_size_A / self.wavelength_A
        self._ry = xp.asarray((np.arange(ny) - ny // 2) * scale, dtype=device.real_dtype)
        self._rx = xp.asarray((np.arange(nx) - nx // 2) * scale, dtype=device.real_dtype)
        self.measured = None if callable(measured) else measured
        self.first_row = int(first_row)
        self._reader: MeasuredReader | None = measured if callable(measured) else None
        n_measurements = context.n_measurements
        if not n_measurements and self.measured is not None:
            n_measurements = self.first_row + int(self.measured.shape[0])
        self._n_measurements = int(n_measurements)
        self.detector = detector if detector is not None else _default_detector()
        self.context = context
        self.detector.prepare(context)
        if loss is not None:
            loss.prepare(context)
        self._measured_prepared = (loss.prepare_measured(self.measured)
                                   if (loss is not None and self.measured is not None) else None)
        self.probe_marker = self._marker("probe_marker", probe_marker)
        self.aberration_marker = self._marker("aberration_marker", aberration_marker)
        if phase_plates is not None and tuple(phase_plates.shape) != (self._n_measurements,
                                                                      *self.window):
            raise ValueError(f"phase_plates: expected shape ({self._n_measurements}, "
                             f"{ny}, {nx}), found {tuple(phase_plates.shape)}")
        self.phase_plates = phase_plates
        # Per-batch work buffers, allocated on first use and reused by every later batch and
        # evaluation (no allocation, hence no page faults, inside an epoch).
        self._ws = device.workspace()
        self._propagator_ws = propagator.uses_workspace
        self._detector_ws = self.detector.uses_workspace
        self._loss_overwrite = loss is not None and loss.can_overwrite
        # the loss's pixel-wise form when the detector can fuse it with its forward and
        # adjoint (same result within round-off; one pass over the far field less)
        self._pixel_loss = (loss.fusable_pixel_loss() if (fuse_loss and loss is not None
                                                  and self._detector_ws
                                                  and self.detector.fuses_pixel_loss)
                            else None)
        self._basis_cache: dict[int, Any] = {}

    @classmethod
    def from_geometry(cls, propagator: Propagator, loss: LossMetric | None, device: Device,
                      window: tuple[int, int], pixel_size_A: float, wavelength_A: float,
                      n_slices: int, measured: Any | None = None, *,
                      n_measurements: int | None = None, **options: Any) -> PtychographyModel:
        """A model from its geometry alone (simulations, tests, scripts): the context is
        built here with the measured grid equal to the window. ``options``: the keyword
        arguments of the constructor (detector, batch_size, tilt_mode, markers, plates)."""
        detector = options.get("detector") or _default_detector()
        options["detector"] = detector
        if n_measurements is None:
            n_measurements = 0 if measured is None or callable(measured) else len(measured)
        window = (int(window[0]), int(window[1]))
        context = ModelContext(window=window, pixel_size_A=float(pixel_size_A),
                               wavelength_A=float(wavelength_A),
                               n_measurements=int(n_measurements), device=device,
                               measured_shape=window, n_slices=int(n_slices),
                               to_detector_order=detector.to_detector_order)
        return cls(propagator, loss, context, measured, **options)

    def _marker(self, name: str, marker: Any) -> np.ndarray | None:
        if marker is None:
            return None
        marker = np.asarray(marker)
        if marker.shape != (self._n_measurements,) or not np.issubdtype(marker.dtype,
                                                                         np.integer):
            raise ValueError(f"{name}: expected {self._n_measurements} integers (one per "
                             f"measurement), found shape {marker.shape}, dtype {marker.dtype}")
        if marker.size and marker.min() < 0:
            raise ValueError(f"{name}: expected non-negative indices, found {marker.min()}")
        return marker

    # ------------------------------------------------------------------ helpers
    @property
    def n_measurements(self) -> int:
        return self._n_measurements

    @property
    def fuses_loss(self) -> bool:
        """True when intensity, loss and detector adjoint run as one fused pass (see
        ``fuse_loss``; batches with beam current or background blocks never do)."""
        return self._pixel_loss is not None

    def batches(self, n: int) -> Iterator[slice]:
        for start in range(0, n, self.batch_size):
            yield slice(start, min(start + self.batch_size, n))

    def _phase_factor(self, f: Any, q: Any) -> Any:
        """exp(-2 pi i q f) for each f: (B, len(q)), from real cos/sin (vectorised)."""
        phase = f.astype(self.device.real_dtype, copy=False)[:, None] * ((-2.0 * np.pi) * q)
        return self._cis(phase)

    def _cis(self, phase: Any) -> Any:
        xp = self.device.xp
        out = xp.empty(phase.shape, dtype=self.device.complex_dtype)
        xp.cos(phase, out=out.real)
        xp.sin(phase, out=out.imag)
        return out

    def _tilt_ramp(self, t: Any) -> Any:
        """exp(2 pi i (y t_y + x t_x) / lambda), (B, ny, nx), for tilts t (B, 2) radians."""
        ey = self._cis(t[:, 0:1] * self._ry[None, :])[:, :, None]
        ex = self._cis(t[:, 1:2] * self._rx[None, :])[:, None, :]
        return ey * ex

    def _tilt_gradient(self, grad: Any, field: Any) -> Any:
        """1/2 dL/dt (B, 2) of field * R(t) given G = dL/d conj(field * R) (both (..., B,
        ny, nx), leading axes summed): Re sum conj(G) field R 2 pi i r / lambda."""
        xp = self.device.xp
        z = xp.conj(grad) * field
        while z.ndim > 3:
            z = z.sum(axis=0)
        # Re(i w) = -Im(w)
        gy = -(z.sum(axis=2).imag * self._ry[None, :]).sum(axis=1)
        gx = -(z.sum(axis=1).imag * self._rx[None, :]).sum(axis=1)
        return xp.stack([gy, gx], axis=1).astype(self.device.real_dtype, copy=False)

    def _take_rows(self, name: str, array: Any, sel: Any) -> Any:
        """array[sel] for a slice (a view) or an index array (copied into a work buffer)."""
        if isinstance(sel, slice):
            return array[sel]
        out = self._ws.get(name, (int(sel.shape[0]), *array.shape[1:]), array.dtype)
        return self.device.xp.take(array, sel, axis=0, out=out)

    def _basis(self, n_terms: int) -> Any:
        """Aberration basis d chi / d C_j, (n_terms, ny*nx) in FFT order, on the device."""
        if n_terms not in self._basis_cache:
            qy, qx = spatial_frequencies(self.window, self.pixel_size_A)  # FFT order
            basis = aberration_basis(qy, qx, self.wavelength_A, n_terms)
            self._basis_cache[n_terms] = self.device.asarray(
                basis.reshape(n_terms, -1), dtype=self.device.real_dtype)
        return self._basis_cache[n_terms]

    def check_blocks(self, params: Mapping[str, Any]) -> None:
        """Shape checks of every block present; one clear error for the first problem."""
        obj, probe, pos = params["object"], params["probe"], params["positions"]
        n = int(pos.shape[0]) if pos.ndim == 2 else -1
        if obj.ndim != 4 or obj.shape[0] != self.n_slices:
            raise ValueError(f"object: expected shape (n_slices={self.n_slices}, modes, Y, X), "
                             f"found {obj.shape}")
        if self.probe_marker is None:
            if probe.ndim != 3 or probe.shape[1:] != self.window:
                raise ValueError(f"probe: expected shape (modes, {self.window[0]}, "
                                 f"{self.window[1]}), found {probe.shape}")
        elif (probe.ndim != 4 or probe.shape[2:] != self.window
              or probe.shape[0] <= int(self.probe_marker.max())):
            raise ValueError(f"probe: with a probe_marker expected shape (n_probes > "
                             f"{int(self.probe_marker.max())}, modes, {self.window[0]}, "
                             f"{self.window[1]}), found {probe.shape}")
        if pos.ndim != 2 or pos.shape[1] != 2:
            raise ValueError(f"positions: expected shape (N, 2), found {pos.shape}")
        if self._n_measurements and n != self._n_measurements:
            raise ValueError(f"positions: expected {self._n_measurements} rows (one per "
                             f"measurement), found {n}")
        if "tilts" in params:
            t = params["tilts"]
            if t.ndim != 2 or t.shape[1] != 6 or t.shape[0] not in (1, n):
                raise ValueError(f"tilts: expected shape (1, 6) or ({n}, 6), found {t.shape}")
            if self.tilt_inside and not getattr(self.propagator, "supports_tilts", False):
                raise ValueError(
                    f"tilt_mode {self.tilt_mode}: tilts inside the specimen need a propagator "
                    f"with supports_tilts; {type(self.propagator).__name__} has none (use "
                    "tilt_mode 1 or 2)")
        if "beam_current" in params and tuple(params["beam_current"].shape) != (n,):
            raise ValueError(f"beam_current: expected shape ({n},), found "
                             f"{tuple(params['beam_current'].shape)}")
        if "static_background" in params:
            shape = tuple(self.context.measured_shape)
            if tuple(params["static_background"].shape) != shape:
                raise ValueError(f"static_background: expected shape {shape} (the measured "
                                 f"grid), found {tuple(params['static_background'].shape)}")
        if "aberrations" in params:
            ab = params["aberrations"]
            need = 1 if self.aberration_marker is None else int(self.aberration_marker.max()) + 1
            if ab.ndim != 2 or ab.shape[0] < need:
                raise ValueError(f"aberrations: expected shape (n_sets >= {need}, "
                                 f"n_coefficients), found {ab.shape}")
        problem = windows_outside_object(self.device.to_host(pos), self.window, obj.shape)
        if problem:
            raise ValueError(problem)

    # ------------------------------------------------------------------ forward
    def _batch_setup(self, params: Mapping[str, Any], probe_spectrum: Any, chi_factor: Any,
                     sel: Any, idx: np.ndarray) -> dict[str, Any]:
        """Per-measurement spectral factors and spectra of one batch."""
        dev, xp, ws = self.device, self.device.xp, self._ws
        cdt = dev.complex_dtype
        ny, nx = self.window
        pos = self._take_rows("positions", params["positions"], sel)
        B = int(pos.shape[0])
        corner = xp.floor(pos)
        frac = (pos - corner).astype(dev.real_dtype, copy=False)
        corner = corner.astype(np.int64)
        # A_n = exp(-2 pi i q.f_n) = ey_n(q_y) ex_n(q_x), separable
        ey = self._phase_factor(frac[:, 0], self._qy)
        ex = self._phase_factor(frac[:, 1], self._qx)
        spec = probe_spectrum[:, None] if probe_spectrum.ndim == 3 else None
        if (dev.kernels.separable_shift and chi_factor is None and self.phase_plates is None
                and spec is not None):
            # the kernels build A_n on the fly from its factors (no (B, ny, nx) array)
            return {"corner": corner, "factor": None, "ey": ey, "ex": ex,
                    "spec": spec, "tilts": self._batch_tilts(params, sel, B), "B": B}
        # one (B, ny, nx) outer product
        factor = xp.multiply(ey[:, :, None], ex[:, None, :],
                             out=ws.get("factor", (B, ny, nx), cdt))
        if chi_factor is not None:
            rows = (xp.zeros(B, dtype=np.int64) if self.aberration_marker is None
                    else xp.asarray(self.aberration_marker[idx]))
            factor *= xp.take(chi_factor, rows, axis=0)
        if self.phase_plates is not None:
            factor *= self._take_rows("plates", self.phase_plates, sel)
        if spec is None:  # one probe per sub-scan: (M, B, ny, nx)
            spec = xp.take(probe_spectrum, xp.asarray(self.probe_marker[idx]), axis=0)
            spec = xp.moveaxis(spec, 1, 0)
        return {"corner": corner, "factor": factor, "spec": spec,
                "tilts": self._batch_tilts(params, sel, B), "B": B}

    def _batch_tilts(self, params: Mapping[str, Any], sel: Any, B: int) -> Any:
        """The batch's tilts (B, 6), or None without a tilts block."""
        if "tilts" not in params:
            return None
        t = params["tilts"]
        if t.shape[0] == 1:
            return self.device.xp.broadcast_to(t, (B, 6))
        return self._take_rows("tilts", t, sel)

    def _exit_waves(self, obj: Any, setup: dict[str, Any], keep: bool, keep_fields: bool
                    ) -> tuple[Any, dict[str, Any]]:
        """Exit waves psi (K, M, B, ny, nx) of one batch, in the model's workspace."""
        dev, xp, ws = self.device, self.device.xp, self._ws
        cdt = dev.complex_dtype
        S, K, Y, X = obj.shape
        spec, factor, B = setup["spec"], setup["factor"], setup["B"]
        M = spec.shape[0]
        ny, nx = self.window
        wave = ws.get("wave", (1, M, B, ny, nx), cdt)
        # the inverse FFT's 1/N goes on the small probe spectra (one pass less over the batch)
        if factor is None:
            dev.kernels.shifted_waves(spec[:, 0], setup["ey"], setup["ex"], 1.0 / (ny * nx),
                                      wave[0])
        else:
            xp.multiply(spec * (1.0 / (ny * nx)), factor, out=wave[0])
        wave = dev.ifft2(wave, norm="forward", overwrite=True)
        cache: dict[str, Any] = {"corner": setup["corner"]}
        tilts = setup["tilts"]
        if tilts is not None and self.tilt_before:
            ramp = self._tilt_ramp(tilts[:, 0:2])
            wave *= ramp
            cache["ramp_before"] = ramp
            if keep_fields:
                cache["wave_before"] = wave.copy()
        if self._fused_windows(S, tilts):
            # one slice, plain product: window gather and product in one pass (no
            # transmission windows); the adjoint fuses with the scatter-add (see
            # _batch_value_and_grad)
            exit_wave = dev.kernels.window_product(
                wave, obj.reshape(K, Y, X), setup["corner"],
                ws.get("exit", (K, M, B, ny, nx), cdt))
            cache["prop"] = None
            cache["incident"] = wave
        else:
            exit_wave, cache["prop"] = self._propagate(obj, setup, wave, keep)
        if tilts is not None and self.tilt_after:
            ramp = self._tilt_ramp(tilts[:, 4:6])
            exit_wave = exit_wave * ramp
            cache["ramp_after"] = ramp
            if keep_fields:
                cache["exit_after"] = exit_wave.copy()
        return exit_wave, cache

    def _fused_windows(self, n_slices: int, tilts: Any) -> bool:
        """True when one batch's window gather, exit-wave product, adjoint and scatter-add
        run as the Device's fused window kernels (one slice, a propagator whose one-slice model
        is the plain product, no tilts inside the specimen, kernels that fuse them)."""
        return (n_slices == 1 and self.device.kernels.fuses_windows
                and self.propagator.single_slice_product
                and not (tilts is not None and self.tilt_inside))

    def _propagate(self, obj: Any, setup: dict[str, Any], wave: Any, keep: bool
                   ) -> tuple[Any, Any]:
        """Gathered transmission windows and the propagator's forward: (exit wave, cache)."""
        dev, xp, ws = self.device, self.device.xp, self._ws
        S, K, Y, X = obj.shape
        B = setup["B"]
        ny, nx = self.window
        tilts = setup["tilts"]
        trans = ws.get("trans", (S, K, 1, B, ny, nx), dev.complex_dtype)
        dev.gather_windows(obj.reshape(S * K, Y, X), setup["corner"],
                           trans.reshape(S * K, B, ny, nx))
        kwargs: dict[str, Any] = {}
        if self._propagator_ws:
            kwargs["workspace"] = ws
        if tilts is not None and self.tilt_inside:
            kwargs["tilts"] = xp.ascontiguousarray(tilts[:, 2:4])
        return self.propagator.forward(wave, trans, keep=keep, **kwargs)

    def _detect(self, exit_wave: Any, idx: np.ndarray, keep: bool) -> tuple[Any, Any]:
        if self._detector_ws:
            return self.detector.forward(exit_wave, idx, keep=keep, workspace=self._ws)
        return self.detector.forward(exit_wave, idx, keep=keep)

    def _prepare_common(self, params: Mapping[str, Any]) -> tuple[Any, Any]:
        """Probe spectra (FFT of every probe) and exp(-i chi) per aberration set."""
        probe_spectrum = self.device.fft2(params["probe"])
        chi_factor = None
        if "aberrations" in params:
            ab = params["aberrations"]
            basis = self._basis(int(ab.shape[1]))
            chi = (ab.astype(self.device.real_dtype, copy=False) @ basis).reshape(
                ab.shape[0], *self.window)
            chi_factor = self._cis(-chi)
        return probe_spectrum, chi_factor

    def intensities(self, params: Mapping[str, Any]) -> Any:
        """Modelled measurements (N, *measured_shape) in the detector's pixel order."""
        xp = self.device.xp
        n = int(params["positions"].shape[0])
        probe_spectrum, chi_factor = self._prepare_common(params)
        out = None
        for sel in self.batches(n):
            idx = np.arange(sel.start, sel.stop)
            setup = self._batch_setup(params, probe_spectrum, chi_factor, sel, idx)
            exit_wave, _ = self._exit_waves(params["object"], setup, keep=False,
                                            keep_fields=False)
            inten, _ = self._detect(exit_wave, idx, keep=False)
            if out is None:
                out = xp.empty((n, *inten.shape[1:]), dtype=self.device.real_dtype)
            out[sel] = self._scale_and_offset(inten, params, sel)
        return out

    def _scale_and_offset(self, inten: Any, params: Mapping[str, Any], sel: Any) -> Any:
        if "beam_current" in params:
            c = self._take_rows("current", params["beam_current"], sel)
            inten = inten * c.reshape(-1, *([1] * (inten.ndim - 1)))
        if "static_background" in params:
            inten = inten + params["static_background"] ** 2
        return inten

    # ------------------------------------------------------------------ loss + gradient
    def _measured_rows(self, sel: Any, idx: np.ndarray, rows: Any = None) -> Any:
        """Prepared measurements of one batch: ``rows`` already read by a stream, a read
        through the reader, or the rows kept in memory."""
        if self._reader is not None:
            if rows is None:
                rows = self._reader(idx)
            rows = self.device.asarray(rows, dtype=self.device.real_dtype)
            return self.loss.prepare_measured(rows)
        if self.first_row:
            sel = (slice(sel.start - self.first_row, sel.stop - self.first_row)
                   if isinstance(sel, slice) else sel - self.first_row)
        return self._take_rows("measured", self._measured_prepared, sel)

    def value_and_grad(self, params: Mapping[str, Any], refine: tuple[str, ...] | set[str]
                       = ("object", "probe", "positions"), indices: Any | None = None
                       ) -> tuple[float, dict[str, Any]]:
        """Total loss and gradients for the blocks in ``refine``.

        ``indices``: optional subset of measurement indices (contiguous runs are evaluated as
        slices); default all measurements.
        """
        if self.loss is None or (self._measured_prepared is None and self._reader is None):
            raise ValueError("value_and_grad: the model was built without measured data")
        xp = self.device.xp
        refine = set(refine)
        unknown = refine - set(BLOCKS)
        if unknown:
            raise ValueError(f"refine: unknown blocks {sorted(unknown)}; expected among {BLOCKS}")
        missing = refine - set(params)
        if missing:
            raise ValueError(f"refine: blocks {sorted(missing)} are not model parameters here")
        grads = {b: xp.zeros(params[b].shape, dtype=params[b].dtype) for b in refine}
        n_total = int(params["positions"].shape[0])
        probe_spectrum, chi_factor = self._prepare_common(params)
        if "probe" in grads:
            grads["probe"] = xp.zeros(probe_spectrum.shape, dtype=probe_spectrum.dtype)
        total = 0.0
        order = np.arange(n_total) if indices is None else np.asarray(indices, dtype=np.int64)
        batches = [order[s] for s in self.batches(order.size)]
        streamed = (self._reader.stream(batches) if hasattr(self._reader, "stream")
                    else iter([None] * len(batches)))
        for idx, rows in zip(batches, streamed, strict=True):
            contiguous = idx.size == idx[-1] - idx[0] + 1 and bool(np.all(np.diff(idx) == 1))
            sel = slice(int(idx[0]), int(idx[-1]) + 1) if contiguous else xp.asarray(idx)
            total += self._batch_value_and_grad(params, probe_spectrum, chi_factor, sel, idx,
                                                grads, rows)
            del rows
        if "probe" in grads:
            # adjoint of P -> IFFT(FFT(P) A) is G -> IFFT(conj(A) FFT(G)), accumulated in
            # the spectral domain
            grads["probe"] = self.device.ifft2(grads["probe"])
        return total, grads

    def _batch_value_and_grad(self, params: Mapping[str, Any], probe_spectrum: Any,
                              chi_factor: Any, sel: Any, idx: np.ndarray,
                              grads: dict[str, Any], rows: Any = None) -> float:
        """Loss of one batch; its gradients are accumulated into ``grads``. ``rows``: the
        batch's measurements when a stream has read them already."""
        dev, xp = self.device, self.device.xp
        obj = params["object"]
        setup = self._batch_setup(params, probe_spectrum, chi_factor, sel, idx)
        refine_tilts = "tilts" in grads
        exit_wave, cache = self._exit_waves(obj, setup, keep=True, keep_fields=refine_tilts)
        if self._pixel_loss is not None and not ({"beam_current", "static_background"}
                                                  & set(params)):
            # intensity, loss, dL/dI and the detector adjoint in one fused pass
            measured = self._measured_rows(sel, idx, rows)
            del rows
            value, grad_exit = self.detector.loss_and_vjp(exit_wave, idx, measured,
                                                          self._pixel_loss, self._ws)
            del exit_wave
        else:
            value, grad_exit = self._loss_and_detector_vjp(params, exit_wave, sel, idx, grads,
                                                           rows)
            del exit_wave, rows
        tilt_grad = None
        if refine_tilts:
            tilt_grad = xp.zeros((setup["B"], 6), dtype=dev.real_dtype)
        if "ramp_after" in cache:
            if refine_tilts:
                tilt_grad[:, 4:6] = self._tilt_gradient(grad_exit, cache["exit_after"])
            grad_exit *= xp.conj(cache["ramp_after"])
        S, K, Y, X = obj.shape
        if cache["prop"] is None:  # fused one-slice path (see _exit_waves)
            target = grads["object"].reshape(K, Y, X) if "object" in grads else None
            grad_wave = dev.kernels.window_adjoint(cache["incident"], grad_exit,
                                                   obj.reshape(K, Y, X), cache["corner"],
                                                   target)
            if grad_wave.shape[0] > cache["incident"].shape[0]:  # wave broadcast over K
                grad_wave = grad_wave.sum(axis=0, keepdims=True)
        else:
            back = self.propagator.vjp(grad_exit, cache["prop"])
            grad_wave, grad_trans = back[0], back[1]
            if refine_tilts and self.tilt_inside and len(back) > 2:
                tilt_grad[:, 2:4] = back[2]
            if "object" in grads:
                dev.scatter_add_windows(grads["object"].reshape(S * K, Y, X), cache["corner"],
                                        grad_trans.reshape(S * K, *grad_trans.shape[-3:]))
            del grad_trans
        del grad_exit
        if "ramp_before" in cache:
            if refine_tilts:
                tilt_grad[:, 0:2] = self._tilt_gradient(grad_wave, cache["wave_before"])
            grad_wave = grad_wave * xp.conj(cache["ramp_before"])
        if tilt_grad is not None:
            if params["tilts"].shape[0] == 1:
                grads["tilts"] += tilt_grad.sum(axis=0, keepdims=True)
            else:
                self._accumulate(grads["tilts"], sel, tilt_grad)
        spectral = {"probe", "positions", "aberrations"} & set(grads)
        if not spectral:
            return float(value)
        # H = FFT(dL/d conj(P_n)) (unnormalised), summed over object modes: (M, B, ny, nx)
        if grad_wave.shape[0] > 1:
            grad_wave = grad_wave.sum(axis=0, keepdims=True)
        H = dev.fft2(grad_wave, overwrite=True)[0]
        factor = setup["factor"]
        if factor is None:  # separable shift factor (fused kernels), no aberrations or plates
            pos_grad = dev.kernels.spectral_gradients_separable(
                H, probe_spectrum, setup["ey"], setup["ex"], self._q2pi, grads.get("probe"),
                "positions" in grads)
            if pos_grad is not None:
                self._accumulate(grads["positions"], sel, pos_grad)
            return float(value)
        if "aberrations" not in grads and probe_spectrum.ndim == 3:
            # the common case in one call: fused on CPU with Device(fused="numba")
            pos_grad = dev.kernels.spectral_gradients(
                H, probe_spectrum, factor, self._q2pi, grads.get("probe"),
                "positions" in grads)
            if pos_grad is not None:
                self._accumulate(grads["positions"], sel, pos_grad)
            return float(value)
        if "positions" in grads or "aberrations" in grads:
            # X_n(q) = sum_m Im(conj(H) S), S = spectrum * A: the derivative of the loss along
            # a phase change -i theta(q) of S_n is (1/npx) sum_q X_n(q) theta(q)
            s_full = setup["spec"] * factor
            X = (xp.conj(H) * s_full).imag.sum(axis=0)
            del s_full
            npx = self.window[0] * self.window[1]
            Xf = X.reshape(X.shape[0], npx)
            if "positions" in grads:
                self._accumulate(grads["positions"], sel, (Xf @ self._q2pi) / npx)
            if "aberrations" in grads:
                ab = grads["aberrations"]
                basis = self._basis(int(ab.shape[1]))
                per_n = (Xf @ basis.T) / npx  # (B, n_coefficients)
                if self.aberration_marker is None:
                    ab[0] += per_n.sum(axis=0)
                else:
                    for a in np.unique(self.aberration_marker[idx]):
                        rows = xp.asarray(np.nonzero(self.aberration_marker[idx] == a)[0])
                        ab[int(a)] += per_n[rows].sum(axis=0)
        if "probe" in grads:
            H *= xp.conj(factor)
            if probe_spectrum.ndim == 4:
                markers = self.probe_marker[idx]
                for p in np.unique(markers):
                    rows = xp.asarray(np.nonzero(markers == p)[0])
                    grads["probe"][int(p)] += H[:, rows].sum(axis=1)
            else:
                grads["probe"] += H.sum(axis=1)
        return float(value)

    def _loss_and_detector_vjp(self, params: Mapping[str, Any], exit_wave: Any, sel: Any,
                               idx: np.ndarray, grads: dict[str, Any], rows: Any
                               ) -> tuple[float, Any]:
        """Detector forward, beam current and background, loss, and the detector adjoint
        (accumulating the current and background gradients): (L, dL/d conj(exit_wave))."""
        inten, det_cache = self._detect(exit_wave, idx, keep=True)
        del exit_wave
        current = None
        raw = None
        if "beam_current" in params:
            current = self._take_rows("current", params["beam_current"], sel)
            current = current.reshape(-1, *([1] * (inten.ndim - 1)))
            if "beam_current" in grads:
                raw = inten.copy()
            inten *= current
        if "static_background" in params:
            inten += params["static_background"] ** 2
        measured = self._measured_rows(sel, idx, rows)
        del rows
        if self._loss_overwrite:
            value, dldi = self.loss.value_and_grad(inten, measured, overwrite=True)
        else:
            value, dldi = self.loss.value_and_grad(inten, measured)
        if "static_background" in grads:
            grads["static_background"] += params["static_background"] * dldi.sum(axis=0)
        if raw is not None:
            per_n = (dldi * raw).reshape(raw.shape[0], -1).sum(axis=1)
            self._accumulate(grads["beam_current"], sel, 0.5 * per_n)
        if current is not None:
            dldi = dldi * current
        return value, self.detector.vjp(dldi, det_cache)

    def _accumulate(self, target: Any, sel: Any, values: Any) -> None:
        values = values.astype(target.dtype, copy=False)
        if isinstance(sel, slice):
            target[sel] += values
        else:  # indices within one batch are distinct
            target[sel] = target[sel] + values


#: backwards-compatible name (the default detector is the far field)
FarFieldModel = PtychographyModel
