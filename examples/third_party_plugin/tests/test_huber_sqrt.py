"""The checks a plugin author runs on a new loss, with ptyframe.testing.

Run from this folder after installing the plugin (``pip install -e .``): ``pytest tests``.
"""

from __future__ import annotations

import numpy as np
import pytest
from ptyframe_example_plugin.huber import HuberSqrt

from ptyframe.components import LossMetric
from ptyframe.core.device import Device
from ptyframe.registry.loader import load_registry
from ptyframe.testing import check_gradient, prepared


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    measured = rng.poisson(20.0, size=(4, 16, 16)).astype(float)
    intensity = rng.uniform(1.0, 60.0, size=measured.shape)  # many residuals beyond delta
    return intensity, measured


def test_registered_through_the_entry_point():
    registry = load_registry()
    entry = registry.entry("loss", "huber_sqrt")
    assert entry.cls is HuberSqrt
    assert entry.distribution == "ptyframe-example-plugin"
    loss = registry.create("loss", {"type": "huber_sqrt", "delta": 2.0})
    assert isinstance(loss, LossMetric) and loss.delta == 2.0
    assert registry.create("loss", loss.to_config()).to_config() == loss.to_config()


@pytest.mark.parametrize("delta", [0.5, 1.5, 100.0])
def test_gradient_matches_finite_differences(delta):
    loss = prepared(HuberSqrt(delta=delta))  # prepare(context) binds the CPU Device
    intensity, measured = _data()
    sqrt_m = loss.prepare_measured(measured)
    value, grad = loss.value_and_grad(intensity.copy(), sqrt_m)
    assert np.isfinite(value) and grad.shape == intensity.shape

    def objective(params):
        return loss.value_and_grad(params["I"].copy(), sqrt_m)[0]

    # ptyframe's convention for a real block x is g = 1/2 dL/dx (so that dL = 2 Re<g, dx>)
    check_gradient(objective, {"I": intensity}, {"I": grad / 2}, "I", rtol=1e-6)


def test_equals_lsq_sqrt_below_the_threshold_and_is_linear_above():
    intensity, measured = _data(1)
    residual = np.sqrt(intensity + 1e-6) - np.sqrt(measured)
    big = prepared(HuberSqrt(delta=1e3))
    value, grad = big.value_and_grad(intensity.copy(), np.sqrt(measured))
    np.testing.assert_allclose(value, np.sum(residual**2), rtol=1e-12)
    np.testing.assert_allclose(grad, residual / np.sqrt(intensity + 1e-6), rtol=1e-12)

    small = prepared(HuberSqrt(delta=1e-3))
    value, _ = small.value_and_grad(intensity.copy(), np.sqrt(measured))
    np.testing.assert_allclose(value, np.sum(2e-3 * np.abs(residual) - 1e-6), rtol=1e-9)


def test_single_precision_stays_single():
    intensity, measured = _data(2)
    loss = prepared(HuberSqrt(), Device("cpu", "single"))
    value, grad = loss.value_and_grad(intensity.astype(np.float32),
                                      loss.prepare_measured(measured.astype(np.float32)))
    assert grad.dtype == np.float32 and isinstance(value, float)


@pytest.mark.parametrize("settings", [{"delta": 0}, {"delta": -1}, {"delta": float("inf")},
                                      {"epsilon": -1e-3}])
def test_bad_settings_are_rejected(settings):
    with pytest.raises(ValueError, match=next(iter(settings))):
        HuberSqrt(**settings)
