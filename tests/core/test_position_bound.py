"""``benchmarks/position_bound.py``: the Fisher information of a pattern about its probe
position vanishes for a featureless object, grows with the dose as N_e, and matches the
spread of a maximum-likelihood position fit on Poisson draws."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import h5py
import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "position_bound.py"
N = 32


@pytest.fixture(scope="module")
def bound():
    spec = importlib.util.spec_from_file_location("position_bound", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _file(tmp_path: Path, phase: np.ndarray, electrons: float) -> Path:
    k = np.fft.fftfreq(N)
    ky, kx = np.meshgrid(k, k, indexing="ij")
    aperture = (np.hypot(ky, kx) < 0.2).astype(complex)
    probe = np.fft.fftshift(np.fft.ifft2(aperture * np.exp(-1j * 40 * (ky**2 + kx**2))))
    probe /= np.sqrt((np.abs(probe) ** 2).sum())
    path = tmp_path / f"f{electrons:g}_{phase.std():.3f}.h5"
    with h5py.File(path, "w") as fh:
        fh["gt_transmission_phase"] = phase
        fh["gt_probe"] = probe.astype(np.complex64)
        fh.attrs["recon_pixel_size_A"] = 0.3
        fh.attrs["gt_origin_yx_A"] = [0.0, 0.0]
        fh.attrs["electrons_per_pattern"] = electrons
    return path


def _model(bound, path):
    with h5py.File(path, "r") as fh:
        return bound.ProjectedModel(fh)


def test_featureless_object_tells_nothing_and_texture_tells_more_with_dose(bound, tmp_path):
    r = np.array([24.0 * 0.3 + 0.07, 24.0 * 0.3 - 0.11])
    flat = _model(bound, _file(tmp_path, np.zeros((64, 64)), 1e3))
    info, _ = bound.fisher_information(flat, r, flat.corner(r))
    assert np.abs(info).max() < 1e-6
    phase = np.random.default_rng(0).normal(scale=0.3, size=(64, 64))
    low = _model(bound, _file(tmp_path, phase, 1e3))
    high = _model(bound, _file(tmp_path, phase, 4e3))
    info_low, _ = bound.fisher_information(low, r, low.corner(r))
    info_high, _ = bound.fisher_information(high, r, high.corner(r))
    assert np.all(np.linalg.eigvalsh(info_low) > 0)
    assert np.allclose(info_high, 4 * info_low, rtol=1e-6)


def test_bound_matches_the_spread_of_maximum_likelihood_fits(bound, tmp_path):
    """Poisson draws of one pattern, each fitted for its position by a 1-D Newton search along
    y: the spread of the fits equals the bound within sampling error."""
    phase = np.random.default_rng(1).normal(scale=0.3, size=(64, 64))
    model = _model(bound, _file(tmp_path, phase, 2e3))
    r = np.array([24.0 * 0.3 + 0.05, 24.0 * 0.3])
    corner = model.corner(r)
    info, lam = bound.fisher_information(model, r, corner)
    sigma_y = np.sqrt(np.linalg.inv(info)[0, 0])
    rng = np.random.default_rng(2)
    h = 1e-3
    fits = []
    for _ in range(150):
        counts = rng.poisson(lam)
        y = r.copy()
        for _ in range(4):  # Newton on the Poisson log-likelihood along y (x held true)
            def loglik(yy, counts=counts):
                m = np.maximum(model.counts(np.array([yy, r[1]]), corner), 1e-12)
                return float((counts * np.log(m) - m).sum())
            d1 = (loglik(y[0] + h) - loglik(y[0] - h)) / (2 * h)
            d2 = (loglik(y[0] + h) - 2 * loglik(y[0]) + loglik(y[0] - h)) / h**2
            y[0] -= d1 / d2
        fits.append(y[0] - r[0])
    spread = np.std(fits)
    # the y-only fit knows x, so its bound is 1 / F_yy, not (F^-1)_yy
    sigma_y_known_x = 1 / np.sqrt(info[0, 0])
    assert sigma_y_known_x <= sigma_y
    assert spread == pytest.approx(sigma_y_known_x, rel=0.25)
