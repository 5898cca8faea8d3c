"""EMD 1.0 files (emdfile, py4DSTEM, and the original Berkeley EMD layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import attrs
import h5py
import numpy as np

from ptyframe.components import FileMetadata, PatternSource, Reader
from ptyframe.components.reader import SNIFF_CONTENT
from ptyframe.io.data import DataError, H5Source

from ._h5 import dataset_name, decode, is_hdf5, open_h5, root_attributes
from ._units import detector_calibration, scan_step_A

__all__ = ["EMDReader"]

#: emd_group_type of an array/data group: 1 in the original EMD 1.0, "array" in emdfile
_ARRAY_TYPES = (1, "1", "array")


def _is_emd(f: h5py.File) -> bool:
    return "version_major" in f.attrs or "emd_group_type" in f.attrs


def _array_groups(f: h5py.File) -> list[str]:
    """Paths of EMD data groups holding a 3D/4D ``data`` dataset, in file order."""
    found: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Group) and decode(obj.attrs.get("emd_group_type")) in \
                _ARRAY_TYPES and isinstance(obj.get("data"), h5py.Dataset) \
                and obj["data"].ndim in (3, 4):
            found.append(name)

    f.visititems(visit)
    return found


def _dim_step(ds: h5py.Dataset) -> float | None:
    """Sampling step of an EMD dim vector (full vector, or (start, step) pair in emdfile)."""
    values = np.asarray(ds[()], dtype=float).ravel()
    if values.size < 2 or not np.all(np.isfinite(values)):
        return None
    return float(values[1] - values[0])


def _calibration_groups(f: h5py.File) -> list[str]:
    found: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Group) and name.rsplit("/", 1)[-1] == "calibration":
            found.append(name)

    f.visititems(visit)
    return found


@attrs.frozen(kw_only=True)
class EMDReader(Reader):
    """EMD 1.0 file (emdfile / py4DSTEM DataCube, or the original EMD layout).

    ``dataset``: path of the data group (or of its ``data`` dataset) to read; default: the
    single EMD array group holding 3D/4D data. Calibrations: the group's dim vectors (scan
    axes in Å or nm -> ``scan_step_A``; detector axes in 1/Å, 1/nm or mrad -> the detector
    pixel size), then a py4DSTEM ``calibration`` metadata group (``R_pixel_size`` /
    ``R_pixel_units``, ``Q_pixel_size`` / ``Q_pixel_units``) on top; ``QR_rotation_degrees``
    and ``QR_flip`` are reported under their own names, not mapped (py4DSTEM's rotation sign
    convention is not ptyframe's). The root attributes are kept as well.
    """

    name: ClassVar[str] = "emd"
    suffixes: ClassVar[tuple[str, ...]] = (".emd", ".h5", ".hdf5")

    dataset: str | None = attrs.field(default=None, validator=dataset_name)

    def sniff(self, path: Path) -> int:
        if not is_hdf5(path):
            return 0
        with open_h5(path) as f:
            return SNIFF_CONTENT if _is_emd(f) and _array_groups(f) else 0

    def _group(self, f: h5py.File, path: Path) -> str:
        if self.dataset is not None:
            name = self.dataset.strip("/")
            return name[: -len("/data")] if name.endswith("/data") else name
        groups = _array_groups(f)
        if len(groups) != 1:
            found = ", ".join(repr(g) for g in groups) or "none"
            raise DataError(f"dataset_name: expected one EMD data group with 3D/4D data in "
                            f"{str(path)!r}, found {found}; pass dataset_name= to choose")
        return groups[0]

    def open(self, path: Path) -> PatternSource:
        with open_h5(path) as f:
            group = self._group(f, path)
        return H5Source(path, f"{group}/data")

    def metadata(self, path: Path) -> FileMetadata:
        with open_h5(path) as f:
            values, origins = root_attributes(f)
            group = self._group(f, path)
            g = f[group]
            ndim = g["data"].ndim
            scan_steps: list[tuple[float, str]] = []
            first = 0 if "dim0" in g else 1  # emdfile: dim0..; the original EMD: dim1..
            dims = [g.get(f"dim{i}") for i in range(first, first + ndim)]
            for axis, d in enumerate(dims):
                if not isinstance(d, h5py.Dataset):
                    continue
                step, units = _dim_step(d), decode(d.attrs.get("units", ""))
                where = f"{d.name} (units {units!r})"
                if step is None:
                    continue
                if axis >= ndim - 2:
                    hit = detector_calibration(step, units)
                    if hit is not None and hit[0] not in values:  # the ky axis gives it
                        values[hit[0]], origins[hit[0]] = hit[1], where
                elif ndim == 4:
                    step_a = scan_step_A(step, units)
                    if step_a is not None:
                        scan_steps.append((step_a, where))
            if scan_steps:
                steps = [v for v, _ in scan_steps]
                same = len(steps) == 1 or abs(steps[0] - steps[-1]) <= 1e-9 * abs(steps[0])
                values["scan_step_A"] = steps[0] if same else steps
                origins["scan_step_A"] = ", ".join(w for _, w in scan_steps)
            if ndim == 4:
                values["scan_shape"] = list(g["data"].shape[:2])
                origins["scan_shape"] = f"shape of {g['data'].name}"
            for cal_path in _calibration_groups(f):
                cal = f[cal_path]
                read = {k: decode(v[()]) for k, v in cal.items() if isinstance(v, h5py.Dataset)}
                where = f"py4DSTEM calibration {cal.name}"
                hit = detector_calibration(read.get("Q_pixel_size"), read.get("Q_pixel_units"))
                if hit is not None:
                    for key in ("detector_pixel_size_inv_A", "detector_pixel_size_mrad"):
                        values.pop(key, None)
                        origins.pop(key, None)
                    values[hit[0]], origins[hit[0]] = hit[1], f"{where}/Q_pixel_size"
                step_a = scan_step_A(read.get("R_pixel_size"), read.get("R_pixel_units"))
                if step_a is not None:
                    values["scan_step_A"] = step_a
                    origins["scan_step_A"] = f"{where}/R_pixel_size"
                for key in ("QR_rotation_degrees", "QR_flip"):
                    if key in read:
                        values[f"py4dstem_{key}"] = read[key]
                        origins[f"py4dstem_{key}"] = f"{where}/{key}"
        return FileMetadata(values, origins)
