"""Defining properties of the object constraints (gaussian_filter, charge_flip, fancy_sigma,
band_limit, restart_from_vacuum, phase_only_object), on small random objects."""

from __future__ import annotations

import numpy as np
import pytest
from ptyframe_constraints.object_constraints import (
    BandLimit,
    ChargeFlip,
    FancySigma,
    GaussianFilter,
    PhaseOnlyObject,
    RestartFromVacuum,
)

from ptyframe.testing import check_gradient, prepared

SHAPE = (32, 32)


def host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def freqs(shape=SHAPE):
    return np.fft.fftfreq(shape[0])[:, None], np.fft.fftfreq(shape[1])[None, :]


def gaussian(sigma, shape=SHAPE):
    fy, fx = freqs(shape)
    return np.exp(-2 * np.pi**2 * sigma**2 * (fy**2 + fx**2))


def smooth_field(rng, amplitude, width=0.08, shape=SHAPE):
    """Periodic random field, band-limited to ~``width`` cycles/px, peak |value| = amplitude."""
    fy, fx = freqs(shape)
    spec = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) * np.exp(
        -(fy**2 + fx**2) / (2 * width**2))
    field = np.fft.ifft2(spec).real
    return field * amplitude / np.abs(field).max()


def random_object(rng, shape=(2, 2, *SHAPE), phase=(-0.5, 1.0), absorption=(0.0, 0.1)):
    return np.exp(1j * rng.uniform(*phase, shape) - rng.uniform(*absorption, shape))


# ================================================================================ gaussian filter
def test_gaussian_filter_smooths_the_unwrapped_phase(device):
    """Phase of +-5 rad (angle(O) wraps many times, neighbours differ by < pi): the filtered
    object is |O| exp(i G * phi), so each Fourier component of the phase is damped by exactly
    the Gaussian factor exp(-2 pi^2 sigma^2 f^2)."""
    rng = np.random.default_rng(0)
    phi = np.stack([smooth_field(rng, 5.0), smooth_field(rng, 4.0)])[:, None]  # 2 slices
    assert np.abs(np.diff(phi, axis=-1)).max() < np.pi
    assert np.abs(np.angle(np.exp(1j * phi)) - phi).max() > np.pi  # it does wrap
    amplitude = 0.9 + 0.05 * rng.random(phi.shape)
    obj = amplitude * np.exp(1j * phi)
    params = {"object": device.complex(obj)}
    sigma = 1.5
    assert prepared(GaussianFilter(sigma_phase_px=sigma), device).apply(params, 0) is True
    new = host(params["object"])
    g = gaussian(sigma)
    expected_phi = np.fft.ifft2(np.fft.fft2(phi) * g).real
    np.testing.assert_allclose(new, amplitude * np.exp(1j * expected_phi), atol=1e-10)
    # the power of every phase component is reduced by the Gaussian factor g^2
    new_phi = phi + np.angle(new / obj)  # unwrapped new phase
    before, after = np.abs(np.fft.fft2(phi)) ** 2, np.abs(np.fft.fft2(new_phi)) ** 2
    significant = before > 1e-6 * before.max()
    np.testing.assert_allclose((after / np.where(significant, before, 1))[significant],
                               np.broadcast_to(g**2, before.shape)[significant], rtol=1e-6)


def test_gaussian_filter_of_a_wrapping_ramp_keeps_it():
    """A phase ramp of 6 full turns across the object is smooth (no curvature): unchanged,
    where a filter of angle(O) would smear each of its 2 pi jumps."""
    from ptyframe.core.device import Device

    device = Device("cpu", "double")
    x = np.arange(SHAPE[1])
    ramp = np.exp(2j * np.pi * 6 * x / SHAPE[1])[None, None, None, :] * np.ones((1, 1, *SHAPE))
    params = {"object": ramp.copy()}
    prepared(GaussianFilter(sigma_phase_px=2.0), device).apply(params, 0)
    np.testing.assert_allclose(params["object"], ramp, atol=1e-12)


