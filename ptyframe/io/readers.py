"""Choosing the :class:`~ptyframe.components.Reader` of a data file.

A reader is given by name or ``{"type": name, ...settings}`` (resolved through the registry),
as an instance, or chosen automatically: every registered reader scores the file with
``sniff`` and the highest score wins (ties go to the first name in alphabetical order, so the
choice never depends on plugin load order).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from ptyframe.components.reader import Reader
from ptyframe.io.data import DataError

__all__ = ["select_reader", "reader_scores"]


def _registry(registry: Any | None) -> Any:
    if registry is not None:
        return registry
    from ptyframe.registry.loader import load_registry

    return load_registry()


def reader_scores(path: Path, registry: Any | None = None) -> list[tuple[int, str, Reader]]:
    """(score, name, reader) of every registered reader for ``path``, best first."""
    registry = _registry(registry)
    scored = []
    for name in registry.names("reader"):
        reader = registry.create("reader", {"type": name})
        try:
            score = int(reader.sniff(path))
        except (OSError, ValueError):
            score = 0
        scored.append((score, name, reader))
    scored.sort(key=lambda t: (-t[0], t[1]))
    return scored


def _with_dataset(reader: Reader, dataset_name: str | None) -> Reader:
    if dataset_name is None:
        return reader
    fields = {f.name for f in attrs.fields(type(reader))} if attrs.has(type(reader)) else set()
    if "dataset" not in fields:
        raise DataError(f"dataset_name: the {reader.name!r} reader takes no dataset name, found "
                        f"dataset_name={dataset_name!r}")
    return attrs.evolve(reader, dataset=dataset_name)


def select_reader(path: str | Path, reader: Reader | str | Mapping[str, Any] | None = None,
                  dataset_name: str | None = None, registry: Any | None = None) -> Reader:
    """The reader for ``path``: ``reader`` when given (a name, a ``{"type": ...}`` table or an
    instance), else the registered reader whose ``sniff`` scores the file highest.
    ``dataset_name`` sets the reader's ``dataset`` setting (HDF5-based readers)."""
    p = Path(path)
    if isinstance(reader, Reader):
        return _with_dataset(reader, dataset_name)
    if reader is not None:
        config = {"type": reader} if isinstance(reader, str) else reader
        if not isinstance(config, Mapping):
            raise DataError(f"reader: expected a reader name, a {{type = name}} table or a "
                            f"Reader, found {type(reader).__name__}")
        return _with_dataset(_registry(registry).create("reader", config), dataset_name)
    scored = reader_scores(p, registry)
    if not scored or scored[0][0] <= 0:
        known = ", ".join(f"{name} ({' '.join(r.suffixes) or 'by content'})"
                          for _, name, r in sorted(scored, key=lambda t: t[1])) or "none"
        raise DataError(f"{str(p)!r}: expected a data file one of the installed readers "
                        f"recognises, found suffix {p.suffix!r} and no known format marker; "
                        f"readers: {known}. Formats read through rosettasciio (Merlin .mib, "
                        f".dm3/.dm4, EMPAD, .mrc, .hspy/.zspy, Velox .emd) need "
                        f"pip install 'ptyframe[formats]'")
    return _with_dataset(scored[0][2], dataset_name)
