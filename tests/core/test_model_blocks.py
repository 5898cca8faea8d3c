"""Forward model with every refinable block: tilts, beam current, static background,
aberrations (per sub-scan), probe markers, phase plates and a padded / upsampled far-field
detector. Finite-difference gradient checks of each block and adjoint checks of the detector's
grid reduction."""

import numpy as np
import pytest
from ptyframe_detectors.far_field import FarFieldDetector
from ptyframe_losses.intensity_losses import LeastSquaresSqrt, PoissonML
from ptyframe_propagators.multislice import Multislice

from ptyframe.components import ModelContext
from ptyframe.core.device import Device
from ptyframe.engine.model import PtychographyModel
from ptyframe.testing import check_adjoint, check_gradient

N_MEAS = 6
WINDOW = 16


def make_problem(*, tilt_mode=1, n_tilt_rows=N_MEAS, probe_marker=None,
                 aberration_marker=None, plates=False, detector=None, loss=None,
                 n_slices=2, n_obj_modes=1, n_probe_modes=2, seed=2):
    rng = np.random.default_rng(seed)
    dev = Device("cpu", "double")
    measured_shape = (WINDOW, WINDOW)
    window = detector.model_window(measured_shape) if detector is not None else measured_shape
    n = window[0]
    shape = (n_slices, n_obj_modes, n + 24, n + 24)
    obj = np.exp(1j * 0.3 * rng.standard_normal(shape)) * (1 - 0.05 * rng.random(shape))
    n_probes = 1 if probe_marker is None else int(np.max(probe_marker)) + 1
    pshape = (n_probe_modes, n, n) if probe_marker is None else (n_probes, n_probe_modes, n, n)
    probe = rng.standard_normal(pshape) + 1j * rng.standard_normal(pshape)
    pos = rng.random((N_MEAS, 2)) * 20 + 2
    meas = rng.poisson(5, (N_MEAS, *measured_shape)).astype(float)
    n_sets = 1 if aberration_marker is None else int(np.max(aberration_marker)) + 1
    phase_plates = None
    if plates:
        phase_plates = np.exp(1j * rng.normal(0, 0.5, (N_MEAS, n, n)))
    ctx = ModelContext(window=window, pixel_size_A=0.3, wavelength_A=0.025,
                       n_measurements=N_MEAS, device=dev, measured_shape=measured_shape,
                       n_slices=n_slices,
                       to_detector_order=lambda a: np.fft.ifftshift(a, axes=(-2, -1)))
    model = PtychographyModel(
        Multislice(slice_thickness_A=[2.0] * max(n_slices - 1, 1)),
        loss or LeastSquaresSqrt(), ctx, meas, batch_size=4,
        detector=detector, tilt_mode=tilt_mode, probe_marker=probe_marker,
        aberration_marker=aberration_marker, phase_plates=phase_plates)
    params = {"object": obj, "probe": probe, "positions": pos,
              "tilts": rng.normal(0, 2e-3, (n_tilt_rows, 6)),
              "beam_current": 1 + 0.2 * rng.random(N_MEAS),
              "static_background": 0.3 + 0.2 * rng.random(measured_shape),
              "aberrations": rng.normal(0, 20.0, (n_sets, 8))}
    model.check_blocks(params)
    return model, params, rng


ALL = ("object", "probe", "positions", "tilts", "beam_current", "static_background",
       "aberrations")


def _check_all(model, params, rng, blocks=ALL):
    _, grads = model.value_and_grad(params, refine=blocks)
    for block in blocks:
        check_gradient(lambda p: model.value_and_grad(p, refine=())[0], params, grads, block,
                       rng=rng, rtol=2e-5)


@pytest.mark.parametrize("tilt_mode", [1, 2])
def test_every_block_gradient(tilt_mode):
    model, params, rng = make_problem(tilt_mode=tilt_mode)
    _check_all(model, params, rng)


