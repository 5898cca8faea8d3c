"""NumPy .npy files: 3D (N, ky, kx) or 4D (sy, sx, ky, kx), memory-mapped, never unpickled."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import attrs
import numpy as np

from ptyframe.components import PatternSource, Reader
from ptyframe.io.data import ArraySource, DataError

__all__ = ["NpyReader"]


@attrs.frozen
class NpyReader(Reader):
    """NumPy ``.npy`` array, 3D (N, ky, kx) or 4D (sy, sx, ky, kx), memory-mapped read-only.

    The metadata comes from a same-stem ``.json`` sidecar (a Nion Swift export is a 4D .npy
    with such a sidecar), merged by :func:`ptyframe.io.metadata.read_metadata`.
    """

    name: ClassVar[str] = "npy"
    suffixes: ClassVar[tuple[str, ...]] = (".npy",)

    def open(self, path: Path) -> PatternSource:
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise DataError(f"{str(path)!r}: expected a numeric .npy array, could not load "
                            f"it ({exc})") from exc
        if not isinstance(arr, np.ndarray):
            raise DataError(f"{str(path)!r}: expected a single .npy array, found "
                            f"{type(arr).__name__}")
        return ArraySource(arr, repr(str(path)))
