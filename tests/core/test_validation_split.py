"""Held-out patterns: validation loss, best-validated epoch kept and written."""

from __future__ import annotations

import numpy as np
import pytest

from ptyframe import Device, Reconstruction, load_registry
from ptyframe.engine.validation import (
    MIN_HELD_OUT,
    BestEpochRule,
    follow_neighbours,
    held_out_groups,
    held_out_indices,
    neighbour_table,
    significantly_worse,
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
    # the kept epoch is the lowest-loss one or a later one not significantly worse
    assert result.best_epoch >= int(np.argmin(result.validation_loss)) + 1
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


# ---------------------------------------------------------------- best-epoch rule


def test_held_out_groups_cover_every_pattern_once():
    held = np.arange(3, 203, 2)
    groups = held_out_groups(held, max_groups=8)
    assert len(groups) == 8 and np.array_equal(np.concatenate(groups), held)
    assert max(g.size for g in groups) - min(g.size for g in groups) <= 1
    assert [g.tolist() for g in held_out_groups(np.array([4, 9, 11]))] == [[4], [9], [11]]
    assert held_out_groups(np.zeros(0, dtype=np.int64)) == []


def test_significantly_worse_is_a_one_sided_paired_t_test():
    rng = np.random.default_rng(0)
    reference = rng.normal(100.0, 5.0, 50)  # patterns differ a lot; the test is paired
    noise = rng.normal(0.0, 1.0, 50)
    assert not significantly_worse(reference + noise - noise.mean(), reference, 0.95)
    assert significantly_worse(reference + noise - noise.mean() + 1.0, reference, 0.95)
    # a shift of 0.2 standard deviations with 50 groups: t ~ 1.4 < 1.68
    assert not significantly_worse(reference + noise - noise.mean() + 0.2, reference, 0.95)
    # a lower mean is never worse; confidence 0: any higher mean is
    assert not significantly_worse(reference - 0.5, reference, 0.95)
    assert significantly_worse(reference + noise - noise.mean() + 1e-6, reference, 0.0)
    with pytest.raises(ValueError, match="losses"):
        significantly_worse(reference[:5], reference, 0.95)


def test_best_epoch_rule_keeps_the_latest_epoch_within_the_noise_of_the_minimum():
    rng = np.random.default_rng(1)
    base = rng.normal(50.0, 3.0, 40)
    rule = BestEpochRule(confidence=0.95)
    kept = []
    # epochs 1-3 fall, 4-6 wander within the noise, 7-8 rise systematically
    offsets = [3.0, 1.0, 0.0, 0.02, -0.01, 0.03, 0.5, 1.0]
    for epoch, off in enumerate(offsets, start=1):
        losses = base + off + rng.normal(0.0, 0.3, 40)
        if rule.consider(epoch, losses, float(losses.mean()), settled=True):
            kept.append(epoch)
    assert kept[:2] == [1, 2] and kept[-1] == 6 and rule.reference_epoch in (3, 4, 5, 6)
    strict = BestEpochRule(confidence=0.0)
    values = []
    for epoch, off in enumerate(offsets, start=1):
        losses = base + off
        values.append(losses.mean())
        strict.consider(epoch, losses, float(losses.mean()), settled=True)
    assert strict.reference_epoch == int(np.argmin(values)) + 1 == 5


def test_best_epoch_rule_waits_until_settled_and_round_trips():
    rule = BestEpochRule()
    ones = np.ones(6)
    assert rule.consider(1, ones * 5, 5.0, settled=False)  # the first epoch is always kept
    assert not rule.consider(2, ones * 4, 4.0, settled=False)
    assert not rule.consider(3, ones * np.nan, float("nan"), settled=True)
    assert rule.consider(4, ones * 3, 3.0, settled=True) and rule.reference_epoch == 4
    copy = BestEpochRule()
    copy.restore(rule.to_info())
    assert copy.reference_epoch == 4 and np.array_equal(copy.reference_losses, ones * 3)
    old = BestEpochRule()  # a best folder written before the rule kept its reference
    old.restore({"reference_epoch": 4, "reference_value": 3.0})
    assert not old.consider(5, ones * 3.1, 3.1, settled=True)
    assert old.consider(6, ones * 2.9, 2.9, settled=True)


def simulated_scores(dose: float, epochs: int, **settings):
    propagator = REGISTRY.create("propagator", {"type": "multislice", "slice_thickness_A": 2.0})
    sim = simulate_dataset(propagator, window=24, scan_shape=(12, 12), step_A=0.6, seed=1,
                           dose_per_pattern=dose)
    truth = None
    scores = []

    def score(report):
        nonlocal truth
        if truth is None:
            truth = resample_to_grid(sim.phase, sim.grid, rec.grid)
        obj = rec.device.to_host(rec.params["object"])
        mask = scanned_region_mask(rec.grid, sim.positions_A)
        scores.append(phase_correlation(np.angle(obj[:, 0]).sum(axis=0), truth, mask=mask))

    rec = Reconstruction(sim.patterns, sim.experiment, positions_A=sim.positions_A,
                         device=Device("cpu", "double"), progress=False, seed=5, **settings)
    return rec.run(epochs, callbacks=[score]), scores


def test_converged_run_keeps_a_later_epoch_than_the_lowest_validation_loss():
    # high dose: the validation loss wanders within its noise after epoch ~10; the latest
    # epoch not significantly worse is kept, and its phase is at least as good.
    # measured (1e5 counts per pattern, 30 epochs): lowest loss at epoch 11 (0.9931),
    # kept epoch 30 (0.9941), best phase 0.9952
    result, scores = simulated_scores(1e5, 30)
    lowest = int(np.argmin(result.validation_loss)) + 1
    assert result.best_epoch > lowest
    assert scores[result.best_epoch - 1] >= scores[lowest - 1]
    strict, strict_scores = simulated_scores(1e5, 30, keep_best_confidence=0.0)
    assert strict.best_epoch == lowest
    assert np.allclose(strict_scores, scores)


def test_resumed_run_keeps_the_rule_reference_and_decides_the_same(tmp_path):
    # high dose: the lowest held-out loss comes early (epoch 11) and later epochs are kept,
    # so the resumed run needs the reference losses written with <dir>/best
    propagator = REGISTRY.create("propagator", {"type": "multislice", "slice_thickness_A": 2.0})
    sim = simulate_dataset(propagator, window=24, scan_shape=(12, 12), step_A=0.6, seed=1,
                           dose_per_pattern=1e5)

    def build(folder):
        return Reconstruction(sim.patterns, sim.experiment, positions_A=sim.positions_A,
                              device=Device("cpu", "double"), progress=False, figures=False,
                              result_file=False, output_dir=folder, seed=5, save_every=7)

    whole = build(tmp_path / "whole").run(21)
    build(tmp_path / "split").run(14)
    second = build(tmp_path / "split")
    assert second.load_checkpoint() == 14
    reference = second._best_rule.reference_epoch
    assert reference is not None and reference <= 14 and second._best_rule.reference_losses.size
    resumed = second.run(7)
    assert whole.best_epoch > int(np.argmin(whole.validation_loss)) + 1
    assert resumed.best_epoch == whole.best_epoch
    assert np.allclose(resumed.object, whole.object)


def test_early_stop_ends_the_run_after_enough_worse_epochs_and_resumes_alike(tmp_path):
    """``early_stop``: the run ends once that many epochs in a row were not kept; the result is
    the kept epoch; a run interrupted before the stop and resumed stops at the same epoch."""
    sim = simulate_low_dose()

    def build(folder, **extra):
        return Reconstruction(sim.patterns, sim.experiment, positions_A=sim.positions_A,
                              loss=REGISTRY.create("loss", {"type": "ml"}),
                              device=Device("cpu", "double"), progress=False, figures=False,
                              result_file=False, output_dir=folder, seed=5, **extra)

    plain = build(tmp_path / "plain").run(30)
    # measured on this data: the kept epoch is 7; every later epoch is worse
    kept = plain.best_epoch
    assert kept + 3 < 30
    stopped = build(tmp_path / "stop", early_stop=3).run(30)
    assert len(stopped.loss) == kept + 3 < 30
    assert stopped.best_epoch == kept
    np.testing.assert_array_equal(stopped.object, plain_object_at(tmp_path / "plain", kept))
    # interrupted two epochs before the stop, resumed with the rest: the same stop
    first = build(tmp_path / "resume", early_stop=3)
    first.run(kept + 1)
    ran = []
    second = build(tmp_path / "resume", early_stop=3)
    assert second.load_checkpoint() == kept + 1
    resumed = second.run(30, callbacks=[ran.append])
    assert [r.epoch for r in ran] == [kept + 2, kept + 3]  # resumed, not restarted
    assert len(resumed.loss) == kept + 3
    np.testing.assert_array_equal(resumed.object, stopped.object)
    with pytest.raises(ValueError, match="early_stop"):
        build(None, early_stop=0)


def plain_object_at(folder, epoch):
    """The object of the best-validated epoch written to ``folder``/best."""
    arrays, saved = load_state(folder / "best")
    assert saved == epoch
    return arrays["object"]
