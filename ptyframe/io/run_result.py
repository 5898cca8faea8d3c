"""The results of a run as one object: :class:`RunResult` and :func:`open_result`.

``open_result(path)`` reads either an output folder (checkpoint arrays, ``loss.csv``,
``parameters.json``, ``provenance.json``, ``initial_positions_A.npy``) or the result file
written from it (``result.nxs``, :mod:`ptyframe.io.result_file`) and gives the object, the
probe, the positions in Å, the scanned-area crop, the loss history, the configuration and the
provenance in the same layout either way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from ptyframe.io import results
from ptyframe.io.provenance import PROVENANCE_FILE

__all__ = ["RunResult", "open_result", "scanned_area", "INITIAL_POSITIONS_FILE"]

#: probe positions (N, 2) in Å at the start of the run, written next to the checkpoints
INITIAL_POSITIONS_FILE = "initial_positions_A.npy"


def scanned_area(positions_A: np.ndarray, pixel_size_A: float, origin_A: tuple[float, float],
                 object_shape: tuple[int, int], margin_px: int = 0,
                 min_size_px: tuple[int, int] = (1, 1)) -> tuple[slice, slice]:
    """Object pixels (y, x slices) between the outermost probe centres, at least
    ``min_size_px`` around their middle (a scan of one position, LARBED or a focal series,
    lights about half a probe window), widened by ``margin_px`` and clipped to the object:
    the part of the object the scan constrains."""
    pos = np.asarray(positions_A, dtype=float)
    if pos.ndim != 2 or pos.shape[1] != 2 or pos.shape[0] == 0:
        raise ValueError(f"positions_A: expected shape (N, 2) with N >= 1, found {pos.shape}")
    centres = (pos - np.asarray(origin_A, dtype=float)) / float(pixel_size_A)
    low, high = centres.min(axis=0), centres.max(axis=0)
    half = np.maximum((np.asarray(min_size_px, dtype=float) - 1) / 2 - (high - low) / 2, 0)
    lo = np.floor(low - half).astype(int) - int(margin_px)
    hi = np.ceil(high + half).astype(int) + 1 + int(margin_px)
    lo = np.clip(lo, 0, np.asarray(object_shape))
    hi = np.clip(hi, lo + 1, np.asarray(object_shape))
    return slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1]))


@attrs.define
class RunResult:
    """A run's results, host arrays in ptyframe's internal layout.

    ``object``: (n_slices, n_object_modes, Y, X) complex transmission; ``probe``:
    (n_probe_modes, ny, nx) (or (n_probes, n_probe_modes, ny, nx)); ``positions_A``: (N, 2)
    probe centres (y, x) in Å; ``initial_positions_A``: the same at the start (None when not
    recorded); ``pixel_size_A``: object pixel (Å); ``origin_A``: specimen-frame position (y, x)
    of object pixel (0, 0) in Å; ``wavelength_A``: electron wavelength (None if unknown);
    ``epoch``: epochs done; ``loss``: loss.csv columns; ``config``: the configuration
    (parameters.json); ``provenance``: see :mod:`ptyframe.io.provenance`; ``extra``: the other
    refined blocks (tilts, beam current, ...) as stored.
    """

    object: np.ndarray
    probe: np.ndarray
    positions_A: np.ndarray
    pixel_size_A: float
    origin_A: tuple[float, float]
    initial_positions_A: np.ndarray | None = None
    wavelength_A: float | None = None
    epoch: int | None = None
    loss: dict[str, np.ndarray] = attrs.field(factory=dict)
    config: dict[str, Any] = attrs.field(factory=dict)
    provenance: dict[str, Any] = attrs.field(factory=dict)
    extra: dict[str, np.ndarray] = attrs.field(factory=dict)
    source: Path | None = None

    @property
    def window(self) -> tuple[int, int]:
        """Probe window (ny, nx) in pixels."""
        return int(self.probe.shape[-2]), int(self.probe.shape[-1])

    @property
    def phase(self) -> np.ndarray:
        """Total phase (rad) of the first object mode summed over slices, (Y, X)."""
        return np.angle(self.object[:, 0]).sum(axis=0)

    @property
    def amplitude(self) -> np.ndarray:
        """Product over slices of the first object mode's amplitude, (Y, X)."""
        return np.abs(self.object[:, 0]).prod(axis=0)

    def scanned_area(self, margin_px: int = 0) -> tuple[slice, slice]:
        """Object pixels (y, x slices) between the outermost refined probe centres, at least
        as large as the probe's bright area (:meth:`probe_support_px`: one position of a
        plane wave, a focal series, lights the whole window)."""
        return scanned_area(self.positions_A, self.pixel_size_A, self.origin_A,
                            self.object.shape[-2:], margin_px, self.probe_support_px())

    def probe_support_px(self, fraction: float = 0.1) -> tuple[int, int]:
        """Size (y, x) in pixels of the box around the pixels where the probe's intensity
        (summed over modes) exceeds ``fraction`` of its maximum."""
        probe = self.probe.reshape(-1, *self.window)
        intensity = (np.abs(probe) ** 2).sum(axis=0)
        bright = intensity >= fraction * intensity.max() if intensity.max() > 0 else \
            np.ones(self.window, dtype=bool)
        rows, cols = np.flatnonzero(bright.any(axis=1)), np.flatnonzero(bright.any(axis=0))
        return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)

    def cropped_object(self, margin_px: int = 0) -> np.ndarray:
        """The object restricted to :meth:`scanned_area` (..., y, x)."""
        return self.object[(..., *self.scanned_area(margin_px))]

    def axes_A(self, crop: tuple[slice, slice] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Specimen-frame coordinates (Å) of the object's pixel rows and columns (of ``crop``
        when given)."""
        Y, X = self.object.shape[-2:]
        y = self.origin_A[0] + self.pixel_size_A * np.arange(Y)
        x = self.origin_A[1] + self.pixel_size_A * np.arange(X)
        if crop is not None:
            y, x = y[crop[0]], x[crop[1]]
        return y, x


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    value = json.loads(path.read_text(encoding="utf-8"))
    return value if isinstance(value, dict) else {}


def _wavelength(config: Mapping[str, Any]) -> float | None:
    experiment = config.get("experiment")
    if not isinstance(experiment, Mapping):
        return None
    try:
        from ptyframe.core.experiment import Experiment

        return float(Experiment.from_config(dict(experiment)).wavelength_A)
    except (TypeError, ValueError):
        return None


def _from_folder(folder: Path) -> RunResult:
    arrays, epoch = results.load_state(folder, recover=False)
    arrays = {k: v for k, v in arrays.items() if not k.startswith("engine.")}
    for name in ("object", "probe", "positions"):
        if name not in arrays:
            raise ValueError(f"open_result: the checkpoint in {folder} has no {name!r} block")
    config = _read_json(folder / results.PARAMETERS_FILE)
    grid = results.load_state_info(folder).get("grid") or config.get("grid")
    if not isinstance(grid, Mapping):
        raise ValueError(f"open_result: no grid (pixel size, origin) recorded in {folder} "
                         f"(state.json or {results.PARAMETERS_FILE})")
    pixel = float(grid["pixel_size_A"])
    origin = (float(grid["origin_A"][0]), float(grid["origin_A"][1]))
    half = np.array(grid["window"]) // 2
    positions_A = (np.asarray(arrays.pop("positions"), dtype=float) + half) * pixel \
        + np.array(origin)
    initial = None
    if (folder / INITIAL_POSITIONS_FILE).is_file():
        initial = np.load(folder / INITIAL_POSITIONS_FILE, allow_pickle=False)
    loss = {}
    if (folder / results.LOSS_FILE).is_file():
        loss = results.read_loss_log(folder / results.LOSS_FILE)
    return RunResult(object=arrays.pop("object"), probe=arrays.pop("probe"),
                     positions_A=positions_A, pixel_size_A=pixel, origin_A=origin,
                     initial_positions_A=initial, wavelength_A=_wavelength(config),
                     epoch=int(epoch), loss=loss, config=config,
                     provenance=_read_json(folder / PROVENANCE_FILE), extra=arrays,
                     source=folder)


def open_result(path: str | os.PathLike) -> RunResult:
    """The results of a run from its output folder or its result file (``.nxs``/``.h5``)."""
    path = Path(path)
    if path.is_dir():
        return _from_folder(path)
    if path.is_file():
        from ptyframe.io.result_file import read_result_file

        return read_result_file(path)
    raise FileNotFoundError(f"open_result: {path} is neither an output folder nor a file")