def test_common_tilt_gradient_sums_over_measurements():
    model, params, rng = make_problem(tilt_mode=2, n_tilt_rows=1)
    _check_all(model, params, rng, ("tilts", "probe"))


def test_probe_and_aberration_markers_gradient():
    marker = np.array([0, 0, 1, 1, 2, 2])
    model, params, rng = make_problem(probe_marker=marker, aberration_marker=marker[::-1].copy())
    assert params["probe"].shape[0] == 3 and params["aberrations"].shape[0] == 3
    _check_all(model, params, rng, ("probe", "aberrations", "positions", "object"))


def test_phase_plates_gradient_and_effect():
    model, params, rng = make_problem(plates=True)
    _check_all(model, params, rng, ("probe", "positions", "aberrations"))
    plain, _, _ = make_problem(plates=False)
    assert not np.allclose(model.intensities(params), plain.intensities(params))


@pytest.mark.parametrize(("pad", "up"), [(2, 1), (0, 2), (2, 3)])
def test_padded_upsampled_detector_gradient(pad, up):
    model, params, rng = make_problem(detector=FarFieldDetector(pad_px=pad, upsample=up),
                                      loss=PoissonML())
    assert model.window == (up * (WINDOW + 2 * pad),) * 2
    _check_all(model, params, rng, ("object", "probe", "positions", "static_background"))


@pytest.mark.parametrize(("pad", "up"), [(3, 1), (0, 2), (1, 3)])
def test_detector_grid_reduction_adjoint(pad, up):
    dev = Device("cpu", "double")
    det = FarFieldDetector(pad_px=pad, upsample=up)
    window = det.model_window((WINDOW, WINDOW))
    det.prepare(ModelContext(window=window, pixel_size_A=0.3, wavelength_A=0.025,
                             n_measurements=2, device=dev, measured_shape=(WINDOW, WINDOW)))
    rng = np.random.default_rng(0)
    fine = rng.random((2, *window))
    check_adjoint(det._reduce, det._expand, fine, rng.random((2, WINDOW, WINDOW)), rtol=1e-12)


def test_upsampled_detector_conserves_counts_and_centres_the_beam():
    """Summing fine pixels keeps the total, and a centred disk stays centred after binning."""
    dev = Device("cpu", "double")
    det = FarFieldDetector(pad_px=2, upsample=3)
    window = det.model_window((WINDOW, WINDOW))
    det.prepare(ModelContext(window=window, pixel_size_A=0.3, wavelength_A=0.025,
                             n_measurements=1, device=dev, measured_shape=(WINDOW, WINDOW)))
    k = np.fft.fftfreq(window[0]) * window[0]
    disk = (np.hypot(k[:, None], k[None, :]) < 9).astype(float)[None]
    coarse = np.fft.fftshift(det._reduce(disk)[0])
    assert coarse.sum() == pytest.approx(disk.sum(), rel=1e-12)
    cy, cx = (np.indices(coarse.shape) * coarse).reshape(2, -1).sum(1) / coarse.sum()
    assert abs(cy - WINDOW // 2) < 1e-9 and abs(cx - WINDOW // 2) < 1e-9


def test_background_and_current_enter_the_intensity():
    model, params, _ = make_problem()
    with_both = model.intensities(params)
    bare = {k: params[k] for k in ("object", "probe", "positions", "tilts", "aberrations")}
    raw = model.intensities(bare)
    expected = raw * params["beam_current"][:, None, None] + params["static_background"] ** 2
    np.testing.assert_allclose(with_both, expected, rtol=1e-12)


def test_bad_block_shapes_are_named():
    model, params, _ = make_problem()
    for block, bad in (("tilts", np.zeros((2, 6))), ("beam_current", np.ones(3)),
                       ("static_background", np.ones((4, 4))), ("aberrations", np.ones(3))):
        with pytest.raises(ValueError, match=block):
            model.check_blocks(dict(params, **{block: bad}))
