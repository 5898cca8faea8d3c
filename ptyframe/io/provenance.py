"""Provenance of a run: what made the results, where, when and from which input.

:func:`collect_provenance` gathers the package and plugin versions, the git revision of the
source tree (when it is a git checkout), the host, the Python and NumPy versions, the device
and the input file with its SHA-256 checksum. The Reconstruction writes it to
``provenance.json`` in the output folder when a run starts and again, with ``end_time`` and
``wall_time_s``, when it ends; the result file carries the same fields.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["collect_provenance", "finish_provenance", "file_sha256", "git_revision",
           "PROVENANCE_FILE", "PROVENANCE_FIELDS", "now_iso"]

PROVENANCE_FILE = "provenance.json"

#: fields always present (a value may be None when unknown, e.g. no git checkout)
PROVENANCE_FIELDS = ("program", "version", "git_revision", "plugins", "host", "platform",
                     "python", "numpy", "device", "input_file", "input_sha256", "start_time",
                     "end_time", "wall_time_s", "command")


def now_iso() -> str:
    """The current time, ISO 8601 with the UTC offset (NeXus NX_DATE_TIME)."""
    return datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(
        timespec="seconds")


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    """SHA-256 of a file (hex), read in ``chunk_bytes`` pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def git_revision(path: str | os.PathLike | None = None) -> str | None:
    """``git describe --always --dirty`` of the checkout holding ``path`` (default: this
    package); None when it is not in a git checkout or git is absent."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"],
                              cwd=where, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    revision = done.stdout.strip()
    return revision if done.returncode == 0 and revision else None


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _plugin_versions() -> dict[str, str]:
    """``entry point name -> distribution version`` of the ``ptyframe`` plugin group (read
    from the entry-point metadata; no plugin is imported)."""
    out = {}
    for ep in importlib.metadata.entry_points(group="ptyframe"):
        dist = ep.dist
        key = f"{dist.name}:{ep.name}" if dist is not None else ep.name
        out[key] = dist.version if dist is not None else "unknown"
    return dict(sorted(out.items()))


def _device_name(device: Any) -> str:
    """The GPU's name (CuPy device properties) or the CPU's (platform)."""
    if getattr(device, "kind", "cpu") == "gpu":
        try:
            props = device.xp.cuda.runtime.getDeviceProperties(device.gpu_id)
            name = props["name"]
            return name.decode() if isinstance(name, bytes) else str(name)
        except Exception:  # noqa: BLE001 - a name is optional provenance
            return "gpu"
    return platform.processor() or platform.machine() or "cpu"


def collect_provenance(device: Any = None, input_file: str | os.PathLike | None = None,
                       checksum: bool = True) -> dict[str, Any]:
    """Provenance of a run starting now (see :data:`PROVENANCE_FIELDS`); ``device``: the
    :class:`~ptyframe.core.device.Device` (its ``to_config()`` and name are recorded);
    ``input_file``: the measured data file (its SHA-256 when ``checksum``)."""
    input_path = Path(input_file).resolve() if input_file is not None else None
    device_info: Any = None
    if device is not None:
        device_info = dict(device.to_config()) if hasattr(device, "to_config") else str(device)
        if isinstance(device_info, dict):
            device_info["description"] = repr(device)
            device_info["name"] = _device_name(device)
    return {
        "program": "ptyframe",
        "version": _version("ptyframe"),
        "git_revision": git_revision(),
        "plugins": _plugin_versions(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "device": device_info,
        "input_file": None if input_path is None else str(input_path),
        "input_sha256": (file_sha256(input_path) if checksum and input_path is not None
                         and input_path.is_file() else None),
        "start_time": now_iso(),
        "end_time": None,
        "wall_time_s": None,
        "command": " ".join(sys.argv) if sys.argv and sys.argv[0] else None,
    }


def finish_provenance(provenance: Mapping[str, Any], wall_time_s: float) -> dict[str, Any]:
    """``provenance`` with ``end_time`` (now) and ``wall_time_s`` filled in."""
    return dict(provenance, end_time=now_iso(), wall_time_s=float(wall_time_s))
