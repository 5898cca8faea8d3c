"""The far-field detector's fused loss (loss_and_vjp) against forward + loss + vjp, whole and
in cache-sized chunks (planned FFTW)."""

import numpy as np
import pytest
from ptyframe_detectors.ortho_far_field import OrthoFarField

from ptyframe.components import Detector, ModelContext
from ptyframe.core.device import Device
from ptyframe.core.fft import pyfftw_available
from ptyframe.core.fused import NumpyKernels, PixelLoss
from ptyframe.registry.loader import load_registry

FFTS = ["scipy", pytest.param("fftw", marks=pytest.mark.skipif(
    not pyfftw_available(), reason="pyFFTW (extra 'fftw') missing"))]


@pytest.mark.parametrize("fft", FFTS)
@pytest.mark.parametrize("fields", [(1, 1), (2, 3)])
@pytest.mark.parametrize("precision", ["single", "double"])
def test_loss_and_vjp_equals_forward_loss_vjp(fft, fields, precision):
    device = Device("cpu", precision, workers=1, fft=fft)
    device.CHUNK_BYTES = 2 * fields[0] * fields[1] * 12 * 10 * 16  # 1-2 measurements a chunk
    device.CHUNK_MIN_BYTES = 0
    det = OrthoFarField()
    det.prepare(ModelContext(window=(12, 10), pixel_size_A=0.4, wavelength_A=0.02,
                             n_measurements=7, device=device, measured_shape=(12, 10),
                             n_slices=1))
    rng = np.random.default_rng(0)
    shape = (*fields, 7, 12, 10)  # 7 measurements: a remainder chunk
    waves = device.complex(rng.standard_normal(shape) + 1j * rng.standard_normal(shape))
    measured = device.real(np.sqrt(rng.poisson(3.0, (7, 12, 10))))
    loss = PixelLoss(kind="amplitude", epsilon=1e-3)
    inten, cache = det.forward(waves.copy(), np.arange(7), keep=True)
    value_ref, dldi = NumpyKernels(np).pixel_loss(inten, measured, loss)
    grad_ref = det.vjp(dldi, cache)
    value, grad = det.loss_and_vjp(waves.copy(), np.arange(7), measured, loss,
                                   device.workspace())
    rtol = 1e-5 if precision == "single" else 1e-12
    assert value == pytest.approx(value_ref, rel=rtol)
    assert grad.shape == grad_ref.shape
    err = np.abs(grad - grad_ref).max() / np.abs(grad_ref).max()
    assert err <= 10 * rtol, err


class _ImageDetector(Detector):
    """Intensity |wave|^2 summed over the modes, on the model window: a detector with no
    fused kernel of its own."""

    name = "test_image_detector"

    def object_pixel_size_A(self, experiment, measured_shape):
        return 1.0

    def prepare(self, context):
        super().prepare(context)

    def forward(self, waves, indices, keep=True):
        return (np.abs(waves) ** 2).sum(axis=(0, 1)), waves

    def vjp(self, grad_intensity, cache):
        return grad_intensity * cache


@pytest.mark.parametrize("name", ["ml", "lsq_sqrt", "lsq"])
def test_default_loss_and_vjp_composes_forward_loss_and_vjp(name):
    """A detector without a fused kernel: loss_and_vjp equals forward, the loss component's
    own value_and_grad and vjp (and the model does not take it: fuses_pixel_loss is False)."""
    device = Device("cpu", "double", workers=1)
    context = ModelContext(window=(6, 5), pixel_size_A=0.4, wavelength_A=0.02,
                           n_measurements=4, device=device, measured_shape=(6, 5), n_slices=1)
    det = _ImageDetector()
    det.prepare(context)
    assert not det.fuses_pixel_loss
    loss = load_registry().create("loss", {"type": name})
    loss.prepare(context)
    rng = np.random.default_rng(1)
    waves = rng.standard_normal((1, 2, 4, 6, 5)) + 1j * rng.standard_normal((1, 2, 4, 6, 5))
    measured = loss.prepare_measured(rng.poisson(3.0, (4, 6, 5)).astype(float))
    inten, cache = det.forward(waves.copy(), np.arange(4))
    value_ref, dldi = loss.value_and_grad(inten, measured)
    grad_ref = det.vjp(dldi, cache)
    value, grad = det.loss_and_vjp(waves.copy(), np.arange(4), measured, loss.pixel_loss(),
                                   device.workspace())
    assert value == pytest.approx(value_ref, rel=1e-12)
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-12, atol=1e-12 * np.abs(grad_ref).max())
