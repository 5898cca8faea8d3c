"""Compute device: one object hides NumPy/SciPy (CPU) versus CuPy (GPU).

Components never import cupy; they receive a :class:`Device` and use ``device.xp`` (the array
namespace), ``device.fft2``/``device.ifft2`` and ``device.scatter_add``. On CPU the FFTs come
from a provider of :mod:`ptyframe.core.fft` (scipy.fft by default, planned FFTW on request).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ptyframe.core.fft import FFT_PROVIDERS, ModuleFFT, make_fft_provider
from ptyframe.core.fused import FUSED_KERNELS, make_kernels

__all__ = ["Device", "Workspace", "cupy_available"]

_PRECISIONS = {
    "single": (np.float32, np.complex64),
    "double": (np.float64, np.complex128),
}


def cupy_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        cp = importlib.import_module("cupy")
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - any failure means "no usable GPU"
        return False


class Workspace:
    """Named work buffers on one device, reused from call to call.

    ``get(name, shape, dtype)`` returns an uninitialised C-contiguous array viewed on a flat
    buffer that is kept between calls and only reallocated when a larger size (or another
    dtype) is asked for; a smaller batch reuses the prefix of the same memory. Fresh memory is
    expensive on first touch (page faults) and on GPUs (allocator traffic), so hot loops take
    their temporaries from here instead of allocating them per batch.

    The caller owns the lifetime: two live arrays need two names, and an array obtained from
    ``get`` is overwritten by the next ``get`` of the same name.
    """

    def __init__(self, xp: Any, empty: Callable[[tuple[int, ...], Any], Any] | None = None
                 ) -> None:
        self.xp = xp
        self._empty = empty if empty is not None else (lambda shape, dtype: xp.empty(
            shape, dtype=dtype))
        self._buffers: dict[str, Any] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: Any) -> Any:
        dtype = np.dtype(dtype)
        size = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.size < size:
            buf = self._empty((size,), dtype)
            self._buffers[name] = buf
        return buf[:size].reshape(shape)

    @property
    def nbytes(self) -> int:
        return int(sum(b.nbytes for b in self._buffers.values()))

    def clear(self) -> None:
        self._buffers.clear()


class Device:
    """Array backend and FFT engine.

    Parameters
    ----------
    kind:
        ``"cpu"``, ``"gpu"`` or ``"auto"`` (GPU when CuPy and a CUDA device exist).
    precision:
        ``"single"`` (float32/complex64) or ``"double"`` (float64/complex128).
    workers:
        FFT threads on CPU (default: scipy, all cores visible to the process; fftw, the
        fastest count measured per plan).
    gpu_id:
        CUDA device index on GPU.
    fft:
        CPU FFT provider: ``"scipy"`` (default, scipy.fft) or ``"fftw"`` (planned FFTW via
        pyFFTW, the optional ``fftw`` extra; FFTW is GPL-licensed). Ignored on GPU (cuFFT).
    fused:
        Element-wise kernels of the model's hot path (:mod:`ptyframe.core.fused`):
        ``"numpy"`` (default, the reference) or ``"numba"`` (single-pass CPU loops, the
        optional ``numba`` extra). Available as :attr:`kernels`.
    """

    def __init__(
        self,
        kind: str = "auto",
        precision: str = "single",
        workers: int | None = None,
        gpu_id: int = 0,
        fft: str = "scipy",
        fused: str = "numpy",
    ) -> None:
        if kind not in ("cpu", "gpu", "auto"):
            raise ValueError(f"device kind: expected 'cpu', 'gpu' or 'auto', found {kind!r}")
        if precision not in _PRECISIONS:
            raise ValueError(f"precision: expected 'single' or 'double', found {precision!r}")
        if fft not in FFT_PROVIDERS:
            raise ValueError(f"fft: expected one of {list(FFT_PROVIDERS)}, found {fft!r}")
        if fused not in FUSED_KERNELS:
            raise ValueError(f"fused: expected one of {list(FUSED_KERNELS)}, found {fused!r}")
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers: expected a positive integer or None, found {workers!r}")
        if kind == "auto":
            kind = "gpu" if cupy_available() else "cpu"
        if kind == "gpu" and not cupy_available():
            raise RuntimeError(
                "device kind 'gpu' requested but CuPy with a CUDA device is not available; "
                "install ptyframe[gpu] or use kind='cpu'"
            )
        self.kind = kind
        self.precision = precision
        self.real_dtype, self.complex_dtype = _PRECISIONS[precision]
        self.gpu_id = gpu_id
        self.fft = fft
        if kind == "gpu":
            self.xp = importlib.import_module("cupy")
            self._fft = ModuleFFT(importlib.import_module("cupy.fft"), self.xp)
            self._cupyx = importlib.import_module("cupyx")
            self.xp.cuda.Device(gpu_id).use()
            self.workers = workers
        else:
            self.xp = np
            self._fft = make_fft_provider(fft, workers)
            self._cupyx = None
            self.workers = getattr(self._fft, "workers", workers)
        self.fused = fused
        self.kernels = make_kernels(fused, self.xp)

    # ------------------------------------------------------------------ description
    def __repr__(self) -> str:
        extra = (f", workers={self.workers}, fft={self.fft!r}, fused={self.fused!r}"
                 if self.kind == "cpu" else f", gpu_id={self.gpu_id}")
        return f"Device(kind={self.kind!r}, precision={self.precision!r}{extra})"

    def to_config(self) -> dict[str, Any]:
        config = {"kind": self.kind, "precision": self.precision}
        if self.fft != "scipy":
            config["fft"] = self.fft
        if self.fused != "numpy":
            config["fused"] = self.fused
        return config

    # ------------------------------------------------------------------ arrays
    def asarray(self, a: Any, dtype: Any = None) -> Any:
        """Copy a host (or device) array onto this device, optionally casting."""
        return self.xp.asarray(a, dtype=dtype)

    def to_host(self, a: Any) -> np.ndarray:
        """Return a NumPy array (copying from GPU memory when needed)."""
        if self.kind == "gpu" and not isinstance(a, np.ndarray):
            return a.get()
        return np.asarray(a)

    def complex(self, a: Any) -> Any:
        return self.xp.asarray(a, dtype=self.complex_dtype)

    def real(self, a: Any) -> Any:
        return self.xp.asarray(a, dtype=self.real_dtype)

    # ------------------------------------------------------------------ FFTs over the last two axes
    # ``overwrite=True`` lets the FFT work in place: for a C-contiguous array of the device's
    # complex dtype (and, for FFTW, aligned: arrays from ``empty`` and work buffers are) the
    # result is the input's own memory (no allocation). Always use the returned array; the
    # input's content is undefined afterwards.
    def fft2(self, a: Any, norm: str | None = None, overwrite: bool = False) -> Any:
        return self._fft.fft2(a, norm=norm, overwrite=overwrite)

    def ifft2(self, a: Any, norm: str | None = None, overwrite: bool = False) -> Any:
        return self._fft.ifft2(a, norm=norm, overwrite=overwrite)

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        """Uninitialised array on this device, laid out for in-place FFTs (SIMD-aligned for
        FFTW)."""
        return self._fft.empty(tuple(shape), dtype)

    def fftfreq(self, n: int, d: float = 1.0) -> Any:
        return self.xp.fft.fftfreq(n, d).astype(self.real_dtype)

    # ------------------------------------------------------------------ scatter / gather
    def scatter_add(self, target: Any, flat_index: Any, values: Any) -> None:
        """``target.ravel()[flat_index] += values`` with repeated indices accumulated.

        ``target`` must be C-contiguous; ``flat_index`` and ``values`` have the same size.
        """
        flat_target = target.reshape(-1)
        if self.kind == "gpu":
            self._cupyx.scatter_add(flat_target, flat_index.reshape(-1), values.reshape(-1))
            return
        # NumPy >= 1.25 has a fast path for ufunc.at with simple dtypes (about as fast as a
        # single bincount and without float64 copies of the values).
        np.add.at(flat_target, flat_index.reshape(-1), values.reshape(-1))

    #: bytes of one cache-resident chunk for :meth:`chunk_planes` (measured on a 1 MiB-L2
    #: CPU: FFT, kernel product and inverse FFT of 64 x 64 complex64 planes per chunk of 8-16
    #: planes beat whole (768, 64, 64) arrays by 10 %; 64 planes and more lost)
    CHUNK_BYTES = 512 * 1024
    #: arrays smaller than this stay whole (they fit the last-level cache: the far-field loss
    #: of 256 x 64 x 64 complex64, 8 MiB, was 7 % slower chunked; of three times that, 14 %
    #: faster)
    CHUNK_MIN_BYTES = 16 * 1024 * 1024

    #: bytes of one batch's waves (object modes x probe modes x window, one position each) on
    #: CPU for :meth:`batch_limit`: the batch's element-wise passes then run from cache.
    #: Measured (benchmarks/bench_model.py --batch-sizes, 1024 positions, 64 x 64, planned
    #: FFTW + numba, one thread, 2 MiB L2), CPU time against 256 positions: 1 slice, 1 mode
    #: 0.76-0.82 (complex64, 64 positions) and 0.69 (complex128, 32); 4 slices, 3 modes 0.89
    #: (complex64, 21; 64 positions: 1.05) and 0.89 (complex128, 16; 64: 1.15). scipy.fft with
    #: the NumPy kernels: 0.73-0.76 at 16-64 positions
    BATCH_BYTES = 2 * 1024 * 1024
    #: bounds of :meth:`batch_limit` on CPU (Python work per batch; the largest batch before)
    BATCH_MIN, BATCH_MAX = 16, 512
    #: :meth:`batch_limit` on GPU (large batches keep the device busy)
    GPU_BATCH_MAX = 4096

    def batch_limit(self, bytes_per_position: int) -> int:
        """Largest batch (positions) worth running at once: on CPU the batch whose waves,
        ``bytes_per_position`` bytes per position, fill :attr:`BATCH_BYTES` (within
        [:attr:`BATCH_MIN`, :attr:`BATCH_MAX`]); on GPU :attr:`GPU_BATCH_MAX`. Memory limits
        are the caller's."""
        if bytes_per_position < 1:
            raise ValueError(f"bytes_per_position: expected a positive byte count, found "
                             f"{bytes_per_position!r}")
        if self.kind == "gpu":
            return self.GPU_BATCH_MAX
        return int(min(self.BATCH_MAX, max(self.BATCH_MIN,
                                           self.BATCH_BYTES // int(bytes_per_position))))

    def chunk_planes(self, plane_bytes: int, total_bytes: int | None = None) -> int | None:
        """Planes of ``plane_bytes`` bytes per cache-sized chunk (at least 1) for element-wise
        work fused around the FFTs of an array of ``total_bytes``, or None for whole arrays:
        on GPU, with scipy.fft, whose per-call cost made chunked multislice steps slower
        (measured: 4 slices, 3 modes, 1024 positions, 8 % slower; planned FFTW 7 % faster),
        and for arrays under :attr:`CHUNK_MIN_BYTES`."""
        if self.kind == "gpu" or self.fft != "fftw":
            return None
        if total_bytes is not None and total_bytes < self.CHUNK_MIN_BYTES:
            return None
        return max(1, self.CHUNK_BYTES // max(1, int(plane_bytes)))

    def workspace(self) -> Workspace:
        """A fresh set of reusable work buffers on this device (see :class:`Workspace`)."""
        return Workspace(self.xp, self.empty)

    def gather_windows(self, planes: Any, corners: Any, out: Any) -> Any:
        """``out[p, b] = planes[p, y_b:y_b + ny, x_b:x_b + nx]`` for integer corners (y_b, x_b).

        ``planes``: (P, Y, X); ``corners``: (B, 2) integers; ``out``: (P, B, ny, nx), written
        in place and returned. Windows must lie inside the planes (not checked).
        """
        if self.kind == "gpu":
            flat = self._window_flat_index(corners, planes.shape, out.shape[-2:])
            self.xp.take(planes.reshape(planes.shape[0], -1), flat, axis=1, out=out)
            return out
        # CPU: slice copies (reference) or one numba loop; no (B, ny, nx) index array to
        # build and page in.
        return self.kernels.gather_windows(planes, corners, out)

    def scatter_add_windows(self, target: Any, corners: Any, values: Any) -> None:
        """Adjoint of :meth:`gather_windows`: ``target[p, window_b] += values[p, b]``,
        overlapping windows accumulated. ``target``: (P, Y, X) C-contiguous."""
        if self.kind == "gpu":
            flat = self._window_flat_index(corners, target.shape, values.shape[-2:])
            plane = target.shape[-2] * target.shape[-1]
            offsets = (self.xp.arange(target.shape[0]) * plane)[:, None, None, None]
            self.scatter_add(target, offsets + flat[None], values)
            return
        # CPU: sequential adds in window order (exact accumulation order, no index arrays).
        self.kernels.scatter_add_windows(target, corners, values)

    def _window_flat_index(self, corners: Any, plane_shape: tuple[int, ...],
                           window: tuple[int, ...]) -> Any:
        """Flat indices (B, ny, nx) of each window inside one (Y, X) plane."""
        xp = self.xp
        corners = xp.asarray(corners)
        X = plane_shape[-1]
        row = xp.arange(window[0])[:, None]
        col = xp.arange(window[1])[None, :]
        return ((corners[:, 0, None, None] + row) * X + corners[:, 1, None, None] + col)

    # ------------------------------------------------------------------ memory
    def free_memory_bytes(self) -> int:
        """Free memory available for work arrays, in bytes (GPU: device memory)."""
        if self.kind == "gpu":
            free, _total = self.xp.cuda.runtime.memGetInfo()
            return int(free + self.xp.get_default_memory_pool().free_bytes())
        try:
            with open("/proc/meminfo") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 4 * 1024**3

    def release_cached_memory(self) -> None:
        if self.kind == "gpu":
            self.xp.get_default_memory_pool().free_all_blocks()

    def synchronize(self) -> None:
        if self.kind == "gpu":
            self.xp.cuda.Stream.null.synchronize()
