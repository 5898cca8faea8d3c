"""CPU FFT providers (scipy.fft and planned FFTW) against NumPy, and the model on each."""

import json

import numpy as np
import pytest
from ptyframe_losses.intensity_losses import LeastSquaresSqrt
from ptyframe_propagators.multislice import Multislice

from ptyframe.core.device import Device
from ptyframe.core.fft import PlannedFFTW, ScipyFFT, pyfftw_available
from ptyframe.testing import check_gradient
from ptyframe.testing.problems import random_far_field_problem

needs_fftw = pytest.mark.skipif(not pyfftw_available(), reason="pyFFTW (extra 'fftw') missing")
PROVIDERS = ["scipy", pytest.param("fftw", marks=needs_fftw)]
TOL = {np.complex64: 2e-6, np.complex128: 1e-13}


def make_provider(name, tmp_path, threads=1):
    if name == "scipy":
        return ScipyFFT(threads)
    return PlannedFFTW(threads=threads, wisdom=tmp_path / "wisdom.json")


def random_complex(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


def assert_close(result, expected, dtype):
    assert result.dtype == np.dtype(dtype)
    assert result.shape == expected.shape
    err = np.abs(result - expected).max() / np.abs(expected).max()
    assert err < TOL[dtype], err


@pytest.mark.parametrize("name", PROVIDERS)
@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
@pytest.mark.parametrize("shape", [(8, 8), (3, 16, 12), (2, 3, 5, 10, 14)])
@pytest.mark.parametrize("norm", [None, "backward", "ortho", "forward"])
@pytest.mark.parametrize("inverse", [False, True], ids=["fft2", "ifft2"])
def test_provider_equals_numpy(name, dtype, shape, norm, inverse, tmp_path):
    fft = make_provider(name, tmp_path)
    a = random_complex(shape, dtype)
    expected = (np.fft.ifft2 if inverse else np.fft.fft2)(a.astype(np.complex128), norm=norm)
    transform = fft.ifft2 if inverse else fft.fft2
    kept = a.copy()
    assert_close(transform(a, norm=norm), expected, dtype)
    np.testing.assert_array_equal(a, kept)  # overwrite=False leaves the input alone
    b = fft.empty(shape, dtype)
    b[...] = a
    out = transform(b, norm=norm, overwrite=True)
    assert_close(out, expected, dtype)
    if name == "fftw":
        assert out is b  # aligned, contiguous, right dtype: in place


@pytest.mark.parametrize("name", PROVIDERS)
def test_provider_inputs_that_need_a_copy(name, tmp_path):
    fft = make_provider(name, tmp_path)
    big = random_complex((4, 16, 32), np.complex64)
    view = big[:, :, ::2]  # not contiguous
    expected = np.fft.fft2(view.astype(np.complex128))
    assert_close(fft.fft2(view, overwrite=True), expected, np.complex64)
    real32 = np.random.default_rng(1).standard_normal((2, 8, 8)).astype(np.float32)
    assert_close(fft.fft2(real32), np.fft.fft2(real32.astype(np.float64)), np.complex64)
    real64 = real32.astype(np.float64)
    assert_close(fft.ifft2(real64, norm="ortho"), np.fft.ifft2(real64, norm="ortho"),
                 np.complex128)
    unaligned = np.frombuffer(bytearray(8 * 64 + 8), dtype=np.complex64, count=64,
                              offset=8).reshape(8, 8).copy()  # copy: writeable
    unaligned[...] = random_complex((8, 8), np.complex64, seed=3)
    expected = np.fft.fft2(unaligned.astype(np.complex128))
    assert_close(fft.fft2(unaligned, overwrite=True), expected, np.complex64)


@needs_fftw
def test_fftw_plans_are_made_once_per_shape_dtype_direction(tmp_path):
    fft = PlannedFFTW(threads=1, wisdom=tmp_path / "w.json")
    a = random_complex((3, 8, 8), np.complex64)
    for _ in range(3):
        fft.fft2(a)
        fft.ifft2(a)
    assert len(fft._plans) == 2
    fft.fft2(a.astype(np.complex128))
    fft.fft2(a[:2])
    assert len(fft._plans) == 4
    assert {k[2] for k in fft._plans} == {"forward", "backward"}


@needs_fftw
def test_fftw_threads_are_measured(tmp_path):
    fft = PlannedFFTW(threads=None, wisdom=None)
    fft.fft2(random_complex((4, 16, 16), np.complex64))
    (chosen,) = fft.threads_chosen.values()
    assert 1 <= chosen <= max(1, len(__import__("os").sched_getaffinity(0)))


@needs_fftw
def test_fftw_wisdom_is_cached_and_a_bad_cache_is_ignored(tmp_path):
    path = tmp_path / "sub" / "wisdom.json"
    fft = PlannedFFTW(threads=1, wisdom=path)
    fft.fft2(random_complex((2, 8, 8), np.complex64))
    data = json.loads(path.read_text())
    assert data["format"] == 1 and len(data["wisdom"]) == 3
    assert "fftwf_dft" in data["wisdom"][1]  # single-precision wisdom was recorded
    PlannedFFTW(threads=1, wisdom=path)  # reads it back without complaint
    path.write_text("{not json")
    with pytest.warns(RuntimeWarning, match="wisdom"):
        again = PlannedFFTW(threads=1, wisdom=path)
    out = again.fft2(random_complex((2, 8, 8), np.complex64, seed=2))
    assert out.dtype == np.complex64
    assert json.loads(path.read_text())["format"] == 1  # replaced by a good cache
    PlannedFFTW(threads=1, wisdom=tmp_path / "missing" / "none.json")  # missing: fine


def test_device_rejects_bad_fft_options():
    with pytest.raises(ValueError, match="fft: expected one of"):
        Device("cpu", fft="mkl")
    with pytest.raises(ValueError, match="workers: expected a positive integer"):
        Device("cpu", workers=0)
    with pytest.raises(ValueError, match="norm: expected"):
        (PlannedFFTW(threads=1) if pyfftw_available() else None or Device("cpu")).fft2(
            np.ones((4, 4), np.complex64), norm="unitary")


def test_device_to_config_round_trips_the_provider():
    assert Device("cpu").to_config() == {"kind": "cpu", "precision": "single"}
    if pyfftw_available():
        dev = Device("cpu", "double", workers=1, fft="fftw")
        assert dev.to_config() == {"kind": "cpu", "precision": "double", "fft": "fftw"}
        assert Device(**dev.to_config(), workers=1).fft == "fftw"
        ws = dev.workspace().get("x", (3, 8, 8), np.complex128)
        assert ws.ctypes.data % dev._fft.alignment == 0  # work buffers are aligned


def make_model(fft, precision="double", n_slices=2, n_probe_modes=2, seed=1, n=16, N=7):
    return random_far_field_problem(
        Device("cpu", precision, workers=1, fft=fft), Multislice(slice_thickness_A=[2.0]),
        LeastSquaresSqrt(), n_slices=n_slices, n_probe_modes=n_probe_modes, seed=seed, n=n,
        n_measurements=N)


@pytest.mark.parametrize("fft", PROVIDERS)
@pytest.mark.parametrize("block", ["object", "probe", "positions"])
def test_model_gradient_check_with_each_provider(fft, block):
    model, params, rng = make_model(fft)
    _, grads = model.value_and_grad(params)
    check_gradient(lambda p: model.value_and_grad(p, refine=())[0], params, grads, block,
                   rng=rng, rtol=1e-5)


@needs_fftw
@pytest.mark.parametrize("precision", ["single", "double"])
def test_model_is_the_same_with_scipy_and_fftw(precision):
    model_a, params, _ = make_model("scipy", precision)
    model_b, _, _ = make_model("fftw", precision)
    va, ga = model_a.value_and_grad(params)
    vb, gb = model_b.value_and_grad(params)
    rtol = 1e-5 if precision == "single" else 1e-12
    assert va == pytest.approx(vb, rel=rtol)
    for key in ga:
        scale = np.abs(ga[key]).max()
        assert np.abs(ga[key] - gb[key]).max() <= rtol * 10 * scale, key
