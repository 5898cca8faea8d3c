"""Focal-series (near-field) reconstruction: defocused images of one area, the near_field
detector, and the object phase compared with the truth."""

import numpy as np

from ptyframe import Device, Experiment, Reconstruction, load_registry
from ptyframe.core.physics import wavelength_A
from ptyframe.testing.focal_series import simulate_focal_series
from ptyframe.testing.validation import phase_correlation

REGISTRY = load_registry()
WINDOW = 48
PIXEL_A = 0.25
DEFOCI = np.array([-600.0, -300.0, -100.0, 100.0, 300.0, 600.0])


def _run(defoci, alpha=0.0, epochs=60, seed=0):
    exp = Experiment(voltage_kV=200.0, convergence_angle_mrad=1.0,
                     detector_pixel_size_inv_A=1.0 / (WINDOW * PIXEL_A))
    detector = REGISTRY.create("detector", {"type": "near_field", "pixel_size_A": PIXEL_A,
                                            "defocus_A": list(defoci), "alpha": alpha})
    prop = REGISTRY.create("propagator", {"type": "multislice"})
    series = simulate_focal_series(prop, detector, window=WINDOW, pixel_size_A=PIXEL_A,
                                   wavelength_A=wavelength_A(200.0), defocus_A=defoci,
                                   counts_per_pixel=2e3, seed=seed)
    rec = Reconstruction(series.images, exp, detector=detector, propagator=prop,
                         loss=REGISTRY.create("loss", {"type": "ml"}),
                         positions_A=np.zeros((len(defoci), 2)),
                         initial_probe=series.illumination, refine_probe=False,
                         object_margin_px=0, device=Device("cpu", "double"), progress=False)
    rec.run(epochs)
    result = rec.result()
    truth = series.phase[8:8 + WINDOW, 8:8 + WINDOW]
    # one position at the origin: the images cover object pixels [0, WINDOW)
    return phase_correlation(result.phase[:WINDOW, :WINDOW], truth), rec


def test_focal_series_recovers_the_phase():
    corr, rec = _run(DEFOCI)
    assert rec.grid.pixel_size_A == PIXEL_A
    assert corr > 0.96, corr  # measured 0.984 (4 defoci +-100, +-300 Å: 0.949)


def test_a_single_in_focus_image_does_not():
    """Negative control: a pure phase object in focus gives no contrast to retrieve."""
    corr, _ = _run(np.array([0.0]), epochs=20)
    assert corr < 0.5, corr
