"""Global scan model (affine + slow drift) fitted apart from the local jitter."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

import numpy as np
import pytest

from ptyframe.core.device import Device
from ptyframe.engine.scan_model import (
    global_basis,
    jitter_prior,
    jitter_resolved,
    project_scan,
    restrict_to_global,
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


def test_restricted_gradient_keeps_the_global_part_and_steps_stay_on_the_scan_model():
    start, _ = raster()
    rng = np.random.default_rng(4)
    rows = np.arange(27)
    basis = global_basis(start[rows])
    grad = rng.normal(size=start.shape)
    out = restrict_to_global(grad, rows, basis, np)
    assert np.all(out[27:] == 0)
    fitted, local = split_correction(grad[rows], 0 * grad[rows], basis)
    assert np.allclose(out[rows], fitted)
    # a step along the restricted gradient adds no local jitter
    _, local = split_correction(start[rows] - 0.3 * out[rows], start[rows], basis)
    assert np.allclose(local, 0)
    # the restriction is a projection: applying it twice changes nothing
    assert np.allclose(restrict_to_global(out, rows, basis, np), out)


def test_jitter_is_refined_only_when_the_data_locate_positions_well_inside_the_prior():
    info = np.full((20, 2), 4.0)  # 1/px^2: a data-only uncertainty of 0.5 px per axis
    assert jitter_resolved(info, 2.5, 25.0) == (True, 25.0)  # prior 2.5 px: 5x wider
    resolved, ratio = jitter_resolved(info, 2.0, 25.0)
    assert not resolved and np.isclose(ratio, 16.0)
    assert jitter_resolved(0 * info, 1.0, 0.0)[0]  # 0: always refined
    info[:8] = 0.0  # the median decides: a few featureless positions do not hold the rest
    assert jitter_resolved(info, 2.5, 25.0)[0]


@pytest.mark.parametrize("call, match", [
    (lambda s, r: global_basis(s, None, 1), "scan_drift_order"),
    (lambda s, r: global_basis(s, r, -1), "scan_drift_order"),
    (lambda s, r: global_basis(s[:, :1]), "positions"),
    (lambda s, r: project_scan(s, s, np.arange(30), global_basis(s), 1.0, np),
     "jitter_damping"),
    (lambda s, r: jitter_prior(s, s, np.arange(30), global_basis(s), 0.0, np),
     "jitter_prior_A"),
    (lambda s, r: jitter_resolved(np.ones((30, 2)), 1.0, -1.0), "jitter_min_information"),
    (lambda s, r: jitter_resolved(np.full((30, 2), np.nan), 1.0, 1.0), "information"),
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
    with pytest.raises(ValueError, match="jitter_min_information"):
        SolverSpec(jitter_min_information=-1)
    assert SolverSpec(jitter_min_information=0).to_config()["jitter_min_information"] == 0


def multislice(thickness_A: float = 2.0):
    from ptyframe import load_registry

    return load_registry().create("propagator", {"type": "multislice",
                                                 "slice_thickness_A": thickness_A})


def distorted_scan(dose_per_A2: float, **specimen):
    """The project's simulator: 12 x 12 scan, 0.6 Å step, 0.15 Å rms jitter, a specimen
    strong enough for the data to fix the positions (``specimen``: other simulation
    settings, e.g. ``n_slices``); the nominal scan 2 % too large and rotated 3° (what the
    reconstruction starts from)."""
    from ptyframe.testing.simulate import simulate_dataset

    step = 0.6
    specimen = {"phase_scale": 3.0, **specimen}
    sim = simulate_dataset(
        multislice(), window=24, scan_shape=(12, 12), step_A=step, seed=2,
        dose_per_pattern=dose_per_A2 * step**2, position_jitter_A=0.15 / np.sqrt(2),
        **specimen)
    nominal = sim.nominal_positions_A
    centre = nominal.mean(axis=0)
    t = np.deg2rad(3.0)
    distortion = 1.02 * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return sim, centre + (nominal - centre) @ distortion.T


def position_errors(sim, start, epochs: int = 40, **settings) -> np.ndarray:
    """rms position error (Å, global shift removed) after every epoch (positions refined
    from epoch 10; ``settings``: other Reconstruction settings)."""
    from ptyframe import FromEpoch, Reconstruction

    rec = Reconstruction(sim.patterns, sim.experiment, positions_A=start,
                         refine_probe=FromEpoch(5), refine_positions=FromEpoch(10),
                         device=Device("cpu", "double"), progress=False, **settings)
    errors: list[float] = []
    rec.run(epochs, callbacks=[track_errors(rec, sim, errors)])
    return np.array(errors)


def track_errors(rec, sim, errors: list) -> Callable:
    """A callback appending the rms position error (Å, global shift removed)."""
    from ptyframe.testing.validation import position_error_A

    def track(report):
        corners = rec.device.to_host(rec.params["positions"])
        errors.append(position_error_A(rec.grid.pixels_to_positions(corners), sim.positions_A))

    return track


def rise_after_minimum(errors: np.ndarray) -> float:
    """How far (fraction) the error rises above its minimum after reaching it."""
    best = int(np.argmin(errors))
    return float(errors[best:].max() / errors[best] - 1.0)


# start 0.235 Å; the largest final error measured with the default settings (40 epochs):
# 1e3: 0.225, 1e4: 0.182, 1e5: 0.141 Å (before the information gate: 0.287, 0.184, 0.143)
@pytest.mark.parametrize("dose, final", [(1e3, 0.235), (1e4, 0.19), (1e5, 0.15)])
def test_refined_positions_converge_without_overshoot(dose, final):
    """The issue's criterion at 10^3-10^5 e/Å² with the default settings (affine scan
    model, jitter prior 0.2 Å with the ml loss, jitter refined only where the patterns can
    locate the positions): the error never rises more than 10 % above its minimum, and ends
    at or below its start. At 10^3 e/Å² (360 electrons per pattern) the jitter is held and
    only the global scan model is fitted; the error used to rise 22 % (0.235 -> 0.287 Å).
    Most of what is left at 10^4-10^5 is the affine part (0.10-0.14 Å), which converges
    slowly (see the scan_model module docstring)."""
    errors = position_errors(*distorted_scan(dose))
    assert rise_after_minimum(errors) <= 0.10
    assert errors[-1] <= final


def test_at_low_dose_the_jitter_is_held_and_positions_follow_the_scan_model():
    """10^3 e/Å²: the information bound of the positions is a few times the prior's
    precision (measured 6.8 with the 0.2 Å prior), below the default 25: the training
    positions stay on start + affine map, the held-out ones follow their neighbours."""
    from ptyframe import FromEpoch, Reconstruction

    sim, start = distorted_scan(1e3)
    rec = Reconstruction(sim.patterns, sim.experiment, positions_A=start,
                         refine_probe=FromEpoch(2), refine_positions=FromEpoch(4),
                         device=Device("cpu", "double"), progress=False)
    rec.run(12)
    assert rec._jitter_held is True
    moved = rec.grid.pixels_to_positions(rec.device.to_host(rec.params["positions"]))
    train = np.setdiff1d(np.arange(len(start)), rec.held_out)
    fitted, local = split_correction(moved[train], start[train], global_basis(start[train]))
    assert np.abs(fitted).max() > 1e-3  # the global part is fitted
    assert np.abs(local).max() < 1e-9  # the jitter is held


def test_without_the_information_gate_low_dose_positions_overshoot():
    """The same 10^3 e/Å² scan with ``jitter_min_information = 0`` (the jitter refined from
    the start, with its prior): measured 0.235 -> 0.271 Å, 16 % above the minimum;
    without the scan model (``scan_model = "none"``) 0.35 Å."""
    sim, start = distorted_scan(1e3)
    assert rise_after_minimum(position_errors(sim, start, jitter_min_information=0)) > 0.10
    assert rise_after_minimum(position_errors(sim, start, scan_model="none")) > 0.2


def test_multislice_positions_converge_with_the_scan_model():
    """Two slices (reconstructed with two): at 10^4 e/Å² measured 0.235 -> 0.214 Å, no rise;
    without the scan model 0.226 -> 0.245 Å (10 % rise). At 10^3 e/Å² (not asserted here)
    0.235 -> 0.256 Å (8.9 %): the two-slice object fits noise from epoch 15 on (its
    validation loss rises), which releases the jitter at epoch 18."""
    sim, start = distorted_scan(1e4, n_slices=2, phase_scale=1.5)
    settings = {"n_slices": 2, "propagator": multislice()}
    errors = position_errors(sim, start, **settings)
    assert rise_after_minimum(errors) <= 0.10
    assert errors[-1] < 0.95 * errors[0]
    without = position_errors(sim, start, scan_model="none", **settings)
    assert errors[-1] < without[-1] - 0.02


def test_minibatch_engine_positions_do_not_overshoot_at_low_dose(monkeypatch):
    """The scan model, prior and information gate belong to the Reconstruction, so another
    engine gets them too: the test folder's mini-batch plugin at 10^3 e/Å², measured
    0.235 -> 0.239 Å (1.9 % above the minimum); without the scan model 0.272 Å (20 %)."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parent / "engine_plugin"))
    monkeypatch.setitem(sys.modules, "ptyframe_minibatch_engine", None)  # undone after
    del sys.modules["ptyframe_minibatch_engine"]
    module = importlib.import_module("ptyframe_minibatch_engine")
    MiniBatchGradientDescent = module.MiniBatchGradientDescent

    sim, start = distorted_scan(1e3)
    errors = position_errors(sim, start, engine=MiniBatchGradientDescent(batch=36))
    assert rise_after_minimum(errors) <= 0.10
    without = position_errors(sim, start, engine=MiniBatchGradientDescent(batch=36),
                              scan_model="none")
    assert rise_after_minimum(without) > 0.10


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
