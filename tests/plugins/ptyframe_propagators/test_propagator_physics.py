"""Physics of the propagators: beam drift from a tilt inside, and accuracy against a fine
reference for a strong phase object (higher-order schemes beat plain multislice)."""

from __future__ import annotations

import numpy as np
import pytest
from ptyframe_propagators.higher_order import BetterMultislice, Yoshida
from ptyframe_propagators.multislice import Multislice

from ptyframe.components import PropagationGeometry
from ptyframe.core.device import Device
from ptyframe.core.physics import wavelength_A

CLASSES = (Multislice, BetterMultislice, Yoshida)
DEV = Device("cpu", "double")
LAMBDA_A = wavelength_A(200.0)


def centroid(intensity, pixel_A):
    """(y, x) centroid in Å of (..., ny, nx) intensities (the spot is far from the edges)."""
    ny, nx = intensity.shape[-2:]
    y = np.arange(ny)[:, None] * pixel_A
    x = np.arange(nx)[None, :] * pixel_A
    total = intensity.sum(axis=(-2, -1))
    return np.stack([(intensity * y).sum(axis=(-2, -1)) / total,
                     (intensity * x).sum(axis=(-2, -1)) / total], axis=-1)


@pytest.mark.parametrize("cls", CLASSES)
def test_tilt_inside_vacuum_shifts_the_wave(cls):
    """A Gaussian spot through 3 vacuum slices (gaps 30 + 50 Å) drifts by (sum dz) t."""
    n, pixel = 48, 0.2
    gaps = [30.0, 50.0]
    prop = cls(slice_thickness_A=gaps)
    prop.prepare(PropagationGeometry((n, n), pixel, LAMBDA_A, 3, DEV))
    r = (np.arange(n) - n // 2) * pixel
    spot = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 0.8**2))
    tilts = np.array([[0.02, -0.01], [-0.015, 0.025], [0.0, 0.0]])  # radians
    wave = np.broadcast_to(spot, (1, 1, 3, n, n)).astype(complex)
    trans = np.ones((3, 1, 1, 3, n, n), complex)
    exit_wave, _ = prop.forward(wave, trans, tilts=tilts)
    shift = centroid(np.abs(exit_wave[0, 0]) ** 2, pixel) - centroid(np.abs(spot) ** 2, pixel)
    expected = sum(gaps) * tilts  # Å
    np.testing.assert_allclose(shift[:2], expected[:2], rtol=0.01)
    np.testing.assert_allclose(shift[2], 0.0, atol=1e-9)
    assert np.abs(shift[:2]).min() > 0.7  # a real drift of several pixels


def strong_phase_object(n, pixel_A, peak_rad, seed=1):
    """Sum of Gaussian 'atoms' (sigma 0.5 Å) on a periodic n x n grid, peak phase peak_rad."""
    rng = np.random.default_rng(seed)
    size = n * pixel_A
    y, x = np.mgrid[:n, :n] * pixel_A
    phi = np.zeros((n, n))
    for cy, cx in rng.uniform(0, size, (6, 2)):
        dy = (y - cy + size / 2) % size - size / 2
        dx = (x - cx + size / 2) % size - size / 2
        phi += np.exp(-(dy**2 + dx**2) / (2 * 0.5**2))
    return phi * (peak_rad / phi.max())


def slab_exit(cls, n_slabs, phi, thickness_A, pixel_A, tilts, **settings):
    """Exit wave of a plane wave through a slab of total phase ``phi`` (rad) and thickness
    ``thickness_A`` cut into ``n_slabs`` slices (+ a vacuum exit slice)."""
    n = phi.shape[0]
    prop = cls(slice_thickness_A=thickness_A / n_slabs, **settings)
    prop.prepare(PropagationGeometry((n, n), pixel_A, LAMBDA_A, n_slabs + 1, DEV))
    trans = np.ones((n_slabs + 1, 1, 1, tilts.shape[0], n, n), complex)
    trans[:n_slabs] = np.exp(1j * phi / n_slabs)
    wave = np.ones((1, 1, tilts.shape[0], n, n), complex)
    return prop.forward(wave, trans, keep=False, tilts=tilts)[0]


def rel_error(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("settings", [{}, {"damping_cutoff": 1.5}], ids=["band_limited",
                                                                         "unlimited"])
def test_higher_order_beats_multislice(settings):
    """Strong phase object (peak 3 rad over 40 Å, 4 slices of 0.75 rad): error against a
    128-slice Yoshida reference. Measured (plain / better / yoshida), 4 slices:
    4.6e-2 / 2.7e-4 / 1.1e-3 with the default band limit, 4.6e-2 / 1.5e-5 / 1.1e-4 without."""
    n, pixel, thickness = 32, 0.2, 40.0
    phi = strong_phase_object(n, pixel, 3.0)
    tilts = np.array([[0.0, 0.0], [0.004, -0.002]])
    ref = slab_exit(Yoshida, 128, phi, thickness, pixel, tilts, **settings)
    # the reference has converged: a different scheme at the same depth agrees with it
    assert rel_error(slab_exit(BetterMultislice, 128, phi, thickness, pixel, tilts,
                               **settings), ref) < 1e-4
    errors = {cls.name: rel_error(slab_exit(cls, 4, phi, thickness, pixel, tilts, **settings),
                                  ref) for cls in CLASSES}
    assert errors["multislice"] > 0.02
    assert errors["better_multislice"] < errors["multislice"] / 20
    assert errors["yoshida"] < errors["multislice"] / 20


def test_convergence_orders():
    """Without a band limit the slab-by-slab schemes converge with their orders: error ratio
    per halving of the slice thickness ~2 (multislice), ~16 (better_multislice, yoshida)."""
    n, pixel, thickness = 32, 0.2, 40.0
    phi = strong_phase_object(n, pixel, 3.0)
    tilts = np.zeros((1, 2))
    ref = slab_exit(Yoshida, 128, phi, thickness, pixel, tilts, damping_cutoff=1.5)
    for cls, low, high in ((Multislice, 1.7, 2.3), (BetterMultislice, 8.0, 40.0),
                           (Yoshida, 10.0, 20.0)):
        e4, e8 = (rel_error(slab_exit(cls, k, phi, thickness, pixel, tilts,
                                      damping_cutoff=1.5), ref) for k in (4, 8))
        assert low < e4 / e8 < high, (cls.name, e4, e8)
