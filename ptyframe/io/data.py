"""4D-STEM measurements: lazy loading through the readers and on-the-fly preprocessing.

Conventions: a dataset is a sequence of N diffraction patterns ``[ky, kx]`` (row-major scan
order, y slow, x fast, when it comes from a 4D ``(sy, sx, ky, kx)`` array). Pattern pixels are
counts (electrons); zero frequency is at pixel ``(n/2, n/2)`` of each pattern
(:meth:`Dataset.centered_to_fft_order` moves it to pixel (0, 0)).

Inputs (:meth:`Dataset.from_file`) are read by the registered
:class:`~ptyframe.components.Reader` that recognises the file (the ``reader`` family; the
first-party ones are in ``plugins/ptyframe_readers``): HDF5 whatever the suffix (dataset
``"data"``, else the single 3D/4D dataset, or ``dataset_name``; opened for each read and
closed again), EMD 1.0 / py4DSTEM, Dectris master files, ``.npy`` (memory-mapped, never
unpickled; a Nion export is a 4D ``.npy`` with a ``.json`` sidecar) and, with the
``formats`` extra, the rosettasciio formats. A 4D array must be (sy, sx, ky, kx): one whose
last two axes are not square is refused with the reordering that fixes it.

Preprocessing (:class:`Preprocessing`) is applied to every pattern as it is read, in this
order: clip negatives (optional) -> flip_ky / flip_kx -> transpose -> shift -> bin ->
multiplier -> pad.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import h5py
import numpy as np

from ptyframe.components.reader import PatternSource
from ptyframe.core.validators import (
    boolean,
    int_pair,
    non_negative_int,
    positive,
    positive_int,
    positive_int_pair,
)

__all__ = ["DataError", "Preprocessing", "Dataset", "MIN_PATTERN_PX", "DEFAULT_CHUNK_BYTES",
           "ArraySource", "H5Source", "split_4d", "check_dtype"]

#: Smallest pattern side (pixels, after preprocessing) a reconstruction can use.
MIN_PATTERN_PX = 8
#: Default bound on the memory one chunk of patterns takes during chunked passes, bytes.
DEFAULT_CHUNK_BYTES = 256 * 1024**2

_H5_SUFFIXES = (".h5", ".hdf5")
_NPY_SUFFIXES = (".npy",)


class DataError(ValueError):
    """Bad input data; the message names the parameter or file, what was expected and found."""


# ---------------------------------------------------------------------------- preprocessing
@attrs.frozen(kw_only=True)
class Preprocessing:
    """Per-pattern preprocessing applied on the fly by :class:`Dataset`.

    Applied in this order (each step sees the output of the previous one):

    1. ``clip_negative``: values < 0 are set to 0 (otherwise negative counts are an error).
    2. ``flip_ky`` / ``flip_kx``: reverse the raw detector's row / column axis.
    3. ``transpose``: swap the ky and kx axes.
    4. ``shift_px`` (ky, kx): integer shift in pixels; positive values move the content towards
       higher indices. Pixels shifted out are dropped and the vacated side is zero-filled (no
       wrap-around).
    5. ``bin``: sum ``bin x bin`` blocks (the pattern side must be divisible by ``bin``).
    6. ``multiplier``: scale the counts (e.g. a gain correction; > 0).
    7. ``pad``: add ``pad`` pixels of zeros on each side of both axes.

    Every step is linear except ``clip_negative``.
    """

    multiplier: float = attrs.field(default=1.0, validator=positive(error=DataError))
    pad: int = attrs.field(default=0, validator=non_negative_int(error=DataError))
    bin: int = attrs.field(default=1, validator=positive_int(error=DataError))
    flip_ky: bool = attrs.field(default=False, validator=boolean(error=DataError))
    flip_kx: bool = attrs.field(default=False, validator=boolean(error=DataError))
    transpose: bool = attrs.field(default=False, validator=boolean(error=DataError))
    shift_px: tuple[int, int] = attrs.field(
        default=(0, 0), converter=int_pair(what="(ky, kx) in pixels", error=DataError))
    clip_negative: bool = attrs.field(default=False, validator=boolean(error=DataError))

    def output_shape(self, raw_shape: tuple[int, int]) -> tuple[int, int]:
        """Pattern shape (ky, kx) after preprocessing; raises :class:`DataError` when the raw
        pattern shape does not suit these settings."""
        ny, nx = (int(s) for s in raw_shape)
        if ny != nx:
            raise DataError(f"pattern shape: expected square patterns (ky == kx), found "
                            f"{(ny, nx)}")
        n = ny
        for axis, s in zip(("ky", "kx"), self.shift_px, strict=True):
            if abs(s) >= n:
                raise DataError(f"Preprocessing.shift_px: expected |shift| < pattern side {n} "
                                f"px along {axis}, found {s}")
        if n % self.bin:
            raise DataError(f"Preprocessing.bin: expected a divisor of the pattern side {n} px, "
                            f"found bin={self.bin}")
        out = n // self.bin + 2 * self.pad
        if out < MIN_PATTERN_PX:
            raise DataError(f"pattern shape: expected at least {MIN_PATTERN_PX} x "
                            f"{MIN_PATTERN_PX} px after preprocessing, found {out} x {out} "
                            f"(raw {n} x {n}, bin={self.bin}, pad={self.pad})")
        return (out, out)

    def apply(self, patterns: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
        """Preprocess raw patterns (..., ky, kx); returns a new C-contiguous ``dtype`` array
        (never a view of ``patterns``)."""
        raw = patterns
        out = np.asarray(patterns, dtype=dtype)
        if self.clip_negative:
            out = np.maximum(out, 0)
        if self.flip_ky:
            out = out[..., ::-1, :]
        if self.flip_kx:
            out = out[..., :, ::-1]
        if self.transpose:
            out = np.swapaxes(out, -1, -2)
        if self.shift_px != (0, 0):
            out = _shift_zero_fill(out, self.shift_px)
        if self.bin > 1:
            b = self.bin
            ny, nx = out.shape[-2:]
            out = out.reshape(*out.shape[:-2], ny // b, b, nx // b, b).sum(axis=(-3, -1))
        if self.multiplier != 1.0:
            out = out * np.asarray(self.multiplier, dtype=dtype)
        if self.pad:
            p = self.pad
            out = np.pad(out, [(0, 0)] * (out.ndim - 2) + [(p, p), (p, p)])
        out = np.ascontiguousarray(out, dtype=dtype)
        if np.may_share_memory(out, raw):
            out = out.copy()
        return out

    def to_config(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["shift_px"] = list(self.shift_px)
        return out


def _shift_zero_fill(a: np.ndarray, shift: tuple[int, int]) -> np.ndarray:
    """Shift the last two axes by integer pixels towards higher indices, zero-filling."""
    out = np.zeros_like(a)
    dst: list[slice] = []
    src: list[slice] = []
    for s, n in zip(shift, a.shape[-2:], strict=True):
        if s >= 0:
            dst.append(slice(s, n))
            src.append(slice(0, n - s))
        else:
            dst.append(slice(0, n + s))
            src.append(slice(-s, n))
    out[..., dst[0], dst[1]] = a[..., src[0], src[1]]
    return out


# ---------------------------------------------------------------------------- raw sources
#: the raw-pattern interface every reader's source implements (kept under its old name too)
_Source = PatternSource


def check_axis_order(shape: Sequence[int], description: str) -> None:
    """Refuse a 4D shape whose axes look like (ky, kx, sy, sx) or (sy, ky, sx, kx): detector
    patterns are square in every supported camera, so non-square last axes while another
    pair of axes is square means the array is not stored as (sy, sx, ky, kx)."""
    sy, sx, ky, kx = (int(v) for v in shape)
    if ky == kx:
        return
    if sy == sx:
        hint = (f"the first two axes {(sy, sx)} are square, as detector axes are: the file "
                f"probably holds (ky, kx, sy, sx); reorder it with "
                f"np.moveaxis(a, (0, 1), (2, 3))")
    elif sx == kx:
        hint = ("the array looks interleaved as (sy, ky, sx, kx); reorder it with "
                "a.transpose(0, 2, 1, 3)")
    elif sy == ky:
        hint = ("the array looks interleaved as (ky, sy, kx, sx); reorder it with "
                "a.transpose(1, 3, 0, 2)")
    else:
        hint = "the detector axes (the last two) must be square"
    raise DataError(f"{description}: expected a 4D array in axis order (sy, sx, ky, kx) with "
                    f"square patterns (ky == kx), found shape {tuple(int(v) for v in shape)} "
                    f"whose last two axes {(ky, kx)} are not square; {hint}")


def split_4d(shape: tuple[int, ...], description: str) -> tuple[int, tuple[int, int],
                                                                  tuple[int, int] | None]:
    if len(shape) in (3, 4) and min(shape) < 1:
        raise DataError(f"{description}: expected at least one pattern with pixels, found "
                        f"shape {tuple(shape)}")
    if len(shape) == 3:
        return int(shape[0]), (int(shape[1]), int(shape[2])), None
    if len(shape) == 4:
        check_axis_order(shape, description)
        return (int(shape[0] * shape[1]), (int(shape[2]), int(shape[3])),
                (int(shape[0]), int(shape[1])))
    raise DataError(f"{description}: expected a 3D (N, ky, kx) or 4D (sy, sx, ky, kx) array, "
                    f"found {len(shape)}D with shape {tuple(shape)}")


def check_dtype(dtype: np.dtype, description: str) -> None:
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise DataError(f"{description}: expected real numeric counts (integer or float), "
                        f"found dtype {dtype}")


def _rows_slices(start: int, stop: int, sx: int) -> Iterator[tuple[int, slice, int]]:
    """Split flat range [start, stop) into per-scan-row pieces (row, column slice, offset)."""
    pos = start
    while pos < stop:
        row, col = divmod(pos, sx)
        end = min(stop, (row + 1) * sx)
        yield row, slice(col, col + end - pos), pos - start
        pos = end


class _ArraySource(_Source):
    """In-memory array or read-only memory map (``np.load(mmap_mode="r")``)."""

    def __init__(self, array: np.ndarray, description: str) -> None:
        self.array = array
        self.description = description
        self.n, self.raw_pattern_shape, self.shape4d = split_4d(array.shape, description)
        self.dtype = array.dtype
        check_dtype(self.dtype, description)

    def read_sorted_unique(self, idx: np.ndarray) -> np.ndarray:
        if self.shape4d is None:
            return np.asarray(self.array[idx])
        iy, ix = np.divmod(idx, self.shape4d[1])
        return np.asarray(self.array[iy, ix])

    @contextlib.contextmanager
    def open_chunks(self) -> Iterator[Any]:
        yield lambda start, stop: _read_range(self.array, self.shape4d, start, stop)


def _read_range(arr: Any, shape4d: tuple[int, int] | None, start: int, stop: int) -> np.ndarray:
    if shape4d is None:
        return np.asarray(arr[start:stop])
    out = np.empty((stop - start, *arr.shape[2:]), dtype=arr.dtype)
    for row, cols, offset in _rows_slices(start, stop, shape4d[1]):
        width = cols.stop - cols.start
        out[offset:offset + width] = arr[row, cols]
    return out


class _H5Source(_Source):
    """HDF5 dataset; the file is opened (read-only, in a context manager) for every access."""

    def __init__(self, path: Path, dataset_name: str) -> None:
        self.path = path
        self.dataset_name = dataset_name
        self.description = f"{str(path)!r} dataset {dataset_name!r}"
        with self._dataset() as ds:
            shape, self.dtype, chunks = ds.shape, ds.dtype, ds.chunks
        check_dtype(self.dtype, self.description)
        self.n, self.raw_pattern_shape, self.shape4d = split_4d(shape, self.description)
        if chunks is not None:
            # a 4D chunk spans chunks[0] whole scan rows when read row by row
            self.axis0_chunk = int(chunks[0]) * (self.shape4d[1] if self.shape4d else 1)

    @contextlib.contextmanager
    def _dataset(self) -> Iterator[h5py.Dataset]:
        try:
            f = h5py.File(self.path, "r")
        except OSError as exc:
            raise DataError(f"{str(self.path)!r}: expected an HDF5 file, could not open it "
                            f"({exc})") from exc
        with f:
            obj = f.get(self.dataset_name)
            if not isinstance(obj, h5py.Dataset):
                names: list[str] = []
                f.visititems(lambda name, o: names.append(name)
                             if isinstance(o, h5py.Dataset) else None)
                found = ", ".join(repr(n) for n in names) if names else "no datasets"
                raise DataError(f"dataset_name: expected a dataset {self.dataset_name!r} in "
                                f"{str(self.path)!r}, found {found}")
            yield obj

    def read_sorted_unique(self, idx: np.ndarray) -> np.ndarray:
        with self._dataset() as ds:
            if self.shape4d is None:
                return _h5_take(ds, idx, ())
            out = np.empty((idx.size, *self.raw_pattern_shape), dtype=self.dtype)
            rows, cols = np.divmod(idx, self.shape4d[1])
            bounds = np.flatnonzero(np.diff(rows)) + 1
            for part in np.split(np.arange(idx.size), bounds):
                out[part] = _h5_take(ds, cols[part], (int(rows[part[0]]),))
            return out

    @contextlib.contextmanager
    def open_chunks(self) -> Iterator[Any]:
        with self._dataset() as ds:
            yield lambda start, stop: _read_range(ds, self.shape4d, start, stop)


def _h5_take(ds: h5py.Dataset, idx: np.ndarray, prefix: tuple[int, ...]) -> np.ndarray:
    """ds[prefix + (idx,)] for increasing unique ``idx``: one slice when the selection is
    dense (reads at most twice the selection), an HDF5 point list otherwise."""
    lo, hi = int(idx[0]), int(idx[-1]) + 1
    if hi - lo <= 2 * idx.size:
        block = ds[(*prefix, slice(lo, hi))]
        return block if hi - lo == idx.size else block[idx - lo]
    return ds[(*prefix, idx)]


# ---------------------------------------------------------------------------- dataset
class Dataset:
    """N diffraction patterns (counts), read lazily and preprocessed on the fly.

    Build it with :meth:`from_file` or :meth:`from_array`. ``read(indices)`` returns
    preprocessed patterns, shape (n, *pattern_shape).
    """

    def __init__(self, source: _Source, preprocessing: Preprocessing | None = None,
                 scan_shape: Sequence[int] | None = None, path: Path | None = None,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        self._source = source
        self.preprocessing = preprocessing if preprocessing is not None else Preprocessing()
        if not isinstance(self.preprocessing, Preprocessing):
            raise DataError(f"preprocessing: expected a Preprocessing instance, found "
                            f"{type(preprocessing).__name__}")
        self.path = path
        if int(chunk_bytes) < 1:
            raise DataError(f"chunk_bytes: expected a positive number of bytes, "
                            f"found {chunk_bytes!r}")
        self.chunk_bytes = int(chunk_bytes)
        self._pattern_shape = self.preprocessing.output_shape(source.raw_pattern_shape)
        #: the Reader that opened the file (None for in-memory arrays)
        self.reader: Any = None
        self.scan_shape = self._resolve_scan_shape(scan_shape)

    def _resolve_scan_shape(self, scan_shape: Sequence[int] | None) -> tuple[int, int] | None:
        n = self._source.n
        from_file = self._source.shape4d
        if scan_shape is None:
            return from_file
        pair = positive_int_pair(scan_shape, "scan_shape", DataError)
        if from_file is not None and pair != from_file:
            raise DataError(f"scan_shape: the 4D data in {self._source.description} has scan "
                            f"shape {from_file}, but scan_shape={pair} was given")
        if pair[0] * pair[1] != n:
            raise DataError(f"scan_shape: expected sy * sx = number of patterns N = {n}, "
                            f"found {pair} ({pair[0] * pair[1]} points)")
        return pair  # type: ignore[return-value]

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_file(cls, path: str | Path, dataset_name: str | None = None,
                  scan_shape: Sequence[int] | None = None,
                  preprocessing: Preprocessing | None = None, validate: bool = True,
                  chunk_bytes: int = DEFAULT_CHUNK_BYTES, reader: Any = None,
                  registry: Any = None) -> Dataset:
        """Open a data file lazily through a :class:`~ptyframe.components.Reader`.

        ``reader``: a reader name, ``{"type": name, ...}`` table or instance; by default the
        registered reader that recognises the file best (HDF5 whatever its suffix, EMD 1.0 /
        py4DSTEM, Dectris master files, .npy, and the rosettasciio formats of the
        ``formats`` extra). ``dataset_name``: the HDF5 dataset (default: ``data`` when present,
        else the file's single 3D/4D dataset). ``validate`` scans the data once, in chunks of
        at most ``chunk_bytes``, for NaN/inf and negative counts (see :meth:`validate`)."""
        from ptyframe.io.readers import select_reader

        p = Path(path)
        if p.is_dir():
            raise DataError(f"data: {str(p)!r} is a directory; expected an .h5 or .npy file "
                            "of diffraction patterns")
        if not p.is_file():
            raise FileNotFoundError(f"data file not found: {str(p)!r}")
        chosen = select_reader(p, reader, dataset_name=dataset_name, registry=registry)
        source = chosen.open(p)
        if not isinstance(source, PatternSource):
            raise DataError(f"reader {chosen.name!r}: expected open() to return a "
                            f"PatternSource, found {type(source).__name__}")
        ds = cls(source, preprocessing=preprocessing, scan_shape=scan_shape, path=p,
                 chunk_bytes=chunk_bytes)
        ds.reader = chosen
        if validate:
            ds.validate()
        return ds

    @classmethod
    def from_array(cls, array: np.ndarray, scan_shape: Sequence[int] | None = None,
                   preprocessing: Preprocessing | None = None, validate: bool = True,
                   chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Dataset:
        """Wrap an in-memory (N, ky, kx) or (sy, sx, ky, kx) array (not copied)."""
        arr = np.asarray(array)
        ds = cls(_ArraySource(arr, "array"), preprocessing=preprocessing,
                 scan_shape=scan_shape, chunk_bytes=chunk_bytes)
        if validate:
            ds.validate()
        return ds

    def with_preprocessing(self, preprocessing: Preprocessing) -> Dataset:
        """The same data with other preprocessing (the raw data is shared, not re-read)."""
        out = Dataset(self._source, preprocessing=preprocessing, scan_shape=self.scan_shape,
                      path=self.path, chunk_bytes=self.chunk_bytes)
        out.reader = self.reader
        return out

    # ------------------------------------------------------------------ description
    def __len__(self) -> int:
        return self._source.n

    @property
    def shape(self) -> tuple[int, int, int]:
        """(N, ky, kx) after preprocessing."""
        return (self._source.n, *self._pattern_shape)

    @property
    def pattern_shape(self) -> tuple[int, int]:
        """(ky, kx) after preprocessing, pixels."""
        return self._pattern_shape

    @property
    def source(self) -> PatternSource:
        """The raw patterns as the reader gives them (before preprocessing)."""
        return self._source

    @property
    def raw_pattern_shape(self) -> tuple[int, int]:
        """(ky, kx) as stored in the file, pixels."""
        return self._source.raw_pattern_shape

    def __repr__(self) -> str:
        where = repr(str(self.path)) if self.path is not None else "array"
        return (f"Dataset({where}, shape={self.shape}, scan_shape={self.scan_shape}, "
                f"preprocessing={self.preprocessing!r})")

    # ------------------------------------------------------------------ reading
    def _chunk_len(self) -> int:
        ky, kx = self._source.raw_pattern_shape
        oy, ox = self._pattern_shape
        per_pattern = 8 * max(ky * kx, oy * ox) * 2  # float64 working copies
        n = max(1, self.chunk_bytes // per_pattern)
        c0 = self._source.axis0_chunk
        if c0 > 1 and n >= c0:
            n = (n // c0) * c0  # whole HDF5 chunks: each is decompressed once
        return n

    def _raw_chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        step = self._chunk_len()
        n = self._source.n
        with self._source.open_chunks() as read_range:
            for start in range(0, n, step):
                yield start, read_range(start, min(n, start + step))

    def _check_indices(self, indices: Any) -> np.ndarray:
        idx = np.atleast_1d(np.asarray(indices))
        if idx.ndim != 1 or not (np.issubdtype(idx.dtype, np.integer) or idx.size == 0):
            raise DataError(f"indices: expected a 1D array of integer pattern indices, found "
                            f"dtype {idx.dtype} and shape {idx.shape}")
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self._source.n):
            raise DataError(f"indices: expected values in [0, {self._source.n}), found "
                            f"min {idx.min()} and max {idx.max()}")
        return idx

    def read(self, indices: Sequence[int] | np.ndarray, dtype: Any = np.float32) -> np.ndarray:
        """Preprocessed patterns ``indices`` (any order, repeats allowed), shape
        (len(indices), ky, kx), as ``dtype`` counts."""
        idx = self._check_indices(indices)
        if idx.size == 0:
            return np.zeros((0, *self._pattern_shape), dtype=dtype)
        unique, inverse = np.unique(idx, return_inverse=True)  # h5py needs increasing indices
        raw = self._source.read_sorted_unique(unique)
        if unique.size != idx.size or np.any(unique != idx):
            raw = raw[inverse.reshape(-1)]
        return self.preprocessing.apply(raw, dtype=dtype)

    def load_all(self, dtype: Any = np.float32) -> np.ndarray:
        """Every preprocessed pattern, shape (N, ky, kx) (read in bounded chunks)."""
        out = np.empty(self.shape, dtype=dtype)
        for start, raw in self._raw_chunks():
            out[start:start + raw.shape[0]] = self.preprocessing.apply(raw, dtype=dtype)
        return out

    def mean_pattern(self) -> np.ndarray:
        """Mean preprocessed pattern (ky, kx), float64 counts, computed in bounded chunks."""
        total = np.zeros(self._pattern_shape, dtype=np.float64)
        for _start, raw in self._raw_chunks():
            total += self.preprocessing.apply(raw, dtype=np.float64).sum(axis=0)
        return total / self._source.n

    def total_counts_mean(self) -> float:
        """Mean over patterns of the total counts in a preprocessed pattern."""
        return float(self.mean_pattern().sum())

    def validate(self) -> None:
        """Scan the raw data in chunks: raise :class:`DataError` at the first NaN/inf, and at
        the first negative value unless ``preprocessing.clip_negative``."""
        check_finite = np.issubdtype(self._source.dtype, np.floating)
        check_sign = (not self.preprocessing.clip_negative
                      and not np.issubdtype(self._source.dtype, np.unsignedinteger))
        if not (check_finite or check_sign):
            return
        where = self._source.description
        for start, raw in self._raw_chunks():
            if check_finite:
                bad = ~np.isfinite(raw)
                if bad.any():
                    k, iy, ix = np.unravel_index(int(np.argmax(bad)), raw.shape)
                    raise DataError(
                        f"data ({where}): expected finite counts, found "
                        f"{raw[k, iy, ix]} at pattern {start + k}, pixel ({iy}, {ix}) "
                        f"({int(bad.sum())} non-finite values in patterns "
                        f"{start}..{start + raw.shape[0] - 1})")
            if check_sign:
                low = raw.min()
                if low < 0:
                    k, iy, ix = np.unravel_index(int(np.argmin(raw)), raw.shape)
                    raise DataError(
                        f"data ({where}): expected non-negative counts, found {low} at "
                        f"pattern {start + k}, pixel ({iy}, {ix}); pass "
                        f"Preprocessing(clip_negative=True) to clip negative values to 0")

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def centered_to_fft_order(patterns: np.ndarray) -> np.ndarray:
        """Move zero frequency from pixel (n/2, n/2) (file convention) to (0, 0) (FFT order)."""
        return np.fft.ifftshift(patterns, axes=(-2, -1))


#: public names of the sources readers build on
ArraySource = _ArraySource
H5Source = _H5Source
