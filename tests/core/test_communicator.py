"""Communicator (one process): ranges, packing of complex arrays as float pairs, the
deterministic fold, and a Reconstruction that evaluates through the communicator."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from ptyframe import load_registry
from ptyframe.apps.config import build_communicator
from ptyframe.core.device import Device
from ptyframe.engine.communicator import (
    SingleProcess,
    balanced_range,
    fold,
    make_communicator,
    pack,
    unpack,
)
from ptyframe.engine.reconstruction import Reconstruction
from ptyframe.testing.simulate import simulate_dataset


@pytest.mark.parametrize("n,size,chunk", [(64, 2, 1), (65, 3, 1), (100, 4, 16), (5, 8, 1),
                                          (64, 2, 16)])
def test_balanced_range_covers_each_measurement_once(n, size, chunk):
    ranges = [balanced_range(n, size, r, chunk) for r in range(size)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    for (a, b), (c, _) in zip(ranges, ranges[1:], strict=False):
        assert b == c and a <= b  # contiguous, in rank order
    counts = [-(-(b - a) // chunk) for a, b in ranges]
    assert max(counts) - min(counts) <= 1  # balanced in whole chunks
    for a, _ in ranges:
        assert a % chunk == 0 or a == n


def test_balanced_range_rejects_a_bad_rank():
    with pytest.raises(ValueError, match="rank"):
        balanced_range(10, 2, 2)


def test_pack_sends_complex_as_float_pairs_and_round_trips():
    rng = np.random.default_rng(0)
    grads = {"object": (rng.normal(size=(1, 1, 5, 6)) + 1j * rng.normal(size=(1, 1, 5, 6))
                        ).astype(np.complex64),
             "positions": rng.normal(size=(7, 2)).astype(np.float32)}
    names = ("object", "positions")
    buffer, value = pack(2.5, grads, names, np)
    assert buffer.dtype == np.float32 and buffer.size == 2 * 30 + 14
    assert buffer[0] == grads["object"].real.flat[0] and buffer[1] == grads["object"].imag.flat[0]
    total, back = unpack(buffer, value, grads, names)
    assert total == 2.5
    for name in names:
        assert back[name].dtype == grads[name].dtype
        np.testing.assert_array_equal(back[name], grads[name])


def test_fold_is_a_left_fold():
    parts = [np.array([1e16]), np.array([1.0]), np.array([-1e16])]
    total, value = fold(parts, [1e16, 1.0, -1e16])
    assert total[0] == (1e16 + 1.0) - 1e16 and value == 0.0


def test_chunks_have_global_boundaries():
    comm = SingleProcess(deterministic=True, chunk=16)
    assert comm.chunks(8, 40) == [(8, 16), (16, 32), (32, 40)]
    assert comm.owned_range(40) == (0, 40)


@pytest.mark.parametrize("section,message", [
    ({"backend": "gloo"}, "backend"), ({"chunk": 0}, "chunk"),
    ({"deterministic": "yes"}, "deterministic"), ({"ranks": 2}, "unknown keys")])
def test_bad_parallel_settings_name_the_setting(section, message):
    with pytest.raises(ValueError, match=message):
        build_communicator(section)


def test_auto_is_one_process_without_a_launcher(monkeypatch):
    for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(make_communicator(), SingleProcess)


def _reconstruction(communicator):
    prop = load_registry().create("propagator", {"type": "multislice"})
    sim = simulate_dataset(prop, window=16, scan_shape=(6, 6), step_A=0.8,
                           dose_per_pattern=1e5, seed=2)
    return Reconstruction(sim.patterns, sim.experiment, device=Device("cpu", "double"),
                          communicator=communicator, batch_size=8, progress=False,
                          refine_probe=True, refine_positions=True)


def test_deterministic_chunked_evaluation_matches_the_plain_sum():
    plain = _reconstruction(None)
    chunked = _reconstruction(SingleProcess(deterministic=True, chunk=8))
    blocks = ("object", "probe", "positions")
    v1, g1, _ = plain.evaluate(plain.initialize(), blocks, 0)
    v2, g2, _ = chunked.evaluate(chunked.initialize(), blocks, 0)
    assert v2 == pytest.approx(v1, rel=1e-12)
    for b in blocks:
        np.testing.assert_allclose(g2[b], g1[b], rtol=1e-10, atol=1e-12 * np.abs(g1[b]).max())
    assert chunked.communicator.bytes_reduced > 0
    assert chunked.to_config()["parallel"] == {"deterministic": True, "chunk": 8}


def test_communicator_must_be_a_communicator():
    with pytest.raises(TypeError, match="communicator"):
        _reconstruction("mpi")


def test_chunked_set_up_reads_give_the_same_starting_values():
    """Mean pattern and background estimate read per rank-owned chunk equal the plain ones."""
    plain = _reconstruction(None)
    chunked = _reconstruction(SingleProcess(deterministic=True, chunk=8))
    np.testing.assert_allclose(chunked._distributed_mean_pattern(),
                               plain.dataset.mean_pattern(), rtol=1e-12)
    mean = plain.dataset.mean_pattern()
    assert chunked._background_estimate(mean) == pytest.approx(
        plain._background_estimate(mean), rel=1e-6)


def test_nccl_without_cupy_is_one_clear_error():
    try:
        import cupy  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match=r"nccl.*ptyframe\[gpu\]"):
            make_communicator("nccl")
    else:
        pytest.skip("CuPy is installed: the NCCL backend needs GPUs (benchmarks/gpu check)")


class _HostArray(np.ndarray):
    """A NumPy array with CuPy's ``get`` (the fake GPU array of the NCCL test)."""

    def get(self):
        return np.asarray(self)


