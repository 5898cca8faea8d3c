"""Which run an output folder holds: its fingerprint, and whether a new run may resume it.

The fingerprint (``run.json``) holds what changes the result: the measured data's identity
(shape, dtype and a digest of sampled patterns; the file path is recorded, not compared, so a
moved file still resumes) and the configuration (every specification, the experiment, the
device, the seed and the class of every component; not the output settings, the display or the
number of epochs). Before writing into a folder that holds a checkpoint:

* same fingerprint: resume (``resuming from epoch N``);
* another fingerprint (or none): refused with :class:`ForeignRunError` listing what differs,
  unless the caller says ``resume`` (continue with the new configuration; each configuration
  is kept as ``parameters.rev<N>.json``) or ``overwrite`` (the old run's files are removed).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ptyframe.io.results import STATE_FILE, atomic_write_json

__all__ = ["RUN_FILE", "ForeignRunError", "run_fingerprint", "differences", "read_fingerprint",
           "write_fingerprint", "RESUME_MODES"]

RUN_FILE = "run.json"
RESUME_MODES = ("auto", "resume", "overwrite")
#: configuration keys that do not change the result
_NOT_COMPARED = ("output", "verbosity", "progress", "grid", "data")
_SAMPLES = 16


class ForeignRunError(ValueError):
    """The output folder holds a checkpoint of another run."""


def _digest(chunks: Any) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        array = np.ascontiguousarray(chunk)
        h.update(f"{array.dtype.str}{array.shape}".encode())
        h.update(array.tobytes())
    return h.hexdigest()[:32]


def _data_identity(rec: Any) -> dict[str, Any]:
    dataset = getattr(rec, "dataset", None)
    if dataset is not None:
        n = len(dataset)
        indices = np.unique(np.linspace(0, n - 1, min(n, _SAMPLES)).round().astype(np.int64))
        return {"shape": list(dataset.shape), "digest": _digest([dataset.read(indices)]),
                "path": str(dataset.path) if getattr(dataset, "path", None) else None}
    signals = np.asarray(rec._signals)
    return {"shape": list(signals.shape), "digest": _digest([signals[:: max(1, len(signals)
                                                                          // _SAMPLES)]]),
            "path": None}


def _component_classes(rec: Any) -> dict[str, Any]:
    def qual(obj: Any) -> str:
        return f"{type(obj).__module__}.{type(obj).__qualname__}"

    out: dict[str, Any] = {}
    for kind in ("propagator", "detector", "loss", "optimizer", "engine"):
        component = getattr(rec, kind, None)
        if component is not None:
            out[kind] = qual(component)
    out["regularizers"] = [qual(r) for r in rec.regularizers]
    out["constraints"] = [qual(c) for c in rec.constraints]
    return out


def run_fingerprint(rec: Any) -> dict[str, Any]:
    """The fingerprint of a :class:`~ptyframe.engine.reconstruction.Reconstruction` (JSON)."""
    config = {k: v for k, v in rec.to_config().items() if k not in _NOT_COMPARED}
    config = json.loads(json.dumps(config, default=str))  # the form it takes on disk
    return {"data": _data_identity(rec), "config": config,
            "components": _component_classes(rec)}


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, list) and any(isinstance(v, (Mapping, list)) for v in value):
        for index, item in enumerate(value):
            _flatten(item, f"{prefix}[{index}]", out)
        out.setdefault(f"{prefix}#len", len(value))
    else:
        out[prefix] = value


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Locations (``config.loss.type``, ``data.digest``) where two fingerprints differ (the
    data path is not compared)."""
    a: dict[str, Any] = {}
    b: dict[str, Any] = {}
    _flatten(old, "", a)
    _flatten(new, "", b)
    keys = sorted((set(a) | set(b)) - {"data.path"})
    return [k.replace("#len", "") for k in keys if a.get(k, "<absent>") != b.get(k, "<absent>")]


def read_fingerprint(folder: str | Path) -> dict[str, Any] | None:
    """The fingerprint recorded in ``folder`` (None: none, or unreadable)."""
    path = Path(folder) / RUN_FILE
    if not path.is_file() or path.is_symlink():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    fingerprint = record.get("fingerprint") if isinstance(record, dict) else None
    return fingerprint if isinstance(fingerprint, dict) else None


def write_fingerprint(folder: str | Path, fingerprint: Mapping[str, Any]) -> Path:
    return atomic_write_json(Path(folder) / RUN_FILE, {"format": "ptyframe.run", "version": 1,
                                                       "fingerprint": dict(fingerprint)})


def has_checkpoint(folder: str | Path) -> bool:
    return (Path(folder) / STATE_FILE).is_file()


def check_compatible(folder: str | Path, fingerprint: Mapping[str, Any], mode: str) -> bool:
    """Whether a run with ``fingerprint`` may continue the checkpoint in ``folder`` (True),
    must start afresh (False: no checkpoint, or ``mode == "overwrite"``), or is refused
    (:class:`ForeignRunError`, in ``auto`` mode, naming what differs and the options)."""
    if mode not in RESUME_MODES:
        raise ValueError(f"resume mode: expected one of {RESUME_MODES}, found {mode!r}")
    if not has_checkpoint(folder):
        return False
    if mode == "overwrite":
        return False
    old = read_fingerprint(folder)
    if mode == "resume":
        return True
    if old is None:
        raise ForeignRunError(
            f"output folder {folder} holds a checkpoint without a run fingerprint ({RUN_FILE}); "
            "it may belong to another run. Use --resume to continue it with this "
            "configuration, --overwrite to start afresh, or another output folder")
    changed = differences(old, dict(fingerprint))
    if changed:
        shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more"
                                          if len(changed) > 8 else "")
        raise ForeignRunError(
            f"output folder {folder} holds a checkpoint of another run (differs in: {shown}). "
            "Use --resume to continue it with this configuration (the change is recorded), "
            "--overwrite to discard it and start afresh, or another output folder")
    return True
