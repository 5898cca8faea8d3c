"""Probe initializers: aperture + aberrations, the measured mean pattern, a binary aperture
estimated from the data, or a probe read from a file.

Every probe is complex (n_modes, ny, nx), real space, centred at pixel (ny // 2, nx // 2), and
scaled so that its total intensity (summed over modes and pixels) equals the counts of the mean
measured pattern (1 without data). Conventions (see :mod:`ptyframe.core.physics`): aberrations in
Krivanek notation (Å), C10 = -defocus; a positive extra defocus (Å) is an underfocus,
subtracted from C10; the spectrum is ``A(q) exp(-i chi(q))`` (times an optional beam CTF).

Probe modes (n_modes > 1), by default: the coherent probe times low-order polynomials,
orthogonalised, the first mode carrying ``1 - extra_mode_power`` of the power and the others
sharing the rest. Options of :class:`ApertureProbe` (and its subclasses): ``hermite_modes``
(Hermite-Gauss modulated modes) or ``defocus_spread_A`` (one coherent probe per defocus).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np
from numpy.polynomial import hermite as _hermite

from ptyframe.components import InitContext, ProbeInitializer
from ptyframe.core.physics import (
    ABERRATION_NAMES,
    aberration_coefficients_array,
    aberration_function,
    aperture,
    spatial_frequencies,
)
from ptyframe.core.validators import fraction, npy_path, positive, to_float
from ptyframe.io.array_settings import load_npy

__all__ = ["ApertureProbe", "MeanPatternProbe", "BinaryApertureProbe", "ProbeFromFile",
           "add_probe_modes", "extra_orthogonal_modes", "hermite_probe_modes",
           "orthogonalize_modes"]


# --------------------------------------------------------------------------- validators
def _hermite_orders(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        nx, ny = value
        ok = all(int(v) == v and int(v) >= 1 for v in (nx, ny))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"hermite_modes: expected (nx, ny), the numbers of Hermite orders "
                         f"along x and y (integers >= 1), or None, found {value!r}")
    return int(nx), int(ny)


def _defocus_list(value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        values = tuple(float(v) for v in np.atleast_1d(np.asarray(value, dtype=float)))
    except (TypeError, ValueError):
        values = ()
    if not values or not all(np.isfinite(values)):
        raise ValueError(f"defocus_spread_A: expected a non-empty list of defoci in Å (one per "
                         f"probe mode), or None, found {value!r}")
    return values


def _aberration_override(value: Any) -> dict[str, float] | None:
    """{Krivanek name: Å} from a dict or a Krivanek-ordered list (None: the experiment's)."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        aberration_coefficients_array(value)  # validates the names
        return {str(k): float(v) for k, v in value.items()}
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise ValueError(f"aberrations: expected {{name: Å}} or a list of coefficients in "
                         f"Krivanek order ({', '.join(ABERRATION_NAMES[:8])}, ...), or None, "
                         f"found {value!r}")
    coeffs = np.asarray(value, dtype=float).ravel()
    aberration_coefficients_array(coeffs)  # validates the length
    if not np.all(np.isfinite(coeffs)):
        raise ValueError(f"aberrations: expected finite coefficients, found {list(coeffs)}")
    return {ABERRATION_NAMES[k]: float(c) for k, c in enumerate(coeffs)}


# --------------------------------------------------------------------------- mode builders
def orthogonalize_modes(modes: Sequence[np.ndarray], name: str = "probe modes",
                        tolerance: float = 1e-8) -> list[np.ndarray]:
    """Gram-Schmidt (modified, applied twice for accuracy) in the given order; the norms of
    the outputs are what is left of each input after removing the earlier ones. Raises
    ValueError naming ``name`` when a mode is (numerically) a combination of earlier ones."""
    out: list[np.ndarray] = []
    for k, mode in enumerate(modes):
        p = np.array(mode, dtype=complex)
        norm0 = float(np.linalg.norm(p))
        for _ in range(2):
            for m in out:
                p = p - np.vdot(m, p) / np.vdot(m, m) * m
        if not norm0 > 0 or np.linalg.norm(p) <= tolerance * norm0:
            raise ValueError(f"{name}: mode {k} is linearly dependent on the earlier modes "
                             f"(too many modes for this probe)")
        out.append(p)
    return out


def _share_power(modes: Sequence[np.ndarray], power: float, extra_mode_power: float
                 ) -> np.ndarray:
    """Stack with mode 0 carrying (1 - extra_mode_power) * power, the others sharing the
    rest equally (a single mode carries all of it)."""
    n = len(modes)
    out = np.empty((n, *modes[0].shape), dtype=complex)
    for k, m in enumerate(modes):
        share = 1.0 if n == 1 else ((1 - extra_mode_power) if k == 0
                                    else extra_mode_power / (n - 1))
        out[k] = m * np.sqrt(share * power / max(float(np.sum(np.abs(m) ** 2)), 1e-300))
    return out


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
    return _share_power(modes, float(np.sum(np.abs(probe) ** 2)), extra_mode_power)


def hermite_orders(orders: tuple[int, int], n_modes: int) -> list[tuple[int, int]]:
    """The first ``n_modes`` (i, j) with i < nx (x order), j < ny (y order), sorted by total
    order i + j, then by the y order j."""
    nx, ny = orders
    pairs = sorted(((i, j) for i in range(nx) for j in range(ny)), key=lambda p: (p[0] + p[1],
                                                                                   p[1]))
    if n_modes > len(pairs):
        raise ValueError(f"hermite_modes: {orders} gives {len(pairs)} modes (nx * ny), found "
                         f"n_modes={n_modes}; raise the orders or lower n_probe_modes")
    return pairs[:n_modes]


def hermite_probe_modes(probe: np.ndarray, orders: tuple[int, int], n_modes: int,
                        extra_mode_power: float) -> np.ndarray:
    """``n_modes`` Hermite-Gauss modulated modes of a coherent probe, orthogonalised.

    Mode (i, j) = probe * H_i(u) * H_j(v) with H_n the physicists' Hermite polynomials and
    u = (x - x0) / (sqrt(2) s_x), v = (y - y0) / (sqrt(2) s_y), where (y0, x0) is the centroid
    and (s_y, s_x) the RMS widths (pixels) of |probe|^2 (for a Gaussian probe these are exactly
    its Hermite-Gauss modes). Modes are taken in the order of :func:`hermite_orders`,
    orthogonalised by Gram-Schmidt, and share the probe's power as in :func:`add_probe_modes`.
    """
    total = float(np.sum(np.abs(probe) ** 2))
    candidates = [_hermite_mode(probe, i, j) for i, j in hermite_orders(orders, n_modes)]
    modes = orthogonalize_modes(candidates, "hermite_modes")
    return _share_power(modes, total, extra_mode_power)


def _hermite_mode(probe: np.ndarray, i: int, j: int) -> np.ndarray:
    """probe * H_i(u) H_j(v) with the scaled coordinates of :func:`hermite_probe_modes`."""
    ny, nx = probe.shape
    weight = np.abs(probe) ** 2
    total = float(weight.sum())
    if not total > 0:
        raise ValueError("probe: expected a non-zero probe to build Hermite modes from")
    y = np.arange(ny, dtype=float)[:, None]
    x = np.arange(nx, dtype=float)[None, :]
    y0 = float((weight * y).sum() / total)
    x0 = float((weight * x).sum() / total)
    sy = np.sqrt(float((weight * (y - y0) ** 2).sum() / total))
    sx = np.sqrt(float((weight * (x - x0) ** 2).sum() / total))
    u = (x - x0) / (np.sqrt(2) * max(sx, 1e-6))
    v = (y - y0) / (np.sqrt(2) * max(sy, 1e-6))
    return probe * _hermite.hermval(u, [0] * i + [1]) * _hermite.hermval(v, [0] * j + [1])


def extra_orthogonal_modes(modes: Sequence[np.ndarray], n_extra: int,
                           tolerance: float = 1e-6) -> list[np.ndarray]:
    """``n_extra`` modes orthogonal to ``modes`` and to each other: Hermite-Gauss modulations
    of ``modes[0]`` (lowest total order first, see :func:`hermite_probe_modes`), skipping
    those (numerically) in the span of the modes already there."""
    basis = orthogonalize_modes(modes, "probe modes")
    added: list[np.ndarray] = []
    max_order = int(np.ceil(np.sqrt(len(modes) + n_extra))) + 2
    for i, j in hermite_orders((max_order, max_order), max_order * max_order)[1:]:
        if len(added) == n_extra:
            break
        p = _hermite_mode(modes[0], i, j)
        norm0 = float(np.linalg.norm(p))
        for _ in range(2):
            for m in basis:
                p = p - np.vdot(m, p) / np.vdot(m, m) * m
        if np.linalg.norm(p) > tolerance * norm0:
            basis.append(p)
            added.append(p)
    if len(added) < n_extra:
        raise ValueError(f"probe modes: cannot add {n_extra} independent modes to this probe")
    return added


def _intensity_scale(context: InitContext) -> float:
    if context.mean_pattern is not None:
        return float(np.sum(context.mean_pattern))
    return 1.0


def _scaled(modes: np.ndarray, context: InitContext) -> np.ndarray:
    """Modes with their total intensity set to the mean measured counts per pattern."""
    power = float(np.sum(np.abs(modes) ** 2))
    if not power > 0:
        raise ValueError("probe: the initial probe is zero everywhere (aperture, mask or file)")
    return modes * np.sqrt(_intensity_scale(context) / power)


def _window(context: InitContext) -> tuple[int, int]:
    return (int(context.grid.window[0]), int(context.grid.window[1]))


def _check_mean_pattern(context: InitContext, who: str) -> np.ndarray:
    if context.mean_pattern is None:
        raise ValueError(f"probe initializer {who!r}: needs measured data, found none")
    mean = np.asarray(context.mean_pattern, dtype=float)
    if mean.shape != _window(context):
        raise ValueError(f"mean pattern: expected the window shape {_window(context)}, found "
                         f"{mean.shape}")
    return mean


# --------------------------------------------------------------------------- initializers
@attrs.define(kw_only=True)
class ApertureProbe(ProbeInitializer):
    """Probe = IFFT[A(q) exp(-i chi(q)) CTF(q)] from the experiment's aperture and aberrations.

    * ``extra_defocus_A``: defocus added to the experiment's, Å, positive = underfocus
      (subtracted from C10; the reference's value with the sign flipped) [extra_probe_defocus]
    * ``edge_width_px``: width of the aperture's linear soft edge, reciprocal pixels of the
      probe window (0 = hard edge)
    * ``extra_mode_power``: fraction of the total power carried by the modes after the first
      together, in [0, 1)
    * ``aberrations``: aberrations replacing the experiment's, Å, as {Krivanek name: Å} or a
      list in Krivanek order starting C10, C12a, C12b, C21a (None: the experiment's)
    * ``hermite_modes``: (nx, ny) numbers of Hermite orders along x and y for Hermite-Gauss
      probe modes (None: polynomial modes) [n_hermite_probe_modes]
    * ``defocus_spread_A``: one extra defocus per probe mode, Å, added like
      ``extra_defocus_A`` [defocus_spread_modes]
    * ``beam_ctf``: path of a ``.npy`` complex (ny, nx) array, centred, multiplying the probe
      spectrum (None: no CTF) [beam_ctf]

    The probe is scaled so that its total intensity equals the mean measured counts per
    pattern. Modes (n_modes > 1): by default polynomial-modulated copies of the probe,
    orthogonalised, carrying ``extra_mode_power`` together. With ``hermite_modes`` = (nx, ny):
    Hermite-Gauss modulated modes H_i(x) H_j(y) probe with i < nx, j < ny, lowest total order
    first, orthogonalised (n_modes <= nx * ny; the reference's highest orders (ny, nx) are
    (nx + 1, ny + 1) here). With ``defocus_spread_A``: one coherent probe per extra defocus,
    not orthogonalised, one value per mode (mode 0 carries ``1 - extra_mode_power``).
    """

    name = "aperture"
    extra_defocus_A: float = attrs.field(default=0.0, converter=float)
    edge_width_px: float = attrs.field(default=1.0, converter=float)
    extra_mode_power: float = attrs.field(default=0.1, converter=to_float, validator=fraction())
    aberrations: dict[str, float] | None = attrs.field(default=None,
                                                       converter=_aberration_override)
    hermite_modes: tuple[int, int] | None = attrs.field(default=None, converter=_hermite_orders)
    defocus_spread_A: tuple[float, ...] | None = attrs.field(default=None,
                                                             converter=_defocus_list)
    beam_ctf: str | None = attrs.field(default=None, converter=npy_path())
    _ctf: Any = attrs.field(default=None, init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if not np.isfinite(self.extra_defocus_A):
            raise ValueError(f"extra_defocus_A: expected a finite defocus in Å, found "
                             f"{self.extra_defocus_A!r}")
        if self.hermite_modes is not None and self.defocus_spread_A is not None:
            raise ValueError("hermite_modes: expected either hermite_modes or "
                             "defocus_spread_A, found both")
        if self.beam_ctf is not None:
            ctf = load_npy("beam_ctf", self.beam_ctf)
            if ctf.ndim != 2:
                raise ValueError(f"beam_ctf: expected a 2-D (ny, nx) array, found shape "
                                 f"{ctf.shape}")
            self._ctf = ctf.astype(complex)

    # ------------------------------------------------------------------ spectrum pieces
    def amplitude(self, context: InitContext) -> np.ndarray:
        """Aperture amplitude A(q) in FFT order, (ny, nx)."""
        exp, grid = context.experiment, context.grid
        qy, qx = spatial_frequencies(grid.window, grid.pixel_size_A)
        dq = 1.0 / (grid.window[0] * grid.pixel_size_A)
        return aperture(np.hypot(qy, qx), exp.wavelength_A, exp.convergence_angle_mrad,
                        self.edge_width_px, dq)

    def phase_factor(self, context: InitContext, defocus_offset_A: float = 0.0) -> np.ndarray:
        """exp(-i chi(q)) CTF(q) in FFT order with the (overridden) aberrations and the extra
        defocus ``extra_defocus_A + defocus_offset_A`` (Å, underfocus positive)."""
        exp, grid = context.experiment, context.grid
        qy, qx = spatial_frequencies(grid.window, grid.pixel_size_A)
        aberr = dict(exp.aberrations if self.aberrations is None else self.aberrations)
        aberr["C10"] = aberr.get("C10", 0.0) - self.extra_defocus_A - float(defocus_offset_A)
        factor = np.exp(-1j * aberration_function(qy, qx, exp.wavelength_A, aberr))
        if self._ctf is not None:
            if self._ctf.shape != tuple(grid.window):
                raise ValueError(f"beam_ctf: expected shape {tuple(grid.window)} (the probe "
                                 f"window), found {self._ctf.shape}")
            factor = factor * np.fft.ifftshift(self._ctf)
        return factor

    def coherent_spectrum(self, context: InitContext, defocus_offset_A: float = 0.0
                          ) -> np.ndarray:
        """Spectrum (FFT order) of the coherent probe."""
        return self.amplitude(context) * self.phase_factor(context, defocus_offset_A)

    # ------------------------------------------------------------------ build
    def build(self, context: InitContext, n_modes: int) -> np.ndarray:
        if n_modes < 1:
            raise ValueError(f"n_modes: expected at least 1 probe mode, found {n_modes}")

        def probe_of(spectrum: np.ndarray) -> np.ndarray:
            return np.fft.fftshift(np.fft.ifft2(spectrum))

        if self.defocus_spread_A is not None:
            if len(self.defocus_spread_A) != n_modes:
                raise ValueError(f"defocus_spread_A: expected one defocus per probe mode "
                                 f"({n_modes}), found {len(self.defocus_spread_A)} values")
            modes = [probe_of(self.coherent_spectrum(context, df))
                     for df in self.defocus_spread_A]
            return _scaled(_share_power(modes, 1.0, self.extra_mode_power), context)
        probe = probe_of(self.coherent_spectrum(context))
        if not np.any(probe):
            raise ValueError("probe: the initial probe is zero everywhere (aperture or mask)")
        if self.hermite_modes is not None:
            modes = hermite_probe_modes(probe, self.hermite_modes, n_modes,
                                        self.extra_mode_power)
        else:
            modes = add_probe_modes(probe, n_modes, self.extra_mode_power)
        return _scaled(modes, context)


@attrs.define(kw_only=True)
class MeanPatternProbe(ApertureProbe):
    """Like ``aperture`` but with the Fourier amplitude sqrt(mean measured pattern)
    (reference ``mean_pattern``); phase, CTF and mode options as for ``aperture``.

    * ``edge_width_px``: not used (the amplitude comes from the mean pattern)
    """

    name = "mean_pattern"

    def amplitude(self, context: InitContext) -> np.ndarray:
        mean = _check_mean_pattern(context, self.name)
        return np.sqrt(np.clip(np.fft.ifftshift(mean), 0, None))


@attrs.define(kw_only=True)
class BinaryApertureProbe(ApertureProbe):
    """Aperture estimated from the data (reference ``estimate_aperture_based_on_binary``):
    A(q) = 1 where the mean measured pattern exceeds ``threshold`` times its mean over the
    detector, else 0; phase (aberrations, extra defocus), CTF and mode options as for
    ``aperture``. Useful when the convergence angle or the disk position is not known well.

    * ``threshold``: the aperture is where the mean measured pattern exceeds this multiple
      (> 0) of its mean over the detector [estimate_aperture_based_on_binary]
    * ``edge_width_px``: not used (the aperture is binary)
    """

    name = "binary_aperture"
    threshold: float = attrs.field(default=1.0, converter=to_float, validator=positive())

    def aperture_mask(self, context: InitContext) -> np.ndarray:
        """Boolean (ny, nx) aperture, centred (the mean pattern's order)."""
        mean = _check_mean_pattern(context, self.name)
        mask = mean > self.threshold * float(mean.mean())
        if not mask.any():
            raise ValueError(f"threshold: no pixel of the mean pattern exceeds {self.threshold}"
                             f" times its mean; lower the threshold")
        return mask

    def amplitude(self, context: InitContext) -> np.ndarray:
        return np.fft.ifftshift(self.aperture_mask(context)).astype(float)


@attrs.define(kw_only=True)
class ProbeFromFile(ProbeInitializer):
    """Probe read from a .npy file (complex, real space, centred), e.g. a previous run's.

    * ``path``: ``.npy`` file of the probe, complex, real space, centred; required [probe]
    * ``layout``: axis order of the file: "modes_first" (modes, ny, nx) (ptyframe's),
      "reference" (ny, nx, modes) (the reference tool's cp.npy) or "auto"
    * ``extra_mode_power``: fraction of the total power carried together by the modes added
      when the file has fewer modes than asked for, in [0, 1)
    * ``rescale``: whether to set the total intensity to the mean measured counts per pattern
      (needs measured data; false keeps the file's scale)

    "auto": a 2-D array is one mode; a 3-D array whose trailing or leading two axes match the
    window, refused when both do. With more modes than asked for, the first n_modes are kept;
    with fewer, extra Hermite-Gauss modulated modes of the first one (orthogonal to all,
    :func:`extra_orthogonal_modes`) are added.
    """

    name = "probe_from_file"
    path: str = attrs.field(converter=str)
    layout: str = attrs.field(default="auto")
    extra_mode_power: float = attrs.field(default=0.1, converter=to_float, validator=fraction())
    rescale: bool = attrs.field(default=True)
    _probe: Any = attrs.field(default=None, init=False, repr=False, eq=False)

    @layout.validator
    def _check_layout(self, attribute: attrs.Attribute, value: Any) -> None:
        if value not in ("auto", "modes_first", "reference"):
            raise ValueError(f"layout: expected 'auto', 'modes_first' or 'reference', found "
                             f"{value!r}")

    @rescale.validator
    def _check_rescale(self, attribute: attrs.Attribute, value: Any) -> None:
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"rescale: expected true or false, found {value!r}")

    def __attrs_post_init__(self) -> None:
        probe = load_npy("path", self.path)
        if probe.ndim not in (2, 3):
            raise ValueError(f"path: expected a probe (ny, nx), (modes, ny, nx) or (ny, nx, "
                             f"modes) in {self.path!r}, found shape {probe.shape}")
        if probe.ndim == 2 and self.layout != "auto":
            probe = probe[None] if self.layout == "modes_first" else probe[..., None]
        self._probe = probe.astype(complex)

    def modes_first(self, window: tuple[int, int]) -> np.ndarray:
        """The file's probe as (modes, ny, nx)."""
        probe = self._probe
        if probe.ndim == 2:
            stack = probe[None]
        elif self.layout == "modes_first":
            stack = probe
        elif self.layout == "reference":
            stack = np.moveaxis(probe, -1, 0)
        else:
            first, last = probe.shape[1:] == window, probe.shape[:2] == window
            if first and last:
                raise ValueError(f"layout: {probe.shape} in {self.path!r} fits both layouts "
                                 f"for window {window}; set layout to 'modes_first' or "
                                 f"'reference'")
            stack = probe if first else np.moveaxis(probe, -1, 0)
        if stack.shape[1:] != window:
            raise ValueError(f"path: expected a probe on the window {window}, found shape "
                             f"{probe.shape} ({self.layout} layout) in {self.path!r}")
        return stack

    def build(self, context: InitContext, n_modes: int) -> np.ndarray:
        if n_modes < 1:
            raise ValueError(f"n_modes: expected at least 1 probe mode, found {n_modes}")
        stack = self.modes_first(_window(context))
        if not np.any(stack[0]):
            raise ValueError(f"path: the first probe mode in {self.path!r} is zero")
        if stack.shape[0] >= n_modes:
            out = np.array(stack[:n_modes])
        else:
            added = extra_orthogonal_modes(list(stack), n_modes - stack.shape[0])
            file_power = float(np.sum(np.abs(stack) ** 2))
            each = self.extra_mode_power * file_power / (1 - self.extra_mode_power) / len(added)
            out = np.stack([*stack, *(m * np.sqrt(each / float(np.sum(np.abs(m) ** 2)))
                                      for m in added)])
        return _scaled(out, context) if (self.rescale and context.mean_pattern is not None) \
            else out