def test_gaussian_filter_of_the_amplitude(device):
    rng = np.random.default_rng(1)
    phi = rng.uniform(-1, 1, (1, 2, *SHAPE))
    amplitude = 1.0 + smooth_field(rng, 0.2, width=0.3)[None, None]
    obj = amplitude * np.exp(1j * phi)
    params = {"object": device.complex(obj)}
    constraint = GaussianFilter(sigma_phase_px=0.0, sigma_amplitude_px=1.0)
    prepared(constraint, device).apply(params, 0)
    new = host(params["object"])
    expected = np.fft.ifft2(np.fft.fft2(amplitude) * gaussian(1.0)).real
    np.testing.assert_allclose(np.abs(new), np.broadcast_to(expected, new.shape), atol=1e-12)
    np.testing.assert_allclose(np.angle(new), phi, atol=1e-12)  # phase untouched


# ================================================================================ charge flip
def test_charge_flip_rule(device):
    """Per (slice, mode) plane: phase below delta_phase x max(phase) times beta_phase,
    absorption below delta_abs x max(absorption) times beta_abs, the rest bit-identical."""
    rng = np.random.default_rng(2)
    obj = random_object(rng, absorption=(-0.02, 0.1))
    obj[1, 0] *= np.exp(0.8j)  # planes with different maxima -> different thresholds
    params = {"object": device.complex(obj)}
    flip = prepared(ChargeFlip(delta_phase=0.2, beta_phase=-0.9, delta_abs=0.3, beta_abs=-0.5),
                    device)
    assert flip.apply(params, 0) is True
    new = host(params["object"])
    phase, absorption = np.angle(obj), -np.log(np.abs(obj))
    low_p = phase < 0.2 * phase.max(axis=(-2, -1), keepdims=True)
    low_a = absorption < 0.3 * absorption.max(axis=(-2, -1), keepdims=True)
    assert 0.1 < low_p.mean() < 0.9 and 0.1 < low_a.mean() < 0.9
    np.testing.assert_allclose(np.angle(new), np.where(low_p, -0.9 * phase, phase),
                               atol=1e-12)
    np.testing.assert_allclose(-np.log(np.abs(new)),
                               np.where(low_a, -0.5 * absorption, absorption), atol=1e-12)
    untouched = ~low_p & ~low_a
    assert np.array_equal(new[untouched], obj[untouched])


def test_charge_flip_with_beta_one_does_nothing(cpu):
    obj = random_object(np.random.default_rng(3))
    params = {"object": obj.copy()}
    prepared(ChargeFlip(beta_phase=1.0, beta_abs=1.0), cpu).apply(params, 0)
    assert np.array_equal(params["object"], obj)


# ================================================================================ fancy sigma
def test_fancy_sigma_without_flip_is_the_identity(device):
    """Deconvolution and reconvolution by the same Gaussian cancel (tiny Wiener epsilon)."""
    obj = random_object(np.random.default_rng(4))
    params = {"object": device.complex(obj)}
    constraint = FancySigma(sigma_px=0.8, beta_phase=1.0, beta_abs=1.0, sigma_abs_px=0.8,
                            wiener_epsilon=1e-14)
    prepared(constraint, device).apply(params, 0)
    np.testing.assert_allclose(host(params["object"]), obj, atol=1e-7)


def test_fancy_sigma_flips_the_deconvolved_potential(cpu):
    """Phase = G * s (point sources s: atoms of 0.8 rad, one negative 'ghost' of -0.3) + c.
    Deconvolution recovers s - min(G*s) exactly; the flip rule then acts on those values and
    the result is reconvolved and shifted back: the negative ghost becomes a positive peak."""
    rng = np.random.default_rng(5)
    sigma = 0.8
    s = np.zeros(SHAPE)
    atoms = rng.choice(SHAPE[0] * SHAPE[1], 12, replace=False)
    s.flat[atoms[:11]] = 0.8
    s.flat[atoms[11]] = -0.3
    g = gaussian(sigma)
    blurred = np.fft.ifft2(np.fft.fft2(s) * g).real
    phase = blurred + 0.05
    obj = np.exp(1j * phase)[None, None]
    params = {"object": obj.copy()}
    constraint = FancySigma(sigma_px=sigma, delta_phase=0.1, beta_phase=-0.95, beta_abs=1.0,
                            wiener_epsilon=1e-14)
    prepared(constraint, cpu).apply(params, 0)
    deconvolved = s - blurred.min()  # = IFFT[FFT(phase - min(phase)) / G]
    flipped = np.where(deconvolved < 0.1 * deconvolved.max(), -0.95 * deconvolved,
                       deconvolved)
    expected = np.fft.ifft2(np.fft.fft2(flipped) * g).real + phase.min()
    np.testing.assert_allclose(np.angle(params["object"][0, 0]), expected, atol=1e-6)
    # contrast against the vacuum level (median): the ghost was a dip, it is now a peak
    ghost = np.unravel_index(atoms[11], SHAPE)
    new = np.angle(params["object"][0, 0])
    assert phase[ghost] - np.median(phase) < -0.05
    assert new[ghost] - np.median(new) > 0.05


