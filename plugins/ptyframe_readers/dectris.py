"""Dectris (arina, Eiger, Quadro) master files whose patterns live in ``data_00000n`` chunks."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import attrs
import h5py
import numpy as np

from ptyframe.components import FileMetadata, PatternSource, Reader
from ptyframe.components.reader import SNIFF_CONTENT
from ptyframe.io.data import DataError, check_dtype

from ._h5 import decode, is_hdf5, open_h5

__all__ = ["DectrisReader", "DectrisSource"]

_DATA_GROUP = "entry/data"
_CHUNK = re.compile(r"^data_(\d{6})$")
_DETECTOR = "entry/instrument/detector"
#: electron beams are >= 30 keV; a photon_energy above this is the beam energy of an
#: electron detector (arina writes the high tension there), not an X-ray energy
_ELECTRON_EV = 30_000.0


def _chunk_names(f: h5py.File) -> list[str]:
    group = f.get(_DATA_GROUP)
    if not isinstance(group, h5py.Group):
        return []
    return sorted(k for k in group.keys() if _CHUNK.match(k))


class DectrisSource(PatternSource):
    """The chunks ``entry/data/data_000001 ...`` of a master file joined along the frame axis
    (each chunk read through the master's external link, one file open per access)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"{str(path)!r} (Dectris master, entry/data/data_*)"
        with self._chunks() as chunks:
            lengths, shapes, dtypes = [], set(), set()
            for ds in chunks:
                if ds.ndim != 3:
                    raise DataError(f"{self.description}: expected 3D (frames, ky, kx) chunks, "
                                    f"found {ds.name} with shape {ds.shape}")
                lengths.append(int(ds.shape[0]))
                shapes.add(tuple(int(v) for v in ds.shape[1:]))
                dtypes.add(ds.dtype)
        if len(shapes) != 1 or len(dtypes) != 1:
            raise DataError(f"{self.description}: expected chunks of one frame shape and dtype, "
                            f"found shapes {sorted(shapes)} and dtypes {sorted(map(str, dtypes))}")
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.n = int(self.offsets[-1])
        self.raw_pattern_shape = shapes.pop()
        self.dtype = dtypes.pop()
        self.shape4d = None
        check_dtype(self.dtype, self.description)
        if self.n < 1:
            raise DataError(f"{self.description}: expected at least one frame, found none")

    @contextlib.contextmanager
    def _chunks(self) -> Iterator[list[h5py.Dataset]]:
        with open_h5(self.path) as f:
            names = _chunk_names(f)
            if not names:
                raise DataError(f"{self.description}: expected datasets data_000001... in "
                                f"{_DATA_GROUP}, found none")
            chunks = []
            for name in names:
                link = f[_DATA_GROUP].get(name, getlink=True)
                try:
                    ds = f[_DATA_GROUP][name]
                except (KeyError, OSError) as exc:
                    target = getattr(link, "filename", "?")
                    raise DataError(
                        f"{self.description}: chunk {name} links to {target!r}, which could "
                        f"not be opened next to the master file ({exc}); compressed arina "
                        f"chunks also need `pip install hdf5plugin`") from exc
                chunks.append(ds)
            yield chunks

    def _read(self, chunks: list[h5py.Dataset], start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, *self.raw_pattern_shape), dtype=self.dtype)
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        pos = start
        for c in range(first, len(chunks)):
            lo, hi = int(self.offsets[c]), int(self.offsets[c + 1])
            end = min(stop, hi)
            out[pos - start:end - start] = chunks[c][pos - lo:end - lo]
            pos = end
            if pos >= stop:
                break
        return out

    def read_sorted_unique(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((idx.size, *self.raw_pattern_shape), dtype=self.dtype)
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        with self._chunks() as chunks:
            for c in np.unique(which):
                sel = np.flatnonzero(which == c)
                local = idx[sel] - self.offsets[c]
                lo, hi = int(local[0]), int(local[-1]) + 1
                if hi - lo <= 2 * sel.size:
                    out[sel] = chunks[c][lo:hi][local - lo]
                else:
                    out[sel] = chunks[c][local]
        return out

    @contextlib.contextmanager
    def open_chunks(self) -> Iterator[Any]:
        with self._chunks() as chunks:
            yield lambda start, stop: self._read(chunks, start, stop)


def _scalar(f: h5py.File, path: str) -> Any:
    obj = f.get(path)
    if isinstance(obj, h5py.Dataset) and obj.shape == ():
        return decode(obj[()])
    return None


@attrs.frozen
class DectrisReader(Reader):
    """Dectris master file (arina, Eiger, Quadro): ``entry/data/data_00000n`` chunks (external
    links to ``*_data_00000n.h5`` files beside it) joined in order.

    Metadata: ``detector_pixel_size_mrad`` = 1000 x ``x_pixel_size`` / ``detector_distance``
    (both in m, from ``entry/instrument/detector``; meaningful when the detector distance is
    the effective camera length), ``voltage_kV`` from ``detectorSpecific/photon_energy`` when
    it is an electron energy (>= 30 keV), ``beam_center_yx_px`` and the frame counts. The scan
    shape is not in a Dectris file: give it as ``scan_shape`` in [experiment].
    """

    name: ClassVar[str] = "dectris"
    suffixes: ClassVar[tuple[str, ...]] = (".h5", ".hdf5")

    def sniff(self, path: Path) -> int:
        if not is_hdf5(path):
            return 0
        with open_h5(path) as f:
            return SNIFF_CONTENT if _chunk_names(f) else 0

    def open(self, path: Path) -> PatternSource:
        return DectrisSource(path)

    def metadata(self, path: Path) -> FileMetadata:
        values: dict[str, Any] = {}
        origins: dict[str, str] = {}
        d = _DETECTOR
        with open_h5(path) as f:
            px, dist = _scalar(f, f"{d}/x_pixel_size"), _scalar(f, f"{d}/detector_distance")
            if isinstance(px, (int, float)) and isinstance(dist, (int, float)) \
                    and px > 0 and dist > 0:
                values["detector_pixel_size_mrad"] = 1e3 * px / dist
                origins["detector_pixel_size_mrad"] = (f"1000 * {d}/x_pixel_size / "
                                                       f"{d}/detector_distance (m / m)")
            energy = _scalar(f, f"{d}/detectorSpecific/photon_energy")
            if isinstance(energy, (int, float)) and energy >= _ELECTRON_EV:
                values["voltage_kV"] = energy * 1e-3
                origins["voltage_kV"] = f"{d}/detectorSpecific/photon_energy (eV)"
            cy, cx = _scalar(f, f"{d}/beam_center_y"), _scalar(f, f"{d}/beam_center_x")
            if isinstance(cy, (int, float)) and isinstance(cx, (int, float)):
                values["beam_center_yx_px"] = [cy, cx]
                origins["beam_center_yx_px"] = f"{d}/beam_center_y, beam_center_x (px)"
            for key in ("ntrigger", "nimages"):
                v = _scalar(f, f"{d}/detectorSpecific/{key}")
                if v is not None:
                    values[f"dectris_{key}"] = v
                    origins[f"dectris_{key}"] = f"{d}/detectorSpecific/{key}"
        return FileMetadata(values, origins)
