"""File metadata -> :class:`~ptyframe.core.experiment.Experiment` (and true probe positions).

Recognised keys and units (first spelling found wins; several spellings of one quantity that
disagree are an error naming both):

=============================  =============================================================
Experiment field               metadata keys
=============================  =============================================================
voltage_kV                     ``acc_voltage_kV``, ``voltage_kV`` (kV); Nion ``high_tension_v`` (V)
convergence_angle_mrad         ``convergence_semiangle_mrad``, ``convergence_angle_mrad``,
                               ``probe_semiangle_mrad`` (mrad, semi-angle)
detector_pixel_size_inv_A      ``detector_pixel_size_inv_A`` (1/Å per detector pixel)
detector_pixel_size_mrad       ``detector_pixel_size_mrad`` (mrad per detector pixel)
aberrations["C10"]             ``C10_A`` (Å); ``defocus_A`` (Å, C10 = -defocus);
                               Nion ``defocus`` / ``defocus_m`` (m, same sign as defocus_A)
aberrations[name]              ``<name>_A`` for any Krivanek name (``C12a_A`` ...; Å);
                               ``Cs_A`` = ``C30_A`` (Å)
scan_shape                     ``scan_shape`` (sy, sx); Nion ``scan_size`` (sy, sx)
scan_step_A                    ``scan_step_A`` (Å); else Nion ``fov_nm`` (nm) as
                               10 * fov_nm / max(scan_shape) (Nion: square scan pixels, the
                               field of view spans the longer scan axis)
scan_rotation_deg              ``scan_rotation_deg``, ``rotation_scan_to_detector_deg``
                               (degrees; rotation of the scan frame relative to the detector)
=============================  =============================================================

Keys are looked up at the top level first and then in nested dictionaries (a Nion sidecar
keeps them under ``metadata.hardware_source`` / ``metadata.scan``). A Nion sidecar carries no
detector calibration: pass ``detector_pixel_size_inv_A=`` or ``detector_pixel_size_mrad=``
(and usually ``convergence_angle_mrad=``) as overrides.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import h5py
import numpy as np

from ptyframe.components.reader import FileMetadata
from ptyframe.core.experiment import Experiment
from ptyframe.core.physics import ABERRATION_NAMES
from ptyframe.core.validators import positive_int_pair, reject_unknown_keys
from ptyframe.io.data import DataError

__all__ = [
    "MetadataError",
    "read_metadata",
    "read_file_metadata",
    "experiment_from_metadata",
    "positions_from_metadata",
    "load_experiment",
    "sidecar_path",
]

_H5_SUFFIXES = (".h5", ".hdf5")
_REL_TOL = 1e-6


class MetadataError(DataError):
    """Missing, malformed or contradictory metadata; the message names the key."""


# ---------------------------------------------------------------------------- reading
def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar of a data file: same folder and stem, suffix ``.json``."""
    return Path(path).with_suffix(".json")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            out = json.load(fh)
    except json.JSONDecodeError as exc:
        raise MetadataError(f"{str(path)!r}: expected a JSON object, could not parse it "
                            f"({exc})") from exc
    if not isinstance(out, dict):
        raise MetadataError(f"{str(path)!r}: expected a JSON object at the top level, found "
                            f"{type(out).__name__}")
    return out


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float),
                                rtol=_REL_TOL, atol=0))
    except (TypeError, ValueError):
        return a == b


