"""Communicators: how the ranks of one data-parallel reconstruction sum what they computed.

A reconstruction split over ``size`` ranks gives each rank a contiguous, balanced range of
the measurements (:meth:`Communicator.owned_range`). Every rank evaluates loss and gradients
for its own measurements on a full copy of the parameters; :meth:`Communicator.sum_parts`
sums those partial results over the ranks, so that every rank holds the same total and takes
the same optimizer step.

Two reduction orders:

* default: each rank sums its measurements in place, then one all-reduce sums the ranks
  (the result depends on the number of ranks through floating-point summation order only);
* ``deterministic``: the measurements are cut into fixed chunks of ``chunk`` measurements
  (independent of the number of ranks), each chunk's partial result is computed from zero,
  and the partials are summed left to right in chunk order on rank 0 and broadcast. A
  single process with ``deterministic`` does the same fold, so the result is bit for bit
  independent of the number of ranks. Costs one packed gradient per owned chunk on each
  rank and a gather instead of an all-reduce.

Backends: :class:`SingleProcess` (no-op, the default), :class:`MPICommunicator` (mpi4py;
device arrays are staged through host memory), :class:`NCCLCommunicator`
(``cupyx.distributed``, GPUs of one node; NCCL has no complex type, so complex arrays travel
as float pairs, which the packing below does for every backend).
"""

from __future__ import annotations

import abc
import contextlib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["Communicator", "SingleProcess", "MPICommunicator", "NCCLCommunicator",
           "Part", "make_communicator", "balanced_range", "pack", "unpack", "fold",
           "COMMUNICATOR_BACKENDS", "mpi_world_size", "launcher_rank"]

#: one partial result: (loss value, {block: gradient array})
Part = tuple[float, dict[str, Any]]

#: environment variables that MPI launchers set to the number of ranks
_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS",
                   "SLURM_NTASKS")

COMMUNICATOR_BACKENDS = ("auto", "single", "mpi", "nccl")


def mpi_world_size() -> int:
    """Number of ranks an MPI launcher started this process among (1 when not launched by
    one), from the launcher's environment variables (nothing is imported)."""
    for name in _SIZE_VARIABLES[:3]:
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return 1


