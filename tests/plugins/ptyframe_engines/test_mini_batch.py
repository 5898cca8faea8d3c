"""The mini-batch engine: reconstructs (single slice, multislice, probe and position
schedules), resumes bit for bit in memory and from a checkpoint, draws a seeded batch order,
and refuses bad parameters by name."""

from __future__ import annotations

import numpy as np
import pytest
from ptyframe_engines.mini_batch import MiniBatch, MiniBatchState

from ptyframe import Device, FromEpoch, Reconstruction, load_registry
from ptyframe.testing.simulate import simulate_dataset
from ptyframe.testing.validation import phase_correlation, resample_to_grid, scanned_region_mask

REGISTRY = load_registry()


def _simulate(n_slices: int = 1, **kwargs):
    prop = REGISTRY.create("propagator", {"type": "multislice", "slice_thickness_A": 2.0})
    return prop, simulate_dataset(prop, window=24, scan_shape=(10, 10), step_A=0.6,
                                  n_slices=n_slices, seed=0, **kwargs)


@pytest.fixture(scope="module")
def single():
    return _simulate()


def _build(prop, sim, engine: dict | None = None, *, n_slices: int = 1, precision="double",
           **kwargs) -> Reconstruction:
    engine = REGISTRY.create("engine", engine or {"type": "mini_batch", "batch_size": 20})
    kwargs.setdefault("refine_probe", FromEpoch(5))
    kwargs.setdefault("positions_A", sim.positions_A)
    return Reconstruction(sim.patterns * 1e4, sim.experiment, propagator=prop, engine=engine,
                          n_slices=n_slices, device=Device("cpu", precision), progress=False,
                          **kwargs)


def _score(sim, result) -> float:
    truth = resample_to_grid(sim.phase, sim.grid, result.grid)
    return phase_correlation(result.phase, truth,
                             mask=scanned_region_mask(result.grid, sim.positions_A))


def test_mini_batch_passes_get_further_than_full_batch_epochs(single):
    prop, sim = single
    mini = _build(prop, sim, {"type": "mini_batch", "batch_size": 20, "switch_epoch": 2})
    full = _build(prop, sim, {"type": "full_batch"})
    r_mini, r_full = mini.run(2), full.run(2)
    # measured: 0.972 after two passes of 4 mini-batches (80 training patterns, 20 held
    # out); the full-batch engine 0.847 after two epochs; both 0.998 after 12
    assert _score(sim, r_mini) > 0.96
    assert _score(sim, r_mini) > _score(sim, r_full) + 0.1
    assert r_mini.loss[-1] < 0.2 * r_mini.loss[0]
    # then the full-batch epochs take over and keep improving
    r_mini = mini.run(10)
    assert _score(sim, r_mini) > 0.995
    assert r_mini.loss[-1] < r_mini.loss[1]


def test_batches_are_seeded_disjoint_and_cover_the_epoch(single):
    prop, sim = single
    rec = _build(prop, sim)
    rec.initialize()
    engine = MiniBatch(batch_size=30, seed=4)
    b0 = engine.batches(rec, 0)
    training = rec.indices(0)  # the held-out validation patterns are left out
    assert training is not None and training.size == 95
    assert [b.size for b in b0] == [24, 24, 24, 23]  # ceil(95 / 30) near-equal batches
    assert np.array_equal(np.sort(np.concatenate(b0)), np.sort(training))
    again = engine.batches(rec, 0)
    assert all(np.array_equal(a, b) for a, b in zip(b0, again, strict=True))
    other_epoch = engine.batches(rec, 1)
    other_seed = MiniBatch(batch_size=30, seed=5).batches(rec, 0)
    assert not all(np.array_equal(a, b) for a, b in zip(b0, other_epoch, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(b0, other_seed, strict=True))


def test_run_three_plus_three_equals_six_bit_for_bit(single):
    prop, sim = single
    settings = dict(engine={"type": "mini_batch", "batch_size": 20, "switch_epoch": 4},
                    refine_probe=FromEpoch(2), precision="single")
    whole = _build(prop, sim, **settings)
    r6 = whole.run(6)
    split = _build(prop, sim, **settings)
    split.run(3)
    r33 = split.run(3)
    assert np.array_equal(r6.object, r33.object)
    assert np.array_equal(r6.probe, r33.probe)
    assert r6.loss == r33.loss


def test_checkpoint_resume_is_bit_identical(single, tmp_path):
    prop, sim = single
    settings = dict(engine={"type": "mini_batch", "batch_size": 20, "switch_epoch": 3},
                    refine_probe=FromEpoch(1), precision="single")
    whole = _build(prop, sim, **settings).run(6)
    first = _build(prop, sim, output_dir=tmp_path, **settings)
    first.run(2)  # stops inside the mini-batch phase, with a measured step size
    assert isinstance(first._engine_state, MiniBatchState)
    assert first._engine_state.alpha is not None
    resumed = _build(prop, sim, output_dir=tmp_path, **settings)
    assert resumed.load_checkpoint(tmp_path) == 2
    assert resumed._engine_state.alpha == first._engine_state.alpha
    final = resumed.run(4)
    assert np.array_equal(final.object, whole.object)
    assert np.array_equal(final.probe, whole.probe)
    assert final.loss == whole.loss


def test_multislice_with_probe_and_position_schedules():
    prop, sim = _simulate(n_slices=2, position_jitter_A=0.05)
    rec = _build(prop, sim, {"type": "mini_batch", "batch_size": 25, "switch_epoch": 4},
                 n_slices=2, refine_probe=FromEpoch(1), refine_positions=FromEpoch(3))
    result = rec.run(8)
    # epochs 0-2 are mini-batch passes (object, then object + probe); from epoch 3 the
    # positions are refined too, so the full-batch engine runs although switch_epoch is 4
    engine = rec.engine
    assert [engine.mini_batch_epoch(rec, e) for e in range(5)] == [True, True, True, False,
                                                                   False]
    assert result.object.shape[0] == 2
    assert np.isfinite(result.loss).all()
    assert result.loss[-1] < 0.2 * result.loss[0]
    # measured 0.984 (the full-batch engine: 0.950 with the same schedules)
    assert _score(sim, result) > 0.97


@pytest.mark.parametrize("field, value, expected", [
    ("batch_size", 0, "an integer >= 1"),
    ("switch_epoch", -1, "an integer >= 0"),
    ("step", 0.0, "a positive finite number"),
    ("floor", 0.0, "(0"),
    ("floor", 1.5, "(0"),
    ("seed", 1.5, "an integer >= 0"),
])
def test_bad_parameters_are_refused_by_name(field, value, expected):
    with pytest.raises(ValueError, match=field) as info:
        REGISTRY.create("engine", {"type": "mini_batch", field: value})
    assert expected in str(info.value)
