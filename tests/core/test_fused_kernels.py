"""Fused numba kernels against the NumPy reference, and the model with each kernel set."""

import numpy as np
import pytest
from ptyframe_losses.intensity_losses import LeastSquares, LeastSquaresSqrt, PoissonML
from ptyframe_propagators.multislice import Multislice

from ptyframe.core.device import Device
from ptyframe.core.fft import pyfftw_available
from ptyframe.core.fused import (
    NumbaKernels,
    NumpyKernels,
    PixelLoss,
    make_kernels,
    numba_available,
)
from ptyframe.testing import check_gradient
from ptyframe.testing.problems import random_far_field_problem

needs_numba = pytest.mark.skipif(not numba_available(), reason="numba (extra 'numba') missing")
KERNELS = ["numpy", pytest.param("numba", marks=needs_numba)]
RTOL = {np.complex64: 2e-6, np.complex128: 1e-12}


def random_complex(rng, shape, dtype):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


def close(a, b, dtype):
    err = np.abs(a - b).max() / np.abs(b).max()
    assert err <= RTOL[dtype], err


@needs_numba
@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_window_gather_and_scatter_equal_the_reference(dtype):
    rng = np.random.default_rng(0)
    planes = random_complex(rng, (3, 30, 34), dtype)
    corners = rng.integers(0, 20, (9, 2))
    corners[1] = corners[0]  # overlapping windows accumulate
    ref, fast = NumpyKernels(np), NumbaKernels(np)
    out_ref = ref.gather_windows(planes, corners, np.empty((3, 9, 10, 12), dtype))
    out_fast = fast.gather_windows(planes, corners, np.empty((3, 9, 10, 12), dtype))
    np.testing.assert_array_equal(out_fast, out_ref)
    values = random_complex(rng, (3, 9, 10, 12), dtype)
    t_ref, t_fast = planes.copy(), planes.copy()
    ref.scatter_add_windows(t_ref, corners, values)
    fast.scatter_add_windows(t_fast, corners, values)
    np.testing.assert_array_equal(t_fast, t_ref)  # same accumulation order: bitwise


@needs_numba
@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
@pytest.mark.parametrize("positions", [True, False])
@pytest.mark.parametrize("probe", [True, False])
def test_spectral_gradients_equal_the_reference(dtype, positions, probe):
    rng = np.random.default_rng(1)
    M, B, ny, nx = 3, 7, 12, 10
    real = np.float32 if dtype == np.complex64 else np.float64
    H = random_complex(rng, (M, B, ny, nx), dtype)
    spec = random_complex(rng, (M, ny, nx), dtype)
    factor = np.exp(1j * rng.uniform(0, 6, (B, ny, nx))).astype(dtype)
    q2pi = rng.uniform(-3, 3, (ny * nx, 2)).astype(real)
    start = random_complex(rng, (M, ny, nx), dtype)
    results = []
    for kernels in (NumpyKernels(np), NumbaKernels(np)):
        grad = start.copy() if probe else None
        pos = kernels.spectral_gradients(H.copy(), spec, factor, q2pi, grad, positions)
        results.append((pos, grad))
    (pos_ref, grad_ref), (pos_fast, grad_fast) = results
    if positions:
        assert pos_fast.dtype == pos_ref.dtype == np.dtype(real)
        close(pos_fast, pos_ref, dtype)
    else:
        assert pos_ref is None and pos_fast is None
    if probe:
        close(grad_fast, grad_ref, dtype)


@needs_numba
@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
@pytest.mark.parametrize("axis", [0, 1, -3])
def test_conj_mode_sum_equals_the_reference(dtype, axis):
    rng = np.random.default_rng(2)
    shape = (2, 3, 4, 6, 5)
    a, g = random_complex(rng, shape, dtype), random_complex(rng, shape, dtype)
    out_shape = list(shape)
    out_shape[axis] = 1
    outs = []
    for kernels in (NumpyKernels(np), NumbaKernels(np)):
        out = np.empty(out_shape, dtype)
        kernels.conj_mode_sum(a.copy(), g, out, axis, np.empty(shape, dtype))
        outs.append(out)
    close(outs[1], outs[0], dtype)
    np.testing.assert_allclose(outs[0], np.sum(np.conj(a) * g, axis=axis, keepdims=True),
                               rtol=RTOL[dtype] * 10)
    for kernels in (NumpyKernels(np), NumbaKernels(np)):
        out = np.empty(shape, dtype)
        kernels.conj_multiply(a.copy(), g, out)
        close(out, np.conj(a) * g, dtype)


