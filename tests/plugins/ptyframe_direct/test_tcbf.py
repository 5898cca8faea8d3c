"""Tilt-corrected bright field (tcBF) on ptyframe's own simulated data.

Geometry of every simulation: 200 kV, 15 mrad, 32-pixel detector at 0.4 Å reconstruction
pixels (BF disk radius 7.7 px), 24 x 24 scan at 0.7 Å, defocus 300-350 Å (shifts of up to
6 scan pixels at the edge of the bright field), Poisson noise at 1e4 electrons per pattern
unless stated. Every run starts blind: the experiment handed to tcBF has no aberrations.

Scan rotation: ptyframe's simulator has no scan-rotation option, so the rotated-scan data set
replaces its raster
(``ptyframe.testing.simulate.scan_positions``) by the ``scan_grid`` initializer's
raster rotated by a known angle about its centre -- the geometry that
``Experiment.scan_rotation_deg`` describes (positions = R(theta) nominal). Astigmatism comes
from the simulator's ``aberrations_array`` (the model's per-measurement aberrations, applied
on top of the probe's defocus).

Measured (double precision, this geometry): C10 -300.2 Å for -300 (shift fit alone -299.6);
rotation 19.94 deg for 20; C12 (64.3, -44.4) Å for (60, -40); phase correlation with the
truth 0.84 (upsampled tcBF contrast 0.29) against 0.15 for the plain bright-field sum. On the
independent abTEM file ../shared/data/defocused_bf.h5 (``benchmarks/validate_direct.py``; tests
never read ../shared): C10 +605.9 Å for +600 Å, rotation 0.0004 deg for 0.
"""

from __future__ import annotations

import attrs
import numpy as np
import pytest
from ptyframe_direct.tcbf import (
    ShiftModel,
    TiltCorrectedBF,
    experiment_from_tcbf,
    tcbf_transfer,
)
from ptyframe_initializers.positions import scan_grid
from scipy import ndimage

import ptyframe.testing.simulate as simulate_module
from ptyframe import Dataset, Device, load_registry
from ptyframe.components import DirectResult
from ptyframe.core.physics import (
    ABERRATION_NAMES,
    aberration_basis,
    aberration_gradient_basis,
)
from ptyframe.testing.simulate import SimulatedData, simulate_dataset
from ptyframe.testing.validation import align_images, phase_correlation

REGISTRY = load_registry()
SCAN = (24, 24)
STEP_A = 0.7


def simulate(defocus_A: float = 300.0, dose: float | None = 1e4, seed: int = 1,
             aberrations_array: np.ndarray | None = None) -> SimulatedData:
    prop = REGISTRY.create("propagator", {"type": "multislice"})
    return simulate_dataset(prop, window=32, pixel_size_A=0.4, defocus_A=defocus_A,
                            convergence_angle_mrad=15.0, scan_shape=SCAN, step_A=STEP_A,
                            seed=seed, dose_per_pattern=dose,
                            aberrations_array=aberrations_array)


def counts(sim: SimulatedData) -> np.ndarray:
    return sim.patterns if sim.patterns.sum() > 10 * len(sim.patterns) else sim.patterns * 1e4


def blind(sim: SimulatedData):
    """The simulation's experiment without its aberrations (nothing known in advance)."""
    return attrs.evolve(sim.experiment, aberrations={})


@pytest.fixture(scope="module")
def defocused() -> tuple[SimulatedData, DirectResult]:
    sim = simulate(300.0)
    result = TiltCorrectedBF().run(Dataset.from_array(counts(sim), scan_shape=SCAN),
                                   blind(sim), Device("cpu", "double"))
    return sim, result


@pytest.fixture(scope="module")
def rotated_astigmatic() -> tuple[SimulatedData, np.ndarray]:
    """Scan rotated by 20 deg, C10 = -350 Å, C12 = (60, -40) Å."""
    original = simulate_module.scan_positions

    def rotated(scan_shape, step_A, origin_A):
        return scan_grid(scan_shape, (step_A, step_A), 20.0)

    simulate_module.scan_positions = rotated
    try:
        sim = simulate(350.0, seed=4, aberrations_array=np.array([[0.0, 60.0, -40.0]]))
    finally:
        simulate_module.scan_positions = original
    return sim, counts(sim)


