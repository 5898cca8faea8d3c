"""Near-field (focal-series) detector: adjoint, gradients, flux, contrast transfer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ptyframe_detectors import near_field
from ptyframe_detectors.near_field import NearFieldDetector
from ptyframe_propagators.multislice import fresnel_kernel

from ptyframe.components import ModelContext
from ptyframe.core.device import Device
from ptyframe.core.physics import wavelength_A
from ptyframe.testing import check_adjoint, check_gradient, random_like

DEV = Device("cpu", "double")
N = 24
PIXEL_A = 0.3
LAMBDA_A = wavelength_A(300.0)
DEFOCUS = (-150.0, 0.0, 80.0, 300.0)  # one per measurement, Å
N_MEASUREMENTS = len(DEFOCUS)


def prepared(n_measurements=N_MEASUREMENTS, device=DEV, **settings):
    settings = {"pixel_size_A": PIXEL_A, "defocus_A": DEFOCUS, **settings}
    det = NearFieldDetector(**settings)
    det.prepare(ModelContext(window=(N, N), pixel_size_A=PIXEL_A, wavelength_A=LAMBDA_A,
                             n_measurements=n_measurements, device=device,
                             measured_shape=(N, N)))
    return det


def random_waves(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape), rng


def phase_object(phase_rad, seed=3):
    """A smooth real phase map (N, N): a few Gaussian blobs, maximum ``phase_rad``."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:N, :N] * PIXEL_A
    phi = np.zeros((N, N))
    for cy, cx in rng.uniform(0.25, 0.75, (4, 2)) * N * PIXEL_A:
        phi += np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * 0.6**2))
    return phi * (phase_rad / phi.max())


def test_settings_and_config():
    det = NearFieldDetector(pixel_size_A=0.5, defocus_A=[10, 20.5], cs_A=1e7, alpha=1e-3)
    assert det.defocus_A == (10.0, 20.5) and det.measurement_space == "image"
    assert det.object_pixel_size_A(None, (N, N)) == 0.5
    assert det.model_window((N, N)) == (N, N)
    config = json.loads(json.dumps(det.to_config()))
    assert config["type"] == "near_field"
    config.pop("type")
    assert NearFieldDetector(**config) == det
    assert NearFieldDetector(pixel_size_A=1, defocus_A=np.float32(5)).defocus_A == 5.0
    centred = np.arange(16.0).reshape(4, 4)
    np.testing.assert_array_equal(det.to_detector_order(centred), centred)


@pytest.mark.parametrize(("settings", "name"), [
    ({"pixel_size_A": 0.0}, "pixel_size_A"),
    ({"pixel_size_A": float("nan")}, "pixel_size_A"),
    ({"defocus_A": float("inf")}, "defocus_A"),
    ({"defocus_A": []}, "defocus_A"),
    ({"defocus_A": [[1.0, 2.0]]}, "defocus_A"),
    ({"defocus_A": "far"}, "defocus_A"),
    ({"alpha": -1e-3}, "alpha"),
    ({"cs_A": float("nan")}, "cs_A"),
])
def test_bad_settings(settings, name):
    with pytest.raises(ValueError, match=name):
        NearFieldDetector(**{"pixel_size_A": 1.0, "defocus_A": 0.0, **settings})


def test_defocus_count_checked_against_measurements():
    with pytest.raises(ValueError, match=r"defocus_A.*5.*4 values"):
        prepared(n_measurements=5)
    with pytest.raises(ValueError, match="pixel_size_A"):
        det = NearFieldDetector(pixel_size_A=PIXEL_A * 1.1, defocus_A=0.0)
        det.prepare(ModelContext(window=(N, N), pixel_size_A=PIXEL_A, wavelength_A=LAMBDA_A,
                                 n_measurements=4, device=DEV))
    det = prepared()
    with pytest.raises(ValueError, match="indices"):
        det.forward(np.ones((1, 1, 1, N, N), complex), np.array([4]))


def test_adjoint_of_the_propagation():
    """waves -> fields before |.|^2 is linear; propagate_adjoint is its adjoint."""
    det = prepared(cs_A=2e6)
    idx = np.array([3, 0, 2])
    x, rng = random_waves((2, 2, 3, N, N))
    for _ in range(2):
        check_adjoint(lambda w: det.propagate(w, idx), lambda g: det.propagate_adjoint(g, idx),
                      random_like(x, rng), random_like(x, rng), rtol=1e-12)


def test_same_kernel_as_the_slice_propagator():
    """Defocus df (= -C10, underfocus > 0) = free propagation over dz = -df with the
    multislice kernel (sign convention)."""
    det = prepared()
    wave, _ = random_waves((1, 1, 1, N, N))
    kern = fresnel_kernel((N, N), PIXEL_A, LAMBDA_A, -DEFOCUS[3])
    expected = np.fft.ifft2(np.fft.fft2(wave) * kern)
    np.testing.assert_allclose(det.propagate(wave, np.array([3])), expected, atol=1e-13)


