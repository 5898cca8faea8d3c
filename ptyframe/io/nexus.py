"""Export an output folder to one NeXus/HDF5 (``.nxs``) file.

Structure written by :func:`export_nexus` (every group carries its ``NX_class``)::

    /                               NXroot   default="entry"
    /entry                          NXentry  default="object_phase"
        program_name, title, epoch
        object_phase                NXdata   phase (n_slices, n_modes, y, x) [rad]
        object_amplitude            NXdata   amplitude (n_slices, n_modes, y, x)
        probe                       NXdata   amplitude, phase (n_modes, ny, nx)
        positions                   NXdata   positions (N, 2) = [y, x] [pixel]
        tilts                       NXdata   tilts (N, 6) [rad]           (when present)
        static_background, beam_current, aberrations, ...   NXdata       (when present)
        reconstruction              NXprocess program, version, date
            parameters              NXnote   parameters.json text (type application/json)
            loss_log                NXcollection one dataset per loss.csv column

Images use the internal order (slowest axis first, image axes last) so that NeXus viewers
show y, x images; the ``.npy`` files in the folder keep the reference layout. Axis datasets
``y``/``x`` are in angstrom when ``parameters.json`` gives ``grid.pixel_size_A``, else in
pixels. The arrays come from the folder's last complete checkpoint (``state.json``); without
one, from the ``co.npy``/``cp.npy``/... files present, or else from the newest
``checkpoint_*_epoch_N.npy`` set.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ptyframe.core.blocks import PARAMETER_BLOCKS
from ptyframe.io import results

__all__ = ["export_nexus", "DEFAULT_NEXUS_NAME"]

DEFAULT_NEXUS_NAME = "reconstruction.nxs"

_UNITS = {b.name: b.units for b in PARAMETER_BLOCKS if b.units}


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("ptyframe")
    except Exception:  # not installed: still export
        return "unknown"


def _load_arrays(folder: Path) -> tuple[dict[str, np.ndarray], int | None]:
    """The folder's arrays in internal layout, and the epoch they belong to (if known)."""
    try:
        return results.load_state(folder, recover=False)
    except (FileNotFoundError, ValueError):
        pass
    arrays: dict[str, np.ndarray] = {}
    for name, file_name in results.CHECKPOINT_FILES.items():
        path = folder / file_name
        if path.is_file():
            arrays[name] = results.from_reference_layout(name, np.load(path, allow_pickle=False))
    if arrays:
        return arrays, None
    pattern = re.compile(r"checkpoint_(.+)_epoch_(\d+)\.npy$")
    by_epoch: dict[int, dict[str, Path]] = {}
    short_to_name = {v: k for k, v in results.EPOCH_CHECKPOINT_NAMES.items()}
    for path in folder.glob("checkpoint_*_epoch_*.npy"):
        match = pattern.match(path.name)
        if match:
            name = short_to_name.get(match.group(1), match.group(1))
            by_epoch.setdefault(int(match.group(2)), {})[name] = path
    if not by_epoch:
        return {}, None
    epoch = max(by_epoch)
    return {
        name: results.from_reference_layout(name, np.load(path, allow_pickle=False))
        for name, path in by_epoch[epoch].items()
    }, epoch


def _pixel_size(parameters: Mapping[str, Any] | None) -> float | None:
    if not parameters:
        return None
    value: Any = parameters.get("grid.pixel_size_A")
    grid = parameters.get("grid")
    if value is None and isinstance(grid, Mapping):
        value = grid.get("pixel_size_A")
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) and value > 0 else None


def _set_nx(group: h5py.Group, nx_class: str, **attributes: Any) -> h5py.Group:
    group.attrs["NX_class"] = nx_class
    for key, value in attributes.items():
        group.attrs[key] = value
    return group


def _image_axes(group: h5py.Group, shape: tuple[int, ...], leading: list[str],
                pixel_size: float | None) -> list[str]:
    """Write index axes for the leading dimensions and y/x axes; return the axes list."""
    names = [*leading, "y", "x"][-len(shape):] if len(shape) >= 2 else ["x"]
    for axis, (name, n) in enumerate(zip(names, shape, strict=True)):
        if name in ("y", "x"):
            if pixel_size is not None:
                ds = group.create_dataset(name, data=np.arange(n) * pixel_size)
                ds.attrs["units"] = "angstrom"
            else:
                ds = group.create_dataset(name, data=np.arange(n, dtype=np.float64))
                ds.attrs["units"] = "pixel"
        else:
            ds = group.create_dataset(name, data=np.arange(n))
        group.attrs[f"{name}_indices"] = axis
    return names


def _write_image(entry: h5py.Group, group_name: str, signals: dict[str, np.ndarray],
                 leading: list[str], pixel_size: float | None, long_name: str,
                 units: dict[str, str]) -> None:
    group = _set_nx(entry.create_group(group_name), "NXdata")
    first = next(iter(signals))
    for name, data in signals.items():
        ds = group.create_dataset(name, data=data, compression="gzip", shuffle=True)
        if name in units:
            ds.attrs["units"] = units[name]
        ds.attrs["long_name"] = f"{long_name} {name}"
    group.attrs["signal"] = first
    if len(signals) > 1:
        group.attrs["auxiliary_signals"] = [s for s in signals if s != first]
    group.attrs["axes"] = _image_axes(group, signals[first].shape, leading, pixel_size)


