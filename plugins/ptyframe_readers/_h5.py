"""HDF5 helpers shared by the HDF5-based readers."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ptyframe.io.data import DataError

__all__ = ["dataset_name", "decode", "is_hdf5", "open_h5", "pattern_datasets", "root_attributes"]


def is_hdf5(path: Path) -> bool:
    """Whether ``path`` is an HDF5 file (by its signature, whatever its suffix)."""
    try:
        return path.is_file() and bool(h5py.is_hdf5(path))
    except OSError:
        return False


@contextlib.contextmanager
def open_h5(path: Path) -> Iterator[h5py.File]:
    """The file opened read-only; an unreadable file is a :class:`DataError` naming it."""
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{str(path)!r}: expected an HDF5 file, could not open it "
                        f"({exc})") from exc
    with f:
        yield f


def decode(value: Any) -> Any:
    """HDF5 value -> plain Python: bytes -> str, JSON strings -> objects, numpy -> lists."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in ("{", "["):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return value
        return value
    if isinstance(value, np.ndarray):
        return [decode(v) for v in value.tolist()] if value.dtype.kind in "OSU" \
            else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def root_attributes(f: h5py.File) -> tuple[dict[str, Any], dict[str, str]]:
    """(values, origins) of the root attributes; an attribute ``metadata_json`` holding a whole
    record is unpacked underneath the individual attributes."""
    values = {key: decode(f.attrs[key]) for key in f.attrs}
    origins = {key: f"root attribute {key!r}" for key in values}
    embedded = values.pop("metadata_json", None)
    origins.pop("metadata_json", None)
    out: dict[str, Any] = {}
    out_origins: dict[str, str] = {}
    if isinstance(embedded, dict):
        out.update(embedded)
        out_origins.update({k: "root attribute 'metadata_json'" for k in embedded})
    out.update(values)
    out_origins.update(origins)
    return out, out_origins


def pattern_datasets(f: h5py.File) -> list[str]:
    """Paths of the numeric 3D/4D datasets whose last two axes are at least 8 px (candidate
    stacks of diffraction patterns), in file order."""
    found: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and obj.ndim in (3, 4) and obj.dtype.kind in "uif" \
                and min(obj.shape[-2:]) >= 8:
            found.append(name)

    f.visititems(visit)
    return found


def dataset_name(inst: Any, attribute: Any, value: Any) -> None:
    """attrs validator: None or a non-empty HDF5 path string."""
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise DataError(f"{type(inst).__name__}.{attribute.name}: expected the path of a "
                        f"dataset inside the file (a non-empty string) or None, found {value!r}")
