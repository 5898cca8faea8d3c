"""WDD and SSB on the project's own simulated data, scored against the truth.

Data: :func:`ptyframe.testing.simulate.simulate_dataset`, 200 kV, 32-px detector (0.25 Å pixels),
16 x 16 scan, weak pure-phase object (``phase_scale`` 0.5, no absorption): a focused 25 mrad
probe with a 0.5 Å step, and a defocused one (150 Å underfocus, 20 mrad, 0.4 Å step) for
the aberration handling. The recovered phase lives on the scan points and is compared with
the truth sampled there. Thresholds were measured (values in the comments), with margin.
"""

from __future__ import annotations

import numpy as np
import pytest
from ptyframe_direct.wdd import WDD
from ptyframe_propagators.multislice import Multislice
from scipy import ndimage

from ptyframe.core.device import Device
from ptyframe.core.experiment import ReconstructionGrid
from ptyframe.testing.simulate import SimulatedData, rotate_patterns, simulate_dataset
from ptyframe.testing.validation import phase_correlation, resample_to_grid

DEVICE = Device("cpu", "double")
SCAN = (16, 16)


def simulate(**kwargs) -> SimulatedData:
    return simulate_dataset(Multislice(slice_thickness_A=2.0), window=32, scan_shape=SCAN,
                            absorption=0.0, **kwargs)


@pytest.fixture(scope="module")
def focused() -> SimulatedData:
    return simulate(step_A=0.5, defocus_A=0.0, phase_scale=0.5)


@pytest.fixture(scope="module")
def defocused() -> SimulatedData:
    return simulate(step_A=0.4, defocus_A=150.0, convergence_angle_mrad=20.0, phase_scale=0.3)


def on_scan(sim: SimulatedData, sigma_A: float = 0.0) -> np.ndarray:
    """The true phase (optionally Gaussian-smoothed, sigma in Å) at the scan points."""
    phase = sim.phase
    if sigma_A:
        phase = ndimage.gaussian_filter(phase, sigma_A / sim.grid.pixel_size_A)
    step = sim.experiment.scan_step_yx_A[0]
    target = ReconstructionGrid(window=(1, 1), pixel_size_A=step, object_shape=SCAN,
                                origin_A=(0.0, 0.0))
    return resample_to_grid(phase, sim.grid, target)


# ---------------------------------------------------------------------------- accuracy
@pytest.mark.parametrize(("mode", "threshold"), [("wdd", 0.91), ("ssb", 0.92)])
def test_phase_matches_the_truth(focused, mode, threshold):
    # noise-free data tolerates a weaker Wiener term than the default 1e-2 (0.913 for wdd)
    result = WDD(mode=mode, epsilon=1e-3).run(focused.patterns, focused.experiment, DEVICE)
    phase = result.arrays["phase"]
    assert phase.shape == SCAN and result.pixel_size_A == pytest.approx(0.5)
    # measured: wdd 0.938, ssb 0.946
    assert phase_correlation(phase, on_scan(focused)) > threshold
    assert result.values["mode"] == mode and result.method == "wdd"


def test_the_wiener_term_regularises_noisy_data():
    """Poisson noise (2000 electrons per pattern): the default epsilon (1e-2) beats a weak
    one (1e-3) for WDD; SSB is hardly affected."""
    noisy = simulate(step_A=0.5, defocus_A=0.0, phase_scale=0.5, dose_per_pattern=2e3)
    truth = on_scan(noisy)
    default = WDD().run(noisy.patterns, noisy.experiment, DEVICE)
    weak = WDD(epsilon=1e-3).run(noisy.patterns, noisy.experiment, DEVICE)
    ssb = WDD(mode="ssb").run(noisy.patterns, noisy.experiment, DEVICE)
    c_default = phase_correlation(default.arrays["phase"], truth)
    # measured: 0.601 vs 0.502; ssb 0.702
    assert c_default > phase_correlation(weak.arrays["phase"], truth) + 0.05
    assert c_default > 0.5
    assert phase_correlation(ssb.arrays["phase"], truth) > 0.6


def test_wdd_recovers_a_unit_amplitude_for_a_phase_object(focused):
    result = WDD().run(focused.patterns, focused.experiment, DEVICE)
    amplitude = result.arrays["amplitude"]
    assert abs(amplitude.mean() - 1.0) < 0.01  # measured 1.0002
    assert amplitude.std() < 0.02  # measured 0.0029


def test_ssb_phase_is_in_radians(focused):
    """Weak-phase scale: the SSB phase fits the (slightly smoothed) truth with slope ~1."""
    phase = WDD(mode="ssb").run(focused.patterns, focused.experiment, DEVICE).arrays["phase"]
    truth = on_scan(focused, sigma_A=0.3)
    a, b = phase - phase.mean(), truth - truth.mean()
    assert 0.8 < float((a * b).sum() / (b * b).sum()) < 1.25  # measured 1.007


@pytest.mark.parametrize("mode", ["wdd", "ssb"])
def test_the_probe_aberrations_are_deconvolved(defocused, mode):
    """150 Å defocus: with the experiment's aberrations the phase is recovered; assuming a
    focused probe (a negative control) it is not."""
    truth = on_scan(defocused, sigma_A=0.25)
    good = WDD(mode=mode).run(defocused.patterns, defocused.experiment, DEVICE)
    wrong = WDD(mode=mode, aberrations={"C10": 0.0}).run(defocused.patterns,
                                                         defocused.experiment, DEVICE)
    c_good = phase_correlation(good.arrays["phase"], truth)
    c_wrong = phase_correlation(wrong.arrays["phase"], truth)
    # measured: wdd 0.715 vs 0.40, ssb 0.766 vs 0.42 (truth smoothed by 0.25 Å)
    assert c_good > 0.65
    assert c_wrong < c_good - 0.2
    assert good.values["aberrations_A"] == {"C10": -150.0}


