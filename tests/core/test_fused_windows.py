"""Fused one-slice window kernels (gather x exit-wave product; adjoint + scatter-add) against
the gather / propagator / scatter reference, and the model on that path."""

import numpy as np
import pytest
from ptyframe_losses.intensity_losses import LeastSquaresSqrt, PoissonML
from ptyframe_propagators.higher_order import BetterMultislice
from ptyframe_propagators.multislice import Multislice

from ptyframe.core.device import Device
from ptyframe.core.fft import pyfftw_available
from ptyframe.core.fused import NumbaKernels, NumpyKernels, numba_available
from ptyframe.engine.model import PtychographyModel
from ptyframe.testing import check_gradient
from ptyframe.testing.problems import random_far_field_problem

needs_numba = pytest.mark.skipif(not numba_available(), reason="numba (extra 'numba') missing")
KERNELS = ["numpy", pytest.param("numba", marks=needs_numba)]
RTOL = {np.complex64: 2e-6, np.complex128: 1e-12}
# (object modes K, rows of the incident wave: 1 = broadcast over K, probe modes M)
LAYOUTS = [(1, 1, 1), (2, 1, 3), (2, 2, 2)]


def random_complex(rng, shape, dtype):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


def rel_err(a, b):
    """Largest difference relative to the largest reference value (absolute for zeros)."""
    return float(np.abs(a - b).max() / (np.abs(b).max() or 1.0))


def window_case(dtype, K, KW, M, seed=0):
    rng = np.random.default_rng(seed)
    planes = random_complex(rng, (K, 30, 34), dtype)
    corners = rng.integers(0, 20, (9, 2))
    corners[1] = corners[0]  # overlapping windows accumulate
    wave = random_complex(rng, (KW, M, 9, 10, 12), dtype)
    g = random_complex(rng, (K, M, 9, 10, 12), dtype)
    return planes, corners, wave, g


def gathered(planes, corners, ny, nx):
    """(K, 1, B, ny, nx) windows by plain slicing (the definition)."""
    return np.stack([planes[:, y:y + ny, x:x + nx] for y, x in corners], axis=1)[:, None]


@pytest.mark.parametrize("fused", KERNELS)
@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_window_kernels_equal_their_definition(fused, dtype, layout):
    """out = wave T (windows of the planes); target += sum_m conj(wave) g scattered back in
    window order; g *= conj(T): each against the gather / product / scatter definition."""
    K, KW, M = layout
    planes, corners, wave, g = window_case(dtype, K, KW, M)
    kernels = NumbaKernels(np) if fused == "numba" else NumpyKernels(np)
    T = gathered(planes, corners, 10, 12)
    out = kernels.window_product(wave, planes, corners, np.empty((K, M, 9, 10, 12), dtype))
    assert rel_err(out, wave * T) <= RTOL[dtype]
    target = planes.copy()
    g_out = kernels.window_adjoint(wave, g.copy(), planes, corners, target)
    assert rel_err(g_out, g * np.conj(T)) <= RTOL[dtype]
    expected = planes.copy()
    prod = (np.conj(wave) * g).sum(axis=1)  # (K, B, ny, nx)
    for b, (y, x) in enumerate(corners):
        expected[:, y:y + 10, x:x + 12] += prod[:, b]
    assert rel_err(target, expected) <= RTOL[dtype]
    g_only = kernels.window_adjoint(wave, g.copy(), planes, corners, None)
    np.testing.assert_array_equal(g_only, g_out)


@needs_numba
@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_numba_window_kernels_equal_the_numpy_reference(dtype, layout):
    K, KW, M = layout
    planes, corners, wave, g = window_case(dtype, K, KW, M, seed=1)
    ref, fast = NumpyKernels(np), NumbaKernels(np)
    shape = (K, M, 9, 10, 12)
    assert rel_err(fast.window_product(wave, planes, corners, np.empty(shape, dtype)),
                   ref.window_product(wave, planes, corners, np.empty(shape, dtype))
                   ) <= RTOL[dtype]
    t_ref, t_fast, g_ref, g_fast = planes.copy(), planes.copy(), g.copy(), g.copy()
    ref.window_adjoint(wave, g_ref, planes, corners, t_ref)
    fast.window_adjoint(wave, g_fast, planes, corners, t_fast)
    assert rel_err(g_fast, g_ref) <= RTOL[dtype]
    assert rel_err(t_fast, t_ref) <= RTOL[dtype]
    # non-contiguous input: the reference fallback
    g_ref2, g_fast2 = g.copy(), g.copy()
    ref.window_adjoint(wave, g_ref2, planes, corners, None)
    fast.window_adjoint(wave[..., ::1], g_fast2, np.asfortranarray(planes), corners, None)
    assert rel_err(g_fast2, g_ref2) <= RTOL[dtype]


