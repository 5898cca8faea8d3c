"""Metadata checked against the data before iterating: one clear error per mistake."""

from __future__ import annotations

import attrs
import numpy as np
import pytest

from ptyframe import Device, Reconstruction, load_registry
from ptyframe.engine.metadata_checks import bright_field_disc, check_metadata, check_scan_shape
from ptyframe.testing.simulate import simulate_dataset

REGISTRY = load_registry()


@pytest.fixture(scope="module")
def sim():
    """8 x 14 scan (non-square, so a transposed shape can be told), 25 mrad, 200 kV."""
    propagator = REGISTRY.create("propagator", {"type": "multislice", "slice_thickness_A": 2.0})
    return simulate_dataset(propagator, window=32, scan_shape=(8, 14), step_A=0.5, seed=3,
                            dose_per_pattern=2000.0)


def build(sim, experiment):
    return Reconstruction(sim.patterns, experiment, positions_A=sim.positions_A,
                          device=Device("cpu", "double"), progress=False)


def test_correct_metadata_passes_and_the_disc_is_measured(sim):
    exp = sim.experiment
    radius, centre = bright_field_disc(sim.patterns.mean(axis=0))
    expected = exp.convergence_angle_mrad * 1e-3 / (exp.wavelength_A * exp.dk_inv_A)
    assert radius == pytest.approx(expected, rel=0.05)
    assert centre == pytest.approx((16, 16), abs=0.5)
    build(sim, exp).initialize()


def test_ten_times_the_convergence_angle_is_one_error_naming_the_implied_angle(sim):
    exp = sim.experiment
    wrong = attrs.evolve(exp, convergence_angle_mrad=10 * exp.convergence_angle_mrad)
    rec = build(sim, wrong)
    with pytest.raises(ValueError, match="convergence_angle_mrad") as info:
        rec.run(5)
    assert rec.epoch == 0
    implied = float(str(info.value).split("convergence_angle_mrad = ")[1].split()[0])
    assert implied == pytest.approx(exp.convergence_angle_mrad, rel=0.05)


def test_wrong_detector_calibration_is_one_error_naming_the_implied_calibration(sim):
    exp = sim.experiment
    wrong = attrs.evolve(exp, detector_pixel_size_inv_A=1.6 * exp.dk_inv_A)
    with pytest.raises(ValueError, match="detector_pixel_size_inv_A") as info:
        build(sim, wrong).initialize()
    implied = float(str(info.value).split("detector_pixel_size_inv_A = ")[1].split()[0])
    assert implied == pytest.approx(exp.dk_inv_A, rel=0.05)


def test_swapped_scan_shape_is_one_error_suggesting_the_right_shape(sim):
    wrong = attrs.evolve(sim.experiment, scan_shape=(14, 8))
    with pytest.raises(ValueError, match=r"scan_shape.*imply scan_shape = \[8, 14\]"):
        build(sim, wrong).initialize()


def test_the_checks_can_be_switched_off(sim):
    wrong = attrs.evolve(sim.experiment, scan_shape=(14, 8))
    Reconstruction(sim.patterns, wrong, positions_A=sim.positions_A, check_metadata=False,
                   device=Device("cpu", "double"), progress=False).initialize()


@pytest.mark.parametrize("field, value", [("voltage_kV", 2e6), ("voltage_kV", 0.5),
                                          ("convergence_angle_mrad", 5000.0)])
def test_values_outside_physical_ranges_are_refused(sim, field, value):
    wrong = attrs.evolve(sim.experiment, **{field: value})
    with pytest.raises(ValueError, match=field):
        check_metadata(wrong, None)


def test_no_disc_no_complaint_and_square_scans_are_not_judged():
    flat = np.ones((32, 32))
    assert bright_field_disc(flat) is None
    check_scan_shape((8, 8), np.random.default_rng(0).normal(size=64))
    check_scan_shape(None, np.zeros(10))