# ---------------------------------------------------------------------------- derivatives
def test_gradient_basis_matches_finite_differences_of_physics_basis() -> None:
    rng = np.random.default_rng(0)
    ky, kx = rng.uniform(-0.8, 0.8, (2, 40))
    lam = 0.025
    grads = aberration_gradient_basis(ky, kx, lam, ABERRATION_NAMES)
    h = 1e-6
    n = len(ABERRATION_NAMES)
    fd_y = (aberration_basis(ky + h, kx, lam, n) - aberration_basis(ky - h, kx, lam, n)) / (2 * h)
    fd_x = (aberration_basis(ky, kx + h, lam, n) - aberration_basis(ky, kx - h, lam, n)) / (2 * h)
    scale = np.abs(np.stack([fd_y, fd_x], -1)).max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(grads / scale, np.stack([fd_y, fd_x], -1) / scale, atol=1e-6)
    # at k = 0 every gradient of order n >= 1 vanishes
    assert np.all(aberration_gradient_basis(np.zeros(1), np.zeros(1), lam,
                                            ABERRATION_NAMES) == 0)


@pytest.mark.parametrize("fit_rotation", [True, False])
def test_shift_model_jacobian_matches_finite_differences(fit_rotation: bool) -> None:
    rng = np.random.default_rng(2)
    k = rng.uniform(-0.5, 0.5, (30, 2))
    names = ("C10", "C12a", "C12b", "C21a", "C21b", "C23a", "C23b", "C30")
    fixed = np.zeros(len(ABERRATION_NAMES))
    fixed[ABERRATION_NAMES.index("C32a")] = 2e4  # a held coefficient shifts too
    model = ShiftModel(k, 0.025, names, fixed, fit_rotation=fit_rotation, theta=0.3)
    x = model.pack(np.array([-300.0, 40.0, -25.0, 800.0, -500.0, 300.0, 200.0, 1e5]), 0.35,
                   np.array([0.2, -0.1]))
    jac = model.jacobian(x)
    assert jac.shape == (60, model.n_params)
    for j in range(model.n_params):
        h = 1e-6 * max(1.0, abs(x[j]))
        dx = np.zeros_like(x)
        dx[j] = h
        fd = (model.predict(x + dx) - model.predict(x - dx)).reshape(-1) / (2 * h)
        np.testing.assert_allclose(jac[:, j], fd, rtol=1e-6, atol=1e-7 * np.abs(fd).max())


def test_pure_defocus_shift_is_lambda_defocus_k_rotated_into_the_scan_frame() -> None:
    """sigma = R(theta)^T (-grad chi / 2 pi) = R(theta)^T lambda defocus k, theta the scan
    rotation of positions = R(theta) nominal (x' = cos x - sin y, y' = sin x + cos y)."""
    k = np.array([[0.0, 0.4], [0.3, 0.0]])
    lam, defocus, theta = 0.025, 250.0, np.deg2rad(30.0)
    fixed = np.zeros(len(ABERRATION_NAMES))
    fixed[0] = -defocus
    model = ShiftModel(k, lam, (), fixed, fit_rotation=False, theta=theta)
    s = lam * defocus * k  # specimen frame (y, x)
    c, si = np.cos(theta), np.sin(theta)
    # R^T applied to (y, x): x_s = c x + s y, y_s = -s x + c y
    expected = np.stack([-si * s[:, 1] + c * s[:, 0], c * s[:, 1] + si * s[:, 0]], axis=1)
    np.testing.assert_allclose(model.predict(np.zeros(2)), expected, atol=1e-12)


def test_transfer_of_pure_defocus_is_twice_sine() -> None:
    """Inside the aperture the residual transfer is 2 sin(pi lambda C10 q^2) for every k."""
    lam, c10 = 0.025, 200.0
    q = np.linspace(0.0, 0.3, 7)
    qy, qx = np.zeros_like(q), q
    coeffs = np.zeros(len(ABERRATION_NAMES))
    coeffs[0] = c10
    t = tcbf_transfer(np, (qy, qx), np.array([[0.05, -0.1], [0.0, 0.0]]), lam, coeffs,
                      aperture_inv_A=1.0, edge_inv_A=0.01)
    np.testing.assert_allclose(t, 2 * np.sin(np.pi * lam * c10 * q**2), atol=1e-12)


