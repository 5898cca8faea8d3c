"""Electron optics for every backend: wavelength, interaction constant, spatial frequencies,
the aberration function chi and its derivatives, apertures, aberration names.

The one place for these formulas: plugins call them instead of writing their own. Array
functions take the array namespace ``xp`` (numpy by default; cupy works since only ``xp``
functions are used) and return arrays of that namespace.

Units: voltages in kV, lengths (aberration coefficients, pixels) in Å, angles in mrad unless a
name says otherwise, spatial frequencies in 1/Å, phases in rad. Aberrations in Krivanek a/b
notation: chi(theta, phi) = (2 pi / lambda) sum_nm C_nm theta^(n+1) / (n+1)
{1 | cos m phi | sin m phi}, theta = lambda |q|, phi = atan2(qy, qx); C10 = -defocus
(positive C10 = overfocus); the probe is IFFT[A(q) exp(-i chi(q))].
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "HC_KEV_A",
    "ELECTRON_REST_KEV",
    "ABERRATION_NAMES",
    "aberration_order",
    "wavelength_A",
    "interaction_constant",
    "angle_to_frequency",
    "frequency_to_angle",
    "frequency_axis",
    "spatial_frequencies",
    "nyquist_radius",
    "band_limit_mask",
    "gaussian_transfer",
    "shift_ramp",
    "aberration_coefficients_array",
    "aberration_basis",
    "aberration_function",
    "aberration_gradient_basis",
    "aberration_gradient",
    "soft_aperture",
    "aperture",
]

#: h*c in keV*Å; the one constant used everywhere for the wavelength.
HC_KEV_A = 12.398419843320026
#: electron rest energy, keV
ELECTRON_REST_KEV = 510.99895

#: Krivanek a/b notation, in the order used by aberration arrays (all in Å).
ABERRATION_NAMES: tuple[str, ...] = (
    "C10", "C12a", "C12b",
    "C21a", "C21b", "C23a", "C23b",
    "C30", "C32a", "C32b", "C34a", "C34b",
    "C41a", "C41b", "C43a", "C43b", "C45a", "C45b",
    "C50", "C52a", "C52b", "C54a", "C54b", "C56a", "C56b",
)

_NAME_PATTERN = re.compile(r"C(\d)(\d)([ab]?)")

ArrayLike = Any  # an array of the namespace ``xp`` (numpy or cupy)
Aberrations = Mapping[str, float] | Sequence[float] | np.ndarray | None


# ---------------------------------------------------------------------------- names
def aberration_order(name: str) -> tuple[int, int, str]:
    """(order n, symmetry m, part) of a Krivanek name: 'C10' -> (1, 0, ''),
    'C23b' -> (2, 3, 'b'). Valid names have m <= n + 1, n + m odd, and a part 'a' (cos m phi)
    or 'b' (sin m phi) exactly when m > 0; anything else is a ValueError naming the name."""
    match = _NAME_PATTERN.fullmatch(name) if isinstance(name, str) else None
    if match is not None:
        n, m, part = int(match.group(1)), int(match.group(2)), match.group(3)
        if n >= 1 and m <= n + 1 and (n + m) % 2 == 1 and (part != "") == (m > 0):
            return n, m, part
    raise ValueError(f"aberration name: expected Krivanek notation Cnm with a/b for m > 0 "
                     f"(C10, C12a, C12b, C21a, ...), found {name!r}")


def _angular(m: int, part: str, phi: ArrayLike, xp: Any) -> tuple[Any, Any]:
    """g(m phi) and its derivative dg/dphi: (1, 0), (cos m phi, -m sin m phi) for 'a',
    (sin m phi, m cos m phi) for 'b'."""
    if m == 0:
        return xp.ones_like(phi), xp.zeros_like(phi)
    if part == "a":
        return xp.cos(m * phi), -m * xp.sin(m * phi)
    return xp.sin(m * phi), m * xp.cos(m * phi)


# ---------------------------------------------------------------------------- constants
def wavelength_A(voltage_kV: float) -> float:
    """Relativistic electron wavelength in Å for an accelerating voltage in kV
    (lambda = hc / sqrt((2 E0 + V) V), E0 the rest energy in keV)."""
    if voltage_kV <= 0:
        raise ValueError(f"voltage_kV: expected a positive voltage, found {voltage_kV}")
    v = float(voltage_kV)
    return HC_KEV_A / np.sqrt((2.0 * ELECTRON_REST_KEV + v) * v)


def interaction_constant(voltage_kV: float) -> float:
    """Interaction constant sigma in rad/(V*Å): phase = sigma * projected potential."""
    lam = wavelength_A(voltage_kV)
    e0 = ELECTRON_REST_KEV
    v = float(voltage_kV)
    # sigma = 2 pi m e lambda / h^2 = (2 pi / (lambda V)) * (E0 + eV) / (2 E0 + eV)
    return 2 * np.pi / (lam * v * 1e3) * (e0 + v) / (2 * e0 + v)


def angle_to_frequency(angle_mrad: Any, wavelength_A: float) -> Any:
    """Spatial frequency (1/Å) of a scattering angle in mrad: q = angle / lambda."""
    return angle_mrad * 1e-3 / wavelength_A


def frequency_to_angle(q_inv_A: Any, wavelength_A: float) -> Any:
    """Scattering angle (mrad) of a spatial frequency in 1/Å: angle = lambda q."""
    return wavelength_A * q_inv_A * 1e3


# ---------------------------------------------------------------------------- frequencies
def frequency_axis(n: int, pixel_size_A: float = 1.0, *, spacing_inv_A: float | None = None,
                   centered: bool = False, nyquist_zero: bool = False) -> np.ndarray:
    """Spatial frequencies (1/Å) of ``n`` samples, on the host (float64).

    The spacing is ``spacing_inv_A`` when given, else 1 / (n * pixel_size_A) (so the FFT
    order equals ``numpy.fft.fftfreq(n, pixel_size_A)``). ``centered``: pixel i has
    (i - n//2) * spacing (zero frequency at n//2, the data layout of patterns); otherwise FFT
    order. ``nyquist_zero``: for even n the Nyquist frequency is set to 0 (spectral
    derivatives of real fields stay real).
    """
    spacing = 1.0 / (n * pixel_size_A) if spacing_inv_A is None else float(spacing_inv_A)
    index = np.arange(n) - n // 2
    if not centered:
        index = np.fft.ifftshift(index)
    out = index * spacing
    if nyquist_zero and n % 2 == 0:
        out[index == -(n // 2)] = 0.0
    return out


def spatial_frequencies(shape: tuple[int, int], pixel_size_A: float | tuple[float, float] = 1.0,
                        *, spacing_inv_A: float | tuple[float, float] | None = None,
                        centered: bool = False, nyquist_zero: bool = False,
                        sparse: bool = False, xp: Any = np, dtype: Any = np.float64
                        ) -> tuple[ArrayLike, ArrayLike]:
    """(qy, qx) grids in 1/Å for a real-space grid of ``pixel_size_A`` (or a frequency
    spacing ``spacing_inv_A``), each a number or a (y, x) pair; order and Nyquist handling as
    :func:`frequency_axis`. Full (ny, nx) grids, or with ``sparse`` broadcastable (ny, 1) and
    (1, nx) arrays; in namespace ``xp`` with ``dtype``."""
    pixels = _pair(pixel_size_A)
    spacings = (None, None) if spacing_inv_A is None else _pair(spacing_inv_A)
    qy, qx = (frequency_axis(int(n), p, spacing_inv_A=s, centered=centered,
                             nyquist_zero=nyquist_zero)
              for n, p, s in zip(shape[-2:], pixels, spacings, strict=True))
    if sparse:
        gy, gx = qy[:, None], qx[None, :]
    else:
        gy, gx = np.meshgrid(qy, qx, indexing="ij")
    return xp.asarray(gy, dtype=dtype), xp.asarray(gx, dtype=dtype)


def _pair(value: Any) -> tuple[Any, Any]:
    if np.ndim(value) == 0:
        return value, value
    a, b = value
    return a, b


def nyquist_radius(shape: tuple[int, int]) -> np.ndarray:
    """|f| / f_Nyquist on an FFT-ordered host grid of ``shape`` (1 = Nyquist along an axis;
    f in cycles per pixel, Nyquist 0.5)."""
    fy, fx = spatial_frequencies(shape, sparse=True)
    return np.sqrt((fy / 0.5) ** 2 + (fx / 0.5) ** 2)


def band_limit_mask(shape: tuple[int, int], cutoff: float, rolloff: float = 0.0) -> np.ndarray:
    """Radial host mask in FFT order: 1 for r <= ``cutoff`` (fraction of Nyquist, see
    :func:`nyquist_radius`), 0 above. ``rolloff`` > 0 replaces the hard edge by a sin^2
    taper of that width (fraction of Nyquist) ending at the cutoff."""
    r = nyquist_radius(shape)
    if rolloff <= 0:
        return (r <= cutoff).astype(float)
    t = np.clip((cutoff - r) / rolloff, 0.0, 1.0)
    return np.sin(0.5 * np.pi * t) ** 2


def gaussian_transfer(shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Fourier transform (host, FFT order, 1 at f = 0) of a normalised Gaussian of standard
    deviation ``sigma_px`` pixels: exp(-2 pi^2 sigma^2 |f|^2), f in cycles per pixel."""
    fy, fx = spatial_frequencies(shape, sparse=True)
    return np.exp(-2.0 * np.pi**2 * sigma_px**2 * (fy**2 + fx**2))


def shift_ramp(shape: tuple[int, int], shift_yx: tuple[float, float]) -> np.ndarray:
    """Phase ramp exp(-2 pi i f.s) (host, FFT order, f in cycles per pixel): multiplying a
    spectrum by it moves the (periodic) image by ``shift_yx`` pixels towards higher indices."""
    fy, fx = spatial_frequencies(shape, sparse=True)
    return np.exp(-2j * np.pi * (fy * shift_yx[0] + fx * shift_yx[1]))


# ---------------------------------------------------------------------------- aberrations
def aberration_coefficients_array(aberrations: Aberrations) -> np.ndarray:
    """Normalise aberrations given as {name: Å} or a sequence in :data:`ABERRATION_NAMES` order
    into a float64 array of len(ABERRATION_NAMES) (Å)."""
    out = np.zeros(len(ABERRATION_NAMES))
    if aberrations is None:
        return out
    if isinstance(aberrations, Mapping):
        for key, value in aberrations.items():
            if key not in ABERRATION_NAMES:
                raise ValueError(
                    f"aberrations: unknown coefficient {key!r}; expected one of "
                    f"{', '.join(ABERRATION_NAMES)} (Krivanek notation, Å)"
                )
            out[ABERRATION_NAMES.index(key)] = float(value)
        return out
    values = np.asarray(aberrations, dtype=float).ravel()
    if values.size > len(ABERRATION_NAMES):
        raise ValueError(
            f"aberrations: expected at most {len(ABERRATION_NAMES)} coefficients, "
            f"found {values.size}"
        )
    out[: values.size] = values
    return out


def _basis_term(name: str, theta: ArrayLike, phi: ArrayLike, wavelength: float, xp: Any
                ) -> ArrayLike:
    """d chi / d C_name (rad/Å) from theta = lambda |q| and phi."""
    n, m, part = aberration_order(name)
    radial = theta ** (n + 1) / (n + 1)
    if m:
        radial = radial * _angular(m, part, phi, xp)[0]
    return (2 * np.pi / wavelength) * radial


def aberration_basis(qy: ArrayLike, qx: ArrayLike, wavelength: float, n_terms: int,
                     xp: Any = np) -> ArrayLike:
    """d chi / d C_k for the first ``n_terms`` coefficients of :data:`ABERRATION_NAMES`,
    shape (n_terms, *q.shape), rad/Å (q in 1/Å, wavelength in Å)."""
    theta = wavelength * xp.hypot(qy, qx)
    phi = xp.arctan2(qy, qx)
    basis = xp.empty((n_terms, *theta.shape), dtype=theta.dtype)
    for k, name in enumerate(ABERRATION_NAMES[:n_terms]):
        basis[k] = _basis_term(name, theta, phi, wavelength, xp)
    return basis


def aberration_function(qy: ArrayLike, qx: ArrayLike, wavelength: float,
                        aberrations: Aberrations, xp: Any = np) -> ArrayLike:
    """Aberration phase chi(q) in rad at spatial frequencies (qy, qx) (1/Å); aberrations as
    {Krivanek name: Å} or a sequence in :data:`ABERRATION_NAMES` order. Only the nonzero
    coefficients are evaluated (no basis is stored)."""
    coeffs = aberration_coefficients_array(aberrations)
    theta = wavelength * xp.hypot(qy, qx)
    phi = xp.arctan2(qy, qx)
    chi = xp.zeros_like(theta)
    for name, value in zip(ABERRATION_NAMES, coeffs, strict=True):
        if value != 0.0:
            chi = chi + float(value) * _basis_term(name, theta, phi, wavelength, xp)
    return chi


def aberration_gradient_basis(ky: ArrayLike, kx: ArrayLike, wavelength: float,
                              names: Sequence[str], xp: Any = np) -> ArrayLike:
    """grad_k (d chi / d C) for each named coefficient, shape (len(names), *k.shape, 2),
    components (y, x), rad·Å per Å of coefficient (chi in rad, k in 1/Å).

    Analytic gradient of :func:`aberration_basis`: with rho = |k|, phi = atan2(ky, kx),
    B = 2 pi lambda^n rho^(n+1) / (n+1) g(m phi),
    grad B = 2 pi lambda^n rho^n [g rho_hat + m/(n+1) g'(m phi) phi_hat].
    """
    ky = xp.asarray(ky, dtype=xp.float64)
    kx = xp.asarray(kx, dtype=xp.float64)
    rho = xp.hypot(ky, kx)
    phi = xp.arctan2(ky, kx)
    cos_p, sin_p = xp.cos(phi), xp.sin(phi)
    out = xp.empty((len(names), *rho.shape, 2))
    for j, name in enumerate(names):
        if name not in ABERRATION_NAMES:
            raise ValueError(f"names: unknown aberration {name!r}; expected one of "
                             f"{', '.join(ABERRATION_NAMES)}")
        n, m, part = aberration_order(name)
        g, dg = _angular(m, part, phi, xp)
        radial = 2 * np.pi * wavelength**n * rho**n
        tangential = dg / (n + 1)
        # rho_hat = (sin phi, cos phi), phi_hat = (cos phi, -sin phi) in (y, x)
        out[j, ..., 0] = radial * (g * sin_p + tangential * cos_p)
        out[j, ..., 1] = radial * (g * cos_p - tangential * sin_p)
    return out


def aberration_gradient(ky: ArrayLike, kx: ArrayLike, wavelength: float,
                        aberrations: Aberrations, xp: Any = np) -> ArrayLike:
    """grad_k chi, shape (*k.shape, 2) (y, x), rad·Å, for aberrations as in
    :func:`aberration_function` (only the nonzero coefficients are evaluated)."""
    coeffs = aberration_coefficients_array(aberrations)
    used = [name for name, c in zip(ABERRATION_NAMES, coeffs, strict=True) if c != 0.0]
    shape = tuple(np.broadcast_shapes(np.shape(ky), np.shape(kx)))
    if not used:
        return xp.zeros((*shape, 2))
    grads = aberration_gradient_basis(ky, kx, wavelength, used, xp)
    values = xp.asarray([coeffs[ABERRATION_NAMES.index(name)] for name in used])
    return xp.tensordot(values, grads, axes=1)


# ---------------------------------------------------------------------------- apertures
def soft_aperture(q: ArrayLike, radius_inv_A: float, edge_width_inv_A: float = 0.0,
                  xp: Any = np) -> ArrayLike:
    """Disk of radius ``radius_inv_A`` in |q| (1/Å) with a linear edge of total width
    ``edge_width_inv_A`` centred on the radius (0 gives a hard edge, q <= radius); values
    in [0, 1], real dtype of ``q`` (float64 for integer input)."""
    if edge_width_inv_A <= 0:
        dtype = q.dtype if np.issubdtype(q.dtype, np.floating) else np.float64
        return (q <= radius_inv_A).astype(dtype)
    return xp.clip((radius_inv_A - q) / edge_width_inv_A + 0.5, 0.0, 1.0)


def aperture(q: ArrayLike, wavelength: float, convergence_angle_mrad: float,
             edge_width_px: float = 1.0, dq: float | None = None, xp: Any = np) -> ArrayLike:
    """Circular probe-forming aperture: a :func:`soft_aperture` of radius
    convergence_angle_mrad * 1e-3 / wavelength (1/Å).

    ``edge_width_px`` sets the roll-off width in units of the frequency spacing ``dq`` (1/Å);
    0 or ``dq=None`` gives a hard edge. Returns values in [0, 1].
    """
    if convergence_angle_mrad <= 0:
        raise ValueError(
            f"convergence_angle_mrad: expected a positive angle, found {convergence_angle_mrad}"
        )
    q_cut = angle_to_frequency(convergence_angle_mrad, wavelength)
    width = 0.0 if dq is None or edge_width_px <= 0 else edge_width_px * dq
    return soft_aperture(q, q_cut, width, xp)
