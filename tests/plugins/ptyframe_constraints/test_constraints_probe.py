"""Defining properties of the probe constraints (orthogonal_probe_modes,
probe_fourier_projection, probe_phase_only, probe_amplitude_only)."""

from __future__ import annotations

import numpy as np
import pytest
from ptyframe_constraints.probe_constraints import (
    OrthogonalProbeModes,
    ProbeAmplitudeOnly,
    ProbeFourierProjection,
    ProbePhaseOnly,
    probe_from_spectrum,
    probe_spectrum,
)

from ptyframe.components import ModelContext
from ptyframe.core.device import Device
from ptyframe.core.physics import wavelength_A
from ptyframe.testing import prepared

WINDOW = 16
PIXEL_SIZE_A = 0.25


def host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def random_probe(seed, shape=(3, WINDOW, WINDOW), scales=(1.0, 0.6, 0.3)):
    rng = np.random.default_rng(seed)
    probe = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    return probe * np.asarray(scales)[:, None, None][-shape[-3]:]


def overlap(modes):
    flat = modes.reshape(modes.shape[0], -1)
    return flat.conj() @ flat.T


def context(device, window=WINDOW):
    return ModelContext(window=(window, window), pixel_size_A=PIXEL_SIZE_A,
                        wavelength_A=wavelength_A(200.0), n_measurements=4, device=device)


# ================================================================================ orthogonal modes
def test_orthogonal_modes_keep_the_total_intensity(device):
    probe = random_probe(0)
    probe[1] += 0.8 * probe[0]  # strongly overlapping modes
    params = {"probe": device.complex(probe)}
    assert prepared(OrthogonalProbeModes(), device).apply(params, 0) is True
    new = host(params["probe"])
    s = overlap(new)
    power = np.diag(s).real
    assert np.abs(s - np.diag(np.diag(s))).max() < 1e-12 * power.max()  # orthogonal
    assert np.all(np.diff(power) < 0)  # sorted by power
    # sum_m |P_m(r)|^2 unchanged at every pixel (V unitary), hence every modelled intensity
    np.testing.assert_allclose(np.sum(np.abs(new) ** 2, axis=0),
                               np.sum(np.abs(probe) ** 2, axis=0), rtol=1e-12)
    rng = np.random.default_rng(1)
    transmission = np.exp(1j * rng.uniform(-1, 1, (WINDOW, WINDOW)))
    intensity = [np.sum(np.abs(np.fft.fft2(p * transmission)) ** 2, axis=0)
                 for p in (probe, new)]
    np.testing.assert_allclose(intensity[1], intensity[0], rtol=1e-10)
    # idempotent: orthogonal sorted modes are left alone, without a history reset
    assert prepared(OrthogonalProbeModes(), device).apply(params, 1) is False
    np.testing.assert_allclose(host(params["probe"]), new, atol=1e-12)


def test_orthogonal_modes_per_probe_and_single_mode(cpu):
    shape = (2, WINDOW, WINDOW)
    probes = np.stack([random_probe(2, shape, (1.0, 0.5)), random_probe(3, shape, (1.0, 0.5))])
    params = {"probe": probes.copy()}
    prepared(OrthogonalProbeModes(), cpu).apply(params, 0)  # (n_probes, modes, ny, nx)
    for p in range(2):
        s = overlap(params["probe"][p])
        assert abs(s[0, 1]) < 1e-12 * abs(s[0, 0])
        np.testing.assert_allclose(np.sum(np.abs(params["probe"][p]) ** 2, axis=0),
                                   np.sum(np.abs(probes[p]) ** 2, axis=0), rtol=1e-12)
    single = {"probe": random_probe(4, shape=(1, WINDOW, WINDOW), scales=(1.0,))}
    before = single["probe"].copy()
    assert prepared(OrthogonalProbeModes(), cpu).apply(single, 0) is False
    assert np.array_equal(single["probe"], before)


