"""The GPU branch of Device.gather_windows / scatter_add_windows (flat window indices, one
take / scatter-add; used with CuPy) run with NumPy arrays and compared with the CPU branch
(per-window slices) and with explicit loops. The device is a CPU device switched onto its GPU
code path: ``kind = "gpu"`` and a NumPy stand-in for ``cupyx.scatter_add``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from ptyframe_losses.intensity_losses import LeastSquaresSqrt
from ptyframe_propagators.multislice import Multislice

from ptyframe.core.device import Device
from ptyframe.engine.model import PtychographyModel

WINDOW = (6, 7)
PLANES = (3, 20, 23)
#: overlapping windows, both edges of the planes, one corner repeated
CORNERS = np.array([[0, 0], [2, 3], [14, 16], [2, 3], [7, 0], [0, 16]])


class _NumpyCupyx:
    """cupyx.scatter_add(a, indices, values): a[indices] += values, repeats accumulated."""

    @staticmethod
    def scatter_add(target: np.ndarray, indices: np.ndarray, values: np.ndarray) -> None:
        np.add.at(target, indices, values)


def gpu_path_device(precision: str = "double") -> Device:
    dev = Device("cpu", precision)
    dev.kind = "gpu"
    dev._cupyx = _NumpyCupyx()
    return dev


def planes(seed: int = 0, dtype: Any = np.complex128) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=PLANES) + 1j * rng.normal(size=PLANES)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.complex128, np.complex64])
def test_gather_gpu_path_equals_cpu_path_and_loops(dtype):
    obj = planes(dtype=dtype)
    shape = (PLANES[0], len(CORNERS), *WINDOW)
    gpu = gpu_path_device().gather_windows(obj, CORNERS, np.empty(shape, dtype))
    cpu = Device("cpu").gather_windows(obj, CORNERS, np.empty(shape, dtype))
    np.testing.assert_array_equal(gpu, cpu)
    for b, (y, x) in enumerate(CORNERS):
        np.testing.assert_array_equal(gpu[:, b], obj[:, y:y + WINDOW[0], x:x + WINDOW[1]])


def test_scatter_gpu_path_equals_cpu_path_and_loops():
    """Overlaps and the repeated corner accumulate; every plane gets only its own values."""
    rng = np.random.default_rng(1)
    values = rng.normal(size=(PLANES[0], len(CORNERS), *WINDOW)) + 0j
    start = planes(2)
    gpu, cpu, loops = start.copy(), start.copy(), start.copy()
    gpu_path_device().scatter_add_windows(gpu, CORNERS, values)
    Device("cpu", "double").scatter_add_windows(cpu, CORNERS, values)
    for b, (y, x) in enumerate(CORNERS):
        for p in range(PLANES[0]):
            loops[p, y:y + WINDOW[0], x:x + WINDOW[1]] += values[p, b]
    np.testing.assert_allclose(gpu, loops, rtol=0, atol=1e-13)
    np.testing.assert_allclose(cpu, loops, rtol=0, atol=1e-13)


def test_gpu_path_scatter_is_the_adjoint_of_its_gather():
    dev = gpu_path_device()
    rng = np.random.default_rng(3)
    x = planes(4)
    y = rng.normal(size=(PLANES[0], len(CORNERS), *WINDOW)) + 1j * rng.normal(
        size=(PLANES[0], len(CORNERS), *WINDOW))
    gx = dev.gather_windows(x, CORNERS, np.empty(y.shape, complex))
    sy = np.zeros(PLANES, complex)
    dev.scatter_add_windows(sy, CORNERS, y)
    assert np.vdot(y, gx) == pytest.approx(np.vdot(sy, x), rel=1e-12)


def test_model_gradient_is_the_same_on_both_index_paths():
    """The whole forward model, loss and object/probe/position gradients of a 2-slice,
    2-object-mode problem agree between the GPU index path and the CPU one."""
    rng = np.random.default_rng(5)
    n, n_meas = 16, 7
    obj = np.exp(1j * rng.uniform(0, 0.5, (2, 2, 30, 30)))
    probe = np.fft.ifft2(np.exp(1j * rng.uniform(0, 1, (2, n, n))) * (
        np.hypot(*np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n))) < 0.2))
    positions = rng.uniform(0, 30 - n - 1, (n_meas, 2))
    positions[3] = positions[1]  # the same window twice
    measured = rng.poisson(20.0, (n_meas, n, n)).astype(float)
    results = []
    for dev in (Device("cpu", "double"), gpu_path_device()):
        model = PtychographyModel.from_geometry(
            Multislice(slice_thickness_A=5.0), LeastSquaresSqrt(), dev,
                                  (n, n), 0.3, 0.025, 2, measured, batch_size=3)
        params = {"object": obj.copy(), "probe": probe * 30, "positions": positions.copy()}
        results.append(model.value_and_grad(params, ("object", "probe", "positions")))
    (v_cpu, g_cpu), (v_gpu, g_gpu) = results
    assert v_gpu == pytest.approx(v_cpu, rel=1e-13)
    for block in ("object", "probe", "positions"):
        np.testing.assert_allclose(g_gpu[block], g_cpu[block], rtol=1e-11,
                                   atol=1e-12 * np.abs(g_cpu[block]).max())