@pytest.mark.parametrize("alpha", [0.0, 2e-3])
def test_gradient_in_the_waves(alpha):
    """2 object modes x 2 probe modes, per-measurement defocus, Cs, partial coherence."""
    det = prepared(cs_A=5e6, alpha=alpha)
    idx = np.array([2, 0, 3])
    waves, rng = random_waves((2, 2, 3, N, N))
    weights = rng.uniform(0.5, 2.0, (3, N, N))
    target = rng.uniform(0.0, 3.0, (3, N, N))

    def objective(p):
        image, _ = det.forward(p["waves"], idx, keep=False)
        return float(np.sum(weights * (image - target) ** 2))

    image, cache = det.forward(waves, idx)
    assert image.shape == (3, N, N) and image.dtype == np.float64
    grad = det.vjp(2 * weights * (image - target), cache)
    assert grad.shape == waves.shape
    for seed in range(3):
        check_gradient(objective, {"waves": waves}, {"waves": grad}, "waves",
                       rng=np.random.default_rng(seed), rtol=1e-6)


def test_flux_is_kept_with_partial_coherence():
    det = prepared(alpha=3e-3, cs_A=1e6)
    waves, _ = random_waves((2, 3, 4, N, N))
    idx = np.arange(4)
    image, _ = det.forward(waves, idx, keep=False)
    incoming = (np.abs(waves) ** 2).sum(axis=(0, 1, 3, 4)) / 2  # (1/K) sum over modes
    np.testing.assert_allclose(image.sum(axis=(1, 2)), incoming, rtol=1e-12)
    coherent, _ = prepared(cs_A=1e6).forward(waves, idx, keep=False)
    # the envelope only blurs: same flux, less contrast, none at all where df = 0
    assert np.all(image.std(axis=(1, 2))[[0, 2, 3]] < coherent.std(axis=(1, 2))[[0, 2, 3]])
    np.testing.assert_allclose(image[1], coherent[1], rtol=1e-12)


def test_phase_object_in_focus_has_no_contrast():
    phi = phase_object(2.5)
    wave = np.exp(1j * phi)[None, None, None]
    for alpha in (0.0, 2e-3):
        det = prepared(alpha=alpha)
        focused, _ = det.forward(wave, np.array([1]), keep=False)  # df = 0
        np.testing.assert_allclose(focused, 1.0, atol=1e-12)
        defocused, _ = det.forward(wave, np.array([3]), keep=False)  # df = 300 Å
        assert defocused.std() > 0.05


def test_weak_phase_contrast_transfer():
    """Weak phase object: I - 1 = IFFT[2 Phi(q) sin chi] = -IFFT[2 Phi(q) sin(pi lambda df
    q^2)] to first order (chi = pi lambda C10 q^2, C10 = -df), so a positive phase (an atom)
    gives dark contrast in underfocus (df > 0) at low q, as at Scherzer defocus."""
    phi = phase_object(1e-3)
    wave = np.exp(1j * phi)[None, None, None]
    det = prepared()
    q = np.fft.fftfreq(N, PIXEL_A)
    q2 = q[:, None] ** 2 + q[None, :] ** 2
    for n, df in enumerate(DEFOCUS):
        image, _ = det.forward(wave, np.array([n]), keep=False)
        linear = np.fft.ifft2(-2 * np.fft.fft2(phi) * np.sin(np.pi * LAMBDA_A * df * q2)).real
        scale = max(np.abs(linear).max(), 1e-12)
        assert np.abs(image[0] - 1 - linear).max() < 5e-3 * scale + 1e-12
    assert (prepared().forward(wave, np.array([3]), keep=False)[0][0] - 1)[
        np.unravel_index(np.argmax(phi), phi.shape)] < 0


def test_batch_paths_agree(monkeypatch):
    """Shared-defocus batches, mixed batches, on-the-fly filters and the model's in-place
    workspace path all give the same images and gradients."""
    waves, rng = random_waves((2, 1, 4, N, N))
    grad_i = rng.standard_normal((4, N, N))
    idx = np.array([3, 1, 3, 0])
    det = prepared(alpha=1e-3, cs_A=1e6)
    ref_image, cache = det.forward(waves, idx)
    ref_grad = det.vjp(grad_i, cache)
    image, cache = det.forward(waves.copy(), idx, workspace=DEV.workspace())
    np.testing.assert_allclose(image, ref_image, rtol=1e-12)
    np.testing.assert_allclose(det.vjp(grad_i, cache), ref_grad, rtol=1e-12, atol=1e-13)
    monkeypatch.setattr(near_field, "_MAX_PRECOMPUTED_PIXELS", 0)
    lazy = prepared(alpha=1e-3, cs_A=1e6)
    image, cache = lazy.forward(waves, idx)
    np.testing.assert_allclose(image, ref_image, rtol=1e-12)
    np.testing.assert_allclose(lazy.vjp(grad_i, cache), ref_grad, rtol=1e-12, atol=1e-13)
    for d in (det, lazy):  # one defocus in the whole batch: a shared (ny, nx) filter
        same, _ = d.forward(waves[:, :, [0, 2]], np.array([3, 3]), keep=False)
        np.testing.assert_allclose(same, ref_image[[0, 2]], rtol=1e-12)


def test_common_defocus_and_single_precision():
    det = prepared(device=Device("cpu", "single"), defocus_A=120.0, alpha=1e-3)
    waves = np.ones((1, 1, 2, N, N), np.complex64) * np.exp(1j * phase_object(1.0))
    waves = waves.astype(np.complex64)
    image, cache = det.forward(waves, np.array([0, 3]))
    assert image.dtype == np.float32
    np.testing.assert_allclose(image[0], image[1], rtol=1e-6)
    assert det.vjp(np.ones_like(image), cache).dtype == np.complex64