@needs_numba
@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
@pytest.mark.parametrize("n_fields", [1, 3])
def test_intensity_and_real_product_equal_the_reference(dtype, n_fields):
    rng = np.random.default_rng(4)
    real = np.float32 if dtype == np.complex64 else np.float64
    flat = random_complex(rng, (n_fields, 5, 8, 6), dtype)
    expected = 0.25 * (np.abs(flat.astype(np.complex128)) ** 2).sum(axis=0)
    for kernels in (NumpyKernels(np), NumbaKernels(np)):
        out = kernels.abs2_sum(flat, 0.25, np.empty((5, 8, 6), real), np.empty((5, 8, 6), real))
        assert out.dtype == np.dtype(real)
        close(out, expected, dtype)
    g = rng.standard_normal((5, 8, 6)).astype(real)
    expected = flat.astype(np.complex128) * g * 0.5
    for kernels in (NumpyKernels(np), NumbaKernels(np)):
        a = flat.copy()
        assert kernels.multiply_real(a, g, 0.5) is a
        close(a, expected, dtype)


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("epsilon", [0.0, 1e-3])
def test_amplitude_loss_equals_the_reference(dtype, epsilon):
    rng = np.random.default_rng(5)
    inten = rng.uniform(0.0, 4.0, (6, 8, 8)).astype(dtype)
    sqrt_m = np.sqrt(rng.poisson(2.0, (6, 8, 8))).astype(dtype)
    amp = np.sqrt(inten.astype(np.float64) + epsilon)
    expected = ((amp - sqrt_m) ** 2).sum(), 1 - sqrt_m / amp
    rtol = 2e-6 if dtype == np.float32 else 1e-12
    for kernels in (NumpyKernels(np), NumbaKernels(np)):
        work = inten.copy()
        value, grad = kernels.amplitude_loss(work, sqrt_m, epsilon)
        assert grad is work and grad.dtype == np.dtype(dtype)
        assert value == pytest.approx(expected[0], rel=rtol)
        np.testing.assert_allclose(grad, expected[1], rtol=rtol, atol=rtol)


@needs_numba
@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
@pytest.mark.parametrize("modes", [1, 3])
def test_slice_adjoint_equals_the_reference(dtype, modes):
    rng = np.random.default_rng(6)
    shape, small = (2, modes, 4, 6, 5), (2, 1, 4, 6, 5)
    a, g = random_complex(rng, shape, dtype), random_complex(rng, shape, dtype)
    t = random_complex(rng, small, dtype)
    expected = (np.sum(np.conj(a) * g, axis=1, keepdims=True), g * np.conj(t))
    for kernels in (NumpyKernels(np), NumbaKernels(np)):
        g_work, out = g.copy(), np.empty(small, dtype)
        kernels.slice_adjoint(a.copy(), g_work, t.copy(), out, np.empty(shape, dtype))
        close(out, expected[0], dtype)
        close(g_work, expected[1], dtype)


def test_device_rejects_unknown_kernels():
    with pytest.raises(ValueError, match="fused: expected one of"):
        Device("cpu", fused="cython")


def make_model(fused, precision, n_slices=3, n_probe_modes=2, seed=3, n=16, N=9):
    return random_far_field_problem(
        Device("cpu", precision, workers=1, fused=fused),
        Multislice(slice_thickness_A=[2.0, 1.5]), LeastSquaresSqrt(), n_slices=n_slices,
        n_probe_modes=n_probe_modes, batch_size=4, seed=seed, n=n, n_measurements=N)


@pytest.mark.parametrize("fused", KERNELS)
@pytest.mark.parametrize("block", ["object", "probe", "positions"])
def test_model_gradient_check_with_each_kernel_set(fused, block):
    model, params, rng = make_model(fused, "double")
    _, grads = model.value_and_grad(params)
    check_gradient(lambda p: model.value_and_grad(p, refine=())[0], params, grads, block,
                   rng=rng, rtol=1e-5)


@needs_numba
@pytest.mark.parametrize("precision", ["single", "double"])
def test_model_with_numba_equals_the_numpy_reference(precision):
    model_a, params, _ = make_model("numpy", precision)
    model_b, _, _ = make_model("numba", precision)
    va, ga = model_a.value_and_grad(params)
    vb, gb = model_b.value_and_grad(params)
    rtol = 1e-5 if precision == "single" else 1e-12
    assert va == pytest.approx(vb, rel=rtol)
    for key in ga:
        err = np.abs(ga[key] - gb[key]).max() / np.abs(ga[key]).max()
        assert err <= 10 * rtol, (key, err)


PIXEL_LOSSES = [PixelLoss(kind="amplitude", epsilon=1e-3), PixelLoss(kind="amplitude"),
                PixelLoss(kind="poisson", epsilon=1e-2), PixelLoss(kind="intensity")]