# ---------------------------------------------------------------------------- fits
def test_defocus_and_rotation_from_blind_start(defocused) -> None:
    sim, result = defocused
    truth = sim.experiment.aberrations["C10"]  # -300 Å (300 Å underfocus)
    fitted = result.values["aberrations_A"]["C10"]
    assert abs(fitted - truth) < 0.05 * abs(truth), (fitted, truth)  # measured -300.2
    refine = [lv for lv in result.values["levels"] if lv.get("stage") == "refine_defocus"]
    assert abs(refine[0]["C10_shift_fit_A"] - truth) < 0.05 * abs(truth)  # -299.6
    assert result.values["defocus_A"] == pytest.approx(-fitted)
    assert abs(result.values["rotation_deg"]) < 1.0
    assert result.values["transpose"] is False
    assert result.values["residual_rms_A"] < 0.3 * STEP_A  # measured 0.12 Å
    binnings = [lv["binning"] for lv in result.values["levels"] if "binning" in lv]
    assert binnings[:3] == [4, 2, 1]


def test_upsampled_phase_correlates_with_truth_better_than_plain_bright_field(defocused):
    sim, result = defocused
    grid = sim.grid

    def truth_at(origin_A, shape, pixel_A):
        ys = (sim.positions_A[0, 0] + origin_A[0] + np.arange(shape[0]) * pixel_A
              - grid.origin_A[0]) / grid.pixel_size_A
        xs = (sim.positions_A[0, 1] + origin_A[1] + np.arange(shape[1]) * pixel_A
              - grid.origin_A[1]) / grid.pixel_size_A
        return ndimage.map_coordinates(sim.phase, np.meshgrid(ys, xs, indexing="ij"),
                                       order=3, mode="nearest")

    phase, tcbf = result.arrays["phase"], result.arrays["tcbf"]
    pixel = result.pixel_size_A
    assert pixel == pytest.approx(STEP_A / 2)
    truth = truth_at(result.values["origin_A"], phase.shape, pixel)
    ys = result.values["origin_A"][0] + np.arange(phase.shape[0]) * pixel
    xs = result.values["origin_A"][1] + np.arange(phase.shape[1]) * pixel
    inside = (((ys >= 0) & (ys <= (SCAN[0] - 1) * STEP_A))[:, None]
              & ((xs >= 0) & (xs <= (SCAN[1] - 1) * STEP_A))[None, :])
    c_phase = phase_correlation(phase, truth, mask=inside)
    c_tcbf = phase_correlation(tcbf, truth, mask=inside)
    bf = result.arrays["bf_image"]
    bf_truth = truth_at((0.0, 0.0), bf.shape, STEP_A)
    c_bf = max(phase_correlation(bf, bf_truth), phase_correlation(-bf, bf_truth))
    # measured: phase 0.84, tcBF contrast 0.29, plain BF sum 0.15 (either sign)
    assert c_phase > 0.75
    assert c_phase > c_bf + 0.4
    assert c_tcbf > c_bf + 0.05
    # the image sits where the specimen is: the aligning shift is a fraction of a pixel
    _, shift = align_images(phase, truth, mask=inside)
    assert np.all(np.abs(shift) < 1.0), shift


def test_rotation_and_astigmatism_recovered(rotated_astigmatic) -> None:
    sim, patterns = rotated_astigmatic
    experiment = blind(sim)
    result = TiltCorrectedBF().run(Dataset.from_array(patterns, scan_shape=SCAN), experiment,
                                   Device("cpu", "double"))
    ab = result.values["aberrations_A"]
    assert abs(result.values["rotation_deg"] - 20.0) < 1.0  # measured 19.94
    assert abs(ab["C10"] + 350.0) < 0.05 * 350.0  # measured -350.2
    assert abs(ab["C12a"] - 60.0) < 10.0 and abs(ab["C12b"] + 40.0) < 10.0  # 64.3, -44.4
    # astigmatism the data support is kept; the absent coma and three-fold are not
    assert result.values["significant_terms"] == ["C10", "C12a", "C12b"]
    # the fit seeds a reconstruction: the scan-grid positions of the fitted rotation match
    updated = experiment_from_tcbf(experiment, result)
    assert updated.scan_rotation_deg == pytest.approx(result.values["rotation_deg"])
    assert updated.aberrations["C10"] == pytest.approx(ab["C10"])
    positions = scan_grid(SCAN, updated.scan_step_yx_A, updated.scan_rotation_deg)
    error = (positions - positions.mean(0)) - (sim.positions_A - sim.positions_A.mean(0))
    assert np.sqrt(np.mean(np.sum(error**2, axis=1))) < 0.1  # Å, over a 16 Å field


