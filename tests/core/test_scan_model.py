"""Global scan model (affine + slow drift) fitted apart from the local jitter."""

from __future__ import annotations

import numpy as np
import pytest

from ptyframe.core.device import Device
from ptyframe.engine.scan_model import (
    global_basis,
    jitter_prior,
    project_scan,
    split_correction,
)


def raster(rows: int = 6, cols: int = 5) -> tuple[np.ndarray, np.ndarray]:
    iy, ix = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return np.stack([iy.ravel(), ix.ravel()], 1) * 3.0 + 10.0, iy.ravel()


def test_basis_is_orthonormal_and_holds_every_affine_map():
    start, _ = raster()
    basis = global_basis(start)
    assert basis.shape == (30, 3)
    assert np.allclose(basis.T @ basis, np.eye(3))
    affine = start @ np.array([[1.02, 0.05], [-0.04, 0.97]]).T + [0.3, -0.2]
    fitted, local = split_correction(affine, start, basis)
    assert np.allclose(local, 0) and np.allclose(fitted, affine - start)


def test_drift_columns_hold_a_quadratic_slow_axis_drift_that_affine_misses():
    start, row = raster()
    drifted = start + np.stack([0.01 * row**2, -0.02 * row**2], 1)
    _, local = split_correction(drifted, start, global_basis(start))
    assert np.abs(local).max() > 0.01
    _, local = split_correction(drifted, start, global_basis(start, row, drift_order=1))
    assert np.allclose(local, 0)


def test_projection_holds_translation_keeps_affine_and_damps_jitter():
    start, _ = raster()
    rng = np.random.default_rng(0)
    jitter = rng.normal(0, 0.1, start.shape)
    jitter -= global_basis(start) @ (global_basis(start).T @ jitter)  # pure local part
    affine = (start - start.mean(0)) @ np.array([[0.02, 0.03], [-0.03, 0.02]]).T
    current = start + affine + jitter + [0.5, -0.7]
    rows = np.arange(30)
    out = project_scan(current, start, rows, global_basis(start), 0.25, np)
    assert np.allclose(out, start + affine + 0.75 * jitter)
    # rows outside the fit are left as they are
    out = project_scan(current, start, rows[:-3], global_basis(start[:-3]), 0.0, np)
    assert np.array_equal(out[-3:], current[-3:])


def test_jitter_prior_value_and_gradient_match_finite_differences():
    start, _ = raster()
    rng = np.random.default_rng(3)
    rows = np.arange(27)  # the last three rows are not fitted (held out)
    basis = global_basis(start[rows])
    current = start + rng.normal(0, 0.2, start.shape) + (start - start.mean(0)) * 0.01
    value, grad = jitter_prior(current, start, rows, basis, 0.5, np)
    _, local = split_correction(current[rows], start[rows], basis)
    assert np.isclose(value, np.sum(local**2) / (2 * 0.25))
    assert np.all(grad[27:] == 0)
    step = rng.normal(size=start.shape)
    h = 1e-6
    plus, _ = jitter_prior(current + h * step, start, rows, basis, 0.5, np)
    minus, _ = jitter_prior(current - h * step, start, rows, basis, 0.5, np)
    # real-block convention: g = 1/2 dR/dp, so dR = 2 <g, dp>
    assert np.isclose((plus - minus) / (2 * h), 2 * np.sum(grad * step), rtol=1e-6)
    # an affine correction costs nothing
    affine = start + (start - start.mean(0)) @ np.array([[0.03, 0.01], [-0.02, 0.0]]).T
    assert jitter_prior(affine, start, rows, basis, 0.5, np)[0] < 1e-20


@pytest.mark.parametrize("call, match", [
    (lambda s, r: global_basis(s, None, 1), "scan_drift_order"),
    (lambda s, r: global_basis(s, r, -1), "scan_drift_order"),
    (lambda s, r: global_basis(s[:, :1]), "positions"),
    (lambda s, r: project_scan(s, s, np.arange(30), global_basis(s), 1.0, np),
     "jitter_damping"),
    (lambda s, r: jitter_prior(s, s, np.arange(30), global_basis(s), 0.0, np),
     "jitter_prior_A"),
])
def test_bad_settings_name_the_parameter(call, match):
    start, row = raster()
    with pytest.raises(ValueError, match=match):
        call(start, row)


def test_settings_are_validated_and_round_trip():
    from ptyframe.engine.specs import SolverSpec

    spec = SolverSpec(scan_model="none", scan_drift_order=2, jitter_damping=0.1)
    config = spec.to_config()
    assert (config["scan_model"], config["scan_drift_order"], config["jitter_damping"]) == (
        "none", 2, 0.1)
    with pytest.raises(ValueError, match="scan_model"):
        SolverSpec(scan_model="spline")
    with pytest.raises(ValueError, match="jitter_damping"):
        SolverSpec(jitter_damping=1.0)
    with pytest.raises(ValueError, match="jitter_prior_A"):
        SolverSpec(jitter_prior_A=-0.1)