# ============================================================================ Fourier projection
def test_fourier_projection_on_a_disk(device):
    constraint = ProbeFourierProjection(radius_mrad=40.0)
    constraint.prepare(context(device))
    probe = random_probe(5)
    params = {"probe": device.complex(probe)}
    assert constraint.apply(params, 0) is True
    q = np.hypot(np.fft.fftfreq(WINDOW, PIXEL_SIZE_A)[:, None],
                 np.fft.fftfreq(WINDOW, PIXEL_SIZE_A)[None, :])
    inside = np.broadcast_to(wavelength_A(200.0) * q * 1e3 <= 40.0, probe.shape)
    assert 0.1 < inside.mean() < 0.9
    spectrum = np.fft.fft2(host(params["probe"]))
    assert np.abs(spectrum[~inside]).max() < 1e-12
    np.testing.assert_allclose(spectrum[inside], np.fft.fft2(probe)[inside], atol=1e-12)
    # idempotent, no reset the second time; gradients projected the same way
    assert constraint.apply(params, 1) is False
    g = device.complex(random_probe(6))
    once = constraint.project_gradient({"probe": g}, params, 0)["probe"]
    twice = constraint.project_gradient({"probe": once}, params, 0)["probe"]
    np.testing.assert_allclose(host(twice), host(once), atol=1e-12)
    assert np.abs(np.fft.fft2(host(once))[~inside]).max() < 1e-12


def test_fourier_projection_needs_prepare_for_a_radius(cpu):
    with pytest.raises(RuntimeError, match="prepare"):
        ProbeFourierProjection(radius_mrad=20.0).apply({"probe": random_probe(7)}, 0)