def expected_pixel_loss(inten, measured, loss):
    """Loss value and dL/dI in double precision, from the PixelLoss definitions."""
    i, m, eps = inten.astype(np.float64), measured.astype(np.float64), loss.epsilon
    if loss.kind == "amplitude":
        a = np.sqrt(i + eps)
        return ((a - m) ** 2).sum(), 1 - m / a
    if loss.kind == "poisson":
        return ((i + eps) - m * np.log(i + eps)).sum(), 1 - m / (i + eps)
    return ((i - m) ** 2).sum(), 2 * (i - m)


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
@pytest.mark.parametrize("n_fields", [1, 3])
@pytest.mark.parametrize("loss", PIXEL_LOSSES, ids=lambda p: f"{p.kind}-{p.epsilon}")
@pytest.mark.parametrize("fused", KERNELS)
def test_far_field_loss_equals_its_definition(dtype, n_fields, loss, fused):
    """Intensity, pixel loss and adjoint product in one call (1300 pixels: several blocks of
    the compiled kernel plus a remainder) against the formulas in double precision."""
    rng = np.random.default_rng(7)
    real = np.float32 if dtype == np.complex64 else np.float64
    far = random_complex(rng, (n_fields, 5, 20, 13), dtype)
    measured = rng.poisson(3.0, (5, 20, 13)).astype(real)
    if loss.kind == "amplitude":
        measured = np.sqrt(measured)
    iscale, gscale = 0.3, 0.125
    inten = iscale * (np.abs(far.astype(np.complex128)) ** 2).sum(axis=0)
    value_ref, grad_ref = expected_pixel_loss(inten, measured, loss)
    kernels = make_kernels(fused, np)
    work = far.copy()
    value = kernels.far_field_loss(work, measured, loss, iscale, gscale,
                                   np.empty(measured.shape, real), np.empty(measured.shape, real))
    rtol = 1e-5 if dtype == np.complex64 else 1e-12
    assert value == pytest.approx(value_ref, rel=rtol)
    close(work, far * (gscale * grad_ref), dtype)


@needs_numba
@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_pixel_loss_reference_matches_the_fused_kernel_on_model_sized_data(dtype):
    """numba against the NumPy reference on one 64 x 64 batch, every loss kind."""
    rng = np.random.default_rng(8)
    real = np.float32 if dtype == np.complex64 else np.float64
    far = random_complex(rng, (3, 16, 64, 64), dtype)
    measured = np.sqrt(rng.poisson(2.0, (16, 64, 64))).astype(real)
    for loss in PIXEL_LOSSES:
        results = []
        for kernels in (NumpyKernels(np), NumbaKernels(np)):
            work = far.copy()
            buffers = [np.empty(measured.shape, real) for _ in range(2)]
            value = kernels.far_field_loss(work, measured, loss, 1 / 4096, 1 / 4096, *buffers)
            results.append((value, work))
        (v_ref, w_ref), (v_fast, w_fast) = results
        assert v_fast == pytest.approx(v_ref, rel=RTOL[dtype] * 5), loss
        close(w_fast, w_ref, dtype)


def test_pixel_loss_rejects_unknown_kinds_and_negative_floors():
    with pytest.raises(ValueError, match="kind: expected one of 'amplitude'"):
        PixelLoss(kind="huber")
    with pytest.raises(ValueError, match="epsilon"):
        PixelLoss(kind="poisson", epsilon=-1.0)


@needs_numba
@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
@pytest.mark.parametrize("positions", [True, False])
@pytest.mark.parametrize("probe", [True, False])
def test_separable_shift_kernels_equal_the_reference(dtype, positions, probe):
    """Shifted probe waves and spectral gradients with A_b = ey_b ex_b built on the fly."""
    rng = np.random.default_rng(9)
    M, B, ny, nx = 3, 7, 12, 10
    real = np.float32 if dtype == np.complex64 else np.float64
    spec = random_complex(rng, (M, ny, nx), dtype)
    ey = np.exp(1j * rng.uniform(0, 6, (B, ny))).astype(dtype)
    ex = np.exp(1j * rng.uniform(0, 6, (B, nx))).astype(dtype)
    fy, fx = np.fft.fftfreq(ny), np.fft.fftfreq(nx)
    q2pi = np.stack(np.meshgrid(2 * np.pi * fy, 2 * np.pi * fx, indexing="ij"),
                    axis=-1).reshape(ny * nx, 2).astype(real)
    ref, fast = NumpyKernels(np), NumbaKernels(np)
    waves = [k.shifted_waves(spec, ey, ex, 0.25, np.empty((M, B, ny, nx), dtype))
             for k in (ref, fast)]
    close(waves[1], waves[0], dtype)
    close(waves[0], 0.25 * spec[:, None] * ey[:, :, None] * ex[:, None, :], dtype)
    H = random_complex(rng, (M, B, ny, nx), dtype)
    start = random_complex(rng, (M, ny, nx), dtype)
    results = []
    for kernels in (ref, fast):
        grad = start.copy() if probe else None
        pos = kernels.spectral_gradients_separable(H.copy(), spec, ey, ex, q2pi, grad,
                                                   positions)
        results.append((pos, grad))
    (pos_ref, grad_ref), (pos_fast, grad_fast) = results
    if positions:
        assert pos_fast.dtype == pos_ref.dtype == np.dtype(real)
        close(pos_fast, pos_ref, dtype)
    else:
        assert pos_ref is None and pos_fast is None
    if probe:
        close(grad_fast, grad_ref, dtype)


