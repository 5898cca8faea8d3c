"""Patterns streamed from disk per batch (``load_one_by_one``, :class:`PatternStream`): the
same loss and gradients as data held in memory, a bounded number of batches in flight, and
clear errors."""

from __future__ import annotations

import threading

import h5py
import numpy as np
import pytest

from ptyframe import Device, Reconstruction, load_registry
from ptyframe.io.data import DataError, Dataset
from ptyframe.io.stream import PatternStream
from ptyframe.testing.simulate import simulate_dataset

REGISTRY = load_registry()
SCAN = (9, 7)
N = SCAN[0] * SCAN[1]
BLOCKS = ("object", "probe", "positions")


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory):
    prop = REGISTRY.create("propagator", {"type": "multislice", "slice_thickness_A": 2.0})
    sim = simulate_dataset(prop, window=16, scan_shape=SCAN, step_A=0.6, seed=5)
    path = tmp_path_factory.mktemp("stream") / "scan.h5"
    counts = np.round(1e4 * sim.patterns).astype(np.uint16).reshape(*SCAN, 16, 16)
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=counts, chunks=(1, SCAN[1], 16, 16))
    return sim, path


def _evaluate(sim, path, **reading):
    dataset = Dataset.from_file(path)
    rec = Reconstruction(dataset, sim.experiment, positions_A=sim.positions_A,
                         device=Device("cpu", "double"), progress=False, batch_size=10,
                         n_probe_modes=2, **reading)
    rec.initialize()
    return rec, rec.evaluate(rec.params, BLOCKS, indices=np.arange(N)[::-1].copy())


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_streamed_loss_and_gradient_equal_in_memory(scan_file, prefetch):
    sim, path = scan_file
    rec_mem, (loss_mem, grads_mem, _) = _evaluate(sim, path)
    rec, (loss, grads, _) = _evaluate(sim, path, load_one_by_one=True, prefetch=prefetch)
    assert rec.model.measured is None and isinstance(rec.model._reader, PatternStream)
    assert rec_mem.model.measured is not None
    assert loss == pytest.approx(loss_mem, rel=1e-12)
    for b in BLOCKS:
        scale = np.abs(grads_mem[b]).max()
        assert np.abs(grads[b] - grads_mem[b]).max() <= 1e-12 * scale, b


def test_streamed_run_matches_in_memory_run(scan_file):
    sim, path = scan_file
    runs = {}
    for streamed in (False, True):
        rec = Reconstruction(Dataset.from_file(path), sim.experiment,
                             positions_A=sim.positions_A, device=Device("cpu", "double"),
                             progress=False, batch_size=16, load_one_by_one=streamed)
        rec.run(3)
        runs[streamed] = rec.result()
    np.testing.assert_allclose(runs[True].loss, runs[False].loss, rtol=1e-12)
    np.testing.assert_allclose(runs[True].object, runs[False].object, rtol=0, atol=1e-10)


class _CountingDataset(Dataset):
    """A Dataset that records how many batches were read but not yet handed out."""

    def __init__(self, array: np.ndarray) -> None:
        other = Dataset.from_array(array)
        super().__init__(other._source)
        self.lock = threading.Lock()
        self.reads = 0

    def read(self, indices, dtype=np.float32):  # type: ignore[override]
        with self.lock:
            self.reads += 1
        return super().read(indices, dtype)


@pytest.mark.parametrize("prefetch", [0, 1, 2])
def test_stream_keeps_order_and_bounds_batches_in_flight(prefetch):
    data = np.arange(40 * 8 * 8, dtype=np.float32).reshape(40, 8, 8)
    dataset = _CountingDataset(data)
    stream = PatternStream(dataset, transform=lambda rows: rows * 2, prefetch=prefetch)
    batches = [np.arange(i, min(i + 6, 40)) for i in range(0, 40, 6)][::-1]
    seen = []
    for k, rows in enumerate(stream.stream(batches)):
        with dataset.lock:
            # batches read (or being read) beyond the one handed out: at most `prefetch`
            assert dataset.reads - (k + 1) <= prefetch
        seen.append(rows)
    np.testing.assert_array_equal(np.concatenate(seen), 2 * data[np.concatenate(batches)])
    assert dataset.reads == len(batches)


def test_stream_stopped_early_stops_reading():
    data = np.ones((100, 8, 8), dtype=np.float32)
    dataset = _CountingDataset(data)
    stream = PatternStream(dataset, prefetch=2)
    gen = stream.stream([np.array([i]) for i in range(100)])
    next(gen)
    gen.close()
    assert dataset.reads <= 3


def test_stream_errors_name_the_parameter():
    dataset = Dataset.from_array(np.ones((4, 8, 8)))
    with pytest.raises(DataError, match="prefetch: expected an integer >= 0"):
        PatternStream(dataset, prefetch=-1)
    with pytest.raises(DataError, match="dataset: expected a Dataset"):
        PatternStream(np.ones((4, 8, 8)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prefetch"):
        Reconstruction(dataset, _experiment(), prefetch=-2)


def _experiment():
    from ptyframe.core.experiment import Experiment

    return Experiment(voltage_kV=300, convergence_angle_mrad=20,
                      detector_pixel_size_mrad=1.0, scan_step_A=0.5, scan_shape=(2, 2))
