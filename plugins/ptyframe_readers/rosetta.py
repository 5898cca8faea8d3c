"""Formats read through rosettasciio (the ``formats`` extra: ``pip install 'ptyframe[formats]'``):
Merlin .mib, Digital Micrograph .dm3/.dm4, EMPAD .xml/.raw, .mrc, HyperSpy .hspy/.zspy and
Velox .emd. Every file is opened lazily (dask arrays: chunks are read when a pattern is asked
for), and the axis calibrations and acquisition metadata are mapped onto the keys
:mod:`ptyframe.io.metadata` reads.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import attrs
import numpy as np

from ptyframe.components import FileMetadata, PatternSource, Reader
from ptyframe.components.reader import SNIFF_CONTENT, SNIFF_SUFFIX
from ptyframe.core.validators import positive_int_pair
from ptyframe.io.data import DataError, check_dtype, split_4d

from ._h5 import decode, is_hdf5, open_h5
from ._units import detector_calibration, scan_step_A

__all__ = ["ROSETTA_READERS", "RosettaReader", "SignalSource", "axes_calibration"]

_INSTALL = "pip install 'ptyframe[formats]'"


def _scan_shape(value: Any) -> Any:
    if value is None:
        return None
    return list(positive_int_pair(value, "navigation_shape", DataError))


def _ordered_axes(signal: Mapping[str, Any]) -> list[dict[str, Any]]:
    axes = [dict(a) for a in signal.get("axes", [])]
    if all("index_in_array" in a for a in axes):
        axes.sort(key=lambda a: a["index_in_array"])
    return axes


def axes_calibration(signal: Mapping[str, Any], where: str) -> FileMetadata:
    """Metadata from a rosettasciio signal dictionary: the scan step from the navigation axes
    (nm, Å, ...), the detector pixel size from the signal axes (1/nm, 1/Å, mrad, rad),
    ``voltage_kV`` from ``Acquisition_instrument.TEM.beam_energy`` (keV) and
    ``convergence_angle_mrad`` from ``Acquisition_instrument.TEM.convergence_angle`` (mrad)."""
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    axes = _ordered_axes(signal)
    nav = [a for a in axes if a.get("navigate")]
    sig = [a for a in axes if not a.get("navigate")]
    for label, group, convert in (("navigation", nav, scan_step_A),
                                  ("signal", sig, detector_calibration)):
        for a in group:
            hit = convert(a.get("scale"), a.get("units"))
            if hit is None:
                continue
            key, value = hit if isinstance(hit, tuple) else ("scan_step_A", hit)
            if key not in values:
                values[key] = value
                origins[key] = (f"{where}: {label} axis {a.get('name')!r} scale "
                                f"{a.get('scale')!r} {a.get('units')!r}")
    if len(nav) == 2:
        values["scan_shape"] = [int(nav[0]["size"]), int(nav[1]["size"])]
        origins["scan_shape"] = f"{where}: navigation axes sizes"
    tem = signal.get("metadata", {}).get("Acquisition_instrument", {}).get("TEM", {})
    for src, key in (("beam_energy", "voltage_kV"), ("convergence_angle",
                                                    "convergence_angle_mrad")):
        v = tem.get(src)
        if isinstance(v, (int, float)) and v > 0:
            values[key] = float(v)
            origins[key] = f"{where}: metadata Acquisition_instrument.TEM.{src}"
    return FileMetadata(values, origins)


class SignalSource(PatternSource):
    """Patterns of a (lazy, dask or NumPy) array laid out (sy, sx, ky, kx) or (N, ky, kx)."""

    def __init__(self, array: Any, description: str) -> None:
        self.array = array
        self.description = description
        self.n, self.raw_pattern_shape, self.shape4d = split_4d(tuple(array.shape), description)
        self.dtype = np.dtype(array.dtype)
        check_dtype(self.dtype, description)
        chunks = getattr(array, "chunks", None)
        if chunks and isinstance(chunks[0], tuple) and chunks[0]:
            first = int(chunks[0][0])  # dask: block sizes per axis
            self.axis0_chunk = first * (self.shape4d[1] if self.shape4d else 1)

    def _take(self, idx: np.ndarray) -> np.ndarray:
        arr = self.array
        if self.shape4d is None:
            return np.asarray(arr[idx])
        iy, ix = np.divmod(idx, self.shape4d[1])
        if hasattr(arr, "vindex"):  # dask indexes one array axis at a time
            return np.asarray(arr.vindex[iy, ix])
        return np.asarray(arr[iy, ix])

    def read_sorted_unique(self, idx: np.ndarray) -> np.ndarray:
        return self._take(idx)

    def _range(self, start: int, stop: int) -> np.ndarray:
        if self.shape4d is None:
            return np.asarray(self.array[start:stop])
        sx = self.shape4d[1]
        r0, r1 = start // sx, (stop - 1) // sx + 1
        block = np.asarray(self.array[r0:r1]).reshape(-1, *self.raw_pattern_shape)
        return block[start - r0 * sx:stop - r0 * sx]

    @contextlib.contextmanager
    def open_chunks(self) -> Iterator[Any]:
        yield self._range


@attrs.frozen(kw_only=True)
class RosettaReader(Reader):
    """Base of the rosettasciio-backed readers (not registered itself).

    ``signal``: index of the signal to read when a file holds several (default: the single
    one with 3D/4D data and two signal axes). ``navigation_shape``: (sy, sx) scan shape for
    formats that do not store it (Merlin .mib, .mrc); ignored by the others.
    """

    #: rosettasciio plugin module (``rsciio.<module>``)
    module: ClassVar[str] = ""

    signal: int | None = attrs.field(default=None)
    navigation_shape: list[int] | None = attrs.field(default=None, converter=_scan_shape)

    @signal.validator
    def _check_signal(self, attribute: Any, value: Any) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 0):
            raise DataError(f"{type(self).__name__}.signal: expected a signal index >= 0 or "
                            f"None, found {value!r}")

    def module_for(self, path: Path) -> str:
        """The rosettasciio plugin module that reads ``path``."""
        return self.module

    def _reader(self, path: Path) -> Any:
        try:
            return importlib.import_module(f"rsciio.{self.module_for(path)}").file_reader
        except ImportError as exc:
            raise DataError(f"reader {self.name!r}: expected rosettasciio to read "
                            f"{'/'.join(self.suffixes)} files, found it is not installed "
                            f"({exc}); {_INSTALL}") from exc

    def _signal(self, path: Path) -> tuple[dict[str, Any], str]:
        file_reader = self._reader(path)
        kwargs: dict[str, Any] = {"lazy": True}
        if self.navigation_shape is not None and \
                "navigation_shape" in inspect.signature(file_reader).parameters:
            kwargs["navigation_shape"] = tuple(self.navigation_shape[::-1])  # rsciio: (x, y)
        try:
            signals = file_reader(str(path), **kwargs)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{str(path)!r}: rosettasciio ({self.module}) could not read it "
                            f"({type(exc).__name__}: {exc})") from exc
        usable = [i for i, s in enumerate(signals)
                  if getattr(s.get("data"), "ndim", 0) in (3, 4)
                  and sum(not a.get("navigate") for a in s.get("axes", [])) == 2]
        if self.signal is not None:
            if self.signal >= len(signals):
                raise DataError(f"{type(self).__name__}.signal: expected an index below "
                                f"{len(signals)} (signals in {str(path)!r}), found {self.signal}")
            index = self.signal
        elif len(usable) == 1:
            index = usable[0]
        else:
            shapes = [tuple(getattr(s.get("data"), "shape", ())) for s in signals]
            raise DataError(f"{str(path)!r}: expected one signal with 3D/4D data and two "
                            f"signal axes, found {len(usable)} among shapes {shapes}; set the "
                            f"reader's signal = index")
        return signals[index], f"{path.name} signal {index}"

    def open(self, path: Path) -> PatternSource:
        signal, where = self._signal(path)
        axes = _ordered_axes(signal)
        flags = [bool(a.get("navigate")) for a in axes]
        if flags and flags != sorted(flags, reverse=True):
            names = [(a.get("name"), "scan" if a.get("navigate") else "detector") for a in axes]
            raise DataError(f"{str(path)!r} ({where}): expected the scan (navigation) axes "
                            f"before the detector (signal) axes, found array axes {names}; "
                            f"transpose the signal so it is stored as (sy, sx, ky, kx)")
        return SignalSource(signal["data"], f"{str(path)!r} ({where})")

    def metadata(self, path: Path) -> FileMetadata:
        signal, where = self._signal(path)
        return axes_calibration(signal, where)


def _hdf5_marker(path: Path, check: Any) -> bool:
    if not is_hdf5(path):
        return False
    with open_h5(path) as f:
        return bool(check(f))


def _rsciio_installed() -> bool:
    return importlib.util.find_spec("rsciio") is not None


@attrs.frozen(kw_only=True)
class HyperSpyReader(RosettaReader):
    """HyperSpy .hspy (HDF5, whatever its suffix) and .zspy (zarr) files through
    rosettasciio; calibrations from the axes (nm / Å scan axes, 1/nm, 1/Å or mrad detector
    axes) and ``Acquisition_instrument.TEM`` (beam_energy keV, convergence_angle mrad)."""

    name: ClassVar[str] = "hspy"
    suffixes: ClassVar[tuple[str, ...]] = (".hspy", ".zspy")
    module: ClassVar[str] = "hspy"

    def sniff(self, path: Path) -> int:
        if path.suffix.lower() == ".zspy":
            return SNIFF_CONTENT
        hspy = _hdf5_marker(path, lambda f: decode(f.attrs.get("file_format")) == "HyperSpy")
        if hspy and _rsciio_installed():
            return SNIFF_CONTENT
        # without rosettasciio the generic HDF5 reader still reads the data of a .hspy file
        return 0 if hspy or not path.suffix.lower() == ".hspy" else SNIFF_SUFFIX

    def module_for(self, path: Path) -> str:
        return "zspy" if path.suffix.lower() == ".zspy" else "hspy"


@attrs.frozen(kw_only=True)
class MerlinReader(RosettaReader):
    """Quantum Detectors Merlin .mib files (Medipix) through rosettasciio; the scan shape
    comes from the .hdr/.mib header when it is there, else from ``navigation_shape``."""

    name: ClassVar[str] = "merlin"
    suffixes: ClassVar[tuple[str, ...]] = (".mib",)
    module: ClassVar[str] = "quantumdetector"


@attrs.frozen(kw_only=True)
class DigitalMicrographReader(RosettaReader):
    """Gatan Digital Micrograph .dm3/.dm4 files through rosettasciio."""

    name: ClassVar[str] = "digitalmicrograph"
    suffixes: ClassVar[tuple[str, ...]] = (".dm3", ".dm4")
    module: ClassVar[str] = "digitalmicrograph"


@attrs.frozen(kw_only=True)
class EmpadReader(RosettaReader):
    """EMPAD .xml (+ its .raw) files through rosettasciio."""

    name: ClassVar[str] = "empad"
    suffixes: ClassVar[tuple[str, ...]] = (".xml",)
    module: ClassVar[str] = "empad"


@attrs.frozen(kw_only=True)
class MrcReader(RosettaReader):
    """.mrc stacks of diffraction patterns through rosettasciio (set ``navigation_shape``
    when the file or its metadata file does not give the scan shape)."""

    name: ClassVar[str] = "mrc"
    suffixes: ClassVar[tuple[str, ...]] = (".mrc",)
    module: ClassVar[str] = "mrc"


@attrs.frozen(kw_only=True)
class VeloxReader(RosettaReader):
    """Thermo Fisher Velox .emd files through rosettasciio (told apart from EMD 1.0 files by
    their ``Data`` and ``Version`` entries)."""

    name: ClassVar[str] = "velox"
    suffixes: ClassVar[tuple[str, ...]] = (".emd",)
    module: ClassVar[str] = "emd"

    def sniff(self, path: Path) -> int:
        if _hdf5_marker(path, lambda f: "Version" in f and "Data" in f):
            return SNIFF_CONTENT
        return 0


ROSETTA_READERS = (HyperSpyReader, MerlinReader, DigitalMicrographReader, EmpadReader,
                   MrcReader, VeloxReader)
