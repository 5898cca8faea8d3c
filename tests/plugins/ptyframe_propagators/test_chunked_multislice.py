"""Multislice in cache-sized chunks (Device(fft="fftw"): product, Fresnel step and slice
adjoint fused per chunk) against the whole-array steps."""

import numpy as np
import pytest
from ptyframe_propagators.multislice import Multislice

from ptyframe.components import PropagationGeometry
from ptyframe.core.device import Device
from ptyframe.core.fft import pyfftw_available
from ptyframe.core.fused import numba_available

needs_fftw = pytest.mark.skipif(not pyfftw_available(), reason="pyFFTW (extra 'fftw') missing")
FUSED = ["numpy", pytest.param("numba", marks=pytest.mark.skipif(
    not numba_available(), reason="numba (extra 'numba') missing"))]


def run(device, chunked, wave, trans, grad_exit):
    """(exit wave, dL/d conj(wave), dL/d conj(T)) through a workspace; ``chunked=False``
    forces whole-array steps on the same device."""
    if not chunked:
        device.chunk_planes = lambda plane_bytes, total_bytes=None: None
    prop = Multislice(slice_thickness_A=[2.0, 1.0, 3.0])
    prop.prepare(PropagationGeometry((16, 12), 0.4, 0.02, trans.shape[0], device))
    ws = device.workspace()
    exit_wave, cache = prop.forward(wave.copy(), trans.copy(), keep=True, workspace=ws)
    assert (cache[-1] is not None) == chunked  # the path under test was taken
    exit_wave = exit_wave.copy()
    grad_wave, grad_trans = prop.vjp(grad_exit.copy(), cache)
    return exit_wave, grad_wave.copy(), grad_trans.copy()


@needs_fftw
@pytest.mark.parametrize("precision", ["single", "double"])
@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("wave_rows", [1, 2])
def test_chunked_steps_equal_whole_array_steps(precision, fused, wave_rows):
    rng = np.random.default_rng(0)
    dtype = np.complex64 if precision == "single" else np.complex128
    K, M, B = 2, 3, 11  # B not a multiple of the chunk: a remainder chunk
    shape = (wave_rows, M, B, 16, 12)

    def rand(shape):
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)

    wave, trans = rand(shape), rand((4, K, 1, B, 16, 12))
    grad_exit = rand((K, M, B, 16, 12))
    results = []
    for chunked in (True, False):
        device = Device("cpu", precision, workers=1, fft="fftw", fused=fused)
        device.CHUNK_BYTES = 4 * 16 * 12 * np.dtype(dtype).itemsize  # 4 planes per chunk
        device.CHUNK_MIN_BYTES = 0
        results.append(run(device, chunked, wave, trans, grad_exit))
    rtol = 2e-6 if precision == "single" else 1e-12
    for fast, ref in zip(*results, strict=True):
        assert fast.shape == ref.shape
        err = np.abs(fast - ref).max() / np.abs(ref).max()
        assert err <= rtol, err


def test_chunking_only_with_planned_fftw_on_cpu_for_large_arrays():
    big = Device.CHUNK_MIN_BYTES
    assert Device("cpu", fft="scipy").chunk_planes(32768, big) is None
    if pyfftw_available():
        fftw = Device("cpu", fft="fftw")
        assert fftw.chunk_planes(32768, big) == Device.CHUNK_BYTES // 32768
        assert fftw.chunk_planes(10**9) == 1
        assert fftw.chunk_planes(32768, big - 1) is None