def balanced_range(n: int, size: int, rank: int, chunk: int = 1) -> tuple[int, int]:
    """[start, stop) of the measurements owned by ``rank`` of ``size``: contiguous, and
    balanced in whole chunks of ``chunk`` measurements (the first ``n_chunks % size`` ranks
    get one chunk more)."""
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"rank: expected 0 <= rank < size={size}, found {rank}")
    chunk = max(1, int(chunk))
    n_chunks = -(-n // chunk)
    base, extra = divmod(n_chunks, size)
    first = rank * base + min(rank, extra)
    count = base + (1 if rank < extra else 0)
    return min(n, first * chunk), min(n, (first + count) * chunk)


def pack(value: float, grads: Mapping[str, Any], names: Sequence[str], xp: Any
         ) -> tuple[Any, np.ndarray]:
    """Gradients -> one flat real buffer (complex arrays as float pairs) in ``names`` order,
    and the loss as a float64 host array of one element."""
    flats = []
    for name in names:
        g = xp.ascontiguousarray(grads[name])
        if g.dtype.kind == "c":
            g = g.view(g.real.dtype)
        flats.append(g.reshape(-1))
    dtype = np.result_type(*[f.dtype for f in flats]) if flats else np.float64
    buffer = xp.concatenate([f.astype(dtype, copy=False) for f in flats]) if flats else \
        xp.zeros(0, dtype=dtype)
    return buffer, np.array([value], dtype=np.float64)


def unpack(buffer: Any, value: np.ndarray, like: Mapping[str, Any], names: Sequence[str]
           ) -> Part:
    """Inverse of :func:`pack`: arrays shaped and typed as ``like``."""
    out: dict[str, Any] = {}
    start = 0
    for name in names:
        ref = like[name]
        real = ref.real.dtype if ref.dtype.kind == "c" else ref.dtype
        count = int(ref.size) * (2 if ref.dtype.kind == "c" else 1)
        flat = buffer[start:start + count].astype(real, copy=True)
        start += count
        out[name] = flat.view(ref.dtype).reshape(ref.shape) if ref.dtype.kind == "c" else \
            flat.reshape(ref.shape)
    return float(value[0]), out


def fold(buffers: Sequence[Any], values: Sequence[float]) -> tuple[Any, float]:
    """Left fold ((p0 + p1) + p2) + ... of packed partials: the one summation order of the
    deterministic reduction, on one rank or many."""
    total = buffers[0].copy()
    value = float(values[0])
    for b, v in zip(buffers[1:], values[1:], strict=True):
        total += b
        value += float(v)
    return total, value


class Communicator(abc.ABC):
    """Sums partial results over the ranks of one reconstruction.

    ``rank``/``size``: this process and the number of processes; ``deterministic`` and
    ``chunk`` (measurements per fixed reduction chunk): see the module docstring.
    """

    backend = "abstract"

    def __init__(self, deterministic: bool = False, chunk: int = 64) -> None:
        if not isinstance(deterministic, bool):
            raise ValueError(f"deterministic: expected true or false, found {deterministic!r}")
        if not isinstance(chunk, (int, np.integer)) or isinstance(chunk, bool) or chunk < 1:
            raise ValueError(f"chunk: expected an integer >= 1 (measurements per reduction "
                             f"chunk), found {chunk!r}")
        self.deterministic = deterministic
        self.chunk = int(chunk)
        self.bytes_reduced = 0  # payload bytes this rank contributed to reductions so far

    rank: int = 0
    size: int = 1

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def owned_range(self, n: int) -> tuple[int, int]:
        """[start, stop) of the measurements this rank reads and evaluates."""
        return balanced_range(n, self.size, self.rank, self.chunk if self.deterministic else 1)

    def chunks(self, start: int, stop: int) -> list[tuple[int, int]]:
        """The fixed reduction chunks (global boundaries) within [start, stop)."""
        edges = list(range(start - start % self.chunk, stop, self.chunk))
        return [(max(a, start), min(a + self.chunk, stop)) for a in edges]

    def sum_parts(self, parts: Sequence[Part], names: Sequence[str], xp: Any) -> Part:
        """Total over every rank of this rank's ``parts`` (its chunk partials in global
        order when deterministic, else one part). ``names``: the gradient blocks, the same
        on every rank. Every rank returns the same total."""
        if not parts:
            raise ValueError("sum_parts: every rank needs at least one part (an empty range "
                             "contributes a zero part)")
        like = parts[0][1]
        packed = [pack(v, g, names, xp) for v, g in parts]
        buffers, values = [p[0] for p in packed], [float(p[1][0]) for p in packed]
        self.bytes_reduced += int(buffers[0].nbytes) + 8
        if self.deterministic:
            total, value = self._ordered(buffers, values, xp)
        else:
            local, value = fold(buffers, values)
            total, value = self._allreduce(local, value, xp)
        return unpack(total, np.array([value]), like, names)

    @abc.abstractmethod
    def _allreduce(self, buffer: Any, value: float, xp: Any) -> tuple[Any, float]:
        """Elementwise sum of ``buffer`` and of ``value`` over the ranks."""

    @abc.abstractmethod
    def _ordered(self, buffers: Sequence[Any], values: Sequence[float], xp: Any
                 ) -> tuple[Any, float]:
        """Left fold of every rank's buffers in (rank, position) order, broadcast."""

    def sum_host(self, array: np.ndarray) -> np.ndarray:
        """Elementwise sum over the ranks of a host float64 ``array`` (the same shape on every
        rank), returned on the host on every rank; e.g. per-measurement figures each rank
        filled in for its own range (zeros elsewhere), gathered exactly."""
        array = np.ascontiguousarray(array, dtype=np.float64)
        if self.size == 1:
            return array
        total, _ = self._allreduce(array, 0.0, np)
        return np.asarray(total.get() if hasattr(total, "get") else total, dtype=np.float64)

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for on one process)."""
        return None

    def broadcast_flag(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (a decision only rank 0 can take, e.g. whether
        the output folder holds this run)."""
        if self.size == 1:
            return bool(flag)
        _, total = self._allreduce(np.zeros(1), 1.0 if (flag and self.is_root) else 0.0, np)
        return total > 0.5

    def announce(self, text: str) -> None:
        """Rank 0 prints every rank's ``text`` to stderr, one line per rank (nothing on one
        process): the roster that maps a launcher's report of a killed process to its
        rank."""
        return None

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Stop every rank when this one fails: print the error naming the rank, then abort
        the job (a no-op on one process)."""
        yield

    def to_config(self) -> dict[str, Any]:
        return {"backend": self.backend, "deterministic": self.deterministic,
                "chunk": self.chunk}


class SingleProcess(Communicator):
    """One process: the sums are the local values (the default)."""

    backend = "single"

    def _allreduce(self, buffer: Any, value: float, xp: Any) -> tuple[Any, float]:
        return buffer, value

    def _ordered(self, buffers: Sequence[Any], values: Sequence[float], xp: Any
                 ) -> tuple[Any, float]:
        return fold(buffers, values)


class MPICommunicator(Communicator):
    """MPI through mpi4py (``pip install ptyframe[mpi]``). GPU arrays are staged through
    host memory unless the MPI build is CUDA-aware (``cuda_aware``: None asks mpi4py)."""

    backend = "mpi"

    def __init__(self, deterministic: bool = False, chunk: int = 64, comm: Any = None,
                 cuda_aware: bool | None = None) -> None:
        super().__init__(deterministic, chunk)
        try:
            from mpi4py import MPI
        except ImportError as exc:
            raise ValueError("communicator 'mpi': needs mpi4py and an MPI library (pip "
                             "install 'ptyframe[mpi]'), found none") from exc
        self._MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.size = int(self.comm.Get_rank()), int(self.comm.Get_size())
        if cuda_aware is None:
            cuda_aware = bool(getattr(MPI, "Query_cuda_support", lambda: False)())
        self.cuda_aware = cuda_aware

    @property
    def local_rank(self) -> int:
        """Rank among the processes of this node (which GPU to use)."""
        return int(self.comm.Split_type(self._MPI.COMM_TYPE_SHARED).Get_rank())

    def _host(self, buffer: Any) -> np.ndarray:
        if isinstance(buffer, np.ndarray) or self.cuda_aware:
            return buffer
        return buffer.get()

    def _allreduce(self, buffer: Any, value: float, xp: Any) -> tuple[Any, float]:
        send = self._host(buffer)
        recv = (xp if self.cuda_aware else np).empty_like(send)
        self.comm.Allreduce(send, recv, op=self._MPI.SUM)
        total = self.comm.allreduce(float(value), op=self._MPI.SUM)
        return xp.asarray(recv), float(total)

    def _ordered(self, buffers: Sequence[Any], values: Sequence[float], xp: Any
                 ) -> tuple[Any, float]:
        hosts = [np.asarray(self._host(b)) for b in buffers]
        local = np.stack(hosts) if hosts else np.zeros((0, 0))
        counts = self.comm.gather(local.size, root=0)
        all_values = self.comm.gather(list(values), root=0)
        gathered = None
        if self.is_root:
            gathered = np.empty(sum(counts), dtype=local.dtype)
            self.comm.Gatherv(local.reshape(-1), (gathered, counts), root=0)
            rows = gathered.reshape(-1, hosts[0].size)
            flat_values = [v for vs in all_values for v in vs]
            total, value = fold(list(rows), flat_values)
        else:
            self.comm.Gatherv(local.reshape(-1), None, root=0)
            total, value = np.empty_like(hosts[0]), 0.0
        self.comm.Bcast(total, root=0)
        value = self.comm.bcast(value, root=0)
        return xp.asarray(total), float(value)

    def barrier(self) -> None:
        self.comm.Barrier()

    def announce(self, text: str) -> None:
        import socket

        line = f"ptyframe: rank {self.rank} of {self.size}: pid {os.getpid()} on " \
               f"{socket.gethostname()}, {text}"
        lines = self.comm.gather(line, root=0)
        if self.is_root:
            print("\n".join(lines), file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        try:
            yield
        except BaseException as exc:
            if self.size == 1:
                raise
            print(f"ptyframe: rank {self.rank} of {self.size} failed: "
                  f"{type(exc).__name__}: {exc}; stopping every rank", file=sys.stderr,
                  flush=True)
            self.comm.Abort(1)
            raise


class NCCLCommunicator(Communicator):
    """NCCL through ``cupyx.distributed`` for the GPUs of one node (one process per GPU).

    ``rank``/``size`` default to the MPI launcher's environment; ``host``/``port``: the
    rendezvous store of rank 0. Complex arrays travel as float pairs (done by :func:`pack`).
    """

    backend = "nccl"

    def __init__(self, deterministic: bool = False, chunk: int = 64, rank: int | None = None,
                 size: int | None = None, host: str = "127.0.0.1", port: int = 13333) -> None:
        super().__init__(deterministic, chunk)
        try:
            import cupy
            from cupyx import distributed
        except ImportError as exc:
            raise ValueError("communicator 'nccl': needs CuPy with NCCL (pip install "
                             "'ptyframe[gpu]'), found none") from exc
        self.size = mpi_world_size() if size is None else int(size)
        self.rank = launcher_rank() if rank is None else int(rank)
        self._cupy = cupy
        cupy.cuda.Device(self.rank % cupy.cuda.runtime.getDeviceCount()).use()
        self._nccl = distributed.init_process_group(self.size, self.rank, backend="nccl",
                                                    host=host, port=port)

    def _allreduce(self, buffer: Any, value: float, xp: Any) -> tuple[Any, float]:
        cp = self._cupy
        send = cp.asarray(buffer)
        recv = cp.empty_like(send)
        self._nccl.all_reduce(send, recv, "sum")
        scalar = cp.asarray([value], dtype=cp.float64)
        total = cp.empty_like(scalar)
        self._nccl.all_reduce(scalar, total, "sum")
        return recv, float(total.get()[0])

    def _ordered(self, buffers: Sequence[Any], values: Sequence[float], xp: Any
                 ) -> tuple[Any, float]:
        cp = self._cupy
        local = cp.stack([cp.asarray(b) for b in buffers])
        counts = cp.asarray([local.shape[0]], dtype=cp.int64)
        all_counts = cp.empty(self.size, dtype=cp.int64)
        self._nccl.all_gather(counts, all_counts, 1)
        most = int(all_counts.max())
        padded = cp.zeros((most, local.shape[1]), dtype=local.dtype)
        padded[:local.shape[0]] = local
        vals = cp.zeros(most, dtype=cp.float64)
        vals[:len(values)] = cp.asarray(list(values), dtype=cp.float64)
        every = cp.empty((self.size, most, local.shape[1]), dtype=local.dtype)
        every_vals = cp.empty((self.size, most), dtype=cp.float64)
        self._nccl.all_gather(padded, every, padded.size)
        self._nccl.all_gather(vals, every_vals, most)
        host_counts = all_counts.get()
        rows = [every[r, i] for r in range(self.size) for i in range(int(host_counts[r]))]
        host_vals = every_vals.get()
        flat = [float(host_vals[r, i]) for r in range(self.size)
                for i in range(int(host_counts[r]))]
        return fold(rows, flat)

    def barrier(self) -> None:
        self._nccl.barrier()


def launcher_rank() -> int:
    """Rank the MPI launcher gave this process (0 when not launched by one)."""
    for name in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"):
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return 0


def make_communicator(backend: str = "auto", deterministic: bool = False, chunk: int = 64,
                      **options: Any) -> Communicator:
    """A communicator by name: ``auto`` (MPI when an MPI launcher started more than one
    rank, else a single process), ``single``, ``mpi``, ``nccl``."""
    if backend not in COMMUNICATOR_BACKENDS:
        raise ValueError(f"parallel backend: expected one of {list(COMMUNICATOR_BACKENDS)}, "
                         f"found {backend!r}")
    if backend == "auto":
        backend = "mpi" if mpi_world_size() > 1 else "single"
    if backend == "single":
        return SingleProcess(deterministic, chunk)
    if backend == "mpi":
        return MPICommunicator(deterministic, chunk, **options)
    return NCCLCommunicator(deterministic, chunk, **options)