def read_file_metadata(path: str | Path, reader: Any = None, dataset_name: str | None = None,
                       registry: Any = None) -> FileMetadata:
    """The metadata of a data file with the origin of every top-level value.

    The file's reader (``reader``, else the registered reader that recognises the file; see
    :func:`ptyframe.io.readers.select_reader`) gives what the file holds: HDF5 root
    attributes (bytes decoded, JSON-string attributes parsed, an attribute ``metadata_json``
    unpacked underneath the individual attributes), EMD / py4DSTEM / HyperSpy axis
    calibrations, Dectris detector geometry. A same-stem ``.json`` sidecar is merged on top,
    so **the sidecar wins** (it is the editable copy); a top-level key whose value differs
    between the two gives a warning naming it. A file no reader recognises contributes
    nothing (its sidecar still does).
    """
    from ptyframe.io.readers import select_reader

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"data file not found: {str(p)!r}")
    if p.suffix.lower() == ".json":
        values = _read_json(p)
        return FileMetadata(values, {k: f"{p.name}" for k in values})
    try:
        chosen = select_reader(p, reader, dataset_name=dataset_name, registry=registry)
    except DataError:
        if reader is not None or dataset_name is not None:
            raise
        chosen = None
    meta = chosen.metadata(p) if chosen is not None else FileMetadata()
    side = sidecar_path(p)
    if side.is_file():
        extra = _read_json(side)
        differing = sorted(k for k, v in extra.items()
                           if k in meta.values and not _same(meta.values[k], v))
        if differing:
            warnings.warn(f"metadata of {str(p)!r}: the sidecar {side.name!r} overrides the "
                          f"file's values of {differing}", stacklevel=3)
        meta = meta.merged(FileMetadata(extra, {k: f"sidecar {side.name}" for k in extra}))
    return meta


def read_metadata(path: str | Path, reader: Any = None, dataset_name: str | None = None,
                  registry: Any = None) -> dict[str, Any]:
    """Metadata of a data file as a plain dict (:func:`read_file_metadata` without the
    origins). Returns ``{}`` when there is no metadata."""
    return dict(read_file_metadata(path, reader, dataset_name, registry).values)


def positions_from_metadata(path: str | Path, expected_count: int | None = None
                            ) -> np.ndarray | None:
    """True probe positions (N, 2) as (y, x) in Å: HDF5 dataset ``positions_A``, else a
    ``positions_A`` list in the JSON sidecar; None when neither exists."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file not found: {str(p)!r}")
    raw: Any = None
    if p.suffix.lower() in _H5_SUFFIXES:
        with h5py.File(p, "r") as f:
            if isinstance(f.get("positions_A"), h5py.Dataset):
                raw = f["positions_A"][()]
    if raw is None and sidecar_path(p).is_file():
        raw = _read_json(sidecar_path(p)).get("positions_A")
    if raw is None:
        return None
    try:
        pos = np.asarray(raw, dtype=float)
    except (TypeError, ValueError):
        pos = np.zeros((0,))
    if pos.ndim != 2 or pos.shape[1] != 2 or not np.all(np.isfinite(pos)):
        raise MetadataError(f"positions_A ({str(p)!r}): expected finite (N, 2) positions (y, x) "
                            f"in Å, found shape {pos.shape}")
    if expected_count is not None and pos.shape[0] != expected_count:
        raise MetadataError(f"positions_A ({str(p)!r}): expected {expected_count} positions "
                            f"(one per pattern), found {pos.shape[0]}")
    return pos


# ---------------------------------------------------------------------------- interpretation
def _walk(meta: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, key, value) for every key; top level first, then nested dicts breadth-first."""
    nested = []
    for key, value in meta.items():
        yield f"{prefix}{key}", key, value
        if isinstance(value, Mapping):
            nested.append((f"{prefix}{key}.", value))
    for sub_prefix, sub in nested:
        yield from _walk(sub, sub_prefix)


