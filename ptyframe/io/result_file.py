"""The standard result file of a run: one NeXus/HDF5 file (``result.nxs``).

Written at the end of every ``ptyframe run`` and by ``ptyframe export OUTPUT_DIR``; read back
by :func:`ptyframe.open_result`. It follows the NXcxi_ptycho application definition for the
ptychography part and NXem conventions where they apply (``definition``, ``start_time``,
``end_time``, NXinstrument/NXsource/NXbeam, NXsample, NXprocess with the program and its
configuration). Every group carries ``NX_class``; lengths are in Å (``units="Å"``), angles
in rad or mrad as named. The field list is in docs/results.md; in short::

    /                                   NXroot   default=entry
    /entry                              NXentry  default=object_phase
        definition = "NXcxi_ptycho"     title, start_time, end_time, program_name
        instrument                      NXinstrument
            source                      NXsource  type, probe="electron", voltage [kV]
            beam                        NXbeam    incident_energy [keV], incident_wavelength [Å],
                                                  convergence_semi_angle [mrad], aberrations/
            detector                    NXdetector shape, reciprocal pixel size [1/Å],
                                                  data_file, data_sha256
        sample                          NXsample  name
        object_phase                    NXdata    phase (y, x) [rad], scanned area; y, x [Å]
        object                          NXdata    complex (slice, mode, y, x), full; y, x [Å]
        probe                           NXdata    complex (mode, y, x); y, x [Å]; mode_power
        positions                       NXdata    positions (N, 2) [Å], initial_positions
        reconstruction                  NXprocess program, version, date, epochs,
                                                  configuration (NXnote, JSON),
                                                  provenance (NXnote, JSON, and one field each),
                                                  loss_log (NXcollection), blocks (NXcollection)

HyperSpy opens the phase as one 2-D signal with Å axes: ``hs.load("result.nxs",
use_default=True)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ptyframe.io.provenance import now_iso
from ptyframe.io.results import atomic_path
from ptyframe.io.run_result import RunResult, open_result

__all__ = ["write_result_file", "read_result_file", "export_result", "RESULT_FILE",
           "DEFINITION"]

RESULT_FILE = "result.nxs"
DEFINITION = "NXcxi_ptycho"
_ANGSTROM = "Å"


def _group(parent: h5py.Group, name: str, nx_class: str, **attributes: Any) -> h5py.Group:
    group = parent.create_group(name)
    group.attrs["NX_class"] = nx_class
    for key, value in attributes.items():
        group.attrs[key] = value
    return group


def _field(group: h5py.Group, name: str, value: Any, units: str | None = None,
           **attributes: Any) -> h5py.Dataset:
    if isinstance(value, str):
        ds = group.create_dataset(name, data=value, dtype=h5py.string_dtype())
    else:
        array = np.asarray(value)
        big = array.size > 1024
        ds = group.create_dataset(name, data=array, compression="gzip" if big else None,
                                  shuffle=big)
    if units is not None:
        ds.attrs["units"] = units
    for key, item in attributes.items():
        ds.attrs[key] = item
    return ds


def _image_data(parent: h5py.Group, name: str, signal: np.ndarray, y: np.ndarray,
                x: np.ndarray, leading: list[str], units: str | None, long_name: str
                ) -> h5py.Group:
    # ``interpretation`` on the field is NeXus; HyperSpy's reader looks for it on the group
    group = _group(parent, name, "NXdata", signal="data", interpretation="image")
    _field(group, "data", signal, units, long_name=long_name, interpretation="image")
    axes = [*leading, "y", "x"]
    group.attrs["axes"] = axes
    for i, axis in enumerate(leading):
        _field(group, axis, np.arange(signal.shape[i]))
        group.attrs[f"{axis}_indices"] = i
    _field(group, "y", y, _ANGSTROM, long_name="y")
    _field(group, "x", x, _ANGSTROM, long_name="x")
    group.attrs["y_indices"] = len(leading)
    group.attrs["x_indices"] = len(leading) + 1
    return group


def _instrument(entry: h5py.Group, result: RunResult) -> None:
    experiment = result.config.get("experiment")
    experiment = experiment if isinstance(experiment, Mapping) else {}
    instrument = _group(entry, "instrument", "NXinstrument")
    source = _group(instrument, "source", "NXsource")
    _field(source, "name", "electron microscope")
    _field(source, "type", "Electron Beam")
    _field(source, "probe", "electron")
    beam = _group(instrument, "beam", "NXbeam")
    if "voltage_kV" in experiment:
        _field(source, "voltage", float(experiment["voltage_kV"]), "kV")
        _field(beam, "incident_energy", float(experiment["voltage_kV"]), "keV")
    if result.wavelength_A is not None:
        _field(beam, "incident_wavelength", result.wavelength_A, _ANGSTROM)
    if "convergence_angle_mrad" in experiment:
        _field(beam, "convergence_semi_angle", float(experiment["convergence_angle_mrad"]),
               "mrad")
    aberrations = experiment.get("aberrations") or {}
    if aberrations:
        ab = _group(beam, "aberrations", "NXcollection")
        for key, value in aberrations.items():
            _field(ab, str(key), float(value), _ANGSTROM)
    detector = _group(instrument, "detector", "NXdetector")
    _field(detector, "description", "pixelated diffraction detector (4D-STEM)")
    ny, nx = result.window
    _field(detector, "shape", np.array([ny, nx]))
    _field(detector, "reciprocal_pixel_size", 1.0 / (ny * result.pixel_size_A), "1/Å")
    if experiment.get("detector_pixel_size_mrad") is not None:
        _field(detector, "angular_pixel_size", float(experiment["detector_pixel_size_mrad"]),
               "mrad")
    prov = result.provenance
    if prov.get("input_file"):
        _field(detector, "data_file", str(prov["input_file"]))
    if prov.get("input_sha256"):
        _field(detector, "data_sha256", str(prov["input_sha256"]))


def _process(entry: h5py.Group, result: RunResult) -> None:
    prov = result.provenance
    process = _group(entry, "reconstruction", "NXprocess")
    _field(process, "program", "ptyframe")
    _field(process, "version", str(prov.get("version") or "unknown"))
    _field(process, "date", str(prov.get("end_time") or now_iso()))
    _field(process, "sequence_index", 1)
    if result.epoch is not None:
        _field(process, "epochs", int(result.epoch))
    _field(process, "pixel_size", result.pixel_size_A, _ANGSTROM)
    _field(process, "origin", np.asarray(result.origin_A, dtype=float), _ANGSTROM)
    note = _group(process, "configuration", "NXnote")
    _field(note, "type", "application/json")
    _field(note, "data", json.dumps(result.config, indent=1, sort_keys=True))
    note = _group(process, "provenance", "NXnote")
    _field(note, "type", "application/json")
    _field(note, "data", json.dumps(prov, indent=1, sort_keys=True))
    for key, value in prov.items():
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            _field(note, key, value, "s" if key.endswith("_s") else None)
    if result.loss:
        log = _group(process, "loss_log", "NXcollection")
        for column, values in result.loss.items():
            if values.dtype.kind in "UO":
                log.create_dataset(column, data=values.astype(object),
                                   dtype=h5py.string_dtype())
            else:
                _field(log, column, values, "s" if column.endswith("_s") else None)
    if result.extra:
        blocks = _group(process, "blocks", "NXcollection")
        for name, value in result.extra.items():
            _field(blocks, name, np.asarray(value))


def write_result_file(result: RunResult, path: str | os.PathLike) -> Path:
    """Write ``result`` as a NeXus file at ``path`` (atomically: a temporary file renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prov = result.provenance
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["NX_class"] = "NXroot"
            f.attrs["default"] = "entry"
            f.attrs["file_name"] = path.name
            f.attrs["file_time"] = now_iso()
            f.attrs["creator"] = "ptyframe"
            f.attrs["creator_version"] = str(prov.get("version") or "unknown")
            f.attrs["HDF5_Version"] = h5py.version.hdf5_version
            entry = _group(f, "entry", "NXentry", default="object_phase")
            _field(entry, "definition", DEFINITION)
            _field(entry, "title", f"ptyframe reconstruction"
                   f"{' of ' + Path(prov['input_file']).name if prov.get('input_file') else ''}")
            _field(entry, "start_time", str(prov.get("start_time") or now_iso()))
            _field(entry, "end_time", str(prov.get("end_time") or now_iso()))
            _field(entry, "program_name", "ptyframe",
                   version=str(prov.get("version") or "unknown"))
            _instrument(entry, result)
            sample = _group(entry, "sample", "NXsample")
            name = result.config.get("sample_name") if isinstance(
                result.config.get("sample_name"), str) else "unknown"
            _field(sample, "name", name)
            crop = result.scanned_area()
            y, x = result.axes_A()
            _image_data(entry, "object_phase", result.phase[crop], y[crop[0]], x[crop[1]], [],
                        "rad", "object phase (scanned area)")
            obj = _image_data(entry, "object", result.object, y, x, ["slice", "object_mode"],
                              None, "complex object transmission")
            _field(obj, "scanned_area", np.array([crop[0].start, crop[0].stop,
                                                  crop[1].start, crop[1].stop]),
                   long_name="scanned area: y start, y stop, x start, x stop (pixels)")
            ny, nx = result.window
            py = result.pixel_size_A * (np.arange(ny) - ny // 2)
            px = result.pixel_size_A * (np.arange(nx) - nx // 2)
            probe = result.probe
            leading = ["probe_mode"] if probe.ndim == 3 else ["subscan", "probe_mode"]
            pgroup = _image_data(entry, "probe", probe, py, px, leading, None, "complex probe")
            power = (np.abs(probe) ** 2).sum(axis=(-2, -1))
            _field(pgroup, "mode_power", power / power.sum(axis=-1, keepdims=True),
                   long_name="fraction of the intensity in each probe mode")
            pos = _group(entry, "positions", "NXdata", signal="positions",
                         axes=["index", "."], index_indices=0)
            _field(pos, "positions", result.positions_A, _ANGSTROM, columns=["y", "x"],
                   long_name="refined probe positions (y, x)")
            _field(pos, "index", np.arange(result.positions_A.shape[0]))
            if result.initial_positions_A is not None:
                _field(pos, "initial_positions", result.initial_positions_A, _ANGSTROM,
                       columns=["y", "x"], long_name="probe positions at the start (y, x)")
                pos.attrs["auxiliary_signals"] = ["initial_positions"]
            _process(entry, result)
    return path


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_result_file(path: str | os.PathLike) -> RunResult:
    """A :class:`RunResult` from a file written by :func:`write_result_file`."""
    path = Path(path)
    with h5py.File(path, "r") as f:
        entry = f.get("entry")
        definition = entry.get("definition") if isinstance(entry, h5py.Group) else None
        if not isinstance(definition, h5py.Dataset) or _text(definition[()]) != DEFINITION:
            raise ValueError(f"open_result: {path} is not a ptyframe result file (expected "
                             f"/entry/definition = {DEFINITION!r})")
        process = entry["reconstruction"]
        config = json.loads(_text(process["configuration/data"][()]))
        provenance = json.loads(_text(process["provenance/data"][()]))
        loss = {}
        if "loss_log" in process:
            for column, ds in process["loss_log"].items():
                values = ds[()]
                loss[column] = (np.array([_text(v) for v in values]) if values.dtype.kind == "O"
                                else values)
        extra = {k: v[()] for k, v in process["blocks"].items()} if "blocks" in process else {}
        wavelength = entry.get("instrument/beam/incident_wavelength")
        positions = entry["positions"]
        initial = positions["initial_positions"][()] if "initial_positions" in positions \
            else None
        return RunResult(
            object=entry["object/data"][()], probe=entry["probe/data"][()],
            positions_A=positions["positions"][()],
            pixel_size_A=float(process["pixel_size"][()]),
            origin_A=tuple(float(v) for v in process["origin"][()]),
            initial_positions_A=initial,
            wavelength_A=None if wavelength is None else float(wavelength[()]),
            epoch=int(process["epochs"][()]) if "epochs" in process else None,
            loss=loss, config=config, provenance=provenance, extra=extra, source=path)


def export_result(folder: str | os.PathLike, path: str | os.PathLike | None = None) -> Path:
    """Write the result file of an output folder (default ``<folder>/result.nxs``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"export: output folder {folder} does not exist")
    return write_result_file(open_result(folder), path if path is not None
                             else folder / RESULT_FILE)
