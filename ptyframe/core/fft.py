"""CPU FFT providers behind :class:`ptyframe.core.device.Device`: 2-D transforms over the last
two axes with NumPy's conventions (unnormalised forward, 1/N inverse for ``norm=None`` or
``"backward"``; 1/sqrt(N) both ways for ``"ortho"``; 1/N forward for ``"forward"``).

* :class:`ScipyFFT` (default): ``scipy.fft`` (pocketfft), BSD licensed.
* :class:`PlannedFFTW`: planned FFTW transforms through pyFFTW (``pip install ptyframe[fftw]``).
  FFTW is GPL-licensed, so this provider is optional and never chosen implicitly. One plan per
  (shape, dtype, direction, axes), made once with ``FFTW_MEASURE`` and reused; transforms run
  in place whenever the caller allows overwriting and the array is C-contiguous, of the complex
  dtype and SIMD-aligned (work buffers from :meth:`PlannedFFTW.empty` are); FFTW wisdom is kept
  between runs in the user cache directory (see :func:`wisdom_path`); the thread count is chosen
  per plan by timing the candidates, not from the core count.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FFT_PROVIDERS", "ModuleFFT", "PlannedFFTW", "ScipyFFT", "make_fft_provider",
           "pyfftw_available", "wisdom_path"]

#: provider names accepted by :func:`make_fft_provider` (and ``Device(fft=...)``)
FFT_PROVIDERS = ("scipy", "fftw")

_AXES = (-2, -1)
_NORMS = (None, "backward", "ortho", "forward")
_WISDOM_FORMAT = 1


def _check_norm(norm: Any) -> None:
    if norm not in _NORMS:
        raise ValueError(f"norm: expected None, 'backward', 'ortho' or 'forward', found {norm!r}")


def _scale(norm: str | None, n: int, inverse: bool) -> float:
    """Factor applied after an unnormalised transform of ``n`` points (NumPy conventions)."""
    if norm == "ortho":
        return 1.0 / math.sqrt(n)
    if inverse:
        return 1.0 if norm == "forward" else 1.0 / n
    return 1.0 / n if norm == "forward" else 1.0


def pyfftw_available() -> bool:
    """True when pyFFTW imports (the ``fftw`` extra is installed)."""
    try:
        importlib.import_module("pyfftw")
    except ImportError:
        return False
    return True


def wisdom_path() -> Path:
    """Where FFTW wisdom is cached: ``$PTYFRAME_CACHE_DIR``, else ``$XDG_CACHE_HOME/ptyframe``,
    else ``~/.cache/ptyframe``; file ``fftw_wisdom.json``."""
    root = os.environ.get("PTYFRAME_CACHE_DIR")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = str(Path(xdg) / "ptyframe") if xdg else str(Path.home() / ".cache" / "ptyframe")
    return Path(root) / "fftw_wisdom.json"


class ScipyFFT:
    """``scipy.fft`` with a fixed number of worker threads (the default provider)."""

    name = "scipy"

    def __init__(self, workers: int) -> None:
        self.workers = int(workers)
        self._fft = importlib.import_module("scipy.fft")

    def fft2(self, a: Any, norm: str | None = None, overwrite: bool = False) -> Any:
        return self._fft.fft2(a, norm=norm, overwrite_x=overwrite, workers=self.workers)

    def ifft2(self, a: Any, norm: str | None = None, overwrite: bool = False) -> Any:
        return self._fft.ifft2(a, norm=norm, overwrite_x=overwrite, workers=self.workers)

    def empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return np.empty(shape, dtype=dtype)


class ModuleFFT:
    """Any NumPy-like FFT module (e.g. ``cupy.fft`` with its array namespace on GPU) behind
    the provider interface."""

    name = "module"

    def __init__(self, fft_module: Any, xp: Any) -> None:
        self._fft = fft_module
        self.xp = xp

    def fft2(self, a: Any, norm: str | None = None, overwrite: bool = False) -> Any:
        return self._fft.fft2(a, norm=norm, overwrite_x=overwrite)

    def ifft2(self, a: Any, norm: str | None = None, overwrite: bool = False) -> Any:
        return self._fft.ifft2(a, norm=norm, overwrite_x=overwrite)

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        return self.xp.empty(shape, dtype=dtype)


class PlannedFFTW:
    """Planned FFTW transforms (pyFFTW) over the last two axes, NumPy's conventions.

    Parameters
    ----------
    threads:
        FFTW threads per transform; ``None`` times 1, 2, 4, ... up to the cores visible to the
        process when a plan is first made and keeps the fastest (wall time) for that plan.
    wisdom:
        Path of the wisdom cache file (see :func:`wisdom_path`), or ``None`` for no cache. A
        missing, unreadable or corrupt file is ignored (a corrupt one with a warning) and
        replaced when new plans are made; failures to write are ignored.
    planner:
        FFTW planner effort: ``"FFTW_ESTIMATE"``, ``"FFTW_MEASURE"`` (default) or
        ``"FFTW_PATIENT"``.

    Plans keep a reference to the last array they transformed (until the next call of the
    same shape). Results equal NumPy's within floating-point round-off of the dtype.
    """

    name = "fftw"

    def __init__(self, threads: int | None = None, wisdom: Path | str | None = None,
                 planner: str = "FFTW_MEASURE") -> None:
        try:
            self._pyfftw = importlib.import_module("pyfftw")
        except ImportError as exc:
            raise RuntimeError("fft 'fftw': expected pyFFTW to be installed (pip install "
                               "ptyframe[fftw]; FFTW is GPL-licensed), found it missing") from exc
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads: expected a positive integer or None (measure), found "
                             f"{threads!r}")
        if planner not in ("FFTW_ESTIMATE", "FFTW_MEASURE", "FFTW_PATIENT"):
            raise ValueError(f"planner: expected 'FFTW_ESTIMATE', 'FFTW_MEASURE' or "
                             f"'FFTW_PATIENT', found {planner!r}")
        self.threads = threads
        self.planner = planner
        self.alignment = int(self._pyfftw.simd_alignment)
        self.wisdom = Path(wisdom) if wisdom is not None else None
        self._plans: dict[tuple, Any] = {}
        #: threads used by each plan key (shape, dtype, direction, axes): the measured choice
        self.threads_chosen: dict[tuple, int] = {}
        if self.wisdom is not None:
            self._load_wisdom()

    # ------------------------------------------------------------------ buffers
    def empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """Uninitialised array aligned for SIMD transforms (in-place FFTs need no copy)."""
        return self._pyfftw.empty_aligned(shape, dtype=dtype, n=self.alignment)

    def _aligned(self, a: np.ndarray) -> bool:
        return a.ctypes.data % self.alignment == 0

    # ------------------------------------------------------------------ transforms
    def fft2(self, a: Any, norm: str | None = None, overwrite: bool = False) -> Any:
        return self._transform(a, norm, overwrite, inverse=False)

    def ifft2(self, a: Any, norm: str | None = None, overwrite: bool = False) -> Any:
        return self._transform(a, norm, overwrite, inverse=True)

    def _transform(self, a: Any, norm: str | None, overwrite: bool, inverse: bool) -> Any:
        _check_norm(norm)
        a = np.asarray(a)
        dtype = np.result_type(a.dtype, np.complex64)
        if (a.ndim < 2 or a.size == 0
                or dtype not in (np.dtype(np.complex64), np.dtype(np.complex128))):
            fft = importlib.import_module("scipy.fft")
            return (fft.ifft2 if inverse else fft.fft2)(a, norm=norm, overwrite_x=overwrite)
        if (overwrite and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
                and self._aligned(a)):
            b = a
        else:
            b = self.empty(a.shape, dtype)
            np.copyto(b, a)  # dtype is a's result type with complex64: a safe cast
        plan = self._plan(b.shape, dtype, inverse)
        plan.update_arrays(b, b)
        plan.execute()
        scale = _scale(norm, a.shape[-1] * a.shape[-2], inverse)
        if scale != 1.0:
            b *= scale
        return b

    # ------------------------------------------------------------------ plans
    def _plan(self, shape: tuple[int, ...], dtype: np.dtype, inverse: bool) -> Any:
        key = (tuple(shape), dtype.str, "backward" if inverse else "forward", _AXES)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._make_plan(key, shape, dtype, inverse)
            self._plans[key] = plan
            if self.wisdom is not None:
                self._save_wisdom()
        return plan

    def _make_plan(self, key: tuple, shape: tuple[int, ...], dtype: np.dtype,
                   inverse: bool) -> Any:
        """Plan on a scratch buffer (planning overwrites its arrays)."""
        scratch = self.empty(shape, dtype)
        scratch[...] = 0
        direction = "FFTW_BACKWARD" if inverse else "FFTW_FORWARD"

        def make(threads: int) -> Any:
            return self._pyfftw.FFTW(scratch, scratch, axes=_AXES, direction=direction,
                                     flags=(self.planner,), threads=threads)

        if self.threads is not None:
            self.threads_chosen[key] = self.threads
            return make(self.threads)
        best, best_time = None, math.inf
        for threads in _thread_candidates():
            plan = make(threads)
            plan.execute()  # warm-up: first touch, thread start
            elapsed = min(_timed(plan.execute) for _ in range(3))
            if elapsed < best_time:
                best, best_time = plan, elapsed
                self.threads_chosen[key] = threads
        return best

    # ------------------------------------------------------------------ wisdom
    def _load_wisdom(self) -> None:
        assert self.wisdom is not None
        try:
            text = self.wisdom.read_text(encoding="ascii")
        except (OSError, UnicodeError):
            return  # missing or unreadable: start without wisdom
        try:
            data = json.loads(text)
            if data.get("format") != _WISDOM_FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            wisdom = tuple(s.encode("ascii") for s in data["wisdom"])
            if len(wisdom) != 3:
                raise ValueError(f"{len(wisdom)} wisdom strings")
            self._pyfftw.import_wisdom(wisdom)
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeError) as exc:
            warnings.warn(f"FFTW wisdom cache {self.wisdom}: ignored (expected the JSON "
                          f"written by ptyframe, found {exc})", RuntimeWarning, stacklevel=3)

    def _save_wisdom(self) -> None:
        assert self.wisdom is not None
        data = {"format": _WISDOM_FORMAT,
                "wisdom": [w.decode("ascii") for w in self._pyfftw.export_wisdom()]}
        try:
            self.wisdom.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.wisdom.parent, prefix=".fftw_wisdom",
                                       suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="ascii") as fh:
                    json.dump(data, fh)
                os.replace(tmp, self.wisdom)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError:
            pass  # a read-only or full cache only costs planning time next run


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _visible_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _thread_candidates() -> list[int]:
    """1, 2, 4, ... up to the visible cores (and the core count itself)."""
    cores = _visible_cores()
    out = [1]
    while out[-1] * 2 <= cores:
        out.append(out[-1] * 2)
    if out[-1] != cores:
        out.append(cores)
    return out


def make_fft_provider(name: str, workers: int | None) -> ScipyFFT | PlannedFFTW:
    """The provider called ``name`` (see :data:`FFT_PROVIDERS`). ``workers``: threads; None
    means all visible cores for scipy and a measured choice for FFTW."""
    if name == "scipy":
        return ScipyFFT(workers if workers is not None else _visible_cores())
    if name == "fftw":
        return PlannedFFTW(threads=workers, wisdom=wisdom_path())
    raise ValueError(f"fft: expected one of {list(FFT_PROVIDERS)}, found {name!r}")
