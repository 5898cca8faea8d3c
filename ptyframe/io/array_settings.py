"""Array-valued settings: given in memory, as a .npy path, or as a nested list in a config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

__all__ = ["ArraySetting", "load_array_setting", "load_npy", "load_phase_plates"]

#: arrays up to this many elements are written into parameters.json as nested lists
INLINE_LIMIT = 4096


class ArraySetting:
    """An array plus where it came from, so that a configuration can name it again."""

    def __init__(self, name: str, array: np.ndarray, source: str | None = None) -> None:
        self.name = name
        self.array = array
        self.source = source

    def to_config(self) -> Any:
        if self.source is not None:
            return self.source
        if self.array.size <= INLINE_LIMIT and not np.iscomplexobj(self.array):
            return self.array.tolist()
        return {"in_memory_array": list(self.array.shape), "dtype": str(self.array.dtype)}


def load_npy(setting: str, path: str | Path, *, shape: tuple[int, ...] | None = None,
             real: bool = False, finite: bool = True, low: float | None = None,
             high: float | None = None) -> np.ndarray:
    """A numeric (or boolean) array from a ``.npy`` file, never unpickled; every failure is a
    ValueError naming ``setting``, what was expected and what was found.

    ``shape``: required shape; ``real``: reject complex data; ``finite``: reject NaN/inf;
    ``low``/``high``: required value range (implies ``real`` and ``finite``).
    """
    text = str(path)
    p = Path(path)
    if p.suffix != ".npy":
        raise ValueError(f"{setting}: expected a .npy file, found {text!r}")
    if not p.is_file():
        raise ValueError(f"{setting}: file not found: {text!r}")
    try:
        array = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{setting}: cannot read {text!r} as a numeric .npy array: "
                         f"{exc}") from None
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise ValueError(f"{setting}: expected numbers in {text!r}, found dtype {array.dtype}")
    if (real or low is not None or high is not None) and np.iscomplexobj(array):
        raise ValueError(f"{setting}: expected a real array in {text!r}, found dtype "
                         f"{array.dtype}")
    if shape is not None and array.shape != tuple(shape):
        raise ValueError(f"{setting}: expected an array of shape {tuple(shape)} in {text!r}, "
                         f"found {array.shape}")
    if low is not None or high is not None:
        lo = -np.inf if low is None else low
        hi = np.inf if high is None else high
        values = array.astype(float)
        if values.size and (not np.all(np.isfinite(values)) or values.min() < lo
                            or values.max() > hi):
            raise ValueError(f"{setting}: expected finite values in [{lo}, {hi}] in {text!r}, "
                             f"found range [{np.nanmin(values):g}, {np.nanmax(values):g}]")
    elif finite and not np.all(np.isfinite(array)):
        raise ValueError(f"{setting}: {text!r} contains NaN or infinite values")
    return array


def load_array_setting(name: str, value: Any, *, ndim: tuple[int, ...] | None = None,
                       integer: bool = False, base_dir: Path | None = None
                       ) -> ArraySetting | None:
    """Array from an ndarray, a nested list, or a path to a .npy file; None stays None.

    ``ndim``: accepted numbers of dimensions; ``integer``: require integer values. Errors name
    the setting, what was expected and what was found.
    """
    if value is None:
        return None
    source = None
    if isinstance(value, (str, Path)):
        path = Path(value)
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        if path.suffix.lower() != ".npy":
            raise ValueError(f"{name}: expected a .npy file, a list or an array, found {value!r}")
        if not path.exists():
            raise ValueError(f"{name}: file {path} does not exist")
        array = np.load(path, allow_pickle=False)
        source = str(value)
    elif isinstance(value, dict):
        raise ValueError(f"{name}: expected an array, a nested list or a .npy path, found a "
                         f"table {sorted(value)} (in-memory arrays cannot be restored from a "
                         "parameters file)")
    else:
        try:
            array = np.asarray(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}: expected an array, found {type(value).__name__}: "
                             f"{exc}") from None
    if array.dtype == object:
        raise ValueError(f"{name}: expected a numeric array, found ragged or non-numeric data")
    if ndim is not None and array.ndim not in ndim:
        raise ValueError(f"{name}: expected {' or '.join(map(str, ndim))} dimensions, found "
                         f"shape {array.shape}")
    if integer:
        if not (np.issubdtype(array.dtype, np.integer)
                or (np.issubdtype(array.dtype, np.floating) and array.size
                    and np.all(array == np.round(array)))):
            raise ValueError(f"{name}: expected integers, found dtype {array.dtype}")
        array = array.astype(np.int64)
    elif not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"{name}: expected numbers, found dtype {array.dtype}")
    if array.size and not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: expected finite values, found NaN or inf")
    return ArraySetting(name, array, source)


def load_phase_plates(value: Any, base_dir: Path | None = None) -> ArraySetting | None:
    """Phase plates (N, ny, nx): an array, a .npy path, or an HDF5 file / ``{"path", "dataset"}``
    table whose dataset (default "configs", the reference's name) holds them.

    Real values are phases in radians (the factor is exp(i plate)); complex values are used as
    they are. Centred on the probe's reciprocal grid (zero frequency at N//2).
    """
    if value is None:
        return None
    if isinstance(value, dict) or (isinstance(value, (str, Path))
                                   and Path(value).suffix.lower() in (".h5", ".hdf5")):
        spec = dict(value) if isinstance(value, dict) else {"path": str(value)}
        unknown = set(spec) - {"path", "dataset"}
        if unknown or "path" not in spec:
            raise ValueError(f"phase_plates: expected {{path, dataset}}, found {sorted(spec)}")
        path = Path(spec["path"])
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        dataset = spec.get("dataset", "configs")
        if not path.exists():
            raise ValueError(f"phase_plates: file {path} does not exist")
        with h5py.File(path, "r") as f:
            if dataset not in f:
                raise ValueError(f"phase_plates: {path} has no dataset {dataset!r}; found "
                                 f"{sorted(f.keys())}")
            array = np.asarray(f[dataset][...])
        setting = load_array_setting("phase_plates", array, ndim=(3,))
        setting.source = {"path": str(spec["path"]), "dataset": dataset}  # type: ignore[assignment]
        return setting
    return load_array_setting("phase_plates", value, ndim=(3,), base_dir=base_dir)
