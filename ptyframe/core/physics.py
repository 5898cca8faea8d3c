"""Electron-optics helpers: wavelength, interaction constant, aberration function, apertures.

Units: voltages in kV, lengths in Å, angles in mrad unless a name says otherwise (``_rad``),
spatial frequencies in 1/Å.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "HC_KEV_A",
    "ABERRATION_NAMES",
    "wavelength_A",
    "interaction_constant",
    "aberration_coefficients_array",
    "aberration_function",
    "aperture",
    "spatial_frequencies",
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


def _order_and_symmetry(name: str) -> tuple[int, int, str]:
    n = int(name[1])
    m = int(name[2])
    part = name[3:] if len(name) > 3 else ""
    return n, m, part


def wavelength_A(voltage_kV: float) -> float:
    """Relativistic electron wavelength in Å for an accelerating voltage in kV."""
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


def aberration_coefficients_array(aberrations: Mapping[str, float] | Sequence[float] | None
                                  ) -> np.ndarray:
    """Normalise aberrations given as {name: Å} or a sequence in :data:`ABERRATION_NAMES` order."""
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


def aberration_basis(qy: np.ndarray, qx: np.ndarray, wavelength: float, n_terms: int
                     ) -> np.ndarray:
    """d chi / d C_k for the first ``n_terms`` coefficients, shape (n_terms, *q.shape), rad/Å.

    chi(theta, phi) = (2 pi / lambda) * sum C_nm theta^(n+1)/(n+1) * {1 | cos m phi | sin m phi}
    with theta = lambda |q| and phi the azimuth of q (atan2(qy, qx)).
    """
    theta = wavelength * np.hypot(qy, qx)
    phi = np.arctan2(qy, qx)
    basis = np.empty((n_terms, *np.shape(theta)))
    for k, name in enumerate(ABERRATION_NAMES[:n_terms]):
        n, m, part = _order_and_symmetry(name)
        radial = theta ** (n + 1) / (n + 1)
        if m == 0:
            angular = 1.0
        elif part == "a":
            angular = np.cos(m * phi)
        else:
            angular = np.sin(m * phi)
        basis[k] = 2 * np.pi / wavelength * radial * angular
    return basis


def aberration_function(qy: np.ndarray, qx: np.ndarray, wavelength: float,
                        aberrations: Mapping[str, float] | Sequence[float] | None) -> np.ndarray:
    """Aberration phase chi(q) in radians for spatial frequencies (1/Å)."""
    coeffs = aberration_coefficients_array(aberrations)
    used = int(np.max(np.nonzero(coeffs)[0]) + 1) if np.any(coeffs) else 1
    basis = aberration_basis(qy, qx, wavelength, used)
    return np.tensordot(coeffs[:used], basis, axes=1)


def aperture(q: np.ndarray, wavelength: float, convergence_angle_mrad: float,
             edge_width_px: float = 1.0, dq: float | None = None) -> np.ndarray:
    """Circular probe-forming aperture with a linear soft edge.

    ``edge_width_px`` sets the roll-off width in units of the frequency spacing ``dq``
    (0 gives a hard edge). Returns values in [0, 1].
    """
    if convergence_angle_mrad <= 0:
        raise ValueError(
            f"convergence_angle_mrad: expected a positive angle, found {convergence_angle_mrad}"
        )
    q_cut = convergence_angle_mrad * 1e-3 / wavelength
    if edge_width_px <= 0 or dq is None:
        return (q <= q_cut).astype(float)
    width = edge_width_px * dq
    return np.clip((q_cut - q) / width + 0.5, 0.0, 1.0)


def spatial_frequencies(shape: tuple[int, int], pixel_size_A: float
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(qy, qx) grids in 1/Å in FFT order for a real-space grid of ``pixel_size_A``."""
    qy = np.fft.fftfreq(shape[0], pixel_size_A)
    qx = np.fft.fftfreq(shape[1], pixel_size_A)
    return np.meshgrid(qy, qx, indexing="ij")