# ================================================================================ band limit
def test_band_limit_zeroes_high_frequencies_and_keeps_the_rest(device):
    rng = np.random.default_rng(6)
    obj = random_object(rng)
    params = {"object": device.complex(obj)}
    constraint = prepared(BandLimit(cutoff=0.6, extra_cut=0.05), device)
    assert constraint.apply(params, 0) is True  # a random object is not band-limited
    new = host(params["object"])
    fy, fx = freqs()
    r = np.hypot(fy, fx) / 0.5
    before, after = np.fft.fft2(obj), np.fft.fft2(new)
    keep = np.broadcast_to(r <= 0.55, before.shape)
    np.testing.assert_allclose(after[keep], before[keep], rtol=1e-12, atol=1e-9)
    assert np.abs(after[~keep]).max() < 1e-9 * np.abs(before).max()
    # already band-limited: nothing left to do, no history reset
    assert constraint.apply(params, 1) is False
    np.testing.assert_allclose(host(params["object"]), new, atol=1e-12)


def test_band_limit_keeps_vacuum_and_projects_gradients(cpu):
    obj = np.ones((1, 1, *SHAPE), dtype=complex)
    params = {"object": obj.copy(), "probe": np.ones((1, 16, 16), dtype=complex)}
    constraint = prepared(BandLimit(), cpu)
    assert constraint.apply(params, 0) is False
    np.testing.assert_allclose(params["object"], obj, atol=1e-14)
    rng = np.random.default_rng(7)
    grads = {"object": rng.standard_normal(obj.shape) + 1j * rng.standard_normal(obj.shape)}
    once = constraint.project_gradient(grads, params, 0)
    twice = constraint.project_gradient(once, params, 0)
    np.testing.assert_allclose(twice["object"], once["object"], atol=1e-12)
    # the projection is orthogonal: the removed part is orthogonal to what is kept
    removed = grads["object"] - once["object"]
    assert abs(np.vdot(removed, once["object"])) < 1e-9 * np.vdot(grads["object"],
                                                                   grads["object"]).real


def test_band_limit_of_the_probe(cpu):
    rng = np.random.default_rng(8)
    probe = rng.standard_normal((2, 16, 16)) + 1j * rng.standard_normal((2, 16, 16))
    params = {"object": np.ones((1, 1, *SHAPE), dtype=complex), "probe": probe.copy()}
    prepared(BandLimit(object=False, probe=True, probe_cutoff=0.5), cpu).apply(params, 0)
    spectrum = np.fft.fft2(params["probe"])
    fy, fx = freqs((16, 16))
    outside = np.broadcast_to(np.hypot(fy, fx) / 0.5 > 0.5, spectrum.shape)
    assert np.abs(spectrum[outside]).max() < 1e-12
    np.testing.assert_allclose(spectrum[~outside], np.fft.fft2(probe)[~outside], atol=1e-12)
    assert np.array_equal(params["object"], np.ones((1, 1, *SHAPE)))  # object=False


# ================================================================================ restart
def test_restart_from_vacuum(device):
    rng = np.random.default_rng(9)
    obj = random_object(rng)
    probe = rng.standard_normal((2, 16, 16)) + 0j
    params = {"object": device.complex(obj), "probe": device.complex(probe)}
    assert prepared(RestartFromVacuum(epochs=[3]), device).apply(params, 3) is True
    new = host(params["object"])
    assert new.shape == obj.shape and new.dtype == obj.dtype
    assert np.array_equal(new, np.ones_like(obj))
    assert np.array_equal(host(params["probe"]), probe)  # only the object is reset


