"""Multislice propagator with a band-limited Fresnel kernel."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import attrs
import numpy as np

from ptyframe.components import PropagationGeometry, Propagator
from ptyframe.core.device import Workspace
from ptyframe.core.physics import band_limit_mask, frequency_axis, spatial_frequencies
from ptyframe.core.validators import in_range

__all__ = ["Multislice", "fresnel_kernel", "reduce_to_shape",
           "tilted_kernel", "tilt_gradient", "check_tilts"]


def fresnel_kernel(shape: tuple[int, int], pixel_size_A: float, wavelength_A: float,
                   dz_A: float) -> np.ndarray:
    """exp(-i pi lambda dz q^2) in FFT order (q in 1/Å)."""
    qy, qx = spatial_frequencies(shape, pixel_size_A, sparse=True)
    return np.exp(-1j * np.pi * wavelength_A * dz_A * (qy**2 + qx**2))


def reduce_to_shape(array: Any, shape: tuple[int, ...]) -> Any:
    """Sum ``array`` over the axes along which ``shape`` was broadcast."""
    if array.shape == tuple(shape):
        return array
    lead = array.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and array.shape[lead + i] != 1)
    return array.sum(axis=axes, keepdims=True).reshape(shape)


def tilted_kernel(kernel: Any, q: tuple[Any, Any], tilts: Any, dz_A: float, xp: Any,
                  out: Any = None) -> Any:
    """Per-measurement kernel (B, ny, nx): ``kernel`` exp(-2 pi i dz (q_y t_y + q_x t_x)).

    ``kernel``: (ny, nx) Fresnel kernel (band limit included); ``q``: (q_y (ny,), q_x (nx,))
    in 1/Å; ``tilts``: (B, 2) radians [t_y, t_x]. Together with the Fresnel factor this is
    exp(-i pi dz (lambda q^2 + 2 q.t)): a shift of the propagated wave by dz t (Å).
    """
    qy, qx = q
    cdt = kernel.dtype
    ey = xp.exp((-2j * np.pi * dz_A) * (tilts[:, 0, None] * qy[None, :])).astype(cdt, copy=False)
    ex = xp.exp((-2j * np.pi * dz_A) * (tilts[:, 1, None] * qx[None, :])).astype(cdt, copy=False)
    shape = (tilts.shape[0], kernel.shape[-2], kernel.shape[-1])
    out = xp.empty(shape, dtype=cdt) if out is None else out
    xp.multiply(ey[:, :, None], ex[:, None, :], out=out)
    out *= kernel
    return out


def tilt_gradient(grad_spec: Any, out_spec: Any, q: tuple[Any, Any], dz_A: float,
                  xp: Any) -> Any:
    """1/2 dL/dt (B, 2) of one tilted propagation step y = IFFT[FFT(x) K(t)].

    ``grad_spec`` = FFT(dL/d conj(y)), ``out_spec`` = FFT(y) = FFT(x) K, both (..., B, ny, nx)
    (unnormalised FFTs). With dK/dt_y = -2 pi i dz q_y K:
    1/2 dL/dt_y = Re <g, dy/dt_y> = (2 pi dz / N) sum q_y Im(conj(G) Y), N = ny nx;
    leading axes (modes) are summed.
    """
    qy, qx = q
    prod = xp.conjugate(grad_spec)
    prod *= out_spec
    im = prod.imag
    if im.ndim > 3:
        im = im.reshape(-1, *im.shape[-3:]).sum(axis=0)
    npx = im.shape[-2] * im.shape[-1]
    scale = 2.0 * np.pi * dz_A / npx
    gy = im.sum(axis=-1) @ qy
    gx = im.sum(axis=-2) @ qx
    return scale * xp.stack([gy, gx], axis=1)


def check_tilts(tilts: Any, wave_shape: tuple[int, ...], xp: Any, dtype: Any) -> Any:
    """``tilts`` as a (B, 2) real device array; ValueError when B differs from axis -3."""
    t = xp.asarray(tilts)
    n = wave_shape[-3] if len(wave_shape) >= 3 else 1
    if t.ndim != 2 or t.shape[1] != 2 or t.shape[0] != n:
        raise ValueError(f"tilts: expected shape ({n}, 2) radians [t_y, t_x], one per "
                         f"measurement along axis -3 of the wave, found {tuple(t.shape)}")
    if t.dtype.kind == "c":
        raise ValueError("tilts: expected real radians, found a complex array")
    return t.astype(dtype, copy=False)


def _slice_distances(value: Any) -> tuple[float, ...]:
    values = tuple(float(v) for v in np.atleast_1d(np.asarray(value, dtype=float)))
    if not values or any((not np.isfinite(v)) or v < 0 for v in values):
        raise ValueError(
            f"slice_thickness_A: expected one non-negative thickness in Å or one per gap, "
            f"found {value!r}"
        )
    return values


@attrs.define(kw_only=True)
class Multislice(Propagator):
    """Split-step multislice: transmit by each slice, Fresnel-propagate across each gap.

    * ``slice_thickness_A``: distance between consecutive slices, Å: one value for every gap or
      one per gap (n_slices - 1 values) [slice_distances]
    * ``damping_cutoff``: band limit of the propagation kernel, fraction of Nyquist, in
      (0, 1.5] (2/3: the anti-aliasing limit) [damping_cutoff_multislice]
    * ``rolloff``: width of a smooth cosine taper ending at the cutoff, fraction of Nyquist
      (0 = hard edge) [smooth_rolloff]

    The default cutoff 2/3 is the anti-aliasing limit of the product of two band-limited
    functions.

    Tilts inside the specimen (``forward(..., tilts=)``, (B, 2) radians [t_y, t_x]): every
    Fresnel step across a gap dz uses exp(-i pi dz (lambda q^2 + 2 q.t)) times the band limit,
    i.e. the wave drifts by dz t (Å) per gap; ``vjp`` then also returns 1/2 dL/dt.
    """

    name = "multislice"
    supports_tilts: ClassVar[bool] = True
    uses_workspace: ClassVar[bool] = True
    single_slice_product: ClassVar[bool] = True

    slice_thickness_A: tuple[float, ...] = attrs.field(default=(1.0,),
                                                       converter=_slice_distances)
    damping_cutoff: float = attrs.field(default=2.0 / 3.0, converter=float,
                                        validator=in_range(0.0, 1.5, low_open=True,
                                                           unit="fraction of Nyquist"))
    rolloff: float = attrs.field(default=0.0, converter=float)
    _kernels: list[Any] = attrs.field(factory=list, init=False, repr=False)
    _kernels_conj: list[Any] = attrs.field(factory=list, init=False, repr=False)
    # the same kernels times 1/N (N pixels): the inverse FFT's scaling folded into the
    # product with the kernel (one pass less over the wave per step)
    _kernels_n: list[Any] = attrs.field(factory=list, init=False, repr=False)
    _kernels_conj_n: list[Any] = attrs.field(factory=list, init=False, repr=False)
    _geometry: PropagationGeometry | None = attrs.field(default=None, init=False, repr=False)
    _q: tuple[Any, Any] | None = attrs.field(default=None, init=False, repr=False)

    def prepare(self, geometry: PropagationGeometry) -> None:
        super().prepare(geometry)
        gaps = geometry.n_slices - 1
        if len(self.slice_thickness_A) not in (1, gaps) and gaps > 0:
            raise ValueError(
                f"slice_thickness_A: expected 1 or n_slices - 1 = {gaps} values, found "
                f"{len(self.slice_thickness_A)}"
            )
        dev = geometry.device
        self._geometry = geometry
        self._kernels = []
        self._kernels_conj = []
        inv_n = 1.0 / (geometry.shape[0] * geometry.shape[1])
        for i in range(gaps):
            kern = self.distance_kernel(self.gap_thickness(i))
            self._kernels.append(dev.complex(kern))
            self._kernels_conj.append(dev.complex(np.conj(kern)))
        self._kernels_n = [k * inv_n for k in self._kernels]
        self._kernels_conj_n = [k * inv_n for k in self._kernels_conj]
        ny, nx = geometry.shape
        self._q = (dev.real(frequency_axis(ny, geometry.pixel_size_A)),
                   dev.real(frequency_axis(nx, geometry.pixel_size_A)))

    def gap_thickness(self, gap: int) -> float:
        """Distance (Å) of gap ``gap`` (between slice ``gap`` and ``gap + 1``)."""
        return self.slice_thickness_A[min(gap, len(self.slice_thickness_A) - 1)]

    def distance_kernel(self, dz_A: float) -> np.ndarray:
        """Host kernel exp(-i pi lambda dz q^2) times the band limit, (ny, nx)."""
        g = self._geometry
        mask = band_limit_mask(g.shape, self.damping_cutoff, self.rolloff)
        return fresnel_kernel(g.shape, g.pixel_size_A, g.wavelength_A, dz_A) * mask

    def _check_slices(self, transmission: Any) -> int:
        n_slices = transmission.shape[0]
        if self._geometry is None or n_slices != self._geometry.n_slices:
            raise ValueError(f"transmission: expected {getattr(self._geometry, 'n_slices', '?')}"
                             f" slices (call prepare first), found {n_slices}")
        return n_slices

    # ------------------------------------------------------------------ Fresnel steps
    def propagate(self, wave: Any, gap: int, overwrite: bool = False) -> Any:
        """Fresnel step across gap ``gap`` (after slice ``gap``): IFFT[FFT(psi) K].

        ``overwrite``: work in the memory of ``wave`` (its content is lost)."""
        return self._filter(wave, self._kernels_n[gap], overwrite, prescaled=True)

    def propagate_adjoint(self, grad: Any, gap: int, overwrite: bool = False) -> Any:
        """Adjoint Fresnel step: IFFT[FFT(g) conj(K)]."""
        return self._filter(grad, self._kernels_conj_n[gap], overwrite, prescaled=True)

    def _filter(self, wave: Any, kernel: Any, overwrite: bool, prescaled: bool = False) -> Any:
        """IFFT[FFT(wave) kernel]; ``prescaled``: ``kernel`` already carries the inverse
        transform's 1/N (the inverse is then unnormalised)."""
        dev = self._geometry.device
        spec = dev.fft2(wave, overwrite=overwrite)
        spec *= kernel
        return dev.ifft2(spec, norm="forward" if prescaled else None, overwrite=True)

    # ------------------------------------------------------------------ forward / adjoint
    def forward(self, wave: Any, transmission: Any, keep: bool = True, *, tilts: Any = None,
                workspace: Workspace | None = None) -> tuple[Any, Any]:
        """psi_0 = wave; psi_{s+1} = P_s(psi_s T_s); exit = psi_{S-1} T_{S-1}.

        ``tilts``: optional (B, 2) radians, one tilt inside the specimen per measurement along
        axis -3 of ``wave``; P_s then carries the tilt ramp (see the class docstring) and is
        applied with per-measurement kernels instead of :meth:`propagate`.
        ``workspace``: optional :class:`~ptyframe.core.device.Workspace` owned by the caller. With
        it, the slice waves and gradients live in reused buffers (no allocation per call), the
        returned exit wave and the cache are valid until the next call with that workspace,
        and :meth:`vjp` may overwrite ``wave``, ``transmission`` and ``grad_exit`` in place.
        Without it nothing passed in is modified.
        """
        n_slices = self._check_slices(transmission)
        owned = workspace is not None
        dev = self._geometry.device
        ws = workspace if owned else dev.workspace()
        xp = dev.xp
        shape = np.broadcast_shapes(wave.shape, transmission.shape[1:])
        dtype = np.result_type(wave.dtype, transmission.dtype)
        kernels = self._kernels
        spectra: list[Any] = []
        if tilts is not None:
            tilts = check_tilts(tilts, wave.shape, xp, dev.real_dtype)
            # one (B, ny, nx) kernel per distinct gap thickness, shared by its gaps
            by_distance: dict[float, Any] = {}
            for s in range(n_slices - 1):
                dz = self.gap_thickness(s)
                if dz not in by_distance:
                    buf = ws.get(f"ms_tilt_kernel{len(by_distance)}",
                                 (tilts.shape[0], *shape[-2:]), self._kernels[s].dtype)
                    by_distance[dz] = tilted_kernel(self._kernels[s], self._q, tilts, dz, xp,
                                                    out=buf)
            kernels = [by_distance[self.gap_thickness(s)] for s in range(n_slices - 1)]
        incoming = [wave]
        psi = wave
        chunk = self._chunk(wave, transmission, owned, tilts)
        for s in range(n_slices):
            # keep=True: every slice's incident wave stays for the adjoint (own buffer each);
            # keep=False: after the first product everything happens in one buffer.
            if chunk is not None and s < n_slices - 1:
                # product, Fresnel step, in cache-sized chunks (one pass over memory)
                dst = ws.get(f"ms_wave{s + 1}", shape, dtype) if (s == 0 or keep) else psi
                psi = self._product_step(psi, transmission[s], dst, s, chunk)
                if keep:
                    incoming.append(psi)
                continue
            if s == 0 or keep:
                name = "ms_exit" if s == n_slices - 1 else f"ms_wave{s + 1}"
                psi = xp.multiply(psi, transmission[s], out=ws.get(name, shape, dtype))
            else:
                psi *= transmission[s]
            if s < n_slices - 1:
                if tilts is not None and keep:
                    # the tilt gradient needs FFT(psi_{s+1}) = FFT(psi_s T_s) K_s
                    spec = dev.fft2(psi, overwrite=True)
                    spec *= kernels[s]
                    kept = ws.get(f"ms_spec{s}", shape, dtype)
                    kept[...] = spec
                    spectra.append(kept)
                    psi = dev.ifft2(spec, overwrite=True)
                elif tilts is not None:
                    psi = self._filter(psi, kernels[s], overwrite=True)
                else:  # the overridable untilted step
                    psi = self.propagate(psi, s, overwrite=True)
                if keep:
                    incoming.append(psi)
        if not keep:
            return psi, None
        cache = (incoming, transmission, wave.shape, ws, owned,
                 None if tilts is None else (kernels, spectra), chunk)
        return psi, cache

    # ------------------------------------------------------------------ cache-sized chunks
    def _chunk(self, wave: Any, transmission: Any, owned: bool, tilts: Any) -> int | None:
        """Planes per chunk for the fused untilted steps, or None for whole-array steps
        (GPU, tilts, no workspace, a subclass's own Fresnel step, other layouts). The
        layout: wave (1 or K, M, B, ny, nx), transmission (S, K, 1, B, ny, nx), one dtype,
        C-contiguous."""
        dev = self._geometry.device
        if (not owned or tilts is not None or wave.ndim != 5 or transmission.ndim != 6
                or type(self).propagate is not Multislice.propagate
                or type(self).propagate_adjoint is not Multislice.propagate_adjoint):
            return None
        K = transmission.shape[1]
        if (wave.shape[0] not in (1, K) or transmission.shape[2:] != (1, *wave.shape[2:])
                or wave.dtype != transmission.dtype
                or not (wave.flags.c_contiguous and transmission.flags.c_contiguous)):
            return None
        plane = wave.shape[-2] * wave.shape[-1] * wave.dtype.itemsize
        return dev.chunk_planes(plane, plane * K * math.prod(wave.shape[1:3]))

    def _filter_in_place(self, block: Any, kernel: Any) -> None:
        """block <- IFFT[FFT(block) kernel], ``kernel`` carrying the inverse's 1/N."""
        dev = self._geometry.device
        spec = dev.fft2(block, overwrite=True)
        spec *= kernel
        out = dev.ifft2(spec, norm="forward", overwrite=True)
        if out is not block:  # providers that could not work in place
            block[...] = out

    def _product_step(self, psi: Any, t: Any, dst: Any, gap: int, chunk: int) -> Any:
        """dst[k, m] = P_gap(psi[k, m] t[k, 0]) (psi broadcast over k when it has one row),
        chunk by chunk along the measurement axis: the product, FFT, kernel and inverse FFT of
        each chunk run while it is in cache. ``dst`` may be ``psi``."""
        xp = self._geometry.device.xp
        kernel = self._kernels_n[gap]
        K, M, B = dst.shape[:3]
        for k in range(K):
            for m in range(M):
                src = psi[k if psi.shape[0] > 1 else 0, m]
                for b0 in range(0, B, chunk):
                    block = dst[k, m, b0:b0 + chunk]
                    xp.multiply(src[b0:b0 + chunk], t[k, 0, b0:b0 + chunk], out=block)
                    self._filter_in_place(block, kernel)
        return dst

    def _adjoint_step(self, g: Any, a: Any, t: Any, out: Any, gap: int, chunk: int) -> None:
        """g <- P_gap^H g, then out[k] = sum_m conj(a[k, m]) g[k, m] and g *= conj(t), chunk by
        chunk (modes added in order m = 0, 1, ... as in the whole-array kernel)."""
        kernels = self._geometry.device.kernels
        kernel = self._kernels_conj_n[gap]
        K, M, B = g.shape[:3]
        for k in range(K):
            for m in range(M):
                src = a[k if a.shape[0] > 1 else 0, m]
                for b0 in range(0, B, chunk):
                    block = g[k, m, b0:b0 + chunk]
                    self._filter_in_place(block, kernel)
                    kernels.slice_adjoint_add(src[b0:b0 + chunk], block,
                                              t[k, 0, b0:b0 + chunk], out[k, 0, b0:b0 + chunk],
                                              first=m == 0)

    def vjp(self, grad_exit: Any, cache: Any) -> tuple[Any, ...]:
        """Adjoint, slice by slice from the exit surface:

        dL/d conj(T_s) = sum over broadcast axes of conj(psi_s) g_s,
        g_{s-1} = P_{s-1}^H (g_s conj(T_s)),  dL/d conj(wave) = g_0 summed to the wave shape.
        With tilts, also 1/2 dL/dt (B, 2) from each step (see :func:`tilt_gradient`).
        """
        incoming, transmission, wave_shape, ws, owned, tilted, chunk = cache
        dev = self._geometry.device
        xp = dev.xp
        n_slices = transmission.shape[0]
        grad_trans = ws.get("ms_grad_trans", transmission.shape, grad_exit.dtype)
        grad_tilts = None
        if tilted is not None:
            kernels, spectra = tilted
            grad_tilts = xp.zeros((kernels[0].shape[0] if kernels else wave_shape[-3], 2),
                                  dtype=dev.real_dtype)
            conj: dict[int, Any] = {}  # conj(K) per distinct kernel, in work buffers
            for k in kernels:
                if id(k) not in conj:
                    conj[id(k)] = xp.conjugate(k, out=ws.get(f"ms_tilt_kconj{len(conj)}",
                                                             k.shape, k.dtype))
        g = grad_exit if owned else grad_exit.copy()
        for s in range(n_slices - 1, -1, -1):
            if chunk is not None and s < n_slices - 1:
                self._adjoint_step(g, incoming[s], transmission[s], grad_trans[s], s, chunk)
                continue
            if s < n_slices - 1:
                if tilted is None:
                    g = self.propagate_adjoint(g, s, overwrite=True)
                else:
                    spec = dev.fft2(g, overwrite=True)
                    grad_tilts += tilt_gradient(spec, spectra[s], self._q,
                                                self.gap_thickness(s), xp)
                    spec *= conj[id(kernels[s])]
                    g = dev.ifft2(spec, overwrite=True)
            a, t, out = incoming[s], transmission[s], grad_trans[s]
            if (owned and a.ndim >= 4 and a.shape == g.shape
                    and t.shape == out.shape == (*a.shape[:-4], 1, *a.shape[-3:])):
                # the usual step in one call: fused on CPU with Device(fused="numba")
                dev.kernels.slice_adjoint(a, g, t, out,
                                          ws.get("ms_product", g.shape, out.dtype))
                continue
            self._conj_product(a, g, out, ws, owned, dev.kernels)
            # the slice's transmission is not needed any more: conj in place when allowed
            t_conj = xp.conjugate(t, out=t if owned else None)
            g *= t_conj
        if grad_tilts is None:
            return reduce_to_shape(g, wave_shape), grad_trans
        return reduce_to_shape(g, wave_shape), grad_trans, grad_tilts

    @staticmethod
    def _conj_product(a: Any, g: Any, out: Any, ws: Workspace, owned: bool,
                      kernels: Any) -> None:
        """out = conj(a) g summed over the axes along which ``out`` is broadcast (probe modes
        for the transmission gradient). ``a`` is destroyed when ``owned``."""
        xp = ws.xp
        product_shape = np.broadcast_shapes(a.shape, g.shape)
        pairs = list(zip(out.shape, product_shape, strict=False))
        axes = tuple(i for i, (n_out, n_prod) in enumerate(pairs) if n_out == 1 and n_prod != 1)
        if (owned and a.shape == g.shape == product_shape and len(product_shape) == out.ndim
                and len(axes) == 1):
            # the usual case (one mode axis summed): the Device's kernel, fused on CPU with
            # Device(fused="numba")
            prod = ws.get("ms_product", product_shape, out.dtype)
            kernels.conj_mode_sum(a, g, out, axes[0], prod)
            return
        if owned and a.shape == g.shape == out.shape:
            kernels.conj_multiply(a, g, out)
            return
        a_conj = xp.conjugate(a, out=a if owned else None)
        if product_shape == out.shape:
            xp.multiply(a_conj, g, out=out)
            return
        prod = ws.get("ms_product", product_shape, out.dtype)
        xp.multiply(a_conj, g, out=prod)
        if len(product_shape) != out.ndim:
            out[...] = reduce_to_shape(prod, out.shape)
            return
        xp.sum(prod, axis=axes, keepdims=True, out=out)
