"""The ml, lsq_sqrt and lsq losses on 2 x 2 arrays whose values and gradients dL/dI are
worked out by hand in each test (exact numbers, not a re-implementation of the formula)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ptyframe.components import ModelContext
from ptyframe.core.device import Device
from ptyframe.registry.loader import load_registry

REGISTRY = load_registry()


def evaluate(settings: dict, intensity: list, measured: list, overwrite: bool = False,
             dtype: type = np.float64) -> tuple[float, np.ndarray]:
    """Loss value and dL/dI as the model calls them (prepare_measured once, then per batch)."""
    loss = REGISTRY.create("loss", settings)
    device = Device("cpu", "double" if dtype == np.float64 else "single")
    loss.prepare(ModelContext(window=(2, 2), pixel_size_A=1.0, wavelength_A=0.025,
                              n_measurements=1, device=device, measured_shape=(2, 2)))
    prepared = loss.prepare_measured(np.asarray(measured, dtype=dtype))
    intensity = np.asarray(intensity, dtype=dtype)
    if overwrite:
        return loss.value_and_grad(intensity, prepared, overwrite=True)
    return loss.value_and_grad(intensity, prepared)


@pytest.mark.parametrize("overwrite", [False, True])
def test_lsq_sqrt_by_hand(overwrite):
    """I = [1, 4; 9, 1/4], M = [4, 4; 1, 1], eps = 0: sqrt I - sqrt M = [-1, 0; 2, -1/2]
    -> L = 1 + 0 + 4 + 1/4 = 5.25; dL/dI = 1 - sqrt M / sqrt I = [1 - 2, 1 - 1; 1 - 1/3, 1 - 2]."""
    value, grad = evaluate({"type": "lsq_sqrt", "epsilon": 0.0}, [[1, 4], [9, 0.25]],
                           [[4, 4], [1, 1]], overwrite)
    assert value == pytest.approx(5.25, rel=1e-14)
    np.testing.assert_allclose(grad, [[-1.0, 0.0], [2.0 / 3.0, -1.0]], rtol=1e-14, atol=1e-15)


def test_lsq_sqrt_default_floor():
    """The default eps = 1e-6 shifts I: at I = 0, M = 1 the loss is (sqrt(1e-6) - 1)^2 =
    0.998001 and dL/dI = 1 - 1 / 1e-3 = -999 (finite, unlike eps = 0)."""
    value, grad = evaluate({"type": "lsq_sqrt"}, [[0.0]], [[1.0]])
    assert value == pytest.approx(0.998001, rel=1e-12)
    assert grad[0, 0] == pytest.approx(-999.0, rel=1e-12)


@pytest.mark.parametrize("overwrite", [False, True])
def test_ml_by_hand(overwrite):
    """I = [0.5, 1.5; 3.5, 0], M = [2, 0; 4, 1], eps = 0.5 -> I + eps = [1, 2; 4, 1/2];
    L = sum(I + eps) - sum M log(I + eps) = 7.5 - (2 log 1 + 0 + 4 log 4 + log 1/2)
    = 7.5 - 7 log 2; dL/dI = 1 - M / (I + eps) = [1 - 2, 1 - 0; 1 - 1, 1 - 2]."""
    value, grad = evaluate({"type": "ml", "epsilon": 0.5}, [[0.5, 1.5], [3.5, 0.0]],
                           [[2, 0], [4, 1]], overwrite)
    assert value == pytest.approx(7.5 - 7 * math.log(2), rel=1e-14)
    np.testing.assert_allclose(grad, [[-1.0, 1.0], [0.0, -1.0]], atol=1e-15)


def test_ml_floor_keeps_empty_model_pixels_finite():
    """Default eps = 0.01: a model pixel at 0 with 3 counts costs 0.01 - 3 log 0.01 =
    0.01 + 6 log 10 and pulls with dL/dI = 1 - 3 / 0.01 = -299 (the reference had no floor)."""
    value, grad = evaluate({"type": "ml"}, [[0.0]], [[3.0]])
    assert value == pytest.approx(0.01 + 6 * math.log(10), rel=1e-13)
    assert grad[0, 0] == pytest.approx(-299.0, rel=1e-13)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("overwrite", [False, True])
def test_lsq_by_hand(dtype, overwrite):
    """I = [1, 2; 3, 4], M = [0, 2; 5, 1]: I - M = [1, 0; -2, 3] -> L = 1 + 0 + 4 + 9 = 14,
    dL/dI = 2 (I - M) = [2, 0; -4, 6] (exact in single precision too)."""
    value, grad = evaluate({"type": "lsq"}, [[1, 2], [3, 4]], [[0, 2], [5, 1]], overwrite,
                           dtype)
    assert value == 14.0
    np.testing.assert_array_equal(grad, [[2.0, 0.0], [-4.0, 6.0]])
    assert grad.dtype == dtype