def test_rotation_and_transpose_settings_are_applied(focused):
    patterns = np.ascontiguousarray(np.swapaxes(rotate_patterns(focused.patterns, 15.0), -1, -2))
    truth = on_scan(focused)
    right = WDD(mode="ssb", rotation_deg=15.0, transpose=True).run(
        patterns, focused.experiment, DEVICE)
    wrong = WDD(mode="ssb", rotation_deg=15.0, transpose=False).run(
        patterns, focused.experiment, DEVICE)
    assert phase_correlation(right.arrays["phase"], truth) > 0.9  # measured 0.944
    assert phase_correlation(wrong.arrays["phase"], truth) < 0.5  # measured 0.27
    assert right.values["rotation_deg"] == 15.0 and right.values["transpose"] is True


# ---------------------------------------------------------------------------- streaming
@pytest.mark.parametrize("mode", ["wdd", "ssb"])
def test_streaming_in_small_chunks_gives_the_same_result(defocused, mode):
    whole = WDD(mode=mode).run(defocused.patterns, defocused.experiment, DEVICE)
    # chunks of one scan row (patterns), one Q column and a single spatial frequency
    small = WDD(mode=mode, chunk_mb=0.05).run(defocused.patterns, defocused.experiment, DEVICE)
    np.testing.assert_allclose(small.arrays["phase"], whole.arrays["phase"], atol=1e-10)


def test_memory_is_a_cropped_half_spectrum(focused, defocused):
    n_px = 32 * 32
    item = np.dtype(DEVICE.complex_dtype).itemsize
    full_complex = SCAN[0] * SCAN[1] * n_px * item
    r = WDD().run(focused.patterns, focused.experiment, DEVICE)
    # rfft over the fast scan axis: 9 of 16 columns
    assert r.values["half_spectrum_bytes"] <= 0.57 * full_complex
    # 10 mrad, 0.25 Å step: only |Qx| <= 2 alpha (0.86 1/Å, 4 of 16 columns) is kept
    sim = simulate(step_A=0.25, defocus_A=0.0, convergence_angle_mrad=10.0, phase_scale=0.5)
    r2 = WDD().run(sim.patterns, sim.experiment, DEVICE)
    assert r2.values["half_spectrum_bytes"] <= 0.4 * full_complex
    assert r2.values["q_max_inv_A"] == pytest.approx(2 * (0.01 / sim.experiment.wavelength_A
                                                          + 0.5 * sim.experiment.dk_inv_A))
    single = WDD().run(focused.patterns, focused.experiment, Device("cpu", "single"))
    assert single.arrays["phase"].dtype == np.float64
    assert phase_correlation(single.arrays["phase"], r.arrays["phase"], align=False) > 0.9999


@pytest.mark.parametrize("mode", ["wdd", "ssb"])
def test_half_spectrum_spilled_to_disk_gives_the_same_result(defocused, mode, tmp_path):
    whole = WDD(mode=mode).run(defocused.patterns, defocused.experiment, DEVICE)
    spilled = WDD(mode=mode, spill_mb=1e-3, spill_dir=str(tmp_path), chunk_mb=0.2).run(
        defocused.patterns, defocused.experiment, DEVICE)
    assert whole.values["half_spectrum_in_memory"] is True
    assert spilled.values["half_spectrum_in_memory"] is False
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone
    np.testing.assert_allclose(spilled.arrays["phase"], whole.arrays["phase"], atol=1e-10)
    with pytest.raises(ValueError, match="WDD.spill_dir: expected an existing folder"):
        WDD(mode=mode, spill_mb=1e-3, spill_dir=str(tmp_path / "missing")).run(
            defocused.patterns, defocused.experiment, DEVICE)


def test_ssb_keeps_only_the_aperture_pixels(focused):
    wdd = WDD(mode="wdd").run(focused.patterns, focused.experiment, DEVICE)
    ssb = WDD(mode="ssb").run(focused.patterns, focused.experiment, DEVICE)
    # the aperture (with its 1-px soft edge) covers about a fifth of the 32 x 32 detector;
    # measured ratio 0.22
    assert ssb.values["half_spectrum_bytes"] < 0.3 * wdd.values["half_spectrum_bytes"]


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("settings", "word"), [
    ({"mode": "fast"}, "mode"),
    ({"epsilon": 0.0}, "epsilon"),
    ({"aberrations": {"C99": 1.0}}, "aberrations"),
    ({"aberrations": [1.0]}, "aberrations"),
    ({"transpose": None}, "transpose"),
    ({"rotation_deg": float("inf")}, "rotation_deg"),
    ({"edge_width_px": -1.0}, "edge_width_px"),
])
def test_bad_settings_name_the_parameter(settings, word):
    with pytest.raises(ValueError, match=word):
        WDD(**settings)


def test_empty_patterns_are_reported(focused):
    with pytest.raises(ValueError, match="intensity"):
        WDD().run(np.zeros_like(focused.patterns), focused.experiment, DEVICE)
