"""Multislice propagator with a band-limited Fresnel kernel."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from ptyframe.components import PropagationGeometry, Propagator
from ptyframe.device import Workspace

__all__ = ["Multislice", "fresnel_kernel", "band_limit_mask", "reduce_to_shape"]


def band_limit_mask(shape: tuple[int, int], cutoff: float, rolloff: float = 0.0) -> np.ndarray:
    """Radial mask in FFT order: 1 below ``cutoff`` x Nyquist, 0 above.

    ``rolloff`` > 0 replaces the hard edge by a cosine taper of that width (fraction of
    Nyquist) ending at the cutoff.
    """
    fy = np.fft.fftfreq(shape[0])[:, None] / 0.5
    fx = np.fft.fftfreq(shape[1])[None, :] / 0.5
    r = np.sqrt(fy**2 + fx**2)  # 1 = Nyquist along an axis
    if rolloff <= 0:
        return (r <= cutoff).astype(float)
    t = np.clip((cutoff - r) / rolloff, 0.0, 1.0)
    return np.sin(0.5 * np.pi * t) ** 2


def fresnel_kernel(shape: tuple[int, int], pixel_size_A: float, wavelength_A: float,
                   dz_A: float) -> np.ndarray:
    """exp(-i pi lambda dz q^2) in FFT order (q in 1/Å)."""
    qy = np.fft.fftfreq(shape[0], pixel_size_A)[:, None]
    qx = np.fft.fftfreq(shape[1], pixel_size_A)[None, :]
    return np.exp(-1j * np.pi * wavelength_A * dz_A * (qy**2 + qx**2))


def reduce_to_shape(array: Any, shape: tuple[int, ...]) -> Any:
    """Sum ``array`` over the axes along which ``shape`` was broadcast."""
    if array.shape == tuple(shape):
        return array
    lead = array.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and array.shape[lead + i] != 1)
    return array.sum(axis=axes, keepdims=True).reshape(shape)


def _slice_distances(value: Any) -> tuple[float, ...]:
    values = tuple(float(v) for v in np.atleast_1d(np.asarray(value, dtype=float)))
    if not values or any((not np.isfinite(v)) or v < 0 for v in values):
        raise ValueError(
            f"slice_thickness_A: expected one non-negative thickness in Å or one per gap, "
            f"found {value!r}"
        )
    return values


def _unit_interval(_inst: Any, attribute: attrs.Attribute, value: float) -> None:
    if not 0 < value <= 1.5:
        raise ValueError(f"{attribute.name}: expected a fraction of Nyquist in (0, 1.5], "
                         f"found {value!r}")


@attrs.define(kw_only=True)
class Multislice(Propagator):
    """Split-step multislice: transmit by each slice, Fresnel-propagate across each gap.

    ``slice_thickness_A``: one distance for every gap or one per gap (n_slices - 1 values), Å.
    ``damping_cutoff``: band limit of the propagation kernel as a fraction of Nyquist
    (default 2/3, the anti-aliasing limit of the product of two band-limited functions).
    ``rolloff``: width of a smooth cosine taper below the cutoff (fraction of Nyquist).
    """

    name = "multislice"

    slice_thickness_A: tuple[float, ...] = attrs.field(default=(1.0,),
                                                       converter=_slice_distances)
    damping_cutoff: float = attrs.field(default=2.0 / 3.0, converter=float,
                                        validator=_unit_interval)
    rolloff: float = attrs.field(default=0.0, converter=float)
    _kernels: list[Any] = attrs.field(factory=list, init=False, repr=False)
    _kernels_conj: list[Any] = attrs.field(factory=list, init=False, repr=False)
    _geometry: PropagationGeometry | None = attrs.field(default=None, init=False, repr=False)

    def prepare(self, geometry: PropagationGeometry) -> None:
        gaps = geometry.n_slices - 1
        if len(self.slice_thickness_A) not in (1, gaps) and gaps > 0:
            raise ValueError(
                f"slice_thickness_A: expected 1 or n_slices - 1 = {gaps} values, found "
                f"{len(self.slice_thickness_A)}"
            )
        dev = geometry.device
        mask = band_limit_mask(geometry.shape, self.damping_cutoff, self.rolloff)
        self._kernels = []
        self._kernels_conj = []
        for i in range(gaps):
            dz = self.slice_thickness_A[min(i, len(self.slice_thickness_A) - 1)]
            kern = fresnel_kernel(geometry.shape, geometry.pixel_size_A,
                                  geometry.wavelength_A, dz) * mask
            self._kernels.append(dev.complex(kern))
            self._kernels_conj.append(dev.complex(np.conj(kern)))
        self._geometry = geometry

    # ------------------------------------------------------------------ Fresnel steps
    def propagate(self, wave: Any, gap: int, overwrite: bool = False) -> Any:
        """Fresnel step across gap ``gap`` (after slice ``gap``): IFFT[FFT(psi) K].

        ``overwrite``: work in the memory of ``wave`` (its content is lost)."""
        return self._filter(wave, self._kernels[gap], overwrite)

    def propagate_adjoint(self, grad: Any, gap: int, overwrite: bool = False) -> Any:
        """Adjoint Fresnel step: IFFT[FFT(g) conj(K)]."""
        return self._filter(grad, self._kernels_conj[gap], overwrite)

    def _filter(self, wave: Any, kernel: Any, overwrite: bool) -> Any:
        dev = self._geometry.device
        spec = dev.fft2(wave, overwrite=overwrite)
        spec *= kernel
        return dev.ifft2(spec, overwrite=True)

    # ------------------------------------------------------------------ forward / adjoint
    def forward(self, wave: Any, transmission: Any, keep: bool = True,
                workspace: Workspace | None = None) -> tuple[Any, Any]:
        """psi_0 = wave; psi_{s+1} = P_s(psi_s T_s); exit = psi_{S-1} T_{S-1}.

        ``workspace``: optional :class:`~ptyframe.device.Workspace` owned by the caller. With
        it, the slice waves and gradients live in reused buffers (no allocation per call), the
        returned exit wave and the cache are valid until the next call with that workspace,
        and :meth:`vjp` may overwrite ``wave``, ``transmission`` and ``grad_exit`` in place.
        Without it nothing passed in is modified.
        """
        n_slices = transmission.shape[0]
        if self._geometry is None or n_slices != self._geometry.n_slices:
            raise ValueError(f"transmission: expected {getattr(self._geometry, 'n_slices', '?')}"
                             f" slices (call prepare first), found {n_slices}")
        owned = workspace is not None
        ws = workspace if owned else self._geometry.device.workspace()
        xp = self._geometry.device.xp
        shape = np.broadcast_shapes(wave.shape, transmission.shape[1:])
        dtype = np.result_type(wave.dtype, transmission.dtype)
        incoming = [wave]
        psi = wave
        for s in range(n_slices):
            # keep=True: every slice's incident wave stays for the adjoint (own buffer each);
            # keep=False: after the first product everything happens in one buffer.
            if s == 0 or keep:
                name = "ms_exit" if s == n_slices - 1 else f"ms_wave{s + 1}"
                psi = xp.multiply(psi, transmission[s], out=ws.get(name, shape, dtype))
            else:
                psi *= transmission[s]
            if s < n_slices - 1:
                psi = self.propagate(psi, s, overwrite=True)
                if keep:
                    incoming.append(psi)
        cache = (incoming, transmission, wave.shape, ws, owned) if keep else None
        return psi, cache

    def vjp(self, grad_exit: Any, cache: Any) -> tuple[Any, Any]:
        """Adjoint, slice by slice from the exit surface:

        dL/d conj(T_s) = sum over broadcast axes of conj(psi_s) g_s,
        g_{s-1} = P_{s-1}^H (g_s conj(T_s)),  dL/d conj(wave) = g_0 summed to the wave shape.
        """
        incoming, transmission, wave_shape, ws, owned = cache
        xp = self._geometry.device.xp
        n_slices = transmission.shape[0]
        grad_trans = ws.get("ms_grad_trans", transmission.shape, grad_exit.dtype)
        g = grad_exit if owned else grad_exit.copy()
        for s in range(n_slices - 1, -1, -1):
            if s < n_slices - 1:
                g = self.propagate_adjoint(g, s, overwrite=True)
            self._conj_product(incoming[s], g, grad_trans[s], ws, owned)
            # the slice's transmission is not needed any more: conj in place when allowed
            t_conj = xp.conjugate(transmission[s], out=transmission[s] if owned else None)
            g *= t_conj
        return reduce_to_shape(g, wave_shape), grad_trans

    @staticmethod
    def _conj_product(a: Any, g: Any, out: Any, ws: Workspace, owned: bool) -> None:
        """out = conj(a) g summed over the axes along which ``out`` is broadcast (probe modes
        for the transmission gradient). ``a`` is destroyed when ``owned``."""
        xp = ws.xp
        a_conj = xp.conjugate(a, out=a if owned else None)
        product_shape = np.broadcast_shapes(a.shape, g.shape)
        if product_shape == out.shape:
            xp.multiply(a_conj, g, out=out)
            return
        prod = ws.get("ms_product", product_shape, out.dtype)
        xp.multiply(a_conj, g, out=prod)
        if len(product_shape) != out.ndim:
            out[...] = reduce_to_shape(prod, out.shape)
            return
        pairs = zip(out.shape, product_shape, strict=True)
        axes = tuple(i for i, (n_out, n_prod) in enumerate(pairs) if n_out == 1 and n_prod != 1)
        xp.sum(prod, axis=axes, keepdims=True, out=out)
