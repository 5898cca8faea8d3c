"""tcBF geometry from nothing: any scan rotation, a transposed detector, significance of the
fitted terms and the reported uncertainties and warnings.

One simulation (ptyframe's simulator: 200 kV, 15 mrad, 32-px detector at 0.4 Å, 24 x 24 scan
at 0.7 Å, C10 = -300 Å, no other aberration, 1e4 electrons per pattern) is shared by every
case: a scan rotated by theta against the detector is the same measurement as the patterns
rotated by theta about the optical axis with the specimen rotated along (the probe of a round
aperture with pure defocus is rotationally symmetric, and the specimen is unknown anyway), so
each case rotates the patterns (``rotate_patterns``, bilinear; exact for 90 deg) and a
transposed detector swaps their axes. Every run starts blind (no aberrations, rotation prior
0 deg).

The 180-degree ambiguity is exact: (O, chi, theta) and (conj O(-r), -chi, theta + 180 deg) give
identical far-field data, so with ``resolve_180="prior"`` (default) 135 deg is reported as
-45 deg with C10 negated; ``"skewness"`` picks the branch whose phase has positive skewness.

Measured (single precision): rotations within 0.15 deg, C10 within 1.2 % (-296.5 to -301.5 Å),
no term but C10 kept, standard errors 0.1 deg and 0.5 Å.
"""

from __future__ import annotations

import attrs
import numpy as np
import pytest
from ptyframe_direct.tcbf import TiltCorrectedBF

from ptyframe import Dataset, Device, load_registry
from ptyframe.testing.simulate import SimulatedData, rotate_patterns, simulate_dataset

SCAN = (24, 24)
C10 = -300.0


def angle_error(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


@pytest.fixture(scope="module")
def sim() -> SimulatedData:
    prop = load_registry().create("propagator", {"type": "multislice"})
    return simulate_dataset(prop, window=32, pixel_size_A=0.4, defocus_A=-C10,
                            convergence_angle_mrad=15.0, scan_shape=SCAN, step_A=0.7, seed=1,
                            dose_per_pattern=1e4)


def run(sim: SimulatedData, patterns: np.ndarray, **settings):
    blind = attrs.evolve(sim.experiment, aberrations={})
    return TiltCorrectedBF(**settings).run(Dataset.from_array(patterns, scan_shape=SCAN),
                                           blind, Device("cpu", "single"))


def check_geometry(values: dict, angle: float, c10: float) -> None:
    assert angle_error(values["rotation_deg"], angle) < 0.5, values["rotation_deg"]
    assert abs(values["aberrations_A"]["C10"] - c10) < 0.03 * abs(c10), values["aberrations_A"]
    assert values["defocus_A"] == pytest.approx(-values["aberrations_A"]["C10"])
    # no higher-order term where the truth has none: reported as 0 and not significant
    assert values["significant_terms"] == ["C10"]
    assert all(v == 0.0 for k, v in values["aberrations_A"].items() if k != "C10")
    unc = values["uncertainties"]
    assert set(unc) == {"rotation_deg"} | {f"{n}_A" for n in values["aberrations_A"]}
    assert 0 < unc["rotation_deg"] < 0.5 and 0 < unc["C10_A"] < 0.03 * abs(c10)
    assert values["warnings"] == []


@pytest.mark.parametrize("angle", [0.0, 10.0, -10.0, 45.0, 90.0, 135.0])
def test_any_rotation_from_nothing(sim, angle: float) -> None:
    result = run(sim, rotate_patterns(sim.patterns, angle))
    values = result.values
    # the prior (0 deg) picks the branch within 90 deg of it: 135 deg -> -45 deg, -C10
    flipped = abs(angle) > 90.0
    check_geometry(values, angle + 180.0 if flipped else angle, -C10 if flipped else C10)
    assert values["transpose"] is False
    by = values["residual_rms_A_by_transpose"]
    assert by["False"] < 0.5 * by["True"]
    assert values["rotation_180_from"] == "prior"


def test_transposed_detector_from_nothing(sim) -> None:
    swapped = np.ascontiguousarray(np.swapaxes(rotate_patterns(sim.patterns, 45.0), 1, 2))
    values = run(sim, swapped).values
    assert values["transpose"] is True
    by = values["residual_rms_A_by_transpose"]
    assert by["True"] < 0.5 * by["False"]
    check_geometry(values, 45.0, C10)


def test_skewness_resolves_the_180_degree_branch(sim) -> None:
    values = run(sim, rotate_patterns(sim.patterns, 135.0), resolve_180="skewness").values
    check_geometry(values, 135.0, C10)
    assert values["rotation_180_from"] == "skewness"
    assert values["phase_skewness"] > 0.5  # measured 1.9 (the truth's: 4.0)


def test_without_pruning_noise_terms_are_fitted_but_not_significant(sim) -> None:
    """significance = 0 keeps every term; their fitted values stay within a few standard
    errors of 0 and the pruned default reports them as 0."""
    values = run(sim, sim.patterns, significance=0.0, transpose=False).values
    unc = values["uncertainties"]
    assert values["significant_terms"] == list(TiltCorrectedBF().fit_aberrations)
    for name in ("C21a", "C21b", "C23a", "C23b"):
        assert abs(values["aberrations_A"][name]) < 5 * unc[f"{name}_A"]


def test_small_defocus_is_reported_as_poorly_determined() -> None:
    """At 10 Å of defocus the image shifts are a few hundredths of a pixel: the fit still
    returns a C10, but says it is not determined."""
    prop = load_registry().create("propagator", {"type": "multislice"})
    near = simulate_dataset(prop, window=32, pixel_size_A=0.4, defocus_A=10.0,
                            convergence_angle_mrad=15.0, scan_shape=SCAN, step_A=0.7, seed=1,
                            dose_per_pattern=1e4)
    values = run(near, near.patterns, transpose=False, binning=(2, 1)).values
    assert any(w.startswith("defocus:") for w in values["warnings"]), values["warnings"]
    c10 = values["aberrations_A"]["C10"]
    assert values["uncertainties"]["C10_A"] > 0.03 * abs(c10)