LOSSES = {"lsq_sqrt": LeastSquaresSqrt, "ml": PoissonML, "lsq": LeastSquares}


@pytest.mark.parametrize("fused", KERNELS)
@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("precision", ["single", "double"])
def test_fused_loss_path_equals_the_loss_component(fused, loss, precision):
    """The model with the detector's fused pixel loss equals the unfused path (detector
    forward, the loss plugin's value_and_grad, detector adjoint) within round-off."""
    results = []
    for fuse in (True, False):
        model, params, _ = random_far_field_problem(
            Device("cpu", precision, workers=1, fused=fused),
            Multislice(slice_thickness_A=2.0), LOSSES[loss](), n_slices=2, n_probe_modes=2,
            batch_size=4, seed=5, n=16, n_measurements=9, fuse_loss=fuse)
        assert model.fuses_loss == fuse
        results.append(model.value_and_grad(params))
    (va, ga), (vb, gb) = results
    rtol = 1e-5 if precision == "single" else 1e-12
    assert va == pytest.approx(vb, rel=rtol)
    for key in ga:
        err = np.abs(ga[key] - gb[key]).max() / np.abs(gb[key]).max()
        assert err <= 10 * rtol, (key, err)


@pytest.mark.parametrize("fused", KERNELS)
@pytest.mark.parametrize("loss", ["ml", "lsq"])
def test_model_gradient_check_with_fused_losses(fused, loss):
    model, params, rng = random_far_field_problem(
        Device("cpu", "double", workers=1, fused=fused), Multislice(slice_thickness_A=2.0),
        LOSSES[loss](), n_slices=2, batch_size=4, seed=6, n=16, n_measurements=9)
    assert model.fuses_loss
    _, grads = model.value_and_grad(params)
    for block in ("object", "probe", "positions"):
        check_gradient(lambda p: model.value_and_grad(p, refine=())[0], params, grads, block,
                       rng=rng, rtol=1e-5)


@pytest.mark.skipif(not (numba_available() and pyfftw_available()),
                    reason="numba and pyFFTW (extras 'numba', 'fftw') needed")
@pytest.mark.parametrize("block", ["object", "probe", "positions"])
def test_model_gradient_check_on_the_fastest_path(block):
    """Planned FFTW, numba kernels, fused loss, separable shift and chunked multislice steps
    (3 planes per chunk: several chunks per batch)."""
    device = Device("cpu", "double", workers=1, fft="fftw", fused="numba")
    device.CHUNK_BYTES = 3 * 16 * 16 * 16
    device.CHUNK_MIN_BYTES = 0
    model, params, rng = random_far_field_problem(
        device, Multislice(slice_thickness_A=[2.0, 1.5]), LeastSquaresSqrt(), n_slices=3,
        n_probe_modes=2, batch_size=7, seed=3, n=16, n_measurements=9)
    assert model.fuses_loss
    _, grads = model.value_and_grad(params)
    check_gradient(lambda p: model.value_and_grad(p, refine=())[0], params, grads, block,
                   rng=rng, rtol=1e-5)


def test_a_subclass_overriding_value_and_grad_is_not_fused():
    """The inherited pixel form no longer describes a subclass's own loss: unfused path."""

    class Scaled(LeastSquaresSqrt):
        def value_and_grad(self, intensity, measured, overwrite=False):
            value, grad = super().value_and_grad(intensity, measured, overwrite)
            return 2 * value, 2 * grad

    class Declared(Scaled):
        def pixel_loss(self):
            return None

    assert LeastSquaresSqrt().fusable_pixel_loss() == PixelLoss(kind="amplitude",
                                                                epsilon=1e-6)
    assert Scaled().fusable_pixel_loss() is None
    assert Declared().fusable_pixel_loss() is None
    values = []
    for loss in (LeastSquaresSqrt(), Scaled()):
        model, params, _ = random_far_field_problem(
            Device("cpu", "double", workers=1), Multislice(slice_thickness_A=2.0), loss,
            n_slices=2, batch_size=4, seed=5, n=16, n_measurements=9)
        assert model.fuses_loss == (type(loss) is LeastSquaresSqrt)
        values.append(model.value_and_grad(params)[0])
    assert values[1] == pytest.approx(2 * values[0], rel=1e-12)
