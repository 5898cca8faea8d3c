"""The Reader family: a data file -> raw diffraction patterns (lazy) + its metadata.

A reader is chosen for a file either by name (``[data] reader = {type = "emd"}``) or by
:meth:`Reader.sniff`: every registered reader scores the file and the highest score wins, so a
lab adds its own format by registering one more Reader in a plugin.

A reader gives a :class:`PatternSource` (raw patterns, indexed 0..N-1 in row-major scan order,
read on demand in bounded chunks) and a :class:`FileMetadata` (plain values under the keys that
:mod:`ptyframe.io.metadata` interprets, each with the place in the file it came from).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import attrs
import numpy as np

from .base import Component

__all__ = ["FileMetadata", "PatternSource", "Reader", "SNIFF_SUFFIX", "SNIFF_CONTENT"]

#: sniff score of a reader that recognises a file by its suffix alone
SNIFF_SUFFIX = 10
#: sniff score of a reader that recognised the file's content (a format marker inside it)
SNIFF_CONTENT = 30


class PatternSource(abc.ABC):
    """Raw (unpreprocessed) patterns, indexed 0..N-1 in row-major scan order (y slow, x fast).

    Attributes a subclass sets: ``description`` (names the file and dataset in messages),
    ``shape4d`` ((sy, sx) when the stored array is 4D, else None), ``n`` (number of patterns),
    ``raw_pattern_shape`` ((ky, kx) pixels), ``dtype`` and optionally ``axis0_chunk`` (flat
    length of one storage chunk, so chunked passes read whole chunks).
    """

    description: str
    shape4d: tuple[int, int] | None
    n: int
    raw_pattern_shape: tuple[int, int]
    dtype: np.dtype
    axis0_chunk: int = 1

    @abc.abstractmethod
    def read_sorted_unique(self, idx: np.ndarray) -> np.ndarray:
        """Raw patterns for increasing, unique flat indices, shape (idx.size, ky, kx)."""

    @abc.abstractmethod
    def open_chunks(self) -> contextlib.AbstractContextManager[Callable[[int, int], np.ndarray]]:
        """Context giving a function (start, stop) -> raw patterns [start:stop]."""


@attrs.frozen
class FileMetadata:
    """What a file says about its acquisition.

    ``values``: plain Python values (numbers, strings, lists, nested dicts) under the keys that
    :func:`ptyframe.io.metadata.experiment_from_metadata` reads (``voltage_kV``,
    ``detector_pixel_size_inv_A``, ``scan_step_A`` ...) and any others the file holds;
    ``origins``: for each top-level key, where in the file the value was found (e.g.
    ``"root attribute 'acc_voltage_kV'"``, ``"dim3 of /data/datacube (units '1/Å')"``).
    """

    values: Mapping[str, Any] = attrs.field(factory=dict, converter=dict)
    origins: Mapping[str, str] = attrs.field(factory=dict, converter=dict)

    def merged(self, other: FileMetadata) -> FileMetadata:
        """These values with ``other``'s on top (other wins key by key)."""
        return FileMetadata({**self.values, **other.values}, {**self.origins, **other.origins})


class Reader(Component):
    """A data-file format: which files it reads, their patterns and their metadata.

    Subclasses are attrs classes (their fields are reader settings such as a dataset name),
    set ``name`` and ``suffixes`` (lower-case, with the dot) and implement :meth:`open`;
    :meth:`sniff` and :meth:`metadata` have defaults (suffix match; no metadata).
    """

    kind: ClassVar[str] = "reader"
    #: file suffixes of the format, lower case with the dot (``(".mib",)``)
    suffixes: ClassVar[tuple[str, ...]] = ()

    def sniff(self, path: Path) -> int:
        """How surely this reader reads ``path``: 0 = not at all; :data:`SNIFF_SUFFIX` for a
        suffix match; :data:`SNIFF_CONTENT` when a format marker inside the file was found.
        Must not raise for a file of another format."""
        return SNIFF_SUFFIX if path.suffix.lower() in self.suffixes else 0

    @abc.abstractmethod
    def open(self, path: Path) -> PatternSource:
        """The file's patterns, read lazily; raises a ``ValueError`` subclass naming the file,
        what was expected and what was found when it cannot."""

    def metadata(self, path: Path) -> FileMetadata:
        """The file's acquisition metadata with the origin of each value (default: none)."""
        return FileMetadata()
