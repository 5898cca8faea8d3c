"""Held-out patterns: validation loss, best-validated epoch kept and written."""

from __future__ import annotations

import numpy as np
import pytest

from ptyframe import Device, Reconstruction, load_registry
from ptyframe.engine.validation import (
    MIN_HELD_OUT,
    follow_neighbours,
    held_out_indices,
    neighbour_table,
)
from ptyframe.io.results import load_state, read_loss_log
from ptyframe.testing.simulate import simulate_dataset
from ptyframe.testing.validation import phase_correlation, resample_to_grid, scanned_region_mask

REGISTRY = load_registry()


def test_held_out_indices_are_seeded_sorted_and_sized():
    a = held_out_indices(400, 0.05, seed=3)
    assert a.size == 20 and np.all(np.diff(a) > 0) and a.max() < 400
    assert np.array_equal(a, held_out_indices(400, 0.05, seed=3))
    assert not np.array_equal(a, held_out_indices(400, 0.05, seed=4))
    assert held_out_indices(400, 0.0, seed=3).size == 0
    assert held_out_indices(MIN_HELD_OUT * 20 - 20, 0.05, seed=0).size == 0  # too few


@pytest.mark.parametrize("fraction", [-0.1, 0.5, 1.0])
def test_held_out_fraction_out_of_range_is_one_clear_error(fraction):
    with pytest.raises(ValueError, match="validation_fraction"):
        held_out_indices(100, fraction, seed=0)


def test_held_out_positions_follow_their_neighbours_correction():
    grid = np.stack(np.meshgrid(np.arange(6.0), np.arange(6.0), indexing="ij"), -1).reshape(-1, 2)
    held = np.array([7, 20])
    near = neighbour_table(grid, held)
    assert near.shape == (2, 4) and not np.isin(near, held).any()
    drift = np.array([0.3, -0.2])
    current = grid + drift
    current[held] = grid[held]  # never moved by the fit
    out = follow_neighbours(current, grid, held, near, np)
    assert np.allclose(out, grid + drift)


def simulate_low_dose():
    propagator = REGISTRY.create("propagator", {"type": "multislice", "slice_thickness_A": 2.0})
    return simulate_dataset(propagator, window=24, scan_shape=(12, 12), step_A=0.6, seed=1,
                            dose_per_pattern=1000.0)


def test_best_validated_epoch_is_kept_returned_and_written(tmp_path):
    sim = simulate_low_dose()
    truth_phase = sim.phase
    scores = []

    def score(report):
        obj = rec.device.to_host(rec.params["object"])
        phase = np.angle(obj[:, 0]).sum(axis=0)
        truth = resample_to_grid(truth_phase, sim.grid, rec.grid)
        mask = scanned_region_mask(rec.grid, sim.positions_A)
        scores.append(phase_correlation(phase, truth, mask=mask))

    rec = Reconstruction(sim.patterns, sim.experiment, positions_A=sim.positions_A,
                         loss=REGISTRY.create("loss", {"type": "ml"}),
                         device=Device("cpu", "double"), progress=False,
                         output_dir=tmp_path / "out", seed=5)
    result = rec.run(30, callbacks=[score])
    held = rec.held_out
    assert held.size == round(0.05 * len(sim.patterns))
    training = rec.indices(0)
    assert training.size + held.size == len(sim.patterns) and not np.isin(held, training).any()
    # validation loss in loss.csv and on the result; the result is its best epoch
    log = read_loss_log(tmp_path / "out" / "loss.csv")
    assert np.allclose(log["validation_loss"], result.validation_loss)
    assert result.best_epoch == int(np.argmin(result.validation_loss)) + 1
    # noise is fitted: the validation loss rises again after its minimum
    assert result.validation_loss[-1] > min(result.validation_loss)
    best_phase = result.phase
    truth = resample_to_grid(truth_phase, sim.grid, result.grid)
    mask = scanned_region_mask(result.grid, sim.positions_A)
    kept = phase_correlation(best_phase, truth, mask=mask)
    assert kept == pytest.approx(scores[result.best_epoch - 1], abs=1e-9)
    # measured: best epoch 7 (0.788, the maximum), last epoch 0.745
    assert kept >= max(scores) - 0.005
    assert kept > scores[-1] + 0.02
    # written to dir/best, the last epoch's state stays in dir (for resuming)
    arrays, epoch = load_state(tmp_path / "out" / "best")
    assert epoch == result.best_epoch
    _, last = load_state(tmp_path / "out")
    assert last == 30


def test_no_held_out_patterns_keeps_the_last_epoch():
    sim = simulate_low_dose()
    rec = Reconstruction(sim.patterns, sim.experiment, positions_A=sim.positions_A,
                         validation_fraction=0.0, device=Device("cpu", "double"),
                         progress=False)
    result = rec.run(3)
    assert rec.held_out.size == 0 and rec.indices(0) is None
    assert result.best_epoch is None and result.validation_loss == []


def test_default_loss_is_ml_for_counts_and_lsq_sqrt_for_intensities():
    from ptyframe.engine.reconstruction import looks_like_counts

    sim = simulate_low_dose()  # Poisson counts
    assert looks_like_counts(sim.patterns)
    assert not looks_like_counts(sim.patterns / sim.patterns.sum(axis=(1, 2), keepdims=True))
    assert not looks_like_counts(sim.patterns - 0.5)  # negative after a background subtraction
    counts = Reconstruction(sim.patterns, sim.experiment, positions_A=sim.positions_A,
                            progress=False)
    assert counts.loss.name == "ml"
    fractions = Reconstruction(sim.patterns / 1000.0, sim.experiment,
                               positions_A=sim.positions_A, progress=False)
    assert fractions.loss.name == "lsq_sqrt"


def test_resumed_run_keeps_the_best_epoch_found_before_it_stopped(tmp_path):
    sim = simulate_low_dose()

    def build(folder):
        return Reconstruction(sim.patterns, sim.experiment, positions_A=sim.positions_A,
                              device=Device("cpu", "double"), progress=False,
                              output_dir=folder, seed=5)

    whole = build(tmp_path / "whole").run(20)
    first = build(tmp_path / "split")
    first.run(10)
    second = build(tmp_path / "split")
    assert second.load_checkpoint() == 10
    resumed = second.run(10)
    assert whole.best_epoch <= 10  # measured: 7, found before the stop
    assert resumed.best_epoch == whole.best_epoch
    assert np.allclose(resumed.validation_loss, whole.validation_loss)
    assert np.allclose(resumed.object, whole.object)
