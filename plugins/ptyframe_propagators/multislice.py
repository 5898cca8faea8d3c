"""Multislice propagator with a band-limited Fresnel kernel."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from ptyframe.components import PropagationGeometry, Propagator

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
        for i in range(gaps):
            dz = self.slice_thickness_A[min(i, len(self.slice_thickness_A) - 1)]
            kern = fresnel_kernel(geometry.shape, geometry.pixel_size_A,
                                  geometry.wavelength_A, dz) * mask
            self._kernels.append(dev.complex(kern))
        self._geometry = geometry

    def propagate(self, wave: Any, gap: int) -> Any:
        """Fresnel step across gap ``gap`` (after slice ``gap``)."""
        dev = self._geometry.device
        spec = dev.fft2(wave)
        spec *= self._kernels[gap]
        return dev.ifft2(spec, overwrite=True)

    def propagate_adjoint(self, grad: Any, gap: int) -> Any:
        dev = self._geometry.device
        spec = dev.fft2(grad)
        spec *= dev.xp.conj(self._kernels[gap])
        return dev.ifft2(spec, overwrite=True)

    def forward(self, wave: Any, transmission: Any, keep: bool = True) -> tuple[Any, Any]:
        n_slices = transmission.shape[0]
        if self._geometry is None or n_slices != self._geometry.n_slices:
            raise ValueError(f"transmission: expected {getattr(self._geometry, 'n_slices', '?')}"
                             f" slices (call prepare first), found {n_slices}")
        incoming = []
        psi = wave
        for s in range(n_slices):
            if keep:
                incoming.append(psi)
            psi = psi * transmission[s]
            if s < n_slices - 1:
                psi = self.propagate(psi, s)
        cache = (incoming, transmission, wave.shape) if keep else None
        return psi, cache

    def vjp(self, grad_exit: Any, cache: Any) -> tuple[Any, Any]:
        incoming, transmission, wave_shape = cache
        xp = self._geometry.device.xp
        n_slices = transmission.shape[0]
        grad_trans = xp.empty(transmission.shape, dtype=grad_exit.dtype)
        g = grad_exit
        for s in range(n_slices - 1, -1, -1):
            if s < n_slices - 1:
                g = self.propagate_adjoint(g, s)
            grad_trans[s] = reduce_to_shape(xp.conj(incoming[s]) * g, transmission.shape[1:])
            g = g * xp.conj(transmission[s])
        return reduce_to_shape(g, wave_shape), grad_trans
