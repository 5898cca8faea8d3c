"""Probe initializers: aperture + aberrations, or the measured mean pattern."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from ptyframe.components import InitContext, ProbeInitializer
from ptyframe.physics import aberration_function, aperture, spatial_frequencies

__all__ = ["ApertureProbe", "MeanPatternProbe", "add_probe_modes"]


def _fraction(_inst: Any, attribute: attrs.Attribute, value: float) -> None:
    if not 0 <= value < 1:
        raise ValueError(f"{attribute.name}: expected a fraction in [0, 1), found {value!r}")


def add_probe_modes(probe: np.ndarray, n_modes: int, extra_mode_power: float) -> np.ndarray:
    """Stack of ``n_modes`` mutually orthogonal modes built from one coherent probe.

    Extra modes are the probe times low-order polynomials in x and y (Hermite-like), made
    orthogonal by Gram-Schmidt; together they carry ``extra_mode_power`` of the total power.
    """
    ny, nx = probe.shape
    y = (np.arange(ny) - ny // 2)[:, None] / ny
    x = (np.arange(nx) - nx // 2)[None, :] / nx
    polys = [np.ones_like(y * x), x + 0 * y, y + 0 * x, x * y, x**2 - y**2, x**2 + y**2]
    modes = []
    for k in range(n_modes):
        p = probe * polys[k % len(polys)] * (1 + k // len(polys))
        for m in modes:
            p = p - np.vdot(m, p) / np.vdot(m, m) * m
        modes.append(p)
    power = float(np.sum(np.abs(probe) ** 2))
    out = np.empty((n_modes, ny, nx), dtype=complex)
    for k, m in enumerate(modes):
        if n_modes == 1:
            share = 1.0
        else:
            share = (1 - extra_mode_power) if k == 0 else extra_mode_power / (n_modes - 1)
        out[k] = m * np.sqrt(share * power / max(float(np.sum(np.abs(m) ** 2)), 1e-300))
    return out


def _intensity_scale(context: InitContext) -> float:
    if context.mean_pattern is not None:
        return float(np.sum(context.mean_pattern))
    return 1.0


@attrs.define(kw_only=True)
class ApertureProbe(ProbeInitializer):
    """Probe = IFFT[A(q) exp(-i chi(q))] from the experiment's aperture and aberrations.

    ``extra_defocus_A`` is added to the defocus (Å, positive = underfocus, i.e. subtracted from
    C10). ``edge_width_px``: soft aperture edge in detector pixels. The probe is scaled so that
    its total intensity equals the mean measured counts per pattern.
    """

    name = "aperture"
    extra_defocus_A: float = attrs.field(default=0.0, converter=float)
    edge_width_px: float = attrs.field(default=1.0, converter=float)
    extra_mode_power: float = attrs.field(default=0.1, converter=float, validator=_fraction)

    def coherent_spectrum(self, context: InitContext) -> np.ndarray:
        exp, grid = context.experiment, context.grid
        lam = exp.wavelength_A
        qy, qx = spatial_frequencies(grid.window, grid.pixel_size_A)
        dq = 1.0 / (grid.window[0] * grid.pixel_size_A)
        amp = aperture(np.hypot(qy, qx), lam, exp.convergence_angle_mrad, self.edge_width_px, dq)
        aberr = dict(exp.aberrations)
        aberr["C10"] = aberr.get("C10", 0.0) - self.extra_defocus_A
        chi = aberration_function(qy, qx, lam, aberr)
        return amp * np.exp(-1j * chi)

    def build(self, context: InitContext, n_modes: int) -> np.ndarray:
        probe = np.fft.fftshift(np.fft.ifft2(self.coherent_spectrum(context)))
        probe *= np.sqrt(_intensity_scale(context) / np.sum(np.abs(probe) ** 2))
        return add_probe_modes(probe, n_modes, self.extra_mode_power)


@attrs.define(kw_only=True)
class MeanPatternProbe(ApertureProbe):
    """Like ``aperture`` but with the Fourier amplitude sqrt(mean measured pattern)."""

    name = "mean_pattern"

    def coherent_spectrum(self, context: InitContext) -> np.ndarray:
        if context.mean_pattern is None:
            raise ValueError("probe initializer 'mean_pattern': needs measured data, found none")
        phase = np.angle(super().coherent_spectrum(context))
        amp = np.sqrt(np.clip(np.fft.ifftshift(context.mean_pattern), 0, None))
        return amp * np.exp(1j * phase)