def test_fourier_projection_with_a_centred_mask_file(tmp_path, cpu):
    mask = np.zeros((WINDOW, WINDOW))
    mask[WINDOW // 2 - 3:WINDOW // 2 + 2, WINDOW // 2 - 1:WINDOW // 2 + 5] = 1  # off-centre box
    path = tmp_path / "mask.npy"
    np.save(path, mask)
    constraint = ProbeFourierProjection(mask_path=str(path))
    constraint.prepare(context(cpu))
    params = {"probe": random_probe(8)}
    constraint.apply(params, 0)
    centred_spectrum = np.fft.fftshift(np.fft.fft2(params["probe"]), axes=(-2, -1))
    assert np.abs(centred_spectrum[:, mask == 0]).max() < 1e-12
    assert np.abs(centred_spectrum[:, mask == 1]).min() > 0
    np.save(path, np.ones((WINDOW + 2, WINDOW)))
    with pytest.raises(ValueError, match="mask_path"):
        ProbeFourierProjection(mask_path=str(path)).prepare(context(cpu))


def test_fourier_projection_default_keeps_the_first_support(cpu):
    """Without radius or mask: the support of the first probe's spectrum (an aperture)."""
    spectrum = np.zeros((2, WINDOW, WINDOW), dtype=complex)
    q = np.hypot(np.fft.fftfreq(WINDOW)[:, None], np.fft.fftfreq(WINDOW)[None, :])
    aperture = q < 0.2
    rng = np.random.default_rng(9)
    spectrum[:, aperture] = rng.standard_normal((2, aperture.sum())) + 1j
    probe = np.fft.ifft2(spectrum)
    constraint = ProbeFourierProjection()
    constraint.prepare(context(cpu))
    params = {"probe": probe.copy()}
    assert constraint.apply(params, 0) is False  # captured; nothing to remove
    assert np.array_equal(constraint.mask.astype(bool), aperture)
    params["probe"] = params["probe"] + 0.1 * random_probe(10, shape=(2, WINDOW, WINDOW),
                                                           scales=(1.0, 1.0))
    assert constraint.apply(params, 1) is True
    assert np.abs(np.fft.fft2(params["probe"])[:, ~aperture]).max() < 1e-12


# ======================================================================== spectrum phase/modulus
def _spectrum_case(seed):
    probe = random_probe(seed, shape=(2, WINDOW, WINDOW), scales=(1.0, 0.5))
    grad = random_probe(seed + 1, shape=(2, WINDOW, WINDOW), scales=(1.0, 1.0))
    return probe, grad


def test_probe_spectrum_round_trip(device):
    probe, _ = _spectrum_case(11)
    spectrum = probe_spectrum(device.complex(probe), device)
    np.testing.assert_allclose(host(probe_from_spectrum(spectrum, device)), probe, atol=1e-12)
    # centred probe: the zero frequency of the spectrum is the sum over the window
    np.testing.assert_allclose(host(spectrum)[:, 0, 0], probe.sum(axis=(-2, -1)) / WINDOW,
                               rtol=1e-12)


@pytest.mark.parametrize("cls", [ProbePhaseOnly, ProbeAmplitudeOnly])
def test_spectrum_gradient_projection(cls, device):
    probe, grad = _spectrum_case(12)
    constraint = prepared(cls(), device)
    params = {"probe": device.complex(probe)}
    once = constraint.project_gradient({"probe": device.complex(grad)}, params, 0)
    twice = constraint.project_gradient(once, params, 0)
    np.testing.assert_allclose(host(twice["probe"]), host(once["probe"]), atol=1e-12)
    g1 = host(once["probe"])
    # orthogonal projection: what is removed is orthogonal (real inner product) to what is kept
    assert abs(np.vdot(grad - g1, g1).real) < 1e-10 * np.vdot(grad, grad).real
    s0 = host(probe_spectrum(device.complex(probe), device))
    small, smaller = (host(probe_spectrum(device.complex(probe - h * g1), device))
                      for h in (1e-3, 1e-4))
    if cls is ProbePhaseOnly:  # the spectral modulus moves only to second order
        d1 = np.abs(np.abs(small) - np.abs(s0)).max()
        d2 = np.abs(np.abs(smaller) - np.abs(s0)).max()
        assert 80 < d1 / d2 < 120, (d1, d2)
    else:  # the spectral phase does not move at all (a linear subspace)
        for s in (small, smaller):
            assert np.abs(np.imag(s * np.conj(s0))).max() < 1e-12 * np.abs(s0).max() ** 2


def test_probe_phase_only_restores_the_reference_modulus(device):
    probe, grad = _spectrum_case(13)
    constraint = prepared(ProbePhaseOnly(), device)
    params = {"probe": device.complex(probe)}
    assert constraint.apply(params, 0) is False  # captures S0; nothing to do
    s0 = host(probe_spectrum(device.complex(probe), device))
    params["probe"] = device.complex(probe + 0.3 * grad)  # an unconstrained change
    assert constraint.apply(params, 1) is True
    s = host(probe_spectrum(params["probe"], device))
    np.testing.assert_allclose(np.abs(s), np.abs(s0), rtol=1e-12, atol=1e-12)
    moved = host(probe_spectrum(device.complex(probe + 0.3 * grad), device))
    np.testing.assert_allclose(s / np.abs(s), moved / np.abs(moved), atol=1e-12)  # phase kept
    assert constraint.apply(params, 2) is False  # idempotent
    constraint.prepare(context(device))  # forgets S0: the current probe becomes the reference
    params["probe"] = device.complex(probe + 0.3 * grad)
    assert constraint.apply(params, 3) is False


def test_probe_amplitude_only_restores_the_reference_phase(device):
    probe, grad = _spectrum_case(14)
    constraint = prepared(ProbeAmplitudeOnly(), device)
    params = {"probe": device.complex(probe)}
    assert constraint.apply(params, 0) is False
    s0 = host(probe_spectrum(device.complex(probe), device))
    params["probe"] = device.complex(probe + 0.05 * grad)
    assert constraint.apply(params, 1) is True
    s = host(probe_spectrum(params["probe"], device))
    assert np.abs(np.imag(s * np.conj(s0))).max() < 1e-12 * np.abs(s0).max() ** 2
    moved = host(probe_spectrum(device.complex(probe + 0.05 * grad), device))
    unit = s0 / np.abs(s0)
    np.testing.assert_allclose(s, unit * np.real(np.conj(unit) * moved), atol=1e-12)
    assert constraint.apply(params, 2) is False


def test_spectrum_constraints_need_no_device_specific_state():
    """The captured reference follows the probe's shape (a new reconstruction re-captures)."""
    device = Device("cpu", "double")
    constraint = prepared(ProbePhaseOnly(), device)
    constraint.apply({"probe": random_probe(15, shape=(1, 8, 8), scales=(1.0,))}, 0)
    params = {"probe": random_probe(16)}
    before = params["probe"].copy()
    assert constraint.apply(params, 0) is False
    np.testing.assert_allclose(params["probe"], before, atol=1e-12)