def distorted_scan(dose_per_A2: float):
    """The project's simulator: 12 x 12 scan, 0.6 Å step, 0.15 Å rms jitter, a specimen
    strong enough for the data to fix the positions; the nominal scan 2 % too large and
    rotated 3° (what the reconstruction starts from)."""
    from ptyframe import load_registry
    from ptyframe.testing.simulate import simulate_dataset

    step = 0.6
    sim = simulate_dataset(
        load_registry().create("propagator", {"type": "multislice", "slice_thickness_A": 2.0}),
        window=24, scan_shape=(12, 12), step_A=step, seed=2,
        dose_per_pattern=dose_per_A2 * step**2, position_jitter_A=0.15 / np.sqrt(2),
        phase_scale=3.0)
    nominal = sim.nominal_positions_A
    centre = nominal.mean(axis=0)
    t = np.deg2rad(3.0)
    distortion = 1.02 * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return sim, centre + (nominal - centre) @ distortion.T


def position_errors(sim, start, epochs: int = 40, **settings) -> np.ndarray:
    """rms position error (Å, global shift removed) after every epoch."""
    from ptyframe import FromEpoch, Reconstruction
    from ptyframe.testing.validation import position_error_A

    rec = Reconstruction(sim.patterns, sim.experiment, positions_A=start,
                         refine_probe=FromEpoch(5), refine_positions=FromEpoch(10),
                         device=Device("cpu", "double"), progress=False, **settings)
    errors = []

    def track(report):
        corners = rec.device.to_host(rec.params["positions"])
        errors.append(position_error_A(rec.grid.pixels_to_positions(corners), sim.positions_A))

    rec.run(epochs, callbacks=[track])
    return np.array(errors)


@pytest.mark.parametrize("dose", [1e4, 1e5])
def test_refined_positions_converge_without_overshoot(dose):
    """Default settings (affine scan model, jitter prior 0.2 Å with the ml loss). Measured (40
    epochs, positions from epoch 10), start 0.235 Å: 1e5 e/Å² -> 0.143 Å, 1e4 -> 0.184 Å,
    each epoch's error at or below every earlier one after the first position epochs. Most of
    what is left is the affine part (0.12-0.14 Å): with a probe near focus the patterns fix
    scan rotation and scale only weakly (the geometry step's job)."""
    errors = position_errors(*distorted_scan(dose))
    best = int(np.argmin(errors))
    assert errors[best:].max() <= 1.1 * errors[best]  # no overshoot
    assert errors[-1] < 0.9 * errors[0]


def test_low_dose_positions_wander_less_with_the_jitter_prior():
    """1e3 e/Å² (360 electrons per pattern): the patterns do not fix the positions better
    than the start. Measured: 0.235 -> 0.287 Å with the default prior, 0.350 Å without
    (``scan_model = "none"``): the prior halves the rise but does not stop it (not yet the
    issue's "never more than 10 % above the minimum" at this dose)."""
    sim, start = distorted_scan(1e3)
    with_prior = position_errors(sim, start)
    without = position_errors(sim, start, scan_model="none")
    assert with_prior[-1] < without[-1] - 0.03
    assert with_prior[-1] < 1.3 * with_prior.min()


def test_without_the_scan_model_low_dose_positions_run_away():
    """The same 1e3 e/Å² scan with ``scan_model = "none"``: 0.235 -> 0.35 Å (measured), what
    the default prevents."""
    errors = position_errors(*distorted_scan(1e3), scan_model="none")
    assert errors[-1] > 1.2 * errors.min()


def test_resume_continues_exactly_with_the_scan_model(tmp_path):
    from ptyframe import FromEpoch, Reconstruction

    sim, start = distorted_scan(1e4)

    def build(folder):
        return Reconstruction(sim.patterns, sim.experiment, positions_A=start,
                              refine_probe=FromEpoch(2), refine_positions=FromEpoch(3),
                              scan_drift_order=1, jitter_damping=0.1,
                              device=Device("cpu", "double"), progress=False,
                              output_dir=folder, figures=False, result_file=False)

    straight = build(tmp_path / "a").run(10)
    build(tmp_path / "b").run(6)
    resumed = build(tmp_path / "b")
    resumed.load_checkpoint()
    result = resumed.run(4)
    assert np.array_equal(result.positions_A, straight.positions_A)
    assert np.array_equal(result.object, straight.object)
    from ptyframe.io.results import read_loss_log

    log = read_loss_log(tmp_path / "b" / "loss.csv")
    prior = np.asarray(log["jitter_prior"], dtype=float)
    assert np.all(np.isnan(prior[:3])) and np.all(prior[3:] > 0)  # positions from epoch 3