def test_transposed_detector_is_detected_and_refused_by_experiment_update(
        rotated_astigmatic) -> None:
    sim, patterns = rotated_astigmatic
    swapped = np.ascontiguousarray(np.swapaxes(patterns, 1, 2))
    method = TiltCorrectedBF(transpose=None, binning=(2, 1), refine_defocus=False)
    result = method.run(Dataset.from_array(swapped, scan_shape=SCAN), blind(sim),
                        Device("cpu", "single"))
    by = result.values["residual_rms_A_by_transpose"]
    assert result.values["transpose"] is True
    assert by["True"] < 0.3 * by["False"]  # measured 0.12 vs 1.19 Å
    assert abs(result.values["rotation_deg"] - 20.0) < 1.0
    with pytest.raises(ValueError, match="transpose"):
        experiment_from_tcbf(blind(sim), result)


def test_wrong_method_result_is_refused() -> None:
    sim_exp = simulate(300.0, dose=None).experiment
    with pytest.raises(ValueError, match="tcbf"):
        experiment_from_tcbf(sim_exp, DirectResult(method="dpc", arrays={}))


# ---------------------------------------------------------------------------- plumbing
def test_virtual_images_do_not_depend_on_the_chunk_size(defocused) -> None:
    sim, _ = defocused
    data = Dataset.from_array(counts(sim), scan_shape=SCAN)
    pixels = np.array([[16, 16], [12, 19], [20, 13]])
    whole = TiltCorrectedBF()._virtual_images(data, pixels)
    chunked = TiltCorrectedBF(chunk_patterns=7)._virtual_images(data, pixels)
    np.testing.assert_array_equal(whole, chunked)
    expected = counts(sim)[:, pixels[:, 0], pixels[:, 1]].T
    np.testing.assert_allclose(whole, expected, rtol=1e-6)


def test_registry_round_trip_and_result_layout(defocused) -> None:
    method = REGISTRY.create("direct_method", {"type": "tcbf", "binning": [2, 1],
                                               "fit_aberrations": ["C10", "C12a", "C12b"],
                                               "transpose": None, "upsample": 3})
    assert isinstance(method, TiltCorrectedBF)
    config = method.to_config()
    assert REGISTRY.create("direct_method", config).to_config() == config
    _, result = defocused
    assert result.method == "tcbf"
    assert set(result.arrays) >= {"tcbf", "tcbf_weight", "phase", "bf_image", "bf_pixels",
                                  "bf_k_inv_A", "bf_shifts_A", "shifts_A", "shifts_fit_A"}
    n = result.values["n_bf_pixels"]
    assert result.arrays["bf_pixels"].shape == (n, 2)
    assert result.arrays["bf_shifts_A"].shape == (n, 2)
    assert result.arrays["tcbf"].shape == result.arrays["phase"].shape
    assert result.pixel_size_yx_A == pytest.approx((STEP_A / 2, STEP_A / 2))
    assert result.units["phase"] == "rad"
    assert set(result.timings_s) >= {"read", "image", "phase", "total"}


@pytest.mark.parametrize(("field", "value", "message"), [
    ("binning", [0], "binning"),
    ("fit_aberrations", ["C99"], "fit_aberrations"),
    ("bf_mask", "disk", "bf_mask"),
    ("transpose", "yes", "transpose"),
    ("upsample", 0, "upsample"),
    ("bf_threshold", 1.5, "bf_threshold"),
    ("loss", "l2", "loss"),
    ("search_radius_px", -1, "search_radius_px"),
])
def test_bad_settings_name_the_parameter(field: str, value, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TiltCorrectedBF(**{field: value})


def test_bad_input_names_the_problem(defocused) -> None:
    sim, _ = defocused
    method = TiltCorrectedBF()
    no_scan = attrs.evolve(sim.experiment, scan_shape=None)
    with pytest.raises(ValueError, match="scan_shape"):
        method.run(counts(sim), no_scan, Device("cpu", "double"))
    with pytest.raises(ValueError, match="scan_shape"):
        method.run(counts(sim)[:100], sim.experiment, Device("cpu", "double"))
