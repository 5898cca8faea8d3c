"""Penalties on the probe block P (n_probe_modes, ny, nx) or (n_probes, n_probe_modes, ny, nx):
complex, real space, centred at pixel (ny//2, nx//2). Every mode (and probe) is penalised.

Gradients are g = dR/d conj(P), of P's shape and dtype, on the device. A weight of 0 at an
epoch returns (0.0, {}). The probe carries the beam's counts (sum |P|^2 = counts per
pattern), so these penalties are in counts and their weights are per count.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import attrs
import numpy as np

from ptyframe.components import ModelContext
from ptyframe.core.physics import angle_to_frequency, soft_aperture, spatial_frequencies
from ptyframe.core.validators import non_negative, npy_path, positive, to_float
from ptyframe.io.array_settings import load_npy

from ._common import (
    BlockPenalty,
    weight_field,
)

__all__ = ["ProbeFourierMask", "ProbeWindow", "aperture_disk", "cosine_window"]


def _abs2(a: Any) -> Any:
    return a.real * a.real + a.imag * a.imag


def _sum(xp: Any, a: Any) -> float:
    return float(xp.sum(a, dtype=xp.float64))


def aperture_disk(window: tuple[int, int], pixel_size_A: float, wavelength_A: float,
                  radius_mrad: float, margin_px: float = 0.0) -> np.ndarray:
    """1 inside the disk of scattering semi-angle ``radius_mrad`` (plus ``margin_px``
    reciprocal pixels), 0 outside, (ny, nx) in FFT order (zero frequency at [0, 0]).
    Reciprocal pixel: 1 / (n * pixel_size_A) per axis (1/Å); angle = wavelength_A * |k|."""
    ky, kx = spatial_frequencies(window, pixel_size_A, sparse=True)
    k_max = angle_to_frequency(radius_mrad, wavelength_A) + margin_px / (max(window) * pixel_size_A)
    return soft_aperture(np.hypot(ky, kx), k_max * (1 + 1e-12))


@attrs.define(kw_only=True)
class ProbeFourierMask(BlockPenalty):
    """Probe power outside a reciprocal-space mask (the probe-forming aperture).

    R = weight * sum_{modes} sum_k |FFT(P)(k) (1 - mask(k))|^2

    with the orthonormal FFT, so R is the probe intensity (counts) scattered outside the
    aperture. The mask (values in [0, 1], 1 = allowed) is a disk (``radius_mrad``) or read
    from a file (``mask_path``).

    * ``weight``: weight of the penalty, per count, >= 0 (the reference's weight times
      ny * nx) [probe_reg_constraint_weight]
    * ``radius_mrad``: convergence semi-angle of the allowed disk, mrad (None: the
      experiment's convergence angle, unless ``mask_path`` is given)
    * ``edge_margin_px``: enlargement of the disk's radius, reciprocal pixels, >= 0
    * ``mask_path``: ``.npy`` mask of the probe window's shape, values in [0, 1], centred
      like a diffraction pattern (None: the disk) [probe_constraint_mask / aperture_mask]

    The disk is built in ``prepare`` from ``context.wavelength_A`` and the reciprocal pixel
    1 / (n * pixel_size_A) per axis (FFT order). The margin keeps the disk from cutting
    through the aperture's soft edge (about one pixel wide, centred on the nominal angle; see
    :func:`ptyframe.core.physics.aperture`), which would fight the data. A mask file has its zero
    frequency at pixel (ny//2, nx//2) and is shifted to FFT order here.

    A useful weight is comparable to the number of measurements (the data term's stiffness
    for the probe grows with it).

    Reference: probe_constraint_mask (given as mask_path), probe_reg_constraint_weight (the
    reference uses an unnormalised FFT, so its weight is this one divided by ny * nx). The
    reference's hard projection for an infinite weight is the constraint
    ``probe_fourier_projection``, not this penalty.
    """

    name = "probe_fourier_mask"
    weight: Any = weight_field(1.0)
    radius_mrad: float | None = attrs.field(default=None, converter=to_float,
                                            validator=positive(unit="mrad", optional=True))
    edge_margin_px: float = attrs.field(default=1.0, converter=to_float,
                                        validator=non_negative())
    mask_path: str | None = attrs.field(default=None, converter=npy_path(must_exist=True))
    _outside_host: Any = attrs.field(init=False, default=None, repr=False, eq=False)
    _outside: Any = attrs.field(init=False, default=None, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if self.radius_mrad is not None and self.mask_path is not None:
            raise ValueError(f"radius_mrad: give either radius_mrad or mask_path, not both "
                             f"(found radius_mrad={self.radius_mrad!r}, "
                             f"mask_path={self.mask_path!r})")

    def mask(self, context: ModelContext) -> np.ndarray:
        """The allowed region (ny, nx) in FFT order, host array in [0, 1]."""
        window = tuple(int(n) for n in context.window)
        if self.mask_path is not None:
            centred = load_npy("mask_path", self.mask_path, shape=window, low=0.0,
                               high=1.0).astype(float)
            return np.fft.ifftshift(centred)
        radius = self.radius_mrad
        if radius is None:
            radius = getattr(context.experiment, "convergence_angle_mrad", None)
            if radius is None:
                raise ValueError("radius_mrad: expected a semi-angle in mrad (or a mask_path); "
                                 "found None and the context has no experiment to take the "
                                 "convergence angle from")
        return aperture_disk(window, float(context.pixel_size_A), float(context.wavelength_A),
                             float(radius), self.edge_margin_px)

    def prepare(self, context: ModelContext) -> None:
        super().prepare(context)
        self._outside_host = 1.0 - self.mask(context)
        self._outside = None

    def outside(self, device: Any) -> Any:
        """1 - mask (ny, nx) in FFT order on ``device`` (cached)."""
        if self._outside_host is None:
            raise RuntimeError("probe_fourier_mask: call prepare(context) before "
                               "value_and_grad (the mask depends on the model grid)")
        key = (device.kind, np.dtype(device.real_dtype).name)
        if self._outside is None or self._outside[0] != key:
            self._outside = (key, device.real(self._outside_host))
        return self._outside[1]

    block: ClassVar[str] = "probe"

    def penalty(self, probe: Any, w: float, device: Any) -> tuple[float, Any] | None:
        outside = self.outside(device)
        if tuple(probe.shape[-2:]) != tuple(outside.shape):
            raise ValueError(f"probe: expected a window of {tuple(outside.shape)} pixels (the "
                             f"prepared mask), found {tuple(probe.shape[-2:])}")
        xp = device.xp
        outside = outside.astype(probe.real.dtype, copy=False)
        spectrum = device.fft2(probe, norm="ortho")
        spectrum *= outside
        value = w * _sum(xp, _abs2(spectrum))
        spectrum *= w * outside
        grad = device.ifft2(spectrum, norm="ortho", overwrite=True)
        return value, grad


def cosine_window(shape: tuple[int, int], inner: float, outer: float) -> np.ndarray:
    """Real-space window (ny, nx), centred at (ny//2, nx//2): 1 for rho <= inner, 0 for rho >=
    outer, 0.5 (1 + cos(pi (rho - inner) / (outer - inner))) between, with rho the distance
    from the centre in units of half the window width along each axis (rho = 1 at the
    middle of each edge)."""
    ny, nx = shape
    y = (np.arange(ny) - ny // 2)[:, None] / (ny / 2)
    x = (np.arange(nx) - nx // 2)[None, :] / (nx / 2)
    rho = np.hypot(y, x)
    t = np.clip((rho - inner) / (outer - inner), 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(math.pi * t))


def _window_pair(value: Any) -> Any:
    try:
        pair = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return value
    return pair


def _check_window(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    ok = (isinstance(value, tuple) and len(value) == 2 and all(math.isfinite(v) for v in value)
          and 0 <= value[0] < value[1])
    if not ok:
        raise ValueError(f"{attribute.name}: expected [inner, outer] fractions of half the "
                         f"probe width with 0 <= inner < outer, found {value!r}")


@attrs.define(kw_only=True)
class ProbeWindow(BlockPenalty):
    """Probe intensity near the edges of its real-space window (a probe that wraps around).

    R = weight * sum_{modes} sum_r |P(r) (1 - window(r))|^2

    * ``weight``: weight of the penalty, per count, >= 0 [window_weight]
    * ``window``: [inner, outer] radii, fractions of half the probe width: the window is 1
      inside inner, 0 beyond outer, a raised-cosine taper between [window]
    * ``window_path``: ``.npy`` real window of the probe window's shape, values in [0, 1],
      centred like the probe; replaces ``window`` (None: use ``window``) [window]

    See :func:`cosine_window`; the corners, at rho = sqrt(2), lie outside for outer <= 1.41.
    The probe passed in is never modified.

    Reference: window_weight, window (the reference scales its window in place by the weight
    on every call; not here).
    """

    name = "probe_window"
    weight: Any = weight_field(1.0)
    window: tuple[float, float] = attrs.field(default=(0.8, 1.0), converter=_window_pair,
                                              validator=_check_window)
    window_path: str | None = attrs.field(default=None, converter=npy_path(must_exist=True))
    _damping: Any = attrs.field(init=False, default=None, repr=False, eq=False)

    def damping(self, shape: tuple[int, int], device: Any) -> Any:
        """(1 - window)^2 (ny, nx) on the device (cached per shape)."""
        key = (tuple(shape), device.kind, np.dtype(device.real_dtype).name)
        if self._damping is None or self._damping[0] != key:
            if self.window_path is not None:
                window = load_npy("window_path", self.window_path, shape=tuple(shape), low=0.0,
                                  high=1.0).astype(float)
            else:
                window = cosine_window(tuple(shape), *self.window)
            self._damping = (key, device.real((1.0 - window) ** 2))
        return self._damping[1]

    def prepare(self, context: ModelContext) -> None:
        """Builds (and checks) the window for the model's probe window."""
        super().prepare(context)
        self._damping = None
        self.damping(tuple(int(n) for n in context.window), context.device)

    block: ClassVar[str] = "probe"

    def penalty(self, probe: Any, w: float, device: Any) -> tuple[float, Any] | None:
        xp = device.xp
        damping = self.damping(tuple(probe.shape[-2:]), device).astype(probe.real.dtype,
                                                                       copy=False)
        value = w * _sum(xp, _abs2(probe) * damping)
        grad = (w * damping) * probe
        return value, grad
