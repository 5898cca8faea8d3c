"""Any HDF5 file, whatever its suffix: the dataset named by the user, else ``data``, else the
file's single 3D/4D dataset."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import attrs

from ptyframe.components import FileMetadata, PatternSource, Reader
from ptyframe.components.reader import SNIFF_SUFFIX
from ptyframe.io.data import DataError, H5Source

from ._h5 import dataset_name, is_hdf5, open_h5, pattern_datasets, root_attributes

__all__ = ["HDF5Reader", "resolve_dataset"]


def resolve_dataset(path: Path, requested: str | None) -> str:
    """The dataset to read: ``requested`` when given; else ``data`` when the file has it; else
    the single 3D/4D dataset; else a :class:`DataError` listing the candidates."""
    with open_h5(path) as f:
        if requested is not None:
            return requested  # H5Source names the available datasets if it is missing
        if "data" in f:
            return "data"  # H5Source says what is wrong with it, if anything
        candidates = pattern_datasets(f)
    if len(candidates) == 1:
        return candidates[0]
    found = ", ".join(repr(c) for c in candidates) if candidates else "no 3D/4D dataset"
    raise DataError(f"dataset_name: {str(path)!r} has no dataset 'data'; expected a single "
                    f"3D (N, ky, kx) or 4D (sy, sx, ky, kx) dataset to pick, found {found}; "
                    f"pass dataset_name= (or [data] dataset = ...) to choose")


@attrs.frozen(kw_only=True)
class HDF5Reader(Reader):
    """HDF5 file of any suffix (.h5, .hdf5, .hspy renamed or not, .nxs ...).

    ``dataset``: path of the pattern dataset inside the file; default: ``data`` when present,
    else the single 3D/4D dataset. Metadata: the root attributes (an attribute
    ``metadata_json`` holding a JSON record is unpacked underneath them).
    """

    name: ClassVar[str] = "hdf5"
    suffixes: ClassVar[tuple[str, ...]] = (".h5", ".hdf5", ".hdf", ".nxs")

    dataset: str | None = attrs.field(default=None, validator=dataset_name)

    def sniff(self, path: Path) -> int:
        if not is_hdf5(path):  # an .h5 that is not HDF5: open() says so
            return super().sniff(path)
        return SNIFF_SUFFIX + 5  # HDF5 signature: more than a suffix, less than a format marker

    def open(self, path: Path) -> PatternSource:
        return H5Source(path, resolve_dataset(path, self.dataset))

    def metadata(self, path: Path) -> FileMetadata:
        with open_h5(path) as f:
            return FileMetadata(*root_attributes(f))