def _write_table(entry: h5py.Group, name: str, data: np.ndarray) -> None:
    group = _set_nx(entry.create_group(name), "NXdata")
    if np.iscomplexobj(data):
        signals = {"real": data.real, "imag": data.imag}
    else:
        signals = {name: data}
    first = next(iter(signals))
    for key, value in signals.items():
        ds = group.create_dataset(key, data=value)
        if name in _UNITS:
            ds.attrs["units"] = _UNITS[name]
    group.attrs["signal"] = first
    if len(signals) > 1:
        group.attrs["auxiliary_signals"] = [s for s in signals if s != first]
    data = np.asarray(data)
    if data.ndim >= 1:
        group.attrs["axes"] = ["index"] + ["."] * (data.ndim - 1)
        group.create_dataset("index", data=np.arange(data.shape[0]))
        group.attrs["index_indices"] = 0
    if name == "positions" and data.ndim == 2 and data.shape[1] == 2:
        group.attrs["columns"] = ["y", "x"]
    if name == "tilts" and data.ndim == 2 and data.shape[1] == 6:
        group.attrs["columns"] = [
            "y_before", "x_before", "y_inside", "x_inside", "y_after", "x_after"]


def export_nexus(output_folder: str | os.PathLike, nxs_path: str | os.PathLike | None = None
                 ) -> Path:
    """Write the results of an output folder into one NeXus file; return its path.

    ``nxs_path`` defaults to ``<output_folder>/reconstruction.nxs``. The file is written to a
    temporary name and renamed, so an interrupted export never leaves a half-written file.
    """
    folder = Path(output_folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"NeXus export: output folder {folder} does not exist")
    nxs = Path(nxs_path) if nxs_path is not None else folder / DEFAULT_NEXUS_NAME
    arrays, epoch = _load_arrays(folder)
    parameters_text: str | None = None
    parameters: dict[str, Any] | None = None
    if (folder / results.PARAMETERS_FILE).is_file():
        parameters_text = (folder / results.PARAMETERS_FILE).read_text(encoding="utf-8")
        with contextlib.suppress(ValueError):
            parameters = json.loads(parameters_text)
    loss: dict[str, np.ndarray] | None = None
    if (folder / results.LOSS_FILE).is_file():
        loss = results.read_loss_log(folder / results.LOSS_FILE)
    if not arrays and parameters_text is None and loss is None:
        raise FileNotFoundError(
            f"NeXus export: {folder} holds no checkpoint arrays, {results.PARAMETERS_FILE} "
            f"or {results.LOSS_FILE}"
        )
    pixel_size = _pixel_size(parameters if isinstance(parameters, dict) else None)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()

    nxs.parent.mkdir(parents=True, exist_ok=True)
    with results.atomic_path(nxs) as tmp_name:
        with h5py.File(tmp_name, "w") as f:
            _set_nx(f, "NXroot", default="entry", file_name=nxs.name, file_time=now,
                    creator="ptyframe", creator_version=_version(),
                    HDF5_Version=h5py.version.hdf5_version, h5py_version=h5py.version.version)
            entry = _set_nx(f.create_group("entry"), "NXentry")
            entry.create_dataset("program_name", data="ptyframe").attrs["version"] = _version()
            entry.create_dataset("title", data=f"ptyframe reconstruction {folder.name}")
            if epoch is not None:
                entry.create_dataset("epoch", data=int(epoch))
            written = set()
            if "object" in arrays:
                obj = arrays["object"]
                _write_image(entry, "object_phase", {"phase": np.angle(obj)},
                             ["slice", "object_mode"], pixel_size, "object", {"phase": "rad"})
                _write_image(entry, "object_amplitude", {"amplitude": np.abs(obj)},
                             ["slice", "object_mode"], pixel_size, "object", {})
                entry.attrs["default"] = "object_phase"
                written.add("object")
            if "probe" in arrays:
                probe = arrays["probe"]
                leading = ["probe_mode"] if probe.ndim == 3 else ["subscan", "probe_mode"]
                _write_image(entry, "probe", {"amplitude": np.abs(probe),
                                              "phase": np.angle(probe)},
                             leading, pixel_size, "probe", {"phase": "rad"})
                entry.attrs.setdefault("default", "probe")
                written.add("probe")
            for name, data in arrays.items():
                if name not in written:
                    _write_table(entry, name, np.asarray(data))
            process = _set_nx(entry.create_group("reconstruction"), "NXprocess")
            process.create_dataset("program", data="ptyframe")
            process.create_dataset("version", data=_version())
            process.create_dataset("date", data=now)
            if pixel_size is not None:
                ds = process.create_dataset("pixel_size", data=pixel_size)
                ds.attrs["units"] = "angstrom"
            if parameters_text is not None:
                note = _set_nx(process.create_group("parameters"), "NXnote")
                note.create_dataset("type", data="application/json")
                note.create_dataset("file_name", data=results.PARAMETERS_FILE)
                note.create_dataset("data", data=parameters_text)
            if loss is not None:
                log = _set_nx(process.create_group("loss_log"), "NXcollection")
                for column, values in loss.items():
                    if values.dtype.kind == "U":
                        values = values.astype(object)
                        log.create_dataset(column, data=values, dtype=h5py.string_dtype())
                    else:
                        log.create_dataset(column, data=values)
                    if column.endswith("time_s"):
                        log[column].attrs["units"] = "s"
    return nxs