class _FakeCupy:
    """The few CuPy calls the NCCL backend makes, on the host."""

    float64, int64 = np.float64, np.int64

    class cuda:  # noqa: N801 - mirrors cupy.cuda
        class runtime:  # noqa: N801
            @staticmethod
            def getDeviceCount():
                return 1

        class Device:
            def __init__(self, index):
                self.index = index

            def use(self):
                return None

    def __getattr__(self, name):
        func = getattr(np, name)

        def wrapped(*args, **kwargs):
            out = func(*args, **kwargs)
            return out.view(_HostArray) if isinstance(out, np.ndarray) else out
        return wrapped


class _FakeNCCL:
    """One-rank NCCL: every collective copies its input (real dtypes only, like NCCL)."""

    def __init__(self):
        self.dtypes = []

    def all_reduce(self, send, recv, op):
        assert op == "sum"
        self.dtypes.append(send.dtype)
        recv[...] = send

    def all_gather(self, send, recv, count):
        self.dtypes.append(send.dtype)
        recv.reshape(-1)[:send.size] = send.reshape(-1)

    def barrier(self):
        return None


def test_nccl_backend_sends_complex_as_float_pairs(monkeypatch):
    """The NCCL code path on the host with a one-rank fake of cupyx.distributed."""
    import types

    from ptyframe.engine.communicator import NCCLCommunicator

    fake = _FakeNCCL()
    distributed = types.SimpleNamespace(init_process_group=lambda *a, **k: fake)
    monkeypatch.setitem(sys.modules, "cupy", _FakeCupy())
    monkeypatch.setitem(sys.modules, "cupyx",
                        types.SimpleNamespace(distributed=distributed))
    monkeypatch.setitem(sys.modules, "cupyx.distributed", distributed)
    rng = np.random.default_rng(1)
    grads = {"object": (rng.normal(size=(2, 3)) + 1j * rng.normal(size=(2, 3))).astype(
        np.complex64), "positions": rng.normal(size=(4, 2)).astype(np.float32)}
    for deterministic in (False, True):
        comm = NCCLCommunicator(deterministic=deterministic, rank=0, size=1)
        parts = [(1.5, grads), (2.0, grads)]
        value, out = comm.sum_parts(parts, ("object", "positions"), np)
        assert value == 3.5
        for name in grads:
            np.testing.assert_allclose(np.asarray(out[name]), 2 * grads[name], rtol=1e-6)
    assert all(np.dtype(d).kind != "c" for d in fake.dtypes)


class _TwoRanks(SingleProcess):
    """Rank 0 of two whose partner holds ``partner``: what an all-reduce would return."""

    size = 2

    def __init__(self, partner: np.ndarray) -> None:
        super().__init__()
        self.partner = partner

    def _allreduce(self, buffer, value, xp):
        return buffer + self.partner, value


def test_pattern_counts_are_read_per_rank_and_exchanged():
    """Each rank sums the counts of its own range only; sum_host exchanges the sums."""
    plain = _reconstruction(None)
    counts = plain._counts()
    n = counts.size
    assert np.allclose(counts, plain.dataset.read(np.arange(n), np.float64).sum(axis=(1, 2)))
    half = n - n // 2  # balanced_range gives rank 0 the first ceil(n / 2)
    # the partner's sums are marked (7 electrons): rank 0 must read its half only and take
    # the other half from the exchange
    partner = np.where(np.arange(n) >= half, 7.0, 0.0)
    two = _reconstruction(_TwoRanks(partner))
    assert two.owned_range() == (0, half)
    np.testing.assert_array_equal(two._counts(), np.where(np.arange(n) >= half, 7.0, counts))
    assert SingleProcess().sum_host(np.arange(3.0)).tolist() == [0.0, 1.0, 2.0]
