"""ptyframe.core.physics: values against hand-computed numbers, the conventions (C10 = -defocus,
FFT vs centred order), and the array-namespace path (numpy here, CuPy where present)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ptyframe.core import physics
from ptyframe.core.device import cupy_available
from ptyframe.core.physics import (
    ABERRATION_NAMES,
    aberration_basis,
    aberration_function,
    aberration_gradient,
    aberration_gradient_basis,
    aberration_order,
    angle_to_frequency,
    aperture,
    band_limit_mask,
    frequency_axis,
    frequency_to_angle,
    gaussian_transfer,
    interaction_constant,
    nyquist_radius,
    shift_ramp,
    soft_aperture,
    spatial_frequencies,
    wavelength_A,
)


# ---------------------------------------------------------------------------- constants
@pytest.mark.parametrize(("kv", "expected"), [(80.0, 0.041757), (200.0, 0.025079),
                                              (300.0, 0.019687)])
def test_relativistic_wavelength(kv: float, expected: float) -> None:
    assert wavelength_A(kv) == pytest.approx(expected, abs=1e-6)


def test_wavelength_at_200_kV_is_0_02508_A() -> None:
    assert round(wavelength_A(200.0), 5) == 0.02508


def test_interaction_constant_at_200_kV() -> None:
    # Kirkland: sigma = 0.00729 rad/(V Å) at 200 kV
    assert interaction_constant(200.0) == pytest.approx(7.2884e-4, rel=1e-4)


def test_wavelength_rejects_non_positive_voltage() -> None:
    with pytest.raises(ValueError, match="voltage_kV: expected a positive voltage, found 0"):
        wavelength_A(0.0)


def test_angle_and_frequency_conversions() -> None:
    lam = wavelength_A(200.0)
    assert angle_to_frequency(20.0, lam) == pytest.approx(0.79747, rel=1e-5)
    assert frequency_to_angle(angle_to_frequency(20.0, lam), lam) == pytest.approx(20.0)


# ---------------------------------------------------------------------------- names
def test_every_aberration_name_parses() -> None:
    parsed = [aberration_order(name) for name in ABERRATION_NAMES]
    assert parsed[:4] == [(1, 0, ""), (1, 2, "a"), (1, 2, "b"), (2, 1, "a")]
    assert aberration_order("C56b") == (5, 6, "b")
    assert all((n + m) % 2 == 1 and m <= n + 1 for n, m, _ in parsed)


@pytest.mark.parametrize("name", ["C11", "C12", "C10a", "C32c", "C01", "c10", "C10 ", "Cs", 10])
def test_bad_aberration_names_are_rejected(name) -> None:
    with pytest.raises(ValueError, match="aberration name: expected Krivanek notation"):
        aberration_order(name)


# ---------------------------------------------------------------------------- chi
def test_chi_of_a_known_aberration_set_matches_the_hand_computed_value() -> None:
    lam = wavelength_A(200.0)
    ab = {"C10": -50.0, "C12a": 20.0, "C21b": 1000.0, "C30": 1e5}
    # q = (0.3, 0.4) 1/Å: |q| = 0.5, cos phi = 0.8, sin phi = 0.6, cos 2 phi = 0.28
    t = lam * 0.5
    by_hand = 2 * math.pi / lam * (-50.0 * t**2 / 2 + 20.0 * t**2 / 2 * 0.28
                                   + 1000.0 * t**3 / 3 * 0.6 + 1e5 * t**4 / 4)
    chi = aberration_function(np.array([0.3]), np.array([0.4]), lam, ab)
    np.testing.assert_allclose(chi, [by_hand], rtol=1e-12)
    np.testing.assert_allclose(chi, [-0.6208966], rtol=1e-6)


def test_defocus_convention() -> None:
    """C10 = -defocus: chi = pi lambda C10 q^2 = -pi lambda defocus q^2."""
    lam, defocus = 0.025, 120.0
    qy, qx = spatial_frequencies((16, 16), 0.3)
    chi = aberration_function(qy, qx, lam, {"C10": -defocus})
    np.testing.assert_allclose(chi, -math.pi * lam * defocus * (qy**2 + qx**2), atol=1e-12)


def test_chi_is_the_basis_weighted_by_the_coefficients() -> None:
    rng = np.random.default_rng(1)
    ky, kx = rng.uniform(-1, 1, (2, 50))
    coeffs = rng.normal(0, 1, len(ABERRATION_NAMES)) * 10.0 ** np.arange(len(ABERRATION_NAMES))
    coeffs[:3] = (120.0, -30.0, 45.0)
    basis = aberration_basis(ky, kx, 0.0197, len(ABERRATION_NAMES))
    assert basis.shape == (len(ABERRATION_NAMES), 50)
    np.testing.assert_allclose(aberration_function(ky, kx, 0.0197, coeffs),
                               np.tensordot(coeffs, basis, axes=1), rtol=1e-12, atol=1e-9)
    # a mapping and the Krivanek-ordered sequence give the same phase
    as_dict = dict(zip(ABERRATION_NAMES, coeffs, strict=True))
    np.testing.assert_array_equal(aberration_function(ky, kx, 0.0197, as_dict),
                                  aberration_function(ky, kx, 0.0197, coeffs))


def test_chi_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(2)
    ky, kx = rng.uniform(-0.8, 0.8, (2, 30))
    lam = 0.025
    ab = {"C10": 80.0, "C12b": -15.0, "C23a": 2e3, "C30": 3e4, "C45b": 1e6}
    h = 1e-6
    fd_y = (aberration_function(ky + h, kx, lam, ab) - aberration_function(ky - h, kx, lam, ab))
    fd_x = (aberration_function(ky, kx + h, lam, ab) - aberration_function(ky, kx - h, lam, ab))
    fd = np.stack([fd_y, fd_x], -1) / (2 * h)
    grad = aberration_gradient(ky, kx, lam, ab)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-6 * np.abs(fd).max())
    assert aberration_gradient(ky, kx, lam, None).shape == (30, 2)
    assert not np.any(aberration_gradient(ky, kx, lam, None))
    with pytest.raises(ValueError, match="names: unknown aberration 'C99'"):
        aberration_gradient_basis(ky, kx, lam, ["C99"])


def test_unknown_coefficients_are_rejected() -> None:
    with pytest.raises(ValueError, match="aberrations: unknown coefficient 'C99'"):
        aberration_function(np.zeros(1), np.zeros(1), 0.025, {"C99": 1.0})


# ---------------------------------------------------------------------------- frequencies
@pytest.mark.parametrize("n", [1, 4, 5, 8])
def test_frequency_axis_orders(n: int) -> None:
    np.testing.assert_array_equal(frequency_axis(n, 0.7), np.fft.fftfreq(n, 0.7))
    np.testing.assert_array_equal(frequency_axis(n, 0.7, centered=True),
                                  np.fft.fftshift(np.fft.fftfreq(n, 0.7)))
    # detector layout: pixel i has (i - n//2) dk
    np.testing.assert_array_equal(frequency_axis(n, spacing_inv_A=0.1, centered=True),
                                  (np.arange(n) - n // 2) * 0.1)


def test_nyquist_frequency_can_be_dropped() -> None:
    np.testing.assert_allclose(frequency_axis(4, 0.5, nyquist_zero=True), [0, 0.5, 0, -0.5])
    np.testing.assert_allclose(frequency_axis(4, 0.5, centered=True, nyquist_zero=True),
                               [0, -0.5, 0, 0.5])
    np.testing.assert_array_equal(frequency_axis(5, 0.5, nyquist_zero=True),
                                  np.fft.fftfreq(5, 0.5))


def test_spatial_frequency_grids() -> None:
    qy, qx = spatial_frequencies((6, 5), (0.5, 0.25))
    assert qy.shape == qx.shape == (6, 5)
    np.testing.assert_array_equal(qy[:, 0], np.fft.fftfreq(6, 0.5))
    np.testing.assert_array_equal(qx[0], np.fft.fftfreq(5, 0.25))
    sy, sx = spatial_frequencies((6, 5), (0.5, 0.25), sparse=True, dtype=np.float32)
    assert sy.shape == (6, 1) and sx.shape == (1, 5) and sy.dtype == np.float32
    np.testing.assert_allclose(np.hypot(sy, sx), np.hypot(qy, qx), rtol=1e-6)


def test_band_limit_mask() -> None:
    fy = np.fft.fftfreq(8)[:, None] / 0.5
    fx = np.fft.fftfreq(8)[None, :] / 0.5
    r = np.sqrt(fy**2 + fx**2)
    np.testing.assert_array_equal(nyquist_radius((8, 8)), r)
    np.testing.assert_array_equal(band_limit_mask((8, 8), 2 / 3), (r <= 2 / 3).astype(float))
    soft = band_limit_mask((8, 8), 0.8, 0.2)
    assert soft[0, 0] == 1.0 and soft[4, 4] == 0.0 and np.all((soft >= 0) & (soft <= 1))


def test_gaussian_transfer_and_shift_ramp() -> None:
    fy = np.fft.fftfreq(8)[:, None]
    fx = np.fft.fftfreq(6)[None, :]
    np.testing.assert_allclose(gaussian_transfer((8, 6), 0.7),
                               np.exp(-2 * np.pi**2 * 0.49 * (fy**2 + fx**2)), rtol=1e-15)
    image = np.zeros((8, 6))
    image[1, 2] = 1.0
    moved = np.fft.ifft2(np.fft.fft2(image) * shift_ramp(image.shape, (2, -1))).real
    np.testing.assert_allclose(moved[3, 1], 1.0, atol=1e-12)
    np.testing.assert_allclose(moved.sum(), 1.0, atol=1e-12)


# ---------------------------------------------------------------------------- apertures
def test_aperture_edges() -> None:
    lam = wavelength_A(200.0)
    q_cut = 20e-3 / lam
    q = np.array([0.0, q_cut - 0.1, q_cut, q_cut + 0.1])
    np.testing.assert_array_equal(aperture(q, lam, 20.0), [1.0, 1.0, 1.0, 0.0])
    np.testing.assert_allclose(aperture(q, lam, 20.0, 1.0, 0.05), [1.0, 1.0, 0.5, 0.0])
    np.testing.assert_array_equal(soft_aperture(q, q_cut), aperture(q, lam, 20.0, 0.0, 0.05))
    assert soft_aperture(q.astype(np.float32), q_cut).dtype == np.float32
    with pytest.raises(ValueError, match="convergence_angle_mrad: expected a positive angle"):
        aperture(q, lam, 0.0)


# ---------------------------------------------------------------------------- namespaces
@pytest.mark.gpu
@pytest.mark.skipif(not cupy_available(), reason="needs CuPy and a CUDA device")
def test_cupy_namespace_gives_the_numpy_values() -> None:
    import cupy

    lam = 0.025
    ab = {"C10": -50.0, "C12a": 20.0, "C30": 1e5}
    qy, qx = spatial_frequencies((16, 12), 0.3)
    gy, gx = spatial_frequencies((16, 12), 0.3, xp=cupy)
    assert isinstance(gy, cupy.ndarray)
    checks = [
        (physics.aberration_function(gy, gx, lam, ab, cupy),
         physics.aberration_function(qy, qx, lam, ab)),
        (physics.aberration_basis(gy, gx, lam, 8, cupy), physics.aberration_basis(qy, qx, lam, 8)),
        (physics.aberration_gradient(gy, gx, lam, ab, cupy),
         physics.aberration_gradient(qy, qx, lam, ab)),
        (physics.aperture(cupy.hypot(gy, gx), lam, 20.0, 1.0, 0.2, cupy),
         physics.aperture(np.hypot(qy, qx), lam, 20.0, 1.0, 0.2)),
    ]
    for on_gpu, on_cpu in checks:
        np.testing.assert_allclose(cupy.asnumpy(on_gpu), on_cpu, rtol=1e-12, atol=1e-12)