def one_slice_model(fused, precision, propagator=None, loss=None, n_object_modes=1,
                    n_probe_modes=2, fft="scipy"):
    return random_far_field_problem(
        Device("cpu", precision, workers=1, fused=fused, fft=fft),
        propagator or Multislice(), loss or LeastSquaresSqrt(), n_slices=1,
        n_object_modes=n_object_modes, n_probe_modes=n_probe_modes, batch_size=4, seed=5,
        n=16, n_measurements=9)


def test_only_plain_product_propagators_with_fusing_kernels_take_the_window_path():
    assert Multislice.single_slice_product
    assert not BetterMultislice.single_slice_product  # powers of T: not a plain product
    numpy_model, _, _ = one_slice_model("numpy", "double")
    assert not numpy_model._fused_windows(1, None)
    if numba_available():
        model, _, _ = one_slice_model("numba", "double")
        assert model._fused_windows(1, None)
        assert not model._fused_windows(2, None)
        scheme, _, _ = one_slice_model("numba", "double", propagator=BetterMultislice())
        assert not scheme._fused_windows(1, None)


@needs_numba
@pytest.mark.parametrize("precision", ["single", "double"])
@pytest.mark.parametrize("modes", [(1, 1), (1, 3), (2, 2)])
@pytest.mark.parametrize("loss", [LeastSquaresSqrt, PoissonML])
def test_one_slice_fused_model_equals_the_numpy_reference(precision, modes, loss):
    """Value and every gradient on the fused window path against the propagator path."""
    K, M = modes
    model_a, params, _ = one_slice_model("numpy", precision, loss=loss(), n_object_modes=K,
                                         n_probe_modes=M)
    model_b, _, _ = one_slice_model("numba", precision, loss=loss(), n_object_modes=K,
                                    n_probe_modes=M)
    assert model_b._fused_windows(1, None)
    va, ga = model_a.value_and_grad(params)
    vb, gb = model_b.value_and_grad(params)
    rtol = 1e-5 if precision == "single" else 1e-12
    assert vb == pytest.approx(va, rel=rtol)
    for key in ga:
        assert rel_err(gb[key], ga[key]) <= 10 * rtol, key
    ia = model_a.intensities(params)
    ib = model_b.intensities(params)
    assert float(np.abs(ib - ia).max() / np.abs(ia).max()) <= 10 * rtol
    # object only, then probe only (the adjoint without the scatter-add)
    for refine in (("object",), ("probe", "positions")):
        _, ga = model_a.value_and_grad(params, refine=refine)
        _, gb = model_b.value_and_grad(params, refine=refine)
        for key in refine:
            assert rel_err(gb[key], ga[key]) <= 10 * rtol, (refine, key)


@needs_numba
@pytest.mark.parametrize("fft", ["scipy", pytest.param("fftw", marks=pytest.mark.skipif(
    not pyfftw_available(), reason="pyFFTW (extra 'fftw') missing"))])
@pytest.mark.parametrize("block", ["object", "probe", "positions"])
def test_model_gradient_check_on_the_one_slice_window_path(fft, block):
    model, params, rng = one_slice_model("numba", "double", n_object_modes=2, fft=fft)
    assert model._fused_windows(1, None)
    _, grads = model.value_and_grad(params)
    check_gradient(lambda p: model.value_and_grad(p, refine=())[0], params, grads, block,
                   rng=rng, rtol=1e-5)


@needs_numba
@pytest.mark.parametrize("tilt_mode", [0, 1, 2, 4])
def test_one_slice_window_path_with_tilts_current_and_background(tilt_mode):
    """Tilt ramps before / after the specimen, beam current and background (the unfused
    loss path) on the window path, against the numpy reference; tilts inside the specimen
    keep the propagator path."""
    rng = np.random.default_rng(7)
    n, N = 16, 9
    obj = np.exp(1j * 0.3 * rng.standard_normal((1, 2, 40, 40)))
    params = {"object": obj, "probe": random_complex(rng, (2, n, n), np.complex128),
              "positions": rng.random((N, 2)) * 20 + 2,
              "tilts": rng.normal(0, 2e-3, (N, 6)), "beam_current": 1 + 0.2 * rng.random(N),
              "static_background": 0.3 + 0.2 * rng.random((n, n))}
    meas = rng.poisson(5, (N, n, n)).astype(float)
    models = [PtychographyModel.from_geometry(
        Multislice(), LeastSquaresSqrt(), Device("cpu", "double", fused=fused), (n, n), 0.3,
        0.025, 1, meas, batch_size=4, tilt_mode=tilt_mode) for fused in ("numpy", "numba")]
    assert models[1]._fused_windows(1, params["tilts"]) == (tilt_mode in (1, 2))
    (va, ga), (vb, gb) = (m.value_and_grad(params, refine=tuple(params)) for m in models)
    assert vb == pytest.approx(va, rel=1e-12)
    for key in ga:
        assert rel_err(gb[key], ga[key]) <= 1e-11, key