# ================================================================================ phase only
def _phase_only_case(seed=10):
    rng = np.random.default_rng(seed)
    obj = random_object(rng, absorption=(-0.2, 0.2))
    grad = rng.standard_normal(obj.shape) + 1j * rng.standard_normal(obj.shape)
    return obj, grad


def test_phase_only_gradient_is_the_projection_on_the_phase_direction(device):
    obj, grad = _phase_only_case()
    constraint = prepared(PhaseOnlyObject(), device)
    params = {"object": device.complex(obj)}
    once = host(constraint.project_gradient({"object": device.complex(grad)}, params,
                                            0)["object"])
    twice = host(constraint.project_gradient({"object": device.complex(once)}, params,
                                             0)["object"])
    np.testing.assert_allclose(twice, once, atol=1e-12)  # a projection
    np.testing.assert_allclose(once, 1j * obj * np.imag(np.conj(obj) * grad) / np.abs(obj) ** 2,
                               atol=1e-12)
    # tangent to |O| = const: Re(conj(O) g') = 0, so |O - h g'| - |O| = O(h^2)
    assert np.abs(np.real(np.conj(obj) * once)).max() < 1e-12
    dev1 = np.abs(np.abs(obj - 1e-2 * once) - np.abs(obj)).max()
    dev2 = np.abs(np.abs(obj - 1e-3 * once) - np.abs(obj)).max()
    assert 80 < dev1 / dev2 < 120, (dev1, dev2)  # quadratic, not linear (ratio 10)
    # other blocks pass through; no object gradient (object not refined): nothing to do
    probe_grad = device.complex(grad[0])
    out = constraint.project_gradient({"object": device.complex(grad), "probe": probe_grad},
                                      params, 0)
    assert out["probe"] is probe_grad
    assert constraint.project_gradient({"probe": probe_grad}, params, 0) == {
        "probe": probe_grad}


def test_phase_only_gradient_is_exact_along_phase_directions(cpu):
    """L = sum |O - T|^2 (g = O - T): the projected gradient still predicts the change of L
    along any phase variation d = i O dphi (finite differences)."""
    obj, target = _phase_only_case(11)
    obj = obj / np.abs(obj)

    def loss(p):
        return float(np.sum(np.abs(p["object"] - target) ** 2))

    projected = prepared(PhaseOnlyObject(), cpu).project_gradient({"object": obj - target},
                                                                  {"object": obj}, 0)
    dphi = np.random.default_rng(12).standard_normal(obj.shape)
    check_gradient(loss, {"object": obj}, projected, "object", direction=1j * obj * dphi,
                   rtol=1e-6)


def test_phase_only_retraction(device):
    obj, grad = _phase_only_case(13)
    constraint = prepared(PhaseOnlyObject(), device)
    params = {"object": device.complex(obj)}
    assert constraint.apply(params, 0) is True  # |O| up to 20 % off: a real change
    unit = host(params["object"])
    np.testing.assert_allclose(np.abs(unit), 1.0, atol=1e-14)
    np.testing.assert_allclose(np.angle(unit), np.angle(obj), atol=1e-14)
    # after a small projected step only the second-order retraction is left: no reset
    g = constraint.project_gradient({"object": device.complex(grad)}, params, 0)
    params["object"] = params["object"] - 0.01 * g["object"]
    assert constraint.apply(params, 1) is False
    np.testing.assert_allclose(np.abs(host(params["object"])), 1.0, atol=1e-14)
    zero = {"object": device.complex(np.zeros((1, 1, 4, 4)))}
    constraint.apply(zero, 2)
    assert np.array_equal(host(zero["object"]), np.ones((1, 1, 4, 4)))


@pytest.mark.parametrize("cls", [GaussianFilter, ChargeFlip, FancySigma, BandLimit,
                                 PhaseOnlyObject, RestartFromVacuum])
def test_single_precision_is_kept(cls):
    from ptyframe.core.device import Device

    device = Device("cpu", "single")
    obj = random_object(np.random.default_rng(14)).astype(np.complex64)
    params = {"object": obj.copy(), "probe": np.ones((1, 16, 16), dtype=np.complex64)}
    prepared(cls(), device).apply(params, 0)
    assert params["object"].dtype == np.complex64
    assert np.all(np.isfinite(params["object"]))