def _number(path: str, value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise MetadataError(f"{path}: expected a number, found {value!r}") from None
    if not math.isfinite(out):
        raise MetadataError(f"{path}: expected a finite number, found {value!r}")
    return out


def _find(meta: Mapping[str, Any], keys: Mapping[str, Any], field: str,
          quantity: str | None = None) -> Any:
    """Value of ``field`` from whichever of ``keys`` ({key: converter(path, value)}) occur
    anywhere in ``meta``; None when none does; an error when two occurrences disagree
    (``quantity`` names the converted value in that message, e.g. "C10 in Å")."""
    hits = [(path, value, keys[key](path, value)) for path, key, value in _walk(meta)
            if key in keys and value is not None]
    if not hits:
        return None
    first = hits[0]
    for hit in hits[1:]:
        if not _same(first[2], hit[2]):
            def show(h: tuple[str, Any, Any]) -> str:
                text = f"{h[0]}={h[1]!r}"
                return text if quantity is None else f"{text} ({quantity}: {h[2]!r})"
            raise MetadataError(f"{field}: contradictory metadata, {show(first)} but "
                                f"{show(hit)}; pass {field}=... to choose")
    return first[2]


def _scale(factor: float):
    return lambda path, value: _number(path, value) * factor


def _volts(path: str, value: Any) -> float:
    v = _number(path, value)
    if v < 1000:
        raise MetadataError(f"{path}: expected the high tension in volts (e.g. 60000), found "
                            f"{value!r}; pass voltage_kV=... if this is not a voltage in V")
    return v * 1e-3


def _defocus_m(path: str, value: Any) -> float:
    v = _number(path, value)
    if abs(v) > 1e-3:
        raise MetadataError(f"{path}: expected a Nion defocus in metres (|value| < 1 mm), found "
                            f"{value!r}; pass defocus_A=... (Å, positive = underfocus)")
    return -v * 1e10  # C10 in Å


def _pair(path: str, value: Any) -> tuple[int, int]:
    return positive_int_pair(value, path, MetadataError)


def _c10(meta: Mapping[str, Any]) -> float | None:
    return _find(meta, {"C10_A": _scale(1.0), "defocus_A": _scale(-1.0),
                        "defocus": _defocus_m, "defocus_m": _defocus_m}, "defocus_A",
                 quantity="C10 in Å")


def _aberrations(meta: Mapping[str, Any], with_c10: bool = True) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in ABERRATION_NAMES:
        keys: dict[str, Any] = {f"{name}_A": _scale(1.0)}
        if name == "C10":
            value = _c10(meta) if with_c10 else None
        else:
            if name == "C30":
                keys["Cs_A"] = _scale(1.0)
            value = _find(meta, keys, f"aberrations[{name!r}]")
        if value is not None and value != 0.0:
            out[name] = value
    return out


_FIELDS = tuple(f.name for f in attrs.fields(Experiment))
_CONVENIENCE = ("defocus_A",)


def _missing(field: str, keys: str, unit: str) -> MetadataError:
    return MetadataError(f"{field}: not found in the metadata (looked for {keys}); give it "
                         f"({unit}) in the config's [experiment] table ({field} = ...), on the "
                         f"command line (--set experiment.{field}=...), or in Python "
                         f"(load_experiment(path, {field}=...))")


def experiment_from_metadata(meta: Mapping[str, Any], **overrides: Any) -> Experiment:
    """Build an :class:`Experiment` from a metadata dict (see the module table for keys/units).

    ``overrides`` replace what the metadata says: any :class:`Experiment` field
    (``voltage_kV``, ``convergence_angle_mrad``, ``detector_pixel_size_inv_A``,
    ``detector_pixel_size_mrad``, ``aberrations``, ``scan_shape``, ``scan_step_A``,
    ``scan_rotation_deg``) and ``defocus_A`` (Å, sets C10 = -defocus_A in the aberrations
    read from the metadata). Overriding either detector pixel size discards both values from
    the metadata. Raises :class:`MetadataError` naming the key for missing or contradictory
    quantities (including the detector calibration check done by :class:`Experiment`).
    """
    reject_unknown_keys("overrides", overrides, _FIELDS + _CONVENIENCE, error=MetadataError)
    if not isinstance(meta, Mapping):
        raise MetadataError(f"metadata: expected a dict, found {type(meta).__name__}")

    lookups: dict[str, Any] = {
        "voltage_kV": lambda: _find(
            meta, {"acc_voltage_kV": _scale(1.0), "voltage_kV": _scale(1.0),
                   "high_tension_v": _volts}, "voltage_kV", quantity="kV"),
        "convergence_angle_mrad": lambda: _find(
            meta, {k: _scale(1.0) for k in ("convergence_semiangle_mrad",
                                             "convergence_angle_mrad", "probe_semiangle_mrad")},
            "convergence_angle_mrad"),
        "detector_pixel_size_inv_A": lambda: _find(
            meta, {"detector_pixel_size_inv_A": _scale(1.0)}, "detector_pixel_size_inv_A"),
        "detector_pixel_size_mrad": lambda: _find(
            meta, {"detector_pixel_size_mrad": _scale(1.0)}, "detector_pixel_size_mrad"),
        "aberrations": lambda: _aberrations(meta, with_c10="defocus_A" not in overrides),
        "scan_shape": lambda: _find(meta, {"scan_shape": _pair, "scan_size": _pair},
                                    "scan_shape"),
        "scan_step_A": lambda: _find(meta, {"scan_step_A": _scale(1.0)}, "scan_step_A"),
        "scan_rotation_deg": lambda: _find(
            meta, {"scan_rotation_deg": _scale(1.0),
                   "rotation_scan_to_detector_deg": _scale(1.0)}, "scan_rotation_deg"),
    }
    skip = set(overrides)
    if skip & {"detector_pixel_size_inv_A", "detector_pixel_size_mrad"}:
        skip |= {"detector_pixel_size_inv_A", "detector_pixel_size_mrad"}
    values: dict[str, Any] = {k: (None if k in skip else get()) for k, get in lookups.items()}
    values.update({k: v for k, v in overrides.items() if k in _FIELDS})
    if "defocus_A" in overrides:
        ab = dict(values["aberrations"] or {})
        ab["C10"] = -_number("defocus_A", overrides["defocus_A"])
        values["aberrations"] = ab
    if values["scan_step_A"] is None and values["scan_shape"] is not None \
            and "scan_step_A" not in overrides:
        fov = _find(meta, {"fov_nm": _scale(1.0)}, "fov_nm")
        if fov is not None:
            values["scan_step_A"] = 10.0 * fov / max(_pair("scan_shape", values["scan_shape"]))

    if values["voltage_kV"] is None:
        raise _missing("voltage_kV", "acc_voltage_kV, voltage_kV, high_tension_v", "kV")
    if values["convergence_angle_mrad"] is None:
        raise _missing("convergence_angle_mrad",
                       "convergence_semiangle_mrad, convergence_angle_mrad, probe_semiangle_mrad",
                       "mrad, semi-angle")
    if values.get("detector_pixel_size_inv_A") is None and \
            values.get("detector_pixel_size_mrad") is None:
        raise MetadataError(
            "detector_pixel_size_inv_A / detector_pixel_size_mrad: detector calibration not "
            "found in the metadata; give detector_pixel_size_inv_A=... (1/Å per pixel) or "
            "detector_pixel_size_mrad=... (mrad per pixel) in the config's [experiment] table, "
            "on the command line (--set experiment.detector_pixel_size_mrad=...) or as a "
            "load_experiment(path, ...) keyword")
    if values["scan_rotation_deg"] is None:
        values["scan_rotation_deg"] = 0.0
    try:
        return Experiment(**values)
    except ValueError as exc:
        raise MetadataError(f"experiment from metadata: {exc}") from exc


def load_experiment(path: str | Path, reader: Any = None, dataset_name: str | None = None,
                    **overrides: Any) -> Experiment:
    """``experiment_from_metadata(read_metadata(path), **overrides)``; errors name the file.
    ``reader`` / ``dataset_name`` choose the reader as in :meth:`Dataset.from_file`."""
    meta = read_metadata(path, reader=reader, dataset_name=dataset_name)
    try:
        return experiment_from_metadata(meta, **overrides)
    except MetadataError as exc:
        raise MetadataError(f"{str(path)!r}: {exc}") from exc
