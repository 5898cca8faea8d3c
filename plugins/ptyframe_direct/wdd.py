"""Wigner distribution deconvolution (WDD) and its weak-phase variant (single side band, SSB).

Physics (ptyframe's conventions: I(k; R) = |FFT[P(r - R) O(r)](k)|^2, numpy's FFT sign; P~
the probe spectrum A(q) exp(-i chi(q)); k, q, Q in 1/Å; R, rho in Å). The Fourier transform of
the data over the scan,

    G(Q, k) = sum_R I(k; R) exp(-2 pi i Q.R)
            = sum_q P~(q) P~*(q + Q) O~(k - q) O~*(k - q - Q),

is a convolution over the detector coordinate, so the inverse FFT over the detector factorises
(Rodenburg & Bates 1992):

    H(Q, rho) = IFFT_k G(Q, k) ∝ chi_P(Q, rho) chi_O(Q, rho),
    chi_P(Q, rho) = IFFT_q [P~(q) P~*(q + Q)],   chi_O(Q, rho) = IFFT_k [O~(k) O~*(k - Q)].

``mode="wdd"``: chi_O = H chi_P* / (|chi_P|^2 + eps) (Wiener filter; ``eps = epsilon *
max|chi_P|^2``, the maximum being chi_P(0, 0)). Summing chi_O over rho evaluates
O~(k) O~*(k - Q) at k = 0, i.e. S(Q) = O~(0) O~*(-Q), so the object spectrum is
O~(Q) / O~(0) = conj(S(-Q)) / S(0) (normalised by the Q = 0 term) and the object is its
inverse FFT over the scan, scaled to a mean of 1. (rho = 0 alone would give O~ * O~, i.e.
|O|^2 only: no phase, hence the sum over rho.) The data is real, so G(-Q, k) = conj G(Q, k):
only half of the Q plane is transformed and stored; S(-Q) is computed from conj G(Q, k) with
chi_P(-Q, rho).

``mode="ssb"``: for a weak phase object O = 1 + i phi, G(Q, k) = i Phi(Q) c0 M(Q, k) with the
"trotters" M = P~(k - Q) P~*(k) - P~(k) P~*(k + Q) (aberration phases included) and c0 the
intensity scale (G(0, k) = N_scan c0 |P~(k)|^2). Phi(Q) = sum_k G M* / (i c0 (sum |M|^2 + eps))
-- the aberration-corrected side-band integration (Pennycook et al. 2015) over both side bands
at once, as a least-squares (matched) filter: triple-overlap regions enter with their proper
weight instead of being cut out. phi = IFFT(Phi) is real (Phi(-Q) = conj Phi(Q)).

Sampling: the object is recovered at the scan points: ``pixel_size_A`` = scan step, pixel
(iy, ix) = scan point (iy, ix), scan frame (see :mod:`ptyframe_direct._common` for the
rotation / transpose convention). Object frequencies up to the scan's Nyquist frequency are
recovered; information beyond 2 alpha (|Q| > twice the aperture radius) does not exist in the
data and is set to 0 (those Q are never computed).

Memory: the data is streamed in blocks of whole scan rows; each block is FFT'd along the fast
scan axis (rfft, only the kept |Qx| <= 2 alpha columns are stored), then the slow axis is
FFT'd in column blocks. The only large array is this half spectrum, complex,
(sy, n_Qx, n_k) -- at most about as many bytes as the data in float32 and not the full
complex 4D array; SSB keeps only the n_k detector pixels inside the aperture (the trotters
vanish elsewhere), WDD the whole detector. A half spectrum larger than ``spill_mb`` is kept
in a temporary HDF5 file and read back in blocks of scan rows, so that host memory stays
bounded for any scan (a 256 x 256 x 128^2 scan is 4.3 GB as a WDD half spectrum). The per-Q
work is done on the device in chunks of ``chunk_mb``.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from ptyframe.components import DirectMethod, DirectResult
from ptyframe.core.device import Device
from ptyframe.core.experiment import Experiment
from ptyframe.core.physics import (
    ABERRATION_NAMES,
    aberration_coefficients_array,
    angle_to_frequency,
    frequency_axis,
    spatial_frequencies,
)
from ptyframe.core.validators import boolean, finite, non_negative, one_of, positive, to_float

from ._common import (
    as_dataset,
    iter_scan_rows,
    probe_spectrum,
    scan_geometry,
)

__all__ = ["WDD"]

_MODES = ("wdd", "ssb")


def _aberrations(value: Any) -> dict[str, float] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"WDD.aberrations: expected None or a mapping {{Krivanek name: Å}}, "
                         f"found {value!r}")
    try:
        arr = aberration_coefficients_array(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"WDD.aberrations: {exc}") from None
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"WDD.aberrations: expected finite values in Å, found {dict(value)}")
    return {name: float(v) for name, v in zip(ABERRATION_NAMES, arr, strict=True)
            if name in value}


@attrs.define(kw_only=True)
class WDD(DirectMethod):
    """Wigner distribution deconvolution (``mode="wdd"``) or single-side-band (``"ssb"``)
    direct ptychography, streamed over the scan.

    * ``mode``: "wdd" (Wigner distribution deconvolution) or "ssb" (single side band, weak
      phase object)
    * ``epsilon``: Wiener constant (> 0), relative to max |chi_P|^2 (WDD) or to sum_k |P~(k)|^4
      (SSB)
    * ``aberrations``: probe aberrations, {Krivanek name: Å} (None: the experiment's)
    * ``rotation_deg``: rotation of the scan frame against the detector, degrees (None: the
      experiment's ``scan_rotation_deg``)
    * ``transpose``: whether the detector's (ky, kx) axes are swapped
    * ``edge_width_px``: width of the linear soft edge of the modelled aperture, detector
      pixels (0 = hard edge)
    * ``chunk_mb``: device memory of one block of work, MiB
    * ``spill_mb``: largest half spectrum kept in host memory, MiB (a larger one goes to a
      temporary HDF5 file, deleted after the run)
    * ``spill_dir``: folder of that temporary file (None: the system's temporary folder)

    Result arrays: ``phase`` (sy, sx) rad; ``amplitude`` (sy, sx) (WDD: |O| normalised to a
    mean object of 1; SSB: not produced); ``spectrum_weight`` (sy, sx): |chi_P| summed over
    rho (WDD) or sum |M|^2 (SSB) per scan frequency (zero frequency at pixel (sy/2, sx/2)),
    i.e. where information was transferred. Values: ``mode``, ``epsilon``, ``aberrations_A``,
    ``rotation_deg``, ``transpose``, ``q_max_inv_A``, ``n_frequencies``,
    ``half_spectrum_bytes``, ``origin_A``, ``pixel_size_yx_A``.
    """

    name = "wdd"
    mode: str = attrs.field(default="wdd", validator=one_of(_MODES))
    epsilon: float = attrs.field(default=1e-2, converter=to_float, validator=positive())
    aberrations: dict[str, float] | None = attrs.field(default=None, converter=_aberrations)
    rotation_deg: float | None = attrs.field(default=None,
                                             validator=finite(unit="degrees", optional=True))
    transpose: bool = attrs.field(default=False, validator=boolean())
    edge_width_px: float = attrs.field(default=1.0, converter=to_float,
                                       validator=non_negative(unit="detector pixels"))
    chunk_mb: float = attrs.field(default=64.0, converter=to_float,
                                  validator=positive())
    spill_mb: float = attrs.field(default=2048.0, converter=to_float, validator=positive())
    spill_dir: str | None = attrs.field(default=None, converter=attrs.converters.optional(str))

    # ------------------------------------------------------------------ helpers
    def _probe(self, qy: Any, qx: Any, experiment: Experiment, xp: Any) -> Any:
        return probe_spectrum(qy, qx, experiment, self.aberrations, xp, self.edge_width_px)

    def _q_max(self, experiment: Experiment) -> float:
        q_cut = angle_to_frequency(experiment.convergence_angle_mrad, experiment.wavelength_A)
        return 2.0 * (q_cut + 0.5 * self.edge_width_px * experiment.dk_inv_A) * (1 + 1e-9)

    @contextlib.contextmanager
    def _half_store(self, shape: tuple[int, int, int], dtype: Any) -> Iterator[Any]:
        """An array-like (sy, n_Qx, n_k) for the half spectrum: in memory up to ``spill_mb``,
        else an HDF5 dataset in a temporary file (deleted on exit)."""
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if nbytes <= self.spill_mb * 2**20:
            yield np.empty(shape, dtype=dtype)
            return
        import h5py

        if self.spill_dir is not None and not Path(self.spill_dir).is_dir():
            raise ValueError(f"WDD.spill_dir: expected an existing folder, found "
                             f"{self.spill_dir!r}")
        with tempfile.TemporaryDirectory(dir=self.spill_dir, prefix="ptyframe-wdd-") as tmp:
            with h5py.File(Path(tmp) / "half_spectrum.h5", "w") as f:
                yield f.create_dataset("half", shape=shape, dtype=dtype,
                                       chunks=(1, 1, shape[2]))

    def scan_spectrum(self, dataset: Any, scan: tuple[int, int], step: tuple[float, float],
                      q_max: float, device: Device, half: Any = None,
                      pixels: np.ndarray | None = None) -> tuple[Any, np.ndarray]:
        """Half spectrum over the scan: ``G[iy, j, :] = G(Qy[iy], Qx[u_j], k)`` (complex,
        detector in FFT order, flattened; only the flat detector ``pixels`` when given) and
        the kept column indices ``u``. ``half``: where to write it (an array-like of shape
        (sy, n_Qx, n_k), see :meth:`kept_columns`; default: a new host array)."""
        xp = device.xp
        sy, sx = scan
        ny, nx = dataset.pattern_shape
        kept = self.kept_columns(sx, step, q_max)
        kk = ny * nx if pixels is None else int(pixels.size)
        budget = self.chunk_mb * 2**20
        item = np.dtype(device.complex_dtype).itemsize
        if half is None:
            half = np.empty((sy, kept.size, kk), dtype=device.complex_dtype)
        kept_dev = device.asarray(kept)
        pix_dev = None if pixels is None else device.asarray(pixels)
        # rows budget: float32 block + complex rfft output (sx // 2 + 1 columns)
        row_bytes_factor = 1.0 + (sx // 2 + 1) * item / (4.0 * sx)
        for y0, y1, block in iter_scan_rows(dataset, scan, budget / (2 * row_bytes_factor)):
            b = device.asarray(block, dtype=device.real_dtype)
            if self.transpose:
                b = xp.swapaxes(b, -1, -2)
            b = xp.fft.ifftshift(b, axes=(-2, -1)).reshape(y1 - y0, sx, ny * nx)
            if pix_dev is not None:
                b = xp.take(b, pix_dev, axis=2)
            spec = xp.fft.rfft(b, axis=1)
            half[y0:y1] = device.to_host(xp.take(spec, kept_dev, axis=1))
        cols = max(1, int(budget // max(2 * sy * kk * item, 1)))
        for j0 in range(0, kept.size, cols):
            j1 = min(kept.size, j0 + cols)
            block = device.asarray(half[:, j0:j1])
            half[:, j0:j1] = device.to_host(xp.fft.fft(block, axis=0))
        return half, kept

    @staticmethod
    def kept_columns(sx: int, step: tuple[float, float], q_max: float) -> np.ndarray:
        """Indices u of the rfft columns Qx = u / (sx step_x) <= q_max that are stored."""
        qx_all = np.arange(sx // 2 + 1) / (sx * step[1])
        return np.flatnonzero(qx_all <= q_max)

    # ------------------------------------------------------------------ run
    def run(self, dataset: Any, experiment: Experiment, device: Device | None = None
            ) -> DirectResult:
        device = device if device is not None else Device("auto")
        xp = device.xp
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        dataset = as_dataset(dataset, experiment)
        scan, step = scan_geometry(dataset, experiment)
        ny, nx = dataset.pattern_shape
        if self.transpose:
            ny, nx = nx, ny
        sy, sx = scan
        q_max = self._q_max(experiment)
        qy, qx = spatial_frequencies((ny, nx), spacing_inv_A=experiment.dk_inv_A, xp=xp,
                                     dtype=device.real_dtype)
        p0 = self._probe(qy, qx, experiment, xp).astype(device.complex_dtype)
        # SSB: the trotters contain P~(k) in every term, so only pixels inside the aperture
        # are needed; WDD transforms over the whole detector
        pixels = (np.flatnonzero(device.to_host(xp.abs(p0)).ravel() > 0)
                  if self.mode == "ssb" else None)
        n_k = ny * nx if pixels is None else int(pixels.size)
        shape = (sy, int(self.kept_columns(sx, step, q_max).size), n_k)
        with self._half_store(shape, device.complex_dtype) as half:
            half, kept = self.scan_spectrum(dataset, scan, step, q_max, device, half, pixels)
            timings["scan_fft"] = time.perf_counter() - t0
            result = self._deconvolve(device, experiment, half, kept, pixels, p0, qy, qx,
                                      scan, step, q_max, timings, t0)
            result.values["half_spectrum_in_memory"] = isinstance(half, np.ndarray)
        return result

    def _deconvolve(self, device: Device, experiment: Experiment, half: Any, kept: np.ndarray,
                    pixels: np.ndarray | None, p0: Any, qy: Any, qx: Any,
                    scan: tuple[int, int], step: tuple[float, float], q_max: float,
                    timings: dict[str, float], t0: float) -> DirectResult:
        """Per-Q deconvolution from the half spectrum, the inverse FFT and the result."""
        xp = device.xp
        sy, sx = scan
        ny, nx = p0.shape
        t1 = time.perf_counter()
        rot = experiment.scan_rotation_deg if self.rotation_deg is None else self.rotation_deg
        theta = math.radians(rot)
        fy = frequency_axis(sy, step[0])
        fx = kept / (sx * step[1])
        iy_grid, j_grid = np.meshgrid(np.arange(sy), np.arange(kept.size), indexing="ij")
        q_scan_y = fy[iy_grid]
        q_scan_x = fx[j_grid]
        use = np.hypot(q_scan_y, q_scan_x) <= q_max
        pairs = np.stack([iy_grid[use], j_grid[use]], axis=1)
        qy_det = math.sin(theta) * q_scan_x[use] + math.cos(theta) * q_scan_y[use]
        qx_det = math.cos(theta) * q_scan_x[use] - math.sin(theta) * q_scan_y[use]

        p0_power = p0.real ** 2 + p0.imag ** 2
        pix_dev = None if pixels is None else device.asarray(pixels)
        item = np.dtype(device.complex_dtype).itemsize
        per_q = 10 * ny * nx * item
        chunk = max(1, int(self.chunk_mb * 2**20 // per_q))

        spectrum = np.zeros((sy, sx), dtype=complex)   # S(Q) (wdd) / Phi(Q) (ssb)
        weight = np.zeros((sy, sx))
        if self.mode == "wdd":
            chi_max = float(p0_power.sum()) / (ny * nx)  # chi_P(0, 0) with ifft2's 1/N
            eps = self.epsilon * chi_max**2
        else:
            eps = self.epsilon * float((p0_power**2).sum())
        for c0 in range(0, len(pairs), chunk):
            sel = slice(c0, c0 + chunk)
            iy = pairs[sel, 0]
            j = pairs[sel, 1]
            r0, r1 = int(iy.min()), int(iy.max()) + 1  # a block of whole rows (HDF5 too)
            g = device.asarray(half[r0:r1][iy - r0, j])
            if pixels is None:
                g = g.reshape(len(iy), ny, nx)
            dqy = device.asarray(qy_det[sel], dtype=device.real_dtype)[:, None, None]
            dqx = device.asarray(qx_det[sel], dtype=device.real_dtype)[:, None, None]
            p_plus = self._probe(qy + dqy, qx + dqx, experiment, xp)
            p_minus = self._probe(qy - dqy, qx - dqx, experiment, xp)
            u = kept[j]
            # -Q lies in the stored half plane itself for Qx = 0 and at the Nyquist column
            # (computed there directly); elsewhere it is obtained from conj G(Q, k)
            mirror = (u > 0) & (2 * u != sx)
            my, mu = (-iy[mirror]) % sy, (-u[mirror]) % sx
            if self.mode == "wdd":
                s_plus, w_plus = self._wdd_sum(device, g, p0, p_plus, eps)
                spectrum[iy, u] = s_plus
                weight[iy, u] = w_plus
                if mirror.any():
                    sel_m = device.asarray(np.flatnonzero(mirror))
                    s_minus, w_minus = self._wdd_sum(device, xp.conj(g[sel_m]), p0,
                                                     p_minus[sel_m], eps)
                    spectrum[my, mu] = s_minus
                    weight[my, mu] = w_minus
            else:
                m = (p_minus * xp.conj(p0) - p0 * xp.conj(p_plus)).reshape(len(iy), -1)
                m = xp.take(m, pix_dev, axis=1)
                num = (g * xp.conj(m)).sum(axis=-1)
                den = (m.real ** 2 + m.imag ** 2).sum(axis=-1)
                phi = device.to_host(num / (1j * (den + eps)))
                den_h = device.to_host(den)
                spectrum[iy, u] = phi
                weight[iy, u] = den_h
                spectrum[my, mu] = np.conj(phi[mirror])
                weight[my, mu] = den_h[mirror]
        timings["deconvolution"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        arrays: dict[str, np.ndarray] = {}
        units = {"phase": "rad", "spectrum_weight": "a.u."}
        if self.mode == "wdd":
            s0 = spectrum[0, 0]
            if not abs(s0) > 0:
                raise ValueError("data: the Q = 0 term of the deconvolved Wigner distribution "
                                 "is 0 (no intensity in the patterns?)")
            obj_spec = np.conj(spectrum[(-np.arange(sy)) % sy][:, (-np.arange(sx)) % sx]) / s0
            obj = np.fft.ifft2(obj_spec) * (sy * sx)
            arrays["phase"] = np.angle(obj)
            arrays["amplitude"] = np.abs(obj)
            units["amplitude"] = "1"
        else:
            # intensity scale: G(0, k) = N_scan c0 |P~(k)|^2
            g0 = device.asarray(half[0, 0])
            c_scale = float(device.to_host((g0.real * xp.take(p0_power.ravel(), pix_dev))
                                           .sum())) / (
                sy * sx * float(device.to_host((p0_power**2).sum())))
            if not c_scale > 0:
                raise ValueError("data: no intensity inside the bright-field disk; check the "
                                 "detector calibration and convergence angle")
            spectrum[0, 0] = 0.0
            arrays["phase"] = np.fft.ifft2(spectrum / c_scale).real
        arrays["phase"] = arrays["phase"] - arrays["phase"].mean()
        arrays["spectrum_weight"] = np.fft.fftshift(weight)
        timings["inverse_fft"] = time.perf_counter() - t2
        timings["total"] = time.perf_counter() - t0
        aberrations = experiment.aberrations if self.aberrations is None else self.aberrations
        values = {
            "mode": self.mode,
            "epsilon": self.epsilon,
            "aberrations_A": {k: float(v) for k, v in aberrations.items()},
            "rotation_deg": float(rot),
            "transpose": bool(self.transpose),
            "q_max_inv_A": float(q_max),
            "n_frequencies": int(np.count_nonzero(weight)),
            "half_spectrum_bytes": int(half.nbytes),
            "origin_A": [0.0, 0.0],
            "pixel_size_yx_A": [float(step[0]), float(step[1])],
            "scan_shape": [int(sy), int(sx)],
        }
        return DirectResult(method=self.name, arrays=arrays, values=values,
                            pixel_size_A=float(math.sqrt(step[0] * step[1])),
                            timings_s=timings, units=units)

    @staticmethod
    def _wdd_sum(device: Device, g: Any, p0: Any, p_shift: Any, eps: float
                 ) -> tuple[np.ndarray, np.ndarray]:
        """S(Q) = sum_rho H chi_P* / (|chi_P|^2 + eps) for a chunk of Q (G: (c, ny, nx))."""
        xp = device.xp
        chi_p = device.ifft2((p0 * xp.conj(p_shift)).astype(device.complex_dtype))
        h = device.ifft2(g.astype(device.complex_dtype))
        power = chi_p.real ** 2 + chi_p.imag ** 2
        s = (h * xp.conj(chi_p) / (power + eps)).sum(axis=(-2, -1))
        w = xp.sqrt(power).sum(axis=(-2, -1))
        return device.to_host(s), device.to_host(w)
